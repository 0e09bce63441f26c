"""`livehome say`: one typed turn through the whole chain (Live session, tools, MQTT), printed as it happens, to
test a config without a microphone."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from .audio.outputs import NullSink, WavSink
from .live.client import SetupError, api_key
from .live.session import LiveSession
from .loading import Loaded
from .tools.stack import running_tools
from .trace import Trace

GOOD_ENDINGS = {"idle", "end_conversation", "stopped"}


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
        async with running_tools(loaded.registry, loaded.config.mqtt, trace.notify, connect_wait=5.0) as (link, engine):
            if not link.connected:
                trace.line(f"MQTT broker {link.where} unreachable ({link.last_error}); tool calls will fail")
            session = LiveSession(
                loaded.config.gemini,
                conversation,
                engine,
                loaded.registry.declarations(),
                key=key,
                speaker=speaker,
                observer=trace.notify,
            )
            trace.line(f"you (typed): {text}")
            session.send_text(text)
            result = await session.run()
    finally:
        await speaker.aclose()
    if output:
        trace.line(f"model audio written to {output}")
    return 0 if result.reason in GOOD_ENDINGS else 1
