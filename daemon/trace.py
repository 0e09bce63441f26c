"""A readable, timestamped account of what the daemon does, for a person watching (`say`, `demo`)."""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO

from .events import (
    Answered,
    BargeIn,
    Connected,
    Connecting,
    ConversationEnded,
    Event,
    GoingAway,
    Interrupted,
    ModelCalled,
    Ready,
    Reconnecting,
    SessionEnded,
    SessionStarted,
    Stopped,
    ToolCancelled,
    ToolFinished,
    Transcript,
    WakeHeard,
)


class Trace:
    """Readable lines for a person watching: what was heard, called, published, answered and said."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self._connecting = self.t0

    def line(self, text: str) -> None:
        print(f"{time.monotonic() - self.t0:7.2f}s  {text}", file=self.out, flush=True)

    def notify(self, event: Event) -> None:
        match event:
            case Ready():
                self.line("ready")
            case WakeHeard(word=word, score=score, seconds=seconds):
                self.line(f"wake word {word}, score {score:.2f} (at {seconds:.2f}s of audio)")
            case SessionStarted(number=number, trigger=trigger):
                self.line(f"conversation {number} opened by {trigger}")
            case BargeIn():
                self.line("wake word over the model's voice: playback flushed, microphone reopened")
            case SessionEnded(tool_calls=calls, duration=duration):
                self.line(f"back to listening ({calls} tool calls, {duration:.1f}s)")
            case Stopped():
                self.line("stopped")
            case Connecting(resumed=resumed):
                self._connecting = time.monotonic()
                self.line("connecting to Gemini Live" + (" (resuming)" if resumed else ""))
            case Connected(connection=connection):
                took = time.monotonic() - self._connecting
                self.line(f"connected in {took * 1000:.0f} ms (connection {connection})")
            case Transcript(who=who, text=text):
                self.line(f"{who}: {text}")
            case ModelCalled(id=cid, name=name, args=args, repeated=repeated):
                note = "  (repeated id, not run again)" if repeated else ""
                self.line(f"tool call {name} [{cid}] {json.dumps(args, ensure_ascii=False)}{note}")
            case Answered(id=cid, outcome=outcome, scheduling=scheduling, response=response):
                body = json.dumps(response, ensure_ascii=False)
                self.line(f"answer to [{cid}]: {outcome}, {scheduling or 'no scheduling'}: {body}")
            case ToolCancelled(id=cid, result=result, detail=detail):
                self.line(f"cancelled [{cid}]: {result} {detail}".rstrip())
            case Interrupted(dropped_bytes=dropped):
                self.line(f"interrupted: playback flushed ({dropped} bytes dropped)")
            case GoingAway(time_left=left):
                self.line(f"GoAway: {left:g}s left, moving to a new connection")
            case Reconnecting(attempt=attempt, why=why):
                self.line(f"reconnecting (attempt {attempt}): {why}")
            case ConversationEnded(reason=reason, detail=detail):
                self.line(f"conversation ended: {reason}" + (f" ({detail})" if detail else ""))
            case ToolFinished(published=published, outcome=outcome, name=name, id=cid, detail=detail):
                for message in published:
                    self.line(f"  mqtt publish {message}")
                if outcome != "success":
                    self.line(f"  {name} [{cid}] {outcome}: {detail}")
