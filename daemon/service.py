"""The daemon's systemd glue: readiness and watchdog (sd_notify), signals, logging, credentials.

Everything here degrades to a no-op outside systemd, so `livehome run` behaves the same in a terminal."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from systemd import daemon as sd_daemon
from systemd import journal as sd_journal

log = logging.getLogger(__name__)

SYSLOG_IDENTIFIER = "livehome"
REDACTED = "***"
MIN_SECRET_LENGTH = 4

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


# ------------------------------------------------------------------------------------------------ secrets


class _Secrets:
    """Strings that must never reach a log line; thread-safe (audio and MQTT threads log too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self.pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        # Also the forms a secret takes when it travels in a URL, in JSON or in a repr().
        forms = {
            value,
            urllib.parse.quote(value, safe=""),
            urllib.parse.quote_plus(value, safe=""),
            json.dumps(value)[1:-1],
            repr(value)[1:-1],
        }
        with self._lock:
            self._values |= {f for f in forms if len(f) >= MIN_SECRET_LENGTH}
            # Longest first, so a secret containing another is replaced whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self.pattern = re.compile("|".join(map(re.escape, ordered)))

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self.pattern = None


_secrets = _Secrets()


def register_secret(value: str | None) -> bool:
    """Redact `value` from every log record from now on (defence in depth: code should not log secrets in
    the first place). Values shorter than MIN_SECRET_LENGTH are refused, since replacing them would mangle
    every line; returns whether the value is now redacted."""
    if value is None or len(value.strip()) < MIN_SECRET_LENGTH:
        return False
    _secrets.add(value.strip())
    return True


def clear_secrets() -> None:
    """Forget every registered secret (for tests)."""
    _secrets.clear()


def redact(text: str) -> str:
    pattern = _secrets.pattern
    return text if pattern is None else pattern.sub(REDACTED, text)


# The attributes every LogRecord has; anything else came from `extra`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def redact_record(record: logging.LogRecord) -> None:
    """Replace registered secrets in a record's message, arguments, exception, stack and extra fields.

    The record is rewritten only when a secret is present; then the message is stored pre-formatted and the
    exception as text, since handlers such as JournalHandler also send the raw args and exc_info."""
    pattern = _secrets.pattern
    if pattern is None:
        return
    try:
        message = record.getMessage()
    except Exception:  # a bad format string must become neither a leak nor an exception here
        message = f"{record.msg!s} {record.args!r}"
    if pattern.search(message) or (record.args and pattern.search(repr(record.args))):
        record.msg, record.args = pattern.sub(REDACTED, message), None
    if record.exc_info and record.exc_info[0] is not None:
        text = record.exc_text or "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if pattern.search(text):
            record.exc_text, record.exc_info = text, None
    if record.exc_text:
        record.exc_text = pattern.sub(REDACTED, record.exc_text)
    if record.stack_info:
        record.stack_info = pattern.sub(REDACTED, record.stack_info)
    for key, value in list(vars(record).items()):
        if key in _RECORD_ATTRS or value is None:
            continue
        text = value if isinstance(value, str) else str(value)
        if pattern.search(text):
            setattr(record, key, pattern.sub(REDACTED, text))


class RedactingFilter(logging.Filter):
    """redact_record() on every record a handler emits; the only place that also sees `extra` fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def _install_redacting_factory() -> None:
    """Also redact where records are made, so that every handler (a library's, pytest's) gets the clean
    message and exception; `extra` is attached after the factory runs, hence the handler filter too."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_livehome", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        redact_record(record)
        return record

    factory._livehome = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


# ------------------------------------------------------------------------------------------------ logging

# Libraries that log every frame or request at DEBUG (websockets would log each audio chunk).
NOISY_LOGGERS = ("websockets", "httpx", "httpcore", "hpack", "asyncio", "google_genai", "urllib3")

_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def structured_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The journal fields passed via `extra` (upper-case names such as TOOL, CALL_ID, SESSION)."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and _FIELD_NAME.fullmatch(k)}


class ReadableFormatter(logging.Formatter):
    """One line per record for a terminal or a plain log file, structured fields appended as k=v."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = structured_fields(record)
        if not fields:
            return line
        return line + " [" + " ".join(f"{k}={_compact(v)}" for k, v in fields.items()) + "]"


def _compact(value: object) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if not text or re.search(r'[\s"\[\]=]', text) else text


def journal_stream_matches(stream: TextIO | None = None) -> bool:
    """True when stderr is the journal stream systemd connected us to (systemd.exec(5), $JOURNAL_STREAM):
    then native journal messages keep their priority and fields. A stderr redirected elsewhere (a file,
    a terminal, a pipe to another program) inherits the variable but not the device:inode."""
    dev, sep, ino = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):  # no fileno (a test's StringIO) or a malformed variable
        return False


def setup_logging(verbose: bool = False, *, stream: TextIO | None = None) -> logging.Handler:
    """Route all logging to the journal (under systemd) or to `stream`/stderr, with secret redaction.

    Idempotent: a second call replaces the handler the first one installed. Returns the handler."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_livehome", False)]:
        root.removeHandler(old)
        old.close()
    handler: logging.Handler
    if journal_stream_matches(stream):
        handler = sd_journal.JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
        handler.setFormatter(logging.Formatter("%(message)s"))  # the journal has time, level and unit
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(ReadableFormatter())
    handler.addFilter(RedactingFilter())
    _install_redacting_factory()
    handler._livehome = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    logging.captureWarnings(True)
    return handler


# -------------------------------------------------------------------------------------------- credentials


# The credential names the unit files pass with LoadCredential=.
GEMINI_API_KEY_CREDENTIAL = "gemini-api-key"
MQTT_PASSWORD_CREDENTIAL = "mqtt-password"


class CredentialError(Exception):
    """A credential exists but cannot be used; the message names it and its path, never its content."""


def read_credential(name: str) -> str | None:
    """The credential `name` that systemd's LoadCredential=/SetCredential= placed in $CREDENTIALS_DIRECTORY,
    whitespace-stripped and registered for redaction; None when there is no such directory or file, or it
    is blank (the units' SetCredential= fallback for a missing file is a single space)."""
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"invalid credential name {name!r}")
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise CredentialError(f"credential {name!r} at {path} is a directory, not a file") from None
    except OSError as exc:
        raise CredentialError(f"cannot read credential {name!r} at {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        # from None: the decode error would quote the offending bytes.
        raise CredentialError(f"credential {name!r} at {path} is not UTF-8 text") from None
    value = text.strip()
    if not value:
        return None
    register_secret(value)
    return value


def read_secret_file(path: Path, field: str) -> str:
    """A secret from a file the config names (gemini.api_key_file, mqtt.password_file): stripped and registered
    for redaction. Errors name the field and the path, never the content."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise CredentialError(f"{field} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        # from None: a decode error would quote the offending bytes.
        raise CredentialError(f"cannot read {field} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    register_secret(value)
    return value
