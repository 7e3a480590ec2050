"""Gitignore patterns (gitignore(5)) compiled to regular expressions, faithful to git's own matcher.

Matching works on the UTF-8 (filesystem) bytes of a path, as git does: `?` matches one byte and
`[a-z]` compares bytes. Each pattern becomes a regex for the path relative to the directory of the
ignore file that holds it; a pattern without a slash matches the last component at any depth.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

_SLASH, _BACKSLASH, _STAR, _QUESTION, _OPEN, _CLOSE = (ord(c) for c in "/\\*?[]")
_GLOB_SPECIAL = frozenset(b"*?[\\")
_UTF8_BOM = b"\xef\xbb\xbf"


def _ascii(*groups: str) -> frozenset[int]:
    return frozenset("".join(groups).encode())


# POSIX classes as git's wildmatch sees them: ASCII only, git's own ctype for space. (Byte ranges, not the
# `string` module's constants: importing it compiles a regular expression, on every `dstack run`.)
_DIGIT = frozenset(range(0x30, 0x3A))
_LOWER = frozenset(range(0x61, 0x7B))
_UPPER = frozenset(range(0x41, 0x5B))
_GRAPH = frozenset(range(33, 127))
_CHARACTER_CLASSES: dict[bytes, frozenset[int]] = {
    b"alnum": _DIGIT | _LOWER | _UPPER,
    b"alpha": _LOWER | _UPPER,
    b"blank": _ascii(" \t"),
    b"cntrl": frozenset([*range(32), 127]),
    b"digit": _DIGIT,
    b"graph": _GRAPH,
    b"lower": _LOWER,
    b"print": frozenset(range(32, 127)),
    b"punct": _GRAPH - _DIGIT - _LOWER - _UPPER,
    b"space": _ascii(" \t\n\r"),
    b"upper": _UPPER,
    b"xdigit": _DIGIT | _ascii("abcdefABCDEF"),
}


class _NeverMatches(Exception):
    """The pattern is malformed in a way that makes git never match it (e.g. an unclosed `[`)."""


class IgnorePattern(NamedTuple):
    """One line of an ignore file."""

    text: bytes  # the pattern as written, after trimming
    regex: bytes | None  # for the path relative to the ignore file's directory; None: never matches
    negated: bool
    dir_only: bool


def parse_ignore_file(data: bytes) -> list[IgnorePattern]:
    """The patterns of an ignore file, in file order (line splitting and comments as git does)."""
    if data.startswith(_UTF8_BOM):
        data = data[len(_UTF8_BOM) :]
    patterns = []
    for line in data.split(b"\n"):
        if not line or line.startswith(b"#"):
            continue
        if line.endswith(b"\r"):
            line = line[:-1]
        # git reads the line as a C string: a NUL ends it.
        line = line.partition(b"\0")[0]
        pattern = compile_pattern(line)
        if pattern is not None:
            patterns.append(pattern)
    return patterns


def compile_pattern(line: bytes) -> IgnorePattern | None:
    """One ignore-file line (without its newline) as a pattern; None for a line that holds none."""
    text = _trim_trailing_spaces(line)
    negated = text.startswith(b"!")
    body = text[1:] if negated else text
    dir_only = body.endswith(b"/")
    if dir_only:
        body = body[:-1]
    if not body:
        return None
    try:
        regex = _pattern_regex(body)
    except _NeverMatches:
        regex = None
    return IgnorePattern(text=text, regex=regex, negated=negated, dir_only=dir_only)


def _trim_trailing_spaces(line: bytes) -> bytes:
    """Drop unescaped trailing spaces (only spaces, not tabs; a trailing lone backslash keeps all)."""
    last_space = None
    index = 0
    while index < len(line):
        char = line[index]
        if char == 0x20:
            if last_space is None:
                last_space = index
        elif char == _BACKSLASH:
            index += 1
            if index == len(line):
                return line
            last_space = None
        else:
            last_space = None
        index += 1
    return line if last_space is None else line[:last_space]


def _pattern_regex(body: bytes) -> bytes:
    if _SLASH not in body:
        # Matches the last path component at any depth below the ignore file's directory.
        return b"(?:.*/)?" + _glob_regex(body, pathname=False)
    if body[0] == _SLASH:
        body = body[1:]
    # git compares the wildcard-free head literally and runs wildmatch on the rest only, so a `**`
    # right after that head counts as "at the start" (`foo**/bar` matches `foo/x/bar`); copy that.
    head = _literal_head_length(body)
    return re.escape(body[:head]) + _glob_regex(body[head:], pathname=True)


def _literal_head_length(body: bytes) -> int:
    for index, char in enumerate(body):
        if char in _GLOB_SPECIAL:
            return index
    return len(body)


def _glob_regex(glob: bytes, *, pathname: bool) -> bytes:
    """Translate git's wildmatch syntax; `pathname` gives `**` its cross-directory meaning."""
    parts: list[bytes] = []
    index = 0
    while index < len(glob):
        char = glob[index]
        if char == _BACKSLASH:
            if index + 1 == len(glob):
                raise _NeverMatches  # a trailing backslash escapes nothing
            parts.append(re.escape(glob[index + 1 : index + 2]))
            index += 2
        elif char == _QUESTION:
            parts.append(b"[^/]")
            index += 1
        elif char == _STAR:
            end = index
            while end < len(glob) and glob[end] == _STAR:
                end += 1
            regex, index = _star_regex(glob, index, end, pathname)
            parts.append(regex)
        elif char == _OPEN:
            members, index = _parse_bracket(glob, index)
            parts.append(_class_regex(members))
        else:
            parts.append(re.escape(glob[index : index + 1]))
            index += 1
    return b"".join(parts)


def _star_regex(glob: bytes, start: int, end: int, pathname: bool) -> tuple[bytes, int]:
    """The regex for the run of stars glob[start:end] and the index to continue from."""
    starts_component = start == 0 or glob[start - 1] == _SLASH
    if pathname and end - start >= 2 and starts_component:
        if end == len(glob):
            return b".*", end  # trailing `/**`: everything below
        if glob[end] == _SLASH:
            return b"(?:.*/)?", end + 1  # `**/`: zero or more directories
        if glob[end : end + 2] == b"\\/":
            return b".*", end  # git lets `**` cross slashes here but skips the zero-directory case
    return b"[^/]*", end


def _parse_bracket(glob: bytes, start: int) -> tuple[frozenset[int], int]:
    """The byte set of the `[...]` at glob[start] and the index after it, parsed as wildmatch does."""
    size = len(glob)
    pos = start + 1
    if pos < size and glob[pos] in b"!^":
        negated = True
        pos += 1
    else:
        negated = False
    members: set[int] = set()
    previous = 0  # 0: no previous character, so a `-` here is literal
    while True:
        if pos >= size:
            raise _NeverMatches  # unclosed `[`
        char = glob[pos]
        if char == _BACKSLASH:
            pos += 1
            if pos >= size:
                raise _NeverMatches
            char = glob[pos]
            members.add(char)
        elif char == ord("-") and previous and pos + 1 < size and glob[pos + 1] != _CLOSE:
            pos += 1
            high = glob[pos]
            if high == _BACKSLASH:
                pos += 1
                if pos >= size:
                    raise _NeverMatches
                high = glob[pos]
            members.update(range(previous, high + 1))
            char = 0
        elif char == _OPEN and pos + 1 < size and glob[pos + 1] == ord(":"):
            close = glob.find(b"]", pos + 2)
            if close < 0:
                raise _NeverMatches
            if close - (pos + 2) < 1 or glob[close - 1] != ord(":"):
                members.add(_OPEN)  # not a `[:class:]` after all: a plain `[` member
            else:
                named = _CHARACTER_CLASSES.get(glob[pos + 2 : close - 1])
                if named is None:
                    raise _NeverMatches  # git aborts on an unknown class name
                members.update(named)
                pos = close
                char = 0
        else:
            members.add(char)
        previous = char
        pos += 1
        if pos < size and glob[pos] == _CLOSE:
            break
    if negated:
        members = set(range(256)) - members
    members.discard(_SLASH)  # a class never matches a slash in a path
    return frozenset(members), pos + 1


def _class_regex(members: frozenset[int]) -> bytes:
    if not members:
        raise _NeverMatches
    ranges: list[bytes] = []
    ordered = sorted(members)
    low = previous = ordered[0]
    for byte in [*ordered[1:], -1]:
        if byte == previous + 1:
            previous = byte
            continue
        ranges.append(b"\\x%02x" % low if low == previous else b"\\x%02x-\\x%02x" % (low, previous))
        low = previous = byte
    return b"[" + b"".join(ranges) + b"]"


class PatternList:
    """The patterns of one directory, answering "does the last matching pattern ignore this path"."""

    def __init__(self, patterns: Iterable[IgnorePattern]) -> None:
        usable = [pattern for pattern in patterns if pattern.regex is not None]
        self.patterns: tuple[IgnorePattern, ...] = tuple(usable)
        self._for_dirs = _Combined(usable)
        self._for_files = _Combined([pattern for pattern in usable if not pattern.dir_only])

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def verdict(self, rel_path: bytes, is_dir: bool) -> bool | None:
        """True: ignored, False: re-included by a negation, None: no pattern matches."""
        return (self._for_dirs if is_dir else self._for_files).verdict(rel_path)


class _Combined:
    """All patterns in one alternation, the LAST pattern first: the regex engine takes the first
    alternative that matches the whole path, which is exactly git's "last match wins"."""

    def __init__(self, patterns: Sequence[IgnorePattern]) -> None:
        newest_first = list(reversed(patterns))
        self._negated = [pattern.negated for pattern in newest_first]
        alternatives = b"|".join(b"(" + (pattern.regex or b"") + b")" for pattern in newest_first)
        self._regex = re.compile(alternatives, re.DOTALL) if newest_first else None

    def verdict(self, rel_path: bytes) -> bool | None:
        if self._regex is None:
            return None
        match = self._regex.fullmatch(rel_path)
        if match is None or match.lastindex is None:
            return None
        return not self._negated[match.lastindex - 1]
