"""The daemon's systemd glue: readiness and watchdog (sd_notify), and signals.

Everything here degrades to a no-op outside systemd, so `livehome run` behaves the same in a terminal."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from systemd import daemon as sd_daemon

from .logs import logger

log = logger(__name__)

# ---------------------------------------------------------------------------------------------- sd_notify


class Notifier:
    """sd_notify(3) state changes for the service manager.

    Without NOTIFY_SOCKET every call is a silent no-op (returns False). A socket that is missing or refuses
    messages costs one warning in the log, never the daemon: being unable to report status is no reason to
    stop listening for the wake word."""

    def __init__(self) -> None:
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(os.environ.get("NOTIFY_SOCKET"))

    def send(self, *lines: str) -> bool:
        """Send one datagram of KEY=VALUE lines; True if it went out."""
        try:
            return bool(sd_daemon.notify("\n".join(lines)))
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning(
                    "cannot notify the service manager at NOTIFY_SOCKET=%s (%s); status updates and watchdog "
                    "pings are lost",
                    os.environ.get("NOTIFY_SOCKET"),
                    exc.strerror or exc,
                )
            return False

    def ready(self, status: str | None = None) -> bool:
        """Startup or a reload is complete: systemd considers the service started (Type=notify)."""
        return self.send("READY=1", *_status_line(status))

    def status(self, text: str) -> bool:
        return self.send(*_status_line(text))

    def reloading(self, status: str | None = None) -> bool:
        """A reload started; follow with ready() when done. MONOTONIC_USEC lets Type=notify-reload (systemd
        253+) match this message to the reload it requested; older managers ignore it."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status_line(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *_status_line(status))

    def watchdog_ping(self) -> bool:
        return self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time in the current start/stop/reload (e.g. a slow model load on a Pi Zero)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")


def _status_line(text: str | None) -> list[str]:
    # A newline would start a new KEY=VALUE assignment in the datagram.
    return [] if text is None else ["STATUS=" + " ".join(text.splitlines())]


# ----------------------------------------------------------------------------------------------- watchdog


def watchdog_interval() -> float | None:
    """Seconds between pings (half of WATCHDOG_USEC), or None if the service manager expects none from this
    process (unset, or WATCHDOG_PID names another process, as sd_watchdog_enabled(3) does)."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
        pid = int(os.environ.get("WATCHDOG_PID") or os.getpid())
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC/WATCHDOG_PID")
        return None
    if usec <= 0 or pid != os.getpid():
        return None
    return usec / 2 / 1_000_000


async def watchdog(notifier: Notifier, healthy: Callable[[], bool] | None = None) -> None:
    """Ping the watchdog from the event loop itself, forever.

    Pinging from a thread would prove only that the thread runs; pinging here means a loop stuck in a
    blocking call or a busy callback stops the pings, and systemd restarts the daemon after WatchdogSec.
    `healthy` can withhold pings for other reasons (e.g. a wedged audio thread). Returns at once when
    no watchdog is configured."""
    interval = watchdog_interval()
    if interval is None:
        return
    log.debug("watchdog: pinging every %.3g s", interval)
    was_healthy = True
    while True:
        ok = healthy is None or healthy()
        if ok:
            notifier.watchdog_ping()
        elif was_healthy:
            log.warning("watchdog: unhealthy, withholding pings so the service manager restarts the daemon")
        was_healthy = ok
        await asyncio.sleep(interval)


# ------------------------------------------------------------------------------------------------ signals


def install_signal_handlers(
    on_reload: Callable[[], object],
    on_stop: Callable[[], object],
    loop: asyncio.AbstractEventLoop | None = None,
) -> Callable[[], None]:
    """SIGHUP → on_reload, SIGTERM/SIGINT → on_stop, both run as ordinary callbacks on the loop (never in
    the middle of whatever frame the signal interrupted). A callback may also return an awaitable, which
    then runs as a task. Returns a function that restores the default handlers. Main thread only."""
    loop = loop or asyncio.get_running_loop()
    tasks: set[asyncio.Future[Any]] = set()

    def dispatch(signum: signal.Signals, callback: Callable[[], object]) -> None:
        log.info("received %s", signum.name)
        result = callback()
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result, loop=loop)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    wiring = {signal.SIGHUP: on_reload, signal.SIGTERM: on_stop, signal.SIGINT: on_stop}
    for signum, callback in wiring.items():
        loop.add_signal_handler(signum, dispatch, signum, callback)

    def remove() -> None:
        for signum in wiring:
            loop.remove_signal_handler(signum)

    return remove
