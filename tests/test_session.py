"""The Live session engine: the real google-genai SDK over TLS against the Live simulator, tools on a real
mosquitto. Nothing of the SDK or its transport is patched."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import pytest

from daemon.audio.speech import silence, synthesize
from tests.support.broker import Broker
from tests.support.livestack import CANCEL_AT_ONCE, KEY, live
from tests.support.speech_files import frames


async def test_tool_call_publishes_and_is_answered_with_id_and_scheduling(tmp_path: Path, broker: Broker) -> None:
    async with live(tmp_path, broker, "lights_on") as rig:
        rig.session.send_text("turn on the kitchen light")
        result = await asyncio.wait_for(rig.session.run(), 30)
        assert result.reason == "idle" and result.connections == 1 and result.tool_calls == 1
        assert [s.json() for s in rig.world.on("z2m/kitchen_ceiling/set")] == [{"state": "ON"}]
        [answer] = rig.sim.tool_responses
        assert (answer.id, answer.name, answer.scheduling, answer.accepted) == (
            "light-1",
            "set_light",
            "WHEN_IDLE",
            True,
        )
        assert answer.response["status"] == "confirmed" and answer.response["state"]["state"] == "ON"
        rig.sim.assert_clean()
        assert rig.sim.finished
        assert rig.speaker.played_bytes > 24000  # the model's sentence reached the speaker
        declared = rig.sim.connections[0].declared_tools
        assert list(declared) == ["set_light", "run_scene", "end_conversation"]


async def test_parallel_calls_answered_as_they_finish_and_repeated_id_runs_once(tmp_path: Path, broker: Broker) -> None:
    slow_hall = {"z2m/hall_lamp/set": 0.4}  # the hall lamp confirms late, so its answer goes second
    async with live(tmp_path, broker, "parallel_calls", delays=slow_hall) as rig:
        rig.session.send_text("good night")
        await asyncio.wait_for(rig.session.run(), 30)
        assert [r.id for r in rig.sim.tool_responses] == ["bedroom-off", "hall-off"]
        assert all(r.accepted and r.scheduling == "WHEN_IDLE" for r in rig.sim.tool_responses)
        await rig.world.fence(rig.link)
        assert len(rig.world.on("z2m/hall_lamp/set")) == 1  # the repeated call was not run again
        assert [d["repeated"] for d in rig.of("tool_call")] == [False, False, True]
        rig.sim.assert_clean()


async def test_barge_in_flushes_playback_cancels_the_slow_tool_and_undoes_it(tmp_path: Path, broker: Broker) -> None:
    async with live(tmp_path, broker, "slow_tool_barge_in") as rig:
        rig.session.send_text("start the movie scene")
        runner = asyncio.create_task(rig.session.run())
        await rig.event("speaking")
        await rig.world.wait_for(lambda s: s.topic == "scenes/movie/run")  # published; waiting for the projector
        await asyncio.sleep(0.5)  # the model has been talking for a moment
        for chunk in frames(synthesize("stop", 16000) + silence(1.0)):
            rig.session.feed(chunk)
        interrupted = await rig.event("interrupted")
        assert interrupted["dropped_bytes"] > 0
        cancelled = await rig.event("cancelled", id="scene-1")
        assert cancelled["result"] == "undone"
        result = await asyncio.wait_for(runner, 30)
        assert result.reason == "idle"
        await rig.world.fence(rig.link)
        assert [s.json() for s in rig.world.on("scenes/movie/run")] == [{"run": True}, {"run": False}]
        assert "scene-1" not in [r.id for r in rig.sim.tool_responses]  # a cancelled id is never answered
        rig.sim.assert_clean()
        assert rig.sim.finished  # the "stop" utterance started the next turn, which was answered


async def test_cancellation_before_publish_publishes_nothing_and_is_not_answered(
    tmp_path: Path, broker: Broker
) -> None:
    scenario = tmp_path / "cancel.yaml"
    scenario.write_text(CANCEL_AT_ONCE)
    async with live(tmp_path, broker, scenario) as rig:
        rig.session.send_text("dinner scene")
        await asyncio.wait_for(rig.session.run(), 30)
        cancelled = await rig.event("cancelled", id="scene-2")
        assert cancelled["result"] == "not_published"
        await rig.world.fence(rig.link)
        assert rig.world.on("scenes/dinner/run") == []
        assert rig.sim.tool_responses == []
        rig.sim.assert_clean()


async def test_goaway_moves_to_a_resumed_connection(tmp_path: Path, broker: Broker) -> None:
    async with live(tmp_path, broker, "goaway_mid_turn", conversation="idle_timeout: 2s") as rig:
        rig.session.send_text("turn on the kitchen light")
        runner = asyncio.create_task(rig.session.run())
        await rig.event("connected", connection=2)
        rig.session.send_text("turn off the kitchen light")
        result = await asyncio.wait_for(runner, 30)
        first, second = rig.sim.connections[:2]
        assert not first.resumed and second.resumed and second.handle is not None
        assert first.closed_by == "client"  # left before the service's deadline
        assert [(r.id, r.conn) for r in rig.sim.tool_responses] == [("light-on", 1), ("light-off", 2)]
        assert result.connections == 2 and result.reason == "idle"
        rig.sim.assert_clean()


async def test_abrupt_close_resumes_keeps_mic_audio_and_delivers_the_answer(tmp_path: Path, broker: Broker) -> None:
    slow_kitchen = {"z2m/kitchen_ceiling/set": 0.6}  # the answer becomes ready while the connection is down
    async with live(tmp_path, broker, "drop_and_resume", delays=slow_kitchen) as rig:
        rig.session.send_text("turn on the kitchen light")
        runner = asyncio.create_task(rig.session.run())
        reconnecting = await rig.event("reconnecting")
        assert "1006" in reconnecting["why"]
        gap_audio = bytes(32000)  # one second of microphone audio captured while disconnected
        for chunk in frames(gap_audio):
            rig.session.feed(chunk)
        await asyncio.wait_for(runner, 30)
        [answer] = rig.sim.tool_responses
        assert answer.id == "light-1" and answer.conn == 2 and answer.accepted
        assert rig.sim.connections[1].resumed
        assert rig.sim.connections[1].audio_bytes >= len(gap_audio)  # kept and sent after the reconnect
        rig.sim.assert_clean()


async def test_server_error_reconnects(tmp_path: Path, broker: Broker) -> None:
    async with live(tmp_path, broker, "server_error", conversation="idle_timeout: 2s") as rig:
        rig.session.send_text("what time is it")
        runner = asyncio.create_task(rig.session.run())
        reconnecting = await rig.event("reconnecting")
        assert "1011" in reconnecting["why"]
        await rig.event("connected", connection=2)
        rig.session.send_text("what time is it")
        result = await asyncio.wait_for(runner, 30)
        assert result.reason == "idle" and rig.sim.finished
        rig.sim.assert_clean()


async def test_bad_key_is_a_clear_fatal_error_and_is_never_logged(
    tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "AIza-wrong-key-do-not-log-4242"
    caplog.set_level(logging.DEBUG)
    async with live(tmp_path, broker, "lights_on", key=wrong) as rig:
        result = await asyncio.wait_for(rig.session.run(), 30)
    assert result.reason == "fatal" and "refused the API key" in result.detail and "1007" in result.detail
    assert "reconnecting" not in rig.kinds()  # retrying cannot fix a bad key
    assert any(r.levelno == logging.ERROR and "API key" in r.getMessage() for r in caplog.records)
    # Everything the daemon side logged, at every level (the simulator's own server may log what it received).
    ours = [r for r in caplog.records if not r.name.startswith(("websockets.server", "livehome.sim"))]
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in ours)
    assert ours and wrong not in logged and KEY not in logged


async def test_unknown_model_is_a_clear_fatal_error(tmp_path: Path, broker: Broker) -> None:
    async with live(tmp_path, broker, "lights_on") as rig:
        rig.session.gemini = rig.session.gemini.model_copy(update={"model": "gemini-0.1-nope"})
        result = await asyncio.wait_for(rig.session.run(), 30)
    assert result.reason == "fatal" and "does not offer model 'gemini-0.1-nope'" in result.detail


END = """
description: the user is done; the model says goodbye and ends the conversation
turns:
  - on: {text: true}
    steps:
      - tool_call: {id: end-1, name: end_conversation, args: {}}
      - say: Goodbye.
      - turn_complete
"""


async def test_end_conversation_ends_after_the_goodbye(tmp_path: Path, broker: Broker) -> None:
    scenario = tmp_path / "end.yaml"
    scenario.write_text(END)
    async with live(tmp_path, broker, scenario, conversation="idle_timeout: 30s") as rig:
        rig.session.send_text("that's all, thanks")
        result = await asyncio.wait_for(rig.session.run(), 20)
        assert result.reason == "end_conversation"
        [answer] = rig.sim.tool_responses
        assert (answer.id, answer.scheduling) == ("end-1", "SILENT")
        assert rig.speaker.played_bytes > 0 and not rig.speaker.playing  # the goodbye was heard in full
        rig.sim.assert_clean()


HANG = """
description: a slow tool is still running when the conversation reaches its time limit
turns:
  - on: {text: true}
    steps:
      - tool_call: {id: scene-3, name: run_scene, args: {scene: movie}}
      - say: Working on it.
      - await_tools: {ids: [scene-3], timeout: 30s, on_timeout: continue}
"""


async def test_outstanding_calls_are_settled_before_the_socket_closes(tmp_path: Path, broker: Broker) -> None:
    scenario = tmp_path / "hang.yaml"
    scenario.write_text(HANG)
    conversation = "idle_timeout: 30s, max_duration: 2s, settle_timeout: 0.3s"
    async with live(tmp_path, broker, scenario, conversation=conversation) as rig:
        rig.session.send_text("movie time")
        result = await asyncio.wait_for(rig.session.run(), 20)
        assert result.reason == "max_duration"
        await rig.sim.wait_closed()
        undo = await rig.world.wait_for(lambda s: s.topic == "scenes/movie/run" and s.json() == {"run": False})
        [closed] = rig.sim.entries("closed")
        assert undo.t < closed.t  # cancelled and undone while the session was still open
        assert rig.sim.tool_responses == []
        rig.sim.assert_clean()


async def test_say_command_end_to_end(tmp_path: Path, broker: Broker) -> None:
    async with live(tmp_path, broker, "lights_on") as rig:
        env = {**os.environ, "GEMINI_API_KEY": KEY}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon", "say", "--config", str(rig.config_path), "--idle", "1",
            "--output", str(tmp_path / "say.wav"), "turn on the kitchen light",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        text = out.decode()
        assert proc.returncode == 0, err.decode()
        for expected in (
            "you (typed): turn on the kitchen light",
            'tool call set_light [light-1] {"light": "kitchen", "state": "ON"}',
            'mqtt publish z2m/kitchen_ceiling/set {"state":"ON"}',
            "answer to [light-1]: success, WHEN_IDLE",
            "model: The kitchen light is on.",
            "conversation ended: idle",
        ):
            assert expected in text, text
        assert (tmp_path / "say.wav").stat().st_size > 44 + 24000
        rig.sim.assert_clean()
        assert json.dumps(KEY) not in text and KEY not in err.decode()
