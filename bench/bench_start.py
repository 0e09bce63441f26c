"""Start-up: spawning `livehome run` until its READY=1 reaches the service manager's socket, beside the floor measured
in the same run: a bare python process that imports the same heavy libraries (google.genai, openwakeword, aiomqtt,
pyaudio) and loads the same wake model with openWakeWord directly (its exit not counted). The ratio is what the
daemon adds (config, audio, MQTT, its own modules) on top of what any process using those libraries must pay."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Row, percentile
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

# The floor: the same imports and the same model files, loaded the way openWakeWord's own README does.
BASELINE = r"""
import importlib.util, pathlib
import aiomqtt, pyaudio
from google import genai
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


def time_to_ready(config: Path, notify_dir: Path) -> float:
    """Seconds from spawn to READY=1 on our socket (the child keeps running until we stop it)."""
    path = notify_dir / "notify.sock"
    path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(60)
        env = _env({"NOTIFY_SOCKET": str(path), "GEMINI_API_KEY": KEY})
        argv = [sys.executable, "-m", "daemon", "run", "--config", str(config), "--input", "-", "--output", "none"]
        t0 = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT
        )
        try:
            while True:
                message = sock.recv(65536).decode()
                if "READY=1" in message.split("\n"):
                    return time.monotonic() - t0
        finally:
            proc.kill()
            proc.wait(10)
            assert proc.stdin is not None
            proc.stdin.close()


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
        ours, raw = [], []
        await asyncio.to_thread(time_baseline)  # warm the page cache for both
        for _ in range(ROUNDS):
            raw.append(await asyncio.to_thread(time_baseline))
            ours.append(await asyncio.to_thread(time_to_ready, config, Path(tmp)))
    base = "bare python: same imports, same wake model loaded"
    return [Row("start", "spawn → READY=1, p50", percentile(ours, 50), percentile(raw, 50), "s", base)]
