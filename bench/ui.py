"""Web UI benchmark, in a real headless Chromium against a real server in a throw-away HOME.

    .venv/bin/python bench/ui.py [--runs 100000] [--repeat 5] [--rate-mb 10] [--seconds 30]
                                 [--only list|flood]

- list: the runs page, loaded afresh `--repeat` times, on an empty database (the peer) and with `--runs`
  runs in it: first contentful paint, and the moment the runs table is drawn (the page's own mark
  `dstack-runs-rendered`), from navigation start; and the raw API time of the page's list request as the
  browser saw it (its floor). Goal: the table drawn < 1 s with 100,000 runs.
- flood: the run page following a task that prints `--rate-mb` MB/s for `--seconds` s, and (the peer) the
  same page following a quiet task (a line every 0.2 s): the longest main-thread task (PerformanceObserver
  `longtask`) and the longest animation frame (`long-animation-frame`), frames drawn per second, the JS
  heap and DOM size at their largest, and the bytes that reached the page. Goal: no task or frame longer
  than 200 ms, memory bounded (the same at the end as halfway).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.e2e.harness import DstackEnv, wait_for  # noqa: E402
from tests.ui.browser import Browser  # noqa: E402
from tests.ui.kit import Server, fill_runs, start_server  # noqa: E402

from dstack.api.client import Client  # noqa: E402
from dstack.api.errors import APIError  # noqa: E402

MB = 1024 * 1024

OBSERVE = """
window.__bench = {longtasks: [], frames: [], rafs: 0, samples: []};
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__bench.longtasks.push(e.duration);
}).observe({type: 'longtask', buffered: true});
try {
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) window.__bench.frames.push(e.duration);
  }).observe({type: 'long-animation-frame', buffered: true});
} catch (e) {}
const tick = () => { window.__bench.rafs += 1; requestAnimationFrame(tick); };
requestAnimationFrame(tick);
"""

SAMPLE = """
const b = window.__bench;
const received = document.querySelector('.received')?.textContent || '';
return {
  rafs: b.rafs,
  heap: performance.memory ? performance.memory.usedJSHeapSize : 0,
  nodes: document.getElementsByTagName('*').length,
  received,
  rows: document.querySelectorAll('.term-row').length,
  longest: Math.max(0, ...b.longtasks),
  longestFrame: Math.max(0, ...b.frames),
};
"""

FLOOD_PY = r"""
import sys, time
rate = int(sys.argv[1]) * 1024 * 1024
seconds = float(sys.argv[2])
line = "step {:>9} loss=0.{:06d} \x1b[32mok\x1b[0m " + "x" * 60 + "\n"
block = "".join(line.format(i, i * 7919 % 1000000) for i in range(10000)).encode()
out = sys.stdout.buffer
sent, start = 0, time.monotonic()
while time.monotonic() - start < seconds:
    out.write(block)
    out.flush()
    sent += len(block)
    ahead = sent / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
print(f"\nsent {sent} bytes in {time.monotonic() - start:.1f} s", flush=True)
"""

QUIET_PY = r"""
import sys, time
seconds = float(sys.argv[1])
start, n = time.monotonic(), 0
while time.monotonic() - start < seconds:
    n += 1
    print(f"quiet line {n}", flush=True)
    time.sleep(0.2)
"""


def _signed_in_browser(server: Server, artifacts: Path) -> Browser:
    browser = Browser(artifacts, extra_flags=["--enable-precise-memory-info"])
    browser.get(server.sign_in_link())
    browser.wait(lambda: browser.text("header .user") == "admin", what="signing in")
    return browser


def _load_runs_page(browser: Browser, server: Server) -> dict[str, float]:
    browser.get("about:blank")
    browser.get(server.ui_url + "/main/runs")
    marks = browser.wait(
        lambda: browser.js(
            "const m = performance.getEntriesByName('dstack-runs-rendered')[0];"
            "const p = performance.getEntriesByName('first-contentful-paint')[0];"
            "const api = performance.getEntriesByType('resource')"
            "  .filter(e => e.name.includes('/runs?all=true'))[0];"
            "return m && p && api ? [m.startTime, p.startTime, api.responseEnd - api.requestStart] : null"
        ),
        timeout=60,
        what="the runs table",
    )
    return {"table_ms": marks[0], "fcp_ms": marks[1], "api_ms": marks[2]}


def bench_list(runs: int, repeat: int, artifacts: Path) -> list[tuple[str, dict[str, list[float]]]]:
    with tempfile.TemporaryDirectory(prefix="dstack-bench-ui-") as tmp:
        env = DstackEnv(Path(tmp) / "home")
        server = start_server(env)
        browser = None
        try:
            browser = _signed_in_browser(server, artifacts)
            results = []
            for label in ("empty database", f"{runs:,} runs"):
                if label != "empty database":
                    started = time.perf_counter()
                    fill_runs(server.db_path, runs)
                    print(f"(filled {runs:,} runs in {time.perf_counter() - started:.1f} s)")
                loads = [_load_runs_page(browser, server) for _ in range(repeat)]
                browser.shot(f"runs-{label.split()[0]}")
                results.append((label, {k: [load[k] for load in loads] for k in loads[0]}))
            return results
        finally:
            if browser is not None:
                browser.quit()
            server.stop()


def _follow(server: Server, browser: Browser, name: str, seconds: float) -> dict[str, Any]:
    wait_for(lambda: _status(server, name) == "running", timeout=120, what=f"{name} to start")
    browser.get(f"{server.ui_url}/main/runs/{name}")
    browser.wait(lambda: browser.find_all(".term-row"), what="the output")
    browser.js(OBSERVE)
    samples = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        time.sleep(1.0)
        samples.append(browser.js(SAMPLE))
    browser.shot(f"follow-{name}")
    elapsed = time.monotonic() - start
    last = samples[-1]
    half = samples[len(samples) // 2]
    return {
        "longest task ms": last["longest"],
        "longest frame ms": last["longestFrame"],
        "frames per s": last["rafs"] / elapsed,
        "heap MB max": max(s["heap"] for s in samples) / MB,
        "heap MB half/end": f"{half['heap'] / MB:.1f}/{last['heap'] / MB:.1f}",
        "DOM nodes max": max(s["nodes"] for s in samples),
        "received": last["received"],
    }


def _status(server: Server, name: str) -> str:
    try:
        return str(Client(server.url, server.token).get_run(name)["status"])
    except APIError:
        return ""


def bench_flood(rate_mb: int, seconds: float, artifacts: Path) -> list[tuple[str, dict[str, Any]]]:
    with tempfile.TemporaryDirectory(prefix="dstack-bench-ui-") as tmp:
        env = DstackEnv(Path(tmp) / "home")
        server = start_server(env)
        browser = None
        try:
            project = Path(tmp) / "project"
            project.mkdir()
            (project / "flood.py").write_text(FLOOD_PY)
            (project / "quiet.py").write_text(QUIET_PY)
            follow_s = min(seconds, 10.0)
            (project / "quiet.dstack.yml").write_text(
                f"type: task\ncommands:\n  - python3 quiet.py {follow_s + 5}\n"
            )
            (project / "flood.dstack.yml").write_text(
                f"type: task\ncommands:\n  - python3 flood.py {rate_mb} {seconds + 10}\n"
            )
            browser = _signed_in_browser(server, artifacts)
            results = []
            for name, config, length in (
                ("quiet", "quiet.dstack.yml", follow_s),
                ("flood", "flood.dstack.yml", seconds),
            ):
                result = env.run("run", ".", "-f", config, "-y", "-d", "-n", name, cwd=project)
                assert result.returncode == 0, result.stderr
                results.append((name, _follow(server, browser, name, length)))
            env.run("stop", "flood", "-x", "-y")
            return results
        finally:
            if browser is not None:
                browser.quit()
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rate-mb", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--only", choices=["list", "flood"])
    args = parser.parse_args()
    artifacts = Path(
        os.environ.get("DSTACK_TEST_ARTIFACTS") or tempfile.mkdtemp(prefix="dstack-bench-ui-shots-")
    )
    print(f"machine: {os.cpu_count()} CPUs; screenshots: {artifacts}")
    if args.only in (None, "list"):
        print(
            f"\nthe runs page, loaded afresh {args.repeat} times (median, then each load; ms from navigation)"
        )
        print(f"{'database':<16}{'metric':<12}{'median':>8}   loads")
        for label, metrics in bench_list(args.runs, args.repeat, artifacts):
            for key, values in metrics.items():
                shown = "  ".join(f"{v:.0f}" for v in values)
                print(f"{label:<16}{key:<12}{statistics.median(values):>8.0f}   {shown}")
    if args.only in (None, "flood"):
        rate = f"{args.rate_mb} MB/s for {args.seconds:.0f} s"
        print(f"\nthe run page following a task: quiet (peer), then {rate}")
        rows = bench_flood(args.rate_mb, args.seconds, artifacts)
        keys = list(rows[0][1])
        print(f"{'metric':<20}" + "".join(f"{name:>28}" for name, _ in rows))
        for key in keys:
            cells = []
            for _, values in rows:
                value = values[key]
                cells.append(f"{value:>28.1f}" if isinstance(value, float) else f"{value!s:>28}")
            print(f"{key:<20}" + "".join(cells))


if __name__ == "__main__":
    main()
