"""--reload on the CLI side, on a real folder: which changes travel, and the batches that carry them."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from dstack.cli.reload import batch as batch_module
from dstack.cli.reload.batch import build_batches
from dstack.cli.reload.changes import Changes, compute, invalidate_rules, relative_path
from dstack.cli.reload.tree import Index, scan
from dstack.code.ignore import IgnoreRules


class Tree:
    """A code root, its ignore rules and the index of what the task holds (the tree at the start)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.warnings: list[str] = []
        self.rules = IgnoreRules(root)
        self.index = Index(dict(scan(str(root), "", self.rules, self.warnings.append)))

    def changes(self, *dirty: str) -> Changes:
        extra = invalidate_rules(self.rules, dirty)
        return compute(str(self.root), self.index, {*dirty, *extra}, self.rules, self.warnings.append)

    def record(self, changes: Changes) -> None:
        """As the reloader does once the task applied the changes."""
        for rel in changes.ordered_deletes():
            self.index.remove(rel)
        for rel, entry in changes.ordered_puts():
            self.index.put(rel, entry)
        for rel in changes.forget:
            self.index.remove(rel)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    root = tmp_path / "code"
    (root / "pkg").mkdir(parents=True)
    (root / "app.py").write_text("v1")
    (root / "pkg" / "mod.py").write_text("mod")
    (root / "pkg" / "data.txt").write_text("data")
    (root / ".gitignore").write_text("*.log\ncache/\n")
    (root / ".git" / "info").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return Tree(root)


def test_only_what_changed_travels(tree: Tree) -> None:
    root = tree.root
    assert not tree.changes("app.py", "pkg", "")  # nothing changed: nothing to send
    (root / "app.py").write_text("v2")
    (root / "new.py").write_text("new")
    (root / "pkg" / "data.txt").unlink()
    changes = tree.changes("app.py", "new.py", "pkg/data.txt")
    assert sorted(changes.puts) == ["app.py", "new.py"]
    assert changes.deletes == {"pkg/data.txt"}
    tree.record(changes)
    assert not tree.changes("app.py", "new.py", "pkg/data.txt", "")


def test_folders_created_renamed_and_deleted(tree: Tree) -> None:
    root = tree.root
    (root / "docs" / "deep").mkdir(parents=True)
    (root / "docs" / "deep" / "page.md").write_text("page")
    changes = tree.changes("docs")  # a folder moved in reports only itself: its subtree is listed
    assert sorted(changes.puts) == ["docs", "docs/deep", "docs/deep/page.md"]
    tree.record(changes)
    (root / "docs").rename(root / "manual")
    changes = tree.changes("docs", "manual")
    assert changes.ordered_deletes() == ["docs"]
    assert sorted(changes.puts) == ["manual", "manual/deep", "manual/deep/page.md"]
    tree.record(changes)
    assert "docs/deep/page.md" not in tree.index.entries
    for path in sorted((root / "manual").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "manual").rmdir()
    changes = tree.changes("manual/deep/page.md", "manual/deep", "manual")
    assert changes.ordered_deletes() == ["manual"]  # one deletion takes the folder and its content


def test_ignored_paths_and_git_never_travel(tree: Tree) -> None:
    root = tree.root
    (root / "debug.log").write_text("log")
    (root / "cache").mkdir()
    (root / "cache" / "blob").write_text("blob")
    (root / ".git" / "index").write_text("index")
    (root / ".dstackignore").write_text("secret.txt\n")
    (root / "secret.txt").write_text("secret")
    changes = tree.changes(
        "debug.log", "cache", "cache/blob", ".git/index", ".git", ".dstackignore", "secret.txt"
    )
    assert sorted(changes.puts) == [".dstackignore"]
    tree.record(changes)
    # Taking a pattern out brings the file in; ignoring a sent file later keeps it in the task.
    (root / ".gitignore").write_text("cache/\napp.py\n")
    changes = tree.changes(".gitignore")
    assert sorted(changes.puts) == [".gitignore", "debug.log"]
    assert changes.forget == {"app.py"} and not changes.deletes
    # .git/info/exclude counts too.
    tree.record(changes)
    (root / ".git" / "info" / "exclude").write_text("pkg/\n")
    (root / "pkg" / "mod.py").write_text("changed but now excluded")
    changes = tree.changes(".git/info/exclude", "pkg/mod.py")
    assert not changes.puts and changes.forget == {"pkg", "pkg/mod.py", "pkg/data.txt"}


def test_symlinks_travel_as_links_and_are_never_followed(tree: Tree, tmp_path: Path) -> None:
    root = tree.root
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private.txt").write_text("private")
    (root / "link").symlink_to(outside)
    changes = tree.changes("link", "link/private.txt")
    assert list(changes.puts) == ["link"]
    assert changes.puts["link"].kind == "symlink" and changes.puts["link"].target == str(outside)


def test_a_file_replaced_by_a_folder_and_back(tree: Tree) -> None:
    root = tree.root
    (root / "app.py").unlink()
    (root / "app.py").mkdir()
    (root / "app.py" / "inner").write_text("x")
    changes = tree.changes("app.py")
    assert sorted(changes.puts) == ["app.py", "app.py/inner"] and not changes.deletes
    tree.record(changes)
    (root / "app.py" / "inner").unlink()
    (root / "app.py").rmdir()
    (root / "app.py").write_text("file again")
    changes = tree.changes("app.py", "app.py/inner")
    assert list(changes.puts) == ["app.py"]
    tree.record(changes)
    assert "app.py/inner" not in tree.index.entries


def test_batches_carry_deletions_first_then_parents_before_children(tree: Tree) -> None:
    root = tree.root
    (root / "pkg" / "data.txt").unlink()
    (root / "new" / "sub").mkdir(parents=True)
    (root / "new" / "sub" / "file.txt").write_bytes(b"content")
    os.chmod(root / "new" / "sub" / "file.txt", 0o755)
    (root / "new" / "link").symlink_to("sub/file.txt")
    batches = list(build_batches(str(root), tree.changes("pkg/data.txt", "new"), tree.warnings.append))
    assert len(batches) == 1
    batch = batches[0]
    assert batch.deletes == ["pkg/data.txt"]
    assert [entry[:2] for entry in batch.entries] == [
        ["new", "d"],
        ["new/link", "l"],
        ["new/sub", "d"],
        ["new/sub/file.txt", "f"],
    ]
    assert batch.entries[1][4] == "sub/file.txt"
    digest = hashlib.sha256(b"content").hexdigest()
    assert batch.entries[3][2:] == [0o755, 7, digest]  # the file is named by its content...
    assert batch.contents == {digest: b"content"}  # ...which travels apart, through the code store


def test_a_file_too_large_is_one_warning_and_the_rest_goes(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tree.root
    monkeypatch.setattr(batch_module, "MAX_FILE_BYTES", 1000)
    (root / "big.bin").write_bytes(b"x" * 2000)
    (root / "small.txt").write_text("small")
    batches = list(build_batches(str(root), tree.changes("big.bin", "small.txt"), tree.warnings.append))
    assert [rel for rel, _ in batches[0].puts] == ["small.txt"]
    assert tree.warnings == ["big.bin is 0 MB, over the 0 MB limit for one file; it is not sent"]


def test_a_huge_burst_is_split_only_by_size(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tree.root
    burst = root / "burst"
    burst.mkdir()
    for i in range(1000):
        (burst / f"f{i:04}.txt").write_text(f"{i:010}")  # ten bytes each, all different
    changes = tree.changes("burst")
    assert len(list(build_batches(str(root), changes, tree.warnings.append))) == 1
    monkeypatch.setattr(batch_module, "MAX_BATCH_BYTES", 2500)
    sizes = [len(b.puts) for b in build_batches(str(root), changes, tree.warnings.append)]
    assert sum(sizes) == 1001 and max(sizes) <= 251 and len(sizes) == 4


def test_relative_path() -> None:
    assert relative_path("/a/b", "/a/b") == ""
    assert relative_path("/a/b", "/a/b/c/d") == "c/d"
    assert relative_path("/a/b", "/a/bc") is None
    assert relative_path("/a/b", "/elsewhere") is None
