"""The build cache key: what goes into it, what does not."""

from __future__ import annotations

from pathlib import Path

from dstack.agent.environments.buildkey import build_key, environment_files


def _key(code: Path, commands: list[str], base: tuple[str, ...] = ("python", "3.12")) -> str:
    return build_key(list(base), ".", commands, code, code)


def test_the_files_a_build_names_and_the_project_files_are_in_it(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("-r extra/more.txt\nrequests\n")
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "more.txt").write_text("-c ../constraints-dev.txt\n")
    (tmp_path / "constraints-dev.txt").write_text("requests<3\n")
    (tmp_path / "env.yml").write_text("name: x\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "pyproject.toml").write_text("[project]\n")
    (tmp_path / "pkg" / "module.py").write_text("x = 1\n")
    (tmp_path / "train.py").write_text("print(1)\n")
    commands = ["pip install -r requirements.txt ./pkg", "conda env update --file=env.yml"]
    names = [str(p.relative_to(tmp_path)) for p in environment_files(commands, tmp_path, tmp_path)]
    assert names == [
        "constraints-dev.txt",
        "env.yml",
        "extra/more.txt",
        "pkg/pyproject.toml",
        "requirements.txt",
    ]


def test_editing_an_environment_file_changes_the_key_and_editing_code_does_not(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("requests\n")
    (tmp_path / "train.py").write_text("print(1)\n")
    commands = ["pip install -r requirements.txt"]
    first = _key(tmp_path, commands)
    (tmp_path / "train.py").write_text("print(2)\n")
    assert _key(tmp_path, commands) == first
    (tmp_path / "requirements.txt").write_text("requests==2.31\n")
    second = _key(tmp_path, commands)
    assert second != first
    assert _key(tmp_path, [*commands, "echo more"]) != second
    assert _key(tmp_path, commands, ("python", "3.11")) != second
    assert build_key(["python", "3.12"], "src", commands, tmp_path, tmp_path) != second


def test_files_outside_the_code_folder_are_never_read(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (tmp_path / "secret.txt").write_text("outside\n")
    (code / "link.txt").symlink_to(tmp_path / "secret.txt")
    commands = ["cat ../secret.txt /etc/passwd link.txt"]
    assert environment_files(commands, code, code) == []


def test_unbalanced_quotes_do_not_break_the_key(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("x\n")
    assert environment_files(["pip install -r requirements.txt 'oops"], tmp_path, tmp_path) == [
        tmp_path / "requirements.txt"
    ]


def test_the_values_a_build_refers_to_are_in_it_and_name_its_files(tmp_path: Path) -> None:
    # `pip install -r ${{ env.REQS }}` reaches the agent as a reference (see dstack.config.interpolation).
    (tmp_path / "gpu.txt").write_text("torch\n")
    (tmp_path / "cpu.txt").write_text("numpy\n")
    commands = ['pip install -r "${REQS}" "$@"']

    def key(reqs: str, args: tuple[str, ...] = (), unrelated: str = "1") -> str:
        variables = {"REQS": reqs, "UNRELATED": unrelated}
        return build_key(["python", "3.12"], ".", commands, tmp_path, tmp_path, variables, args)

    gpu = key("gpu.txt")
    assert key("cpu.txt") != gpu  # another value, another environment
    assert key("gpu.txt", unrelated="2") == gpu  # a variable it does not refer to changes nothing
    assert key("gpu.txt", ("--pre",)) != gpu  # "$@": the run's arguments are part of it
    files = environment_files(commands, tmp_path, tmp_path, {"REQS": "gpu.txt"})
    assert [p.name for p in files] == ["gpu.txt"]
    (tmp_path / "gpu.txt").write_text("torch==2.5\n")
    assert key("gpu.txt") != gpu  # the file the value names is read
