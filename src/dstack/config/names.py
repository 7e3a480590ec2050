"""Run names: validation and readable random names such as `wet-mangust-7`."""

from __future__ import annotations

import re

from dstack.config.errors import ConfigError, show_value

_RUN_NAME = re.compile(r"[a-z][a-z0-9-]{1,40}")

_ADJECTIVES = (
    "bold", "brave", "bright", "calm", "clever", "cool", "cosy", "crisp", "curly", "dark",
    "eager", "fast", "fresh", "fuzzy", "gentle", "glad", "grumpy", "happy", "honest", "jolly",
    "keen", "kind", "lazy", "lucky", "mighty", "misty", "nice", "odd", "proud", "quick",
    "quiet", "rapid", "shiny", "silent", "smart", "sunny", "swift", "tall", "tidy", "warm",
    "wet", "wild", "wise", "witty", "young",
)  # fmt: skip
_ANIMALS = (
    "ant", "badger", "bat", "bear", "beaver", "bison", "camel", "cat", "cobra", "crab",
    "crane", "crow", "deer", "dingo", "dog", "dolphin", "duck", "eagle", "eel", "falcon",
    "ferret", "fox", "frog", "gecko", "goat", "goose", "hare", "hawk", "horse", "ibis",
    "koala", "lemur", "lion", "llama", "lynx", "mangust", "mole", "moose", "otter", "owl",
    "panda", "parrot", "puma", "rabbit", "seal", "shark", "sloth", "snake", "swan", "tiger",
    "turtle", "wolf", "yak", "zebra",
)  # fmt: skip


def validate_run_name(name: str) -> str:
    """Return the name if it is a valid run name, else raise ConfigError saying what is allowed."""
    if not isinstance(name, str) or not _RUN_NAME.fullmatch(name):
        raise ConfigError(
            f"Invalid run name {show_value(name)}; use 2 to 41 lowercase letters, digits and '-', "
            "starting with a letter (e.g. train-llama)"
        )
    return name


def random_run_name() -> str:
    """A readable name `adjective-animal-N` with N in 1..99, e.g. `wet-mangust-7`."""
    # `secrets` rather than `random` only to keep security linters quiet; nothing here is secret. Imported
    # here: the CLI imports this module, and only the server draws names.
    import secrets

    number = secrets.randbelow(99) + 1
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_ANIMALS)}-{number}"
