"""The google-genai client for Live: API key lookup and transport options (endpoint, CA, timeouts)."""

from __future__ import annotations

import ipaddress
import logging
import ssl
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from ..config import Gemini
from ..credentials import GEMINI_API_KEY_CREDENTIAL, CredentialError, lookup_secret, where_looked

if TYPE_CHECKING:
    from google import genai

# websockets logs the handshake's request headers at DEBUG, and x-goog-api-key is one of them: whatever the
# log levels, no DEBUG record of that logger is ever made.
logging.getLogger("websockets.client").addFilter(lambda record: record.levelno > logging.DEBUG)


class SetupError(Exception):
    """The session cannot be set up as configured (no key, unreadable CA file); retrying will not help."""


def api_key(gemini: Gemini) -> str:
    """The Gemini key, by daemon.credentials.lookup_secret's order ($CREDENTIALS_DIRECTORY/gemini-api-key,
    gemini.api_key_file, $GEMINI_API_KEY); redacted from every log line from now on."""
    field = "gemini.api_key_file"
    try:
        key = lookup_secret(GEMINI_API_KEY_CREDENTIAL, gemini.api_key_file, field, env="GEMINI_API_KEY")
    except CredentialError as exc:
        raise SetupError(str(exc)) from None
    if not key:
        looked = where_looked(GEMINI_API_KEY_CREDENTIAL, field, "GEMINI_API_KEY")
        raise SetupError(f"no Gemini API key: looked in {looked}")
    return key


def _loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ca_context(gemini: Gemini) -> ssl.SSLContext | None:
    """The TLS context trusting gemini.ca_file, or None (the system's CAs)."""
    if gemini.ca_file is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(gemini.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise SetupError(f"gemini.ca_file {gemini.ca_file}: {exc}") from None


def make_client(gemini: Gemini, key: str) -> genai.Client:
    """A client whose Live socket goes to gemini.endpoint (if set), trusting gemini.ca_file (if set).

    The SDK is imported here, not with the module: it is a third of the daemon's start-up (~0.3 s on x86, more on
    a Pi), and the daemon imports it right after READY, while it already listens (daemon/runtime.py)."""
    from google import genai
    from google.genai import types

    ws_args: dict[str, object] = {
        "open_timeout": gemini.connect_timeout,
        # Detect a dead connection in ~20 s instead of websockets' default ~40 s.
        "ping_interval": 10,
        "ping_timeout": 10,
        "close_timeout": 2,  # a shutdown must not wait long for a dead server's close frame
    }
    if (context := ca_context(gemini)) is not None:
        ws_args["ssl"] = context
    if gemini.endpoint and _loopback(gemini.endpoint):
        ws_args["proxy"] = None  # an HTTPS_PROXY in the environment must not swallow a local simulator
    options = types.HttpOptions(
        base_url=gemini.endpoint.rstrip("/") if gemini.endpoint else None,
        api_version=gemini.api_version,
        async_client_args=ws_args,
    )
    return genai.Client(api_key=key, http_options=options)
