"""`pip` in a task's Python environment: uv's pip where uv can do what was asked, pip itself otherwise.

pip takes a second or more just to start and resolve on a busy host; `uv pip` installs a package it has
already downloaded in tens of milliseconds, hard-linking it from its cache. So the `pip` scripts of the
venvs the agent makes run this file: it turns the command line, pip's PIP_* variables and pip's
configuration files into the equivalent `uv pip` command, and runs pip itself (`python -m pip`) for
anything it cannot carry over exactly — another subcommand, an option uv lacks, a setting it cannot
translate — so a task never gets a different install than pip would have made, only a faster one.

This file is copied into each venv's bin/ as the `pip`, `pip3` and `pip3.X` scripts (`install_shims`),
with the venv's interpreter in its first line and the path of uv in UV; it imports nothing of dstack.
Set DSTACK_PIP=pip in a task's env to always run pip itself.
"""

from __future__ import annotations

import configparser
import os
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

UV = ""  # replaced in each copy by the path of uv on the host
# The commands worth the speed; `list`, `freeze` and `show` print what pip prints only when pip runs them.
SUBCOMMANDS = ("install", "uninstall")

# pip option -> (how many values it takes, uv's spelling or None to drop it); anything else: pip itself.
_OPTIONS: Dict[str, Tuple[int, Optional[str]]] = {
    "-U": (0, "--upgrade"),
    "--upgrade": (0, "--upgrade"),
    "--no-deps": (0, "--no-deps"),
    "--pre": (0, "--prerelease=allow"),
    "-q": (0, "--quiet"),
    "--quiet": (0, "--quiet"),
    "-v": (0, "--verbose"),
    "--verbose": (0, "--verbose"),
    "--no-index": (0, "--no-index"),
    "--force-reinstall": (0, "--reinstall"),
    "--no-build-isolation": (0, "--no-build-isolation"),
    "--require-hashes": (0, "--require-hashes"),
    "--break-system-packages": (0, "--break-system-packages"),
    "--no-cache-dir": (0, "--no-cache"),
    "--compile": (0, "--compile-bytecode"),
    "--no-compile": (0, None),
    "--disable-pip-version-check": (0, None),
    "--no-input": (0, None),
    "--no-warn-script-location": (0, None),
    "--no-color": (0, None),
    "--require-virtualenv": (0, None),
    "-y": (0, None),  # uninstall: uv never asks
    "--yes": (0, None),
    "-e": (1, "--editable"),
    "--editable": (1, "--editable"),
    "-r": (1, "--requirement"),
    "--requirement": (1, "--requirement"),
    "-c": (1, "--constraint"),
    "--constraint": (1, "--constraint"),
    "-i": (1, "--index-url"),
    "--index-url": (1, "--index-url"),
    "--extra-index-url": (1, "--extra-index-url"),
    "-f": (1, "--find-links"),
    "--find-links": (1, "--find-links"),
    "--only-binary": (1, "--only-binary"),
    "--no-binary": (1, "--no-binary"),
    "-t": (1, "--target"),
    "--target": (1, "--target"),
    "--prefix": (1, "--prefix"),
    "--trusted-host": (1, "--allow-insecure-host"),
    "--progress-bar": (1, None),
    "--root-user-action": (1, None),
    "--timeout": (1, "env:UV_HTTP_TIMEOUT"),
    "--cert": (1, "env:SSL_CERT_FILE"),
}
# pip settings (PIP_NAME variables, `name = value` in pip.conf) -> the option they stand for.
_SETTINGS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "no-index": "--no-index",
    "pre": "--pre",
    "constraint": "--constraint",
    "cert": "--cert",
    "trusted-host": "--trusted-host",
    "timeout": "--timeout",
    "default-timeout": "--timeout",
    "no-cache-dir": "--no-cache-dir",
    "break-system-packages": "--break-system-packages",
    "disable-pip-version-check": "--disable-pip-version-check",
    "no-input": "--no-input",
    "root-user-action": "--root-user-action",
    "progress-bar": "--progress-bar",
    "no-warn-script-location": "--no-warn-script-location",
    "require-virtualenv": "--require-virtualenv",  # it is a virtualenv
}
_MULTI = ("--extra-index-url", "--find-links", "--constraint", "--trusted-host")


def plan(
    argv: Sequence[str], environ: Mapping[str, str], config_files: Sequence[Path]
) -> Optional[Tuple[List[str], Dict[str, str]]]:
    """(uv pip arguments, extra environment) for `pip argv`, or None when pip itself must run it."""
    if not argv or argv[0] not in SUBCOMMANDS or environ.get("DSTACK_PIP") == "pip":
        return None
    command, rest = argv[0], list(argv[1:])
    if command == "uninstall" and not {"-y", "--yes"} & set(rest):
        return None  # pip asks first (and gives up without an answer); uv would not ask
    settings = _settings(environ, config_files) if command == "install" else []
    if settings is None:
        return None
    args: List[str] = [command]
    env: Dict[str, str] = {}
    translated = _translate(settings + rest, _OPTIONS, args, env)
    if not translated:
        return None
    return args, env


def _translate(words: List[str], options: Mapping[str, Tuple[int, Optional[str]]], args: List[str],
               env: Dict[str, str]) -> bool:  # fmt: skip
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if word == "--":
            args += words[index:]
            return True
        if not word.startswith("-") or word == "-":
            args.append(word)
            continue
        name, separator, value = word.partition("=")
        has_value = bool(separator)
        if name not in options and not name.startswith("--") and len(name) > 2:
            name, value, has_value = name[:2], name[2:], True  # -rrequirements.txt
        if name not in options:
            return False
        takes, spelled = options[name]
        if takes and not has_value:
            if index >= len(words):
                return False
            value, index = words[index], index + 1
        elif not takes and has_value:
            return False
        if spelled is None:
            continue
        if spelled.startswith("env:"):
            env[spelled[4:]] = value
        elif takes:
            args += [spelled, value]
        else:
            args.append(spelled)
    return True


def _settings(environ: Mapping[str, str], config_files: Sequence[Path]) -> Optional[List[str]]:
    """pip's settings as command-line options (files first, then PIP_* over them); None if one of them has
    no uv equivalent."""
    found: Dict[str, List[str]] = {}
    for path in config_files:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            return None
        for section in parser.sections():
            if section not in ("global", "install"):
                continue
            for key, value in parser.items(section):
                if key not in _SETTINGS:
                    return None
                found[key] = value.split()
    for name, value in environ.items():
        if not name.startswith("PIP_") or name == "PIP_CONFIG_FILE":
            continue
        key = name[4:].lower().replace("_", "-")
        if key not in _SETTINGS:
            return None
        found[key] = value.split()
    words: List[str] = []
    for key, values in found.items():
        option = _SETTINGS[key]
        takes = _OPTIONS[option][0]
        if not takes:
            if values and values[0].lower() in ("1", "true", "yes", "on"):
                words.append(option)
            elif values and values[0].lower() not in ("0", "false", "no", "off"):
                return None
        elif option in _MULTI:
            for value in values:
                words += [option, value]
        elif values:
            words += [option, values[0]]
    return words


def config_files(environ: Mapping[str, str], prefix: str) -> List[Path]:
    """The configuration files pip would read, in its order (later ones win)."""
    if "PIP_CONFIG_FILE" in environ:
        named = environ["PIP_CONFIG_FILE"]
        return [] if named == os.devnull else [Path(named)]
    xdg = environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(":")
    home = Path(environ.get("HOME", "~")).expanduser()
    candidates = [Path("/etc/pip.conf")]
    candidates += [Path(folder) / "pip" / "pip.conf" for folder in reversed(xdg) if folder]
    candidates += [home / ".pip" / "pip.conf"]
    candidates += [Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "pip" / "pip.conf"]
    candidates += [Path(prefix) / "pip.conf"]
    return [path for path in candidates if path.is_file()]


def main() -> None:  # pragma: no cover - runs as the venv's pip script
    argv = sys.argv[1:]
    uv = UV if UV and os.access(UV, os.X_OK) else ""
    planned = plan(argv, os.environ, config_files(os.environ, sys.prefix)) if uv else None
    if planned is None:
        os.execv(sys.executable, [sys.executable, "-m", "pip", *argv])  # noqa: S606 - exec, as a script does
    args, env = planned
    os.execve(uv, [uv, "pip", args[0], "--python", sys.executable, *args[1:]], {**os.environ, **env})  # noqa: S606


if __name__ == "__main__":
    main()
