"""Where log lines go: the journal with structured fields under systemd, readable lines on a terminal; and the
`livehome.*` logger names users filter on."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any, TextIO

from .credentials import RECORD_ATTRS, RedactingFilter, install_redacting_factory

SYSLOG_IDENTIFIER = "livehome"


def logger(module: str) -> logging.Logger:
    """The logger for a module of the package: `daemon.live.session` logs as `livehome.live.session`."""
    return logging.getLogger(SYSLOG_IDENTIFIER + module.removeprefix("daemon"))


MAX_LINE = 2000  # characters of one log message; a 9 MB device state must not become a 9 MB journal line
_last_said: dict[str, tuple[float, int]] = {}


def log_every(log: logging.Logger, key: str, seconds: float, level: int, msg: str, *args: object) -> None:
    """Log at most once per `seconds` for `key`; the next line says how many were held back."""
    now = time.monotonic()
    last, held = _last_said.get(key, (-1e9, 0))
    if now - last < seconds:
        _last_said[key] = (last, held + 1)
        return
    if len(_last_said) > 1000:
        _last_said.clear()
    _last_said[key] = (now, 0)
    log.log(level, msg + (f" ({held} more like it held back)" if held else ""), *args)


class RateLimit(logging.Filter):
    """Lets the same message through at most once per `seconds` (for a library's logger that repeats itself)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = str(record.msg), time.monotonic()
        if now - self._last.get(key, -1e9) < self.seconds:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


class _Capped(logging.Filter):
    """Cuts a record's message to MAX_LINE characters (after formatting its arguments)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler's own error reporting
            return True
        if len(message) > MAX_LINE:
            record.msg, record.args = message[:MAX_LINE] + f"… ({len(message)} characters)", None
        return True


# Libraries that log every frame or request at DEBUG (websockets would log each audio chunk).
NOISY_LOGGERS = ("websockets", "httpx", "httpcore", "hpack", "asyncio", "google_genai", "urllib3")

_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def structured_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The journal fields passed via `extra` (upper-case names such as TOOL, CALL_ID, SESSION)."""
    return {k: v for k, v in vars(record).items() if k not in RECORD_ATTRS and _FIELD_NAME.fullmatch(k)}


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
        from systemd import journal

        handler = journal.JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
        handler.setFormatter(logging.Formatter("%(message)s"))  # the journal has time, level and unit
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(ReadableFormatter())
    handler.addFilter(RedactingFilter())
    handler.addFilter(_Capped())
    install_redacting_factory()
    handler._livehome = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    logging.captureWarnings(True)
    return handler
