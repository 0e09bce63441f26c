"""The daemon's main job, end to end: espeak-ng speech as the microphone, real openWakeWord, the real SDK against
the Live simulator over TLS, a real mosquitto with a fake light, real PyAudio on PulseAudio null sinks."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from daemon.audio.speech import silence
from tests.support.broker import Broker
from tests.support.daemonrig import running_daemon
from tests.support.pulse import MISSING, PULSEAUDIO, running_pulse
from tests.support.speech_files import read_wav, speech, write_wav

RATE = 16000

TWO_CONVERSATIONS = """
description: two conversations, each opened by the wake word
turns:
  - name: light on
    on: {speech: true}
    steps:
      - tool_call: {id: on-1, name: set_light, args: {light: kitchen, state: "ON"}}
      - await_tools: [on-1]
      - say: Done.
      - turn_complete
  - name: light off
    on: {speech: true}
    steps:
      - tool_call: {id: off-1, name: set_light, args: {light: kitchen, state: "OFF"}}
      - await_tools: [off-1]
      - say: Done.
      - turn_complete
"""


def assert_received_exactly(file_pcm: bytes, fed_from: int, utterance, stream_position: int = 0) -> None:
    """The simulator's utterance is, byte for byte, the microphone audio from `fed_from` (the first frame the
    daemon handed over, just before the wake word; at `stream_position` in the connection's audio) on:
    no frame lost, none reordered."""
    offset = round(utterance.offset * RATE)
    skip = max(0, stream_position - offset)  # the simulator's own pre-roll may reach back across an earlier gap
    got = utterance.pcm[skip * 2 :]
    start = (fed_from + offset + skip - stream_position) * 2
    assert len(got) > RATE and got == file_pcm[start : start + len(got)]


async def test_wake_word_conversations_end_to_end(tmp_path: Path, broker: Broker) -> None:
    neutral = speech("the weather is lovely today")
    parts = [
        silence(1.0),
        speech("hey jarvis, turn on the kitchen light"),
        silence(4.0),
        neutral,  # heard while listening: must not open a session
        silence(1.0),
        speech("hey jarvis, turn off the kitchen light"),
        silence(3.5),
    ]
    pcm = b"".join(parts)
    neutral_at = sum(len(p) for p in parts[:3]) // 2
    write_wav(tmp_path / "mic.wav", pcm)
    scenario = tmp_path / "two.yaml"
    scenario.write_text(TWO_CONVERSATIONS)
    async with running_daemon(tmp_path, broker, scenario, input=str(tmp_path / "mic.wav")) as run:
        assert await asyncio.wait_for(run.task, 60) == 0  # the input ended after the last conversation
    sim, trace = run.sim, run.trace
    sim.assert_clean()
    assert sim.finished
    assert [(d["word"], d["score"] > 0.5) for d in trace.of("wake")] == [("hey_jarvis", True)] * 2
    started = trace.of("session_started")
    assert [d["trigger"] for d in started] == ["wake", "wake"]
    assert [d["reason"] for d in trace.of("session_ended")] == ["idle", "idle"]
    # waiting for the wake word again between the conversations, and at the end
    states = [d["state"] for d in trace.of("state")]
    assert states.count("idle") >= 2 and states[-1] == "idle" and "listening" in states
    # (the daemon has exited: its own publishes arrived long before its disconnect)
    assert [s.json() for s in run.world.on("z2m/kitchen_ceiling/set")] == [{"state": "ON"}, {"state": "OFF"}]
    assert [(r.id, r.conn) for r in sim.tool_responses] == [("on-1", 1), ("off-1", 2)]
    # What the user said after the wake word reached the model whole, though the session was still connecting.
    assert len(sim.connections) == 2 and len(sim.utterances) == 2
    for session, utterance in zip(started, sim.utterances, strict=True):
        assert_received_exactly(pcm, session["fed_from"], utterance)
        assert utterance.duration > 1.2 and utterance.rms > 1000
    # The first utterance runs to the end of "light", before the neutral sentence; that one reached nobody.
    assert started[0]["fed_from"] + len(sim.utterances[0].pcm) // 2 < neutral_at
    assert started[1]["fed_from"] > neutral_at + len(neutral) // 2
    played, rate, _ = read_wav(tmp_path / "played.wav")
    assert rate == 24000 and np.abs(played).max() > 3000  # earcons and the model's voice were played


STORY = """
description: a long answer that the user interrupts with the wake word
turns:
  - name: story
    on: {speech: true}
    steps:
      - say: >-
          Once upon a time there was a small robot who lived in a kitchen
          and switched the lights on and off all day long.
      - turn_complete
  - name: stop
    on: {speech: true}
    steps:
      - say: Okay.
      - turn_complete
"""


async def test_wake_word_barges_in_over_the_model(tmp_path: Path, broker: Broker) -> None:
    pcm = silence(1.0) + speech("hey jarvis, tell me a story") + silence(2.5) + speech("hey jarvis, stop") + silence(4)
    write_wav(tmp_path / "mic.wav", pcm)
    scenario = tmp_path / "story.yaml"
    scenario.write_text(STORY)
    async with running_daemon(tmp_path, broker, scenario, input=str(tmp_path / "mic.wav")) as run:
        assert await asyncio.wait_for(run.task, 60) == 0
    sim, trace = run.sim, run.trace
    sim.assert_clean()
    assert sim.finished  # "stop" reached the model and was answered
    [barge] = trace.of("barge_in")
    [local] = [d for d in trace.session_of("interrupted") if d["local"]]
    assert local["dropped_bytes"] > 24000 * 2  # more than a second of the story was cut off
    [session] = trace.of("session_started")
    first, second = sim.utterances
    assert_received_exactly(pcm, session["fed_from"], first)
    assert_received_exactly(pcm, barge["fed_from"], second, barge["stream_position"])
    # While the model spoke the microphone stayed closed: over a second of that stretch was never sent.
    assert barge["stream_position"] < barge["fed_from"] - session["fed_from"] - RATE


@pytest.mark.skipif(PULSEAUDIO is None, reason=MISSING)
async def test_real_pyaudio_microphone_and_speaker(tmp_path: Path, broker: Broker) -> None:
    with running_pulse() as pulse:
        extra = "audio: {input: {backend: pyaudio}, output: {backend: pyaudio}}\n"
        with pulse.record_speaker(24000) as heard:
            async with running_daemon(tmp_path, broker, "lights_on", input=None, output=None, extra=extra) as run:
                await run.until(lambda: run.trace.of("ready"))
                feeder = pulse.feed_mic(speech("hey jarvis, turn on the kitchen light") + silence(1.0))
                await run.until(lambda: run.trace.of("session_ended"), timeout=40)
                await asyncio.to_thread(feeder.wait, 10)
        run.sim.assert_clean()
        assert run.trace.of("wake") and run.sim.finished
        assert [s.json() for s in run.world.on("z2m/kitchen_ceiling/set")] == [{"state": "ON"}]
        voice = np.frombuffer(heard.pcm, dtype=np.int16)
        loud = np.abs(voice) > 2000
        assert loud.sum() > 24000 * 0.3  # the model's sentence came out of the virtual speaker


async def test_voice_policy_keeps_the_microphone_open_while_the_model_speaks(tmp_path: Path, broker: Broker) -> None:
    pcm = silence(1.0) + speech("hey jarvis, tell me a story") + silence(1.5) + speech("stop") + silence(4)
    write_wav(tmp_path / "mic.wav", pcm)
    scenario = tmp_path / "story.yaml"
    scenario.write_text(STORY)
    conversation = "idle_timeout: 1s, barge_in: voice"
    async with running_daemon(
        tmp_path, broker, scenario, input=str(tmp_path / "mic.wav"), conversation=conversation
    ) as run:
        assert await asyncio.wait_for(run.task, 60) == 0
    run.sim.assert_clean()
    assert run.sim.finished and not run.trace.of("barge_in")
    [session] = run.trace.of("session_started")
    first, second = run.sim.utterances
    # One unbroken stream: "stop", said while the model talked, sits exactly where it was in the microphone.
    assert_received_exactly(pcm, session["fed_from"], first)
    assert_received_exactly(pcm, session["fed_from"], second)


RELOAD_SCENARIO = """
description: a conversation during which the config is reloaded
turns:
  - on: {speech: true}
    steps:
      - tool_call: {id: on-1, name: set_light, args: {light: kitchen, state: "ON"}}
      - await_tools: [on-1]
      - say: Done.
      - turn_complete
"""


async def test_reload_during_a_conversation_applies_after_it(tmp_path: Path, broker: Broker) -> None:
    pcm = silence(1.0) + speech("hey jarvis, turn on the kitchen light") + silence(5.0)
    write_wav(tmp_path / "mic.wav", pcm)
    scenario = tmp_path / "reload.yaml"
    scenario.write_text(RELOAD_SCENARIO)
    async with running_daemon(tmp_path, broker, scenario, input=str(tmp_path / "mic.wav")) as run:
        await run.until(lambda: run.trace.session_of("connected"))
        old = run.daemon.loaded
        text = run.config_path.read_text().replace("kitchen: kitchen_ceiling", "kitchen: kitchen_spots")
        run.config_path.write_text(text)
        await run.daemon.reload()
        assert run.daemon.loaded is old  # the conversation goes on with the config it started with
        assert await asyncio.wait_for(run.task, 60) == 0
    kinds = [k for k, _ in run.trace.daemon]
    assert kinds.index("session_ended") < kinds.index("reloaded")
    assert [s.json() for s in run.world.on("z2m/kitchen_ceiling/set")] == [{"state": "ON"}]  # old mapping
    assert run.daemon.loaded is not old
    assert "z2m/kitchen_spots/set" in run.daemon.loaded.registry.topics


async def test_a_reload_that_fails_part_way_leaves_the_old_config_whole(tmp_path: Path, broker: Broker) -> None:
    write_wav(tmp_path / "mic.wav", silence(6.0))
    out = tmp_path / "out.wav"
    extra = f"audio: {{output: {{backend: wav, file: {out}}}}}\n"
    async with running_daemon(
        tmp_path, broker, "lights_on", input=str(tmp_path / "mic.wav"), output=None, extra=extra
    ) as run:
        await run.until(lambda: run.trace.of("ready"))
        old_loaded, old_wake, old_speaker = run.daemon.loaded, run.daemon.wake, run.daemon.speaker
        # A new wake word (which loads fine) and an output file in a folder that does not exist (which fails).
        text = run.config_path.read_text().replace(str(out), str(tmp_path / "missing" / "out.wav"))
        run.config_path.write_text("wake: {words: [alexa]}\n" + text)
        await run.daemon.reload()
        assert run.daemon.loaded is old_loaded
        assert run.daemon.wake is old_wake and run.daemon.speaker is old_speaker
        assert run.daemon.wake.detector.names == ["hey_jarvis"]
        assert "reloaded" not in [k for k, _ in run.trace.daemon]
