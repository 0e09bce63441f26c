"""The assistant on MQTT with the real daemon: presence following a real conversation, MQTT commands driving it,
the last will when `livehome run` is killed, and two satellites hearing the same wake word."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from daemon.audio.speech import silence
from daemon.loading import load
from daemon.runtime import Daemon, Options
from daemon.sim.server import Simulator
from tests.support.broker import Broker
from tests.support.daemonrig import Trace, config_text, running_daemon
from tests.support.livestack import KEY, light_reply
from tests.support.mqttworld import device, world
from tests.support.speech_files import speech, write_wav

ROOT = Path(__file__).resolve().parent.parent
SAT = (
    "assistant: {id: kitchen-sat, room: kitchen, discovery_prefix: homeassistant,"
    " commands: [start, end, mute, unmute, say]}\n"  # say (a text turn) is off unless asked for
)
BASE = "livehome/kitchen-sat"


def wake_wav(path: Path, gain: float = 1.0, tail: float = 3.0) -> Path:
    pcm = np.frombuffer(silence(1.0) + speech("hey jarvis, turn on the kitchen light") + silence(tail), np.int16)
    return write_wav(path, (pcm * gain).astype(np.int16).tobytes())


async def test_presence_follows_a_real_conversation(tmp_path: Path, broker: Broker) -> None:
    mic = wake_wav(tmp_path / "mic.wav")
    async with running_daemon(tmp_path, broker, "lights_on", input=str(mic), extra=SAT) as run:
        assert await asyncio.wait_for(run.task, 60) == 0
    w = run.world
    states = [s.json()["state"] for s in w.on(f"{BASE}/state")]
    assert states[0] == "idle" and states[-1] == "idle"
    for expected in ("listening", "connecting", "conversation", "speaking"):
        assert expected in states, states
    events = [s.json() for s in w.on(f"{BASE}/events")]
    kinds = [e["event_type"] for e in events]
    assert (
        kinds.index("wake") < kinds.index("session_started") < kinds.index("tool_call") < kinds.index("session_ended")
    )
    [tool] = [e for e in events if e["event_type"] == "tool_call"]
    assert (tool["name"], tool["outcome"]) == ("set_light", "success")
    assert tool["args"] == {"light": "kitchen", "state": "ON"}
    [ended] = [e for e in events if e["event_type"] == "session_ended"]
    assert ended["reason"] == "idle" and ended["tool_calls"] == 1
    availability = [s.payload for s in w.on(f"{BASE}/availability")]
    assert availability[0] == b"online" and availability[-1] == b"offline"  # said goodbye on a clean stop
    configs = [s for s in w.seen if s.topic.startswith("homeassistant/") and s.topic.endswith("/config")]
    assert {s.topic.split("/")[1] for s in configs} >= {"sensor", "switch", "button"}
    assert all(json.loads(s.payload)["availability_topic"] == f"{BASE}/availability" for s in configs)


async def test_mqtt_commands_drive_the_daemon(tmp_path: Path, broker: Broker) -> None:
    silent = tmp_path / "quiet.wav"
    write_wav(silent, silence(30.0))
    async with (
        running_daemon(tmp_path, broker, "lights_on", input=str(silent), extra=SAT) as run,
        world(broker) as w,
    ):
        await run.until(lambda: run.trace.of("ready"))
        command = f"{BASE}/command"
        await w.client.publish(command, json.dumps({"command": "launch"}), qos=1)
        rejected = await w.wait_for(
            lambda s: s.topic == f"{BASE}/events" and s.json()["event_type"] == "command_rejected"
        )
        assert "launch" in rejected.json()["message"]
        await w.client.publish(command, json.dumps({"command": "say", "text": "turn on the kitchen light"}), qos=1)
        await w.wait_for(lambda s: s.topic == "z2m/kitchen_ceiling/set", 20)  # through Gemini and the tool layer
        await run.until(lambda: run.trace.of("session_ended"))
        assert [d["trigger"] for d in run.trace.of("session_started")] == ["command"]
        await w.client.publish(command, "mute", qos=1)
        await w.wait_for(lambda s: s.topic == f"{BASE}/state" and s.json()["state"] == "muted", 20)
        assert run.daemon.muted
        await w.client.publish(command, json.dumps({"command": "unmute"}), qos=1)
        await w.wait_for(
            lambda s: s.topic == f"{BASE}/state" and s.json()["state"] == "idle" and not s.json()["muted"], 20
        )
        run.sim.assert_clean()


async def test_killed_daemon_shows_offline_through_its_last_will(tmp_path: Path, broker: Broker) -> None:
    async with Simulator("lights_on", state_dir=tmp_path / "sim", api_key=KEY) as sim:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(config_text(sim, broker, SAT))
        env = {**os.environ, "GEMINI_API_KEY": KEY}
        async with world(broker) as w:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "daemon", "run", "--config", str(cfg), "--input", "-", "--output", "none",
                cwd=ROOT, env=env, stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            try:
                await w.wait_for(lambda s: s.topic == f"{BASE}/availability" and s.payload == b"online", 60)
                proc.kill()  # SIGKILL: no goodbye
                await proc.wait()
                await w.wait_for(lambda s: s.topic == f"{BASE}/availability" and s.payload == b"offline", 15)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()


async def test_two_satellites_hearing_the_same_wake_word_open_one_session(tmp_path: Path, broker: Broker) -> None:
    near, far = wake_wav(tmp_path / "near.wav"), wake_wav(tmp_path / "far.wav", gain=0.5)
    os.environ["GEMINI_API_KEY"] = KEY
    async with Simulator("lights_on", state_dir=tmp_path / "sim", api_key=KEY) as sim:
        daemons: list[Daemon] = []
        traces: list[Trace] = []
        for name, mic in (("hall", far), ("kitchen", near)):
            path = tmp_path / f"{name}.yaml"
            path.write_text(config_text(sim, broker, f"assistant: {{id: {name}, room: {name}}}\n"))
            daemon = Daemon(load(path), Options(input=str(mic), output="none"))
            traces.append(Trace())
            daemon.observers.append(traces[-1])
            daemons.append(daemon)
        async with world(broker) as w, device(broker, "z2m/+/set", light_reply):
            tasks = [asyncio.create_task(d.run()) for d in daemons]
            try:
                assert await asyncio.wait_for(asyncio.gather(*tasks), 60) == [0, 0]
            finally:
                for d in daemons:
                    d.stop()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
    os.environ.pop("GEMINI_API_KEY", None)
    hall, kitchen = traces
    assert hall.of("wake") and kitchen.of("wake")  # both heard it
    assert hall.of("wake")[0]["score"] < kitchen.of("wake")[0]["score"]
    assert [len(t.of("session_started")) for t in traces] == [0, 1]  # exactly one session: the best score
    assert len(sim.connections) == 1
    stood_down = [s.json() for s in w.on("livehome/hall/events") if s.json()["event_type"] == "stood_down"]
    assert stood_down and stood_down[0]["winner"] == "kitchen"
