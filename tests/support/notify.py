"""The service manager's end of sd_notify(3), for tests: a real AF_UNIX datagram socket that records every
message with the monotonic time it arrived, so tests see exactly what systemd would see."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

import pytest

Match = str | Callable[[str], bool]


class Notification(NamedTuple):
    time: float  # time.monotonic() when the datagram was received
    message: str

    @property
    def lines(self) -> list[str]:
        return self.message.split("\n")


def _matcher(what: Match) -> Callable[[str], bool]:
    """A string matches a message that has it as one of its lines ("READY=1"), or, ending in "=", any line
    starting with it ("STATUS="); a callable gets the whole message."""
    if callable(what):
        return what
    if what.endswith("="):
        return lambda m: any(line.startswith(what) for line in m.split("\n"))
    return lambda m: what in m.split("\n")


# Runs in a helper process: binds the socket, then forwards each datagram as a JSON line on stdout until
# stdin closes. Not a thread in the test process: systemd-python's notify() keeps the GIL while sendmsg()
# blocks on a full queue (10 datagrams), so an in-process drain thread could never take the next one and a
# burst of notifications from an in-process test would deadlock.
_DRAINER = r"""
import json, os, select, socket, sys, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
sock.bind(sys.argv[1])
out = sys.stdout
out.write("BOUND\n"); out.flush()
fd_space = socket.CMSG_SPACE(253 * 4)  # FDSTORE=1 messages may carry fds: accept and close them
while True:
    readable, _, _ = select.select([sock, sys.stdin], [], [])
    if sys.stdin in readable:
        break
    data, ancdata, _, _ = sock.recvmsg(65536, fd_space)
    now = time.monotonic()  # CLOCK_MONOTONIC: the same clock in every process
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            for fd in memoryview(payload)[: len(payload) - len(payload) % 4].cast("i"):
                os.close(fd)
    out.write(json.dumps([now, data.decode("utf-8", "replace")]) + "\n"); out.flush()
"""


class NotifySocket:
    """Binds NOTIFY_SOCKET in a fresh short-named temp dir (sun_path holds 108 bytes, pytest's tmp_path can
    be longer) and drains it continuously: an undrained socket fills after ~10 datagrams and then blocks the
    sender, which would stall the daemon under test instead of showing its behaviour."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="lh-notify-")
        self.path = os.path.join(self.directory, "notify.sock")
        self._cond = threading.Condition()
        self._records: list[Notification] = []
        self._closed = False
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _DRAINER, self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        assert self._proc.stdout is not None
        if self._proc.stdout.readline() != "BOUND\n":
            self._proc.kill()
            raise RuntimeError(f"the notify drainer failed to bind {self.path}")
        self._thread = threading.Thread(target=self._read, name="notify-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            t, message = json.loads(line)
            with self._cond:
                self._records.append(Notification(t, message))
                self._cond.notify_all()

    # ---------------------------------------------------------------------------------------- reading

    @property
    def records(self) -> list[Notification]:
        """(monotonic time, message) pairs in arrival order (a copy)."""
        with self._cond:
            return list(self._records)

    @property
    def messages(self) -> list[str]:
        return [r.message for r in self.records]

    def matching(self, what: Match) -> list[Notification]:
        match = _matcher(what)
        return [r for r in self.records if match(r.message)]

    def times(self, what: Match) -> list[float]:
        return [r.time for r in self.matching(what)]

    def wait_for(
        self, what: Match = "READY=1", timeout: float = 10.0, *, start: int = 0, after: float | None = None
    ) -> Notification:
        """The first message from index `start` on (and received after monotonic time `after`, if given)
        that matches; TimeoutError listing what did arrive."""
        match = _matcher(what)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for record in self._records[start:]:
                    if match(record.message) and (after is None or record.time > after):
                        return record
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [r.message for r in self._records[start:]]
                    raise TimeoutError(f"no notification matching {what!r} within {timeout} s; got {got!r}")
                self._cond.wait(left)

    def wait_for_count(self, what: Match, count: int, timeout: float = 10.0) -> list[Notification]:
        """Wait until at least `count` messages match; returns them all."""
        match = _matcher(what)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [r for r in self._records if match(r.message)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(found)} of {count} notifications matching {what!r} within {timeout} s")
                self._cond.wait(left)

    def clear(self) -> int:
        """Forget what arrived so far; returns how many there were."""
        with self._cond:
            n = len(self._records)
            self._records.clear()
            return n

    def __len__(self) -> int:
        with self._cond:
            return len(self._records)

    # ------------------------------------------------------------------------------------ environment

    def variables(self, watchdog_usec: int | None = None, watchdog_pid: int | None = None) -> dict[str, str | None]:
        """What systemd would set; None means "must be unset" (so an outer WATCHDOG_* cannot leak in)."""
        return {
            "NOTIFY_SOCKET": self.path,
            "WATCHDOG_USEC": None if watchdog_usec is None else str(watchdog_usec),
            "WATCHDOG_PID": None if watchdog_pid is None else str(watchdog_pid),
        }

    def env(
        self,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
        base: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """A complete environment for a child process: `base` (default os.environ) plus variables().
        To give the child its own PID in WATCHDOG_PID, as systemd does, start it through child_argv()."""
        env = dict(os.environ if base is None else base)
        for key, value in self.variables(watchdog_usec, watchdog_pid).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    @staticmethod
    def child_argv(argv: list[str]) -> list[str]:
        """argv wrapped so WATCHDOG_PID is the child's own PID: the shell exports its $$ and execs."""
        return ["/bin/sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh", *argv]

    def apply(
        self, monkeypatch: pytest.MonkeyPatch, watchdog_usec: int | None = None, watchdog_pid: int | None = None
    ) -> None:
        """Set variables() in this process, for in-process tests; monkeypatch undoes it."""
        for key, value in self.variables(watchdog_usec, watchdog_pid).items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)

    # ---------------------------------------------------------------------------------------- lifetime

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        assert self._proc.stdin is not None
        self._proc.stdin.close()  # the drainer's signal to stop
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._thread.join(10)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def notify_socket() -> Iterator[NotifySocket]:
    with NotifySocket() as sock:
        yield sock
