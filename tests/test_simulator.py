"""The Live simulator driven by the real google-genai SDK over TLS: frames, tool-call bookkeeping, speech detection,
goAway/resumption, abrupt closes, refusals, and scenario-file errors."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from pathlib import Path

import pytest
import websockets
from google import genai
from google.genai import errors, types
from websockets.asyncio.client import connect as ws_connect

from daemon.sim.scenario import ConfigError, load_scenario, packaged_scenarios
from daemon.sim.server import serve
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
    voiced,
)


def scenario_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


async def test_text_turn_tool_call_and_spoken_answer(start: Start, tmp_path: Path) -> None:
    sim = await start("lights_on", transcript_file=tmp_path / "transcript.jsonl")
    async with client_for(sim).aio.live.connect(model=MODEL, config=live_config()) as session:
        assert session.setup_complete is not None
        stream = messages(session)
        await session.send_realtime_input(text="Turn on the kitchen light!")
        first = await until(stream, lambda m: m.tool_call)
        assert first[0].server_content.input_transcription.text == "turn on the kitchen light"
        (call,) = first[-1].tool_call.function_calls
        assert (call.id, call.name, call.args) == ("light-1", "set_light", {"light": "kitchen", "state": "ON"})
        await session.send_tool_response(function_responses=[answer(call)])
        reply = await until(stream, turn_complete)
    await sim.wait_finished(5)
    sim.assert_clean()

    mimes = {p.inline_data.mime_type for m in reply if m.server_content.model_turn
             for p in m.server_content.model_turn.parts}
    assert mimes == {"audio/pcm;rate=24000"}
    said = sim.entries("audio", "out")[0].detail
    assert len(audio_of(reply)) / 48000 == pytest.approx(said["seconds"], abs=0.001)
    words = "".join(m.server_content.output_transcription.text for m in reply
                    if m.server_content.output_transcription)
    assert words == "The kitchen light is on."
    flags = [k for m in reply for k in ("generation_complete", "turn_complete") if getattr(m.server_content, k)]
    assert flags == ["generation_complete", "turn_complete"]

    (response,) = sim.tool_responses
    assert (response.id, response.accepted, response.response, response.conn) == ("light-1", True, {"ok": True}, 1)
    kinds = [e.kind for e in sim.transcript if e.direction != "event"]
    assert kinds[:6] == ["setup", "setup_complete", "text", "input_transcription", "function_call_parts", "tool_call"]
    assert kinds.index("tool_response") < kinds.index("audio") < kinds.index("turn_complete")
    lines = [json.loads(line) for line in (tmp_path / "transcript.jsonl").read_text().splitlines()]
    assert [line["kind"] for line in lines[: len(sim.transcript)]] == [e.kind for e in sim.transcript]


async def test_spoken_request_is_detected_whole(start: Start) -> None:
    sim = await start("lights_on")
    pcm = speech("turn on the kitchen light")
    async with client_for(sim).aio.live.connect(model=MODEL, config=live_config()) as session:
        stream = messages(session)
        await send_pcm(session, pcm)
        (call,) = (await until(stream, lambda m: m.tool_call))[-1].tool_call.function_calls
        await session.send_tool_response(function_responses=[answer(call)])
        await until(stream, turn_complete)
    await sim.wait_finished(5)
    sim.assert_clean()

    (utterance,) = sim.utterances
    core = voiced(pcm)
    assert (utterance.rate, utterance.complete, utterance.ended_by) == (16000, True, "silence")
    assert core in utterance.pcm, "speech samples were lost or altered on the way"
    assert utterance.duration == pytest.approx(len(core) / 32000, abs=0.08)
    assert utterance.rms > 1000
    assert sim.entries("turn_start")[0].detail["trigger"].startswith("speech")
    assert sim.connections[0].audio_seconds == pytest.approx(len(pcm) / 32000 + 1.0, abs=0.11)


async def test_bad_tool_responses_are_violations(start: Start, tmp_path: Path) -> None:
    sim = await start(scenario_file(tmp_path, """
turns:
  - on: {text: go}
    steps:
      - tool_call:
          - {id: a, name: set_light, args: {light: hall, state: "ON"}}
          - {id: b, name: run_scene, args: {scene: movie}}
      - cancel_tools: [b]
      - await_tools: {ids: [a], timeout: 5s}
      - turn_complete
"""))
    async with client_for(sim).aio.live.connect(model=MODEL, config=live_config()) as session:
        stream = messages(session)
        await session.send_realtime_input(text="go")
        msgs = await until(stream, lambda m: m.tool_call_cancellation)
        a, b = next(m for m in msgs if m.tool_call).tool_call.function_calls
        assert msgs[-1].tool_call_cancellation.ids == ["b"]
        await session.send_tool_response(function_responses=[
            types.FunctionResponse(id="nope", name="set_light", response={"ok": True}),
            answer(b),
            types.FunctionResponse(id="a", name="run_scene", response={"ok": True}),
        ])
        await session.send_tool_response(function_responses=[answer(a)])
        await until(stream, turn_complete)
        await session.send_tool_response(function_responses=[answer(a)])
        await sim.wait_until(lambda: len(sim.tool_responses) == 5)
    await sim.wait_finished(5)

    assert [r.accepted for r in sim.tool_responses] == [False, False, False, True, False]
    problems = [v.message for v in sim.violations]
    assert len(problems) == 4, problems
    assert "response to unknown call id 'nope'" in problems[0]
    assert "call 'b' (run_scene) which was cancelled" in problems[1]
    assert "names 'run_scene', the call was 'set_light'" in problems[2]
    assert "second response to call 'a'" in problems[3]
    with pytest.raises(AssertionError, match="4 violation"):
        sim.assert_clean()


async def test_parallel_calls_and_a_repeated_id(start: Start) -> None:
    sim = await start("parallel_calls")
    async with client_for(sim).aio.live.connect(model=MODEL, config=live_config(text=True)) as session:
        stream = messages(session)
        await session.send_client_content(turns=types.Content(role="user", parts=[types.Part(text="Good night")]))
        calls = await until(stream, lambda m: m.tool_call)
        first = calls[-1].tool_call.function_calls
        assert [c.id for c in first] == ["hall-off", "bedroom-off"]
        again = (await until(stream, lambda m: m.tool_call))[-1].tool_call.function_calls
        assert [c.id for c in again] == ["hall-off"]
        # A client runs a repeated call once and answers each id once.
        await session.send_tool_response(function_responses=[answer(c) for c in first])
        reply = await until(stream, turn_complete)
    assert "".join(m.text or "" for m in reply).strip() == "Good night."  # TEXT modality: text parts, no audio
    assert not audio_of(reply)
    await sim.wait_finished(5)
    sim.assert_clean()
    assert sorted(r.id for r in sim.tool_responses if r.accepted) == ["bedroom-off", "hall-off"]


async def test_barge_in_interrupts_and_cancels_the_slow_call(start: Start) -> None:
    sim = await start("slow_tool_barge_in")
    async with client_for(sim).aio.live.connect(model=MODEL, config=live_config()) as session:
        stream = messages(session)
        await session.send_realtime_input(text="start the movie scene")
        before = await until(stream, lambda m: bool(audio_of([m])))
        (call,) = next(m for m in before if m.tool_call).tool_call.function_calls
        assert call.name == "run_scene"
        # The user talks over the model (the slow call stays unanswered).
        await send_pcm(session, speech("stop"))
        during = await until(stream, lambda m: m.tool_call_cancellation)
        assert any(m.server_content and m.server_content.interrupted for m in during)
        assert during[-1].tool_call_cancellation.ids == [call.id]
        after = await until(stream, turn_complete)
        assert next(m for m in after if m.server_content.input_transcription).server_content.input_transcription.text \
            == "stop"
        assert audio_of(after)
    await sim.wait_finished(5)
    sim.assert_clean()

    assert sim.entries("audio_end")[0].detail["barge_in"] is True
    assert [e.detail["trigger"].split()[0] for e in sim.entries("turn_start")] == ["text", "speech"]
    assert len(sim.utterances) == 1 and not sim.tool_responses


async def test_go_away_then_resume_continues_the_conversation(start: Start) -> None:
    sim = await start("goaway_mid_turn")
    client = client_for(sim)
    async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
        stream = messages(session)
        await session.send_realtime_input(text="turn on the kitchen light")
        msgs = await until(stream, lambda m: m.tool_call)
        assert next(m for m in msgs if m.go_away).go_away.time_left == "10s"
        early = next(m for m in msgs if m.session_resumption_update).session_resumption_update.new_handle
        # Resuming while this connection is still open is refused, as the service does.
        with pytest.raises(errors.APIError) as in_use:
            async with client.aio.live.connect(model=MODEL, config=live_config(handle=early)):
                pass
        assert in_use.value.code == 1011
        await session.send_tool_response(function_responses=[answer(msgs[-1].tool_call.function_calls[0])])
        msgs += await until(stream, turn_complete)
    handles = [m.session_resumption_update.new_handle for m in msgs if m.session_resumption_update]
    assert len(handles) == 2 and all(handles) and handles[0] != handles[1]

    async with client.aio.live.connect(model=MODEL, config=live_config(handle=handles[-1])) as session:
        stream = messages(session)
        await session.send_realtime_input(text="Turn off the kitchen light.")
        (call,) = (await until(stream, lambda m: m.tool_call))[-1].tool_call.function_calls
        assert call.args == {"light": "kitchen", "state": "OFF"}
        await session.send_tool_response(function_responses=[answer(call)])
        await until(stream, turn_complete)
    await sim.wait_finished(5)
    sim.assert_clean()

    first, refused, second = sim.connections
    assert refused.rejected is not None and not refused.resumed
    assert (first.closed_by, second.resumed, second.handle, second.session) == ("client", True, handles[-1], 1)
    assert [r.conn for r in sim.tool_responses] == [1, 3]


async def test_abrupt_close_is_1006_and_the_turn_goes_on_in_the_resumed_session(start: Start) -> None:
    sim = await start("drop_and_resume")
    client = client_for(sim)
    seen: list[types.LiveServerMessage] = []
    async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
        await session.send_realtime_input(text="turn on the kitchen light")
        with pytest.raises(errors.APIError) as raised:
            async with asyncio.timeout(10):
                async for message in messages(session):
                    seen.append(message)
    assert raised.value.code == 1006
    handle = next(m for m in seen if m.session_resumption_update).session_resumption_update.new_handle

    async with client.aio.live.connect(model=MODEL, config=live_config(handle=handle)) as session:
        stream = messages(session)
        (call,) = (await until(stream, lambda m: m.tool_call))[-1].tool_call.function_calls
        await session.send_tool_response(function_responses=[answer(call)])
        await until(stream, turn_complete)
    await sim.wait_finished(5)
    await sim.wait_closed()
    sim.assert_clean()

    assert [(c.closed_by, c.resumed) for c in sim.connections] == [("abort", False), ("client", True)]
    (response,) = sim.tool_responses
    assert (response.id, response.conn, response.accepted) == ("light-1", 2, True)


async def test_refusals_look_like_the_service(start: Start) -> None:
    sim = await start("lights_on")
    with pytest.raises(errors.APIError) as bad_key:
        async with client_for(sim, api_key="wrong").aio.live.connect(model=MODEL, config=live_config()):
            pass
    assert bad_key.value.code == 1007
    assert "API key not valid. Please pass a valid API key." in str(bad_key.value)

    with pytest.raises(errors.APIError) as bad_model:
        async with client_for(sim).aio.live.connect(model="gemini-0.1-nope", config=live_config()):
            pass
    assert bad_model.value.code == 1008
    assert "models/gemini-0.1-nope is not found for API version v1beta" in str(bad_model.value)

    with pytest.raises(errors.APIError) as bad_handle:
        async with client_for(sim).aio.live.connect(model=MODEL, config=live_config(handle="made-up")):
            pass
    assert bad_handle.value.code == 1008  # the real text (yeyu2/Youtube_demos#5)
    assert "BidiGenerateContent session not found" in str(bad_handle.value)
    assert [c.rejected[0] if c.rejected else None for c in sim.connections] == [1007, 1008, 1008]
    sim.assert_clean()  # refusals are the service's answer, not the client breaking the protocol


async def test_malformed_frames_are_violations(start: Start) -> None:
    sim = await start("lights_on")
    uri = sim.url.replace("https", "wss") + "/ws/google.ai.generativelanguage.v1beta.GenerativeService." \
                                            "BidiGenerateContent"
    tls = ssl.create_default_context(cafile=sim.ca_file)
    headers = {"x-goog-api-key": sim.api_key}
    async with ws_connect(uri, ssl=tls, additional_headers=headers, proxy=None) as ws:
        await ws.send(json.dumps({"setup": {"model": "models/gemini-3.8-live", "generationConfig": {
            "responseModalities": ["AUDIO"], "bogusKnob": 1}}}))
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1007 and "bogusKnob" in closed.value.rcvd.reason

    async with ws_connect(uri, ssl=tls, additional_headers=headers, proxy=None) as ws:
        await ws.send(json.dumps({"setup": {"model": "models/gemini-3.8-live"}}))
        assert json.loads(await ws.recv()) == {"setupComplete": {}}
        standard_b64 = base64.b64encode(bytes([0xFB, 0xFF] * 8)).decode()
        assert "+" in standard_b64
        for audio in ({"data": standard_b64, "mime_type": "audio/pcm;rate=16000"},
                      {"data": base64.urlsafe_b64encode(b"\0\0").decode(), "mime_type": "audio/pcm"},
                      {"data": base64.urlsafe_b64encode(b"\0\0\0").decode(), "mime_type": "audio/pcm;rate=16000"}):
            await ws.send(json.dumps({"realtime_input": {"audio": audio}}))
        await ws.send(json.dumps({"realtimeInput": {"activityStart": {}}}))
        await ws.send(json.dumps({"chat": {"text": "hi"}}))
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1007

    problems = [v.message for v in sim.violations]
    assert len(problems) == 6, problems
    assert "Unknown name \"bogusKnob\" at 'setup.generation_config'" in problems[0]
    assert "standard base64 alphabet" in problems[1]
    assert "has no rate=" in problems[2]
    assert "odd number of PCM bytes" in problems[3]
    assert "activityStart while automatic activity detection is enabled" in problems[4]
    assert "unknown message kind 'chat'" in problems[5]


async def test_setup_must_declare_what_the_scenario_uses(start: Start) -> None:
    sim = await start("goaway_mid_turn", vars={"light_tool": "light_control"})
    config = live_config(tools=("run_scene",), resumption=False)
    async with client_for(sim).aio.live.connect(model=MODEL, config=config) as session:
        stream = messages(session)
        await session.send_realtime_input(text="turn on the kitchen light")
        msgs = await until(stream, lambda m: m.tool_call)
        assert msgs[-1].tool_call.function_calls[0].name == "light_control"
        assert not any(m.session_resumption_update for m in msgs)
    problems = [v.message for v in sim.violations]
    assert "did not enable session resumption" in problems[0]
    assert "calls 'light_control' but the client's setup does not declare it" in problems[1]


@pytest.mark.parametrize("name", sorted(packaged_scenarios()))
def test_packaged_scenarios_load(name: str) -> None:
    scenario = load_scenario(name)
    assert scenario.name == name and scenario.description and scenario.turns


def test_scenario_errors_name_file_line_and_field(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, """\
settings:
  vad: {treshold: 300}
turns:
  - on: {text: hi}
    steps:
      - sya: hello
      - say: hi
        pace: realtime
      - go_away: soon
      - turn_complet
  - on: speach
    steps: [turn_complete]
""")
    with pytest.raises(ConfigError) as raised:
        load_scenario(path)
    text = str(raised.value)
    assert f"{path}:2: settings.vad.treshold: unknown key 'treshold' (did you mean 'threshold'?)" in text
    assert f"{path}:6: turns[0].steps[0].sya: unknown key 'sya' (did you mean 'say'?)" in text
    assert f"{path}:7: turns[0].steps[1]: a step is a mapping with one key, its kind (got say, pace)" in text
    assert f"{path}:9: turns[0].steps[2].go_away.time_left: expected a duration" in text
    assert f"{path}:10: turns[0].steps[3]: unknown step 'turn_complet' (did you mean 'turn_complete'?)" in text
    assert f"{path}:11: turns[1].on: expected text, speech, any or a mapping (did you mean 'speech'?)" in text

    path.write_text("""\
vars: {tool: set_light}
turns:
  - on: text
    steps:
      - tool_call: {id: x, name: "${tol}"}
""")
    with pytest.raises(ConfigError, match=rf"{path}:5: turns\[0\].steps\[0\].tool_call.name: undefined variable "
                                          r"'tol' \(did you mean 'tool'\?\)"):
        load_scenario(path)

    path.write_text("""\
turns:
  - on: text
    steps:
      - tool_call: {id: light-1, name: set_light}
      - await_tools: [light-2]
""")
    with pytest.raises(ConfigError, match=rf"{path}:5: turns\[0\].steps\[1\].await_tools.ids\[0\]: no earlier "
                                          r"tool_call has id 'light-2' \(did you mean 'light-1'\?\)"):
        load_scenario(path)
    with pytest.raises(ConfigError, match="no such variable"):
        load_scenario("lights_on", vars={"lamp_tool": "x"})


async def test_realtime_audio_stops_at_barge_in(start: Start) -> None:
    sim = await start("slow_tool_barge_in", realtime_audio=True)
    async with client_for(sim).aio.live.connect(model=MODEL, config=live_config()) as session:
        stream = messages(session)
        await session.send_realtime_input(text="start the movie scene")
        received = await until(stream, lambda m: bool(audio_of([m])))
        await send_pcm(session, speech("stop"))
        received += await until(stream, lambda m: m.tool_call_cancellation)
    said, ended = sim.entries("audio")[0].detail, sim.entries("audio_end")[0].detail
    assert ended["barge_in"] and ended["chunks_sent"] < said["chunks"]
    assert len(audio_of(received)) < said["seconds"] * 48000


async def test_manual_activity_bounds_the_utterance(start: Start) -> None:
    sim = await start("lights_on")
    config = live_config()
    config.realtime_input_config = types.RealtimeInputConfig(
        automatic_activity_detection=types.AutomaticActivityDetection(disabled=True))
    pcm = speech("turn on the kitchen light")
    async with client_for(sim).aio.live.connect(model=MODEL, config=config) as session:
        stream = messages(session)
        await send_pcm(session, pcm[:16000])  # ignored: no activityStart yet
        await session.send_realtime_input(activity_start=types.ActivityStart())
        await send_pcm(session, pcm)  # the trailing silence does not end it: activityEnd does
        await session.send_realtime_input(activity_end=types.ActivityEnd())
        (call,) = (await until(stream, lambda m: m.tool_call))[-1].tool_call.function_calls
        await session.send_tool_response(function_responses=[answer(call)])
        await until(stream, turn_complete)
    await sim.wait_finished(5)
    sim.assert_clean()
    (utterance,) = sim.utterances
    assert utterance.ended_by == "activity_end" and voiced(pcm) in utterance.pcm


class _Printed:
    """A text stream a test can wait on."""

    def __init__(self) -> None:
        self.text = ""
        self.changed = asyncio.Event()

    def write(self, text: str) -> int:
        self.text += text
        self.changed.set()
        return len(text)

    def flush(self) -> None:
        pass


async def test_serve_reports_and_fails_on_violations(tmp_path: Path) -> None:
    out = _Printed()
    state = tmp_path / "state"
    task = asyncio.create_task(serve("lights_on", state_dir=state, api_key="k1", until_finished=True,
                                     realtime_audio=False, out=out))  # type: ignore[arg-type]
    async with asyncio.timeout(10):
        while "config:" not in out.text:
            out.changed.clear()
            await out.changed.wait()
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(": ") for line in out.text.splitlines())}
    assert (state / "sim-api-key").read_text().strip() == "k1"
    options = types.HttpOptions(base_url=fields["endpoint"], api_version="v1beta", async_client_args={
        "ssl": ssl.create_default_context(cafile=fields["ca_file"])})
    client = genai.Client(api_key="k1", http_options=options)
    async with client.aio.live.connect(model=MODEL, config=live_config()) as session:
        stream = messages(session)
        await session.send_realtime_input(text="turn on the kitchen light")
        (call,) = (await until(stream, lambda m: m.tool_call))[-1].tool_call.function_calls
        await session.send_tool_response(function_responses=[answer(call), answer(call)])
        await until(stream, turn_complete)
        async with asyncio.timeout(10):
            assert await task == 1
    assert "violation: connection 1: second response to call 'light-1'" in out.text


async def test_server_closes_surface_as_api_errors(start: Start, tmp_path: Path) -> None:
    sim = await start("server_error")
    client = client_for(sim)
    async with client.aio.live.connect(model=MODEL, config=live_config(resumption=False)) as session:
        await session.send_realtime_input(text="What time is it?")
        with pytest.raises(errors.APIError) as failed:
            await until(messages(session), lambda m: False)
    assert (failed.value.code, "Internal error encountered." in str(failed.value)) == (1011, True)
    async with client.aio.live.connect(model=MODEL, config=live_config(resumption=False)) as session:
        await session.send_realtime_input(text="What time is it?")
        assert audio_of(await until(messages(session), turn_complete))
    await sim.wait_finished(5)
    sim.assert_clean()

    lingering = await start(scenario_file(tmp_path, """
turns:
  - on: text
    steps:
      - go_away: 200ms
      - turn_complete
"""))
    async with client_for(lingering).aio.live.connect(model=MODEL, config=live_config()) as session:
        await session.send_realtime_input(text="hello")
        stream = messages(session)
        assert (await until(stream, lambda m: m.go_away))[-1].go_away.time_left == "0.200s"
        with pytest.raises(errors.APIError) as expired:
            await until(stream, lambda m: False)  # a client that stays past the deadline is cut off
    assert expired.value.code == 1011 and "Deadline expired" in str(expired.value)
