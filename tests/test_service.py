"""daemon.service against a real sd_notify socket, real signals, real logging handlers and real files."""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from systemd.journal import JournalHandler

from daemon import credentials as cred
from daemon import logs, service
from tests.support.notify import NotifySocket

SERVICE_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "CREDENTIALS_DIRECTORY")
SECRET = "AIzaSy-TEST-not-a-real-key-0123456789"


@pytest.fixture(autouse=True)
def clean_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No service-manager variables from outside, no secrets or logging set-up leaking between tests."""
    for name in SERVICE_ENV:
        monkeypatch.delenv(name, raising=False)
    root = logging.getLogger()
    handlers, level, factory = root.handlers[:], root.level, logging.getLogRecordFactory()
    noisy = {name: logging.getLogger(name).level for name in logs.NOISY_LOGGERS}
    yield
    cred.clear_secrets()
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)
    logging.captureWarnings(False)
    logging.setLogRecordFactory(factory)


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    with NotifySocket() as sock:
        yield sock


def service_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "livehome.service" and r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------------------------------- Notifier


def test_notifier_messages_reach_the_service_manager(notify: NotifySocket, monkeypatch: pytest.MonkeyPatch) -> None:
    notify.apply(monkeypatch)
    n = service.Notifier()
    assert n.enabled

    assert n.ready("listening for hey_jarvis")
    assert notify.wait_for("READY=1").lines == ["READY=1", "STATUS=listening for hey_jarvis"]

    start = len(notify)
    assert n.status("in conversation\nwith two lines")
    assert notify.wait_for("STATUS=", start=start).lines == ["STATUS=in conversation with two lines"]

    start = len(notify)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = notify.wait_for("RELOADING=1", start=start).lines
    assert lines[0] == "RELOADING=1"
    (usec,) = [int(x.removeprefix("MONOTONIC_USEC=")) for x in lines if x.startswith("MONOTONIC_USEC=")]
    assert before <= usec <= after  # CLOCK_MONOTONIC microseconds, as Type=notify-reload expects

    start = len(notify)
    assert n.stopping("bye")
    assert notify.wait_for("STOPPING=1", start=start).lines == ["STOPPING=1", "STATUS=bye"]

    start = len(notify)
    assert n.extend_timeout(2.5)
    assert notify.wait_for("EXTEND_TIMEOUT_USEC=2500000", start=start)


def test_without_notify_socket_every_call_is_a_silent_noop(caplog: pytest.LogCaptureFixture) -> None:
    n = service.Notifier()
    assert not n.enabled
    assert [n.ready("x"), n.status("x"), n.reloading(), n.stopping(), n.watchdog_ping()] == [False] * 5
    assert service_warnings(caplog) == []


def _stale_socket(path: Path) -> None:
    """A socket file whose owner is gone: connecting gives ECONNREFUSED rather than ENOENT."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.close()


@pytest.mark.parametrize("broken", ["missing", "stale"])
def test_broken_notify_socket_logs_one_warning_and_never_raises(
    broken: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "notify.sock"
    if broken == "stale":
        _stale_socket(path)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    n = service.Notifier()
    with caplog.at_level(logging.WARNING):
        results = [n.ready("x"), n.status("y"), n.watchdog_ping(), n.reloading(), n.stopping()]
    assert results == [False] * 5
    warnings = service_warnings(caplog)
    assert len(warnings) == 1
    assert str(path) in warnings[0].getMessage()


def test_harness_drains_so_a_burst_never_blocks_the_sender(
    notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Far more than the kernel's default queue of 10 datagrams: an undrained socket would block here.
    notify.apply(monkeypatch)
    n = service.Notifier()
    for i in range(200):
        n.status(f"burst {i}")
    assert [r.message for r in notify.wait_for_count("STATUS=", 200)] == [f"STATUS=burst {i}" for i in range(200)]


# ---------------------------------------------------------------------------------------------- watchdog

WATCHDOG_USEC = 600_000  # pings every 0.3 s


async def test_watchdog_pings_from_the_loop_and_stops_while_the_loop_is_blocked(
    notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify.apply(monkeypatch, watchdog_usec=WATCHDOG_USEC)
    assert service.watchdog_interval() == pytest.approx(0.3)
    task = asyncio.create_task(service.watchdog(service.Notifier()))
    try:
        await asyncio.to_thread(notify.wait_for_count, "WATCHDOG=1", 3)
        blocked_from = time.monotonic()
        time.sleep(1.5)  # noqa: ASYNC251 - the point: a blocking call on the loop, as a bug would make
        blocked_until = time.monotonic()
        after = await asyncio.to_thread(notify.wait_for, "WATCHDOG=1", after=blocked_until)
    finally:
        task.cancel()
    pings = notify.times("WATCHDOG=1")
    # A ping sent just before the block may be received a moment later; nothing can be sent during it.
    assert [t for t in pings if blocked_from + 0.25 < t < blocked_until] == []
    assert after.time > blocked_until
    # The protocol: systemd kills the service when two pings are further apart than WATCHDOG_USEC. While
    # the loop ran the gaps stayed below it; the block made one gap exceed it.
    before = [t for t in pings if t <= blocked_from]
    assert all(b - a < WATCHDOG_USEC / 1e6 for a, b in itertools.pairwise(before))
    assert max(b - a for a, b in itertools.pairwise(pings)) > WATCHDOG_USEC / 1e6


@pytest.mark.parametrize("usec, pid", [(None, None), (WATCHDOG_USEC, "parent"), ("0", None)])
async def test_watchdog_returns_at_once_when_not_meant_for_this_process(
    usec: Any, pid: str | None, notify: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify.apply(
        monkeypatch,
        watchdog_usec=None if usec is None else int(usec),
        watchdog_pid=os.getppid() if pid == "parent" else None,
    )
    assert service.watchdog_interval() is None
    await asyncio.wait_for(service.watchdog(service.Notifier()), timeout=5)
    assert notify.matching("WATCHDOG=1") == []


async def test_watchdog_honours_its_own_pid(notify: NotifySocket, monkeypatch: pytest.MonkeyPatch) -> None:
    notify.apply(monkeypatch, watchdog_usec=100_000, watchdog_pid=os.getpid())
    task = asyncio.create_task(service.watchdog(service.Notifier()))
    try:
        await asyncio.to_thread(notify.wait_for_count, "WATCHDOG=1", 2)
    finally:
        task.cancel()


async def test_watchdog_withholds_pings_while_unhealthy(notify: NotifySocket, monkeypatch: pytest.MonkeyPatch) -> None:
    notify.apply(monkeypatch, watchdog_usec=100_000)
    checks = 0

    def healthy() -> bool:
        nonlocal checks
        checks += 1
        return checks > 3

    task = asyncio.create_task(service.watchdog(service.Notifier(), healthy))
    try:
        await asyncio.to_thread(notify.wait_for, "WATCHDOG=1")
        assert checks >= 4  # the first three checks said unhealthy and sent nothing
    finally:
        task.cancel()


CHILD = """
import asyncio
from daemon import service
async def main():
    n = service.Notifier()
    try:
        await asyncio.wait_for(service.watchdog(n), 0.5)
    except TimeoutError:
        pass
    n.send("X_CHILD=done")
asyncio.run(main())
"""


@pytest.mark.parametrize("own_pid", [True, False])
def test_child_process_watchdog_with_harness_env(own_pid: bool, notify: NotifySocket) -> None:
    """The set-up lifecycle tests use: WATCHDOG_PID naming the child (as systemd sets it) or someone else."""
    argv = [sys.executable, "-c", CHILD]
    if own_pid:
        env, argv = notify.env(watchdog_usec=100_000), notify.child_argv(argv)
    else:
        env = notify.env(watchdog_usec=100_000, watchdog_pid=os.getpid())
    subprocess.run(argv, env=env, check=True, timeout=60, cwd=Path(__file__).parents[1])
    done = notify.wait_for("X_CHILD=done")
    pings = [r for r in notify.matching("WATCHDOG=1") if r.time <= done.time]
    assert bool(pings) == own_pid


# ----------------------------------------------------------------------------------------------- signals


async def test_signals_are_dispatched_on_the_loop() -> None:
    reloads: list[str] = []
    reloaded = asyncio.Event()
    stops = 0
    stopped = asyncio.Event()

    async def on_reload() -> None:  # a coroutine callback runs as a task
        await asyncio.sleep(0)
        reloads.append("done")
        reloaded.set()

    def on_stop() -> None:
        nonlocal stops
        stops += 1
        stopped.set()

    remove = service.install_signal_handlers(on_reload, on_stop)
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.wait_for(reloaded.wait(), 5)
        for sig in (signal.SIGTERM, signal.SIGINT):
            stopped.clear()
            os.kill(os.getpid(), sig)
            await asyncio.wait_for(stopped.wait(), 5)
    finally:
        remove()
    assert reloads == ["done"]
    assert stops == 2
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# ----------------------------------------------------------------------------------------------- logging


def _stream_id(f: io.TextIOBase) -> str:
    st = os.fstat(f.fileno())
    return f"{st.st_dev}:{st.st_ino}"


def test_journal_handler_only_when_journal_stream_is_our_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "stderr", "w") as ours, open(tmp_path / "other", "w") as other:
        monkeypatch.setenv("JOURNAL_STREAM", _stream_id(ours))
        assert isinstance(logs.setup_logging(False, stream=ours), JournalHandler)

        # Inherited by a process whose stderr went elsewhere: not the journal.
        monkeypatch.setenv("JOURNAL_STREAM", _stream_id(other))
        handler = logs.setup_logging(False, stream=ours)
        assert not isinstance(handler, JournalHandler)
        assert isinstance(handler.formatter, logs.ReadableFormatter)

        for value in ("", "garbage", "1:"):
            monkeypatch.setenv("JOURNAL_STREAM", value)
            assert not isinstance(logs.setup_logging(False, stream=ours), JournalHandler)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not isinstance(logs.setup_logging(False, stream=ours), JournalHandler)
        assert not isinstance(logs.setup_logging(False, stream=io.StringIO()), JournalHandler)

    # Idempotent: one handler of ours however often it is called.
    assert sum(getattr(h, "_livehome", False) for h in logging.getLogger().handlers) == 1


def test_journal_detection_uses_the_real_stderr_of_a_child(tmp_path: Path) -> None:
    code = "import logging; from daemon import logs; print(type(logs.setup_logging(False)).__name__)"
    for matching in (True, False):
        err_path = tmp_path / f"stderr-{matching}"
        with open(err_path, "w") as err, open(tmp_path / "decoy", "w") as decoy:
            env = {**os.environ, "JOURNAL_STREAM": _stream_id(err if matching else decoy)}
            out = subprocess.run(
                [sys.executable, "-c", code],
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                text=True,
                check=True,
                timeout=60,
                cwd=Path(__file__).parents[1],
            ).stdout.strip()
        assert out == ("JournalHandler" if matching else "StreamHandler")


@pytest.fixture
def journal_stderr(tmp_path: Path) -> Iterator[io.TextIOWrapper]:
    with open(tmp_path / "journal-stderr", "w") as f:
        yield f


def _journal_capture(
    monkeypatch: pytest.MonkeyPatch, stderr: io.TextIOWrapper, verbose: bool = False
) -> list[dict[str, Any]]:
    """setup_logging on the journal path, with the handler's transport writing into a list (no journald
    here); everything before the transport, including the field assembly, is the real JournalHandler."""
    sent: list[dict[str, Any]] = []
    monkeypatch.setenv("JOURNAL_STREAM", _stream_id(stderr))
    handler = logs.setup_logging(verbose, stream=stderr)
    assert isinstance(handler, JournalHandler)

    def capture(message: str, /, **fields: Any) -> None:
        sent.append({"MESSAGE": message, **fields})

    handler.send = capture
    return sent


def test_journal_entries_carry_identifier_priority_and_structured_fields(
    monkeypatch: pytest.MonkeyPatch, journal_stderr: io.TextIOWrapper
) -> None:
    sent = _journal_capture(monkeypatch, journal_stderr)
    log = logging.getLogger("livehome.tools.engine")
    log.warning("tool %s failed", "light_on", extra={"TOOL": "light_on", "CALL_ID": "c-17", "SESSION": "s-3"})
    log.debug("invisible at info level")
    (entry,) = sent
    assert entry["MESSAGE"] == "tool light_on failed"
    assert entry["SYSLOG_IDENTIFIER"] == "livehome"
    assert entry["PRIORITY"] == "4"
    assert (entry["TOOL"], entry["CALL_ID"], entry["SESSION"]) == ("light_on", "c-17", "s-3")
    assert entry["LOGGER"] == "livehome.tools.engine"


def test_stderr_lines_are_readable_with_fields_appended(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    logs.setup_logging(False, stream=out)
    log = logging.getLogger("livehome.tools.engine")
    log.info("tool done", extra={"TOOL": "light_on", "CALL_ID": "c-17", "SESSION": "living room"})
    log.info("no fields")
    log.debug("hidden")
    logging.getLogger("websockets.client").info("frame dump")
    logging.getLogger("httpx").info("HTTP Request: GET")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert " INFO " in lines[0] and "livehome.tools.engine: tool done" in lines[0]
    assert lines[0].endswith('[TOOL=light_on CALL_ID=c-17 SESSION="living room"]')
    assert lines[1].endswith("livehome.tools.engine: no fields")

    out = io.StringIO()
    logs.setup_logging(True, stream=out)
    log.debug("now visible")
    logging.getLogger("websockets.client").debug("> BINARY 1f 8b ... [3200 bytes]")
    logging.getLogger("websockets.client").info("connection open")
    text = out.getvalue()
    assert "now visible" in text and "connection open" in text and "BINARY" not in text


def _log_secret_every_way(secret: str) -> None:
    log = logging.getLogger("livehome.live")
    log.info("connecting with key=%s", secret)
    log.info(f"inline {secret} in the message")
    log.info("dict args %(k)s", {"k": secret})
    log.info("url %s", "wss://example/ws?key=" + urllib.parse.quote(secret, safe=""))
    log.info("repr %r", [secret])
    log.info("a bad format string", secret)  # more args than placeholders
    log.warning("tool failed", extra={"SESSION": secret, "TOOL": f"x{secret}x", "CALL_ID": 1})
    try:
        raise RuntimeError(f"server rejected {secret}")
    except RuntimeError:
        log.exception("session ended")
    try:
        raise ValueError({"api_key": secret})
    except ValueError as exc:
        log.error("failed: %s", exc, exc_info=True)
    log.info("stack", stack_info=True, extra={"NOTE": secret})


@pytest.mark.parametrize("secret", [SECRET, "pa$$ 'w\"ord/+&%"])
def test_registered_secret_never_reaches_stderr(secret: str) -> None:
    out = io.StringIO()
    logs.setup_logging(True, stream=out)
    assert cred.register_secret(secret)
    _log_secret_every_way(secret)
    text = out.getvalue()
    assert secret not in text
    assert urllib.parse.quote(secret, safe="") not in text
    assert repr(secret)[1:-1] not in text
    assert text.count(cred.REDACTED) >= 10
    assert "connecting with key=***" in text and "RuntimeError: server rejected ***" in text
    assert "--- Logging error ---" not in text


def test_registered_secret_never_reaches_the_journal(
    monkeypatch: pytest.MonkeyPatch, journal_stderr: io.TextIOWrapper
) -> None:
    sent = _journal_capture(monkeypatch, journal_stderr, verbose=True)
    cred.register_secret(SECRET)
    _log_secret_every_way(SECRET)
    assert len(sent) == 10
    for entry in sent:  # every field journald would receive, including CODE_ARGS and EXCEPTION_*
        for key, value in entry.items():
            assert SECRET not in str(value), key
    assert any("EXCEPTION_TEXT" in e and "server rejected ***" in e["EXCEPTION_TEXT"] for e in sent)


def test_without_registration_nothing_is_rewritten() -> None:
    out = io.StringIO()
    logs.setup_logging(False, stream=out)
    logging.getLogger("x").info("key=%s", SECRET)
    assert SECRET in out.getvalue()  # proves the other tests' absence comes from the registration
    assert not cred.register_secret("abc")  # too short to redact without mangling every line
    assert not cred.register_secret("   ")
    assert not cred.register_secret(None)


# ------------------------------------------------------------------------------------------- credentials


@pytest.fixture
def credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "credentials"
    d.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(d))
    return d


def test_read_credential_strips_and_registers(credentials: Path) -> None:
    (credentials / "gemini-api-key").write_text(f"  {SECRET}\n\n")
    assert cred.read_credential(cred.GEMINI_API_KEY_CREDENTIAL) == SECRET
    out = io.StringIO()
    logs.setup_logging(False, stream=out)
    logging.getLogger("x").info("the key is %s", SECRET)
    assert SECRET not in out.getvalue()


def test_read_credential_absent_or_blank_is_none(credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cred.read_credential("mqtt-password") is None  # not passed at all
    (credentials / "mqtt-password").write_text(" ")  # the units' SetCredential= fallback
    assert cred.read_credential("mqtt-password") is None
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")  # not started by systemd
    assert cred.read_credential("mqtt-password") is None


def test_read_credential_errors_name_the_file_but_never_the_content(credentials: Path) -> None:
    (credentials / "binary").write_bytes(b"top-secret-\xff\xfe")
    (credentials / "dir").mkdir()
    os.symlink("loop", credentials / "loop")  # ELOOP: unreadable even for root
    for name in ("binary", "dir", "loop"):
        with pytest.raises(cred.CredentialError) as info:
            cred.read_credential(name)
        message = str(info.value)
        assert name in message and str(credentials) in message
        assert "top-secret" not in message and "\\xff" not in message
        assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_read_credential_permission_denied(credentials: Path) -> None:
    path = credentials / "gemini-api-key"
    path.write_text(SECRET)
    path.chmod(0)
    with pytest.raises(cred.CredentialError, match="Permission denied"):
        cred.read_credential("gemini-api-key")


@pytest.mark.parametrize("name", ["", "../etc/passwd", "a/b", ".", ".."])
def test_read_credential_rejects_paths(name: str, credentials: Path) -> None:
    with pytest.raises(ValueError):
        cred.read_credential(name)
