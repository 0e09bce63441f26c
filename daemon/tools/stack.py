"""The tool layer assembled: an MQTT link watching every state topic the tools read, and the engine on it.

The one place they are put together, for the daemon, `livehome call` and `livehome say` alike."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from ..config import Mqtt
from ..events import Emit
from ..logs import logger
from ..mqtt.link import MqttLink, Will
from .discover import Built, Discover
from .engine import Engine
from .registry import Registry
from .snapshot import Snapshots, merged

log = logger(__name__)


def tool_stack(
    registry: Registry, settings: Mqtt, observer: Emit | None = None, will: Will | None = None
) -> tuple[MqttLink, Engine]:
    """A link (not yet running: `link.run()` connects and reconnects) and the engine that publishes through it."""
    link = MqttLink(settings, will=will)
    link.watch(registry.watched)
    return link, Engine(registry, link, observer)


class Discovered:
    """The tools a running stack makes from the broker's discovery data (the config's `discover:` sources).
    Made before the link runs, so the retained data is in when the link says it has settled."""

    def __init__(self, sources: Sequence[Discover], link: MqttLink, engine: Engine) -> None:
        self.snapshots = Snapshots(sources, link)
        self.static = engine.registry
        self.link = link
        self.engine = engine

    def take(self) -> Built:
        """Swap in the tools from the data on hand now: the only way the discovered topic set changes."""
        tools, built = self.snapshots.take()
        old = set(self.engine.registry.topics)
        self.engine.registry = merged(self.static, tools)
        self.link.watch(self.engine.registry.watched)
        new = set(self.engine.registry.topics)
        log.info(
            "discovered %d devices: %s%s", built.devices, ", ".join(t.name for t in tools) or "no tools",
            f" ({len(new - old)} topics added, {len(old - new)} removed)" if old != new else "",
        )  # fmt: skip
        for line in built.left_out:
            log.info("not made reachable: %s", line)
        return built

    async def first(self, timeout: float | None = None) -> Built | None:
        """The first snapshot, once the broker has handed over its retained messages (None if it did not in time)."""
        if not await self.link.wait_settled(timeout if timeout is not None else 1e9):
            return None
        return self.take()


@contextlib.asynccontextmanager
async def running_tools(
    registry: Registry,
    settings: Mqtt,
    observer: Emit | None = None,
    connect_wait: float = 0.0,
    sources: Sequence[Discover] = (),
) -> AsyncIterator[tuple[MqttLink, Engine]]:
    """The stack with its link running; waits up to `connect_wait` for the broker (calls fail fast and clearly
    until it is up), and for the discovered tools when there are sources."""
    link, engine = tool_stack(registry, settings, observer)
    discovered = Discovered(sources, link, engine) if sources else None
    async with _running(link):
        if connect_wait:
            await link.wait_connected(connect_wait)
        if discovered is not None:
            await discovered.first(max(connect_wait, 1.0))
        yield link, engine


@contextlib.asynccontextmanager
async def _running(link: MqttLink) -> AsyncIterator[None]:
    task = asyncio.create_task(link.run(), name="mqtt")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class BrokerUnreachable(Exception):
    """The broker did not answer in time, so there is no discovery data to read."""


async def discover_once(
    registry: Registry, settings: Mqtt, sources: Sequence[Discover], wait: float
) -> tuple[Registry, Built]:
    """The config's tools with those the broker's discovery data makes now (for `livehome discover`, `tools`,
    `acl`); raises BrokerUnreachable when it cannot tell."""
    link, engine = tool_stack(registry, settings)
    discovered = Discovered(sources, link, engine)
    async with _running(link):
        built = await discovered.first(wait) if await link.wait_connected(wait) else None
    if built is None:
        raise BrokerUnreachable(f"MQTT broker {link.where} not reachable within {wait:g}s ({link.last_error})")
    return engine.registry, built
