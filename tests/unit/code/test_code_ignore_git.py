"""The ignore rules against real git: hand-written cases with the expected answer spelled out, then
a few hundred generated trees where git alone is the judge."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import GitOracle, TreeSpec

    MakeTree = Callable[[Path, TreeSpec], None]


def _twin_spec(spec: TreeSpec) -> dict[str, str | bytes | tuple[str, str] | None]:
    """The same tree for git, each .dstackignore appended to its directory's .gitignore (which is
    how dstack reads them: .gitignore first, .dstackignore last)."""
    twin: dict[str, str | bytes | tuple[str, str] | None] = dict(spec)
    for path, content in spec.items():
        if path == ".dstackignore" or path.endswith("/.dstackignore"):
            gitignore = path[: -len(".dstackignore")] + ".gitignore"
            assert isinstance(content, str)
            existing = spec.get(gitignore, "")
            assert isinstance(existing, str)
            twin[gitignore] = existing + "\n" + content
    return twin


def _check(
    git: GitOracle, make_tree: MakeTree, tmp_path: Path, spec: TreeSpec, exclude: str = ""
) -> set[str]:
    """Build the tree twice (ours, and git's twin repo) and return the agreed set of kept files."""
    ours, twin = tmp_path / "ours", tmp_path / "twin"
    git.init(twin)
    make_tree(ours, spec)
    make_tree(twin, _twin_spec(spec))
    if exclude:
        make_tree(ours, {".git/info/exclude": exclude})
        make_tree(twin, {".git/info/exclude": exclude})
    return git.assert_agrees(ours, twin)


CASES: dict[str, tuple[TreeSpec, set[str]]] = {
    "negation re-includes a file": (
        {
            ".gitignore": "*.log\n!keep.log\n",
            "a.log": "",
            "keep.log": "",
            "sub/b.log": "",
            "sub/keep.log": "",
        },
        {".gitignore", "keep.log", "sub/keep.log"},
    ),
    "trailing slash matches directories only": (
        {".gitignore": "build/\n", "build/out.o": "", "src/build": "", "src/build2/x": ""},
        {".gitignore", "src/build", "src/build2/x"},
    ),
    "leading and middle slashes anchor": (
        {".gitignore": "/top.txt\nsub/x\n", "top.txt": "", "sub/top.txt": "", "sub/x": "", "a/sub/x": ""},
        {".gitignore", "sub/top.txt", "a/sub/x"},
    ),
    "double star prefix, suffix and middle": (
        {
            ".gitignore": "**/cache\nlogs/**\na/**/b\n",
            "cache": "",
            "x/y/cache/f": "",
            "logs/today/f": "",
            "logs2/f": "",
            "a/b": "",
            "a/x/b": "",
            "a/x/y/b": "",
            "a/x/c": "",
        },
        {".gitignore", "logs2/f", "a/x/c"},
    ),
    "a negation cannot reach into an excluded directory": (
        {
            ".gitignore": "data/\n!data/keep.txt\nstuff/*\n!stuff/keep.txt\n",
            "data/keep.txt": "",
            "stuff/keep.txt": "",
        },
        {".gitignore", "stuff/keep.txt"},
    ),
    "deeper ignore files win and anchor to their directory": (
        {
            ".gitignore": "*.log\n/only-root\n",
            "sub/.gitignore": "!*.log\n/x.txt\n",
            "a.log": "",
            "sub/a.log": "",
            "sub/x.txt": "",
            "sub/deep/x.txt": "",
            "only-root": "",
            "sub/only-root": "",
        },
        {".gitignore", "sub/.gitignore", "sub/a.log", "sub/deep/x.txt", "sub/only-root"},
    ),
    "escapes and trailing spaces": (
        {
            ".gitignore": "\\#hash\n\\!bang\ntrail\\ \nspaced   \n# a comment\n",
            "#hash": "",
            "!bang": "",
            "trail ": "",
            "spaced": "",
            "kept": "",
        },
        {".gitignore", "kept"},
    ),
    "classes, negated classes and ranges": (
        {
            ".gitignore": "[!a]*.txt\n[a-c].md\n[[:digit:]]*\n",
            "a.txt": "",
            "b.txt": "",
            "b.md": "",
            "d.md": "",
            "7up": "",
            "x7": "",
        },
        {".gitignore", "a.txt", "d.md", "x7"},
    ),
    "git's literal-head quirk: foo**/bar matches across directories": (
        {".gitignore": "foo**/bar\n", "foo/bar": "", "foo/x/bar": "", "fooz/bar": "", "other/bar": ""},
        {".gitignore", "other/bar"},
    ),
    "a directory-only pattern does not match a symlink to a directory": (
        {".gitignore": "linked/\n", "real/f": "", "linked": ("symlink", "real")},
        {".gitignore", "real/f", "linked"},
    ),
    "question mark matches one byte, as in git": (
        {".gitignore": "caf?\nna??ve\n", "café": "", "cafe": "", "naïve": ""},
        {".gitignore", "café"},
    ),
    "CRLF line ends and a byte-order mark": (
        {".gitignore": "\ufeffa.txt\r\nb.txt\r\n", "a.txt": "", "b.txt": "", "c.txt": ""},
        {".gitignore", "c.txt"},
    ),
    "wildcards and classes never match a slash": (
        {
            ".gitignore": "d/a[!x]b\nd/c?d\nd/e*f\n",
            "d/a/b": "",
            "d/ayb": "",
            "d/c/d": "",
            "d/cxd": "",
            "d/e/f": "",
        },
        {".gitignore", "d/a/b", "d/c/d", "d/e/f"},
    ),
    "double star before an escaped slash needs at least one directory": (
        {".gitignore": "**\\/z\n", "z": "", "x/z": "", "x/y/z": ""},
        {".gitignore", "z"},
    ),
    "an unclosed bracket never matches": (
        {".gitignore": "[ab\n*.c[\n", "[ab": "", "a": "", "x.c[": ""},
        {".gitignore", "[ab", "a", "x.c["},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_git_and_the_documented_meaning(
    name: str, git: GitOracle, make_tree: MakeTree, tmp_path: Path
) -> None:
    spec, expected = CASES[name]
    assert _check(git, make_tree, tmp_path, spec) == expected


def test_info_exclude_applies_below_every_ignore_file(
    git: GitOracle, make_tree: MakeTree, tmp_path: Path
) -> None:
    spec = {".gitignore": "!secret.txt\n", "secret.txt": "", "notes.txt": "", "sub/secret.txt": ""}
    kept = _check(git, make_tree, tmp_path, spec, exclude="secret.txt\nnotes.txt\n")
    # A negation in .gitignore beats .git/info/exclude, which itself still ignores notes.txt.
    assert kept == {".gitignore", "secret.txt", "sub/secret.txt"}


def test_dstackignore_is_read_after_gitignore(git: GitOracle, make_tree: MakeTree, tmp_path: Path) -> None:
    spec = {
        ".gitignore": "*.log\n",
        ".dstackignore": "!important.log\ndata/\n",
        "a.log": "",
        "important.log": "",
        "data/train.bin": "",
        "sub/.gitignore": "",
        "sub/.dstackignore": "*.txt\n",
        "sub/a.txt": "",
        "b.txt": "",
    }
    kept = _check(git, make_tree, tmp_path, spec)
    assert kept == {
        ".gitignore",
        ".dstackignore",
        "important.log",
        "sub/.gitignore",
        "sub/.dstackignore",
        "b.txt",
    }


def test_symlinked_gitignore_is_refused_like_git_does(
    git: GitOracle, make_tree: MakeTree, tmp_path: Path
) -> None:
    spec: TreeSpec = {"rules": "*.txt\n", ".gitignore": ("symlink", "rules"), "a.txt": "", "sub/b.txt": ""}
    repo = tmp_path / "repo"
    git.init(repo)
    make_tree(repo, spec)
    assert git.assert_agrees(repo) == {"rules", ".gitignore", "a.txt", "sub/b.txt"}


# --- generated trees --------------------------------------------------------------------------

NAMES = [
    "a", "b", "ab", "abc", "ba", "a.py", "b.py", "x.txt", "x.log", "foo", "foo.py", "foobar", "bar",
    ".env", "[x]", "a b", "#c", "!d", "sp ", "é", "A", "a-b", "build", "deep", "-x", "a*b",
]  # fmt: skip
GLOBS = [
    "*", "?", "**", "*.py", "a*", "*b", "?b", "[ab]*", "[!a]*", "[a-c]", "[[:alpha:]]*", "f*o*",
    "a?c", "*.[pt]*", "[]x]*", "*[", "\\*", "[^b]", "??", "*.*",
]  # fmt: skip
_ESCAPES = str.maketrans({"[": "\\[", "*": "\\*", "?": "\\?", "\\": "\\\\"})
TREES = 240


def _escaped(name: str) -> str:
    text = name.translate(_ESCAPES)
    if text.startswith(("#", "!")):
        text = "\\" + text
    if text.endswith(" "):
        text = text[:-1] + "\\ "
    return text


def _segment(rng: random.Random, names: list[str]) -> str:
    roll = rng.random()
    if roll < 0.45:
        return _escaped(rng.choice(names))
    if roll < 0.55:
        return rng.choice(names)  # unescaped: special characters keep their glob meaning
    if roll < 0.65:
        return rng.choice(["a", "foo", "b", "x"]) + rng.choice(["*", "**", "?", "[a-z]*"])
    return rng.choice(GLOBS)


def _pattern(rng: random.Random, paths: list[str]) -> str:
    names = sorted({name for path in paths for name in path.split("/")}) or NAMES
    if paths and rng.random() < 0.3:
        # An existing path, some components swapped for globs: likely to hit something.
        parts = rng.choice(paths).split("/")
        parts = [_segment(rng, names) if rng.random() < 0.3 else _escaped(part) for part in parts]
        parts = parts[rng.randrange(len(parts)) :] if rng.random() < 0.3 else parts
    else:
        parts = [_segment(rng, names) for _ in range(rng.choice([1, 1, 1, 2, 2, 3]))]
    pattern = "/".join(parts)
    roll = rng.random()
    if roll < 0.2:
        pattern = "/" + pattern
    elif roll < 0.3:
        pattern = "**/" + pattern
    roll = rng.random()
    if roll < 0.2:
        pattern += "/"
    elif roll < 0.28:
        pattern += "/**"
    if rng.random() < 0.25:
        pattern = "!" + pattern
    if rng.random() < 0.05:
        pattern += "  "
    return pattern


def _ignore_text(rng: random.Random, paths: list[str]) -> str:
    lines = [_pattern(rng, paths) for _ in range(rng.randint(1, 6))]
    if rng.random() < 0.2:
        lines.insert(rng.randrange(len(lines) + 1), "# comment")
    return "\n".join(lines) + ("\n" if rng.random() < 0.8 else "")


def _random_tree(rng: random.Random) -> tuple[dict[str, str | tuple[str, str] | None], str]:
    spec: dict[str, str | tuple[str, str] | None] = {}
    dirs = [""]
    for _ in range(rng.randint(4, 22)):
        parent = rng.choice(dirs)
        if parent.count("/") >= 3:
            continue
        path = f"{parent}/{rng.choice(NAMES)}" if parent else rng.choice(NAMES)
        if any(
            path == other or path.startswith(other + "/") or other.startswith(path + "/") for other in spec
        ):
            continue
        roll = rng.random()
        if roll < 0.35:
            spec[path] = None
            dirs.append(path)
        elif roll < 0.42:
            spec[path] = ("symlink", rng.choice(["a", "build", "missing", "."]))
        else:
            spec[path] = "x"
    paths = list(spec)
    for directory in rng.sample(dirs, k=min(len(dirs), rng.randint(1, 3))):
        prefix = f"{directory}/" if directory else ""
        below = [path[len(prefix) :] for path in paths if path.startswith(prefix)]
        spec[prefix + ".gitignore"] = _ignore_text(rng, below)
        if rng.random() < 0.3:
            spec[prefix + ".dstackignore"] = _ignore_text(rng, below)
    exclude = _ignore_text(rng, paths) if rng.random() < 0.3 else ""
    return spec, exclude


def test_generated_trees_match_git(git: GitOracle, make_tree: MakeTree, tmp_path: Path) -> None:
    rng = random.Random(20240611)
    compared = 0
    for number in range(TREES):
        spec, exclude = _random_tree(rng)
        case_dir = tmp_path / str(number)
        try:
            _check(git, make_tree, case_dir, spec, exclude=exclude)
        except AssertionError as exc:
            rules = {path: text for path, text in spec.items() if path.endswith("ignore")}
            raise AssertionError(f"tree {number}: rules={rules!r} exclude={exclude!r}") from exc
        compared += 1
    assert compared == TREES
