"""A readable, timestamped account of what the daemon does, for a person watching (`say`, `demo`)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from .calls import EngineEvent


class Trace:
    """Readable lines for a person watching: what was heard, called, published, answered and said."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self._connecting = self.t0

    def daemon_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "ready":
            self.line("ready")
        elif kind == "wake":
            self.line(f"wake word {data['word']}, score {data['score']:.2f} (at {data['seconds']:.2f}s of audio)")
        elif kind == "session_started":
            self.line(f"conversation {data['number']} opened by {data['trigger']}")
        elif kind == "barge_in":
            self.line("wake word over the model's voice: playback flushed, microphone reopened")
        elif kind == "session_ended":
            self.line(f"back to listening ({data['tool_calls']} tool calls, {data['duration']:.1f}s)")
        elif kind == "stopped":
            self.line("stopped")

    def line(self, text: str) -> None:
        print(f"{time.monotonic() - self.t0:7.2f}s  {text}", file=self.out, flush=True)

    def session_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "connecting":
            self._connecting = time.monotonic()
            self.line("connecting to Gemini Live" + (" (resuming)" if data.get("resumed") else ""))
        elif kind == "connected":
            took = time.monotonic() - self._connecting
            self.line(f"connected in {took * 1000:.0f} ms (connection {data['connection']})")
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
            detail = f" ({data['detail']})" if data.get("detail") else ""
            self.line(f"conversation ended: {data['reason']}{detail}")

    def tool_event(self, event: EngineEvent) -> None:
        if event.kind == "result":
            for message in event.published:
                self.line(f"  mqtt publish {message}")
            if event.outcome != "success":
                self.line(f"  {event.name} [{event.id}] {event.outcome}: {event.detail}")
