"""What passes between the live layer and the tool layer: calls in, answers and cancellation reports out.
Neither layer's transport appears here: no Gemini types, no MQTT."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    args: dict[str, Any]


@dataclass
class ToolResponse:
    id: str
    name: str
    response: dict[str, Any]
    scheduling: str | None  # None for BLOCKING tools: the model waits for them anyway
    outcome: str  # success | error | timeout
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CancelReport:
    id: str
    # not_found | already_answered | already_cancelled | not_published | undone | no_undo | undo_skipped | undo_failed
    result: str
    detail: str = ""
