"""Runs in the web UI, started and checked with the real `dstack` CLI: live list, live output, a progress
bar, hostile output, Stop; fleets and offers; the runs page with 100,000 runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.harness import DstackEnv, wait_for
from tests.e2e.test_run import task, write
from tests.ui.browser import Browser
from tests.ui.kit import Server, fill_runs

pytestmark = pytest.mark.e2e

# Prints hostile lines, a tqdm-style progress bar that redraws with "\r", coloured text, then ticks until
# stopped (the output file is ours, so every line is known).
TASK_PY = r"""
import sys, time
print("\x1b[1;32mstarting\x1b[0m", flush=True)
print("<script>window.__pwned = 1</script>", flush=True)
print('<img src=x onerror="window.__pwned = 2">', flush=True)
for i in range(101):
    sys.stdout.write(f"\rtraining: {i:3d}%|{'#' * (i // 10):<10}| {i}/100 [00:01<00:00, 98.76it/s]")
    sys.stdout.flush()
    time.sleep(0.02)
sys.stdout.write("\n")
print("\x1b[38;5;208mprogress finished\x1b[0m", flush=True)
n = 0
while True:
    n += 1
    print(f"tick {n}", flush=True)
    time.sleep(0.3)
"""


def _output_rows(browser: Browser) -> list[str]:
    return [
        str(t)
        for t in browser.js("return [...document.querySelectorAll('.term-row')].map(r => r.textContent)")
    ]


def test_a_cli_run_live_in_the_ui_and_stopped_from_it(
    server: Server, browser: Browser, dstack_env: DstackEnv, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    write(project / "task.py", TASK_PY)
    task(project, ["python3 task.py"])

    browser.get(server.sign_in_link())
    browser.wait(lambda: browser.find_all("section .empty"), what="the empty runs page")
    browser.shot("runs-empty")

    result = dstack_env.run("run", ".", "-y", "-d", "-n", "live-one", cwd=project)
    assert result.returncode == 0, result.stderr
    # The page was not reloaded: the change feed brought the run in.
    browser.wait(
        lambda: browser.find_all(".active-runs tr[data-run='live-one']"), what="the run in Active runs"
    )
    browser.wait(
        lambda: "running" in browser.text(".active-runs tr[data-run='live-one'] .status"), what="running"
    )
    # (The list redraws as runs change: read it afresh each time.)
    assert browser.text(".active-runs tr[data-run='live-one'] td:nth-child(5)") == "local"  # backend, as ps
    browser.shot("runs-active")

    browser.find(".active-runs tr[data-run='live-one'] a").click()
    browser.wait_text("#run-status", "running")
    # Output appears while the task prints: the ticks go on growing with the run still running.
    browser.wait(lambda: any(r.startswith("tick 3") for r in _output_rows(browser)), what="tick 3")
    before = len(_output_rows(browser))
    browser.wait(lambda: len(_output_rows(browser)) > before + 2, what="more ticks, live")
    assert browser.text("#run-status") == "running"
    browser.shot("run-live-output")

    rows = _output_rows(browser)
    # The progress bar redrew in place: one line, at 100%.
    bars = [r for r in rows if "it/s" in r]
    assert bars == ["training: 100%|##########| 100/100 [00:01<00:00, 98.76it/s]"], bars
    assert rows.index(bars[0]) + 1 == rows.index("progress finished")
    # Hostile lines are text: shown as printed, and nothing ran.
    assert "<script>window.__pwned = 1</script>" in rows
    assert '<img src=x onerror="window.__pwned = 2">' in rows
    assert browser.js(
        "return window.__pwned === undefined && !document.querySelector('.term img, .term script')"
    )
    # Colours are rendered (bold green, a 256-colour orange), the escape codes themselves are not shown.
    assert "starting" in rows and not any("\x1b" in r or "[0m" in r for r in rows)
    assert browser.js("return !!document.querySelector('.term-row span.f2.bold')")
    history = browser.text(".history")
    for status in ("submitted", "provisioning", "running"):
        assert status in history

    # Fleets: the local host, with this run on it.
    browser.find("header nav a[href$='/fleets']").click()
    browser.wait(lambda: "live-one" in browser.text("tr[data-host='local']"), what="the run on its host")
    assert "ready" in browser.text("tr[data-host='local']")
    browser.shot("fleets")
    browser.driver.back()
    browser.wait_text("#run-status", "running")

    browser.find("#stop").click()
    dialog = browser.wait(lambda: browser.find("dialog#confirm[open]"), what="the confirmation")
    assert "Stop run live-one?" in dialog.text
    browser.shot("stop-confirmation")
    browser.find("#confirm-yes").click()
    browser.wait(lambda: browser.text("#run-status") == "terminated", what="the run to end", timeout=90)
    assert browser.text("#summary-reason") == "stopped by user"
    assert browser.find("#stop").get_attribute("disabled") is not None
    browser.shot("run-stopped")
    # The CLI agrees.
    ps = dstack_env.run("ps", "-a", "-v")
    line = next(line for line in ps.stdout.splitlines() if "live-one" in line)
    assert "terminated" in line and "stopped by user" in line
    assert "terminated" in browser.text(".history")

    # The whole log downloads, byte for byte what `dstack logs` prints.
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    browser.find("a.download").click()
    saved = downloads / "live-one.log"
    wait_for(lambda: saved.exists() and saved.stat().st_size > 0, timeout=60, what="the download")
    logs = dstack_env.run("logs", "live-one")
    assert saved.read_text() == logs.stdout and "progress finished" in logs.stdout
    assert not browser.console_errors()


def test_offers_with_resource_filters(server: Server, browser: Browser) -> None:
    browser.get(server.sign_in_link())
    browser.wait_text("header .user", "admin")
    browser.find("header nav a[href$='/offers']").click()
    browser.wait(lambda: browser.find_all(".offers-table tbody tr"), what="the offers")
    assert "local" in browser.text(".offers-table tbody tr")
    browser.shot("offers")

    browser.find("#offer-gpu").send_keys("A100:80GB:2")
    browser.find("form.filters button").click()
    sentence = browser.wait_text(".no-offer", "No offer has")
    assert "2 A100 GPUs" in sentence and "this machine has" in sentence
    assert "gpu=A100" in browser.driver.current_url  # a link shows the same filters
    browser.shot("offers-none")

    gpu = browser.find("#offer-gpu")
    gpu.clear()
    gpu.send_keys("A100:zz")
    browser.find("form.filters button").click()
    assert browser.wait_text("#offers-error", "Invalid --gpu value").startswith(
        "Invalid --gpu value 'A100:zz'"
    )


def test_the_runs_page_with_100000_runs(server: Server, browser: Browser, dstack_env: DstackEnv) -> None:
    newest_first = fill_runs(server.db_path, 100_000)
    result = dstack_env.run("ps", "-a", "-n", "3")
    assert newest_first[0] in result.stdout  # the CLI sees them too

    browser.get(server.sign_in_link())

    def names() -> list[str]:
        return [
            str(n)
            for n in browser.js(
                "return [...document.querySelectorAll('.all-runs tr[data-run]')].map(r => r.dataset.run)"
            )
        ]

    browser.wait(lambda: names()[:1] == [newest_first[0]], what="the newest run first")
    assert names() == newest_first[:50]
    assert browser.text(".active-runs") == "No run is active."
    assert browser.find("button.newer").get_attribute("disabled") is not None
    browser.shot("runs-100k-first-page")

    browser.find("button.older").click()
    browser.wait(lambda: names() == newest_first[50:100], what="the second page")
    browser.find("button.older").click()
    browser.wait(lambda: names() == newest_first[100:150], what="the third page")
    browser.shot("runs-100k-third-page")
    browser.find("button.newer").click()
    browser.wait(lambda: names() == newest_first[50:100], what="back to the second page")
    browser.find("button.newer").click()
    browser.wait(lambda: names() == newest_first[:50], what="back to the first page")
    assert browser.find("button.newer").get_attribute("disabled") is not None
    # A failed run shows why, as `ps -v` does.
    failed = next(n for n in newest_first[:50] if int(n.rsplit("-", 1)[1]) % 7 == 0)
    assert browser.text(f".all-runs tr[data-run='{failed}'] .reason") == "commands failed with exit code 1"
    wait_for(lambda: not browser.console_errors(), timeout=5, what="no errors in the console")
