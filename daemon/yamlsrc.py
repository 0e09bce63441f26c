"""YAML that remembers where every value came from, so each config error can name its file and line.

The resolver is deliberately narrower than PyYAML's YAML 1.1 default: only `true`/`false` are booleans and only
decimal numbers are numbers. Home-automation YAML is full of `ON`/`OFF`, `yes`/`no` and IEEE addresses such as
`0x00158d0001a2b3c4`; under YAML 1.1 those silently become booleans and integers.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# A config, a tool pack or a scenario is small and shallow. These limits turn a hostile or broken file (a billion
# laughs of aliases, 5000-deep nesting, /dev/zero, a FIFO) into one clear error instead of memory, time or a hang.
MAX_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000  # after expanding every alias


class LDict(dict):
    """A mapping with the line of each key."""

    file: str = "?"
    line: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lines: dict[Any, int] = {}


class LList(list):
    """A sequence with the line of each item."""

    file: str = "?"
    line: int = 0

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.lines: list[int] = []


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    where: str
    message: str

    def __str__(self) -> str:
        place = f"{self.file}:{self.line}" if self.line else self.file
        return f"{place}: {self.where}: {self.message}" if self.where else f"{place}: {self.message}"


class ConfigError(Exception):
    """One or more problems in the configuration, each with its place."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class _Limit(yaml.MarkedYAMLError):
    """A document over MAX_DEPTH or MAX_NODES."""


class _Loader(yaml.SafeLoader):
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _Limit(problem=f"nested deeper than {MAX_DEPTH} levels", problem_mark=mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            total = _expanded_size(node, {})
            if total > MAX_NODES:
                raise _Limit(
                    problem=f"expands to {total} values through its aliases (at most {MAX_NODES})",
                    problem_mark=node.start_mark,
                )
        return node


def _expanded_size(node: yaml.Node, seen: dict[int, int]) -> int:
    """Values the document holds once every alias is spelled out (memoised per node: aliases share nodes)."""
    key = id(node)
    if key in seen:
        return seen[key]
    seen[key] = 1  # a cycle counts once
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, seen) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, seen) + _expanded_size(v, seen) for k, v in node.value)
    else:
        size = 1
    seen[key] = min(size, MAX_NODES + 1)
    return seen[key]


# Start from no implicit resolvers at all, then add the few we want (see the module docstring).
_Loader.yaml_implicit_resolvers = {}
for _tag, _regexp, _first in [
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^[-+]?[0-9]+$", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
]:
    _Loader.add_implicit_resolver(_tag, re.compile(_regexp), list(_first))


def _construct_bool(loader: _Loader, node: yaml.ScalarNode) -> bool:
    return loader.construct_scalar(node).lower() == "true"


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    return int(loader.construct_scalar(node))


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Iterable[LDict]:
    data = LDict()
    data.file, data.line = loader.name, node.start_mark.line + 1
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise ConfigError([Problem(loader.name, line, "", "a mapping key must be a plain value")]) from None
        if key in data:
            raise ConfigError(
                [Problem(loader.name, line, str(key), f"duplicate key (first set on line {data.lines[key]})")]
            )
        data[key] = loader.construct_object(value_node, deep=True)
        data.lines[key] = line


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> Iterable[LList]:
    data = LList()
    data.file, data.line = loader.name, node.start_mark.line + 1
    yield data
    for child in node.value:
        data.append(loader.construct_object(child, deep=True))
        data.lines.append(child.start_mark.line + 1)


_Loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def read_text_file(path: Path, name: str, max_bytes: int = MAX_BYTES) -> str:
    """A small UTF-8 text file, or ConfigError: never a device, a FIFO or a huge file, never a control byte."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block the open
    except FileNotFoundError:
        raise ConfigError([Problem(name, 0, "", "file not found")]) from None
    except OSError as exc:
        raise ConfigError([Problem(name, 0, "", f"cannot read: {exc.strerror or exc}")]) from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError([Problem(name, 0, "", "not a regular file (a device, FIFO or folder cannot be read)")])
        if info.st_size > max_bytes:
            raise ConfigError([Problem(name, 0, "", f"{info.st_size} bytes; at most {max_bytes} are read")])
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ConfigError([Problem(name, 0, "", f"more than {max_bytes} bytes; at most {max_bytes} are read")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError([Problem(name, line, "", f"not UTF-8 text (byte {data[exc.start]:#04x})")]) from None
    for number, line_text in enumerate(text.splitlines(), 1):
        bad = next((c for c in line_text if unicodedata.category(c) == "Cc" and c not in "\t\r"), None)
        if bad is not None:
            raise ConfigError([Problem(name, number, "", f"control character {ord(bad):#04x} in the text")])
    return text


def load_yaml(path: Path, display: str | None = None) -> Any:
    """Parse one YAML file; every problem (syntax, size, depth, aliases, bytes) is a ConfigError with file:line."""
    name = display or str(path)
    text = read_text_file(Path(path), name)
    loader = _Loader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        what = "YAML" if isinstance(exc, _Limit) else "YAML syntax"
        raise ConfigError([Problem(name, line, "", f"{what}: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(name, 0, "", f"YAML: {exc}")]) from None
    except RecursionError:  # a guard behind MAX_DEPTH, for nesting the composer never sees (flow collections)
        raise ConfigError([Problem(name, 0, "", f"nested too deeply (at most {MAX_DEPTH} levels)")]) from None
    finally:
        loader.dispose()


def locate(root: Any, path: Sequence[Any]) -> tuple[str, int]:
    """The file and line of the deepest located value along `path`; path parts that match nothing are skipped,
    which passes over the union-member tags pydantic puts into error locations."""
    file, line = getattr(root, "file", "?"), getattr(root, "line", 0)
    node = root
    for part in path:
        if isinstance(node, LDict) and part in node:
            key_line, child = node.lines.get(part, node.line), node[part]
        elif isinstance(node, LList) and isinstance(part, int) and 0 <= part < len(node):
            key_line, child = node.lines[part], node[part]
        else:
            continue
        file, line = node.file, key_line
        # A value spliced in from another file (an included tool pack) is reported at its own place.
        if isinstance(child, LDict | LList) and child.file != node.file:
            file, line = child.file, child.line
        node = child
    return file, line


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' when a close match exists, else ''."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def dotted(path: Sequence[Any]) -> str:
    """('tools', 2, 'publish', 'topic') -> 'tools[2].publish.topic'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
