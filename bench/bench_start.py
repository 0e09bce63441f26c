"""Start-up: spawning `livehome run` until its READY=1 reaches the service manager's socket, beside a bare
openWakeWord process measured in the same run: python, `from openwakeword.model import Model`, and the same wake
model loaded the way openWakeWord's README does it, until it prints that it is loaded (its exit not counted).

That is what any wake-word listener on openWakeWord pays before it can hear anything. livehome pays for its own
config, audio, MQTT and modules on top, but not for the openwakeword package (daemon/wake/ runs its pipeline on
bare TFLite), nor for the Gemini SDK, which it imports right after READY while it already listens."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from bench.common import NO_BASELINE, Row, have_openwakeword, percentile
from daemon.sim.broker import running_broker

ROUNDS = 5  # ours and the baseline alternate, so drift of the machine hits both alike
ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key-0001"

CONFIG = """
mqtt: {{host: 127.0.0.1, port: {port}}}
wake: {{words: [hey_jarvis]}}
tools:
  - name: bench_light
    description: A light for the benchmark.
    parameters:
      room: {{type: string, map: {{kitchen: kitchen_ceiling, hall: hall_lamp}}}}
      state: {{type: string, enum: ["ON", "OFF"]}}
    required: [room, state]
    publish: {{topic: "z2m/{{room}}/set", payload: {{state: "{{state}}"}}}}
    confirm: {{topic: "z2m/{{room}}", expect: {{state: "{{state}}"}}, timeout: 5s}}
"""

# The baseline: openWakeWord imported, and the same model files loaded the way its own README does.
BASELINE = r"""
import importlib.util, pathlib
from openwakeword.model import Model
models = pathlib.Path(next(iter(importlib.util.find_spec("pyopen_wakeword").submodule_search_locations)), "models")
Model(
    wakeword_models=[str(models / "hey_jarvis.tflite")],
    inference_framework="tflite",
    melspec_model_path=str(models / "melspectrogram.tflite"),
    embedding_model_path=str(models / "embedding_model.tflite"),
)
print("loaded", flush=True)
"""


def _env(extra: dict[str, str]) -> dict[str, str]:
    drop = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY", "JOURNAL_STREAM")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, **extra}


def time_to_ready(config: Path, notify_dir: Path) -> tuple[float, float]:
    """Seconds from spawn to READY=1 on our socket, and to the "Live client ready" log line: the Gemini SDK
    imported after READY, from when on a wake word is served at full speed."""
    path = notify_dir / "notify.sock"
    path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(60)
        env = _env({"NOTIFY_SOCKET": str(path), "GEMINI_API_KEY": KEY})
        argv = [sys.executable, "-m", "daemon", "run", "--config", str(config), "--input", "-", "--output", "none"]
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT
        )
        assert proc.stderr is not None
        warm: list[float] = []

        def watch(stream: IO[bytes]) -> None:
            for line in stream:
                if b"Live client ready" in line and not warm:
                    warm.append(time.monotonic() - t0)

        watcher = threading.Thread(target=watch, args=(proc.stderr,), daemon=True)
        watcher.start()
        try:
            while True:
                message = sock.recv(65536).decode()
                if "READY=1" in message.split("\n"):
                    ready = time.monotonic() - t0
                    break
            deadline = time.monotonic() + 30
            while not warm and time.monotonic() < deadline:
                time.sleep(0.005)
            if not warm:
                raise RuntimeError("the daemon never logged that its Live client is ready")
            return ready, warm[0]
        finally:
            proc.kill()
            proc.wait(10)
            assert proc.stdin is not None
            proc.stdin.close()
            watcher.join(5)


def time_baseline() -> float:
    """Seconds from spawn until the bare process has everything loaded (its exit is not counted, like ours)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", BASELINE], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_env({}), cwd=ROOT
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.monotonic() - t0
    if proc.wait(30) != 0 or line != b"loaded\n":
        raise RuntimeError(f"the baseline process failed (exit {proc.returncode})")
    proc.stdout.close()
    return elapsed


async def run() -> list[Row]:
    # A short path: sun_path holds 108 bytes.
    with tempfile.TemporaryDirectory(prefix="lh-bench-") as tmp, running_broker(Path(tmp)) as broker:
        config = Path(tmp) / "config.yaml"
        config.write_text(CONFIG.format(port=broker.port))
        ready, warm, raw = [], [], []
        baseline = have_openwakeword()
        if baseline:
            await asyncio.to_thread(time_baseline)  # warm the page cache for both
        for _ in range(ROUNDS):
            if baseline:
                raw.append(await asyncio.to_thread(time_baseline))
            r, w = await asyncio.to_thread(time_to_ready, config, Path(tmp))
            ready.append(r)
            warm.append(w)
    base = "bare openWakeWord: import, same wake model loaded" if raw else NO_BASELINE
    floor = percentile(raw, 50) if raw else None
    return [
        Row("start", "spawn → READY=1, p50", percentile(ready, 50), floor, "s", base),
        Row("start", "spawn → Live client ready (SDK imported after READY), p50", percentile(warm, 50), floor, "s",
            base),
    ]  # fmt: skip
