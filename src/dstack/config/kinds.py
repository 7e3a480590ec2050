"""The configuration types (`type:`) this product reads, in one place.

A type is registered with the model that validates it; `type: fleet` plugs in here (`register`) and every
loader, message and schema then knows it. The types of today's dstack that this product does not run are
refused with one sentence that names what it runs.
"""

from __future__ import annotations

import importlib
from typing import Any

# What this product runs, and how; named in every refusal, whether or not its model is registered yet.
PRODUCT_TYPES = {"task": "dstack run or dstack apply", "fleet": "dstack apply"}
# Today's dstack's other types: a file of one of them is refused, not misread.
DSTACK_ONLY_TYPES = ("service", "dev-environment", "volume", "gateway")

_MODELS: dict[str, str] = {
    "task": "dstack.config.task:TaskConfiguration",
    "fleet": "dstack.config.fleet:FleetConfiguration",
}


def register(kind: str, model: str) -> None:
    """Register `module:Class` as the model of `type: kind` (imported when a file of that type is read)."""
    _MODELS[kind] = model


def registered() -> list[str]:
    return list(_MODELS)


def model_for(kind: str) -> Any:
    module, _, name = _MODELS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def runs_phrase() -> str:
    return " and ".join(f"type: {kind} ({how})" for kind, how in PRODUCT_TYPES.items())


def unsupported_message(kind: object, described: str = "not a word") -> str:
    """One sentence for a `type:` that is not registered (`described`: how to name a non-string type)."""
    if not isinstance(kind, str):
        return f"Invalid configuration type ({described}); this product runs {runs_phrase()}"
    if kind in PRODUCT_TYPES:
        return f"Configuration type '{kind}' is not available in this version yet; it runs type: task"
    what = "today's dstack runs it, this product does not" if kind in DSTACK_ONLY_TYPES else "unknown type"
    return f"Configuration type '{kind}' is not supported ({what}); this product runs {runs_phrase()}"
