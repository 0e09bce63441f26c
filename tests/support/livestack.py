"""The live layer for real in tests: the Live simulator over TLS, the real google-genai SDK, the tool layer on a
real mosquitto with fake devices, and a WAV speaker paced like a sound card."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.audio.outputs import WavSink
from daemon.events import Event
from daemon.live.session import LiveSession
from daemon.loading import load
from daemon.mqtt.link import MqttLink
from daemon.sim.server import Simulator
from daemon.tools.engine import Engine
from daemon.tools.stack import running_tools
from tests.support.broker import Broker
from tests.support.mqttworld import World, device, world

TOOLS = """
tools:
  - name: set_light
    description: Switch a light on or off.
    parameters:
      light: {type: string, map: {kitchen: kitchen_ceiling, hall: hall_lamp, bedroom: bedroom_lamp}}
      state: {type: string, enum: [ON, OFF]}
    required: [light, state]
    publish: {topic: "z2m/{light}/set", payload: {state: "{state}"}}
    confirm: {topic: "z2m/{light}", expect: {state: "{state}"}, timeout: 5s}
    undo: {publish: {topic: "z2m/{light}/set", payload: {state: "{previous.state|OFF}"}}}
  - name: run_scene
    description: Run a scene; the projector takes a while to confirm.
    parameters: {scene: {type: string, enum: [movie, dinner]}}
    required: [scene]
    publish: {topic: "scenes/{scene}/run", payload: {run: true}}
    confirm: {topic: "scenes/{scene}/state", expect: {ready: true}, timeout: 60s}
    undo: {publish: {topic: "scenes/{scene}/run", payload: {run: false}}}
"""

KEY = "sim-key-0123456789"

CANCEL_AT_ONCE = """
description: the service cancels a call in the same breath as it makes it
turns:
  - on: {text: true}
    steps:
      - tool_call: {id: scene-2, name: run_scene, args: {scene: dinner}}
      - cancel_tools: [scene-2]
      - say: Never mind.
      - turn_complete
"""


def light_reply(topic: str, payload: Any) -> tuple[str, Any]:
    return topic.removesuffix("/set"), {"state": payload["state"], "brightness": 200}


@dataclass
class Live:
    sim: Simulator
    session: LiveSession
    engine: Engine
    link: MqttLink
    world: World
    speaker: WavSink
    config_path: Path
    events: list[Event] = field(default_factory=list)  # the session's and the tool layer's, as the daemon sees them

    def notify(self, event: Event) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e.fields() for e in self.events if e.kind == kind]

    async def event(self, kind: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for d in self.of(kind):
                    if all(d.get(k) == v for k, v in match.items()):
                        return d
                await asyncio.sleep(0.01)


def write_config(path: Path, sim: Simulator, broker: Broker, conversation: str, tools: str, gemini: str = "") -> Path:
    """`gemini` adds lines (indented two spaces) to the gemini section, e.g. "  model: gemini-3.1-flash-live\n"."""
    path.write_text(
        f"gemini:\n  endpoint: {sim.url}\n  ca_file: {sim.ca_file}\n  reconnect_attempts: 3\n{gemini}"
        f"mqtt: {{host: {broker.host}, port: {broker.port}}}\n"
        f"conversation: {{{conversation}}}\n{tools}"
    )
    return path


@contextlib.asynccontextmanager
async def live(
    tmp_path: Path,
    broker: Broker,
    scenario: str | Path,
    *,
    vars: dict[str, Any] | None = None,
    conversation: str = "idle_timeout: 1.5s",
    delays: dict[str, float] | None = None,
    key: str = KEY,
    tools: str = TOOLS,
    gemini: str = "",
) -> AsyncIterator[Live]:
    sim = Simulator(scenario, state_dir=tmp_path / "sim", api_key=KEY, vars=vars)
    await sim.start()
    speaker = WavSink(tmp_path / "played.wav", paced=True)
    await speaker.start()
    try:
        loaded = load(write_config(tmp_path / "config.yaml", sim, broker, conversation, tools, gemini))
        lights = device(broker, "z2m/+/set", light_reply, delays)
        events: list[Event] = []
        stack = running_tools(loaded.registry, loaded.config.mqtt, events.append, connect_wait=10)
        async with world(broker) as w, lights, stack as (link, engine):
            rig = Live(sim, None, engine, link, w, speaker, tmp_path / "config.yaml", events)  # type: ignore[arg-type]
            rig.session = LiveSession(
                loaded.config.gemini,
                loaded.config.conversation,
                engine,
                loaded.registry.declarations(),
                key=key,
                speaker=speaker,
                observer=rig.notify,
            )
            yield rig
    finally:
        await speaker.aclose()
        await sim.stop()
