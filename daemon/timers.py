"""Timers and alarms that live in the daemon, not in a conversation: they outlast it, and a restart, in the state
directory. A timer that is due fires through a callback (the daemon rings, then announces it). Times are wall
clock (an alarm at 07:30 means the clock's 07:30), kept as epoch seconds."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .logs import logger
from .state import StateFile

log = logger(__name__)

MAX_TIMERS = 32
MAX_SECONDS = 7 * 24 * 3600
_CLOCK = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*$")


@dataclass
class Timer:
    id: str
    label: str
    ends_at: float  # epoch seconds
    set_at: float

    def view(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        ends = datetime.datetime.fromtimestamp(self.ends_at).astimezone()
        return {"id": self.id, "label": self.label, "ends_at": ends.isoformat(timespec="seconds"),
                "seconds_left": max(0, round(self.ends_at - now))}  # fmt: skip


def when(seconds: float | None, at: str | None, now: float | None = None) -> float:
    """The epoch time a timer ends: in `seconds`, or at the next `HH:MM` on the clock. ValueError names what is
    wrong, for the model to hear."""
    now = time.time() if now is None else now
    if (seconds is None) == (at is None):
        raise ValueError("give either seconds (a timer) or at (a clock time, HH:MM), not both or neither")
    if seconds is not None:
        if not 0 < seconds <= MAX_SECONDS:
            raise ValueError(f"seconds must be between 1 and {MAX_SECONDS}")
        return now + seconds
    match = _CLOCK.match(at or "")
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ValueError(f"at must be a clock time such as 07:30, not {at!r}")
    local = datetime.datetime.fromtimestamp(now).astimezone()
    target = local.replace(hour=int(match.group(1)), minute=int(match.group(2)), second=0, microsecond=0)
    if target.timestamp() <= now:
        target += datetime.timedelta(days=1)
    return target.timestamp()


class Timers:
    def __init__(self, directory: Path, on_fire: Callable[[Timer], Awaitable[None]],
                 on_change: Callable[[list[Timer]], None]) -> None:  # fmt: skip
        self.file = StateFile(directory / "timers.json")
        self.on_fire = on_fire
        self.on_change = on_change
        self._timers: dict[str, Timer] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        for item in self.file.load().get("timers", [])[:MAX_TIMERS]:
            with contextlib.suppress(TypeError, KeyError, ValueError):
                timer = Timer(str(item["id"]), str(item["label"])[:100], float(item["ends_at"]), float(item["set_at"]))
                self._timers[timer.id] = timer

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="timers")
            self.on_change(self.list())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def list(self) -> list[Timer]:
        return sorted(self._timers.values(), key=lambda t: t.ends_at)

    def add(self, label: str, ends_at: float) -> Timer:
        if len(self._timers) >= MAX_TIMERS:
            raise ValueError(f"there are already {MAX_TIMERS} timers; cancel one first")
        timer = Timer(secrets.token_hex(3), label.strip()[:100] or "timer", ends_at, time.time())
        self._timers[timer.id] = timer
        self._saved()
        log.info("timer %s (%s) set for %s", timer.id, timer.label, timer.view()["ends_at"])
        return timer

    def cancel(self, which: str | None) -> list[Timer]:
        """By id or label; None cancels all. Returns what was cancelled."""
        gone = [t for t in self._timers.values() if which is None or which in (t.id, t.label)]
        for t in gone:
            del self._timers[t.id]
        if gone:
            self._saved()
        return gone

    def _saved(self) -> None:
        self.file.save({"timers": [asdict(t) for t in self._timers.values()]})
        self._changed.set()
        self.on_change(self.list())

    async def _run(self) -> None:
        """Sleep until the next timer is due (or the set changes), fire it, repeat. A timer that came due while
        the daemon was off fires at once after the start."""
        while True:
            self._changed.clear()
            upcoming = self.list()
            timeout = max(0.0, upcoming[0].ends_at - time.time()) if upcoming else None
            if timeout is None or timeout > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout)
                continue
            due = upcoming[0]
            del self._timers[due.id]
            self._saved()
            log.info("timer %s (%s) is done", due.id, due.label)
            try:
                await self.on_fire(due)
            except Exception:
                log.exception("firing timer %s failed", due.id)
