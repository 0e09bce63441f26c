"""The live layer's rules on their own (pure and fast): model profiles in the setup frame and in `check`, close
codes judged by cause, the call ledger across resumes, and client-side endpointing on espeak-ng speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.audio.speech import silence, synthesize
from daemon.calls import ToolResponse
from daemon.config import Gemini
from daemon.live.closes import judge
from daemon.live.ledger import CallLedger
from daemon.live.setup import setup_frame
from daemon.live.uplink import Endpointer
from daemon.loading import load
from daemon.yamlsrc import ConfigError

DECL = {
    "name": "set_light",
    "description": "Switch a light.",
    "parameters": {"type": "object", "properties": {"state": {"type": "string", "enum": ["ON", "OFF"]}}},
    "behavior": None,
}


def frame(model: str, **gemini: object) -> dict:
    return setup_frame(Gemini(model=model, **gemini), [DECL])["setup"]


def test_asynchronous_model_gets_behavior_and_language() -> None:
    setup = frame("gemini-3.8-live")
    decls = setup["tools"][0]["functionDeclarations"]
    assert [d.get("behavior") for d in decls] == ["NON_BLOCKING", "NON_BLOCKING"]
    assert setup["generationConfig"]["speechConfig"]["language_code"] == "en-US"


def test_synchronous_model_gets_no_behavior() -> None:
    decls = frame("gemini-3.1-flash-live-preview")["tools"][0]["functionDeclarations"]
    assert all("behavior" not in d for d in decls)


NATIVE_AUDIO = ["gemini-2.5-flash-native-audio-preview-12-2025", "gemini-live-2.5-flash-native-audio"]


@pytest.mark.parametrize("model", NATIVE_AUDIO)
def test_native_audio_models_get_no_language_code(model: str) -> None:
    speech = frame(model)["generationConfig"]["speechConfig"]
    assert "language_code" not in speech and speech["voice_config"]["prebuilt_voice_config"]["voice_name"] == "Puck"


def test_unknown_model_is_conservative() -> None:
    setup = frame("gemini-9-live-experimental")
    assert all("behavior" not in d for d in setup["tools"][0]["functionDeclarations"])
    assert "language_code" not in setup["generationConfig"]["speechConfig"]


TOOL = """
  - name: set_light
    description: Switch the light.
    parameters: {state: {type: string, enum: [ON, OFF]}}
    required: [state]
    behavior: NON_BLOCKING
    publish: {topic: z2m/light/set, payload: {state: "{state}"}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_check_refuses_what_the_model_cannot_honour(tmp_path: Path) -> None:
    text = "gemini:\n  model: gemini-3.1-flash-live-preview\n  affective_dialog: true\ntools:" + TOOL
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    problems = [str(p) for p in info.value.problems]
    assert any(":3: gemini.affective_dialog: model gemini-3.1-flash-live-preview does not take" in p for p in problems)
    assert any(":9: tools[0].behavior: model gemini-3.1-flash-live-preview only makes synchronous" in p
               for p in problems)
    text = "gemini:\n  model: gemini-2.5-flash-native-audio-preview-12-2025\n  language: de-DE\n"
    with pytest.raises(ConfigError, match=r":3: gemini.language: model .* chooses the language itself"):
        load(write(tmp_path, text))


def test_check_warns_on_an_unknown_model_and_goes_on(tmp_path: Path) -> None:
    loaded = load(write(tmp_path, "gemini:\n  model: gemini-9-live\n  language: de-DE\ntools:" + TOOL))
    [warning] = [str(w) for w in loaded.warnings if "gemini.model" in str(w)]
    assert ":2: gemini.model: 'gemini-9-live' is not a model livehome knows" in warning
    assert not loaded.model.known and not loaded.model.async_calls
    [language] = [str(w) for w in loaded.warnings if "gemini.language" in str(w)]  # not sent, not refused
    assert ":3: gemini.language: model gemini-9-live chooses the language itself" in language


@pytest.mark.parametrize(
    ("code", "reason", "at_setup", "resuming", "action"),
    [
        (1007, "API key not valid. Please pass a valid API key.", True, False, "fatal"),
        (1008, "models/x is not found for API version v1beta, or is not supported for bidiGenerateContent.", True,
         False, "fatal"),
        (1007, 'Invalid JSON payload received. Unknown name "languageCode" at \'setup\'', True, False, "fatal"),
        (1008, "BidiGenerateContent session not found", True, True, "fresh"),
        (1008, "Operation is not implemented, or supported, or enabled.", False, False, "fresh"),
        (1011, "Internal error encountered.", False, False, "fresh"),
        (1006, "", False, False, "resume"),
        (1011, "Deadline expired before operation could complete.", True, False, "resume"),
    ],
)
def test_close_codes_are_judged_by_cause(code: int, reason: str, at_setup: bool, resuming: bool, action: str) -> None:
    assert judge(code, reason, at_setup=at_setup, resuming=resuming, model="m").action == action


def test_a_refused_setup_field_is_named() -> None:
    verdict = judge(1007, 'Invalid JSON payload received. Unknown name "languageCode" at \'setup.x\': Cannot find '
                          "field.", at_setup=True, resuming=False, model="gemini-live-2.5-flash-native-audio")
    assert "'languageCode'" in verdict.detail and "gemini-live-2.5-flash-native-audio" in verdict.detail


def answer(call_id: str, state: str = "confirmed") -> ToolResponse:
    return ToolResponse(call_id, "set_light", {"ok": True, "status": state}, "WHEN_IDLE", "success")


def test_a_resume_to_before_a_call_loses_it_and_its_repeat_reuses_the_result() -> None:
    ledger = CallLedger()
    ledger.connected(None)
    ledger.handle("h1")
    assert ledger.issued("c1", "set_light", {"light": "kitchen", "state": "ON"}) is None
    ledger.connected("h1")  # the service withheld handles while c1 ran: back to before it
    assert not ledger.deliverable("c1")
    assert ledger.finished(answer("c1")) == []
    reuse = ledger.issued("c2", "set_light", {"state": "ON", "light": "kitchen"})  # same call, other key order
    assert reuse is not None and reuse.earlier == "c1" and reuse.result == answer("c1")
    assert ledger.deliverable("c2")
    assert ledger.issued("c3", "set_light", {"light": "kitchen", "state": "ON"}) is None  # reused once only


def test_a_repeat_while_the_lost_call_still_runs_waits_for_its_result() -> None:
    ledger = CallLedger()
    ledger.connected(None)
    ledger.handle("h1")
    ledger.issued("c1", "open_garage", {})
    ledger.connected("h1")
    reuse = ledger.issued("c2", "open_garage", {})
    assert reuse is not None and reuse.result is None
    [ready] = ledger.finished(answer("c1"))
    assert (ready.new_id, ready.earlier) == ("c2", "c1")


def test_a_fresh_session_knows_no_earlier_id_and_a_later_handle_does_not_bring_them_back() -> None:
    ledger = CallLedger()
    ledger.connected(None)
    ledger.issued("c1", "set_light", {"state": "ON"})
    ledger.connected(None)  # the service dropped the session
    assert not ledger.deliverable("c1")
    ledger.issued("c2", "set_light", {"state": "OFF"})
    ledger.handle("h2")
    ledger.connected("h2")
    assert ledger.deliverable("c2") and not ledger.deliverable("c1")
    assert [name for name, _, _ in ledger.ran_before()] == ["set_light"]


def test_endpointing_frames_espeak_speech() -> None:
    rate = 16000
    speech = synthesize("turn on the kitchen light", rate)
    pcm = silence(1.0) + speech + silence(1.5) + synthesize("and the hall", rate) + silence(1.5)
    ep = Endpointer(threshold=500.0, preroll=0.3, silence=0.8)
    events: list[tuple[str, float]] = []
    sent = 0
    for i in range(0, len(pcm), 2560):  # 80 ms frames, as the microphone delivers them
        for kind, data in ep.feed(pcm[i : i + 2560]):
            events.append((kind, i / 2 / rate))
            sent += len(data)
    kinds = [k for k, _ in events if k != "audio"]
    assert kinds == ["activity_start", "activity_end", "activity_start", "activity_end"]
    starts = [t for k, t in events if k == "activity_start"]
    voiced = np.flatnonzero(np.abs(np.frombuffer(speech, dtype=np.int16)) > 1000)
    first_voice = 1.0 + voiced[0] / rate
    assert first_voice - 0.05 <= starts[0] <= first_voice + 0.2  # found within a couple of frames
    assert sent < len(pcm)  # the quiet between turns does not go up
