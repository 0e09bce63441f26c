"""One client WebSocket as the simulator serves it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from .protocol import truncate_reason
from .records import ConnectionInfo, Session
from .usage import TurnUsage
from .vad import EnergyVad

if TYPE_CHECKING:
    from .server import Simulator

log = logging.getLogger("livehome.sim.connection")


class Connection:
    """One WebSocket: its setup, its audio stream and its link to a session."""

    def __init__(self, sim: Simulator, ws: ServerConnection, info: ConnectionInfo) -> None:
        self.sim = sim
        self.ws = ws
        self.info = info
        self.session: Session | None = None
        self.vad = EnergyVad(sim.scenario.settings.vad, info.number)
        self.ready = False
        self.aborted = False
        self.input_transcription = False
        self.output_transcription = False
        self.resumption = False
        self.manual_activity = False
        self.text_mode = False
        self.usage = TurnUsage()  # since this connection's last turnComplete
        self.expiry: asyncio.Task[None] | None = None

    @property
    def number(self) -> int:
        return self.info.number

    @property
    def open(self) -> bool:
        return self.ready and not self.aborted and self.ws.state is State.OPEN

    async def send(self, kind: str, frame: Any, *, record: bool = True, binary: bool = False, **detail: Any) -> bool:
        """Send one JSON message (a binary frame when `binary`, as the service sends setupComplete); False if the
        connection is gone."""
        if self.aborted or self.ws.state is not State.OPEN:
            self.sim._record(self.number, "event", "dropped", frame=kind, why="connection closed")
            return False
        text = json.dumps(frame)
        try:
            await self.ws.send(text.encode() if binary else text)
        except ConnectionClosed:
            self.sim._record(self.number, "event", "dropped", frame=kind, why="connection closed")
            return False
        if record:
            self.sim._record(self.number, "out", kind, **detail)
        return True

    async def refuse(self, code: int, reason: str) -> None:
        """Close as the service does when it will not serve this connection."""
        self.info.rejected = (code, reason)
        log.warning("connection %d refused: %d %s", self.number, code, reason)
        await self.close(code, reason)

    async def close(self, code: int, reason: str) -> None:
        self.sim._record(self.number, "out", "close", code=code, reason=reason)
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(code, truncate_reason(reason))
