"""The Live session's setup: the connect config built from our config, the tool layer's declarations and what
the model accepts (daemon.live.models).

The tool layer hands over transport-neutral declarations (name, description, JSON-Schema parameters, behavior);
here they become Gemini's FunctionDeclaration, and `setup_frame` shows the exact JSON the SDK puts on the wire.
A field the model does not support is left out, never sent as false: the service refuses it either way (1007).
"""

from __future__ import annotations

import json
from typing import Any

from google import genai
from google.genai import _common, _live_converters, types

from ..calls import END_CONVERSATION
from ..config import Gemini
from .models import ModelProfile, profile

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


def behavior(decl: dict[str, Any], model: ModelProfile) -> types.Behavior | None:
    """What goes on the wire: a synchronous model takes none; an asynchronous one gets the tool's, or its own
    default (NON_BLOCKING) spelled out."""
    if not model.async_calls:
        return None
    return types.Behavior(decl.get("behavior") or "NON_BLOCKING")


def function_declaration(decl: dict[str, Any], model: ModelProfile) -> types.FunctionDeclaration:
    params = decl["parameters"]
    return types.FunctionDeclaration(
        name=decl["name"],
        description=decl["description"],
        parameters=to_schema(params) if params.get("properties") else None,
        behavior=behavior(decl, model),
    )


def end_conversation_declaration(model: ModelProfile) -> types.FunctionDeclaration:
    return types.FunctionDeclaration(
        name=END_CONVERSATION,
        description=(
            "End the conversation and stop listening. Call it when the user says goodbye, says that is all, "
            "or asks you to stop. Say a short goodbye in the same turn."
        ),
        behavior=behavior({"behavior": "NON_BLOCKING"}, model),
    )


def connect_config(
    gemini: Gemini, declarations: list[dict[str, Any]], resumption_handle: str | None = None
) -> types.LiveConnectConfig:
    model = profile(gemini.model)
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
    if gemini.sliding_window and model.compression:
        compression = types.ContextWindowCompressionConfig(
            trigger_tokens=gemini.compression_trigger_tokens, sliding_window=types.SlidingWindow()
        )
    speech = None
    language = gemini.language if model.language_code else None
    if gemini.voice or language:
        speech = types.SpeechConfig(
            voice_config=types.VoiceConfig(prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name=gemini.voice))
            if gemini.voice
            else None,
            language_code=language,
        )
    transcription = types.AudioTranscriptionConfig() if gemini.transcription and model.transcription else None
    affective = gemini.affective_dialog if model.affective_dialog else None
    proactivity = None
    if gemini.proactive_audio is not None and model.proactive_audio:
        proactivity = types.ProactivityConfig(proactive_audio=gemini.proactive_audio)
    functions = [function_declaration(d, model) for d in declarations] + [end_conversation_declaration(model)]
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        speech_config=speech,
        system_instruction=gemini.system_instruction,
        realtime_input_config=types.RealtimeInputConfig(automatic_activity_detection=activity),
        context_window_compression=compression,
        session_resumption=types.SessionResumptionConfig(handle=resumption_handle) if model.resumption else None,
        input_audio_transcription=transcription,
        output_audio_transcription=transcription,
        enable_affective_dialog=affective,
        proactivity=proactivity,
        tools=[types.Tool(function_declarations=functions)],
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
