"""`livehome demo`: the daemon's whole job, offline, with nothing faked inside the daemon.

A private mosquitto with a zigbee2mqtt-style light on it, the Live simulator over TLS, and a synthesized
utterance ("hey jarvis, turn on the kitchen light") as the microphone; the real daemon runs on the repo's
zigbee2mqtt tool pack: real openWakeWord, the real google-genai SDK, real MQTT. It prints what happens and where
the model's voice went, and exits 0 only if the light was switched and the simulator saw a clean protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tempfile
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TextIO

import aiomqtt

from ..audio.frames import output_seconds
from ..audio.speech import silence, synthesize
from ..loading import load
from ..runtime import Daemon, Options
from ..trace import Trace
from .broker import running_broker
from .server import Simulator

UTTERANCE = "hey jarvis, turn on the kitchen light"
LIGHT = "Kitchen Ceiling"  # the zigbee2mqtt friendly name
KEY = "demo-key-not-secret"
PACK = "zigbee2mqtt"  # the bundled pack, by name

SCENARIO = """
description: the kitchen light, as the model would handle it with the zigbee2mqtt tool pack
turns:
  - name: kitchen light
    on: {speech: true}
    steps:
      - input_transcription: turn on the kitchen light
      - tool_call: {id: light-1, name: set_light, args: {light: kitchen, state: "ON"}}
      - await_tools: [light-1]
      - say: The kitchen light is on.
      - turn_complete
"""


def config(sim: Simulator, port: int, pack: str) -> str:
    return f"""# written by livehome demo
gemini:
  endpoint: {sim.url}
  ca_file: {sim.ca_file}
  api_key_file: gemini-api-key
mqtt: {{host: 127.0.0.1, port: {port}}}
wake:
  words: [{{model: hey_jarvis, threshold: 0.5}}]
conversation: {{idle_timeout: 1.5s}}
tools:
  - include: {pack}
    vars:
      lights: {{kitchen: {LIGHT}}}
    only: [set_light]
"""


def write_wav(path: Path, pcm: bytes, rate: int = 16000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


@contextlib.asynccontextmanager
async def zigbee_light(port: int, seen: list[dict]) -> AsyncIterator[None]:
    """What zigbee2mqtt does for a light: take /set, report the new state on the device topic."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="demo-zigbee2mqtt") as client:
        await client.subscribe("zigbee2mqtt/+/set", qos=1)

        async def serve() -> None:
            async for message in client.messages:
                command = json.loads(message.payload)
                seen.append(command)
                state = {"state": command.get("state", "OFF"), "brightness": 254, "linkquality": 120}
                await client.publish(str(message.topic).removesuffix("/set"), json.dumps(state), qos=1, retain=True)

        task = asyncio.create_task(serve())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


async def demo(workdir: Path | None = None, out: TextIO = sys.stdout) -> int:
    # Absolute: the config written there names the simulator's CA, and a config's paths are relative to itself.
    directory = (workdir or Path(tempfile.mkdtemp(prefix="livehome-demo-"))).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    mic, speaker = directory / "microphone.wav", directory / "speaker.wav"
    write_wav(mic, silence(1.0) + synthesize(UTTERANCE) + silence(3.0))
    (directory / "scenario.yaml").write_text(SCENARIO)
    trace = Trace(out)
    seen: list[dict] = []
    with running_broker(directory) as broker:
        sim = Simulator(
            directory / "scenario.yaml",
            state_dir=directory,
            api_key=KEY,
            transcript_file=directory / "transcript.jsonl",
        )
        async with sim, zigbee_light(broker.port, seen):
            (directory / "config.yaml").write_text(config(sim, broker.port, PACK))
            (directory / "gemini-api-key").write_text(KEY)
            loaded = load(directory / "config.yaml")
            print(f"livehome demo, everything in {directory}", file=out)
            print(
                f"  MQTT:        private mosquitto on 127.0.0.1:{broker.port}, a zigbee2mqtt light '{LIGHT}'", file=out
            )
            print(f"  Gemini Live: the simulator at {sim.url} (TLS, CA {sim.ca_file.name})", file=out)
            print(f'  microphone:  {mic.name}, espeak-ng saying "{UTTERANCE}"', file=out)
            print(f"  tools:       the bundled {PACK} pack (set_light)", file=out)
            daemon = Daemon(loaded, Options(input=str(mic), output=str(speaker)))
            daemon.observers.append(trace)
            code = await daemon.run()
    seconds = output_seconds(speaker.stat().st_size) if speaker.exists() else 0.0
    print(f"model audio: {speaker} ({seconds:.1f} s at 24 kHz, earcons included)", file=out)
    print(f"protocol transcript: {directory / 'transcript.jsonl'}", file=out)
    problems = [str(v) for v in sim.violations]
    if code != 0:
        problems.append(f"the daemon exited with {code}")
    if {"state": "ON"} not in [{k: v for k, v in s.items() if k == "state"} for s in seen]:
        problems.append("the light never received state ON")
    if not sim.finished:
        problems.append(f"the scenario did not finish: {sim.position}")
    if problems:
        print("demo FAILED:\n  " + "\n  ".join(problems), file=out)
        return 1
    print("demo OK: wake word heard, the light switched on over MQTT, the answer spoken", file=out)
    return 0
