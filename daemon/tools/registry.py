"""Tools compiled from their specs: templates parsed, topic sets enumerated and checked, arguments validated.

Everything that can be refused is refused here, at load time or before a call publishes anything.
"""

from __future__ import annotations

import itertools
import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from pydantic import ValidationError

from ..schema import topic_problem
from ..yamlsrc import suggest
from . import template as tpl
from .spec import STRING_MAX_LENGTH, Availability, Param, Publish, ToolSpec

MAX_TOPIC_COMBINATIONS = 10_000


class SpecError(Exception):
    """Problems in one tool spec, each with its path inside the tool."""

    def __init__(self, problems: list[tuple[tuple[Any, ...], str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(msg for _, msg in problems))


class ArgumentError(ValueError):
    """A call's arguments were refused; nothing was published."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + f"…({len(text)} chars)"


@dataclass(frozen=True)
class CompiledPublish:
    topic: tpl.Template
    payload: tpl.Node
    qos: int
    retain: bool
    when: str | None = None  # sent only when this argument is given


@dataclass(frozen=True)
class RenderedPublish:
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class Tool:
    spec: ToolSpec
    publishes: list[CompiledPublish]
    undo: list[CompiledPublish]
    confirm_topic: tpl.Template | None
    confirm_expect: tpl.Node
    state_topic: tpl.Template | None  # where {previous.*} comes from
    read_topic: tpl.Template | None
    topics: frozenset[str]  # every topic this tool can ever publish to
    watched: frozenset[str]  # every state topic to subscribe to at start-up
    schema: dict[str, Any]
    defaults: dict[str, Any]
    _validator: jsonschema.Draft202012Validator = field(repr=False)
    variants: dict[str, Tool] = field(default_factory=dict)  # device name → its own tool (`devices:`)
    availability: Availability | None = None  # a device's: where it says it is offline
    gone: str | None = None  # why a device's calls fail now (it left the discovery data it came from)
    source: str | None = None  # a device's: where it was found

    @property
    def name(self) -> str:
        return self.spec.name

    def select(self, args: Any) -> tuple[Tool, dict[str, Any]]:
        """The tool that runs this call and its checked arguments: the named device's own tool, checked against
        that device's parameters and ranges, for a tool with `devices:`; else this tool."""
        if not self.variants:
            return self, self.check_args(args)
        self._validate(args)
        chooser = self.spec.device_parameter
        assert chooser is not None
        device = self.variants[args[chooser]]
        rest = {k: v for k, v in args.items() if k != chooser}
        refused = sorted(set(rest) - set(device.spec.parameters))
        if refused:
            takes = ", ".join(device.spec.parameters) or "nothing else"
            raise ArgumentError([f"{args[chooser]} cannot take {', '.join(refused)} (it takes {takes})"])
        return device, device.check_args(rest)

    def declaration(self) -> dict[str, Any]:
        """Transport-neutral function declaration: the live layer turns it into Gemini's form."""
        return {
            "name": self.spec.name,
            "description": self.spec.description,
            "parameters": self.schema,
            "behavior": self.spec.behavior,
        }

    def check_args(self, args: Any) -> dict[str, Any]:
        """Validated arguments with defaults applied and maps resolved: what templates render from.
        Raises ArgumentError listing every problem."""
        self._validate(args)
        out: dict[str, Any] = {}
        for name, param in self.spec.parameters.items():
            value = args.get(name, self.defaults.get(name))
            if value is None:
                continue
            if param.type == "integer":
                value = int(value)
            if param.scale is not None:
                value = round(value * param.scale) if param.type == "integer" else value * param.scale
            if param.map is not None:
                value = param.map[value]
            out[name] = value
        return out

    def _validate(self, args: Any) -> None:
        if not isinstance(args, Mapping):
            raise ArgumentError([f"arguments must be an object, not {type(args).__name__}"])
        problems = [describe_error(e) for e in sorted(self._validator.iter_errors(dict(args)), key=lambda e: e.path)]
        for key, value in args.items():
            if isinstance(value, str) and any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
                problems.append(f"{key}: contains control characters")
        wanted = self.spec.any_of
        if wanted and not any(args.get(name) is not None for name in wanted):
            problems.append(f"give at least one of {', '.join(wanted)}")
        if problems:
            raise ArgumentError(problems)

    def render_publishes(self, items: Sequence[CompiledPublish], env: tpl.Env) -> list[RenderedPublish]:
        """Render and re-check every message before the first goes out, so a call is all or nothing."""
        out = []
        for item in items:
            if item.when is not None and env.args.get(item.when) is None:
                continue
            topic = tpl.render_text(item.topic, env)
            if topic not in self.topics:  # cannot happen after load-time checks; a second lock on the door
                raise ArgumentError([f"refusing to publish to undeclared topic '{_short(topic)}'"])
            out.append(RenderedPublish(topic, encode_payload(tpl.render(item.payload, env)), item.qos, item.retain))
        return out


def encode_payload(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def describe_error(err: jsonschema.ValidationError) -> str:
    """jsonschema's messages echo the whole input; a 10 kB string must not end up in a log or a response."""
    where = ".".join(str(p) for p in err.path) or "arguments"
    inst = err.instance
    shown = _short(repr(inst), 40) if not isinstance(inst, dict) else "object"
    v, s = err.validator, err.validator_value
    if v == "required":
        return f"missing required argument '{err.message.split(chr(39))[1]}'"
    if v == "additionalProperties":
        extra = sorted(set(inst) - set(err.schema.get("properties", {})))
        return f"unknown argument(s): {', '.join(_short(str(x), 40) for x in extra)}"
    if v == "enum":
        return f"{where}: {shown} is not one of {', '.join(map(str, s))}"
    if v == "type":
        return f"{where}: {shown} is not of type {s}"
    if v == "maxLength":
        return f"{where}: longer than {s} characters"
    if v == "minLength":
        return f"{where}: shorter than {s} characters"
    if v in ("minimum", "maximum"):
        return f"{where}: {shown} is {'below the minimum' if v == 'minimum' else 'above the maximum'} of {s}"
    if v == "pattern":
        return f"{where}: {shown} does not match {s}"
    return f"{where}: {_short(err.message, 80)}"


def param_schema(p: Param, default: Any = None) -> dict[str, Any]:
    s: dict[str, Any] = {"type": p.type}
    description = p.description or ""
    if default is not None:
        here = " (the room this assistant is in)" if p.scope == "room" and default != p.default else ""
        description = f"{description} Leave out to mean {default}{here}.".strip()
        s["default"] = default
    if description:
        s["description"] = description
    if p.choices is not None:
        s["enum"] = p.choices
    for key in ("minimum", "maximum", "pattern", "minLength"):
        if getattr(p, key) is not None:
            s[key] = getattr(p, key)
    if p.type == "string" and p.choices is None:
        s["maxLength"] = p.maxLength or STRING_MAX_LENGTH
    return s


def tool_schema(spec: ToolSpec, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A parameter with a default is optional for the model, even when the spec lists it as required."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {n: param_schema(p, defaults.get(n)) for n, p in spec.parameters.items()},
        "additionalProperties": False,
    }
    required = [r for r in spec.required if defaults.get(r) is None]
    if required:
        schema["required"] = required
    return schema


def effective_defaults(spec: ToolSpec, room: str | None) -> dict[str, Any]:
    """Each parameter's default: the satellite's room for `scope: room` when it is one of the choices."""
    out = {}
    for name, p in spec.parameters.items():
        if p.scope == "room" and room is not None and room in (p.choices or []):
            out[name] = room
        elif p.default is not None:
            out[name] = p.default
    return out


class _Checker:
    """Collects a spec's problems with their paths instead of stopping at the first."""

    def __init__(self, spec: ToolSpec, defaults: Mapping[str, Any]) -> None:
        self.spec = spec
        self.defaults = defaults
        self.problems: list[tuple[tuple[Any, ...], str]] = []

    def fail(self, where: tuple[Any, ...], message: str) -> None:
        self.problems.append((where, message))

    def parse(self, raw: str, where: tuple[Any, ...]) -> tpl.Template | None:
        try:
            return tpl.parse(raw)
        except tpl.TemplateError as exc:
            self.fail(where, str(exc))
            return None

    def node(self, raw: Any, where: tuple[Any, ...], allow_previous: bool, when: str | None = None) -> tpl.Node:
        """`when`: the argument without which this payload is not sent at all, so it may use it freely."""
        try:
            node = tpl.compile_value(raw)
        except tpl.TemplateError as exc:
            self.fail(where, str(exc))
            return None
        for path, t in tpl.walk(node, where):
            for ref in t.refs():
                droppable = ref.name == when or (t.whole is not None and _in_mapping(path, where))
                self.check_ref(ref, path, allow_previous, droppable=droppable)
        return node

    def check_ref(self, ref: tpl.Ref, where: tuple[Any, ...], allow_previous: bool, droppable: bool) -> None:
        params = self.spec.parameters
        if ref.name == "previous":
            if not allow_previous:
                self.fail(where, f"{ref} is only available in undo payloads")
            return
        if ref.name not in params:
            self.fail(where, f"unknown placeholder {ref}{suggest(ref.name, params)}")
            return
        if ref.path:
            self.fail(where, f"{ref}: only {{previous.…}} placeholders take a field path")
        optional = ref.name not in self.spec.required and self.defaults.get(ref.name) is None
        if optional and not droppable and ref.fallback is None:
            self.fail(
                where,
                f"optional parameter '{ref.name}' is used where it cannot simply be left out; make it required, "
                f"give it a default or a fallback ({{{ref.name}|…}}), or use it as a whole mapping value",
            )

    def topic(self, raw: str, where: tuple[Any, ...]) -> tuple[tpl.Template | None, set[str]]:
        """A topic template and every concrete topic it can produce."""
        t = self.parse(raw, where)
        if t is None:
            return None, set()
        names: list[str] = []
        for ref in t.refs():
            param = self.spec.parameters.get(ref.name)
            if ref.name == "previous" or param is None:
                self.fail(where, f"unknown placeholder {ref}{suggest(ref.name, self.spec.parameters)}")
            elif param.values is None:
                self.fail(
                    where,
                    f"topic placeholder {ref} must take an enum or map parameter, so the set of topics is fixed "
                    f"when the config loads ('{ref.name}' is a free {param.type})",
                )
            elif any(isinstance(v, dict) for v in param.values):
                self.fail(where, f"topic placeholder {ref} takes a map whose values are objects, not topic text")
            elif ref.name not in self.spec.required and self.defaults.get(ref.name) is None:
                self.fail(where, f"topic placeholder {ref} needs a required parameter or one with a default")
            elif ref.fallback is not None or ref.path:
                self.fail(where, f"topic placeholder {ref} cannot have a fallback or field path")
            elif ref.name not in names:
                names.append(ref.name)
        if any(w == where for w, _ in self.problems):
            return None, set()
        value_lists = [self.spec.parameters[n].values or [] for n in names]
        combos = 1
        for values in value_lists:
            combos *= len(values)
        if combos > MAX_TOPIC_COMBINATIONS:
            self.fail(where, f"topic expands to {combos} topics (more than {MAX_TOPIC_COMBINATIONS})")
            return None, set()
        topics: set[str] = set()
        for combo in itertools.product(*value_lists):
            topic = tpl.render_text(t, tpl.Env(dict(zip(names, combo, strict=True))))
            if problem := topic_problem(topic):
                self.fail(where, problem)
                return None, set()
            topics.add(topic)
        return t, topics

    def publishes(self, items: list[Publish], where: tuple[Any, ...], allow_previous: bool):
        compiled, topics = [], set()
        for i, item in enumerate(items):
            if item.when is not None and item.when not in self.spec.parameters:
                hint = suggest(item.when, self.spec.parameters)
                self.fail((*where, i, "when"), f"unknown parameter '{item.when}'{hint}")
            topic, concrete = self.topic(item.topic, (*where, i, "topic"))
            payload = self.node(item.payload, (*where, i, "payload"), allow_previous, item.when)
            topics |= concrete
            if topic is not None:
                compiled.append(CompiledPublish(topic, payload, item.qos, item.retain, item.when))
        return compiled, topics


def _in_mapping(path: tuple[Any, ...], base: tuple[Any, ...]) -> bool:
    """True when the template sits directly as a mapping value (its key can be dropped)."""
    return len(path) > len(base) and isinstance(path[-1], str)


def compile_tool(spec: ToolSpec, room: str | None = None) -> Tool:
    """`room` is the satellite's assistant.room, for parameters with `scope: room`."""
    if spec.devices is not None:
        return _compile_devices(spec, room)
    defaults = effective_defaults(spec, room)
    c = _Checker(spec, defaults)
    publishes, topics = c.publishes(spec.publish or [], ("publish",), allow_previous=False)
    confirm_topic, confirm_expect, watched = None, None, set()
    if spec.confirm:
        confirm_topic, found = c.topic(spec.confirm.topic, ("confirm", "topic"))
        watched |= found
        confirm_expect = c.node(spec.confirm.expect, ("confirm", "expect"), allow_previous=False)
    undo: list[CompiledPublish] = []
    state_topic = confirm_topic
    if spec.undo:
        undo, undo_topics = c.publishes(spec.undo.publish, ("undo", "publish"), allow_previous=True)
        topics |= undo_topics
        if spec.undo.state_topic:
            state_topic, found = c.topic(spec.undo.state_topic, ("undo", "state_topic"))
            watched |= found
        uses_previous = any(ref.name == "previous" for p in undo for _, t in tpl.walk(p.payload) for ref in t.refs())
        if uses_previous and state_topic is None and not spec.undo.state_topic:
            c.fail(("undo",), "{previous.…} needs a state topic: add confirm or undo.state_topic")
    read_topic = None
    if spec.read:
        read_topic, found = c.topic(spec.read.topic, ("read", "topic"))
        watched |= found
    if c.problems:
        raise SpecError(c.problems)
    schema = tool_schema(spec, defaults)
    return Tool(
        spec=spec,
        defaults=defaults,
        publishes=publishes,
        undo=undo,
        confirm_topic=confirm_topic,
        confirm_expect=confirm_expect,
        state_topic=state_topic,
        read_topic=read_topic,
        topics=frozenset(topics),
        watched=frozenset(watched),
        schema=schema,
        _validator=jsonschema.Draft202012Validator(schema),
    )


def _compile_devices(spec: ToolSpec, room: str | None) -> Tool:
    """A tool that chooses among devices: what the model sees is the tool's own parameters (the chooser's enum
    being the device names); each device compiles as a tool of its own, narrowed to what that device takes."""
    assert spec.devices is not None and spec.device_parameter is not None
    problems: list[tuple[tuple[Any, ...], str]] = []
    variants: dict[str, Tool] = {}
    for name, device in spec.devices.items():
        where: tuple[Any, ...] = ("devices", name)
        params: dict[str, Param] = {}
        for pname, override in device.parameters.items():
            merged = {**spec.parameters[pname].model_dump(exclude_none=True), **(override or {})}
            if "map" in (override or {}):
                merged.pop("enum", None)  # the device's own words, a subset of the tool's
            try:
                params[pname] = Param.model_validate(merged)
            except ValidationError as exc:
                problems += [((*where, "parameters", pname), e["msg"]) for e in exc.errors()]
        if any(w[:2] == where for w, _ in problems):
            continue
        own = spec.model_copy(update={
            "devices": None, "device_parameter": None, "any_of": None, "parameters": params,
            "required": [r for r in spec.required if r in params],
            "publish": device.publish, "confirm": device.confirm, "read": device.read, "undo": device.undo,
        })  # fmt: skip
        try:
            variant = compile_tool(own, room)
        except SpecError as exc:
            problems += [((*where, *w), m) for w, m in exc.problems]
            continue
        variant.source = device.source
        if device.availability is not None:
            variant.availability = device.availability
            variant.watched = variant.watched | {device.availability.topic}
        variants[name] = variant
    if problems:
        raise SpecError(problems)
    chooser = spec.parameters[spec.device_parameter].model_copy(update={"enum": list(spec.devices), "map": None})
    facing = spec.model_copy(update={"parameters": {**spec.parameters, spec.device_parameter: chooser}})
    defaults = effective_defaults(facing, room)
    schema = tool_schema(facing, defaults)
    return Tool(
        spec=facing,
        defaults=defaults,
        publishes=[],
        undo=[],
        confirm_topic=None,
        confirm_expect=None,
        state_topic=None,
        read_topic=None,
        topics=frozenset().union(*(v.topics for v in variants.values())),
        watched=frozenset().union(*(v.watched for v in variants.values())),
        schema=schema,
        _validator=jsonschema.Draft202012Validator(schema),
        variants=variants,
    )


class Registry:
    """The loaded tools by name."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self.tools = {t.name: t for t in tools}

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    def get(self, name: str) -> Tool | None:
        return self.tools.get(name)

    def declarations(self) -> list[dict[str, Any]]:
        return [t.declaration() for t in self.tools.values()]

    @property
    def topics(self) -> frozenset[str]:
        return frozenset().union(*(t.topics for t in self.tools.values()))

    @property
    def watched(self) -> frozenset[str]:
        return frozenset().union(*(t.watched for t in self.tools.values()))
