"""Live layer latencies against the simulator over TLS, with the real SDK:
- toolCallCancellation sent → the undo publish seen by a subscriber, beside the transport floor measured in the
  same run: the raw SDK receiving the same frame plus a raw paho publish → receive;
- `interrupted` sent → playback flushed (queued speech dropped), beside the raw SDK receiving that frame.
The heap is frozen once everything is set up, as the daemon freezes it once it is warm (daemon.heap): a full
collection of this process takes tens of milliseconds and would otherwise land on a round now and then.
100 rounds each, so that p99 is the second-worst round rather than the worst."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

import aiomqtt
from google import genai
from google.genai import types

from bench.bench_tools import raw_paho
from bench.common import Row, percentile
from daemon import heap
from daemon.audio.outputs import WavSink
from daemon.events import Event, Interrupted
from daemon.live.session import LiveSession
from daemon.loading import load
from daemon.sim.broker import running_broker
from daemon.sim.server import Simulator
from daemon.tools.stack import running_tools

ROUNDS = 100
KEY = "bench-key-0001"
TOOLS = """
tools:
  - name: run_scene
    description: A scene whose device never confirms, so it is still waiting when cancelled.
    parameters: {scene: {type: string, enum: [movie]}}
    required: [scene]
    publish: {topic: "scenes/{scene}/run", payload: {run: true}}
    confirm: {topic: "scenes/{scene}/state", expect: {ready: true}, timeout: 60s}
    undo: {publish: {topic: "scenes/{scene}/run", payload: {run: false}}}
"""
LONG = "This is a long answer that will be interrupted before it is over, so the speaker has plenty queued."


def scenario(path: Path) -> Path:
    turns = []
    for i in range(ROUNDS):
        turns.append(
            f"  - on: {{text: cancel {i}}}\n    steps:\n"
            f"      - tool_call: {{id: c{i}, name: run_scene, args: {{scene: movie}}}}\n"
            f"      - sleep: 50ms\n      - cancel_tools: [c{i}]\n      - turn_complete\n"
        )
        turns.append(
            f"  - on: {{text: talk {i}}}\n    steps:\n      - say: {LONG}\n      - sleep: 100ms\n"
            "      - interrupted\n      - turn_complete\n"
        )
    path.write_text("description: latency rounds\nsettings: {tool_timeout: 60s}\nturns:\n" + "".join(turns))
    return path


def sent_at(sim: Simulator, kind: str) -> list[float]:
    return [e.t for e in sim.entries(kind, "out")]


async def ours(tmp: Path, broker_port: int, host: str) -> tuple[list[float], list[float]]:
    async with Simulator(scenario(tmp / "ours.yaml"), state_dir=tmp / "sim1", api_key=KEY) as sim:
        cfg = tmp / "config.yaml"
        cfg.write_text(
            f"gemini: {{endpoint: '{sim.url}', ca_file: '{sim.ca_file}'}}\n"
            f"mqtt: {{host: {host}, port: {broker_port}}}\nconversation: {{idle_timeout: 60s}}\n{TOOLS}"
        )
        loaded = load(cfg)
        speaker = WavSink(tmp / "played.wav", paced=True)
        await speaker.start()
        undone: list[float] = []
        flushed: list[float] = []
        got = asyncio.Event()

        def observe(event: Event) -> None:
            if isinstance(event, Interrupted):
                flushed.append(time.monotonic())
                got.set()

        async with (
            aiomqtt.Client(host, broker_port) as watcher,
            running_tools(loaded.registry, loaded.config.mqtt, connect_wait=10) as (_link, engine),
        ):
            await watcher.subscribe("scenes/movie/run", qos=1)

            async def watch() -> None:
                async for m in watcher.messages:
                    if m.payload == b'{"run":false}':
                        undone.append(time.monotonic())
                        got.set()

            watching = asyncio.create_task(watch())
            session = LiveSession(
                loaded.config.gemini, loaded.config.conversation, engine, loaded.registry.declarations(),
                key=KEY, speaker=speaker, observer=observe,
            )  # fmt: skip
            running = asyncio.create_task(session.run())
            await session.wait_connected(10)
            heap.freeze()
            for i in range(ROUNDS):
                for text in (f"cancel {i}", f"talk {i}"):
                    got.clear()
                    session.send_text(text)
                    await asyncio.wait_for(got.wait(), 10)
            session.stop()
            await running
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        await speaker.aclose()
        sim.assert_clean()
        cancels, interrupts = sent_at(sim, "tool_call_cancellation"), sent_at(sim, "interrupted")
    return [u - c for u, c in zip(undone, cancels, strict=True)], [
        f - s for f, s in zip(flushed, interrupts, strict=True)
    ]


async def raw_sdk(tmp: Path) -> tuple[list[float], list[float]]:
    """The same frames received by the bare SDK, doing nothing with them."""
    async with Simulator(scenario(tmp / "raw.yaml"), state_dir=tmp / "sim2", api_key=KEY) as sim:
        client = genai.Client(api_key=KEY, http_options=sim.http_options())
        config = types.LiveConnectConfig(  # resumption on, as ours: the simulator then does the same after a turn
            response_modalities=["AUDIO"],
            tools=[types.Tool(function_declarations=[types.FunctionDeclaration(name="run_scene", description="x")])],
            session_resumption=types.SessionResumptionConfig(),
        )
        cancel_seen: list[float] = []
        interrupt_seen: list[float] = []
        async with client.aio.live.connect(model="gemini-3.8-live", config=config) as session:
            heap.freeze()
            for i in range(ROUNDS):
                for text, bucket in ((f"cancel {i}", cancel_seen), (f"talk {i}", interrupt_seen)):
                    await session.send_realtime_input(text=text)
                    async for msg in session.receive():
                        if msg.tool_call_cancellation or (msg.server_content and msg.server_content.interrupted):
                            bucket.append(time.monotonic())
                    # receive() ends at turnComplete, after the frame of interest
        cancels, interrupts = sent_at(sim, "tool_call_cancellation"), sent_at(sim, "interrupted")
    return (
        [s - c for s, c in zip(cancel_seen, cancels, strict=True)],
        [s - c for s, c in zip(interrupt_seen, interrupts, strict=True)],
    )


async def run() -> list[Row]:
    with tempfile.TemporaryDirectory() as tmpdir, running_broker(Path(tmpdir)) as broker:
        tmp = Path(tmpdir)
        undo, flush = await ours(tmp, broker.port, broker.host)
        raw_cancel, raw_interrupt = await raw_sdk(tmp)
        paho = await asyncio.to_thread(raw_paho, broker.port, 200)
    ms = 1000.0
    rows = []
    for p in (50, 99):
        floor = (percentile(raw_cancel, p) + percentile(paho, p)) * ms
        rows.append(
            Row("live", f"cancellation → undo published, p{p}", percentile(undo, p) * ms, floor, "ms",
                "raw SDK receives the cancellation + raw paho publish → receive")
        )  # fmt: skip
    for p in (50, 99):
        rows.append(
            Row("live", f"interrupted → playback flushed, p{p}", percentile(flush, p) * ms,
                percentile(raw_interrupt, p) * ms, "ms", "raw SDK receives the interrupted frame")
        )  # fmt: skip
    return rows
