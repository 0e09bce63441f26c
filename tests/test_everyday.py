"""What people use a voice assistant for every day (issue 14), on real parts: the daemon with the real SDK against
the Live simulator, a real mosquitto, real openWakeWord on espeak-ng speech, the daemon's own WAV output paced like
a sound card. Timers, announcements, volume, hooks and memory between wake words."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from daemon.audio.earcons import ring
from daemon.audio.speech import silence
from daemon.mqtt.topics import Topics
from tests.support.broker import Broker
from tests.support.daemonrig import Running, running_daemon
from tests.support.mqttworld import world
from tests.support.speech_files import read_wav, speech, write_wav


def mic(tmp_path: Path, *parts: bytes) -> str:
    path = tmp_path / "mic.wav"
    write_wav(path, b"".join(parts))
    return str(path)


def played(run: Running, tmp_path: Path) -> np.ndarray:
    pcm, rate, _ = read_wav(tmp_path / "played.wav")
    assert rate == 24000
    return pcm


def said(run: Running) -> list[str]:
    return [d["text"] for d in run.trace.of("transcript") if d["who"] == "model"]


def at_level(pcm: bytes, factor: float) -> bytes:
    scaled = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) * factor
    return np.clip(np.round(scaled), -32768, 32767).astype(np.int16).tobytes()


TIMER = """
description: a three second pasta timer, then its announcement
turns:
  - on: {text: set a pasta timer for three seconds}
    steps:
      - tool_call: {id: t1, name: set_timer, args: {seconds: 3, label: pasta}}
      - await_tools: [t1]
      - say: Pasta timer set.
      - turn_complete
  - on: {pattern: "word for word.*: Your pasta timer is done\\\\.$"}
    steps:
      - say: Your pasta timer is done.
      - turn_complete
"""


async def asked(tmp_path: Path, broker: Broker, scenario: str, text: str, seconds: float, extra: str) -> Running:
    """The daemon run until its microphone file ends, after one text turn."""
    path = tmp_path / "scenario.yaml"
    path.write_text(scenario)
    extra += f"assistant: {{state_dir: {tmp_path / 'state'}}}\n"
    async with running_daemon(tmp_path, broker, path, input=mic(tmp_path, silence(seconds)), extra=extra) as run:
        await run.until(lambda: run.trace.of("ready"))
        await run.daemon.start_conversation(text)
        assert await asyncio.wait_for(run.task, 60) == 0
    run.sim.assert_clean()
    return run


async def test_a_timer_rings_after_the_conversation_and_is_announced(tmp_path: Path, broker: Broker) -> None:
    run = await asked(tmp_path, broker, TIMER, "set a pasta timer for three seconds", 14.0,
                      "builtins: {ring_for: 1s}\n")  # fmt: skip
    assert run.sim.finished
    [answer] = run.sim.tool_responses
    assert answer.response["status"] == "set" and answer.response["timer"]["label"] == "pasta"
    kinds = [k for k, _ in run.trace.daemon]
    first_end, rang = kinds.index("session_ended"), kinds.index("timer_ringing")
    assert first_end < rang  # it rang after the conversation that set it had ended
    assert [d["trigger"] for d in run.trace.of("session_started")] == ["command", "announce"]
    assert said(run)[-1] == "Your pasta timer is done."
    assert at_level(ring(), 0.8) in played(run, tmp_path).tobytes()  # the ring, at the output's volume


async def test_a_timer_survives_a_restart(tmp_path: Path, broker: Broker) -> None:
    scenario = tmp_path / "timer.yaml"
    scenario.write_text(TIMER.replace("seconds: 3", "seconds: 6"))
    state = tmp_path / "state"
    extra = f"builtins: {{ring_for: 1s}}\nassistant: {{state_dir: {state}}}\n"
    first = tmp_path / "first"
    first.mkdir()
    async with running_daemon(first, broker, scenario, input=mic(first, silence(30.0)), extra=extra) as run:
        await run.until(lambda: run.trace.of("ready"))
        await run.daemon.start_conversation("set a pasta timer for three seconds")
        await run.until(lambda: run.trace.of("session_ended"))
    assert not run.trace.of("timer_ringing")  # stopped before it was due
    assert json.loads((state / "timers.json").read_text())["timers"][0]["label"] == "pasta"
    second = tmp_path / "second"
    second.mkdir()
    async with running_daemon(second, broker, scenario, input=mic(second, silence(12.0)), extra=extra) as run:
        await run.until(lambda: run.trace.of("timer_ringing"), timeout=20)
    assert run.trace.of("timer_ringing")[0]["label"] == "pasta"


async def test_the_wake_word_stops_a_ring(tmp_path: Path, broker: Broker) -> None:
    scenario = tmp_path / "timer.yaml"
    scenario.write_text(TIMER.replace("seconds: 3", "seconds: 4"))  # due after the conversation that set it
    extra = f"builtins: {{ring_for: 30s}}\nassistant: {{state_dir: {tmp_path / 'state'}}}\n"
    audio = mic(tmp_path, silence(9.0), speech("hey jarvis"), silence(4.0))
    async with running_daemon(tmp_path, broker, scenario, input=audio, extra=extra) as run:
        await run.until(lambda: run.trace.of("ready"))
        await run.daemon.start_conversation("set a pasta timer for three seconds")
        assert await asyncio.wait_for(run.task, 60) == 0
    kinds = [k for k, _ in run.trace.daemon]
    assert kinds.index("timer_ringing") < kinds.index("wake")
    assert [d["trigger"] for d in run.trace.of("session_started")] == ["command"]  # the wake word opened nothing
    rings = played(run, tmp_path).tobytes().count(at_level(ring(), 0.8))
    assert 1 <= rings <= 8  # stopped after a few rings, not 30 s of them


TIMERS = """
description: two timers, list, cancel one, list again
turns:
  - on: {text: true}
    steps:
      - tool_call:
          - {id: a, name: set_timer, args: {seconds: 600, label: eggs}}
          - {id: b, name: set_timer, args: {at: "23:59", label: bedtime}}
      - await_tools: [a, b]
      - tool_call: {id: l1, name: list_timers}
      - await_tools: [l1]
      - tool_call: {id: c, name: cancel_timer, args: {timer: eggs}}
      - await_tools: [c]
      - tool_call: {id: l2, name: list_timers}
      - await_tools: [l2]
      - tool_call: {id: x, name: cancel_timer, args: {timer: tea}}
      - await_tools: [x]
      - say: Done.
      - turn_complete
"""


async def test_timers_are_listed_and_cancelled(tmp_path: Path, broker: Broker) -> None:
    run = await asked(tmp_path, broker, TIMERS, "timers please", 8.0, "")
    answers = {r.id: r.response for r in run.sim.tool_responses}
    assert sorted(t["label"] for t in answers["l1"]["timers"]) == ["bedtime", "eggs"]
    assert [t["label"] for t in answers["c"]["timers"]] == ["eggs"]
    assert [t["label"] for t in answers["l2"]["timers"]] == ["bedtime"]
    assert answers["x"]["ok"] is False and "bedtime" in answers["x"]["error"]
    timers = [s.json() for s in run.world.on(Topics.of(run.daemon.loaded.config).timers)]
    assert [t["label"] for t in timers[-1]] == ["bedtime"]  # retained on MQTT, as HA sees them


ANNOUNCE = """
description: a conversation, an announcement that waits for it, then an announcement with a follow-up
turns:
  - on: {text: what time is it}
    steps:
      - say: It is half past six.
      - turn_complete
  - on: {pattern: "word for word.*: Dinner is ready in the kitchen$"}
    steps:
      - say: Dinner is ready in the kitchen
      - turn_complete
  - on: {pattern: "word for word.*: Shall I turn on the porch light\\\\?$"}
    steps:
      - say: Shall I turn on the porch light?
      - turn_complete
  - on: {speech: true}
    steps:
      - say: Okay.
      - turn_complete
"""


async def test_announcements_are_spoken_queued_and_answered(tmp_path: Path, broker: Broker) -> None:
    scenario = tmp_path / "announce.yaml"
    scenario.write_text(ANNOUNCE)
    extra = "assistant: {id: announcer, commands: [say, announce]}\n"
    audio = mic(tmp_path, silence(10.0), speech("yes please"), silence(8.0))
    async with (
        running_daemon(tmp_path, broker, scenario, input=audio, extra=extra,
                       conversation="idle_timeout: 8s, barge_in: voice") as run,
        world(broker) as w,
    ):  # fmt: skip
        await run.until(lambda: run.trace.of("ready"))
        command = "livehome/announcer/command"
        await w.client.publish(command, json.dumps({"command": "say", "text": "what time is it"}), qos=1)
        await run.until(lambda: run.trace.session_of("speaking"))
        await w.client.publish(command, json.dumps({"command": "announce", "text": "Dinner is ready in the kitchen"}),
                               qos=1)  # fmt: skip
        await run.until(lambda: run.trace.of("turn_ended"))
        assert len(run.trace.of("session_started")) == 1
        await run.daemon.end_conversation()
        await run.until(lambda: len(run.trace.of("session_ended")) == 2, timeout=30)
        question = {"command": "announce", "text": "Shall I turn on the porch light?", "follow_up": True}
        await w.client.publish(command, json.dumps(question), qos=1)
        assert await asyncio.wait_for(run.task, 60) == 0
    run.sim.assert_clean()
    assert run.sim.finished  # the answer, said without a wake word, reached the model
    started = [d["trigger"] for d in run.trace.of("session_started")]
    assert started == ["command", "announce", "announce"]  # the first announcement waited for the conversation
    assert said(run)[1:3] == ["Dinner is ready in the kitchen", "Shall I turn on the porch light?"]
    assert not run.trace.of("wake")
    [answer_turn] = [u for u in run.sim.utterances if u.conn == run.sim.connections[-1].number]
    assert answer_turn.duration > 0.4


async def volume_run(tmp_path: Path, broker: Broker, state: Path, level: int | None) -> np.ndarray:
    scenario = tmp_path / "say.yaml"
    scenario.write_text(ANNOUNCE.split("  - on: {pattern: \"word for word.*: Shall")[0])
    extra = f"assistant: {{id: announcer, state_dir: {state}}}\naudio: {{output: {{volume: 100}}}}\n"
    async with (
        running_daemon(tmp_path, broker, scenario, input=mic(tmp_path, silence(4.0)), extra=extra,
                       conversation="idle_timeout: 1s, earcons: false") as run,
        world(broker) as w,
    ):  # fmt: skip
        await run.until(lambda: run.trace.of("ready"))
        if level is not None:
            await w.client.publish("livehome/announcer/command", json.dumps({"command": "volume", "level": level}))
            await run.until(lambda: run.daemon.household.volume == level)
        await run.daemon.start_conversation("what time is it")
        assert await asyncio.wait_for(run.task, 60) == 0
    run.sim.assert_clean()
    return played(run, tmp_path).astype(np.float64)


async def test_volume_scales_what_is_played_and_is_kept(tmp_path: Path, broker: Broker) -> None:
    state = tmp_path / "state"
    runs = []
    for i, level in enumerate((None, 30, None)):  # full volume; 30 by MQTT; after a restart, still 30
        (tmp_path / str(i)).mkdir()
        runs.append(await volume_run(tmp_path / str(i), broker, state if i else tmp_path / "fresh", level))
    loud, quiet, restarted = (float(np.sqrt(np.mean(r**2))) for r in runs)
    assert loud > 1000
    assert quiet / loud == pytest.approx(0.30, abs=0.01)
    assert restarted / loud == pytest.approx(0.30, abs=0.01)
    assert np.abs(runs[1]).max() < 0.31 * np.abs(runs[0]).max() + 2  # scaled, never clipped or wrapped


HOOK_LOG = """
import os, sys
with open(sys.argv[1], "a") as f:
    detail = os.environ.get("LIVEHOME_WORD", os.environ.get("LIVEHOME_NAME", ""))
    f.write(os.environ["LIVEHOME_EVENT"] + " " + detail + "\\n")
"""


async def test_hooks_fire_with_their_fields_and_a_bad_hook_changes_nothing(tmp_path: Path, broker: Broker) -> None:
    log = tmp_path / "hooks.log"
    script = tmp_path / "hook.py"
    script.write_text(HOOK_LOG)
    record = [sys.executable, str(script), str(log)]
    hooks = {"wake": record, "listening": record, "connecting": record, "tool_call": record, "idle": record,
             "speaking": {"command": ["sleep", "30"], "timeout": "1s"}, "muted": ["/no/such/program"],
             "error": ["false"]}  # fmt: skip
    extra = "hooks: " + json.dumps(hooks) + "\n"
    audio = mic(tmp_path, silence(1.0), speech("hey jarvis, turn on the kitchen light"), silence(6.0))
    async with running_daemon(tmp_path, broker, "lights_on", input=audio, extra=extra) as run:
        await run.until(lambda: run.trace.of("session_ended"), timeout=40)
        run.daemon.set_muted(True)  # the muted hook cannot start: logged, nothing else happens
        run.daemon.set_muted(False)
        assert await asyncio.wait_for(run.task, 60) == 0
    run.sim.assert_clean()
    assert run.sim.finished and [s.json() for s in run.world.on("z2m/kitchen_ceiling/set")] == [{"state": "ON"}]
    lines = log.read_text().splitlines()
    assert "wake hey_jarvis" in lines and "tool_call set_light" in lines
    assert {line.split()[0] for line in lines} >= {"wake", "listening", "connecting", "tool_call", "idle"}


MEMORY = """
description: two conversations; the second goes on where the first ended
turns:
  - on: {text: turn on the kitchen light}
    steps:
      - say: The kitchen light is on.
      - turn_complete
  - on: {text: and the hall too}
    steps:
      - say: The hall light is on too.
      - turn_complete
"""


@pytest.mark.parametrize("refused", [False, True])
async def test_remember_resumes_the_last_conversation(tmp_path: Path, broker: Broker, refused: bool) -> None:
    scenario = tmp_path / "memory.yaml"
    text = MEMORY
    if refused:  # the service forgets the session between the two conversations
        text = text.replace("      - say: The kitchen light is on.\n      - turn_complete\n",
                            "      - say: The kitchen light is on.\n      - turn_complete\n      - sleep: 100ms\n"
                            "      - forget_handles\n")  # fmt: skip
    scenario.write_text(text)
    async with running_daemon(tmp_path, broker, scenario, input=mic(tmp_path, silence(10.0)),
                              conversation="idle_timeout: 1s, remember: 60s") as run:  # fmt: skip
        await run.until(lambda: run.trace.of("ready"))
        await run.daemon.start_conversation("turn on the kitchen light")
        await run.until(lambda: run.trace.of("session_ended"))
        await run.daemon.start_conversation("and the hall too")
        assert await asyncio.wait_for(run.task, 60) == 0
    run.sim.assert_clean()
    assert run.sim.finished
    ended = run.trace.of("session_ended")
    assert [d["reason"] for d in ended] == ["idle", "idle"]  # a refused handle is no failure: silently afresh
    first, *rest = run.sim.connections
    second = rest[-1]
    if refused:
        assert rest[0].rejected == (1008, "BidiGenerateContent session not found") and not second.resumed
        assert not run.trace.of("renewed")
    else:
        assert second.resumed and second.session == first.session
