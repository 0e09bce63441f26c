"""From the config file to what the daemon runs on: YAML → tool packs expanded → sections and tool specs validated
→ tools compiled into a registry. Every problem found is reported at once, each at its file and line."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .calls import RESERVED_TOOL_NAMES
from .config import Config
from .live.models import ModelProfile, profile
from .mqtt.commands import COMMANDS
from .schema import problems_from_validation
from .tools.discover import DISCOVERED_TOOL_NAMES, Discover
from .tools.packs import Include, expand_tools
from .tools.registry import Registry, SpecError, compile_tool
from .tools.spec import ToolSpec
from .yamlsrc import ConfigError, LDict, Problem, dotted, load_yaml, locate, suggest


@dataclass(frozen=True)
class Loaded:
    """A validated config with its tools compiled: what the daemon runs on (and what a reload swaps)."""

    path: Path
    config: Config
    registry: Registry
    warnings: tuple[Problem, ...] = ()
    sources: tuple[Discover, ...] = ()  # tools: - discover: …, made into tools once the broker is reached
    source: Any = field(default=None, compare=False, repr=False)  # the located YAML, for placing later problems

    def locate(self, where: tuple[Any, ...]) -> tuple[str, int]:
        """The file and line of a config key (a tuple path), or the config file itself."""
        return locate(self.source, where) if self.source is not None else (str(self.path), 0)

    @property
    def model(self) -> ModelProfile:
        return profile(self.config.gemini.model)


def load(path: Path) -> Loaded:
    """Load, validate and compile. Raises ConfigError with every problem found, each at its file and line."""
    config, specs, raw = load_config(path)
    sources = [s for s in specs if isinstance(s[1], Discover)]
    specs = [s for s in specs if isinstance(s[1], ToolSpec)]
    tools: list = []
    problems, warnings = check_model(config, specs, raw)
    problems += check_names(config, specs, raw)
    if sources:
        for index, spec in specs:
            if spec.name in DISCOVERED_TOOL_NAMES:
                file, line = locate(raw, ("tools", index, "name"))
                message = (f"'{spec.name}' is the name the discover: source at tools[{sources[0][0]}] gives its tool; "
                           "rename this one, or leave it out of its pack with only:")
                problems.append(Problem(file, line, f"tools[{index}].name", message))
    for index, spec in specs:
        try:
            tools.append(compile_tool(spec, config.assistant.room))
        except SpecError as exc:
            for where, message in exc.problems:
                file, line = locate(raw, ("tools", index, *where))
                problems.append(Problem(file, line, f"tool '{spec.name}' {dotted(where)}".rstrip(), message))
    if problems:
        raise ConfigError(problems)
    return Loaded(
        Path(path), config, Registry(tools), tuple(warnings), sources=tuple(s for _, s in sources), source=raw
    )


def check_names(config: Config, specs: list[tuple[int, ToolSpec]], raw: Any) -> list[Problem]:
    """Names that must mean one thing: a tool may not take a name the daemon answers itself, and only known
    MQTT commands can be enabled."""
    problems = []
    for index, spec in specs:
        if spec.name in RESERVED_TOOL_NAMES:
            file, line = locate(raw, ("tools", index, "name"))
            problems.append(Problem(file, line, f"tools[{index}].name", f"'{spec.name}' is the daemon's own tool"))
    for index, name in enumerate(config.assistant.commands):
        if name not in COMMANDS:
            file, line = locate(raw, ("assistant", "commands", index))
            message = f"unknown command '{name}'{suggest(name, COMMANDS)}; choose from {', '.join(COMMANDS)}"
            problems.append(Problem(file, line, f"assistant.commands[{index}]", message))
    return problems


def check_model(config: Config, specs: list[tuple[int, ToolSpec]], raw: Any) -> tuple[list[Problem], list[Problem]]:
    """What the configured model cannot do (the service would close with 1007 at setup, or hold the call):
    problems for a known model, warnings for one livehome does not know (it gets a conservative profile)."""
    model, gemini = profile(config.gemini.model), config.gemini
    problems: list[Problem] = []
    warnings: list[Problem] = []
    found = problems if model.known else warnings

    def at(where: tuple[Any, ...], message: str, into: list[Problem]) -> None:
        file, line = locate(raw, where)
        into.append(Problem(file, line, dotted(where), message))

    if not model.known:
        at(("gemini", "model"), f"'{gemini.model}' is not a model livehome knows; it gets a conservative profile: "
                                f"{model.note}", warnings)
    name = f"model {gemini.model}"
    if "language" in gemini.model_fields_set and gemini.language and not model.language_code:
        at(("gemini", "language"), f"{name} chooses the language itself and refuses an explicit one; remove it",
           found)
    for key, supported in (("affective_dialog", model.affective_dialog), ("proactive_audio", model.proactive_audio)):
        if getattr(gemini, key) is not None and not supported:
            at(("gemini", key), f"{name} does not take {key} (even set to false, the service refuses it)", found)
    if not model.async_calls:
        for index, spec in specs:
            if spec.behavior == "NON_BLOCKING":
                at(("tools", index, "behavior"), f"{name} only makes synchronous calls; remove behavior: "
                                                 "NON_BLOCKING (the model waits for every answer)", found)
            if spec.scheduling is not None:
                at(("tools", index, "scheduling"), f"{name} only makes synchronous calls, whose answers have no "
                                                   "scheduling; remove it", found)
    return problems, warnings


def load_config(path: Path) -> tuple[Config, list[tuple[int, ToolSpec | Discover]], Any]:
    """Parse, expand tool includes, validate. Returns the config, its tool specs and the located raw data (for
    later checks); raises ConfigError listing every problem found with its place."""
    path = Path(path)
    raw = load_yaml(path)
    if raw is None:
        raw = LDict()
        raw.file = str(path)
    if not isinstance(raw, dict):
        raise ConfigError([Problem(str(path), getattr(raw, "line", 1), "", "the config must be a mapping")])
    problems: list[Problem] = []
    if "tools" in raw:
        raw["tools"] = expand_tools(raw["tools"], path.parent, problems)
    config = None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems += problems_from_validation(exc, raw, Config)
    specs = _tool_specs(raw, problems)
    if problems or config is None:
        raise ConfigError(problems)
    return _resolve_paths(config, path.parent), specs, raw


def _tool_specs(raw: Any, problems: list[Problem]) -> list[tuple[int, ToolSpec | Discover]]:
    """Each entry of the (expanded) tools list, with its index, as a ToolSpec or a discover source; problems are
    placed inside the entry."""
    entries = raw.get("tools") if isinstance(raw, dict) else None
    specs: list[tuple[int, ToolSpec | Discover]] = []
    for index, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict):
            continue  # Config's validation already reported it
        model: type[ToolSpec | Discover] = Discover if "discover" in entry else ToolSpec
        try:
            specs.append((index, model.model_validate(entry)))
        except ValidationError as exc:
            for p in problems_from_validation(exc, entry, model):
                problems.append(Problem(p.file, p.line, dotted(("tools", index)) + (f".{p.where}" if p.where else ""),
                                        p.message))
    return specs


def _resolve_paths(config: Config, base: Path) -> Config:
    """Relative paths in the config are relative to the config file, not to wherever the daemon was started."""

    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p)

    g, m, a, w = config.gemini, config.mqtt, config.audio, config.wake
    return config.model_copy(
        update={
            "assistant": config.assistant.model_copy(
                update={
                    "state_dir": fix(config.assistant.state_dir),
                    "shared_secret_file": fix(config.assistant.shared_secret_file),
                }
            ),
            "gemini": g.model_copy(update={"ca_file": fix(g.ca_file), "api_key_file": fix(g.api_key_file)}),
            "mqtt": m.model_copy(
                update={
                    "password_file": fix(m.password_file),
                    "tls": m.tls.model_copy(
                        update={k: fix(getattr(m.tls, k)) for k in ("ca_file", "cert_file", "key_file")}
                    ),
                }
            ),
            "audio": a.model_copy(
                update={
                    "input": a.input.model_copy(update={"file": fix(a.input.file)}),
                    "output": a.output.model_copy(update={"file": fix(a.output.file)}),
                }
            ),
            "wake": w.model_copy(
                update={
                    "models_dir": fix(w.models_dir),
                    "words": [
                        ww.model_copy(update={"model": str(base / ww.model)})
                        if ww.model.endswith((".tflite", ".onnx")) and not os.path.isabs(ww.model)
                        else ww
                        for ww in w.words
                    ],
                }
            ),
        }
    )


def json_schema() -> str:
    """The config's JSON Schema, for editors' completion and validation of config.yaml."""
    schema = Config.model_json_schema(mode="validation")
    defs = schema.setdefault("$defs", {})
    for model in (ToolSpec, Include, Discover):  # a tool, an include (expanded before validation), or a source
        sub = model.model_json_schema(mode="validation", ref_template="#/$defs/{model}")
        defs.update(sub.pop("$defs", {}))
        defs[model.__name__] = sub
    tools = schema["properties"]["tools"]
    tools["items"] = {"anyOf": [{"$ref": f"#/$defs/{m}"} for m in ("ToolSpec", "Include", "Discover")]}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "livehome configuration"
    return json.dumps(schema, indent=2)
