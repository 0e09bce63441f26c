"""`livehome say`: one typed turn through the whole chain (Live session, tools, MQTT), printed as it happens, to
test a config without a microphone."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from .audio import NullSink, WavSink
from .calls import EngineEvent
from .config import Loaded
from .live.client import SetupError, api_key
from .live.session import LiveSession
from .toolstack import tool_stack

GOOD_ENDINGS = {"idle", "end_conversation", "stopped"}


class Trace:
    """Readable lines for a person watching: what was heard, called, published, answered and said."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.t0 = time.monotonic()

    def line(self, text: str) -> None:
        print(f"{time.monotonic() - self.t0:7.2f}s  {text}", file=self.out, flush=True)

    def session(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "connecting":
            self.line("connecting to Gemini Live" + (" (resuming)" if data.get("resumed") else ""))
        elif kind == "connected":
            self.line(f"connected (connection {data['connection']})")
        elif kind == "transcript":
            self.line(f"{'user' if data['who'] == 'user' else 'model'}: {data['text']}")
        elif kind == "tool_call":
            note = "  (repeated id, not run again)" if data.get("repeated") else ""
            self.line(f"tool call {data['name']} [{data['id']}] {json.dumps(data['args'], ensure_ascii=False)}{note}")
        elif kind == "answered":
            body = json.dumps(data["response"], ensure_ascii=False)
            self.line(f"answer to [{data['id']}]: {data['outcome']}, {data['scheduling'] or 'no scheduling'}: {body}")
        elif kind == "cancelled":
            self.line(f"cancelled [{data['id']}]: {data['result']} {data['detail']}".rstrip())
        elif kind == "interrupted":
            self.line(f"interrupted: playback flushed ({data['dropped_bytes']} bytes dropped)")
        elif kind == "goaway":
            self.line(f"GoAway: {data['time_left']:g}s left, moving to a new connection")
        elif kind == "reconnecting":
            self.line(f"reconnecting (attempt {data['attempt']}): {data['why']}")
        elif kind == "ended":
            self.line(f"conversation ended: {data['reason']} {data['detail']}".rstrip())

    def tool(self, event: EngineEvent) -> None:
        if event.kind == "result":
            for message in event.published:
                self.line(f"  mqtt publish {message}")
            if event.outcome != "success":
                self.line(f"  {event.name} [{event.id}] {event.outcome}: {event.detail}")


async def say(loaded: Loaded, text: str, output: Path | None, idle: float | None, out: TextIO = sys.stdout) -> int:
    trace = Trace(out)
    try:
        key = api_key(loaded.config.gemini)
    except SetupError as exc:
        print(f"livehome say: {exc}", file=sys.stderr)
        return 1
    conversation = loaded.config.conversation
    if idle is not None:
        conversation = conversation.model_copy(update={"idle_timeout": idle})
    speaker = WavSink(output, paced=False) if output else NullSink()
    await speaker.start()
    try:
        async with tool_stack(loaded, observer=trace.tool, connect_wait=5.0) as (link, engine):
            if not link.connected:
                trace.line(f"MQTT broker {link.where} unreachable ({link.last_error}); tool calls will fail")
            session = LiveSession(
                loaded.config.gemini,
                conversation,
                engine,
                loaded.registry.declarations(),
                key=key,
                speaker=speaker,
                observer=trace.session,
            )
            trace.line(f"you (typed): {text}")
            session.send_text(text)
            result = await session.run()
    finally:
        await speaker.aclose()
    if output:
        trace.line(f"model audio written to {output}")
    return 0 if result.reason in GOOD_ENDINGS else 1
