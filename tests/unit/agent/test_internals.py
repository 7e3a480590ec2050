"""In-process checks of pieces whose failures are hard to provoke through the API."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

from agent_testkit import REPO_SRC

from dstack.agent.logstore import LogStore
from dstack.agent.script import render_script

# Run in a child Python: becoming a subreaper is irreversible, and must not happen to pytest itself.
_REAPER_SCRIPT = r"""
import json, os, subprocess, sys, time
from dstack.agent.procutil import list_processes
from dstack.agent.reaper import ChildProcesses, become_child_subreaper

assert become_child_subreaper()
children = ChildProcesses()
# The shell exits at once with 5, leaving an orphan that exits a moment later.
popen = children.spawn(["sh", "-c", "sleep 0.2 & exit 5"])
deadline = time.monotonic() + 10
orphan_reaped = 0
while time.monotonic() < deadline and not orphan_reaped:
    # Scans while the Popen child is a zombie must leave it alone; the orphan's zombie must go.
    orphan_reaped += children.reap_orphans()
    time.sleep(0.01)
code = popen.wait(10)
children.release(popen.pid)
zombies = [p.pid for p in list_processes().values() if p.ppid == os.getpid() and p.is_zombie]
print(json.dumps({"code": code, "orphan_reaped": orphan_reaped, "zombies": zombies}))
"""


def test_reaper_reaps_orphans_but_never_steals_a_popen_status() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _REAPER_SCRIPT],
        env={"PYTHONPATH": str(REPO_SRC), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"code": 5, "orphan_reaped": 1, "zombies": []}


def test_log_store_drops_a_torn_index_record(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.append(b"hello ", 100.0)
    store.append(b"world\n", 101.0)
    store.close()
    with open(tmp_path / "output.idx", "ab") as index:
        index.write(b"\x01\x02\x03")  # a crash in the middle of a record
    reopened = LogStore(tmp_path)
    assert reopened.size() == 12
    assert reopened.timestamps(0, 10) == ([(0, 100.0), (6, 101.0)], False)
    assert reopened.timestamps(1, 1) == ([(6, 101.0)], False)
    assert reopened.timestamps(0, 1) == ([(0, 100.0)], True)
    reopened.append(b"again\n", 102.0)
    raw = (tmp_path / "output.idx").read_bytes()
    assert list(struct.iter_unpack("<Qd", raw)) == [(0, 100.0), (6, 101.0), (12, 102.0)]
    assert (tmp_path / "output.log").read_bytes() == b"hello world\nagain\n"


def test_script_runs_every_command_in_one_shell_and_stops_at_the_first_failure(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    commands = ["X=1", "echo $X", "", "# only a comment", "(exit 7)", "echo unreachable"]
    script.write_text(render_script(commands))
    result = subprocess.run(["bash", "--noprofile", "--norc", str(script)], capture_output=True, text=True)
    assert (result.returncode, result.stdout, result.stderr) == (7, "1\n", "")
