"""YAML text -> plain Python data, remembering where every key and value came from.

PyYAML's constructors follow YAML 1.1 (`on`/`yes` are booleans, `3000:7860` is a base-60 integer),
which surprises users. We only use its composer for nodes with marks and convert scalars ourselves with
YAML-1.2-like rules: true/false/null, decimal integers and floats; everything else stays a string.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml

from dstack.config.errors import ConfigError, Location

SourcePath = tuple[str | int, ...]

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_SCALAR_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "timestamp", "value")
)
_COLLECTION_TAGS = frozenset({"tag:yaml.org,2002:seq", "tag:yaml.org,2002:map"})
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_TRUES = frozenset({"true", "True", "TRUE"})
_FALSES = frozenset({"false", "False", "FALSE"})
_INT = re.compile(r"[-+]?[0-9]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_SPECIAL_FLOATS = {
    **{f"{sign}.{word}": float(f"{sign}inf") for sign in ("", "+", "-") for word in ("inf", "Inf", "INF")},
    **{f".{word}": float("nan") for word in ("nan", "NaN", "NAN")},
}
# Aliases can expand a small file into a huge structure ("billion laughs"); no real config comes close.
_MAX_NODES = 100_000

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlInt(int):
    """An integer written unusually (`007`, `+5`); remembers the text for values that are strings."""

    yaml_text: str

    def __new__(cls, text: str) -> YamlInt:
        value = super().__new__(cls, text)
        value.yaml_text = text
        return value


class YamlFloat(float):
    """A float that remembers how it was written, so `python: 3.10` can mean "3.10" rather than 3.1."""

    yaml_text: str

    def __new__(cls, text: str) -> YamlFloat:
        value = super().__new__(cls, text)
        value.yaml_text = text
        return value


@dataclass(frozen=True)
class _Position:
    line: int
    column: int
    is_scalar: bool


@dataclass
class SourceMap:
    """Positions of every value (and of every mapping key) by their path from the document root."""

    file: str
    values: dict[SourcePath, _Position] = field(default_factory=dict)
    keys: dict[SourcePath, _Position] = field(default_factory=dict)

    def has(self, path: SourcePath) -> bool:
        return path in self.values

    def locate(self, path: SourcePath, *, prefer_key: bool = False) -> Location:
        """The best place to point at for `path`: a scalar's value, a block's key, else the file."""
        value = self.values.get(path)
        key = self.keys.get(path)
        chosen = key if key is not None and (prefer_key or value is None or not value.is_scalar) else value
        if chosen is None:
            return Location(self.file)
        return Location(self.file, chosen.line, chosen.column)

    def alias(self, path: SourcePath, same_as: SourcePath) -> None:
        """Make `path` locate like `same_as` (for data that validation reshapes, e.g. env lists)."""
        if same_as in self.values:
            self.values[path] = self.values[same_as]
        if same_as in self.keys:
            self.keys[path] = self.keys[same_as]


@dataclass
class YamlDocument:
    data: Any
    source: SourceMap


def read_yaml(text: str, *, filename: str) -> YamlDocument:
    """Parse one YAML document; every problem is a ConfigError located in `filename`."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as error:
        raise _syntax_error(error, filename) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"Invalid YAML: {_one_line(str(error))}", file=filename) from None
    except RecursionError:
        raise ConfigError("The YAML is nested too deeply to read", file=filename) from None
    source = SourceMap(filename)
    if root is None:
        return YamlDocument(None, source)
    converter = _Converter(source)
    try:
        data = converter.convert(root, ())
    except RecursionError:
        raise ConfigError("The YAML is nested too deeply to read", file=filename) from None
    return YamlDocument(data, source)


def _syntax_error(error: yaml.MarkedYAMLError, filename: str) -> ConfigError:
    mark = error.problem_mark or error.context_mark
    problem = error.problem or error.context or "unreadable content"
    message = f"Invalid YAML: {_one_line(problem)}"
    if mark is None:
        return ConfigError(message, file=filename)
    return ConfigError(message, file=filename, line=mark.line + 1, column=mark.column + 1)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Converter:
    def __init__(self, source: SourceMap) -> None:
        self._source = source
        self._active: set[int] = set()
        self._count = 0

    def convert(self, node: yaml.Node, path: SourcePath) -> Any:
        self._count += 1
        if self._count > _MAX_NODES:
            raise self._error("The YAML is too large after expanding its aliases", node)
        self._source.values[path] = _position(node, is_scalar=isinstance(node, yaml.ScalarNode))
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node)
        if node.tag not in _COLLECTION_TAGS:
            raise self._error(f"Unsupported YAML tag '{_short_tag(node.tag)}'; remove it", node)
        if id(node) in self._active:
            raise self._error("A YAML alias refers to the block that contains it", node)
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.convert(item, (*path, index)) for index, item in enumerate(node.value)]
            return self._mapping(node, path)
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: yaml.Node, path: SourcePath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                raise self._error("YAML merge keys ('<<') are not supported; write the keys out", key_node)
            if not isinstance(key_node, yaml.ScalarNode):
                raise self._error("A mapping key must be a plain word, not a list or a mapping", key_node)
            key = str(key_node.value)
            key_path = (*path, key)
            if key in result:
                first = self._source.keys[key_path]
                raise self._error(f"Duplicate key '{key}' (first given at line {first.line})", key_node)
            self._source.keys[key_path] = _position(key_node, is_scalar=True)
            result[key] = self.convert(value_node, key_path)
        return result

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        text = str(node.value)
        if node.style or node.tag == _STR_TAG:
            # Quoted and block scalars are strings (plain style is None or "", depending on the loader);
            # so is anything YAML itself resolved to a string.
            return text
        if node.tag not in _SCALAR_TAGS:
            raise self._error(f"Unsupported YAML tag '{_short_tag(node.tag)}'; remove it", node)
        if text in _NULLS:
            return None
        if text in _TRUES:
            return True
        if text in _FALSES:
            return False
        if _INT.fullmatch(text):
            if _too_long_for_int(text):
                # Python refuses to read it (4,300 digits by default); as text, validators say what is wrong.
                return text
            number = int(text)
            return number if str(number) == text else YamlInt(text)
        if text in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[text]
        if _FLOAT.fullmatch(text):
            return YamlFloat(text)
        return text

    def _error(self, message: str, node: yaml.Node) -> ConfigError:
        mark = node.start_mark
        return ConfigError(message, file=self._source.file, line=mark.line + 1, column=mark.column + 1)


def _too_long_for_int(text: str) -> bool:
    limit = sys.get_int_max_str_digits()
    return limit > 0 and len(text.lstrip("+-")) > limit


def _position(node: yaml.Node, *, is_scalar: bool) -> _Position:
    return _Position(node.start_mark.line + 1, node.start_mark.column + 1, is_scalar)


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag
