"""What passes between the live layer and the tool layer: calls in, answers and cancellation reports out.
Neither layer's transport appears here: no Gemini types, no MQTT."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Tools the daemon declares and answers itself; a configured tool may not take these names.
END_CONVERSATION = "end_conversation"
BUILTIN_TOOLS = ("set_timer", "list_timers", "cancel_timer", "set_volume")  # daemon.builtins
RESERVED_TOOL_NAMES = frozenset({END_CONVERSATION, *BUILTIN_TOOLS})


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    args: dict[str, Any]
    spoken: bool = True  # False: the user's last words were a text turn (MQTT, `livehome say`), not speech


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
