"""The Live session's setup: the connect config built from our config, the tool layer's declarations and what
the model accepts (daemon.live.models).

The tool layer hands over transport-neutral declarations (name, description, JSON-Schema parameters, behavior);
here they become Gemini's FunctionDeclaration, and `setup_frame` shows the exact JSON the SDK puts on the wire.
A field the model does not support is left out, never sent as false: the service refuses it either way (1007).

Between a wake word and the first audio byte nothing is built that could have been built before: the connect
config of a new session is made once and kept (`prepared`), and `warm` runs, while the daemon listens, every
SDK path a first connection takes (pydantic builds its serializers on first use: ~20 ms the first time).
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


_prepared: tuple[Gemini, list[dict[str, Any]], types.LiveConnectConfig] | None = None


def prepared(gemini: Gemini, declarations: list[dict[str, Any]], handle: str | None = None) -> types.LiveConnectConfig:
    """connect_config, kept for the next session while the configuration and the tools stay the same (the SDK
    only ever sets the system instruction's Content on it, the same each time)."""
    global _prepared
    if handle is not None:
        return connect_config(gemini, declarations, handle)
    kept = _prepared
    if kept is not None and kept[0] is gemini and kept[1] == declarations:
        return kept[2]
    config = connect_config(gemini, declarations)
    _prepared = (gemini, declarations, config)
    return config


def warm(gemini: Gemini, declarations: list[dict[str, Any]]) -> None:
    """The connect config prepared, and the SDK's first-use costs paid offline: serialising the setup, reading
    setupComplete and a server message, serialising an audio chunk."""
    prepared(gemini, declarations)
    setup_frame(gemini, declarations)
    types.LiveServerMessage._from_response(response={"setupComplete": {}}, kwargs={})
    types.LiveServerMessage._from_response(
        response={"serverContent": {"modelTurn": {"parts": [{"inlineData": {"data": "AAAA", "mimeType": "audio/pcm"}}]},
                                    "turnComplete": True}, "usageMetadata": {"totalTokenCount": 1}}, kwargs={}
    )  # fmt: skip
    blob = types.Blob(data=bytes(2560), mime_type="audio/pcm;rate=16000")
    params = types.LiveSendRealtimeInputParameters.model_validate({"audio": blob})
    json.dumps(
        _common.encode_unserializable_types(
            _common.convert_to_dict(_live_converters._LiveSendRealtimeInputParameters_to_mldev(from_object=params))
        )
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
