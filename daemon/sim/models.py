"""What each Live model accepts, as the service enforces it: the simulator's own table.

This deliberately does not import the product's daemon/live/models.py: the simulator is an independent witness,
so a mistake in the product's table shows up as a refused setup here instead of being copied. Sources (see
../shared/docs/live-real-service.md):
  [pages]  ai.google.dev model pages: gemini-3.8-live (async function calling, NON_BLOCKING default, BLOCKING
           calls cancelled by new user input; no thinking_level; proactive_audio:false is an error; no affective
           dialog); gemini-3.1-flash-live-preview ("async not yet supported": synchronous function calling only).
  [865]    googleapis/python-genai#865: an unsupported setup field is refused with close 1007 "even if you're
           setting the field to False"; the reason reads `Invalid JSON payload received. Unknown name "<field as
           sent>" at '<where>': Cannot find field.` (also google-gemini/cookbook#775, java-genai#382).
  [5542]   google/adk-python#5542, quoting the Live docs: native-audio models "don't support explicitly setting the
           language code".
  [114644] discuss.ai.google.dev thread 114644: realtime input while a synchronous call is pending closes the
           connection with 1008 "Operation is not implemented, or supported, or enabled."
  [4448]   pipecat-ai/pipecat#4448: NON_BLOCKING turned off for Gemini 3.x previews for that reason.
A model the table does not know (accepted through `models=` or a scenario's `models:`) gets no restrictions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NOT_SUPPORTED = "Operation is not implemented, or supported, or enabled."


@dataclass(frozen=True)
class ModelProfile:
    """What one model refuses. Paths are snake_case keys from the setup message down."""

    name: str
    refused: tuple[str, ...] = ()  # setup fields refused whenever present, even set to false [865]
    refused_false: tuple[str, ...] = ()  # setup fields refused when set to false
    function_behavior: bool = True  # FunctionDeclaration.behavior (NON_BLOCKING/BLOCKING) accepted
    response_scheduling: bool = True  # FunctionResponse.scheduling accepted
    input_during_calls: bool = True  # realtime input while a call is outstanding (else: close 1008)
    cancel_blocking_on_input: bool = False  # new user input cancels an outstanding BLOCKING call


_NATIVE_AUDIO = dict(refused=("generation_config.speech_config.language_code",))  # [5542]

PROFILES: dict[str, ModelProfile] = {
    p.name: p
    for p in (
        ModelProfile(  # [pages]
            "gemini-3.8-live",
            refused=("generation_config.thinking_config.thinking_level", "generation_config.enable_affective_dialog"),
            refused_false=("proactivity.proactive_audio",),
            cancel_blocking_on_input=True,
        ),
        ModelProfile(  # [pages], [114644], [4448]
            "gemini-3.1-flash-live-preview",
            function_behavior=False,
            response_scheduling=False,
            input_during_calls=False,
        ),
        ModelProfile("gemini-2.5-flash-native-audio-preview-12-2025", **_NATIVE_AUDIO),  # [5542]
        ModelProfile("gemini-live-2.5-flash-native-audio", **_NATIVE_AUDIO),  # the Vertex name of the same model
    )
}
DEFAULT_MODELS = tuple(f"models/{name}" for name in PROFILES)
UNRESTRICTED = ModelProfile("(unknown)")


def profile(model: str | None) -> ModelProfile:
    return PROFILES.get((model or "").removeprefix("models/"), UNRESTRICTED)


def unknown_name(key: str, where: str) -> str:
    """The service's parse error for a field it will not take here [865]."""
    return f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field."


def _named(key: object, name: str) -> bool:
    """Whether a key as sent (camelCase or snake_case) is the snake_case field `name`."""
    return str(key).replace("_", "").lower() == name.replace("_", "")


def _lookup(raw: Any, path: str) -> tuple[str, str, Any] | None:
    """(key as sent, where it sits, value) of a snake_case path in a raw setup whose keys may be camelCase."""
    node, where = raw, "setup"
    parts = path.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, Mapping):
            return None
        key = next((k for k in node if _named(k, part)), None)
        if key is None:
            return None
        if i == len(parts) - 1:
            return str(key), where, node[key]
        node, where = node[key], f"{where}.{part}"
    return None


def setup_refusal(model: str, raw: Any) -> str | None:
    """Why the service closes with 1007 on this setup for this model (the first reason), or None."""
    p = profile(model)
    for path in p.refused:
        found = _lookup(raw, path)
        if found is not None:
            return unknown_name(found[0], found[1])
    for path in p.refused_false:
        found = _lookup(raw, path)
        if found is not None and found[2] is False:
            # The wording is the simulator's (no report quotes it); it names the field like the service's errors.
            field = f"{found[1]}.{path.rsplit('.', 1)[-1]}"
            return f"Invalid value at '{field}' (TYPE_BOOL): false is not supported by {model}."
    if not p.function_behavior:
        for i, tool in enumerate(_items(raw, "tools")):
            for j, decl in enumerate(_items(tool, "function_declarations")):
                key = next((k for k in decl if _named(k, "behavior")), None)
                if key is not None:
                    return unknown_name(key, f"setup.tools[{i}].function_declarations[{j}]")
    return None


def _items(node: Any, name: str) -> list[Mapping[str, Any]]:
    """The objects in list field `name` of `node` (matched case-insensitively to snake_case)."""
    if not isinstance(node, Mapping):
        return []
    value = next((v for k, v in node.items() if _named(k, name)), None)
    return [x for x in value if isinstance(x, Mapping)] if isinstance(value, list) else []


def tool_behaviors(raw: Any) -> dict[str, str | None]:
    """Each declared function's behavior ("BLOCKING", "NON_BLOCKING") or None when the declaration has none."""
    out: dict[str, str | None] = {}
    for tool in _items(raw, "tools"):
        for decl in _items(tool, "function_declarations"):
            name = decl.get("name")
            if isinstance(name, str):
                behavior = next((v for k, v in decl.items() if _named(k, "behavior")), None)
                out[name] = behavior if isinstance(behavior, str) else None
    return out
