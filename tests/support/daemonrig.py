"""The whole daemon in a test: real openWakeWord on espeak-ng speech, the real SDK against the Live simulator,
a real mosquitto with a fake light, and the daemon's own audio backends."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.events import Event
from daemon.loading import load
from daemon.runtime import Daemon, Options
from daemon.sim.server import Simulator
from tests.support.broker import Broker
from tests.support.livestack import KEY, TOOLS, light_reply
from tests.support.mqttworld import World, device, world
from tests.support.waiting import eventually


@dataclass
class Trace:
    """Everything the daemon reported, in order, as (kind, fields)."""

    events: list[Event] = field(default_factory=list)

    def notify(self, event: Event) -> None:
        self.events.append(event)

    @property
    def daemon(self) -> list[tuple[str, dict[str, Any]]]:
        return [(e.kind, e.fields()) for e in self.events]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e.fields() for e in self.events if e.kind == kind]

    session_of = of


@dataclass
class Running:
    daemon: Daemon
    sim: Simulator
    world: World
    trace: Trace
    task: asyncio.Task[int]
    config_path: Path

    async def until(self, pred: Any, timeout: float = 30.0) -> None:
        await eventually(pred, timeout)


def config_text(
    sim: Simulator, broker: Broker, extra: str = "", conversation: str = "idle_timeout: 1s", gemini: str = ""
) -> str:
    return (
        f"gemini:\n  endpoint: {sim.url}\n  ca_file: {sim.ca_file}\n{gemini}"
        f"mqtt: {{host: {broker.host}, port: {broker.port}}}\n"
        f"conversation: {{{conversation}}}\n{extra}{TOOLS}"
    )


@contextlib.asynccontextmanager
async def running_daemon(
    tmp_path: Path,
    broker: Broker,
    scenario: str | Path,
    *,
    input: str | None,
    output: str | None = "played.wav",
    extra: str = "",
    conversation: str = "idle_timeout: 1s",
    delays: dict[str, float] | None = None,
    gemini: str = "",
) -> AsyncIterator[Running]:
    os.environ["GEMINI_API_KEY"] = KEY
    sim = Simulator(scenario, state_dir=tmp_path / "sim", api_key=KEY)
    await sim.start()
    try:
        path = tmp_path / "config.yaml"
        path.write_text(config_text(sim, broker, extra, conversation, gemini))
        trace = Trace()
        out = str(tmp_path / output) if output and output.endswith(".wav") else output  # None: the config's
        daemon = Daemon(load(path), Options(input=input, output=out))
        daemon.observers.append(trace)
        async with world(broker) as w, device(broker, "z2m/+/set", light_reply, delays):
            task = asyncio.create_task(daemon.run())
            try:
                yield Running(daemon, sim, w, trace, task, path)
            finally:
                daemon.stop()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, 30)
    finally:
        os.environ.pop("GEMINI_API_KEY", None)
        await sim.stop()
