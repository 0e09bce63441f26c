"""A private mosquitto on a free loopback port: for the demo, the benchmarks and the tests (never the home's broker)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """SIGTERM, and SIGKILL if it has not gone within `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.005)
    raise TimeoutError(f"mosquitto did not listen on {port}")


class Broker:
    """mosquitto as a child process; stop() and start() again on the same port for broker-down tests."""

    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "") -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            "set_tcp_nodelay true\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n" + ("user root\n" if os.geteuid() == 0 else "") + extra_conf
            # Started as root, mosquitto would switch to its own user and lose access to our private files.
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        _wait_listening(self.port, self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextlib.contextmanager
def running_broker(workdir: Path, **kwargs) -> Iterator[Broker]:
    broker = Broker(workdir, **kwargs).start()
    try:
        yield broker
    finally:
        broker.stop()
