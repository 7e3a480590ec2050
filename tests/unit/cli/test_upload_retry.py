"""A file saved while the code packs or uploads is packed again, not an error, unless it keeps changing."""

from __future__ import annotations

import pytest

from dstack.cli import run_flow
from dstack.code.errors import FileChangedError


def test_a_file_changed_once_is_packed_again() -> None:
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise FileChangedError("a.py", "uploaded")
        return "code-hash"

    assert run_flow._consistent(attempt) == "code-hash"
    assert len(calls) == 2


def test_a_file_that_keeps_changing_is_one_sentence_after_the_last_attempt() -> None:
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        raise FileChangedError("log.txt", "packed")

    with pytest.raises(FileChangedError, match=r"^The file log\.txt changed"):
        run_flow._consistent(attempt)
    assert len(calls) == run_flow.PACK_ATTEMPTS
