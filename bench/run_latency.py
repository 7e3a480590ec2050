"""A warm `dstack run -y` of `echo hi`, a warm `dstack ps`, `dstack --help`, and 1 GiB of output streamed
to an attached CLI (issue 15's rows 4, 6 and 7).

    .venv/bin/python bench/run_latency.py [--runs 20] [--gib 1] [--no-slurm]

Everything runs in a throwaway HOME with its own embedded server and agent, stopped at the end. Each
figure is shown next to its peer or floor, measured in the same run: `srun echo hi` and `squeue` on a
one-node Slurm cluster started for the run (bench/peers.py), `python -c pass` (the floor of any Python
command), `bash -c 'echo hi'`, and for the stream `seq | sha256sum` and `seq > file` (see stream_gib).
The command rows are served by the warm process (docs/cli.md); each is also shown with DSTACK_CLI_WARM=0,
the interpreter started and the CLI imported afresh, measured in the same rounds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests.e2e.harness import DSTACK, DstackEnv, wait_for

from peers import machine_line


def timed(command: list[str], env: dict[str, str], cwd: Path, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
        samples.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed: {result.stderr}")
    return samples


def timed_alternating(
    commands: dict[str, list[str]], env: dict[str, str], cwd: Path, runs: int
) -> dict[str, list[float]]:
    """Each command once per round, in turn (a drifting machine shifts them alike). A name ending in
    "(cold)" runs with DSTACK_CLI_WARM=0: a fresh interpreter that imports the CLI, as before warm
    commands; the others are served by the warm process (docs/cli.md)."""
    samples: dict[str, list[float]] = {name: [] for name in commands}
    cold = {**env, "DSTACK_CLI_WARM": "0"}
    env = {**env, "DSTACK_CLI_WARM": "1"}
    for _ in range(runs):
        for name, command in commands.items():
            samples[name] += timed(command, cold if name.endswith("(cold)") else env, cwd, 1)
    return samples


def timed_on_terminal(command: list[str], env: dict[str, str], cwd: Path, runs: int) -> list[float]:
    """The same, with stdout/stderr on a pseudo-terminal (rich output, as a user at a terminal sees it)."""
    import pty

    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        pid, fd = pty.fork()
        if pid == 0:
            os.chdir(cwd)
            os.execve(command[0], command, {**env, "TERM": "xterm"})
        while True:
            try:
                if not os.read(fd, 65536):
                    break
            except OSError:
                break
        _, status = os.waitpid(pid, 0)
        samples.append(time.perf_counter() - start)
        os.close(fd)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(command)} failed on a terminal")
    return samples


def row(name: str, samples: list[float], baseline: list[float] | None = None, goal: str = "") -> list[str]:
    median = statistics.median(samples)
    p90 = sorted(samples)[int(len(samples) * 0.9) - 1] if len(samples) >= 10 else max(samples)
    base = f"{statistics.median(baseline) * 1000:.1f} ms" if baseline else ""
    return [name, f"{median * 1000:.0f} ms", f"{p90 * 1000:.0f} ms", base, goal]


def stream_gib(env: DstackEnv, project: Path, gib: float) -> tuple[list[list[str]], list[str]]:
    """A task printing `gib` GiB of numbered lines to an attached CLI, checking every byte arrived in order,
    in the two states of this VM's memory that decide how fast any file write is.

    A task's output is kept in a file on its host, so writing the bytes to a plain file (`seq > file`) is
    measured beside `seq | sha256sum` (the pipe's floor). On these VMs a write that grows the page cache
    into memory the VM never used before (or gave back to its host) runs at ~280 MB/s (each new page costs
    the host a fault), and one into pages freed earlier at ~600 MB/s or more. Each state is measured
    with its own peer: first growing (the peer's file kept, so the run's output takes new memory too),
    then reusing (both files deleted, so the next writes take their pages). A job's output file is
    written behind (agent/writebehind.py: to the disk as it comes, out of the cache far behind its end),
    so a flood of output reuses its own freed pages: in the growing state it can beat a plain `seq > file`.
    """
    count = _lines_for(int(gib * 1024**3))
    (project / ".dstack.yml").write_text(f"type: task\ncommands:\n  - seq 1 {count}\n")
    expected = hashlib.sha256()
    expected_size = 0
    seq = subprocess.Popen(["seq", "1", str(count)], stdout=subprocess.PIPE)
    assert seq.stdout is not None
    start = time.perf_counter()
    while chunk := seq.stdout.read(1 << 20):
        expected.update(chunk)
        expected_size += len(chunk)
    seq.wait()
    pipe_rate = expected_size / 1e6 / (time.perf_counter() - start)
    rows: list[list[str]] = []
    checks = []
    for state, name in (
        ("page cache growing", "gib-growing"),
        ("page cache reusing freed pages", "gib-reusing"),
    ):
        floor_file = env.home / f"floor-{name}.out"
        start = time.perf_counter()
        with floor_file.open("wb") as out:
            subprocess.run(["seq", "1", str(count)], stdout=out, check=True)
        file_rate = expected_size / 1e6 / (time.perf_counter() - start)
        if name == "gib-reusing":
            floor_file.unlink()
        whole, streaming, ok, detail = _stream_once(env, project, name, expected.digest(), expected_size)
        rows.append(
            [
                f"{gib:g} GiB of lines, attached CLI ({state})",
                f"{expected_size / 1e6 / whole:.0f} MB/s",
                f"{whole:.1f} s",
                f"seq | sha256: {pipe_rate:.0f} MB/s; seq > file: {file_rate:.0f} MB/s",
                ">= 250 MB/s",
            ]
        )
        rows.append(
            [
                "  first to last byte",
                f"{expected_size / 1e6 / streaming:.0f} MB/s",
                f"{streaming:.1f} s",
                "",
                "",
            ]
        )
        checks.append(f"{state}: every line once and in order: {'yes' if ok else 'NO'} ({detail})")
        if name == "gib-growing":
            # Its pages go back to the free lists, for the next state.
            floor_file.unlink()
            env.run("delete", name, "-y", check=True)
    return rows, checks


def _stream_once(
    env: DstackEnv, project: Path, name: str, digest: bytes, expected_size: int
) -> tuple[float, float, bool, str]:
    start = time.perf_counter()
    cli = subprocess.Popen(
        [DSTACK, "run", ".", "-y", "-n", name],
        env=env.env,
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert cli.stdout is not None
    received = hashlib.sha256()
    size = 0
    first_byte = None
    while chunk := cli.stdout.read1(1 << 20):
        if first_byte is None:
            first_byte = time.perf_counter()
        received.update(chunk)
        size += len(chunk)
    code = cli.wait()
    end = time.perf_counter()
    ok = code == 0 and size == expected_size and received.digest() == digest
    return end - start, end - (first_byte or start), ok, f"{size} of {expected_size} bytes, exit {code}"


def _lines_for(target: int) -> int:
    """The smallest N such that `seq 1 N` prints at least `target` bytes."""
    total, digits, start = 0, 1, 1
    while True:
        end = 10**digits - 1
        width = digits + 1
        if total + (end - start + 1) * width >= target:
            return start + -(-(target - total) // width) - 1
        total += (end - start + 1) * width
        digits, start = digits + 1, end + 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--no-slurm", dest="slurm", action="store_false", help="skip the Slurm peers")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="dstack-bench-"))
    env = DstackEnv(home / "home")
    try:
        project = env.home / "project"
        project.mkdir()
        (project / ".dstack.yml").write_text("type: task\ncommands:\n  - echo hi\n")
        env.env["DSTACK_CLI_WARM"] = "1"  # opt-in for now (docs/cli.md); the "(cold)" rows turn it off
        env.run("run", ".", "-y", cwd=project, check=True)  # starts the server, warms every cache
        env.run("run", ".", "-y", cwd=project, check=True)  # (and the warm process, for the next ones)
        wait_for(lambda: list((env.home / ".dstack" / "cli").glob("warm-*.sock")), timeout=30, what="warm")
        timings = timed_alternating(
            {
                "run": [DSTACK, "run", ".", "-y"],
                "run (cold)": [DSTACK, "run", ".", "-y"],
                "help": [DSTACK, "--help"],
                "help (cold)": [DSTACK, "--help"],
                "ps": [DSTACK, "ps"],
                "ps (cold)": [DSTACK, "ps"],
                "bash": ["bash", "-c", "echo hi"],
                "python": [sys.executable, "-c", "pass"],
            },
            env.env,
            project,
            args.runs,
        )
        warm_tty = timed_on_terminal([DSTACK, "run", ".", "-y"], env.env, project, max(5, args.runs // 2))
        bash, python = timings["bash"], timings["python"]
        table = [
            ["measure", "median", "p90", "peer / floor (median)", "goal"],
            row("warm `dstack run -y` echo hi (piped)", timings["run"], bash, "<= 150 ms"),
            row("  the same, DSTACK_CLI_WARM=0 (cold start)", timings["run (cold)"], bash, ""),
            row("warm `dstack run -y` echo hi (terminal)", warm_tty, bash, "<= 150 ms"),
            row("`dstack --help`", timings["help"], python, "<= 150 ms"),
            row("  the same, DSTACK_CLI_WARM=0 (cold start)", timings["help (cold)"], python, ""),
            row("warm `dstack ps`", timings["ps"], python, "<= 80 ms"),
            row("  the same, DSTACK_CLI_WARM=0 (cold start)", timings["ps (cold)"], python, ""),
        ]
        if args.slurm:
            from peers import slurm_cluster

            with slurm_cluster() as slurm:
                srun = timed(["srun", "echo", "hi"], slurm.env, project, args.runs)
                squeue = timed(["squeue"], slurm.env, project, args.runs)
            table += [row("peer: `srun echo hi`", srun, None, ""), row("peer: `squeue`", squeue, None, "")]
        streams, checks = stream_gib(env, project, args.gib)
        table += streams
        widths = [max(len(r[i]) for r in table) for i in range(5)]
        for r in table:
            print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())
        for check in checks:
            print(check)
        print(
            "peer / floor: bash -c 'echo hi' for runs, python -c pass for --help and ps, seq for streaming; "
            "Slurm's srun and squeue on a one-node cluster of this machine"
        )
        print(machine_line())
    finally:
        env.cleanup()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
