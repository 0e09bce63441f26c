"""One conversation with Gemini Live on the google-genai SDK, kept alive across GoAway, dropped sockets and a
service that loses the session.

Three loops share one connection: the receiver (model audio, transcripts, tool calls, cancellations, GoAway,
resumption handles, usage), the input sender (the uplink: microphone PCM, text and activity markers, which
survive reconnects) and the answer sender (tool answers from the tool port, requeued if the socket dies
mid-send, and only ever sent to an id the service's current session issued). A watchdog ends the conversation
on idle, max duration or end_conversation, and moves to a new connection on GoAway. The tool port is anything
shaped like the tool layer's Engine: this module knows nothing of MQTT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol

import websockets
from google.genai import errors, types

from ..audio.earcons import renewed_earcon
from ..audio.frames import SAMPLE_RATE
from ..calls import END_CONVERSATION
from ..config import Conversation, Gemini
from ..events import (
    Connected,
    Connecting,
    ConversationEnded,
    Emit,
    Event,
    GoingAway,
    ModelCalled,
    Reconnecting,
    Renewed,
    Transcript,
    notify_all,
)
from ..logs import logger
from .client import SetupError, make_client
from .closes import Verdict, judge
from .models import profile
from .setup import prepared
from .toolcalls import ToolCalls, ToolPort
from .turn import Turn
from .uplink import SPEECH_RMS, Endpointer, Uplink, rms

log = logger(__name__)

GOAWAY_MARGIN = 1.0  # reconnect this long before the service's deadline at the latest
END_GRACE = 15.0  # after end_conversation: how long the goodbye may take to arrive and play
STREAM_PAUSE = 1.0  # the microphone gated this long: audioStreamEnd
THRESHOLDS = {"high": 300.0, "low": 800.0, None: SPEECH_RMS}  # client-side endpointing by start_sensitivity


class Speaker(Protocol):
    """Where the model's 24 kHz voice goes (daemon.audio.outputs.AudioSink)."""

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
    tokens: int = 0


class _Outcome(Exception):
    def __init__(self, kind: str, reason: str = "", detail: str = "") -> None:
        super().__init__(kind, reason, detail)
        self.kind, self.reason, self.detail = kind, reason, detail


class _SetupRefused(Exception):
    """The service closed the connection before the session was set up."""

    def __init__(self, error: errors.APIError) -> None:
        super().__init__(str(error))
        self.error = error


def _seconds(text: str | None) -> float:
    """'10s', '1.5s', '2m' → seconds (GoAway's timeLeft)."""
    m = re.fullmatch(r"\s*([\d.]+)\s*(ms|s|m)?\s*", text or "")
    if not m:
        return 0.0
    return float(m.group(1)) * {"ms": 0.001, "m": 60.0}.get(m.group(2) or "s", 1.0)


def _kinds(msg: types.LiveServerMessage) -> list[str]:
    """What a server message carries, with sizes, for -v: `server_content(audio 3840 B, output_transcription)`."""
    out = []
    for name in type(msg).model_fields:
        value = getattr(msg, name)
        if value is None:
            continue
        if name == "server_content":
            inner = [k for k in type(value).model_fields if getattr(value, k) not in (None, False)]
            parts = value.model_turn.parts if value.model_turn and value.model_turn.parts else []
            audio = sum(len(p.inline_data.data or b"") for p in parts if p.inline_data)
            inner = [f"audio {audio} B" if k == "model_turn" and audio else k for k in inner]
            name += f"({', '.join(inner)})"
        out.append(name)
    return out


def _close_text(exc: errors.APIError) -> str:
    return exc.details if isinstance(exc.details, str) else (exc.message or str(exc.details or ""))


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
        handle: str | None = None,
        opened_at: float | None = None,
        end_after_turn: bool = False,
    ) -> None:
        self.gemini = gemini
        self.conversation = conversation
        self.tools = tools
        self.declarations = declarations
        self.key = key
        self.speaker = speaker
        self.observer = observer
        self.name = name
        self.profile = profile(gemini.model)
        self.log = _Fields(log, {"SESSION": name})
        self.client = client  # built once by the daemon: a new client costs ~20 ms on the wake → audio path
        vad = gemini.vad
        endpointer = None
        if not vad.enabled:
            endpointer = Endpointer(
                THRESHOLDS[vad.start_sensitivity],
                0.3 if vad.prefix_padding is None else vad.prefix_padding,
                0.8 if vad.silence is None else vad.silence,
            )
        self.input = Uplink(buffer_seconds, endpointer, self.log)
        self.calls = ToolCalls(tools, self.profile, declarations, self.input, self._emit, self.log)
        self.connections = 0
        self.tokens = 0
        self.fed_samples = 0  # microphone samples handed to this session so far
        self.handle: str | None = handle  # resume a previous conversation (conversation.remember)
        self.opened_at = opened_at if opened_at is not None else time.monotonic()  # the wake word, the command
        self.end_after_turn = end_after_turn  # an announcement without a follow-up: one model turn, then the end
        self._first_audio_logged = False
        self.resumable = False
        self._outcome: asyncio.Future[_Outcome] | None = None
        self._stop: _Outcome | None = None
        self._last_activity = time.monotonic()
        self._last_feed = 0.0
        self._goaway_at: float | None = None
        self._ending_since: float | None = None
        self._goodbye_done = False  # the turn that ended the conversation is complete
        self.turn = Turn(speaker, self._emit, self.log)
        self._connected = asyncio.Event()
        self._stopped = asyncio.Event()
        self._session: Any = None
        self._spoken = True  # whether the user's last words were spoken (False after a text turn)

    # ---- what the conversation loop uses ---------------------------------------------------------------------

    def feed(self, pcm: bytes) -> None:
        """Microphone audio, 16 kHz mono s16le. Kept (bounded) while the connection is down or a call is pending."""
        self.input.push_audio(pcm)
        self.fed_samples += len(pcm) // 2
        self._last_feed = time.monotonic()
        if rms(pcm) > SPEECH_RMS:
            self._last_activity = self._last_feed

    def send_text(self, text: str) -> None:
        """A user turn as text (`livehome say`, an MQTT command): never counts as someone speaking in the room."""
        self.input.push_text(text)
        self._spoken = False
        self.tools.heard(text, spoken=False)
        self._last_activity = time.monotonic()

    def barge_in(self) -> int:
        """The user talked over the model (its wake word heard while it spoke): silence the speaker now and drop
        the rest of this model turn. Returns the bytes of speech dropped."""
        self._last_activity = time.monotonic()
        return self.turn.barge_in()

    @property
    def model_turn(self) -> bool:
        """Whether the model is in the middle of a turn (its audio may still be arriving)."""
        return self.turn.model_turn

    @property
    def speaking(self) -> bool:
        """Whether the model is in a turn that is being played (not one the user talked over)."""
        return self.turn.speaking

    def stop(self, reason: str = "stopped", detail: str = "") -> None:
        """End the conversation (a shutdown, an MQTT command, barge-in policy); tool calls are settled first."""
        self._stop = _Outcome("end", reason, detail)
        self._stopped.set()  # a connect or a backoff in progress gives up now: SIGTERM must end within 5 s
        if self._outcome is not None and not self._outcome.done():
            self._outcome.set_exception(self._stop)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def tool_calls(self) -> int:
        return self.calls.count

    async def wait_connected(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def run(self) -> SessionResult:
        started = time.monotonic()
        reason, detail = "connection_lost", ""
        voice = f", voice {self.gemini.voice}" if self.gemini.voice else ""
        self.log.info("conversation %s with %s%s", self.name, self.gemini.model, voice)
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
            verdict = None
            try:
                outcome = await self._connection(client, started)
            except _SetupRefused as exc:
                code, text = exc.error.code or 0, _close_text(exc.error)
                verdict = judge(code, text, at_setup=True, resuming=self.handle is not None, model=self.gemini.model)
            except errors.APIError as exc:
                code, text = exc.code or 0, _close_text(exc)
                verdict = judge(code, text, at_setup=False, resuming=False, model=self.gemini.model)
            except websockets.exceptions.InvalidStatus as exc:
                status = exc.response.status_code
                if 400 <= status < 500 and status not in (408, 429):
                    verdict = judge(status, exc.response.reason_phrase, at_setup=True, resuming=False,
                                    model=self.gemini.model)
                    verdict = Verdict("fatal", verdict.detail)
                else:
                    verdict = Verdict("resume", f"the service answered HTTP {status}")
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
                if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                    reason = "fatal"
                    detail = f"TLS certificate of {self.gemini.endpoint or 'the service'} not trusted: {exc}"
                    self.log.error("%s (set gemini.ca_file?)", detail)
                    break
                verdict = Verdict("resume", f"cannot connect ({type(exc).__name__}: {exc})")
            else:
                if outcome.kind == "end":
                    reason, detail = outcome.reason, outcome.detail
                    break
                attempt = 0
                continue  # GoAway: straight onto a new connection with the newest handle
            finally:
                self._connected.clear()
            if verdict.action == "fatal":
                reason, detail = "fatal", verdict.detail
                self.log.error("%s", detail)
                break
            if verdict.action == "fresh" and self.handle is not None:
                self.log.warning("Gemini Live: %s; starting a new session (the handle is dropped)", verdict.detail)
                self.handle, self.resumable = None, False
            attempt += 1
            if attempt > self.gemini.reconnect_attempts:
                reason, detail = "connection_lost", f"gave up after {attempt - 1} reconnects: {verdict.detail}"
                self.log.error("Gemini Live: %s", detail)
                break
            delay = min(8.0, 0.5 * 2 ** (attempt - 1)) * (0.8 + 0.4 * random.random())
            self.log.warning("Gemini Live: %s; reconnecting in %.1fs (attempt %d)", verdict.detail, delay, attempt)
            self._emit(Reconnecting(verdict.detail, attempt))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), delay)  # a stop() ends the wait at once
        if self.tools.outstanding:  # no socket left to answer on: finish or cancel (with undo) what is running
            await self.tools.settle(self.conversation.settle_timeout)
        self.tools.ready_responses()  # nobody to deliver them to any more
        self.input.clear()
        duration = time.monotonic() - started
        result = SessionResult(reason, detail, self.connections, self.tool_calls, duration, self.tokens)
        self.log.info(
            "conversation ended: %s%s (%.1fs, %d connection%s, %d tool call%s, %d tokens)",
            reason,
            f": {detail}" if detail else "",
            duration,
            self.connections,
            "" if self.connections == 1 else "s",
            self.tool_calls,
            "" if self.tool_calls == 1 else "s",
            self.tokens,
        )
        self._emit(ConversationEnded(reason, detail, duration))
        return result

    # ---- one connection --------------------------------------------------------------------------------------

    async def _connection(self, client: Any, started: float) -> _Outcome:
        resumed = self.handle is not None
        self._emit(Connecting(resumed))
        config = prepared(self.gemini, self.declarations, self.handle)
        connect = client.aio.live.connect(model=self.gemini.model, config=config)
        opening = asyncio.ensure_future(connect.__aenter__())
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            # The SDK waits forever for setupComplete: bounded here, and a stop() does not wait for it.
            await asyncio.wait({opening, stopped}, timeout=self.gemini.connect_timeout + 5,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not opening.done():
            opening.cancel()
            with contextlib.suppress(BaseException):
                await opening
            if self._stop is not None:
                return self._stop
            raise TimeoutError(f"no setupComplete within {self.gemini.connect_timeout + 5:g}s")
        try:
            session = opening.result()
        except errors.APIError as exc:
            raise _SetupRefused(exc) from exc
        try:
            self.connections += 1
            self._goaway_at = None
            self.turn.reset()
            self.calls.connected(self.handle)
            self._connected.set()
            self.log.info("Gemini Live connected%s", " (resumed)" if resumed else "")
            if not resumed and self.connections > 1:
                await self._renewed(session)
            return await self._converse(session, started, Connected(resumed, self.connections))
        finally:
            with contextlib.suppress(Exception):
                await connect.__aexit__(None, None, None)

    async def _renewed(self, session: Any) -> None:
        """A new session after the service lost the last one: a short cue for the user, and one line for the
        model saying what already happened, so it neither repeats a call nor claims one did not run."""
        self.speaker.play(renewed_earcon())
        ran = self.calls.ledger.ran_before()
        parts = []
        for name, args, result in ran:
            outcome = json.dumps(result.response, ensure_ascii=False) if result else "still running"
            parts.append(f"{name}({json.dumps(args, ensure_ascii=False)}) -> {outcome}")
        line = "(The connection to the assistant was renewed and the conversation so far was lost."
        line += (" These tool calls already ran: " + "; ".join(parts) + ".)") if parts else ")"
        self.log.info("a new session: told the model %s", line)
        self._emit(Renewed(len(ran)))
        with contextlib.suppress(Exception):
            await session.send_client_content(
                turns=types.Content(role="user", parts=[types.Part(text=line)]), turn_complete=False
            )

    async def _converse(self, session: Any, started: float, connected: Connected) -> _Outcome:
        loop = asyncio.get_running_loop()
        self._session = session
        self._outcome = loop.create_future()
        if self._stop is not None:
            self._outcome.set_exception(self._stop)
        workers = {  # the input first: what was said with the wake word goes up before anything else runs
            "input": loop.create_task(self._input_sender(session)),
            "receiver": loop.create_task(self._receiver(session)),
            "answers": loop.create_task(self.calls.sender(session)),
            "watchdog": loop.create_task(self._watchdog(started)),
        }
        for task in workers.values():
            task.add_done_callback(self._worker_done)
        loop.call_soon(self._emit, connected)  # its observers (MQTT state, hooks) after the first audio
        try:
            await asyncio.shield(self._outcome)
            raise AssertionError("the outcome future only ever carries an exception")
        except _Outcome as outcome:
            if outcome.kind == "end":
                await self._finish(session, workers)
            return outcome.with_traceback(None)
        finally:
            self._session = None
            for task in workers.values():
                task.cancel()
            await asyncio.gather(*workers.values(), return_exceptions=True)
            # The outcome's traceback holds this frame, and the cancelled workers' tracebacks hold theirs: cycles
            # through the whole connection (its 256 KiB TLS buffer included) that only a full collection frees.
            self._outcome = None
            workers.clear()

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
        if self.tools.outstanding:  # running calls get their time while the answer loop still delivers
            await self.tools.settle(self.conversation.settle_timeout)
        workers["answers"].cancel()
        await asyncio.gather(workers["answers"], return_exceptions=True)
        await self.calls.settle_and_answer(session, 0.0)

    # ---- the three loops -------------------------------------------------------------------------------------

    async def _receiver(self, session: Any) -> None:
        while True:
            messages = session.receive().__aiter__()  # receive() ends after each turnComplete: open it again
            while True:
                try:
                    message = await messages.__anext__()
                except StopAsyncIteration:
                    break
                except (TypeError, ValueError) as exc:  # a frame newer than the SDK: skip it, keep listening
                    self.log.warning("skipped a message the SDK could not read: %s", exc)
                    break
                self._on_message(message)
                if message.tool_call_cancellation is not None:
                    # The undo goes out before the messages already waiting are read (~0.3 ms of SDK parsing
                    # each). Not after a call: a cancellation in the same breath must still find it unpublished.
                    await asyncio.sleep(0)

    async def _input_sender(self, session: Any) -> None:
        while True:
            kind, data = await self.input.take()
            try:
                if kind == "text":
                    await session.send_realtime_input(text=data)
                    self.log.info("user (text): %s", data)
                elif kind == "audio":
                    blob = types.Blob(data=data, mime_type=f"audio/pcm;rate={SAMPLE_RATE}")
                    await session.send_realtime_input(audio=blob)
                    self.input.sent_bytes += len(data)
                    if not self._first_audio_logged:
                        self._first_audio_logged = True
                        took = (time.monotonic() - self.opened_at) * 1000
                        self.log.info("first audio on its way to Gemini %.0f ms after the conversation opened", took)
                elif kind == "activity_start":
                    await session.send_realtime_input(activity_start=types.ActivityStart())
                elif kind == "activity_end":
                    await session.send_realtime_input(activity_end=types.ActivityEnd())
                else:
                    await session.send_realtime_input(audio_stream_end=True)
                self.log.debug("sent %s%s", kind, f" ({len(data)} bytes)" if isinstance(data, bytes) and data else "")
            except BaseException:
                self.input.unshift(kind, data)  # sent on the next connection
                raise
            # One message per turn of the loop: a backlog (the pre-roll, up to 20 s caught up after a reconnect)
            # does not hold the receiver, tool answers and undos behind it.
            await asyncio.sleep(0)

    async def _watchdog(self, started: float) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            if self.speaker.playing or self.tools.outstanding:
                self._last_activity = now
            if self.input.streaming and now - self._last_feed > STREAM_PAUSE:
                self.input.end_stream()
            if now - started > self.conversation.max_duration:
                self._decide(_Outcome("end", "max_duration", f"{self.conversation.max_duration:g}s"))
            elif self._ending_since is not None:
                done = self._goodbye_done and not self.turn.model_turn and not self.speaker.playing
                if done or now - self._ending_since > END_GRACE:
                    self._decide(_Outcome("end", "end_conversation", "the model ended it"))
            elif self.end_after_turn and self.turn.completed and not self.turn.model_turn and not self.speaker.playing:
                self._decide(_Outcome("end", "announced", "said what it had to say"))
            elif now - self._last_activity > self.conversation.idle_timeout and not self.turn.model_turn:
                self._decide(_Outcome("end", "idle", f"nothing said for {self.conversation.idle_timeout:g}s"))
            if self._goaway_at is not None and (not self.turn.model_turn or now >= self._goaway_at):
                self._decide(_Outcome("reconnect", "goaway"))

    # ---- server messages -------------------------------------------------------------------------------------

    def _on_message(self, msg: types.LiveServerMessage) -> None:
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("received %s", ", ".join(_kinds(msg)))
        content = msg.server_content
        if content is not None:
            if self.turn.content(content):
                self._last_activity = time.monotonic()
            turn_over = content.generation_complete or content.turn_complete or content.interrupted
            if self._ending_since is not None and turn_over:
                self._goodbye_done = True
        if msg.tool_call is not None:
            self._last_activity = time.monotonic()
            for call in msg.tool_call.function_calls or []:
                self._on_call(call)
        if msg.tool_call_cancellation is not None:
            ids = list(msg.tool_call_cancellation.ids or [])
            self.log.info("Gemini cancelled tool calls %s", ", ".join(ids))
            self.calls.cancel(ids)
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
        if update is not None:
            self.resumable = bool(update.resumable)
            if update.resumable and update.new_handle:
                self.handle = update.new_handle
                self.calls.ledger.handle(update.new_handle)
        usage = msg.usage_metadata
        if usage is not None and usage.total_token_count:
            self.tokens += usage.total_token_count

    def _on_call(self, call: types.FunctionCall) -> None:
        if not call.id:
            self.log.error("Gemini sent a tool call without an id (%s); it cannot be answered", call.name)
            return
        args = dict(call.args or {})
        name = call.name or ""
        self.turn.flush_heard()  # what the user said comes before what the model does about it
        if name == END_CONVERSATION:
            self._end_conversation(call.id, args)
            return
        self.calls.call(call.id, name, args, spoken=self._spoken)

    def _end_conversation(self, call_id: str, args: dict[str, Any]) -> None:
        """Answered here, not by the tool layer; the session ends once that turn is complete and the goodbye has
        been played (bounded by END_GRACE)."""
        self._ending_since = time.monotonic()
        self._goodbye_done = False
        self.log.info("the model ends the conversation after this turn")
        self._emit(ModelCalled(call_id, END_CONVERSATION, args, repeated=False))
        if self._session is not None:
            self.calls.answer_now(self._session, call_id, END_CONVERSATION, args, {"ok": True})

    def _emit(self, event: Event) -> None:
        if isinstance(event, Transcript) and event.who == "user":  # the user spoke: their words, as heard
            self._spoken = True
            self.tools.heard(event.text, spoken=True)
        if self.observer is not None:
            notify_all([self.observer], event, log)

