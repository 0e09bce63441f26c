"""The Live wire protocol as the simulator holds clients to it: endpoints, the keys each message may carry,
and the service's refusals.

Refusals imitate the service (close codes and reasons as users report them from the real one):
  wrong API key          -> close 1007 "API key not valid. Please pass a valid API key."
  no API key             -> close 1008 "Method doesn't allow unregistered callers ..."
  unknown model          -> close 1008 "models/x is not found for API version v1beta, or is not supported ..."
  malformed setup/frame  -> close 1007 "Invalid JSON payload received. ..." / "Request contains an invalid argument."
  unknown resume handle  -> close 1008 "BidiGenerateContent session not found" (yeyu2/Youtube_demos#5)
  unsupported field      -> close 1007 naming the field, per model (models.py)
  goAway deadline passed -> close 1011 "Deadline expired before operation could complete."
Each refusal happens after the client's setup frame, as the service does, so the SDK raises APIError(code).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .models import DEFAULT_MODELS as DEFAULT_MODELS  # re-exported for `livehome simulate`; the table is models.py

API_VERSIONS = ("v1", "v1beta", "v1alpha")
PATH_RE = re.compile(r"/ws/google\.ai\.generativelanguage\.([A-Za-z0-9]+)\.GenerativeService\.BidiGenerateContent$")

BAD_KEY = (1007, "API key not valid. Please pass a valid API key.")
NO_KEY = (1008, "Method doesn't allow unregistered callers (callers without established identity). Please use "
                "API Key or other form of API consumer identity to call this API.")
INVALID_ARGUMENT = (1007, "Request contains an invalid argument.")
DEADLINE = (1011, "Deadline expired before operation could complete.")
SESSION_IN_USE = (1011, "The session is in use by another connection.")
SESSION_NOT_FOUND = (1008, "BidiGenerateContent session not found")

# What the service's turnComplete frames may also carry: turnCompleteReason and waitingForInput (modelled by SDK
# 3.4, rarely sent by a fake) and a made-up nested field no SDK models, so a client shows that fields it does not
# know leave its receive loop alone (the SDK drops unknown nested keys; see live-real-service.md, "Frames").
TURN_COMPLETE_EXTRAS = {"turnCompleteReason": "NEED_MORE_INPUT", "waitingForInput": True, "futureHint": {"x": 1}}

URLSAFE_B64 = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")
STD_B64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
PCM_MIME = re.compile(r"^audio/pcm(?:\s*;\s*rate=(\d+))?\s*$", re.IGNORECASE)
SCHEDULING = ("SCHEDULING_UNSPECIFIED", "SILENT", "WHEN_IDLE", "INTERRUPT")
_TOOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")

# The keys the service knows (snake_case; the SDK sends camelCase at the top levels and snake_case in the
# dicts it passes through). None: any value; a dict: its known keys.
_BLOB = {"data": None, "mime_type": None, "display_name": None}
_GENERATION_CONFIG = {
    **dict.fromkeys(
        [
            "audio_timestamp", "audio_transcription_config", "candidate_count", "enable_affective_dialog",
            "enable_enhanced_civic_answers", "frequency_penalty", "logprobs", "max_output_tokens",
            "media_resolution", "model_selection_config", "presence_penalty", "response_format",
            "response_json_schema", "response_logprobs", "response_mime_type", "response_modalities",
            "response_schema", "routing_config", "seed", "stop_sequences", "temperature", "top_k", "top_p",
            "translation_config",
        ]
    ),
    "speech_config": {"voice_config": None, "language_code": None, "multi_speaker_voice_config": None},
    "thinking_config": {"include_thoughts": None, "thinking_budget": None, "thinking_level": None},
}
_SETUP = {
    "model": None,
    "generation_config": _GENERATION_CONFIG,
    "system_instruction": None,
    "tools": None,
    "session_resumption": {"handle": None, "transparent": None},
    "context_window_compression": {"trigger_tokens": None, "sliding_window": {"target_tokens": None}},
    "input_audio_transcription": None,
    "output_audio_transcription": None,
    "realtime_input_config": {
        "automatic_activity_detection": dict.fromkeys(
            ["disabled", "start_of_speech_sensitivity", "end_of_speech_sensitivity", "prefix_padding_ms",
             "silence_duration_ms"]
        ),
        "activity_handling": None,
        "turn_coverage": None,
        "interim_transcript_timestamp_enabled": None,
    },
    "proactivity": {"proactive_audio": None, "proactive_video": None},
    "history_config": None,
    "avatar_config": None,
    "safety_settings": None,
    "labels": None,
}
_REALTIME_INPUT = {"audio": _BLOB, "audio_stream_end": None, "text": None, "activity_start": {},
                   "activity_end": {}, "video": _BLOB, "media_chunks": None}
_CLIENT_CONTENT = {"turns": None, "turn_complete": None}
_TOOL_RESPONSE = {"function_responses": None}
FUNCTION_RESPONSE = dict.fromkeys(["id", "name", "response", "scheduling", "will_continue", "parts"])
_CONTEXT_UPDATE = {"system_instruction": None, "tools": None}
CLIENT_MESSAGES = ("setup", "client_content", "realtime_input", "tool_response", "context_update")
# What an established connection may send, and the keys of each.
MESSAGE_BODIES = {"realtime_input": _REALTIME_INPUT, "client_content": _CLIENT_CONTENT,
                  "tool_response": _TOOL_RESPONSE, "context_update": _CONTEXT_UPDATE}


def snake(key: str) -> str:
    """The service takes camelCase and snake_case keys alike; the checks compare snake_case."""
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()


def normalize(obj: dict[str, Any], spec: Mapping[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    """snake_case keys at every level the spec knows; unknown or doubled keys become problems worded like the
    service's own parse errors."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = snake(str(key))
        if name not in spec:
            problems.append(f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field.")
            continue
        if name in out:
            problems.append(f"Invalid JSON payload received. Field '{where}.{name}' is set twice ({key}).")
            continue
        sub = spec[name]
        if isinstance(sub, dict):
            if not isinstance(value, dict):
                problems.append(f"Invalid value at '{where}.{name}': expected an object, got {type(value).__name__}")
                continue
            value = normalize(value, sub, f"{where}.{name}", problems)
        out[name] = value
    return out


def truncate_reason(reason: str) -> str:
    """Close reasons are at most 123 bytes; the service cuts longer ones the same way."""
    return reason.encode()[:123].decode(errors="ignore")


def duration_json(seconds: float) -> str:
    """A protobuf Duration in JSON, as the service writes goAway.timeLeft: "10s", "0.500s"."""
    return f"{seconds:.0f}s" if seconds == int(seconds) else f"{seconds:.3f}s"


def short(value: Any, limit: int = 80) -> str:
    """A value quoted in a violation message, cut to a readable length."""
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class ClientSetup:
    """A setup message that passed every check, reduced to what the simulator acts on."""

    fields: dict[str, Any]  # the whole setup, snake_case at every level the service knows
    model: str
    declared_tools: tuple[str, ...]
    modalities: list[str] | None
    handle: str | None  # the session resumption handle the client wants to resume
    input_transcription: bool
    output_transcription: bool
    resumption: bool
    manual_activity: bool  # automatic activity detection disabled: the client sends activityStart/End

    @property
    def text_mode(self) -> bool:
        return self.modalities == ["TEXT"]


def check_setup(raw: Any) -> tuple[ClientSetup | None, list[str]]:
    """The setup as the service would take it, or None and every problem with it (the service stops at the
    first; a test wants them all)."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        problems.append("setup must be an object")
        setup: dict[str, Any] = {}
    else:
        setup = normalize(raw, _SETUP, "setup", problems)
    model = setup.get("model")
    if not isinstance(model, str) or not model:
        problems.append("setup.model is missing")
    elif not model.startswith("models/"):
        problems.append(f"setup.model must be models/<name>, got {model!r}")
    gen = setup.get("generation_config") or {}
    modalities = gen.get("response_modalities")
    if modalities is not None and (
        not isinstance(modalities, list) or len(modalities) != 1 or modalities[0] not in ("AUDIO", "TEXT")
    ):
        problems.append(f"generation_config.response_modalities must be [AUDIO] or [TEXT], got {modalities!r}")
    declared: list[str] = []
    tools = setup.get("tools", [])
    if not isinstance(tools, list):
        problems.append("setup.tools must be a list")
        tools = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            problems.append(f"setup.tools[{i}] must be an object")
            continue
        decls = tool.get("function_declarations", tool.get("functionDeclarations", []))
        for j, decl in enumerate(decls if isinstance(decls, list) else []):
            name = decl.get("name") if isinstance(decl, dict) else None
            if not isinstance(name, str) or not _TOOL_NAME.match(name):
                problems.append(f"setup.tools[{i}].function_declarations[{j}].name is not a valid name: {name!r}")
            elif name in declared:
                problems.append(f"duplicate function declaration {name!r}")
            else:
                declared.append(name)
    for key in ("input_audio_transcription", "output_audio_transcription"):
        if key in setup and not isinstance(setup[key], dict):
            problems.append(f"setup.{key} must be an object")
    resumption = setup.get("session_resumption")
    if resumption is not None and not isinstance(resumption.get("handle", ""), str | None):
        problems.append("setup.session_resumption.handle must be a string")
    vad = ((setup.get("realtime_input_config") or {}).get("automatic_activity_detection") or {})
    if not isinstance(vad.get("disabled", False), bool):
        problems.append("automatic_activity_detection.disabled must be a boolean")
    if problems:
        return None, problems
    assert isinstance(model, str)
    return ClientSetup(
        fields=setup,
        model=model,
        declared_tools=tuple(declared),
        modalities=modalities,
        handle=(resumption or {}).get("handle"),
        input_transcription="input_audio_transcription" in setup,
        output_transcription="output_audio_transcription" in setup,
        resumption="session_resumption" in setup,
        manual_activity=vad.get("disabled", False) is True,
    ), problems
