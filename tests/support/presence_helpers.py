"""Satellites for the presence and arbitration tests: the real MqttLink, Presence and Arbiter on a real broker, a
recording controller in place of the conversation loop (the MQTT side is what those tests test), and a TCP
relay that can cut one satellite off the broker while the test's observer stays connected.

Run as `python -m tests.support.presence_helpers HOST PORT ID` it is a satellite in a process of its own that
prints "ready" once it is online, for tests that kill it."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from daemon.config import Config
from daemon.events import StateChanged
from daemon.mqtt.arbiter import Arbiter
from daemon.mqtt.link import MqttLink
from daemon.mqtt.presence import Presence
from daemon.mqtt.topics import Topics
from tests.support.broker import Broker


@dataclass
class RecordingController:
    """Records what the commands asked for; `fail` makes every call raise it. Like the daemon, it reports a mute
    back to `presence` as the state it is now in."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    fail: Exception | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    slow: dict[str, float] = field(default_factory=dict)  # call name → how long it takes before it is recorded
    presence: Presence | None = None

    def _record(self, *call: Any) -> None:
        self.calls.append(call)
        self.changed.set()
        if self.fail is not None:
            raise self.fail

    async def _work(self, name: str) -> None:
        if name in self.slow:
            await asyncio.sleep(self.slow[name])

    async def start_conversation(self, text: str | None = None) -> None:
        await self._work("start_conversation")
        self._record("start_conversation", text)

    async def end_conversation(self) -> None:
        await self._work("end_conversation")
        self._record("end_conversation")

    def set_muted(self, muted: bool) -> None:
        self._record("set_muted", muted)
        if self.presence is not None:
            self.presence.notify(StateChanged("muted" if muted else "idle", muted))

    async def reload(self) -> None:
        await self._work("reload")
        self._record("reload")

    async def announce(self, text: str, chime: bool = True, follow_up: bool = False) -> None:
        self._record("announce", text, chime, follow_up)

    def set_volume(self, level: int) -> None:
        self._record("set_volume", level)

    def stop_ringing(self) -> None:
        self._record("stop_ringing")

    def set_barge_in(self, policy: str) -> None:
        self._record("set_barge_in", policy)

    async def refresh(self) -> None:
        self._record("refresh")

    async def wait_for(self, *call: Any, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while call not in self.calls:
                self.changed.clear()
                await self.changed.wait()


def satellite_config(host: str, port: int, sid: str, client_id: str | None = None, **assistant: Any) -> Config:
    return Config.model_validate(
        {
            # Each satellite needs its own client id, or the broker drops one connection for the other.
            "mqtt": {"host": host, "port": port, "client_id": client_id or f"livehome-{sid}", "reconnect_max": "0.3s"},
            "assistant": {"id": sid, **assistant},
            "wake": {"words": ["hey_jarvis", "alexa"]},  # a satellite only takes part in rounds for its own words
        }
    )


@dataclass
class Satellite:
    config: Config
    link: MqttLink
    presence: Presence
    arbiter: Arbiter
    controller: RecordingController

    @property
    def topics(self) -> Topics:
        return self.presence.topics


@contextlib.asynccontextmanager
async def satellite(
    broker: Broker,
    sid: str,
    *,
    port: int | None = None,
    presence: bool = True,
    client_id: str | None = None,
    secret: bytes | None = None,
    **assistant: Any,
) -> AsyncIterator[Satellite]:
    """A connected satellite (through `port` instead of the broker's, e.g. a Relay); with presence=False it
    publishes no availability, so the others do not know it is there."""
    config = satellite_config(broker.host, port or broker.port, sid, client_id, **assistant)
    link = MqttLink(config.mqtt, will=Presence.will(config) if presence else None)
    controller = RecordingController()
    pres = Presence(link, config, controller, secret)
    controller.presence = pres
    arbiter = Arbiter(link, config, report=pres.notify, secret=secret)
    if presence:
        await pres.start()
    await arbiter.start()
    task = asyncio.create_task(link.run(), name=f"mqtt-{sid}")
    try:
        assert await link.wait_connected(10), f"satellite {sid} did not connect"
        if presence:
            await pres.flush(10)
        yield Satellite(config, link, pres, arbiter, controller)
    finally:
        with contextlib.suppress(TimeoutError):
            await pres.stop(timeout=2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Relay:
    """A TCP relay in front of the broker: cut() drops every relayed connection and refuses new ones (a network
    outage for whoever connects through it, while others stay connected); restore() lets them through again."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.open = True

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.broker.host, self.broker.port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._writers -= {writer, up_writer}

    def cut(self) -> None:
        self.open = False
        for w in list(self._writers):
            w.transport.abort()

    def restore(self) -> None:
        self.open = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


async def _main(host: str, port: int, sid: str) -> None:
    """A satellite with presence and arbitration. On stdin, `rss` is answered with its RSS in KiB, `calls` with
    how many commands reached its controller."""
    config = satellite_config(host, port, sid)
    link = MqttLink(config.mqtt, will=Presence.will(config))
    controller = RecordingController()
    presence = Presence(link, config, controller)
    arbiter = Arbiter(link, config, report=presence.notify)
    await presence.start()
    await arbiter.start()
    task = asyncio.create_task(link.run())
    if not await link.wait_connected(10):
        sys.exit("no broker")
    await presence.flush(10)
    print("ready", flush=True)
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        print(len(controller.calls) if line.strip() == b"calls" else _rss_kib(), flush=True)
    await task  # stdin closed: keep running until killed


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
