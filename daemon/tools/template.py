"""Templates for topics and payloads: `{name}` takes an argument, `{previous.field}` a field of the device state
seen before the publish, `{name|fallback}` a fallback text. `{{` and `}}` are literal braces.

A string that is exactly one placeholder keeps the value's type (an integer stays an integer in the JSON payload);
a mapping value whose placeholder has no value drops its key, so absent optional arguments vanish cleanly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_REF = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z0-9_\-]+)*)\s*(?:\|(.*))?$")


class TemplateError(ValueError):
    """A template that cannot be parsed."""


class Missing(LookupError):
    """A placeholder has no value. An absent optional argument may drop its key; an unknown previous state may
    not (an undo with half its payload missing would do the wrong thing)."""

    def __init__(self, why: str, droppable: bool) -> None:
        super().__init__(why)
        self.droppable = droppable


@dataclass(frozen=True)
class Ref:
    name: str
    path: tuple[str, ...]
    fallback: str | None

    def __str__(self) -> str:
        return "{" + ".".join((self.name, *self.path)) + "}"


@dataclass(frozen=True)
class Template:
    parts: tuple[str | Ref, ...]

    @property
    def whole(self) -> Ref | None:
        """The lone placeholder of a template like "{brightness}": its value keeps its type."""
        if len(self.parts) == 1 and isinstance(self.parts[0], Ref):
            return self.parts[0]
        return None

    def refs(self) -> Iterator[Ref]:
        return (p for p in self.parts if isinstance(p, Ref))

    def literal_text(self) -> str:
        return "".join(p if isinstance(p, str) else str(p) for p in self.parts)


def parse(text: str) -> Template:
    parts: list[str | Ref] = []
    buf = ""
    pos = 0
    for m in _TOKEN.finditer(text):
        buf += text[pos : m.start()]
        pos = m.end()
        tok = m.group(0)
        if tok in ("{{", "}}"):
            buf += tok[0]
        elif tok in ("{", "}"):
            raise TemplateError(f"unbalanced '{tok}' at position {m.start()} (write {tok}{tok} for a literal brace)")
        else:
            ref = _REF.match(m.group(1))
            if not ref:
                raise TemplateError(
                    f"bad placeholder {tok}: expected {{name}}, {{previous.field}} or {{name|fallback}}"
                )
            if buf:
                parts.append(buf)
                buf = ""
            path = tuple(ref.group(2).split(".")[1:]) if ref.group(2) else ()
            parts.append(Ref(ref.group(1), path, ref.group(3)))
    buf += text[pos:]
    if buf or not parts:
        parts.append(buf)
    return Template(tuple(parts))


# A compiled value: a Template where the source had a string, containers of compiled values, other scalars as is.
Node = Any


def compile_value(raw: Any) -> Node:
    if isinstance(raw, str):
        return parse(raw)
    if isinstance(raw, Mapping):
        return {str(k): compile_value(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [compile_value(v) for v in raw]
    return raw


def walk(node: Node, where: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Template]]:
    """Every template in a compiled value, with its path, for load-time checks."""
    if isinstance(node, Template):
        yield where, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, (*where, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, (*where, i))


class Env:
    """What placeholders resolve against: the call's arguments and the previous device state."""

    def __init__(self, args: Mapping[str, Any], previous: Any = None) -> None:
        self.args = args
        self.previous = previous

    def lookup(self, ref: Ref) -> Any:
        if ref.name == "previous":
            value: Any = self.previous
            if value is None:
                return self._fallback(ref, "the previous state is unknown", False)
            for key in ref.path:
                if not isinstance(value, Mapping) or key not in value:
                    return self._fallback(ref, f"the previous state has no field '{'.'.join(ref.path)}'", False)
                value = value[key]
            return value
        if ref.name in self.args:
            return self.args[ref.name]
        return self._fallback(ref, f"no value for {ref}", True)

    @staticmethod
    def _fallback(ref: Ref, why: str, droppable: bool) -> Any:
        if ref.fallback is not None:
            return ref.fallback
        raise Missing(why, droppable)


def to_text(value: Any) -> str:
    """How a value reads inside a string: JSON spelling for booleans and null, so payloads stay consistent."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def render_text(t: Template, env: Env) -> str:
    return "".join(p if isinstance(p, str) else to_text(env.lookup(p)) for p in t.parts)


def render(node: Node, env: Env) -> Any:
    """Render a compiled value. Raises Missing when a required placeholder has no value."""
    if isinstance(node, Template):
        whole = node.whole
        return env.lookup(whole) if whole is not None else render_text(node, env)
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            try:
                out[k] = render(v, env)
            except Missing as missing:
                if missing.droppable and isinstance(v, Template) and v.whole is not None:
                    continue  # an absent optional value drops its key
                raise
        return out
    if isinstance(node, list):
        return [render(v, env) for v in node]
    return node
