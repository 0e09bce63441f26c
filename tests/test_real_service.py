"""The live layer against a simulator that behaves like the real Live service (issue 10): the real google-genai
SDK over TLS, tools on a real mosquitto. A session lost mid-call, a refused handle, a resume that forgets a call,
the models' differences, client-side activity, the goodbye, usage and the daily budget."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
from pathlib import Path

import numpy as np
import pytest

from daemon.audio.earcons import error_earcon, renewed_earcon
from daemon.audio.speech import silence, synthesize
from tests.support.broker import Broker
from tests.support.daemonrig import running_daemon
from tests.support.livestack import live
from tests.support.speech_files import frames, read_wav, speech, write_wav


def at_level(pcm: bytes, factor: float) -> bytes:
    """What the speaker plays of `pcm` at a volume factor: scaled in float, rounded, clipped."""
    scaled = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) * factor
    return np.clip(np.round(scaled), -32768, 32767).astype(np.int16).tobytes()


def played(rig_path: Path) -> bytes:
    pcm, rate, _ = read_wav(rig_path / "played.wav")
    assert rate == 24000
    return pcm.astype("<i2").tobytes()


async def test_a_mid_session_1008_renews_the_session_and_the_conversation_goes_on(
    tmp_path: Path, broker: Broker
) -> None:
    async with live(tmp_path, broker, "mid_session_1008") as rig:
        rig.session.send_text("turn on the kitchen light")
        result = await asyncio.wait_for(rig.session.run(), 30)
        await rig.speaker.drain()
    rig.sim.assert_clean()
    assert rig.sim.finished  # the model's confirmation arrived on the fresh session and was played
    assert result.reason == "idle" and result.connections == 2
    first, second = rig.sim.connections[:2]
    assert first.close_code == 1008 and not second.resumed
    [renewed] = rig.of("renewed")
    assert renewed["calls_told"] == 1
    [context] = [e for e in rig.sim.entries("client_content") if e.detail.get("context")]
    assert "set_light" in context.detail["text"] and '"state": "ON"' in context.detail["text"]
    assert renewed_earcon() in played(tmp_path)  # the user heard the cue
    assert [s.json() for s in rig.world.on("z2m/kitchen_ceiling/set")] == [{"state": "ON"}]  # run once only


async def test_a_refused_handle_falls_back_to_a_fresh_session(tmp_path: Path, broker: Broker) -> None:
    async with live(tmp_path, broker, "stale_handle", conversation="idle_timeout: 3s") as rig:
        rig.session.send_text("turn on the kitchen light")
        runner = asyncio.create_task(rig.session.run())
        await rig.event("connected", connection=2, timeout=20)
        rig.session.send_text("turn off the kitchen light")
        result = await asyncio.wait_for(runner, 30)
    rig.sim.assert_clean()
    assert rig.sim.finished and result.reason == "idle"
    refused = [c for c in rig.sim.connections if c.rejected]
    assert refused and refused[0].rejected == (1008, "BidiGenerateContent session not found")
    assert not rig.sim.connections[-1].resumed
    assert [s.json()["state"] for s in rig.world.on("z2m/kitchen_ceiling/set")] == ["ON", "OFF"]


async def test_a_resume_that_forgets_a_call_never_runs_it_twice(tmp_path: Path, broker: Broker) -> None:
    """The light answers slowly, so light-1 is still outstanding when the socket drops; the service resumes to
    before it and the model asks again as light-2: one publish, light-2 gets light-1's result, and light-1's
    answer never goes to a session that did not issue it."""
    slow = {"z2m/kitchen_ceiling/set": 0.8}
    async with live(tmp_path, broker, "forgotten_call", delays=slow) as rig:
        rig.session.send_text("turn on the kitchen light")
        result = await asyncio.wait_for(rig.session.run(), 30)
        await rig.world.fence(rig.link)
    rig.sim.assert_clean()  # an answer to light-1 on the resumed connection would be a violation
    assert rig.sim.finished and result.reason == "idle"
    assert [s.json() for s in rig.world.on("z2m/kitchen_ceiling/set")] == [{"state": "ON"}]
    assert [(r.id, r.accepted) for r in rig.sim.tool_responses] == [("light-2", True)]
    assert rig.sim.tool_responses[0].response["status"] == "confirmed"
    assert [d["repeated"] for d in rig.of("tool_call")] == [False, True]


async def test_a_synchronous_model_gets_no_behavior_or_scheduling_and_the_mic_is_held(
    tmp_path: Path, broker: Broker
) -> None:
    slow = {"z2m/kitchen_ceiling/set": 1.0}
    model = "  model: gemini-3.1-flash-live-preview\n"
    async with live(tmp_path, broker, "lights_on", gemini=model, delays=slow) as rig:
        rig.session.send_text("turn on the kitchen light")
        runner = asyncio.create_task(rig.session.run())
        await rig.event("tool_call")
        fed_at = asyncio.get_running_loop().time()
        for chunk in frames(silence(0.5)):  # the microphone goes on while the call runs
            rig.session.feed(chunk)
        result = await asyncio.wait_for(runner, 30)
    rig.sim.assert_clean()  # realtime input during the call would have been closed with 1008
    assert rig.sim.finished and result.reason == "idle"
    setup = rig.sim.connections[0].setup or {}
    tool = setup["tools"][0]
    declarations = tool.get("function_declarations") or tool.get("functionDeclarations")
    assert declarations and all("behavior" not in d for d in declarations)
    [answer] = rig.sim.tool_responses
    assert answer.scheduling is None and answer.accepted
    first_audio = rig.sim.connections[0].first_audio
    assert first_audio is not None and first_audio >= answer.t  # held until the answer had gone out
    assert fed_at < answer.t


NATIVE_AUDIO = ["gemini-2.5-flash-native-audio-preview-12-2025", "gemini-live-2.5-flash-native-audio"]


@pytest.mark.parametrize("model", NATIVE_AUDIO)
async def test_native_audio_models_get_no_language_code(tmp_path: Path, broker: Broker, model: str) -> None:
    async with live(tmp_path, broker, "lights_on", gemini=f"  model: {model}\n") as rig:
        rig.session.send_text("turn on the kitchen light")
        result = await asyncio.wait_for(rig.session.run(), 30)
    rig.sim.assert_clean()  # a language code would have been refused with 1007
    assert rig.sim.finished and result.reason == "idle"
    speech_config = (rig.sim.connections[0].setup or {})["generation_config"]["speech_config"]
    assert "language_code" not in speech_config


async def test_without_the_service_vad_the_client_frames_the_speech(tmp_path: Path, broker: Broker) -> None:
    said = synthesize("turn on the kitchen light", 16000)
    async with live(tmp_path, broker, "lights_on", gemini="  vad: {enabled: false}\n") as rig:
        runner = asyncio.create_task(rig.session.run())
        for chunk in frames(silence(0.5) + said + silence(1.2)):
            rig.session.feed(chunk)
            await asyncio.sleep(0.02)
        result = await asyncio.wait_for(runner, 30)
    rig.sim.assert_clean()
    assert rig.sim.finished and result.reason == "idle"  # the speech was answered
    starts, ends = rig.sim.entries("activity_start"), rig.sim.entries("activity_end")
    assert len(starts) == 1 and len(ends) == 1 and starts[0].t < ends[0].t
    [utterance] = rig.sim.utterances
    voiced = np.flatnonzero(np.abs(np.frombuffer(said, dtype=np.int16)) > 1000)
    spoken = (voiced[-1] - voiced[0]) / 16000
    assert utterance.ended_by == "activity_end" and abs(utterance.duration - spoken) < 0.25


GOODBYE = """
description: the model ends the conversation before it says goodbye
turns:
  - on: {text: true}
    steps:
      - tool_call: {id: bye-1, name: end_conversation}
      - say: Goodbye, and have a lovely evening in the kitchen.
      - turn_complete
"""


async def test_the_goodbye_is_played_whole(tmp_path: Path, broker: Broker) -> None:
    scenario = tmp_path / "goodbye.yaml"
    scenario.write_text(GOODBYE)
    async with live(tmp_path, broker, scenario, conversation="idle_timeout: 5s") as rig:
        rig.session.send_text("that is all, thanks")
        result = await asyncio.wait_for(rig.session.run(), 30)
    rig.sim.assert_clean()
    assert result.reason == "end_conversation"
    [sent] = rig.sim.entries("audio_end")
    goodbye = synthesize("Goodbye, and have a lovely evening in the kitchen.", 24000, speed=175)
    assert sent.detail["seconds_sent"] > 2.0
    assert rig.speaker.played_bytes >= len(goodbye) * 0.95  # all of it reached the speaker before the end


async def test_usage_tokens_are_summed_per_conversation(tmp_path: Path, broker: Broker) -> None:
    async with live(tmp_path, broker, "lights_on") as rig:
        rig.session.send_text("turn on the kitchen light")
        result = await asyncio.wait_for(rig.session.run(), 30)
    reported = sum(t.total for t in rig.sim.tokens_reported.values())
    assert reported > 0 and result.tokens == reported


async def test_tokens_reach_the_session_end_event_and_the_budget_refuses_a_wake(tmp_path: Path, broker: Broker) -> None:
    state = tmp_path / "state"
    pcm = silence(1.0) + speech("hey jarvis, turn on the kitchen light") + silence(4.0)
    write_wav(tmp_path / "mic.wav", pcm)
    extra = f"assistant: {{state_dir: {state}}}\n"
    async with running_daemon(tmp_path, broker, "lights_on", input=str(tmp_path / "mic.wav"), extra=extra) as run:
        assert await asyncio.wait_for(run.task, 60) == 0
    [ended] = run.trace.of("session_ended")
    assert ended["tokens"] > 0
    saved = json.loads((state / "usage.json").read_text())
    assert saved == {"day": datetime.date.today().isoformat(), "tokens": ended["tokens"]}
    # Over today's budget: the same wake word is refused, and no session is opened.
    budget = tmp_path / "over"
    budget.mkdir()
    os.replace(tmp_path / "mic.wav", budget / "mic.wav")
    extra = f"assistant: {{state_dir: {state}}}\n"
    async with running_daemon(
        budget, broker, "lights_on", input=str(budget / "mic.wav"), extra=extra,
        gemini=f"  daily_token_budget: {ended['tokens']}\n",
    ) as run:  # fmt: skip
        assert await asyncio.wait_for(run.task, 60) == 0
    assert run.trace.of("wake") and not run.trace.of("session_started")
    [refused] = run.trace.of("refused")
    assert refused["trigger"] == "wake" and "budget" in refused["why"]
    assert run.sim.connections == []
    heard = played(budget)
    assert at_level(error_earcon(), 0.8 * 0.6) in heard  # audio.output.volume 80 %, the tones at 60 % of it
