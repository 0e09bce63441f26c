"""The tool layer assembled: an MQTT link watching every state topic the tools read, and the engine on it.

The one place they are put together, for the daemon, `livehome call` and `livehome say` alike."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ..config import Mqtt
from ..events import Emit
from ..mqtt.link import MqttLink, Will
from .engine import Engine
from .registry import Registry


def tool_stack(
    registry: Registry, settings: Mqtt, observer: Emit | None = None, will: Will | None = None
) -> tuple[MqttLink, Engine]:
    """A link (not yet running: `link.run()` connects and reconnects) and the engine that publishes through it."""
    link = MqttLink(settings, will=will)
    link.watch(registry.watched)
    return link, Engine(registry, link, observer)


@contextlib.asynccontextmanager
async def running_tools(
    registry: Registry, settings: Mqtt, observer: Emit | None = None, connect_wait: float = 0.0
) -> AsyncIterator[tuple[MqttLink, Engine]]:
    """The stack with its link running; waits up to `connect_wait` for the broker (calls fail fast and clearly
    until it is up)."""
    link, engine = tool_stack(registry, settings, observer)
    task = asyncio.create_task(link.run(), name="mqtt")
    try:
        if connect_wait:
            await link.wait_connected(connect_wait)
        yield link, engine
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
