"""A private PulseAudio as a child process, so PyAudio tests run against real, real-time paced devices.

Two null sinks stand in for the hardware: playing into `livehome_mic` is what the virtual microphone (its
monitor, the default source) hears; whatever is played to the default sink `livehome_speaker` can be
recorded from its monitor. ALSA's default device is routed to this server through a private ALSA config,
so PyAudio's default input and output reach it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from daemon.sim.broker import stop_process

PULSEAUDIO = shutil.which("pulseaudio")
MISSING = "pulseaudio is not installed (apt install pulseaudio libasound2-plugins)"


class PulseServer:
    """pulseaudio --daemonize=no with a private runtime dir; stop() and start() again for outage tests."""

    MIC = "livehome_mic"
    SPEAKER = "livehome_speaker"

    def __init__(self, mic_rate: int = 16000, speaker_rate: int = 48000) -> None:
        # unix socket paths are limited to 108 bytes, so not under pytest's deep tmp_path
        self.dir = Path(tempfile.mkdtemp(prefix="lhpulse-"))
        self.socket = self.dir / "native"
        (self.dir / "default.pa").write_text(
            f"load-module module-null-sink sink_name={self.MIC} rate={mic_rate} channels=1\n"
            f"load-module module-null-sink sink_name={self.SPEAKER} rate={speaker_rate} channels=2\n"
            f"set-default-sink {self.SPEAKER}\n"
            f"set-default-source {self.MIC}.monitor\n"
            # the socket last: once it accepts, the devices exist
            f"load-module module-native-protocol-unix socket={self.socket} auth-anonymous=1\n"
        )
        (self.dir / "asound.conf").write_text("pcm.!default { type pulse }\nctl.!default { type pulse }\n")
        (self.dir / "client.conf").write_text("autospawn = no\n")
        self.proc: subprocess.Popen | None = None
        self._keepalive: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        """What a client needs: libpulse finds the server, ALSA's default device goes to it."""
        return {
            "PULSE_SERVER": f"unix:{self.socket}",
            "PULSE_CLIENTCONFIG": str(self.dir / "client.conf"),
            "ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{self.dir / 'asound.conf'}",
        }

    def start(self, timeout: float = 10.0) -> PulseServer:
        if PULSEAUDIO is None:
            raise RuntimeError(MISSING)
        env = dict(
            os.environ,
            HOME=str(self.dir),
            PULSE_RUNTIME_PATH=str(self.dir / "rt"),
            PULSE_STATE_PATH=str(self.dir / "state"),
        )
        self.socket.unlink(missing_ok=True)
        with open(self.dir / "pulseaudio.log", "ab") as log:
            self.proc = subprocess.Popen(
                [
                    PULSEAUDIO,
                    "--daemonize=no",
                    "--exit-idle-time=-1",
                    "-n",
                    "-F",
                    str(self.dir / "default.pa"),
                    "--use-pid-file=no",
                    "--disable-shm=yes",
                    "--log-target=stderr",
                    "--log-level=error",
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log_text = (self.dir / "pulseaudio.log").read_text(errors="replace")
                raise RuntimeError(f"pulseaudio exited with {self.proc.returncode}: {log_text}")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.connect(str(self.socket))
                self._keep_alive()
                return self
            time.sleep(0.01)
        self.stop()
        raise TimeoutError("pulseaudio did not start")

    def _keep_alive(self, timeout: float = 10.0) -> None:
        """An idle null sink renders in 2 s blocks, so a first read or write would wait up to 2 s. A
        low-latency stream of silence into each sink keeps it ticking every few milliseconds; returns once
        both streams play (pacat -v says "Stream started")."""
        started = []
        for sink in (self.MIC, self.SPEAKER):
            proc = subprocess.Popen(
                [
                    "pacat",
                    "-v",
                    "--playback",
                    "--raw",
                    f"--device={sink}",
                    "--rate=16000",
                    "--channels=1",
                    "--format=s16le",
                    "--latency-msec=10",
                    "/dev/zero",
                ],
                env=self._client_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            self._keepalive.append(proc)
            event = threading.Event()
            threading.Thread(target=_watch, args=(proc, event), daemon=True).start()
            started.append(event)
        for event in started:
            if not event.wait(timeout):
                raise TimeoutError("pacat keep-alive streams did not start")

    def stop(self) -> None:
        for proc in self._keepalive:
            proc.kill()
            proc.wait()
        self._keepalive.clear()
        stop_process(self.proc)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _temp(self, suffix: str) -> Path:
        fd, name = tempfile.mkstemp(dir=self.dir, suffix=suffix)
        os.close(fd)
        return Path(name)

    def _client_env(self) -> dict[str, str]:
        return dict(os.environ, **self.env)

    def feed_mic(self, pcm: bytes, rate: int = 16000) -> subprocess.Popen:
        """Play s16le mono into the virtual microphone (pacat, real time); wait() returns once heard."""
        raw = self._temp(".raw")
        raw.write_bytes(pcm)
        return subprocess.Popen(
            [
                "pacat",
                "--playback",
                "--raw",
                f"--device={self.MIC}",
                f"--rate={rate}",
                "--channels=1",
                "--format=s16le",
                "--latency-msec=20",
                str(raw),
            ],
            env=self._client_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    @contextlib.contextmanager
    def record_speaker(self, rate: int = 24000) -> Iterator[Recording]:
        """Record the virtual speaker (s16le mono at `rate`) for the duration of the block."""
        out = self._temp(".raw")
        with open(out, "wb") as f:
            proc = subprocess.Popen(
                [
                    "parec",
                    "--raw",
                    f"--device={self.SPEAKER}.monitor",
                    f"--rate={rate}",
                    "--channels=1",
                    "--format=s16le",
                    "--latency-msec=10",
                ],
                env=self._client_env(),
                stdout=f,
                stderr=subprocess.PIPE,
            )
        recording = Recording(out, rate)
        try:
            deadline = time.monotonic() + 5
            while out.stat().st_size == 0:  # the monitor streams silence once the recorder is connected
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"parec did not start: {proc.stderr.read() if proc.stderr else ''}")
                time.sleep(0.01)
            yield recording
        finally:
            proc.terminate()
            proc.wait(5)
            recording.pcm = out.read_bytes()
            recording.pcm = recording.pcm[: len(recording.pcm) // 2 * 2]


def _watch(proc: subprocess.Popen, started: threading.Event) -> None:
    """Reads pacat -v's chatter to the end (it would block on a full pipe) and notes when it plays."""
    assert proc.stderr is not None
    for line in proc.stderr:
        if "Stream started" in line:
            started.set()


class Recording:
    """What the speaker played; `pcm` is filled in when the recording block ends."""

    def __init__(self, path: Path, rate: int) -> None:
        self.path, self.rate = path, rate
        self.pcm = b""


@contextlib.contextmanager
def client_environment(server: PulseServer) -> Iterator[None]:
    """Point this process's libpulse and ALSA (hence PyAudio) at `server`, restoring the environment after."""
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def running_pulse(**kwargs: int) -> Iterator[PulseServer]:
    """A started server with this process pointed at it."""
    server = PulseServer(**kwargs).start()
    try:
        with client_environment(server):
            yield server
    finally:
        server.cleanup()
