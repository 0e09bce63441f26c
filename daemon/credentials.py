"""Secrets: where credentials come from (systemd's $CREDENTIALS_DIRECTORY, a file the config names, the
environment), and keeping every one of them out of log lines and error messages once it has been read."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import traceback
import urllib.parse
from pathlib import Path
from typing import Any

REDACTED = "***"
MIN_SECRET_LENGTH = 4

# ------------------------------------------------------------------------------------------------ redaction


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
RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


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
        if key in RECORD_ATTRS or value is None:
            continue
        text = value if isinstance(value, str) else str(value)
        if pattern.search(text):
            setattr(record, key, pattern.sub(REDACTED, text))


class RedactingFilter(logging.Filter):
    """redact_record() on every record a handler emits; the only place that also sees `extra` fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


def install_redacting_factory() -> None:
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


# -------------------------------------------------------------------------------------------- credentials


# The credential names the unit files pass with LoadCredential=.
GEMINI_API_KEY_CREDENTIAL = "gemini-api-key"
MQTT_PASSWORD_CREDENTIAL = "mqtt-password"
SHARED_SECRET_CREDENTIAL = "mqtt-shared-secret"


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


def lookup_secret(credential: str, file: Path | None, field: str, env: str | None = None) -> str | None:
    """The one lookup order for a secret: the systemd credential, then the file the config names (`field`), then
    the environment variable `env`. None when none is set; CredentialError when one is set but unusable."""
    value = read_credential(credential)
    if value:
        return value
    if file is not None:
        value = read_secret_file(file, field)
        if not value:
            raise CredentialError(f"{field} {file} is empty")
        return value
    value = os.environ.get(env, "").strip() if env else ""
    if value:
        register_secret(value)
        return value
    return None


def where_looked(credential: str, field: str, env: str | None = None) -> str:
    """The places lookup_secret tried, for an error message that tells the user where to put the secret."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    places = [f"{creds}/{credential}" if creds else "$CREDENTIALS_DIRECTORY (not set)", f"{field} (not set)"]
    if env:
        places.append(f"${env}")
    return ", ".join(places)
