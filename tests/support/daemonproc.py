"""`livehome run` as a real child process, as systemd starts it: a NOTIFY_SOCKET (tests.support.notify), a temp
config, raw 16 kHz microphone audio on a kept-open stdin pipe (no sound card), its output in files the test reads.

The child's environment is scrubbed of everything that could make a test pass by accident (an outer
GEMINI_API_KEY, CREDENTIALS_DIRECTORY, JOURNAL_STREAM, proxies, service-manager variables)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO

from daemon.audio.speech import silence
from daemon.sim.broker import Broker
from tests.support.notify import NotifySocket

ROOT = Path(__file__).resolve().parents[2]
RATE = 16000
CHUNK_SECONDS = 0.05  # the feeder writes this much audio at a time, paced like a microphone

SCRUBBED = (
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "CREDENTIALS_DIRECTORY",
    "JOURNAL_STREAM",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without anything a daemon could pick a secret or a shortcut from, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def daemon_argv(config: Path, *, verbose: bool = False, output: str = "none") -> list[str]:
    return [sys.executable, "-m", "daemon", *(["-v"] if verbose else []), "run", "--config", str(config),
            "--input", "-", "--output", output]  # fmt: skip


class Microphone(threading.Thread):
    """Writes raw s16le mono to the daemon's stdin in real time: silence, or what say() queued. It never closes
    the pipe (the end of input would stop the daemon by itself); a broken pipe (the daemon exited) ends it."""

    def __init__(self, pipe: IO[bytes], rate: int = RATE) -> None:
        super().__init__(name="daemon-mic", daemon=True)
        self._pipe = pipe
        self._chunk = int(rate * CHUNK_SECONDS) * 2
        self._silence = silence(CHUNK_SECONDS, rate)
        self._queue: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def say(self, pcm: bytes) -> None:
        """Queue speech; it follows at once, in real time, then silence again."""
        with self._lock:
            self._queue.extend(pcm[i : i + self._chunk] for i in range(0, len(pcm), self._chunk))

    def run(self) -> None:
        due = time.monotonic()
        while not self._halt.is_set():
            with self._lock:
                data = self._queue.popleft() if self._queue else self._silence
            try:
                self._pipe.write(data)
                self._pipe.flush()
            except (BrokenPipeError, ValueError, OSError):
                return
            due += len(data) / 2 / RATE
            self._halt.wait(max(0.0, due - time.monotonic()))

    def stop(self) -> None:
        self._halt.set()
        self.join(5)


class DaemonProcess:
    """One `python -m daemon run` child: signals, exit status, what it logged, what it told the service manager."""

    def __init__(self, proc: subprocess.Popen[bytes], notify: NotifySocket, config: Path, out_dir: Path) -> None:
        self.proc = proc
        self.notify = notify
        self.config = config
        self.stdout_path = out_dir / "daemon.stdout"
        self.stderr_path = out_dir / "daemon.stderr"
        assert proc.stdin is not None
        self.mic = Microphone(proc.stdin)
        self.mic.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def log(self) -> str:
        """Everything the daemon wrote to stderr so far (its log)."""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    @property
    def output(self) -> str:
        """stdout and stderr together: every byte the daemon printed."""
        return self.stdout_path.read_text(encoding="utf-8", errors="replace") + self.log

    def send(self, sig: signal.Signals) -> float:
        """Send a signal; returns the monotonic time just before it went."""
        t = time.monotonic()
        self.proc.send_signal(sig)
        return t

    def wait(self, timeout: float) -> int:
        """The exit status; TimeoutExpired (the process is left running) if it does not exit in time."""
        return self.proc.wait(timeout)

    def wait_log(self, pred: str | Callable[[str], bool], timeout: float = 10.0) -> str:
        """Until the log contains `pred` (or pred(log) holds); the log then. Fails early if the daemon died."""
        check = pred if callable(pred) else (lambda text: pred in text)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log
            if check(text):
                return text
            if not self.alive:
                raise AssertionError(f"the daemon exited ({self.proc.returncode}) before {pred!r}; log:\n{text}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{pred!r} not in the daemon's log within {timeout} s; log:\n{text}")
            time.sleep(0.02)

    def close(self) -> None:
        """SIGKILL if still running (a test that failed half-way), then release the pipes."""
        if self.alive:
            self.proc.kill()
        self.proc.wait(10)
        self.mic.stop()
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()


@contextlib.contextmanager
def daemon_process(
    work: Path,
    config_text: str,
    *,
    env: Mapping[str, str] | None = None,
    watchdog_usec: int | None = None,
    verbose: bool = False,
    output: str = "none",
) -> Iterator[DaemonProcess]:
    """Write `config_text` to work/config.yaml and start `livehome run` on it with its own notify socket; the
    child gets its own PID in WATCHDOG_PID, as under systemd. Killed on the way out if still running."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / "config.yaml"
    config.write_text(config_text)
    with NotifySocket() as notify:
        full_env = notify.env(watchdog_usec, base=child_env(env))
        argv = daemon_argv(config, verbose=verbose, output=output)
        with (work / "daemon.stdout").open("wb") as out, (work / "daemon.stderr").open("wb") as err:
            proc = subprocess.Popen(
                notify.child_argv(argv), stdin=subprocess.PIPE, stdout=out, stderr=err, env=full_env, cwd=ROOT
            )
        daemon = DaemonProcess(proc, notify, config, work)
        try:
            yield daemon
        finally:
            daemon.close()


# --------------------------------------------------------------------------------------------- the broker


class WatchedBroker(Broker):
    """mosquitto that also logs every SUBSCRIBE, read live from its stderr: which state topics a client
    subscribed to is what the broker saw, not what the daemon claims."""

    def __init__(self, workdir: Path, extra_conf: str = "") -> None:
        super().__init__(workdir, extra_conf="log_type subscribe\n" + extra_conf)
        self._lines: list[str] = []
        self._cond = threading.Condition()

    def start(self) -> WatchedBroker:
        super().start()
        assert self.proc is not None and self.proc.stderr is not None
        threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True).start()
        return self

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._cond:
                self._lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def subscriptions(self, client_id: str) -> list[str]:
        """Topic filters `client_id` subscribed to, in order."""
        with self._cond:
            return self._subscriptions(client_id)

    def _subscriptions(self, client_id: str) -> list[str]:
        out = []
        for line in self._lines:  # mosquitto logs "<time>: <client id> <qos> <topic filter>"
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[1] == client_id and parts[2].isdigit():
                out.append(parts[3])
        return out

    def wait_subscribed(self, client_id: str, topic: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while topic not in self._subscriptions(client_id):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{client_id} never subscribed to {topic}: {self._subscriptions(client_id)}")
                self._cond.wait(left)
