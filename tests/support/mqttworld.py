"""The outside world of a test, on a real broker: an observer that sees every message, devices that answer,
and a fence that proves "nothing else was published" without sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt

from daemon.events import Event
from daemon.loading import Loaded, load
from daemon.mqtt.link import MqttLink
from daemon.tools.engine import Engine
from tests.support.broker import Broker


@dataclass
class Seen:
    topic: str
    payload: bytes
    retain: bool
    t: float = 0.0  # time.monotonic() on arrival

    def json(self) -> Any:
        return json.loads(self.payload)


class World:
    """Subscribed to '#': every message any client publishes, in arrival order."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.seen: list[Seen] = []
        self._changed = asyncio.Condition()

    async def _pump(self) -> None:
        async for m in self.client.messages:
            payload = m.payload if isinstance(m.payload, bytes | bytearray) else str(m.payload).encode()
            async with self._changed:
                self.seen.append(Seen(str(m.topic), bytes(payload), bool(m.retain), time.monotonic()))
                self._changed.notify_all()

    async def wait_for(self, pred: Callable[[Seen], bool], timeout: float = 5.0) -> Seen:
        async with asyncio.timeout(timeout), self._changed:
            while True:
                for s in self.seen:
                    if pred(s):
                        return s
                await self._changed.wait()

    def on(self, topic: str) -> list[Seen]:
        return [s for s in self.seen if s.topic == topic]

    def topics(self, exclude_prefix: str = "fence/") -> list[str]:
        """What was published, without the fences (ours, and each MqttLink's own after it connects)."""
        return [s.topic for s in self.seen if not s.topic.startswith(exclude_prefix) and not s.topic.endswith("/fence")]

    async def fence(self, link: MqttLink) -> None:
        """Publish a marker through the daemon's own connection and wait until it arrives here. The broker keeps
        one client's messages in order, so anything that link published earlier has arrived by then."""
        marker = f"fence/{uuid.uuid4().hex}"
        await link.publish(marker, b"", qos=1)
        await self.wait_for(lambda s: s.topic == marker)


@contextlib.asynccontextmanager
async def world(broker: Broker) -> AsyncIterator[World]:
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"world-{uuid.uuid4().hex[:6]}") as client:
        await client.subscribe("#", qos=1)
        w = World(client)
        task = asyncio.create_task(w._pump())
        try:
            yield w
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


@contextlib.asynccontextmanager
async def device(
    broker: Broker,
    set_filter: str,
    reply: Callable[[str, Any], tuple[str, Any] | None],
    delays: dict[str, float] | None = None,
) -> AsyncIterator[None]:
    """A fake device on the real broker: for each message on set_filter, reply(topic, payload) gives the state
    to publish (topic, JSON-able or str) or None to stay silent; `delays` holds replies to some set topics back
    (a slow device), without holding up the others."""
    async with aiomqtt.Client(broker.host, broker.port, identifier=f"dev-{uuid.uuid4().hex[:6]}") as client:
        await client.subscribe(set_filter, qos=1)

        async def serve() -> None:
            async for m in client.messages:
                raw = m.payload.decode() if isinstance(m.payload, bytes | bytearray) else str(m.payload)
                try:
                    payload: Any = json.loads(raw)
                except ValueError:
                    payload = raw
                answer = reply(str(m.topic), payload)
                if answer is not None:
                    topic, state = answer
                    body = state if isinstance(state, str) else json.dumps(state)
                    later = (delays or {}).get(str(m.topic), 0.0)
                    if later:
                        tasks.add(asyncio.create_task(publish_later(topic, body, later)))
                    else:
                        await client.publish(topic, body, qos=1)

        async def publish_later(topic: str, body: str, delay: float) -> None:
            await asyncio.sleep(delay)
            await client.publish(topic, body, qos=1)

        tasks: set[asyncio.Task[None]] = set()

        task = asyncio.create_task(serve())
        try:
            yield
        finally:
            for t in (task, *tasks):
                t.cancel()
            for t in (task, *tasks):
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await t


@dataclass
class Rig:
    loaded: Loaded
    link: MqttLink
    engine: Engine
    events: list[Event]


def write_config(tmp_path: Path, broker: Broker, body: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"mqtt:\n  host: {broker.host}\n  port: {broker.port}\n  reconnect_max: 0.5s\n{body}")
    return path


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, broker: Broker, body: str) -> AsyncIterator[Rig]:
    """The daemon's tool layer for real: config loaded from YAML, MQTT link connected, engine ready."""
    loaded = load(write_config(tmp_path, broker, body))
    link = MqttLink(loaded.config.mqtt)
    link.watch(loaded.registry.watched)
    task = asyncio.create_task(link.run())
    events: list[Event] = []
    try:
        assert await link.wait_connected(10), "the link did not connect"
        yield Rig(loaded, link, Engine(loaded.registry, link, events.append), events)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
