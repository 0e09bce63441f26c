"""Hooks: a local command for each of the daemon's moments (wake, listening, connecting, speaking, tool_call,
error, muted, timer_ringing, idle), for LEDs, a display, anything on the Pi. Run without a shell, the event's
fields in LIVEHOME_* environment variables, killed after their timeout, never on the event loop's time: a slow
or failing hook is logged and changes nothing else. While one hook for an event still runs, that event's next
one is skipped (a stuck LED script must not pile up processes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any

from .config import Hook
from .events import Event, SessionEnded, StateChanged, TimerRinging, ToolFinished, WakeHeard
from .logs import log_every, logger

log = logger(__name__)

# The daemon's states that are hook events of their own name.
_STATE_HOOKS = ("listening", "connecting", "speaking", "idle", "muted")


def hook_event(event: Event) -> tuple[str, dict[str, Any]] | None:
    """The hook an event stands for, with the fields its command gets."""
    match event:
        case StateChanged(state=state) if state in _STATE_HOOKS:
            return state, event.fields()
        case WakeHeard():
            return "wake", event.fields()
        case ToolFinished():
            return "tool_call", {k: v for k, v in event.fields().items() if k != "published"}
        case SessionEnded() if event.failed:
            return "error", {"reason": event.reason, "detail": event.detail}
        case TimerRinging():
            return "timer_ringing", event.fields()
    return None


def environment(kind: str, fields: dict[str, Any]) -> dict[str, str]:
    env = {**os.environ, "LIVEHOME_EVENT": kind}
    for key, value in fields.items():
        text = value if isinstance(value, str) else ("" if value is None else str(value).lower()
                                                       if isinstance(value, bool) else str(value))
        env[f"LIVEHOME_{key.upper()}"] = text[:1000]
    return env


class Hooks:
    """An events.Observer that runs the configured hooks."""

    def __init__(self, hooks: dict[str, Hook]) -> None:
        self.hooks = hooks
        self._running: dict[str, asyncio.Task[None]] = {}

    def notify(self, event: Event) -> None:
        found = hook_event(event)
        if found is None or found[0] not in self.hooks:
            return
        kind, fields = found
        busy = self._running.get(kind)
        if busy is not None and not busy.done():
            log_every(log, f"hook-busy:{kind}", 60.0, logging.WARNING,
                      "hook %s still running: this %s event is skipped", kind, kind)
            return
        self._running[kind] = asyncio.get_running_loop().create_task(self._run(kind, fields), name=f"hook-{kind}")

    async def _run(self, kind: str, fields: dict[str, Any]) -> None:
        hook = self.hooks[kind]
        try:
            proc = await asyncio.create_subprocess_exec(
                *hook.command, env=environment(kind, fields), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            log_every(log, f"hook-start:{kind}", 60.0, logging.ERROR, "hook %s cannot start %s: %s", kind,
                      hook.command[0], exc.strerror or exc)
            return
        try:
            _, err = await asyncio.wait_for(proc.communicate(), hook.timeout)
        except asyncio.CancelledError:  # the daemon stops: no hook outlives it
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            log_every(log, f"hook-timeout:{kind}", 60.0, logging.WARNING, "hook %s killed after %gs", kind,
                      hook.timeout)
            return
        if proc.returncode:
            message = (err or b"").decode(errors="replace").strip()[-300:]
            log_every(log, f"hook-fail:{kind}", 60.0, logging.WARNING, "hook %s exited with %d: %s", kind,
                      proc.returncode, message)

    async def close(self) -> None:
        tasks = [t for t in self._running.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
