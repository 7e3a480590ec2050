"""Where in a shell command a piece of text lands: unquoted, in '...', in "...", in $'...', in a comment,
or in a here-document body. Interpolation (dstack.config.interpolation) asks this before it writes a
reference, so the reference is spelled right for that place and is never read as shell syntax itself.

A small lexer of the POSIX shell's quoting (and bash's `$'...'`), fed the command's text as it is
produced. It follows what decides quoting — backslashes, quotes, `$(...)` and backticks (whose insides
are unquoted again, inside double quotes too), comments and here-documents — and nothing else.

Kept free of pydantic and yaml, as interpolation is.
"""

from __future__ import annotations

UNQUOTED = "unquoted"
SINGLE = "single"  # '...'
DOUBLE = "double"  # "..."
ANSI = "ansi"  # $'...'
COMMENT = "comment"
HEREDOC = "heredoc"  # the body of <<WORD: expansions happen, quotes are plain characters
QUOTED_HEREDOC = "quoted-heredoc"  # the body of <<'WORD': nothing is expanded
_SUBSTITUTION = "substitution"  # $( ... ): unquoted inside, whatever is around it
_BACKTICK = "backtick"  # ` ... `: unquoted inside
_WORD_BREAK = " \t\n;&|()<>"


class _Heredoc:
    # Plain classes, not dataclasses: this module is on the CLI's path, and dataclasses imports inspect
    # (~5 ms of each `dstack run`).
    __slots__ = ("delimiter", "quote", "quoted", "started", "strip_tabs")

    def __init__(self) -> None:
        self.delimiter = ""
        self.quoted = False
        self.strip_tabs = False
        self.started = False  # past the optional '-' and blanks: reading the delimiter word
        self.quote = ""  # the quote the delimiter word is in now, if any


class ShellContext:
    """Feed it text with `feed`; `where` says what the next character would be part of."""

    __slots__ = ("_body", "_depths", "_escaped", "_line", "_pending", "_stack", "_tail", "_word")

    def __init__(self) -> None:
        self._stack: list[str] = [UNQUOTED]
        self._depths: list[int] = []  # per open $( ... ): its unbalanced "(" inside
        self._escaped = False  # the next character is escaped by a backslash
        self._tail = ""  # the last two characters fed
        self._word: _Heredoc | None = None  # a here-document operator whose delimiter is being read
        self._pending: list[_Heredoc] = []  # bodies that start at the next line
        self._body: _Heredoc | None = None  # the here-document whose body this is
        self._line = ""  # the body's current line, to spot the delimiter

    @property
    def where(self) -> str:
        if self._body is not None:
            return QUOTED_HEREDOC if self._body.quoted else HEREDOC
        top = self._stack[-1]
        return UNQUOTED if top in (_SUBSTITUTION, _BACKTICK) else top

    @property
    def escaped(self) -> bool:
        return self._escaped

    def feed(self, text: str) -> None:
        for char in text:
            self._one(char)
            self._tail = (self._tail + char)[-2:]

    def _one(self, char: str) -> None:
        if self._body is not None:
            self._in_body(char)
            return
        if self._word is not None:
            self._delimiter(char)
        if self._escaped:
            self._escaped = False
            return
        top = self._stack[-1]
        if top == SINGLE:
            if char == "'":
                self._stack.pop()
        elif top == ANSI:
            if char == "\\":
                self._escaped = True
            elif char == "'":
                self._stack.pop()
        elif top == COMMENT:
            if char == "\n":
                self._stack.pop()
                self._newline()
        elif top == DOUBLE:
            if char == "\\":
                self._escaped = True
            elif char == '"':
                self._stack.pop()
            else:
                self._opens_substitution(char)
        else:
            self._unquoted(char, top)

    def _unquoted(self, char: str, top: str) -> None:
        if char == "\\":
            self._escaped = True
        elif char == "'":
            self._stack.append(ANSI if self._tail.endswith("$") else SINGLE)
        elif char == '"':
            self._stack.append(DOUBLE)
        elif char == "#" and (not self._tail or self._tail[-1] in _WORD_BREAK):
            self._stack.append(COMMENT)
        elif char == "`" and top == _BACKTICK:
            self._stack.pop()
        elif char == ")" and top == _SUBSTITUTION:
            if self._depths[-1]:
                self._depths[-1] -= 1
            else:
                self._stack.pop()
                self._depths.pop()
        elif char == "(" and top == _SUBSTITUTION and not self._tail.endswith("$"):
            self._depths[-1] += 1
        elif char == "\n":
            self._newline()
        elif char == "<" and self._tail.endswith("<") and not self._tail.endswith("<<") and not self._word:
            self._word = _Heredoc()  # `<<`: a here-document, unless a third `<` follows
        else:
            self._opens_substitution(char)

    def _opens_substitution(self, char: str) -> None:
        if char == "(" and self._tail.endswith("$"):
            self._stack.append(_SUBSTITUTION)
            self._depths.append(0)
        elif char == "`":
            self._stack.append(_BACKTICK)

    # -- here-documents ------------------------------------------------------------------------------------

    def _delimiter(self, char: str) -> None:
        """Read the word after `<<` (as the shell does: quoting anywhere in it means a quoted body)."""
        word = self._word
        assert word is not None
        if word.quote:
            if char == word.quote:
                word.quote = ""
            else:
                word.delimiter += char
            return
        if not word.started:
            if char == "<" and not word.delimiter:
                self._word = None  # `<<<`: a here-string
                return
            if char == "-" and not word.strip_tabs:
                word.strip_tabs = True
                return
            if char in " \t":
                return
            word.started = True
        if char in "'\"":
            word.quote, word.quoted = char, True
        elif char == "\\":
            word.quoted = True
        elif char in _WORD_BREAK:
            if word.delimiter:
                self._pending.append(word)
            self._word = None
        else:
            word.delimiter += char

    def _newline(self) -> None:
        if self._word is not None and self._word.delimiter:
            self._pending.append(self._word)
        self._word = None
        if self._pending:
            self._body = self._pending.pop(0)
            self._line = ""

    def _in_body(self, char: str) -> None:
        body = self._body
        assert body is not None
        if char != "\n":
            self._line += char
            return
        line = self._line.lstrip("\t") if body.strip_tabs else self._line
        self._line = ""
        if line == body.delimiter:
            self._body = self._pending.pop(0) if self._pending else None
