"""The Live simulator behaves like the real service where that is less kind than a polite fake (issue 10):
frame shapes, the end of a turn, usage, resumption during calls, unknown fields, per-model refusals, stale
handles, mid-session closes, calls a resume forgot, client-side activity and context lines. Each driven by the
real google-genai SDK (or, for byte-level shapes, a raw WebSocket) over TLS; see
../shared/docs/live-real-service.md for the facts and their sources."""

from __future__ import annotations

import json
import ssl
from typing import Any

import pytest
from google.genai import errors, types
from websockets.asyncio.client import connect as ws_connect

from daemon.sim.models import DEFAULT_MODELS
from daemon.sim.protocol import truncate_reason
from daemon.sim.server import Simulator
from daemon.sim.usage import audio_tokens, text_tokens
from tests.support.sim import (
    MODEL,
    Start,
    answer,
    audio_of,
    client_for,
    live_config,
    messages,
    send_pcm,
    speech,
    turn_complete,
    until,
)

PREVIEW = "gemini-3.1-flash-live-preview"
NOT_SUPPORTED = "Operation is not implemented, or supported, or enabled."


def calls_in(msgs: list[types.LiveServerMessage]) -> list[types.FunctionCall]:
    return [c for m in msgs if m.tool_call for c in m.tool_call.function_calls]


def updates(msgs: list[types.LiveServerMessage]) -> list[types.LiveServerSessionResumptionUpdate]:
    return [m.session_resumption_update for m in msgs if m.session_resumption_update]


async def refused(sim: Simulator, config: types.LiveConnectConfig, model: str = MODEL) -> errors.APIError:
    with pytest.raises(errors.APIError) as raised:
        async with client_for(sim).aio.live.connect(model=model, config=config) as session:
            await until(messages(session), lambda m: False, timeout=5)
    return raised.value


async def test_frames_are_shaped_as_the_service_sends_them(start: Start) -> None:
    """setupComplete is binary; audio and its words share a serverContent; generationComplete, then turnComplete
    with usageMetadata and fields clients rarely see, then an unprompted resumption update."""
    sim = await start("""
turns:
  - on: {text: hello}
    steps:
      - say: Hello there, how are you?
      - turn_complete
  - on: {text: again}
    steps:
      - say: Fine.
      - turn_complete
""")
    uri = sim.url.replace("https", "wss") + "/ws/google.ai.generativelanguage.v1beta.GenerativeService." \
                                            "BidiGenerateContent"
    tls = ssl.create_default_context(cafile=sim.ca_file)
    frames: list[dict[str, Any]] = []
    async with ws_connect(uri, ssl=tls, additional_headers={"x-goog-api-key": sim.api_key}, proxy=None) as ws:
        await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}", "outputAudioTranscription": {},
                                            "sessionResumption": {}}}))
        first = await ws.recv()
        assert isinstance(first, bytes) and json.loads(first) == {"setupComplete": {}}
        for text in ("hello", "again"):
            await ws.send(json.dumps({"realtimeInput": {"text": text}}))
            while True:
                frame = json.loads(await ws.recv())
                frames.append(frame)
                if "sessionResumptionUpdate" in frame:
                    break
    await sim.wait_finished(5)
    sim.assert_clean()

    first_turn = frames[: next(i for i, f in enumerate(frames) if "sessionResumptionUpdate" in f) + 1]
    words = [f["serverContent"] for f in first_turn if "outputTranscription" in f.get("serverContent", {})]
    assert len(words) > 1 and all("inlineData" in c["modelTurn"]["parts"][0] for c in words)
    assert "".join(c["outputTranscription"]["text"] for c in words) == "Hello there, how are you?"
    *_, generation, done, update = first_turn
    assert generation == {"serverContent": {"generationComplete": True}}
    assert done["serverContent"] == {"turnComplete": True, "turnCompleteReason": "NEED_MORE_INPUT",
                                     "waitingForInput": True, "futureHint": {"x": 1}}
    said = sim.entries("audio", "out")[0].detail["seconds"]
    assert done["usageMetadata"] == {
        "promptTokenCount": text_tokens(len("hello")), "responseTokenCount": audio_tokens(said),
        "totalTokenCount": text_tokens(5) + audio_tokens(said),
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": text_tokens(5)}],
        "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": audio_tokens(said)}],
    }
    assert update["sessionResumptionUpdate"]["resumable"] is True and update["sessionResumptionUpdate"]["newHandle"]
    reported = [f["usageMetadata"] for f in frames if "usageMetadata" in f]
    (tokens,) = sim.tokens_reported.values()
    assert tokens.turns == 2 and tokens.prompt == sum(u["promptTokenCount"] for u in reported)
    assert tokens.total == sum(u["totalTokenCount"] for u in reported)


async def test_generation_complete_once_per_turn_and_none_when_interrupted(start: Start) -> None:
    sim = await start("""
turns:
  - on: {text: one}
    steps: [{say: One.}, turn_complete]
  - on: {text: two}
    steps: [{say: Two.}, generation_complete, turn_complete]
  - on: {text: three}
    steps: [{say: Three.}, interrupted, turn_complete]
""")
    flags: list[list[str]] = []
    async with client_for(sim).aio.live.connect(model=MODEL, config=live_config()) as session:
        stream = messages(session)
        for text in ("one", "two", "three"):
            await session.send_realtime_input(text=text)
            msgs = await until(stream, turn_complete)
            flags.append([k for m in msgs if m.server_content for k in ("generation_complete", "interrupted",
                                                                        "turn_complete")
                          if getattr(m.server_content, k)])
            assert msgs[-1].usage_metadata.total_token_count > 0  # on the turnComplete message itself
    assert flags == [["generation_complete", "turn_complete"], ["generation_complete", "turn_complete"],
                     ["interrupted", "turn_complete"]]
    await sim.wait_finished(5)
    sim.assert_clean()


async def test_resumption_updates_carry_no_handle_while_a_call_runs(start: Start) -> None:
    """A function call shows in modelTurn first; while it is outstanding every update (after-turn ones too) is
    resumable:false without a handle, unless the scenario forces one; a handle from before the call resumes
    into a session that does not know it."""
    sim = await start("""
turns:
  - on: {text: start the movie scene}
    steps:
      - resumption_update
      - tool_call: {id: scene-1, name: run_scene, args: {scene: movie}}
      - resumption_update
      - resumption_update: {force: true}
      - say: Starting the scene.
      - turn_complete
      - await_tools: [scene-1]
      - say: The scene is ready.
      - turn_complete
""")
    client = client_for(sim)
    async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
        stream = messages(session)
        await session.send_realtime_input(text="start the movie scene")
        first = await until(stream, turn_complete)
        first += await until(stream, lambda m: m.session_resumption_update)
        mirrored = next(i for i, m in enumerate(first) if m.server_content and m.server_content.model_turn
                        and m.server_content.model_turn.parts[0].function_call)
        (call,) = calls_in(first)
        assert first.index(next(m for m in first if m.tool_call)) == mirrored + 1
        assert first[mirrored].server_content.model_turn.parts[0].function_call.id == call.id
        before, during, forced, after_turn = updates(first)
        assert before.resumable and before.new_handle
        assert (during.resumable, during.new_handle) == (False, None)
        assert forced.resumable and forced.new_handle
        assert (after_turn.resumable, after_turn.new_handle) == (False, None)
        await session.send_tool_response(function_responses=[answer(call)])
        second = await until(stream, turn_complete)
        second += await until(stream, lambda m: m.session_resumption_update)
        assert updates(second)[-1].resumable and updates(second)[-1].new_handle
    for handle, outstanding in ((before.new_handle, []), (forced.new_handle, ["scene-1"])):
        async with client.aio.live.connect(model=MODEL, config=live_config(handle=handle)):
            pass
        assert sim.entries("resumed")[-1].detail["outstanding"] == outstanding
    await sim.wait_finished(5)
    sim.assert_clean()
    assert len(sim.tool_responses) == 1  # the client acted on toolCall only, not on the mirrored part


async def test_unknown_fields_nested_and_top_level(start: Start) -> None:
    """The SDK drops unknown nested keys and unknown top-level keys next to known ones; a message of unknown
    top-level keys only makes receive() raise TypeError (an SDK bug), after which the session still works."""
    sim = await start("""
turns:
  - on: {text: go}
    steps:
      - raw: {serverContent: {modelTurn: {parts: [{text: "hi "}]}, futureHint: {x: 1}}, futureTop: {y: 2}}
      - raw: {futureTop: {y: 2}}
      - say: there
      - turn_complete
""")
    async with client_for(sim).aio.live.connect(model=MODEL, config=live_config(text=True)) as session:
        await session.send_realtime_input(text="go")
        stream = messages(session)
        (known,) = await until(stream, lambda m: True)
        assert known.server_content.model_turn.parts[0].text == "hi "
        assert "futureHint" not in known.model_dump_json() and "futureTop" not in known.model_dump_json()
        with pytest.raises(TypeError):
            await until(stream, lambda m: True)
        rest = await until(messages(session), turn_complete)
    assert "".join(m.text or "" for m in rest).strip() == "there"
    assert rest[-1].server_content.waiting_for_input is True
    await sim.wait_finished(5)
    sim.assert_clean()
    assert [e.detail["keys"] for e in sim.entries("raw")] == [["futureTop", "serverContent"], ["futureTop"]]


def _config(**fields: Any) -> types.LiveConnectConfig:
    config = live_config(tools=("set_light",), resumption=False)
    for key, value in fields.items():
        setattr(config, key, value)
    return config


REFUSALS = [
    (MODEL, {"thinking_config": types.ThinkingConfig(thinking_level=types.ThinkingLevel.LOW)}, "thinking_level"),
    (MODEL, {"enable_affective_dialog": False}, "enableAffectiveDialog"),
    (MODEL, {"proactivity": types.ProactivityConfig(proactive_audio=False)}, "proactive_audio"),
    (PREVIEW, {"tools": [types.Tool(function_declarations=[types.FunctionDeclaration(
        name="set_light", behavior=types.Behavior.BLOCKING)])]}, "behavior"),
    ("gemini-2.5-flash-native-audio-preview-12-2025", {"speech_config": types.SpeechConfig(language_code="de-DE")},
     "language_code"),
    ("gemini-live-2.5-flash-native-audio", {"speech_config": types.SpeechConfig(language_code="de-DE")},
     "language_code"),
]


@pytest.mark.parametrize(("model", "fields", "named"), REFUSALS, ids=[f"{m}-{n}" for m, _, n in REFUSALS])
async def test_models_refuse_setup_fields_they_do_not_support(start: Start, model: str, fields: dict[str, Any],
                                                             named: str) -> None:
    sim = await start("lights_on")
    assert f"models/{model}" in DEFAULT_MODELS
    error = await refused(sim, _config(**fields), model)
    assert error.code == 1007 and named in str(error)
    assert truncate_reason(sim.connections[0].rejected[1]) in str(error)  # close reasons stop at 123 bytes
    assert named in sim.violations[0].message  # the client asked for something this model cannot do


async def test_what_each_model_accepts(start: Start) -> None:
    sim = await start("lights_on")
    for model, config in ((MODEL, _config(proactivity=types.ProactivityConfig(proactive_audio=True))),
                          (MODEL, live_config()),  # NON_BLOCKING declarations are fine on 3.8
                          (PREVIEW, _config()),
                          ("gemini-2.5-flash-native-audio-preview-12-2025", _config(
                              speech_config=types.SpeechConfig(voice_config=types.VoiceConfig(
                                  prebuilt_voice_config=types.PrebuiltVoiceConfig(voice_name="Kore")))))):
        async with client_for(sim).aio.live.connect(model=model, config=config) as session:
            assert session.setup_complete is not None
    sim.assert_clean()


LIGHT_TURN = """
turns:
  - on: {text: turn on the kitchen light}
    steps:
      - tool_call: {id: light-1, name: set_light, args: {light: kitchen, state: "ON"}}
      - await_tools: {ids: [light-1], on_timeout: continue, timeout: 5s}
      - say: The kitchen light is on.
      - turn_complete
"""


@pytest.mark.parametrize(("misstep", "code"), [("audio", 1008), ("scheduling", 1007), (None, None)])
async def test_a_synchronous_model_closes_on_input_during_a_call_and_refuses_scheduling(
        start: Start, misstep: str | None, code: int | None) -> None:
    sim = await start(LIGHT_TURN)
    async with client_for(sim).aio.live.connect(model=PREVIEW, config=_config()) as session:
        stream = messages(session)
        await session.send_realtime_input(text="turn on the kitchen light")
        (call,) = calls_in(await until(stream, lambda m: m.tool_call))
        response = answer(call)
        if misstep == "audio":
            await session.send_realtime_input(audio=types.Blob(data=bytes(3200), mime_type="audio/pcm;rate=16000"))
        elif misstep == "scheduling":
            response.scheduling = types.FunctionResponseScheduling.WHEN_IDLE
        if misstep != "audio":
            await session.send_tool_response(function_responses=[response])
        if code is None:
            assert audio_of(await until(stream, turn_complete))
            await session.send_realtime_input(audio=types.Blob(data=bytes(3200), mime_type="audio/pcm;rate=16000"))
        else:
            with pytest.raises(errors.APIError) as closed:
                await until(stream, lambda m: False)
            assert closed.value.code == code
            assert (NOT_SUPPORTED if code == 1008 else '"scheduling"') in str(closed.value)
    if code is None:
        await sim.wait_finished(5)
        sim.assert_clean()  # no call outstanding: audio is fine again
        return
    problem = sim.violations[0].message
    if misstep == "audio":
        assert "realtime input (audio) while call(s) light-1 are outstanding" in problem
    else:
        assert "Unknown name \"scheduling\" at 'tool_response.function_responses[0]'" in problem
        assert sim.tool_responses == []  # the refused message answered nothing


async def test_new_input_cancels_an_outstanding_blocking_call(start: Start) -> None:
    """gemini-3.8-live: new user input (a text turn, or speech the VAD finds) cancels a BLOCKING call; a
    NON_BLOCKING one keeps running."""
    sim = await start("""
turns:
  - on: {text: turn on the kitchen light}
    steps:
      - tool_call: [{id: light-1, name: set_light, args: {light: kitchen}}, {id: scene-1, name: run_scene}]
      - await_tools: {ids: [light-1], timeout: 5s}
  - on: {text: never mind}
    steps:
      - await_tools: [scene-1]
      - tool_call: {id: light-2, name: set_light, args: {light: hall}}
      - await_tools: {ids: [light-2], timeout: 5s}
  - on: speech
    steps: [{say: Okay.}, turn_complete]
""")
    config = live_config()
    config.tools[0].function_declarations[0].behavior = types.Behavior.BLOCKING  # set_light
    async with client_for(sim).aio.live.connect(model=MODEL, config=config) as session:
        stream = messages(session)
        await session.send_realtime_input(text="turn on the kitchen light")
        light, scene = calls_in(await until(stream, lambda m: m.tool_call))
        assert (light.id, scene.id) == ("light-1", "scene-1")
        await session.send_realtime_input(text="never mind")
        assert (await until(stream, lambda m: m.tool_call_cancellation))[-1].tool_call_cancellation.ids == ["light-1"]
        await session.send_tool_response(function_responses=[answer(scene)])
        assert [c.id for c in calls_in(await until(stream, lambda m: m.tool_call))] == ["light-2"]
        await send_pcm(session, speech("stop"))
        assert (await until(stream, lambda m: m.tool_call_cancellation))[-1].tool_call_cancellation.ids == ["light-2"]
        await until(stream, turn_complete)
    await sim.wait_finished(5)
    sim.assert_clean()
    assert [e.detail["ids"] for e in sim.entries("blocking_cancelled")] == [["light-1"], ["light-2"]]


async def test_a_forgotten_handle_is_refused_and_a_fresh_session_goes_on(start: Start) -> None:
    sim = await start("stale_handle")
    client = client_for(sim)
    seen: list[types.LiveServerMessage] = []
    async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
        stream = messages(session)
        await session.send_realtime_input(text="turn on the kitchen light")
        (call,) = calls_in(await until(stream, lambda m: m.tool_call))
        await session.send_tool_response(function_responses=[answer(call)])
        with pytest.raises(errors.APIError) as dropped:
            await until(stream, lambda m: seen.append(m) and False)
    assert dropped.value.code == 1006
    handle = updates(seen)[-1].new_handle
    error = await refused(sim, live_config(handle=handle))
    assert (error.code, "BidiGenerateContent session not found" in str(error)) == (1008, True)
    async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
        stream = messages(session)
        await session.send_realtime_input(text="turn off the kitchen light")
        (call,) = calls_in(await until(stream, lambda m: m.tool_call))
        await session.send_tool_response(function_responses=[answer(call)])
        await until(stream, turn_complete)
    await sim.wait_finished(5)
    sim.assert_clean()
    assert sim.entries("unknown_handle")[0].detail["forgotten"] is True
    assert [c.resumed for c in sim.connections] == [False, False, False]


async def test_a_mid_session_1008_and_the_turn_goes_on_afresh(start: Start) -> None:
    sim = await start("mid_session_1008")
    client = client_for(sim)
    async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
        stream = messages(session)
        await session.send_realtime_input(text="turn on the kitchen light")
        (call,) = calls_in(await until(stream, lambda m: m.tool_call))
        await session.send_tool_response(function_responses=[answer(call)])
        with pytest.raises(errors.APIError) as closed:
            await until(stream, lambda m: False)
    assert closed.value.code == 1008 and NOT_SUPPORTED in str(closed.value)
    async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
        assert audio_of(await until(messages(session), turn_complete))
    await sim.wait_finished(5)
    sim.assert_clean()


@pytest.mark.parametrize("late", [False, True], ids=["answered-before-the-drop", "answered-after-the-resume"])
async def test_a_resume_forgets_an_outstanding_call_and_the_model_asks_again(start: Start, late: bool) -> None:
    sim = await start("forgotten_call")
    client = client_for(sim)
    seen: list[types.LiveServerMessage] = []
    async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
        stream = messages(session)
        await session.send_realtime_input(text="turn on the kitchen light")
        (first,) = calls_in(await until(stream, lambda m: seen.append(m) or m.tool_call))
        if not late:
            await session.send_tool_response(function_responses=[answer(first, ok=True, brightness=100)])
        with pytest.raises(errors.APIError):
            await until(stream, lambda m: seen.append(m) and False)
    handles = [u.new_handle for u in updates(seen)]
    assert handles[0] and handles[1:] == [None]  # none while light-1 ran
    async with client.aio.live.connect(model=MODEL, config=live_config(handle=handles[0])) as session:
        stream = messages(session)
        if late:  # the result came in while disconnected: the resumed session never issued light-1
            await session.send_tool_response(function_responses=[answer(first, ok=True, brightness=100)])
        (again,) = calls_in(await until(stream, lambda m: m.tool_call))
        assert (again.id, again.name, again.args) == ("light-2", first.name, first.args)
        await session.send_tool_response(function_responses=[answer(again, ok=True, brightness=100)])
        await until(stream, turn_complete)
    await sim.wait_finished(5)
    problems = [v.message for v in sim.violations]
    if late:
        (problem,) = problems
        assert "unknown call id 'light-1' (issued on connection 1, then lost by resuming from an older handle)" \
            in problem
    else:
        assert problems == []
    assert sim.entries("resumed")[0].detail["outstanding"] == []


async def test_a_reissued_call_must_be_answered_as_before(start: Start) -> None:
    sim = await start("forgotten_call")
    client = client_for(sim)
    seen: list[types.LiveServerMessage] = []
    async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
        stream = messages(session)
        await session.send_realtime_input(text="turn on the kitchen light")
        (first,) = calls_in(await until(stream, lambda m: seen.append(m) or m.tool_call))
        await session.send_tool_response(function_responses=[answer(first, ok=True)])
        with pytest.raises(errors.APIError):
            await until(stream, lambda m: seen.append(m) and False)
    async with client.aio.live.connect(model=MODEL, config=live_config(handle=updates(seen)[0].new_handle)) as session:
        stream = messages(session)
        (again,) = calls_in(await until(stream, lambda m: m.tool_call))
        await session.send_tool_response(function_responses=[answer(again, ok=False)])
        await until(stream, turn_complete)
    await sim.wait_finished(5)
    (problem,) = [v.message for v in sim.violations]
    assert "response to 'light-2' is {\"ok\": false}; the same call 'light-1' was answered {\"ok\": true}" in problem


async def test_manual_activity_and_context_lines_are_in_the_transcript(start: Start) -> None:
    sim = await start("lights_on")
    config = live_config()
    config.realtime_input_config = types.RealtimeInputConfig(
        automatic_activity_detection=types.AutomaticActivityDetection(disabled=True))
    pcm = speech("turn on the kitchen light")
    async with client_for(sim).aio.live.connect(model=MODEL, config=config) as session:
        stream = messages(session)
        await session.send_client_content(turns=types.Content(role="user", parts=[types.Part(
            text="The user is in the kitchen.")]), turn_complete=False)
        await send_pcm(session, bytes(16000), trailing_silence=0)  # half a second before activityStart: not speech
        await session.send_realtime_input(activity_start=types.ActivityStart())
        await send_pcm(session, pcm)
        await session.send_realtime_input(activity_end=types.ActivityEnd())
        (call,) = calls_in(await until(stream, lambda m: m.tool_call))
        await session.send_tool_response(function_responses=[answer(call)])
        await until(stream, turn_complete)
    await sim.wait_finished(5)
    sim.assert_clean()

    (context,) = sim.entries("client_content", "in")
    assert (context.detail["context"], context.detail["text"]) == (True, "The user is in the kitchen.")
    (began,), (ended,) = sim.entries("activity_start", "in"), sim.entries("activity_end", "in")
    assert (began.detail["offset"], ended.detail["offset"]) == (0.5, round(0.5 + len(pcm) / 32000 + 1.0, 3))
    (utterance,) = sim.utterances
    assert (round(utterance.offset, 6), utterance.ended_by) == (0.5, "activity_end")
    assert utterance.pcm == pcm + bytes(32000)  # exactly what was sent between activityStart and activityEnd
    assert [e.detail["trigger"].split()[0] for e in sim.entries("turn_start")] == ["speech"]
