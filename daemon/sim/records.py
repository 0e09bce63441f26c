"""What the simulator records for tests to inspect, and the session state those records refer to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .usage import Tokens


@dataclass(frozen=True)
class Entry:
    """One line of the protocol transcript. `conn` is the connection number (0: no connection); `t` is
    time.monotonic()."""

    conn: int
    direction: Literal["in", "out", "event"]
    kind: str
    detail: dict[str, Any]
    t: float

    def to_json(self) -> dict[str, Any]:
        return {"conn": self.conn, "dir": self.direction, "kind": self.kind, "t": round(self.t, 6), **self.detail}


@dataclass(frozen=True)
class Violation:
    """Something the client did that the service would not accept, or that a test should not."""

    conn: int
    message: str
    t: float

    def __str__(self) -> str:
        return f"connection {self.conn}: {self.message}" if self.conn else self.message


@dataclass(frozen=True)
class ToolResponseRecord:
    """One functionResponse as it came back: accepted, or the reason it was not."""

    id: str | None
    name: str | None
    response: Any
    scheduling: str | None
    conn: int
    t: float
    accepted: bool
    problem: str | None
    latency: float | None  # since the call was (last) sent


@dataclass
class ConnectionInfo:
    """One WebSocket from open to close, for tests to inspect."""

    number: int
    path: str
    api_version: str
    opened: float
    model: str | None = None
    session: int | None = None
    resumed: bool = False
    handle: str | None = None
    setup: dict[str, Any] | None = None
    declared_tools: tuple[str, ...] = ()
    tool_behaviors: dict[str, str | None] = field(default_factory=dict)  # declared behavior per tool, or None
    rejected: tuple[int, str] | None = None
    closed: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    closed_by: Literal["client", "server", "abort", "network"] | None = None
    audio_bytes: int = 0
    audio_seconds: float = 0.0
    first_audio: float | None = None  # monotonic time the first audio byte arrived
    tokens: Tokens = field(default_factory=Tokens)  # what this connection's usageMetadata frames added up to


@dataclass
class Call:
    """A tool call the scenario sent, and what became of it."""

    id: str
    name: str
    args: dict[str, Any]
    sent: float
    conn: int
    times_sent: int = 1
    state: Literal["outstanding", "answered", "cancelled"] = "outstanding"
    changed: float | None = None


@dataclass
class Session:
    """A Live session as the service keeps it: it outlives its connections when a client resumes."""

    number: int
    calls: dict[str, Call] = field(default_factory=dict)
    latest_handle: str | None = None

    def outstanding(self) -> list[str]:
        """Ids of calls issued and neither answered nor cancelled."""
        return [c.id for c in self.calls.values() if c.state == "outstanding"]
