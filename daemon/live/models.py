"""What each Live model accepts. The service refuses a setup field a model does not support with close 1007 (even
when it is set to false), so the setup frame is built from this table, and `livehome check` refuses a config that
asks a model for something it cannot do. Sources: ../shared/docs/live-real-service.md (ai.google.dev model pages,
python-genai#865, adk-python#5542, pipecat#4448)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelProfile:
    name: str
    async_calls: bool  # NON_BLOCKING tools and a scheduling on their answers
    language_code: bool  # speech_config.language_code (native-audio models pick the language themselves)
    transcription: bool  # input and output audio transcription
    compression: bool  # context-window compression (sliding window)
    resumption: bool  # session resumption handles
    affective_dialog: bool  # generation_config.enable_affective_dialog
    proactive_audio: bool  # proactivity.proactive_audio
    known: bool = True
    note: str = ""


PROFILES = {
    p.name: p
    for p in (
        ModelProfile(
            "gemini-3.8-live",
            async_calls=True,
            language_code=True,
            transcription=True,
            compression=True,
            resumption=True,
            affective_dialog=False,
            proactive_audio=False,
            note="stable; asynchronous calls (NON_BLOCKING by default); INTERRUPT waits for the user to finish",
        ),
        ModelProfile(
            "gemini-3.1-flash-live-preview",
            async_calls=False,
            language_code=True,
            transcription=True,
            compression=True,
            resumption=True,
            affective_dialog=False,
            proactive_audio=False,
            note="legacy preview; synchronous calls only: the microphone is held while a call runs",
        ),
        ModelProfile(
            "gemini-2.5-flash-native-audio-preview-12-2025",
            async_calls=True,
            language_code=False,
            transcription=True,
            compression=True,
            resumption=True,
            affective_dialog=True,
            proactive_audio=True,
            note="native audio: chooses the language itself (an explicit language code is refused)",
        ),
        ModelProfile(
            "gemini-live-2.5-flash-native-audio",
            async_calls=True,
            language_code=False,
            transcription=True,
            compression=True,
            resumption=True,
            affective_dialog=True,
            proactive_audio=True,
            note="the Vertex AI name of the native-audio model",
        ),
    )
}

# An unknown model gets only what every known model accepts, so a new model still works on day one.
CONSERVATIVE = ModelProfile(
    "unknown",
    async_calls=False,
    language_code=False,
    transcription=True,
    compression=True,
    resumption=True,
    affective_dialog=False,
    proactive_audio=False,
    known=False,
    note="not in livehome's table: synchronous calls, no language code, no affective or proactive options",
)


def profile(model: str) -> ModelProfile:
    return PROFILES.get(model.removeprefix("models/"), CONSERVATIVE)
