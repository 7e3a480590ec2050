"""Issue 10 figures, on a real Slurm cluster (tests/infra/slurm.py) made and removed by this script:

- a warm `dstack run -y` of `echo hi` on Slurm, next to `srun echo hi` and `sbatch --wait --wrap 'echo hi'`
  run on the login node (goal: within 2x of sbatch --wait);
- 1 GiB of output from a Slurm job to the attached CLI, next to `srun` printing the same to the login node
  (goal: >= 100 MB/s).

    .venv/bin/python bench/slurm.py [--runs 10] [--gib 1]

Needs root (network namespaces), Slurm and munge. The CLI and its embedded server run on this machine's
loopback; the server reaches the cluster only through SSH to the login node, as it would a real one.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run_latency import _lines_for as lines_for
from tests.e2e.harness import DSTACK, DstackEnv
from tests.infra.slurm import SlurmCluster, slurm_cluster

ECHO = ["run", ".", "-f", "hi.dstack.yml", "-b", "slurm", "-y"]


def timed(action: object, runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        action()  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    return samples


def checked(result: subprocess.CompletedProcess[str], expect: str = "hi") -> None:
    if result.returncode != 0 or expect not in result.stdout:
        raise SystemExit(
            f"{result.args} failed ({result.returncode}): {result.stdout[-500:]} {result.stderr[-500:]}"
        )


def rate(size: int, seconds: float) -> str:
    return f"{size / 1e6 / seconds:.0f} MB/s"


def row(name: str, samples: list[float], goal: str = "") -> list[str]:
    median = statistics.median(samples)
    p90 = sorted(samples)[int(len(samples) * 0.9) - 1] if len(samples) >= 10 else max(samples)
    return [name, f"{median * 1000:.0f} ms", f"{p90 * 1000:.0f} ms", goal]


def expected_digest(count: int) -> tuple[str, int]:
    seq = subprocess.Popen(["seq", "1", str(count)], stdout=subprocess.PIPE)
    assert seq.stdout is not None
    digest, size = hashlib.sha256(), 0
    while chunk := seq.stdout.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    seq.wait()
    return digest.hexdigest(), size


def stream(
    argv: list[str], env: dict[str, str] | None, cwd: Path | None
) -> tuple[float, float, str, int, int]:
    """Run argv, hashing its stdout as it comes: seconds in all, from the first byte, sha256, bytes, exit."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    digest, size, first = hashlib.sha256(), 0, None
    while chunk := process.stdout.read1(1 << 20):
        first = first or time.perf_counter()
        digest.update(chunk)
        size += len(chunk)
    code = process.wait()
    end = time.perf_counter()
    return end - start, end - (first or start), digest.hexdigest(), size, code


def srun_argv(cluster: SlurmCluster, *argv: str) -> list[str]:
    """A Slurm command on the login node as the cluster user (what `cluster.slurm` runs), for Popen."""
    uid = str(cluster.login.users[cluster.user])
    return [*cluster.login.enter_argv(), "env", f"SLURM_CONF={cluster.conf}", "setpriv", f"--reuid={uid}",
            f"--regid={uid}", "--clear-groups", "env", f"HOME=/home/{cluster.user}", *argv]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--gib", type=float, default=1.0)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dstack-bench-slurm-"))
    env = DstackEnv(scratch / "home")
    try:
        with slurm_cluster() as cluster:
            config = env.home / ".dstack" / "server" / "config.yml"
            config.parent.mkdir(parents=True)
            config.write_text(yaml.safe_dump({"backends": [cluster.backend_config()]}))
            project = env.home / "project"
            project.mkdir()
            (project / "hi.dstack.yml").write_text("type: task\ncommands:\n  - echo hi\n")
            for _ in range(2):  # starts the server, opens the SSH master, makes the node's Python env
                checked(env.run(*ECHO, cwd=project, timeout=300))
            ours = timed(lambda: checked(env.run(*ECHO, cwd=project, timeout=300)), args.runs)
            srun = timed(lambda: checked(cluster.slurm("srun", "--chdir=/tmp", "echo", "hi")), args.runs)
            sbatch_args = ["sbatch", "--wait", "--chdir=/tmp", "--output=/dev/null", "--wrap", "echo hi"]
            sbatch = timed(lambda: checked(cluster.slurm(*sbatch_args), expect=""), args.runs)
            table = [
                ["measure", "median", "p90", "goal"],
                row("warm `dstack run -y` echo hi on Slurm", ours, "<= 2x sbatch --wait"),
                row("`srun echo hi` on the login node", srun),
                row("`sbatch --wait --wrap 'echo hi'` on the login node", sbatch),
            ]
            ratio = statistics.median(ours) / statistics.median(sbatch)

            count = lines_for(int(args.gib * 1024**3))
            digest, size = expected_digest(count)
            (project / "seq.dstack.yml").write_text(f"type: task\ncommands:\n  - seq 1 {count}\n")
            seconds, streaming, got, got_size, code = stream(
                [DSTACK, "run", ".", "-f", "seq.dstack.yml", "-b", "slurm", "-y"], env.env, project
            )
            ok = code == 0 and (got, got_size) == (digest, size)
            peer_seconds, _, peer, peer_size, peer_code = stream(
                srun_argv(cluster, "srun", "--chdir=/tmp", "seq", "1", str(count)), None, None
            )
            peer_ok = peer_code == 0 and (peer, peer_size) == (digest, size)
            gib = f"{args.gib:g} GiB of lines"
            table += [
                [f"{gib}, Slurm job -> attached CLI", rate(size, seconds), f"{seconds:.1f} s", ">= 100 MB/s"],
                [f"{gib}, first to last byte", rate(size, streaming), f"{streaming:.1f} s", ""],
                [f"{gib}, `srun seq` -> login node", rate(size, peer_seconds), f"{peer_seconds:.1f} s", ""],
            ]
            widths = [max(len(r[i]) for r in table) for i in range(4)]
            for r in table:
                print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())
            print(f"dstack / sbatch --wait: {ratio:.2f}x")
            print(f"every byte, in order: dstack {'yes' if ok else 'NO'}, srun {'yes' if peer_ok else 'NO'}")
    finally:
        env.cleanup()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
