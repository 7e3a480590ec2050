"""GPU names as users write them (`A100`, `RTX4090`, `A10G`) against names as drivers report them.

`nvidia-smi` says "NVIDIA A100-SXM4-80GB", "NVIDIA GeForce RTX 4090" or "Tesla T4"; `rocm-smi` says "AMD
Instinct MI300X". A user asks for `A100`, `RTX4090`, `T4` or `MI300X` (dstack's catalog names). Matching
is on whole model names, so `A10` never matches an A100 and `A100` never matches an A10G.
"""

from __future__ import annotations

import re
from functools import lru_cache

# Words that name the vendor or the product line, not the model.
_LINE_WORDS = frozenset({"NVIDIA", "AMD", "GEFORCE", "TESLA", "QUADRO", "RADEON", "INSTINCT", "INTEL"})
# Words that describe a variant of a model (form factor, memory type); dropped from the model name.
_VARIANT = re.compile(r"^(\d+(\.\d+)?[GM]B|PCIE|SXM\d?|HBM\d?E?|GDDR\d\w*|OAM)$")
# Series prefixes that are part of the catalog name when a number follows (RTX 4090 -> RTX4090).
_SERIES = frozenset({"RTX", "GTX"})


@lru_cache(maxsize=256)
def gpu_aliases(name: str) -> frozenset[str]:
    """Every catalog-style name the device `name` answers to, upper-case without separators."""
    tokens = [t for t in re.split(r"[\s\-_/]+", name.upper()) if t and t not in _LINE_WORDS]
    model = [t for t in tokens if not _VARIANT.match(t)]
    aliases = {_compact(name)}
    if model:
        aliases.add(model[0])
        aliases.add("".join(model))
        if len(model) > 1:
            aliases.add(model[0] + model[1])
            if model[0] in _SERIES:
                aliases.add(model[1])  # "RTX A6000" is also just "A6000"
    return frozenset(a for a in aliases if a)


def gpu_short_name(name: str) -> str:
    """The catalog name shown in plans: "NVIDIA H100 80GB HBM3" -> "H100", "GeForce RTX 4090" -> "RTX4090"."""
    tokens = [t for t in re.split(r"[\s\-_/]+", name.upper()) if t and t not in _LINE_WORDS]
    model = [t for t in tokens if not _VARIANT.match(t)]
    if not model:
        return name.strip() or "GPU"
    if model[0] in _SERIES and len(model) > 1:
        return model[0] + model[1] if model[1][0].isdigit() else model[1]
    return model[0]


def gpu_name_matches(asked: str, name: str) -> bool:
    return _compact(asked) in gpu_aliases(name)


def _compact(text: str) -> str:
    return re.sub(r"[\s\-_/]+", "", text.upper())
