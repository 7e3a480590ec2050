"""A multi-node Slurm job's Comment: the batch script (real bash) collects every node's line and publishes
them at once; the server reads each node's agent back from it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from dstack.server.backends.slurm.script import batch_script
from dstack.server.backends.slurm.states import NodeAgent, parse_squeue


def _collect(tmp_path: Path, lines: list[str], nodes: int) -> list[str]:
    """Run the batch script's own `collect` on `lines` (as srun would print them); what it published."""
    text = batch_script(job_id="j0", run_name="r", token="tok", agent_b64="", uv_sha="", nodes=nodes)
    start = text.index("collect() {")
    function = text[start : text.index("\n}\n", start) + 3]
    published = tmp_path / "published"
    script = tmp_path / "collect.sh"
    script.write_text(
        f'publish() {{ printf "%s\\n" "$1" >> {published}; }}\n{function}\n'
        f"printf '%s\\n' \"$@\" | SLURM_JOB_NUM_NODES={nodes} collect\n"
    )
    result = subprocess.run(["bash", str(script), *lines], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return published.read_text().splitlines() if published.exists() else []


def test_every_node_is_published_at_once_when_the_last_one_listens(tmp_path: Path) -> None:
    lines = [
        "node|1|n2|10.0.0.2:4002|||0",  # no GPUs: empty fields stay fields
        "node|0|n1|10.0.0.1:4001|0,1|/tmp/d/job-7|1",
    ]
    [comment] = _collect(tmp_path, lines, nodes=2)
    assert comment == (
        "agent=10.0.0.1:4001;gpus=0,1;work=/tmp/d/job-7;uv=0;nodes=n1/10.0.0.1:4001/0,1|n2/10.0.0.2:4002/"
    )
    info = parse_squeue(f"7|RUNNING|None|n[1-2]|dstack:j0;{comment}\n")["7"]
    assert info.agent == ("10.0.0.1", 4001) and info.gpus == [0, 1] and info.work_dir == "/tmp/d/job-7"
    assert not info.has_uv  # one node lacks it: the server ships it to all
    assert info.node_agents == [
        NodeAgent("n1", "10.0.0.1", 4001, (0, 1)),
        NodeAgent("n2", "10.0.0.2", 4002, ()),
    ]


def test_nothing_is_published_until_every_node_listens_and_an_error_at_once(tmp_path: Path) -> None:
    assert _collect(tmp_path, ["node|0|n1|10.0.0.1:4001||/w|1"], nodes=2) == []
    published = _collect(tmp_path, ["error|python3 is not on PATH on n2"], nodes=2)
    assert published == ["error=python3 is not on PATH on n2"]


def test_a_single_node_job_publishes_as_before(tmp_path: Path) -> None:
    [comment] = _collect(tmp_path, ["node|0|n1|10.0.0.1:4001||/tmp/w|1"], nodes=1)
    info = parse_squeue(f"8|RUNNING|None|n1|dstack:j0;{comment}\n")["8"]
    assert info.agent == ("10.0.0.1", 4001) and info.has_uv and info.work_dir == "/tmp/w"
    assert info.node_agents == [NodeAgent("n1", "10.0.0.1", 4001, ())]
    assert parse_squeue("9|RUNNING|None|n1|dstack:j0\n")["9"].node_agents == []  # not yet
