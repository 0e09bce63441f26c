"""The Live session's setup: the connect config built from our config and the tool layer's declarations.

The tool layer hands over transport-neutral declarations (name, description, JSON-Schema parameters, behavior);
here they become Gemini's FunctionDeclaration, and `setup_frame` shows the exact JSON the SDK puts on the wire.
"""

from __future__ import annotations

import json
from typing import Any

from google import genai
from google.genai import _common, _live_converters, types

from ..config import Gemini

END_CONVERSATION = "end_conversation"

_TYPES = {
    "string": types.Type.STRING,
    "integer": types.Type.INTEGER,
    "number": types.Type.NUMBER,
    "boolean": types.Type.BOOLEAN,
    "object": types.Type.OBJECT,
}


def to_schema(js: dict[str, Any]) -> types.Schema:
    """Our JSON-Schema subset as Gemini's Schema. Gemini's enum holds strings only, so a numeric enum is
    spelled out in the description instead (the tool layer still enforces it)."""
    kind = js["type"]
    description = js.get("description")
    enum = js.get("enum")
    if enum is not None and kind != "string":
        choices = "one of " + ", ".join(json.dumps(v) for v in enum)
        description = f"{description} ({choices})" if description else choices
        enum = None
    props = js.get("properties")
    return types.Schema(
        type=_TYPES[kind],
        description=description,
        enum=enum,
        minimum=js.get("minimum"),
        maximum=js.get("maximum"),
        pattern=js.get("pattern"),
        min_length=js.get("minLength"),
        max_length=js.get("maxLength"),
        default=js.get("default"),
        properties={k: to_schema(v) for k, v in props.items()} if props else None,
        property_ordering=list(props) if props else None,
        required=js.get("required"),
    )


def function_declaration(decl: dict[str, Any]) -> types.FunctionDeclaration:
    params = decl["parameters"]
    return types.FunctionDeclaration(
        name=decl["name"],
        description=decl["description"],
        parameters=to_schema(params) if params.get("properties") else None,
        behavior=types.Behavior(decl["behavior"]),
    )


def end_conversation_declaration() -> types.FunctionDeclaration:
    return types.FunctionDeclaration(
        name=END_CONVERSATION,
        description=(
            "End the conversation and stop listening. Call it when the user says goodbye, says that is all, "
            "or asks you to stop. Say a short goodbye in the same turn."
        ),
        behavior=types.Behavior.NON_BLOCKING,
    )


def connect_config(
    gemini: Gemini, declarations: list[dict[str, Any]], resumption_handle: str | None = None
) -> types.LiveConnectConfig:
    vad = gemini.vad
    activity = types.AutomaticActivityDetection(
        disabled=not vad.enabled,
        start_of_speech_sensitivity=types.StartSensitivity(f"START_SENSITIVITY_{vad.start_sensitivity.upper()}")
        if vad.start_sensitivity
        else None,
        end_of_speech_sensitivity=types.EndSensitivity(f"END_SENSITIVITY_{vad.end_sensitivity.upper()}")
        if vad.end_sensitivity
        else None,
        prefix_padding_ms=int(vad.prefix_padding * 1000) if vad.prefix_padding is not None else None,
        silence_duration_ms=int(vad.silence * 1000) if vad.silence is not None else None,
    )
    compression = None
    if gemini.sliding_window:
        compression = types.ContextWindowCompressionConfig(
            trigger_tokens=gemini.compression_trigger_tokens, sliding_window=types.SlidingWindow()
        )
    speech = None
    if gemini.voice or gemini.language:
        speech = types.SpeechConfig(
            voice_config=types.VoiceConfig(prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=gemini.voice))
            if gemini.voice
            else None,
            language_code=gemini.language,
        )
    transcription = types.AudioTranscriptionConfig() if gemini.transcription else None
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        speech_config=speech,
        system_instruction=gemini.system_instruction,
        realtime_input_config=types.RealtimeInputConfig(automatic_activity_detection=activity),
        context_window_compression=compression,
        session_resumption=types.SessionResumptionConfig(handle=resumption_handle),
        input_audio_transcription=transcription,
        output_audio_transcription=transcription,
        tools=[
            types.Tool(
                function_declarations=[function_declaration(d) for d in declarations] + [end_conversation_declaration()]
            )
        ],
    )


def setup_frame(gemini: Gemini, declarations: list[dict[str, Any]]) -> dict[str, Any]:
    """The setup message exactly as the pinned SDK serialises it (its own converters; no network)."""
    client = genai.Client(api_key="not-used-offline")
    model = gemini.model if gemini.model.startswith("models/") else f"models/{gemini.model}"
    params = types.LiveConnectParameters(model=model, config=connect_config(gemini, declarations))
    frame = _common.convert_to_dict(
        _live_converters._LiveConnectParameters_to_mldev(
            api_client=client._api_client, from_object=params.model_dump(exclude_none=True)
        )
    )
    frame.pop("config", None)
    return _common.encode_unserializable_types(frame)
