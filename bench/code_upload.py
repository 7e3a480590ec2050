"""Code upload benchmark (issue 15, first two rows): only changed files travel.

    .venv/bin/python bench/code_upload.py [--mb 210] [--repeat 5]

A code folder of --mb megabytes (2,000 small source files and 20 big data files, as an ML repository
holds) in a throw-away HOME with its own embedded server and agent. Rows:
  first upload        a cold client cache and a project that has nothing yet: MB/s from the snapshot's
                      start to the manifest stored; floor: `tar -c | sha256sum` of the same folder
  unchanged re-run    `dstack run . -y` of `echo hi` again (the whole command, CLI start to exit)
  one file edited     the same after editing one small file (each round another one)
  bare touch          the same after `touch` of one file (new mtime, same bytes: nothing may travel)
The goals: first upload >= 90 % of the floor; an edited re-run <= 0.4 s and <= 2x an unchanged one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tests.e2e.harness import DSTACK, DstackEnv  # noqa: E402

from dstack.api.client import Client  # noqa: E402
from dstack.code import snapshot_code  # noqa: E402
from peers import machine_line  # noqa: E402

SMALL_FILES = 2000
BIG_FILES = 20


def make_tree(root: Path, total_mb: int) -> None:
    small = 5 * 1024
    big = (total_mb * 1024**2 - SMALL_FILES * small) // BIG_FILES
    for i in range(SMALL_FILES):
        path = root / "src" / f"pkg{i // 100:02}" / f"module_{i:04}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes((f"# module {i}\n" + "x = 1\n" * (small // 6)).encode()[:small])
    for i in range(BIG_FILES):
        path = root / "data" / f"shard-{i:02}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(big))
    (root / ".dstack.yml").write_text("type: task\ncommands:\n  - echo hi\n")
    old = time.time() - 3600  # a user's tree is older than the last second (fresh files are re-hashed)
    for path in root.rglob("*"):
        os.utime(path, (old, old))


def floor_mb_s(root: Path, size: int, repeat: int) -> float:
    rates = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(f"tar -cf - -C {root} . | sha256sum > /dev/null", shell=True, check=True)
        rates.append(size / 1e6 / (time.perf_counter() - started))
    return statistics.median(rates)


def first_upload_mb_s(env: DstackEnv, root: Path, repeat: int) -> tuple[float, int]:
    entry = json.loads((env.home / ".dstack" / "config.yml").read_text())["projects"][0]
    db = env.home / ".dstack" / "server" / "data" / "sqlite.db"
    rates, size = [], 0
    for _ in range(repeat):
        project = f"bench-{uuid.uuid4().hex[:8]}"  # a project that holds nothing yet
        with sqlite3.connect(db) as conn:
            owner = conn.execute("SELECT owner_id FROM projects WHERE name = 'main'").fetchone()[0]
            conn.execute(
                "INSERT INTO projects (id, name, owner_id, created_at) VALUES (?, ?, ?, ?)",
                (str(uuid.uuid4()), project, owner, time.time()),
            )
        client = Client(entry["url"], entry["token"], project)
        with tempfile.TemporaryDirectory() as cache:
            started = time.perf_counter()
            snapshot = snapshot_code(root, cache_dir=Path(cache))
            client.upload_code(snapshot)
            rates.append(snapshot.size / 1e6 / (time.perf_counter() - started))
            size = snapshot.size
        client.close()
    return statistics.median(rates), size


def timed_run(env: DstackEnv, root: Path) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run([DSTACK, "run", ".", "-y"], env=env.env, cwd=root, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0 or result.stdout.strip() != "hi":
        raise SystemExit(f"dstack run failed: {result.stderr}")
    uploaded = [line for line in result.stderr.splitlines() if line.startswith("Uploading the code")]
    return elapsed, uploaded[0].removeprefix("Uploading the code: ") if uploaded else "nothing"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--mb", type=int, default=210)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dstack-bench-"))
    env = DstackEnv(scratch / "home")
    try:
        root = env.home / "project"
        make_tree(root, args.mb)
        timed_run(env, root)  # starts the server and the agent, uploads the code once
        first, size = first_upload_mb_s(env, root, args.repeat)
        floor = floor_mb_s(root, size, args.repeat)
        unchanged, edited, touched = [], [], []
        sent = {"unchanged": "", "edited": "", "touched": ""}
        for i in range(args.repeat):
            seconds, sent["unchanged"] = timed_run(env, root)
            unchanged.append(seconds)
            module = root / "src" / f"pkg{i:02}" / f"module_{i * 100:04}.py"
            module.write_text(module.read_text() + f"y = {i}\n")
            seconds, sent["edited"] = timed_run(env, root)
            edited.append(seconds)
            os.utime(root / "data" / f"shard-{i:02}.bin")
            seconds, sent["touched"] = timed_run(env, root)
            touched.append(seconds)
        median = statistics.median
        files = SMALL_FILES + BIG_FILES + 1
        print(f"code folder: {size / 1e6:.0f} MB in {files} files; medians of {args.repeat}")
        print(machine_line())
        ratio = median(edited) / median(unchanged)
        rows = [
            ("first upload", f"{first:.0f} MB/s", f"tar | sha256sum {floor:.0f} MB/s ({first / floor:.0%})"),
            ("unchanged re-run (dstack run -y)", f"{median(unchanged):.2f} s", f"sent: {sent['unchanged']}"),
            ("one file edited, re-run", f"{median(edited):.2f} s", f"sent: {sent['edited']}; {ratio:.2f}x"),
            ("bare touch, re-run", f"{median(touched):.2f} s", f"sent: {sent['touched']}"),
        ]
        print(f"{'row':<34}{'figure':>12}   peer / floor")
        for name, figure, peer in rows:
            print(f"{name:<34}{figure:>12}   {peer}")
    finally:
        env.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
