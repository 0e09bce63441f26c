"""One conversation with Gemini Live on the google-genai SDK, kept alive across GoAway and dropped sockets.

Three loops share one connection: the receiver (model audio, transcripts, tool calls, cancellations, GoAway,
resumption handles), the input sender (microphone PCM and text, from a bounded buffer that survives reconnects)
and the answer sender (tool answers from the tool port, requeued if the socket dies mid-send). A watchdog ends
the conversation on idle, max duration or end_conversation, and moves to a new connection on GoAway. The tool
port is anything shaped like the tool layer's Engine: this module knows nothing of MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import websockets
from google.genai import errors, types

from ..audio.frames import OUTPUT_RATE, output_seconds
from ..audio.frames import SAMPLE_RATE as INPUT_RATE
from ..calls import CancelReport, ToolCall, ToolResponse
from ..config import Conversation, Gemini
from ..events import (
    Answered,
    Connected,
    Connecting,
    ConversationEnded,
    Emit,
    Event,
    GoingAway,
    Interrupted,
    ModelCalled,
    Reconnecting,
    Speaking,
    Transcript,
    TurnEnded,
    notify_all,
)
from ..logs import logger
from .client import SetupError, make_client
from .setup import END_CONVERSATION, connect_config

log = logger(__name__)
MAX_SEND_BYTES = 2 * INPUT_RATE // 5  # 200 ms per audio message when catching up after a reconnect
SPEECH_RMS = 500  # mic RMS (of 32768) that counts as the user speaking, for the idle timer
GOAWAY_MARGIN = 1.0  # reconnect this long before the service's deadline at the latest
END_GRACE = 15.0  # after end_conversation: how long the goodbye may take
# Close codes that retrying cannot fix: bad frames, policy (bad key, unknown model), oversize, extension.
FATAL_CLOSE = {1002, 1003, 1007, 1008, 1009, 1010}


class ToolPort(Protocol):
    """What the session needs from the tool layer (daemon.tools.engine.Engine)."""

    def submit(self, call: ToolCall) -> bool: ...
    async def next_response(self) -> ToolResponse: ...
    def requeue(self, response: ToolResponse) -> None: ...
    def ready_responses(self) -> list[ToolResponse]: ...
    def cancel(self, ids: list[str]) -> asyncio.Task[list[CancelReport]]: ...
    async def settle(self, timeout: float) -> list[CancelReport]: ...
    @property
    def outstanding(self) -> list[str]: ...


class Speaker(Protocol):
    """Where the model's 24 kHz voice goes (daemon.audio.AudioSink)."""

    def play(self, pcm: bytes) -> None: ...
    def flush(self) -> int: ...
    async def drain(self) -> None: ...
    @property
    def playing(self) -> bool: ...


@dataclass
class SessionResult:
    reason: str  # end_conversation | idle | max_duration | stopped | fatal | connection_lost | setup
    detail: str
    connections: int
    tool_calls: int
    duration: float


class _Outcome(Exception):
    def __init__(self, kind: str, reason: str = "", detail: str = "") -> None:
        super().__init__(kind, reason, detail)
        self.kind, self.reason, self.detail = kind, reason, detail


class InputBuffer:
    """Microphone audio and text turns waiting to be sent, in order. Audio is bounded (oldest dropped first), so a
    long outage cannot eat memory; text is always kept."""

    def __init__(self, max_seconds: float) -> None:
        self._items: deque[tuple[str, bytes | str]] = deque()
        self._audio_bytes = 0
        self._max = int(max_seconds * INPUT_RATE) * 2
        self._ready = asyncio.Event()
        self.dropped_bytes = 0
        self.sent_bytes = 0

    def push_audio(self, pcm: bytes) -> None:
        self._items.append(("audio", pcm))
        self._audio_bytes += len(pcm)
        while self._audio_bytes > self._max:
            for i, (kind, data) in enumerate(self._items):
                if kind == "audio":
                    del self._items[i]
                    self._audio_bytes -= len(data)
                    self.dropped_bytes += len(data)
                    break
        self._ready.set()

    def push_text(self, text: str) -> None:
        self._items.append(("text", text))
        self._ready.set()

    def unshift(self, kind: str, data: bytes | str) -> None:
        self._items.appendleft((kind, data))
        if kind == "audio":
            self._audio_bytes += len(data)
        self._ready.set()

    async def take(self) -> tuple[str, bytes | str]:
        """The next text, or as much queued audio as fits one message."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        kind, data = self._items.popleft()
        if kind == "text":
            return kind, data
        assert isinstance(data, bytes)
        chunks = [data]
        size = len(data)
        while self._items and self._items[0][0] == "audio" and size + len(self._items[0][1]) <= MAX_SEND_BYTES:
            more = self._items.popleft()[1]
            assert isinstance(more, bytes)
            chunks.append(more)
            size += len(more)
        self._audio_bytes -= size
        return "audio", b"".join(chunks)

    @property
    def queued_audio_bytes(self) -> int:
        return self._audio_bytes


def _seconds(text: str | None) -> float:
    """'10s', '1.5s', '2m' → seconds (GoAway's timeLeft)."""
    m = re.fullmatch(r"\s*([\d.]+)\s*(ms|s|m)?\s*", text or "")
    if not m:
        return 0.0
    return float(m.group(1)) * {"ms": 0.001, "m": 60.0}.get(m.group(2) or "s", 1.0)


def _explain_fatal(code: int, reason: str, model: str) -> str:
    text = reason or "no reason given"
    low = text.lower()
    if "api key" in low or "api_key" in low or code in (401, 403):
        return f"Gemini refused the API key ({code}: {text}); check the gemini-api-key credential"
    if "model" in low or code == 404:
        return f"Gemini does not offer model '{model}' for Live ({code}: {text}); check gemini.model"
    return f"Gemini closed the session for good ({code}: {text})"


class _Fields(logging.LoggerAdapter):
    """Adds the session's journal field to every line, keeping the line's own fields (TOOL, CALL_ID)."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


class LiveSession:
    def __init__(
        self,
        gemini: Gemini,
        conversation: Conversation,
        tools: ToolPort,
        declarations: list[dict[str, Any]],
        *,
        key: str,
        speaker: Speaker,
        observer: Emit | None = None,
        buffer_seconds: float = 20.0,
        client: Any = None,
        name: str = "1",
    ) -> None:
        self.gemini = gemini
        self.conversation = conversation
        self.tools = tools
        self.declarations = declarations
        self.key = key
        self.speaker = speaker
        self.observer = observer
        self.name = name
        self.log = _Fields(log, {"SESSION": name})
        self.client = client  # built once by the daemon: a new client costs ~20 ms on the wake → audio path
        self.input = InputBuffer(buffer_seconds)
        self.connections = 0
        self.tool_calls = 0
        self.fed_samples = 0  # microphone samples handed to this session so far
        self.handle: str | None = None
        self._outcome: asyncio.Future[_Outcome] | None = None
        self._stop: _Outcome | None = None
        self._last_activity = time.monotonic()
        self._model_turn = False
        self._goaway_at: float | None = None
        self._ending_since: float | None = None
        self._heard: list[str] = []
        self._said: list[str] = []
        self._connected = asyncio.Event()
        self._session: Any = None
        self._discard_turn = False  # after a local barge-in: the rest of this model turn is not played

    # ---- what the conversation loop uses ---------------------------------------------------------------------

    def feed(self, pcm: bytes) -> None:
        """Microphone audio, 16 kHz mono s16le. Kept (bounded) while the connection is down."""
        self.input.push_audio(pcm)
        self.fed_samples += len(pcm) // 2
        samples = np.frombuffer(pcm, dtype=np.int16)
        if samples.size and float(np.sqrt(np.mean(samples.astype(np.float32) ** 2))) > SPEECH_RMS:
            self._last_activity = time.monotonic()

    def send_text(self, text: str) -> None:
        """A user turn as text (`livehome say`, an MQTT command)."""
        self.input.push_text(text)
        self._last_activity = time.monotonic()

    def barge_in(self) -> int:
        """The user talked over the model (its wake word heard while it spoke): silence the speaker now and drop
        the rest of this model turn. Returns the bytes of speech dropped."""
        dropped = self.speaker.flush()
        self._discard_turn = self._model_turn
        self._last_activity = time.monotonic()
        self.log.info("barge-in: dropped %.2fs of queued speech", output_seconds(dropped))
        self._emit(Interrupted(dropped, local=True))
        return dropped

    @property
    def model_turn(self) -> bool:
        """Whether the model is in the middle of a turn (its audio may still be arriving)."""
        return self._model_turn

    @property
    def speaking(self) -> bool:
        """Whether the model is in a turn that is being played (not one the user talked over)."""
        return self._model_turn and not self._discard_turn

    def stop(self, reason: str = "stopped", detail: str = "") -> None:
        """End the conversation (a shutdown, an MQTT command, barge-in policy); tool calls are settled first."""
        self._stop = _Outcome("end", reason, detail)
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_exception(self._stop)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def run(self) -> SessionResult:
        started = time.monotonic()
        reason, detail = "connection_lost", ""
        try:
            client = self.client or make_client(self.gemini, self.key)
        except SetupError as exc:
            return SessionResult("setup", str(exc), 0, 0, 0.0)
        attempt = 0
        while True:
            if self._stop is not None:
                reason, detail = self._stop.reason, self._stop.detail
                break
            if time.monotonic() - started > self.conversation.max_duration:
                reason, detail = "max_duration", f"{self.conversation.max_duration:g}s"
                break
            try:
                outcome = await self._connection(client, started)
            except errors.APIError as exc:
                code = exc.code or 0
                text = exc.details if isinstance(exc.details, str) else (exc.message or str(exc.details or ""))
                if code in FATAL_CLOSE:
                    reason, detail = "fatal", _explain_fatal(code, text, self.gemini.model)
                    self.log.error("%s", detail)
                    break
                why = f"connection closed ({code}: {text or 'no reason'})"
            except websockets.exceptions.InvalidStatus as exc:
                status = exc.response.status_code
                if 400 <= status < 500 and status not in (408, 429):
                    reason, detail = "fatal", _explain_fatal(status, exc.response.reason_phrase, self.gemini.model)
                    self.log.error("%s", detail)
                    break
                why = f"the service answered HTTP {status}"
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
                if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                    reason = "fatal"
                    detail = f"TLS certificate of {self.gemini.endpoint or 'the service'} not trusted: {exc}"
                    self.log.error("%s (set gemini.ca_file?)", detail)
                    break
                why = f"cannot connect ({type(exc).__name__}: {exc})"
            else:
                if outcome.kind == "end":
                    reason, detail = outcome.reason, outcome.detail
                    break
                attempt = 0
                continue  # GoAway: straight onto a new connection with the newest handle
            finally:
                self._connected.clear()
            attempt += 1
            if attempt > self.gemini.reconnect_attempts:
                reason, detail = "connection_lost", f"gave up after {attempt - 1} reconnects: {why}"
                self.log.error("Gemini Live: %s", detail)
                break
            delay = min(8.0, 0.5 * 2 ** (attempt - 1)) * (0.8 + 0.4 * random.random())
            self.log.warning("Gemini Live: %s; reconnecting in %.1fs (attempt %d)", why, delay, attempt)
            self._emit(Reconnecting(why, attempt))
            await asyncio.sleep(delay)
        if self.tools.outstanding:  # no socket left to answer on: finish or cancel (with undo) what is running
            await self.tools.settle(self.conversation.settle_timeout)
        self.tools.ready_responses()  # nobody to deliver them to any more
        result = SessionResult(reason, detail, self.connections, self.tool_calls, time.monotonic() - started)
        self.log.info(
            "conversation ended: %s %s (%d connections, %d tool calls)",
            reason,
            detail,
            self.connections,
            self.tool_calls,
        )
        self._emit(ConversationEnded(reason, detail, result.duration))
        return result

    # ---- one connection --------------------------------------------------------------------------------------

    async def _connection(self, client: Any, started: float) -> _Outcome:
        resumed = self.handle is not None
        self._emit(Connecting(resumed))
        config = connect_config(self.gemini, self.declarations, self.handle)
        connect = client.aio.live.connect(model=self.gemini.model, config=config)
        async with asyncio.timeout(self.gemini.connect_timeout + 5):  # the SDK waits forever for setupComplete
            session = await connect.__aenter__()
        try:
            self.connections += 1
            self._goaway_at = None
            self._connected.set()
            self.log.info("Gemini Live connected%s", " (resumed)" if resumed else "")
            self._emit(Connected(resumed, self.connections))
            return await self._converse(session, started)
        finally:
            with contextlib.suppress(Exception):
                await connect.__aexit__(None, None, None)

    async def _converse(self, session: Any, started: float) -> _Outcome:
        loop = asyncio.get_running_loop()
        self._session = session
        self._outcome = loop.create_future()
        if self._stop is not None:
            self._outcome.set_exception(self._stop)
        workers = {
            "receiver": loop.create_task(self._receiver(session)),
            "input": loop.create_task(self._input_sender(session)),
            "answers": loop.create_task(self._answer_sender(session)),
            "watchdog": loop.create_task(self._watchdog(started)),
        }
        for task in workers.values():
            task.add_done_callback(self._worker_done)
        try:
            await asyncio.shield(self._outcome)
            raise AssertionError("the outcome future only ever carries an exception")
        except _Outcome as outcome:
            if outcome.kind == "end":
                await self._finish(session, workers)
            return outcome
        finally:
            self._session = None
            for task in workers.values():
                task.cancel()
            await asyncio.gather(*workers.values(), return_exceptions=True)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._outcome is None or self._outcome.done():
            return
        exc = task.exception()
        self._outcome.set_exception(exc if exc is not None else _Outcome("reconnect", "", "a worker stopped"))

    def _decide(self, outcome: _Outcome) -> None:
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_exception(outcome)

    async def _finish(self, session: Any, workers: dict[str, asyncio.Task[None]]) -> None:
        """Settle tool calls while the socket is still open, so finished ones are answered before it closes."""
        workers["input"].cancel()
        workers["watchdog"].cancel()
        if self.tools.outstanding:
            await self.tools.settle(self.conversation.settle_timeout)  # the tool layer reports each cancellation
        workers["answers"].cancel()
        await asyncio.gather(workers["answers"], return_exceptions=True)
        for response in self.tools.ready_responses():
            with contextlib.suppress(Exception):
                await self._send_answer(session, response)

    # ---- the three loops -------------------------------------------------------------------------------------

    async def _receiver(self, session: Any) -> None:
        while True:
            async for message in session.receive():
                self._on_message(message)

    async def _input_sender(self, session: Any) -> None:
        while True:
            kind, data = await self.input.take()
            try:
                if kind == "text":
                    await session.send_realtime_input(text=data)
                    self.log.info("user (text): %s", data)
                else:
                    blob = types.Blob(data=data, mime_type=f"audio/pcm;rate={INPUT_RATE}")
                    await session.send_realtime_input(audio=blob)
                    self.input.sent_bytes += len(data)
            except BaseException:
                self.input.unshift(kind, data)  # sent on the next connection
                raise

    async def _answer_sender(self, session: Any) -> None:
        while True:
            response = await self.tools.next_response()
            delivered = False
            try:
                await self._send_answer(session, response)
                delivered = True
            finally:
                if not delivered:
                    self.tools.requeue(response)

    async def _send_answer(self, session: Any, response: ToolResponse) -> None:
        answer = types.FunctionResponse(
            id=response.id,
            name=response.name,
            response=response.response,
            scheduling=types.FunctionResponseScheduling(response.scheduling) if response.scheduling else None,
        )
        await session.send_tool_response(function_responses=[answer])
        self.log.info(
            "answered %s %s: %s (%s)",
            response.name,
            response.id,
            response.outcome,
            response.scheduling or "-",
            extra={"TOOL": response.name, "CALL_ID": response.id},
        )
        self._emit(Answered(response.id, response.name, response.outcome, response.scheduling, response.response))

    async def _watchdog(self, started: float) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            if self.speaker.playing or self.tools.outstanding:
                self._last_activity = now
            if now - started > self.conversation.max_duration:
                self._decide(_Outcome("end", "max_duration", f"{self.conversation.max_duration:g}s"))
            elif self._ending_since is not None:
                done = not self._model_turn and not self.speaker.playing
                if done or now - self._ending_since > END_GRACE:
                    self._decide(_Outcome("end", "end_conversation", "the model ended it"))
            elif now - self._last_activity > self.conversation.idle_timeout and not self._model_turn:
                self._decide(_Outcome("end", "idle", f"nothing said for {self.conversation.idle_timeout:g}s"))
            if self._goaway_at is not None and (not self._model_turn or now >= self._goaway_at):
                self._decide(_Outcome("reconnect", "goaway"))

    # ---- server messages -------------------------------------------------------------------------------------

    def _on_message(self, msg: types.LiveServerMessage) -> None:
        if msg.server_content is not None:
            self._on_content(msg.server_content)
        if msg.tool_call is not None:
            self._last_activity = time.monotonic()
            for call in msg.tool_call.function_calls or []:
                self._on_call(call)
        if msg.tool_call_cancellation is not None:
            ids = list(msg.tool_call_cancellation.ids or [])
            self.log.info("Gemini cancelled tool calls %s", ", ".join(ids))
            self.tools.cancel(ids).add_done_callback(self._cancelled)  # stops the calls now, undoes in a task
        if msg.go_away is not None:
            left = _seconds(msg.go_away.time_left)
            self._goaway_at = time.monotonic() + max(0.0, left - GOAWAY_MARGIN)
            self.log.info(
                "Gemini Live GoAway: %.1fs left; moving to a new connection%s",
                left,
                "" if self.handle else " (no resumption handle yet: the context will be lost)",
            )
            self._emit(GoingAway(left))
        update = msg.session_resumption_update
        if update is not None and update.resumable and update.new_handle:
            self.handle = update.new_handle

    def _on_content(self, content: types.LiveServerContent) -> None:
        now = time.monotonic()
        if content.input_transcription and content.input_transcription.text:
            self._heard.append(content.input_transcription.text)
            self._last_activity = now
        if content.model_turn and content.model_turn.parts:
            if not self._model_turn:
                self._model_turn = True
                self._flush_heard()
                self._emit(Speaking())
            for part in content.model_turn.parts:
                blob = part.inline_data
                if blob is not None and blob.data and not self._discard_turn:
                    if blob.mime_type and f"rate={OUTPUT_RATE}" not in blob.mime_type:
                        self.log.warning("model audio in %s, expected %d Hz", blob.mime_type, OUTPUT_RATE)
                    self.speaker.play(blob.data)
            self._last_activity = now
        if content.output_transcription and content.output_transcription.text:
            self._said.append(content.output_transcription.text)
            self._last_activity = now
        if content.interrupted:
            dropped = self.speaker.flush()
            self.log.info("interrupted: dropped %.2fs of queued speech", output_seconds(dropped))
            self._emit(Interrupted(dropped, local=False))
            self._end_turn()
        if content.turn_complete:
            self._end_turn()

    def _end_turn(self) -> None:
        self._flush_heard()
        if self._said:
            text = "".join(self._said).strip()
            self.log.info("model: %s", text)
            self._emit(Transcript("model", text))
            self._said.clear()
        was_model_turn, self._model_turn = self._model_turn, False
        self._discard_turn = False
        self._last_activity = time.monotonic()
        if was_model_turn:
            self._emit(TurnEnded())

    def _flush_heard(self) -> None:
        if self._heard:
            text = "".join(self._heard).strip()
            self.log.info("user: %s", text)
            self._emit(Transcript("user", text))
            self._heard.clear()

    def _on_call(self, call: types.FunctionCall) -> None:
        if not call.id:
            self.log.error("Gemini sent a tool call without an id (%s); it cannot be answered", call.name)
            return
        args = dict(call.args or {})
        if call.name == END_CONVERSATION:
            # Answered here, not by the tool layer; the session ends once the goodbye has been spoken.
            self._ending_since = time.monotonic()
            self.log.info("the model ends the conversation")
            self._emit(ModelCalled(call.id, END_CONVERSATION, args, repeated=False))
            if self._session is not None:
                answer = ToolResponse(call.id, END_CONVERSATION, {"ok": True}, "SILENT", "success")
                task = asyncio.get_running_loop().create_task(self._send_answer(self._session, answer))
                task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a dropped socket is fine here
            return
        self.tool_calls += 1
        fresh = self.tools.submit(ToolCall(call.id, call.name or "", args))
        self.log.info(
            "tool call %s %s %s%s",
            call.name,
            call.id,
            args,
            "" if fresh else " (repeated id: ignored)",
            extra={"TOOL": call.name, "CALL_ID": call.id},
        )
        self._emit(ModelCalled(call.id, call.name or "", args, repeated=not fresh))

    def _cancelled(self, task: asyncio.Task[list[CancelReport]]) -> None:
        """The tool layer reports each cancellation itself; only a failure to cancel is the session's to log."""
        if task.cancelled() or task.exception() is not None:
            self.log.error(
                "cancelling tool calls failed: %s", task.exception() if not task.cancelled() else "cancelled"
            )

    def _emit(self, event: Event) -> None:
        if self.observer is not None:
            notify_all([self.observer], event, log)
