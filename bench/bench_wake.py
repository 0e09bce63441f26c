"""Listening and waking:
- CPU while listening (real-time audio without the wake word) and peak RSS of `livehome run`, beside a bare
  openWakeWord process fed the same audio at the same pace, in the same run;
- wake word → first audio byte on the Live socket (the session connects over TLS and sends the pre-roll), beside
  the bare SDK connecting and sending one audio chunk to the same simulator."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import wave
from pathlib import Path

from google import genai
from google.genai import types

from bench.common import NO_BASELINE, Row, have_openwakeword, percentile
from daemon.audio.speech import silence, synthesize
from daemon.events import Event, WakeHeard
from daemon.live.setup import connect_config
from daemon.live.uplink import MAX_SEND_BYTES
from daemon.loading import load
from daemon.runtime import Daemon, Options
from daemon.sim.broker import running_broker
from daemon.sim.server import Simulator

LISTEN_SECONDS = 30.0
SETTLE = 3.0  # after start-up (and the daemon's SDK import right after READY), before the CPU window
WINDOW = 24.0  # CPU time is counted in clock ticks (10 ms): a long window keeps that error under 0.05 %
ROUNDS = 2  # ours and the baseline alternate, so drift of the machine hits both alike
WAKE_RUNS = 16
KEY = "bench-key-0002"

RAW_OWW = textwrap.dedent(
    """
    import sys, time, wave, numpy as np
    from pathlib import Path
    import pyopen_wakeword
    from openwakeword.model import Model
    d = Path(pyopen_wakeword.__file__).parent / "models"
    m = Model(wakeword_models=[str(d / "hey_jarvis.tflite")], inference_framework="tflite",
              melspec_model_path=str(d / "melspectrogram.tflite"),
              embedding_model_path=str(d / "embedding_model.tflite"))
    with wave.open(sys.argv[1]) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    print("ready", flush=True)
    start = time.monotonic()
    for i, n in enumerate(range(0, len(audio) - 1279, 1280)):
        m.predict(audio[n : n + 1280])
        delay = start + (i + 1) * 0.08 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    """
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(argv: list[str], marker: str, env: dict[str, str]) -> tuple[float, float]:
    """CPU share over a steady window once `marker` appeared (start-up and shutdown are not listening), and
    the peak RSS (MiB) by the end of that window."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if marker in line:
            break
    else:
        raise RuntimeError(f"{argv[:3]} never printed {marker!r}")
    drain = threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True)  # type: ignore[union-attr]
    drain.start()
    time.sleep(SETTLE)
    cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
    time.sleep(WINDOW)
    cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
    rss = peak_rss_mib(proc.pid)
    if proc.wait(60) != 0:
        raise RuntimeError(f"{argv[:3]} exited with {proc.returncode}")
    return (cpu1 - cpu0) / (t1 - t0), rss


def listening(tmp: Path, broker_port: int) -> list[Row]:
    pcm = synthesize("the weather is lovely today and nobody is talking to the assistant") + silence(LISTEN_SECONDS)
    pcm = pcm[: int(LISTEN_SECONDS * 16000) * 2]
    audio = tmp / "listen.wav"
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    cfg = tmp / "listen.yaml"
    cfg.write_text(f"mqtt: {{host: 127.0.0.1, port: {broker_port}}}\naudio: {{input: {{realtime: true}}}}\n")
    env = {**os.environ, "GEMINI_API_KEY": KEY}
    daemon = [sys.executable, "-m", "daemon", "run", "--config", str(cfg), "--input", str(audio), "--output", "none"]
    ours, raw = [], []
    baseline = have_openwakeword()
    for _ in range(ROUNDS):
        if baseline:
            raw.append(measure([sys.executable, "-c", RAW_OWW, str(audio)], "ready", env))
        ours.append(measure(daemon, "ready:", env))
    our_cpu, our_rss = statistics.mean(c for c, _ in ours), statistics.mean(r for _, r in ours)
    raw_cpu = statistics.mean(c for c, _ in raw) if raw else None
    raw_rss = statistics.mean(r for _, r in raw) if raw else None
    raw_name = "bare openWakeWord, same model and audio, same pace" if raw else NO_BASELINE
    return [
        Row("wake", f"CPU while listening (share of one core, {WINDOW:g} s window, mean of {ROUNDS})",
            100 * our_cpu, None if raw_cpu is None else 100 * raw_cpu, "%", raw_name),
        Row("wake", f"peak RSS (mean of {ROUNDS})", our_rss, raw_rss, "MiB",
            f"{raw_name} (process total)" if raw else raw_name),
    ]  # fmt: skip


class WakeClock:
    """When the daemon reported its wake words."""

    def __init__(self) -> None:
        self.woke: list[float] = []

    def notify(self, event: Event) -> None:
        if isinstance(event, WakeHeard):
            self.woke.append(time.monotonic())


async def bare_connect(sim: Simulator, config: types.LiveConnectConfig, chunk: int) -> float:
    """The bare SDK on the same simulator and TLS: connect, send one audio chunk; seconds until the simulator
    read its first audio byte."""
    client = genai.Client(api_key=KEY, http_options=sim.http_options())
    blob = types.Blob(data=bytes(chunk), mime_type="audio/pcm;rate=16000")
    t0 = time.monotonic()
    async with client.aio.live.connect(model="gemini-3.8-live", config=config) as session:
        await session.send_realtime_input(audio=blob)
        await sim.wait_until(lambda: sim.connections[-1].first_audio is not None)
    await asyncio.sleep(0.1)  # the connection's teardown, on the simulator's side too, is not in the next figure
    return sim.connections[-1].first_audio - t0  # type: ignore[operator]


async def wake_to_audio(tmp: Path, broker_port: int) -> list[Row]:
    """The wake word heard (the daemon's WakeHeard event) → the simulator reading the first audio byte, beside
    bare SDK clients connecting to the same simulator over the same TLS, alternating: one with an empty setup
    and an 80 ms chunk, one with the daemon's own setup (its tools) and a first chunk as big as the daemon's
    (200 ms of pre-roll). The microphone is paced as a microphone is: a file read faster than real time kept the
    wake word's thread scoring the rest of it through the whole connect."""
    mic = tmp / "wake.wav"
    with wave.open(str(mic), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(silence(0.5) + synthesize("hey jarvis, turn on the kitchen light") + silence(0.5))
    scenario = tmp / "idle.yaml"
    scenario.write_text(
        "description: listen only\nsettings: {unexpected_input: ignore}\n"
        "turns:\n  - on: {text: never said}\n    steps: [turn_complete]\n"
    )
    ours, bare, same = [], [], []
    os.environ["GEMINI_API_KEY"] = KEY
    async with Simulator(scenario, state_dir=tmp / "sim", api_key=KEY, loop=True) as sim:
        for i in range(WAKE_RUNS):
            cfg = tmp / f"wake{i}.yaml"
            cfg.write_text(
                f"gemini: {{endpoint: '{sim.url}', ca_file: '{sim.ca_file}'}}\n"
                f"mqtt: {{host: 127.0.0.1, port: {broker_port}}}\n"
                "audio: {input: {realtime: true}}\nconversation: {idle_timeout: 0.3s, earcons: false}\n"
            )
            clock = WakeClock()
            loaded = load(cfg)
            daemon = Daemon(loaded, Options(input=str(mic), output="none"))
            daemon.observers.append(clock)
            await daemon.run()
            first = sim.connections[-1].first_audio if daemon.sessions == 1 else None
            if not clock.woke or first is None:
                raise RuntimeError("the wake word did not open a session in the benchmark")
            ours.append(first - clock.woke[0])
            bare.append(await bare_connect(sim, types.LiveConnectConfig(), 2560))
            declarations = loaded.registry.declarations() + [t.declaration() for t in daemon.household.tools()]
            same.append(await bare_connect(sim, connect_config(loaded.config.gemini, declarations), MAX_SEND_BYTES))
    ms = 1000.0
    rows = []
    for p in (50, 90):
        rows.append(Row("wake", f"wake → first audio byte on the socket, p{p}", percentile(ours, p) * ms,
                        percentile(bare, p) * ms, "ms", "bare SDK: connect over TLS and send one audio chunk"))
    for p in (50, 90):
        rows.append(Row("wake", f"wake → first audio byte on the socket, p{p}", percentile(ours, p) * ms,
                        percentile(same, p) * ms, "ms", "bare SDK as above, with the daemon's setup (its tools) "
                        "and first chunk (200 ms)"))
    return rows  # fmt: skip


async def run() -> list[Row]:
    with tempfile.TemporaryDirectory() as tmpdir, running_broker(Path(tmpdir)) as broker:
        tmp = Path(tmpdir)
        rows = await asyncio.to_thread(listening, tmp, broker.port)
        rows += await wake_to_audio(tmp, broker.port)
    return rows
