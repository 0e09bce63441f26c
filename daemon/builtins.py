"""The daemon's own tools, answered in-process: timers (set, list, cancel) and the volume. They are declared to the
model like any YAML tool, run by the tool engine (ids, answers, cancellation), and never publish anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config import Config
from .timers import Timers, when
from .tools.engine import LocalTool

STEP = 10  # "louder" / "quieter"


def builtin_tools(
    config: Config, timers: Timers, volume: Callable[[], int], set_volume: Callable[[int], None]
) -> list[LocalTool]:
    """The daemon's own tools this config turns on (`builtins:`), as `run` declares them."""
    out = timer_tools(timers) if config.builtins.timers else []
    if config.builtins.volume:
        out.append(volume_tool(volume, set_volume))
    return out


def timer_tools(timers: Timers) -> list[LocalTool]:
    async def set_timer(args: dict[str, Any]) -> dict[str, Any]:
        try:
            ends = when(args.get("seconds"), args.get("at"))
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        try:
            timer = timers.add(args.get("label") or "timer", ends)
        except ValueError as exc:
            return {"ok": False, "error": str(exc)}
        return {"status": "set", "timer": timer.view()}

    async def list_timers(args: dict[str, Any]) -> dict[str, Any]:
        return {"status": "read", "timers": [t.view() for t in timers.list()]}

    async def cancel_timer(args: dict[str, Any]) -> dict[str, Any]:
        which = args.get("timer")
        gone = timers.cancel(None if which in (None, "all") else which)
        if not gone:
            names = ", ".join(f"{t.label} ({t.id})" for t in timers.list()) or "none"
            return {"ok": False, "error": f"no timer {which!r}; running: {names}"}
        return {"status": "cancelled", "timers": [t.view() for t in gone]}

    label = {"type": "string", "maxLength": 100, "description": "What it is for, e.g. pasta (optional)."}
    return [
        LocalTool(
            "set_timer",
            "Set a timer for a number of seconds, or an alarm at a clock time (HH:MM, 24 h). It rings when due, "
            "even after this conversation has ended.",
            {"type": "object", "additionalProperties": False, "properties": {
                "seconds": {"type": "integer", "minimum": 1, "maximum": 7 * 24 * 3600,
                            "description": "How long from now, in seconds (10 minutes is 600)."},
                "at": {"type": "string", "pattern": r"^\d{1,2}:\d{2}$", "description": "Clock time, e.g. 07:30."},
                "label": label}},
            set_timer,
        ),
        LocalTool("list_timers", "The timers that are running, with the time each has left.",
                  {"type": "object", "additionalProperties": False, "properties": {}}, list_timers),
        LocalTool(
            "cancel_timer", "Cancel a timer by its label or id, or all of them (timer: all).",
            {"type": "object", "additionalProperties": False, "required": ["timer"],
             "properties": {"timer": {"type": "string", "maxLength": 100}}},
            cancel_timer,
        ),
    ]  # fmt: skip


def volume_tool(get: Callable[[], int], set_: Callable[[int], None]) -> LocalTool:
    async def set_volume(args: dict[str, Any]) -> dict[str, Any]:
        level, change = args.get("level"), args.get("change")
        if (level is None) == (change is None):
            return {"ok": False, "error": "give either level (0-100) or change (louder or quieter)"}
        new = level if level is not None else get() + (STEP if change == "louder" else -STEP)
        set_(max(0, min(100, int(new))))
        return {"status": "set", "volume": get()}

    return LocalTool(
        "set_volume",
        "Set the speaker's volume: a level in percent, or a step louder or quieter.",
        {"type": "object", "additionalProperties": False, "properties": {
            "level": {"type": "integer", "minimum": 0, "maximum": 100},
            "change": {"type": "string", "enum": ["louder", "quieter"]}}},
        set_volume,
    )  # fmt: skip
