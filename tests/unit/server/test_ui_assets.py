"""The web UI's assets: all shipped in the package, all local, no HTML built from strings, every module
import resolving (there is no build step to catch a typo)."""

from __future__ import annotations

import re
from pathlib import Path

import dstack
from dstack.server.ui.app import STATIC_DIR

PACKAGE = Path(dstack.__file__).parent
ROOT = PACKAGE.parent.parent
ASSETS = sorted(p for p in STATIC_DIR.rglob("*") if p.is_file())
SCRIPTS = [p for p in ASSETS if p.suffix == ".js"]


def test_every_asset_is_package_data() -> None:
    # (tomllib is 3.11+: read the one list by hand.)
    section = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]", 1)[1]
    listed = section.split("dstack = [", 1)[1].split("]", 1)[0]
    patterns = [line.strip().split('"')[1] for line in listed.splitlines() if line.strip().startswith('"')]
    shipped = {p for pattern in patterns for p in PACKAGE.glob(pattern)}
    assert ASSETS and SCRIPTS
    assert [p for p in ASSETS if p not in shipped] == []


def test_nothing_is_fetched_from_elsewhere() -> None:
    for asset in ASSETS:
        text = asset.read_text()
        # The SVG namespace is an identifier, not a fetch; 127.0.0.1 is text shown (a forwarded port).
        urls = re.findall(r"https?://[^\s\"'`)]+", text)
        assert [
            u for u in urls if u != "http://www.w3.org/2000/svg" and not u.startswith("http://127.0.0.1")
        ] == []
        assert "@import" not in text and "@font-face" not in text, asset


def test_no_inline_script_or_style_and_no_html_from_strings() -> None:
    index = (STATIC_DIR / "index.html").read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", index) == []
    assert " style=" not in index and "<style" not in index and not re.search(r"\son\w+=", index)
    for script in SCRIPTS:
        code = [
            line
            for line in script.read_text().splitlines()
            if not line.lstrip().startswith(("//", "*", "/**"))
        ]
        text = "\n".join(code)
        for sink in (
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
        ):
            assert sink not in text, (script.name, sink)


def test_every_module_import_resolves() -> None:
    for script in SCRIPTS:
        for target in re.findall(r"""^import .* from "(\.[^"]+)";$""", script.read_text(), re.MULTILINE):
            assert (script.parent / target).resolve().is_file(), (script.name, target)
