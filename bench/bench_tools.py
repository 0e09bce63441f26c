"""Tool layer: a tool call until its publish is seen by a subscriber and until its answer is ready, beside a raw
paho QoS 1 publish → receive round trip on the same private mosquitto, in the same run."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
import time
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho

from bench.common import Row, percentile
from daemon.calls import ToolCall
from daemon.loading import load
from daemon.mqtt.link import MqttLink
from daemon.sim.broker import running_broker
from daemon.tools.engine import Engine

CALLS = 1000
ROUNDS = 10  # ours and the baseline alternate in rounds, so drift of the machine hits both alike

CONFIG = """
mqtt: {{host: 127.0.0.1, port: {port}}}
tools:
  - name: bench_light
    description: A light for the benchmark.
    parameters:
      room: {{type: string, map: {{kitchen: kitchen_ceiling, hall: hall_lamp}}}}
      n: {{type: integer, minimum: 0}}
    required: [room, n]
    publish: {{topic: "bench/{{room}}/set", payload: {{state: "ON", n: "{{n}}"}}}}
"""


def raw_paho(port: int, count: int) -> list[float]:
    """Plain paho clients with their own network threads: publish QoS 1, wait for the subscriber to get it."""
    got = threading.Event()
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-raw-sub")
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-raw-pub")
    subscribed = threading.Event()
    sub.on_message = lambda c, u, m: got.set()
    sub.on_subscribe = lambda *a: subscribed.set()
    for c in (sub, pub):
        c.connect("127.0.0.1", port)
        c.loop_start()
    sub.subscribe("raw/t", qos=1)
    subscribed.wait(5)
    out = []
    try:
        for i in range(count):
            got.clear()
            t0 = time.perf_counter()
            pub.publish("raw/t", str(i), qos=1)
            if not got.wait(5):
                raise RuntimeError("raw baseline: message not received")
            out.append(time.perf_counter() - t0)
    finally:
        for c in (sub, pub):
            c.loop_stop()
            c.disconnect()
    return out


async def ours(engine: Engine, seen: dict[int, float], arrived: asyncio.Event, count: int, base: int):
    to_seen, to_ready = [], []
    for i in range(base, base + count):
        arrived.clear()
        t0 = time.perf_counter()
        resp = await engine.run(ToolCall(f"b{i}", "bench_light", {"room": "kitchen", "n": i}))
        t_ready = time.perf_counter()
        assert resp is not None and resp.outcome == "success", resp
        while i not in seen:
            await arrived.wait()
            arrived.clear()
        to_seen.append(seen[i] - t0)
        to_ready.append(t_ready - t0)
    return to_seen, to_ready


async def run() -> list[Row]:
    with tempfile.TemporaryDirectory() as tmp, running_broker(Path(tmp)) as broker:
        cfg = Path(tmp) / "config.yaml"
        cfg.write_text(CONFIG.format(port=broker.port))
        loaded = load(cfg)
        link = MqttLink(loaded.config.mqtt)
        link_task = asyncio.create_task(link.run())
        await link.wait_connected(10)
        engine = Engine(loaded.registry, link)
        seen: dict[int, float] = {}
        arrived = asyncio.Event()
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="bench-sub") as sub:
            await sub.subscribe("bench/+/set", qos=1)

            async def pump() -> None:
                import json

                async for m in sub.messages:
                    seen[json.loads(m.payload)["n"]] = time.perf_counter()
                    arrived.set()

            pumping = asyncio.create_task(pump())
            raw: list[float] = []
            to_seen: list[float] = []
            to_ready: list[float] = []
            per = CALLS // ROUNDS
            for r in range(ROUNDS):
                raw += await asyncio.to_thread(raw_paho, broker.port, per)
                s, rd = await ours(engine, seen, arrived, per, r * per)
                to_seen += s
                to_ready += rd
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumping
        link_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await link_task
    ms = 1000.0
    base = "raw paho QoS 1 publish → subscriber receive"
    rows = []
    for p in (50, 99):
        raw_p = percentile(raw, p) * ms
        rows.append(Row("tools", f"call → publish seen, p{p}", percentile(to_seen, p) * ms, raw_p, "ms", base))
        rows.append(Row("tools", f"call → answer ready, p{p}", percentile(to_ready, p) * ms, raw_p, "ms", base))
    return rows
