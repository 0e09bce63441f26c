"""Memory after conversations: `livehome run` as a child process (stdin fed silence in real time, no sound card)
holds 300 conversations with the Live simulator over TLS, each started by an MQTT text turn: the model calls a
light that confirms on a real mosquitto, says a line, and ends the conversation itself. The daemon's RSS is read
after conversations 1, 10, 50, 100, 200 and 300, beside the RSS after the first in the same run (the goal: the
last within 15 MiB of it). About 45 s on x86, part of the default `./dev bench`; alone: `./dev bench soak`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from asyncio.subprocess import DEVNULL, PIPE
from pathlib import Path

import aiomqtt

from bench.common import Row
from daemon.audio.speech import silence
from daemon.sim.broker import running_broker
from daemon.sim.server import Simulator

CONVERSATIONS = 300
CHECKPOINTS = (1, 10, 50, 100, 200, 300)
KEY = "bench-key-0003"
ROOT = Path(__file__).resolve().parent.parent

SCENARIO = """
description: one short conversation, replayed for every conversation (loop)
settings: {unexpected_input: ignore}
turns:
  - on: {text: turn on the kitchen light}
    steps:
      - tool_call: {name: set_light, args: {room: kitchen, state: "ON"}}
      - await_tools
      - say: The kitchen light is on.
      - tool_call: {name: end_conversation, args: {}}
      - turn_complete
"""

CONFIG = """
gemini: {{endpoint: '{url}', ca_file: '{ca}'}}
mqtt: {{host: 127.0.0.1, port: {port}}}
assistant: {{id: soak, commands: [start, end, say], state_dir: '{state}'}}
conversation: {{idle_timeout: 5s}}
tools:
  - name: set_light
    description: Switch a room's light on or off.
    parameters:
      room: {{type: string, enum: [kitchen, hall]}}
      state: {{type: string, enum: ["ON", "OFF"]}}
    required: [room, state]
    publish: {{topic: "z2m/{{room}}/set", payload: {{state: "{{state}}"}}}}
    confirm: {{topic: "z2m/{{room}}", expect: {{state: "{{state}}"}}, timeout: 5s}}
    undo: {{publish: {{topic: "z2m/{{room}}/set", payload: {{state: "{{previous.state|OFF}}"}}}}}}
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def microphone(stdin: asyncio.StreamWriter) -> None:
    """Silence on the daemon's stdin at the pace of a microphone (50 ms at a time), until cancelled."""
    chunk = silence(0.05)
    due = time.monotonic()
    with contextlib.suppress(ConnectionError):
        while True:
            stdin.write(chunk)
            await stdin.drain()
            due += 0.05
            await asyncio.sleep(max(0.0, due - time.monotonic()))


async def read_log(stderr: asyncio.StreamReader, lines: list[str], warm: asyncio.Event) -> None:
    """The daemon's log, kept for an error message; `warm` once the Live client is ready."""
    async for raw in stderr:
        lines.append(raw.decode(errors="replace"))
        if "Live client ready" in lines[-1]:
            warm.set()


async def light(client: aiomqtt.Client) -> None:
    """The kitchen light: confirms every set on its state topic."""
    async for m in client.messages:
        if m.topic.matches("z2m/+/set"):
            state = json.loads(m.payload)["state"]
            await client.publish(str(m.topic).removesuffix("/set"), json.dumps({"state": state}), qos=1)


async def soak(tmp: Path, broker_port: int) -> dict[int, float]:
    (tmp / "soak.yaml").write_text(SCENARIO)
    async with Simulator(tmp / "soak.yaml", state_dir=tmp / "sim", api_key=KEY, loop=True) as sim:
        cfg = tmp / "config.yaml"
        cfg.write_text(CONFIG.format(url=sim.url, ca=sim.ca_file, port=broker_port, state=tmp / "state"))
        env = {**os.environ, "GEMINI_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
        argv = ["-m", "daemon", "run", "--config", str(cfg), "--input", "-", "--output", "none"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *argv, stdin=PIPE, stdout=DEVNULL, stderr=PIPE, env=env, cwd=ROOT
        )
        assert proc.stdin is not None and proc.stderr is not None
        log: list[str] = []
        warm = asyncio.Event()
        helpers = [asyncio.create_task(microphone(proc.stdin)), asyncio.create_task(read_log(proc.stderr, log, warm))]
        rss: dict[int, float] = {}
        try:
            async with (
                aiomqtt.Client("127.0.0.1", broker_port, identifier="soak-bench") as client,
                aiomqtt.Client("127.0.0.1", broker_port, identifier="soak-light") as device,
            ):
                await device.subscribe("z2m/+/set", qos=1)
                await client.subscribe("livehome/soak/events", qos=1)
                lit = asyncio.create_task(light(device))
                messages = client.messages

                async def next_event(*kinds: str) -> dict[str, object]:
                    async with asyncio.timeout(60):
                        async for m in messages:
                            body = json.loads(m.payload)
                            if body.get("event_type") in kinds:
                                return body
                    raise RuntimeError("the daemon's events stopped")

                try:
                    await asyncio.wait_for(warm.wait(), 60)  # READY, then the SDK imported and the client built
                except TimeoutError:
                    raise RuntimeError("the daemon did not start:\n" + "".join(log[-30:])) from None
                for n in range(1, CONVERSATIONS + 1):
                    command = json.dumps({"command": "say", "text": "turn on the kitchen light"})
                    await client.publish("livehome/soak/command", command, qos=1)
                    ended = await next_event("session_ended")
                    if ended.get("reason") != "end_conversation":
                        raise RuntimeError(f"conversation {n} ended with {ended}")
                    if n in CHECKPOINTS:
                        await asyncio.sleep(0.2)  # the end earcon, the state published: listening again
                        rss[n] = rss_mib(proc.pid)
                lit.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lit
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        sim.assert_clean()
    return rss


async def run() -> list[Row]:
    with tempfile.TemporaryDirectory() as tmpdir, running_broker(Path(tmpdir)) as broker:
        rss = await soak(Path(tmpdir), broker.port)
    first = rss[1]
    rows = [
        Row("soak", f"RSS after conversation {n} ({rss[n] - first:+.1f} MiB)", rss[n], first, "MiB",
            "RSS of the same daemon after its first conversation")
        for n in CHECKPOINTS
    ]  # fmt: skip
    return rows
