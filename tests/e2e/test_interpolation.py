"""A value a user passes is never run as shell syntax (issue 13, item 8), through the real `dstack run`:
`-e X='$(touch …)'` with `${{ env.X }}`, and `-- '$(touch …)'` with `echo "${{ run.args }}"`, on the
local backend as processes and in a container (whose image has only /bin/sh)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.dockerd import BUSYBOX_IMAGE, dockerd  # noqa: F401 - the fixture
from tests.e2e.harness import DstackEnv
from tests.e2e.test_environments import docker_env, env  # noqa: F401 - the fixtures
from tests.e2e.test_run import write

pytestmark = pytest.mark.e2e

CONFIG = """\
type: task
{extra}env:
  - X
commands:
  - echo unquoted ${{{{ env.X }}}}
  - echo "double ${{{{ env.X }}}}"
  - echo 'single ${{{{ env.X }}}}'
  - echo "args ${{{{ run.args }}}}"
  - printf '<%s>' ${{{{ run.args }}}}; echo
"""


def _check(result_stdout: str, trap: Path, value: str, args: list[str]) -> None:
    assert not trap.exists(), "a value was run as a command"
    assert result_stdout.splitlines() == [
        f"unquoted {value}",
        f"double {value}",
        f"single {value}",
        f"args {' '.join(args)}",
        "".join(f"<{arg}>" for arg in args),
    ]


def test_values_and_arguments_are_never_run(dstack_env: DstackEnv, project_dir: Path, tmp_path: Path) -> None:
    trap = tmp_path / f"pwned-{uuid.uuid4().hex[:8]}"
    write(project_dir / ".dstack.yml", CONFIG.format(extra=""))
    value = f"$(touch {trap})"
    args = [f"$(touch {trap})", f"`touch {trap}`", "two words", "it's"]
    result = dstack_env.run("run", ".", "-y", "-e", f"X={value}", "--", *args, cwd=project_dir)
    assert result.returncode == 0, result.stderr
    _check(result.stdout, trap, value, args)


def test_in_a_container_with_only_sh_too(docker_env: DstackEnv, project_dir: Path) -> None:  # noqa: F811
    trap = Path("/workflow") / "pwned"  # inside the container: the code folder is the one it can write
    write(
        project_dir / ".dstack.yml", CONFIG.format(extra=f"image: {BUSYBOX_IMAGE}\n") + "  - ls /workflow\n"
    )
    value = f"$(touch {trap})"
    args = [f"$(touch {trap})", "two words"]
    result = docker_env.run("run", ".", "-y", "-e", f"X={value}", "--", *args, cwd=project_dir, timeout=180)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "pwned" not in lines[5:], "a value was run as a command in the container"
    _check("\n".join(lines[:5]) + "\n", project_dir / "never-there", value, args)
