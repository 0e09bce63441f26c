"""`livehome say`: one typed turn through the whole chain (Live session, tools, MQTT), printed as it happens, to
test a config without a microphone."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from .audio.outputs import NullSink, WavSink
from .config import EX_CONFIG
from .events import Event, ToolFinished
from .live.client import SetupError, api_key
from .live.session import LiveSession
from .loading import Loaded
from .tools.stack import running_tools
from .trace import Trace

GOOD_ENDINGS = {"idle", "end_conversation", "stopped"}
EX_TOOL_FAILED = 1
EX_UNAVAILABLE = 69  # sysexits.h: the broker or the service could not be reached


async def say(loaded: Loaded, text: str, output: Path | None, idle: float | None, out: TextIO = sys.stdout) -> int:
    """Exit 0 only when the conversation ended well and every tool call succeeded; 69 when the broker was
    unreachable, 1 when a tool failed or the conversation failed, 78 (as `check` and `run`) without an API key."""
    trace = Trace(out)
    failed: list[ToolFinished] = []

    def observe(event: Event) -> None:
        trace.notify(event)
        if isinstance(event, ToolFinished) and event.outcome != "success":
            failed.append(event)
    try:
        key = api_key(loaded.config.gemini)
    except SetupError as exc:
        print(f"livehome say: {exc}", file=sys.stderr)
        return EX_CONFIG
    conversation = loaded.config.conversation
    if idle is not None:
        conversation = conversation.model_copy(update={"idle_timeout": idle})
    speaker = WavSink(output, paced=False) if output else NullSink()
    await speaker.start()
    try:
        stack = running_tools(loaded.registry, loaded.config.mqtt, observe, connect_wait=5.0, sources=loaded.sources)
        async with stack as (link, engine):
            if not link.connected:
                print(f"livehome say: MQTT broker {link.where} unreachable ({link.last_error})", file=sys.stderr)
                return EX_UNAVAILABLE
            session = LiveSession(
                loaded.config.gemini,
                conversation,
                engine,
                engine.declarations(),
                key=key,
                speaker=speaker,
                observer=observe,
            )
            trace.line(f"you (typed): {text}")
            session.send_text(text)
            result = await session.run()
    finally:
        await speaker.aclose()
    if output:
        trace.line(f"model audio written to {output}")
    if failed:
        names = ", ".join(f"{e.name} ({e.outcome}: {e.detail})" for e in failed)
        print(f"livehome say: tool call failed: {names}", file=sys.stderr)
        return EX_TOOL_FAILED
    return 0 if result.reason in GOOD_ENDINGS else EX_TOOL_FAILED
