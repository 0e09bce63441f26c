"""The tool layer running: an MQTT link (connecting and reconnecting in the background) and the engine on it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from .calls import EngineEvent
from .config import Loaded
from .mqtt import MqttLink, Will
from .tools.engine import Engine


@contextlib.asynccontextmanager
async def tool_stack(
    loaded: Loaded,
    observer: Callable[[EngineEvent], None] | None = None,
    will: Will | None = None,
    connect_wait: float = 0.0,
) -> AsyncIterator[tuple[MqttLink, Engine]]:
    """Start the link; wait up to `connect_wait` for the broker (calls fail fast and clearly until it is up)."""
    link = MqttLink(loaded.config.mqtt, will=will)
    link.watch(loaded.registry.watched)
    task = asyncio.create_task(link.run(), name="mqtt")
    try:
        if connect_wait:
            await link.wait_connected(connect_wait)
        yield link, Engine(loaded.registry, link, observer)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
