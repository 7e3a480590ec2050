"""find_code_root: the git top-level holding the working directory, else the directory itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from dstack.code import CodeError, find_code_root


def test_nested_directory_of_a_repo_gives_the_top_level(tmp_path: Path) -> None:
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    nested = tmp_path / "repo" / "src" / "pkg"
    nested.mkdir(parents=True)
    assert find_code_root(nested) == (tmp_path / "repo").resolve()
    assert find_code_root(tmp_path / "repo") == (tmp_path / "repo").resolve()


def test_a_git_file_marks_a_worktree_or_submodule(tmp_path: Path) -> None:
    (tmp_path / "outer" / ".git").mkdir(parents=True)
    submodule = tmp_path / "outer" / "vendor" / "lib"
    (submodule / "src").mkdir(parents=True)
    (submodule / ".git").write_text("gitdir: ../../.git/modules/lib\n")
    assert find_code_root(submodule / "src") == submodule.resolve()


def test_outside_git_the_directory_itself(tmp_path: Path) -> None:
    workdir = tmp_path / "plain" / "dir"
    workdir.mkdir(parents=True)
    if any((parent / ".git").exists() for parent in workdir.resolve().parents):
        pytest.skip("the temporary directory itself lives inside a git repository")
    assert find_code_root(workdir) == workdir.resolve()


def test_symlinks_are_resolved(tmp_path: Path) -> None:
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    (tmp_path / "repo" / "app").mkdir()
    (tmp_path / "shortcut").symlink_to(tmp_path / "repo" / "app")
    assert find_code_root(tmp_path / "shortcut") == (tmp_path / "repo").resolve()


def test_missing_or_non_directory_workdir_is_a_code_error(tmp_path: Path) -> None:
    with pytest.raises(CodeError, match="does not exist"):
        find_code_root(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("")
    with pytest.raises(CodeError, match="not a directory"):
        find_code_root(tmp_path / "file.txt")
