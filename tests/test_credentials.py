"""Secrets: where the Gemini key and the MQTT password come from, a real TLS + password mosquitto, and that
neither ever shows up in a log line or an error."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from daemon.calls import ToolCall
from daemon.config import Gemini
from daemon.credentials import clear_secrets
from daemon.live.client import SetupError, api_key
from daemon.loading import load
from daemon.sim.tls import make_tls_files
from daemon.tools.stack import running_tools
from tests.support.broker import Broker

PASSWORD = "s3cret-mqtt-pass-7781"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    yield
    clear_secrets()


def test_api_key_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (tmp_path / "key").write_text("from-the-file-0001\n")
    monkeypatch.setenv("GEMINI_API_KEY", "from-the-env-0002")
    assert api_key(Gemini()) == "from-the-env-0002"
    assert api_key(Gemini(api_key_file=tmp_path / "key")) == "from-the-file-0001"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    (creds / "gemini-api-key").write_text(" ")  # the unit's placeholder when no key file was installed
    assert api_key(Gemini(api_key_file=tmp_path / "key")) == "from-the-file-0001"
    (creds / "gemini-api-key").write_text("from-systemd-0003\n")
    assert api_key(Gemini(api_key_file=tmp_path / "key")) == "from-systemd-0003"


def test_missing_key_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SetupError, match=r"no Gemini API key: looked in .*gemini.api_key_file.*GEMINI_API_KEY"):
        api_key(Gemini())
    with pytest.raises(SetupError, match="does not exist"):
        api_key(Gemini(api_key_file=tmp_path / "nope"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SetupError, match="is empty"):
        api_key(Gemini(api_key_file=tmp_path / "empty"))


@pytest.fixture
def secure_broker(tmp_path: Path):
    ca, cert, key = make_tls_files(tmp_path / "tls", ("127.0.0.1",))
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "livehome", PASSWORD], check=True)
    extra = f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\nallow_anonymous false\npassword_file {passwd}\n"
    b = Broker(tmp_path, extra_conf=extra).start()
    yield b, ca
    b.stop()


TOOL = """
tools:
  - name: plug
    description: Switch the plug.
    parameters: {state: {type: string, enum: [ON, OFF]}}
    required: [state]
    publish: {topic: "cmnd/plug/POWER", payload: "{state}"}
"""


def secure_config(tmp_path: Path, broker: Broker, ca: Path, password_file: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"mqtt:\n  host: 127.0.0.1\n  port: {broker.port}\n  username: livehome\n  tls: {{ca_file: {ca}}}\n"
        f"  reconnect_max: 0.5s\n{password_file}{TOOL}"
    )
    return path


async def test_tls_and_password_from_a_systemd_credential(
    tmp_path: Path, secure_broker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broker, ca = secure_broker
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text(PASSWORD + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    caplog.set_level(logging.DEBUG)
    loaded = load(secure_config(tmp_path, broker, ca))
    async with running_tools(loaded.registry, loaded.config.mqtt, connect_wait=10) as (link, engine):
        assert link.connected, link.last_error
        resp = await engine.run(ToolCall("t1", "plug", {"state": "ON"}))
        assert resp is not None and resp.outcome == "success"
    assert PASSWORD not in caplog.text


async def test_wrong_password_fails_fast_and_clearly_without_echoing_it(
    tmp_path: Path, secure_broker, caplog: pytest.LogCaptureFixture
) -> None:
    broker, ca = secure_broker
    wrong = "wrong-pass-0099-xyz"
    (tmp_path / "pw").write_text(wrong)
    caplog.set_level(logging.DEBUG)
    loaded = load(secure_config(tmp_path, broker, ca, "  password_file: pw\n"))
    async with running_tools(loaded.registry, loaded.config.mqtt, connect_wait=1) as (link, engine):
        assert not link.connected
        resp = await engine.run(ToolCall("t1", "plug", {"state": "ON"}))
        assert resp is not None and resp.outcome == "error"
        error = resp.response["error"]
        assert "unreachable" in error and ("authori" in error.lower() or "password" in error.lower()), error
        assert wrong not in error
    assert wrong not in caplog.text


async def test_untrusted_broker_certificate_is_refused(tmp_path: Path, secure_broker) -> None:
    broker, _ = secure_broker
    other_ca, _, _ = make_tls_files(tmp_path / "other", ("127.0.0.1",))
    (tmp_path / "pw").write_text(PASSWORD)
    loaded = load(secure_config(tmp_path, broker, other_ca, "  password_file: pw\n"))
    async with running_tools(loaded.registry, loaded.config.mqtt, connect_wait=1) as (link, _engine):
        assert not link.connected
        assert "certificate" in link.last_error.lower()
