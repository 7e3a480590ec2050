"""Which kind of configuration a file holds (`type: task`, `type: fleet`), without parsing it.

`dstack apply -f FILE` takes both kinds: a fleet is applied, a task is run. This look at the text decides
which, before anything is imported (a warm `dstack run` never imports YAML or pydantic); the chosen
loader then validates the file as usual, with located errors. Standard library only.
"""

from __future__ import annotations

import re

# A top-level `type:` line (no indentation), its value plain or quoted, a comment allowed after it.
_TYPE_LINE = re.compile(r"""^type[ \t]*:[ \t]*(["']?)([A-Za-z_-]+)\1[ \t]*(?:#.*)?$""", re.MULTILINE)


def declared_type(text: str) -> str | None:
    """The value of the file's top-level `type:` key, if it has a plain one."""
    match = _TYPE_LINE.search(text)
    return match.group(2) if match else None
