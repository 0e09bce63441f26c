"""Everything start-up would refuse, found before start-up: `livehome check` runs these and `livehome run` runs
them first, so a config that cannot work is reported whole, every problem at its file and line, not one at a
time. `--online` also asks the outside world: the broker, the Live endpoint's TLS, and the state topics."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlparse

from .audio.devices import AudioDeviceError, find_device, list_devices
from .audio.frames import AudioError
from .audio.inputs import open_input
from .audio.outputs import open_output
from .credentials import MQTT_PASSWORD_CREDENTIAL, SHARED_SECRET_CREDENTIAL, CredentialError, lookup_secret
from .live.client import SetupError, api_key, ca_context
from .loading import Loaded
from .mqtt.link import MqttLink, tls_context
from .wake import WakeDetector, WakeModelError, feature_model, resolve_model
from .yamlsrc import Problem, dotted

Where = tuple[Any, ...]


class _Found:
    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self.problems: list[Problem] = []

    def add(self, where: Where, message: str) -> None:
        file, line = self.loaded.locate(where)
        field = dotted(where)
        message = message.removeprefix(f"{field}: ").removeprefix(f"{field} ")
        self.problems.append(Problem(file, line, field, message))

    def run(self, where: Where, check: Callable[[], object], *errors: type[Exception]) -> bool:
        try:
            check()
        except errors as exc:
            self.add(where, str(exc))
            return False
        return True


def preflight(loaded: Loaded, *, input_override: str | None = None, output_override: str | None = None,
              load_models: bool = True) -> list[Problem]:
    """What start-up checks, without starting: the API key, CA and secret files, TLS files, wake models, audio
    files and devices. `load_models` also loads the wake models (as `check` does; `run` loads them anyway)."""
    cfg = loaded.config
    found = _Found(loaded)
    gemini_where = ("gemini", "api_key_file") if cfg.gemini.api_key_file else ("gemini",)
    found.run(gemini_where, lambda: api_key(cfg.gemini), SetupError)
    if cfg.gemini.ca_file is not None:
        found.run(("gemini", "ca_file"), lambda: ca_context(cfg.gemini), SetupError)
    m = cfg.mqtt
    found.run(("mqtt", "password_file"),
              lambda: lookup_secret(MQTT_PASSWORD_CREDENTIAL, m.password_file, "mqtt.password_file"), CredentialError)
    a = cfg.assistant
    found.run(("assistant", "shared_secret_file"),
              lambda: lookup_secret(SHARED_SECRET_CREDENTIAL, a.shared_secret_file, "assistant.shared_secret_file"),
              CredentialError)
    if m.tls.enabled:
        found.run(("mqtt", "tls"), lambda: tls_context(m), OSError, ssl.SSLError)
    wake_ok = True
    for i, word in enumerate(cfg.wake.words):
        where = ("wake", "words", i, "model")
        wake_ok &= found.run(where, lambda w=word, i=i: resolve_model(w.model, cfg.wake.models_dir,
                                                                         dotted(("wake", "words", i, "model"))),
                             WakeModelError)
    for name in ("melspectrogram", "embedding_model"):
        wake_ok &= found.run(("wake",), lambda n=name: feature_model(n, cfg.wake.models_dir), WakeModelError)
    if wake_ok and load_models:
        found.run(("wake", "words"), lambda: WakeDetector(cfg.wake), WakeModelError)
    audio = cfg.audio
    if input_override is None:
        found.run(("audio", "input"), lambda: open_input(audio.input), AudioError)
    if output_override is None:
        found.run(("audio", "output"), lambda: open_output(audio.output), AudioError)
    _devices(found, loaded, input_override is None, output_override is None)
    return found.problems


def _devices(found: _Found, loaded: Loaded, check_input: bool, check_output: bool) -> None:
    """Named sound devices exist (only where PortAudio sees any device: a config checked on another machine
    than the Pi must not fail on the Pi's microphone)."""
    audio = loaded.config.audio
    wanted: list[tuple[Where, Any, str | int]] = []
    if check_input and audio.input.backend == "pyaudio" and audio.input.device is not None:
        wanted.append((("audio", "input", "device"), "input", audio.input.device))
    if check_output and audio.output.backend == "pyaudio" and audio.output.device is not None:
        wanted.append((("audio", "output", "device"), "output", audio.output.device))
    if not wanted:
        return
    devices = list_devices()
    if not devices:
        return
    for where, kind, device in wanted:
        found.run(where, lambda w=where, k=kind, d=device: find_device(devices, d, k, dotted(w)), AudioDeviceError)


async def online(loaded: Loaded, timeout: float = 5.0) -> tuple[list[str], list[str]]:
    """Probe what the config points at. Returns (problems, notes): the broker, the Live endpoint's TLS, and the
    last message of each state topic the tools read or confirm on."""
    problems: list[str] = []
    notes: list[str] = []
    cfg = loaded.config
    endpoint = cfg.gemini.endpoint or "https://generativelanguage.googleapis.com"
    try:
        took = await asyncio.to_thread(_tls_probe, endpoint, cfg.gemini.ca_file, timeout)
        notes.append(f"Live endpoint {endpoint}: TLS handshake and certificate OK ({took * 1000:.0f} ms)")
    except (OSError, ssl.SSLError) as exc:
        problems.append(f"Live endpoint {endpoint}: {exc}")
    link = MqttLink(cfg.mqtt)
    link.watch(loaded.registry.watched)
    task = asyncio.create_task(link.run())
    try:
        if not await link.wait_connected(timeout):
            problems.append(f"MQTT broker {link.where} unreachable ({link.last_error})")
            return problems, notes
        notes.append(f"MQTT broker {link.where}: connected")
        await link.wait_settled(timeout)
        notes += _topics(link, sorted(loaded.registry.watched))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return problems, notes


def _topics(link: MqttLink, topics: Sequence[str]) -> list[str]:
    out = []
    for topic in topics:
        msg = link.last(topic)
        if msg is None:
            out.append(f"  {topic}: no retained message (a read answers only after the device reports)")
        else:
            text = msg.payload.decode(errors="replace")
            out.append(f"  {topic}: {text[:120]}{'…' if len(text) > 120 else ''}")
    return out


def _tls_probe(endpoint: str, ca_file: Any, timeout: float) -> float:
    url = urlparse(endpoint)
    host, port = url.hostname or "", url.port or 443
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout) as sock, context.wrap_socket(
        sock, server_hostname=host
    ):
        return time.monotonic() - started
