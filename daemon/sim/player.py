"""The scenario player: the model's side of the conversation, one turn at a time.

Each turn waits for user input matching its trigger and then runs its steps against the newest connection, so a
scenario carries on across the client's reconnects as a conversation with the service does. Frames are shaped as
the real service shapes them (../shared/docs/live-real-service.md): audio and its outputTranscription share one
serverContent; a function call shows in modelTurn.parts before its toolCall; a turn ends with generationComplete
(unless interrupted), then turnComplete carrying usageMetadata and fields clients rarely see, then an unprompted
sessionResumptionUpdate.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from websockets.protocol import State

from ..audio.speech import SpeechUnavailable, synthesize
from .connection import Connection
from .protocol import DEADLINE, TURN_COMPLETE_EXTRAS, duration_json, short
from .records import Call, Session
from .resumption import send_update
from .scenario import Turn
from .steps import AwaitTools, CallSpec, Close, ExpectReconnect, GoAway, ResumptionUpdate, Say, Step
from .usage import TurnUsage, json_chars
from .vad import Utterance

if TYPE_CHECKING:
    from .server import Simulator

log = logging.getLogger("livehome.sim.player")


class _ScenarioFailed(Exception):
    """The scenario cannot go on (no connection to send to, no reconnect)."""


class _EndTurn(Exception):
    """Barge-in: the rest of the turn's steps are skipped."""


def _contains(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(k in actual and _contains(actual[k], v) for k, v in wanted.items())
    return bool(actual == wanted)


def _fallback_voice(text: str, rate: int) -> bytes:
    """A syllable-ish tone of plausible length when espeak-ng is missing, so the protocol still runs."""
    syllables = max(2, len(text) // 3)
    t = np.arange(int(rate * 0.12)) / rate
    syllable = (np.sin(2 * np.pi * 180 * t) * np.hanning(t.size) * 6000).astype(np.int16)
    gap = np.zeros(int(rate * 0.04), dtype=np.int16)
    return np.concatenate([np.concatenate([syllable, gap]) for _ in range(syllables)]).tobytes()


@dataclass
class Input:
    """Something the user typed or said, for the player to match against the waiting turn's trigger."""

    kind: Literal["text", "speech"]
    conn: int
    text: str | None = None
    utterance: Utterance | None = None

    def describe(self) -> str:
        if self.kind == "text":
            return f"text {self.text!r}"
        assert self.utterance is not None
        return f"speech ({self.utterance.duration:.2f} s)"


@dataclass
class _TurnCtx:
    """Where a turn is, for messages and for steps that wait on an earlier one."""

    index: int
    turn: Turn
    step: str = ""
    marker: int | None = None  # connection that a go_away/abort/close step ended


class Player:
    """Plays the scenario against the simulator's current connection.

    Part of the Simulator, kept apart for size: it reads the simulator's connections and sessions and records
    through it.
    """

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.scenario = sim.scenario
        self.inputs: asyncio.Queue[Input] = asyncio.Queue()
        self.done = asyncio.Event()  # the last turn ran, or the scenario failed
        self.position = "not started"
        self.failed: str | None = None
        self.speech_seq = 0  # counts starts of user speech: one during the model's audio is a barge-in
        # Where the model's generation is since the last turnComplete: turn_complete adds generationComplete
        # unless the generation already completed or was interrupted.
        self.generation: Literal["none", "open", "complete", "interrupted"] = "none"
        self._voices: dict[str, bytes] = {}
        self._record = sim._record
        self._violation = sim._violation
        self._notify = sim._notify
        self._wait_change = sim._wait_change

    @property
    def _current(self) -> Connection | None:
        """The connection that last completed setup; None once it has closed."""
        return self.sim._current

    def offer(self, item: Input) -> None:
        self.inputs.put_nowait(item)

    async def prerender(self) -> None:
        texts = {s.say.text for s in self.scenario.steps() if s.say}
        voice = self.scenario.settings.voice

        def render(text: str) -> bytes:
            try:
                return synthesize(text, voice.rate, voice=voice.voice, speed=voice.speed)
            except SpeechUnavailable as exc:
                log.warning("model voice falls back to a tone: %s", exc)
                return _fallback_voice(text, voice.rate)

        for text in texts:
            if text not in self._voices:
                self._voices[text] = await asyncio.to_thread(render, text)

    async def run(self) -> None:
        while True:
            await self._play()
            if not self.sim.loop or self.failed:
                break
            self._record(0, "event", "loop")  # --loop: the next input starts the first turn again
        log.info("scenario %s finished: later input is not answered (simulate --loop replays it)", self.scenario.name)
        while True:
            self._unexpected(await self.inputs.get(), None)

    async def _play(self) -> None:
        turns = self.scenario.turns
        ctx: _TurnCtx | None = None
        try:
            for index, turn in enumerate(turns):
                self.position = f"{turn.label(index)} of {len(turns)}: waiting for {turn.on.describe()}"
                trigger = await self._next_input(turn, index)
                ctx = _TurnCtx(index, turn)
                self._record(trigger.conn, "event", "turn_start", turn=index + 1, name=turn.name,
                             trigger=trigger.describe())
                with contextlib.suppress(_EndTurn):
                    await self._steps(turn.steps, ctx)
                self._record(self._current.number if self._current else 0, "event", "turn_end", turn=index + 1)
            self.position = "finished"
            self._record(0, "event", "finished")
        except _ScenarioFailed as exc:
            where = f"{ctx.turn.label(ctx.index)}, {ctx.step}" if ctx else self.position
            self.failed = f"{where}: {exc}"
            self.position = f"failed at {self.failed}"
            self._violation(0, f"scenario stopped at {self.failed}")
        finally:
            self.done.set()
            self._notify()

    async def _next_input(self, turn: Turn, index: int) -> Input:
        while True:
            item = await self.inputs.get()
            if item.kind == "text" and item.text is not None and turn.on.accepts_text(item.text):
                return item
            if item.kind == "speech" and item.utterance and turn.on.accepts_speech(item.utterance.duration):
                return item
            self._unexpected(item, (turn, index))

    def _unexpected(self, item: Input, waiting: tuple[Turn, int] | None) -> None:
        where = (f"{waiting[0].label(waiting[1])} expects {waiting[0].on.describe()}" if waiting
                 else "the scenario has ended")
        self._record(item.conn, "event", "unexpected_input", input=item.describe())
        if self.scenario.settings.unexpected_input == "violation":
            self._violation(item.conn, f"unexpected user input: {item.describe()} ({where})")

    async def _steps(self, steps: list[Step], ctx: _TurnCtx) -> None:
        for number, step in enumerate(steps, 1):
            ctx.step = f"step {number} ({step.kind})"
            self.position = f"{ctx.turn.label(ctx.index)}, {ctx.step}"
            await getattr(self, f"_step_{step.kind}")(step.value, ctx)

    async def _conn(self) -> Connection:
        """The connection steps talk to: the newest set-up one, waiting for the client to reconnect if needed."""
        timeout = self.scenario.settings.reconnect_timeout
        deadline = time.monotonic() + timeout
        while True:
            conn = self._current
            if conn is not None and conn.open:
                return conn
            if not await self._wait_change(deadline):
                raise _ScenarioFailed(f"no open connection from the client for {timeout:g} s")

    @property
    def _session(self) -> Session | None:
        return self._current.session if self._current else None

    async def _server_content(self, kind: str, content: dict[str, Any], **detail: Any) -> None:
        conn = await self._conn()
        await conn.send(kind, {"serverContent": content}, **detail)

    async def _step_input_transcription(self, text: str, ctx: _TurnCtx) -> None:
        conn = await self._conn()
        if not conn.input_transcription:
            self._record(conn.number, "event", "skipped", step="input_transcription",
                         why="the client did not enable input_audio_transcription")
            return
        await conn.send("input_transcription", {"serverContent": {"inputTranscription": {"text": text}}}, text=text)

    async def _step_tool_call(self, calls: list[CallSpec], ctx: _TurnCtx) -> None:
        conn = await self._conn()
        assert conn.session is not None
        out = []
        now = time.monotonic()
        for spec in calls:
            call_id = spec.id or f"function-call-{secrets.randbelow(10**19):019d}"
            if spec.name not in conn.info.declared_tools:
                self._violation(conn.number, f"the scenario calls {spec.name!r} but the client's setup does not "
                                             f"declare it (declared: {', '.join(conn.info.declared_tools) or 'none'})")
            call = conn.session.calls.get(call_id)
            if call is None:
                conn.session.calls[call_id] = Call(call_id, spec.name, dict(spec.args), now, conn.number)
            else:
                call.times_sent += 1
                call.sent = now
            out.append({"id": call_id, "name": spec.name, "args": spec.args})
        self.generation = "open"
        conn.usage.response.text_chars += json_chars(out)
        # The service shows the calls in the model's turn too, just before toolCall; clients act on toolCall only.
        parts = [{"functionCall": call} for call in out]
        await conn.send("function_call_parts", {"serverContent": {"modelTurn": {"parts": parts}}},
                        ids=[c["id"] for c in out])
        await conn.send("tool_call", {"toolCall": {"functionCalls": out}}, calls=out)

    async def _step_await_tools(self, spec: AwaitTools, ctx: _TurnCtx) -> None:
        timeout = spec.timeout or self.scenario.settings.tool_timeout
        deadline = time.monotonic() + timeout
        session = self._session
        ids = spec.ids if spec.ids is not None else [
            c.id for c in (session.calls.values() if session else []) if c.state == "outstanding"]
        self._record(self._current.number if self._current else 0, "event", "await_tools", ids=ids)
        while True:
            session = self._session
            missing = [i for i in ids if session is None or i not in session.calls]
            pending = [i for i in ids if session and i in session.calls and session.calls[i].state == "outstanding"]
            if session is not None and missing:
                conn = self._current
                self._violation(conn.number if conn else 0,
                                f"await_tools: call(s) {', '.join(missing)} are not known to session "
                                f"{session.number} (connection {conn.number if conn else '?'} "
                                f"{'resumed an older handle' if conn and conn.info.resumed else 'started afresh'})")
                return
            if session is not None and not pending:
                break
            if not await self._wait_change(deadline):
                if spec.on_timeout == "violation":
                    self._violation(self._current.number if self._current else 0,
                                    f"no response to tool call(s) {', '.join(pending or ids)} within {timeout:g} s")
                return
        for call_id, wanted in spec.expect.items():
            got = [r for r in self.sim.tool_responses if r.id == call_id and r.accepted]
            if not got:
                self._violation(0, f"await_tools: call {call_id!r} ended without a response to check")
            elif not _contains(got[-1].response, wanted):
                self._violation(got[-1].conn, f"response to {call_id!r} is {short(got[-1].response)}, expected it "
                                              f"to contain {short(wanted)}")
        for call_id, earlier in spec.same_as.items():
            self._same_as(call_id, earlier)

    def _same_as(self, call_id: str, earlier: str) -> None:
        """A re-issued call's answer must equal what the client answered before (accepted or not: an answer sent
        to a call a resume forgot is still the client's result). Nothing to compare if it never answered."""
        got = [r for r in self.sim.tool_responses if r.id == call_id and r.accepted]
        before = [r for r in self.sim.tool_responses if r.id == earlier]
        if not got:
            self._violation(0, f"await_tools: call {call_id!r} ended without a response to compare")
        elif not before:
            self._record(got[-1].conn, "event", "not_compared", id=call_id, same_as=earlier,
                         why=f"the client never answered {earlier!r}")
        elif got[-1].response != before[-1].response:
            self._violation(got[-1].conn, f"response to {call_id!r} is {short(got[-1].response)}; the same call "
                                          f"{earlier!r} was answered {short(before[-1].response)}")

    async def _step_say(self, say: Say, ctx: _TurnCtx) -> None:
        conn = await self._conn()
        transcript = say.text if say.transcript is True else (say.transcript or "")
        self.generation = "open"
        if conn.text_mode:
            conn.usage.response.text_chars += len(say.text)
            for word in say.text.split(" "):
                if not await conn.send("model_text", {"serverContent": {"modelTurn": {"parts": [
                        {"text": word + " "}]}}}, record=False):
                    break
            self._record(conn.number, "out", "model_text", text=say.text)
            return
        voice = self.scenario.settings.voice
        pcm = self._voices.get(say.text)
        if pcm is None:
            pcm = await asyncio.to_thread(synthesize, say.text, voice.rate, voice.voice, voice.speed)
            self._voices[say.text] = pcm
        pace = say.pace or ("realtime" if self.sim.realtime_audio else self.scenario.settings.pace)
        chunk_bytes = max(2, int(voice.rate * voice.chunk) * 2)
        chunks = [pcm[i : i + chunk_bytes] for i in range(0, len(pcm), chunk_bytes)]
        words = transcript.split() if conn.output_transcription else []
        total = len(pcm) / 2 / voice.rate
        watch = say.on_barge_in is not None
        seq = self.speech_seq
        mime = f"audio/pcm;rate={voice.rate}"
        self._record(conn.number, "out", "audio", text=say.text, seconds=round(total, 3), chunks=len(chunks),
                     rate=voice.rate, pace=pace)
        t0 = time.monotonic()
        sent_words = 0
        sent = 0
        barged = False
        for i, chunk in enumerate(chunks):
            if pace == "realtime":
                due = t0 + i * voice.chunk
                while not (barged := watch and self.speech_seq != seq) and time.monotonic() < due:
                    await self._wait_change(due)
            barged = watch and self.speech_seq != seq
            if barged:
                break
            content: dict[str, Any] = {"modelTurn": {"parts": [
                {"inlineData": {"mimeType": mime, "data": base64.b64encode(chunk).decode()}}]}}
            upto = round((i + 1) / len(chunks) * len(words))
            text = ""
            if upto > sent_words:  # the words due by the end of this chunk ride in the same serverContent
                piece = " ".join(words[sent_words:upto])
                text = piece if sent_words == 0 else " " + piece
                content["outputTranscription"] = {"text": text}
            if not await conn.send("audio_chunk", {"serverContent": content}, record=False):
                break
            sent += 1
            conn.usage.response.audio_seconds += len(chunk) / 2 / voice.rate
            if text:
                self._record(conn.number, "out", "output_transcription", text=text, with_audio=True)
                sent_words = upto
            if pace == "fast":
                await asyncio.sleep(0)
        if watch and not barged:
            # The client is still playing what it was sent; speech before that ends is a barge-in.
            played = t0 + total
            while not (barged := self.speech_seq != seq) and await self._wait_change(played):
                pass
        self._record(conn.number, "out", "audio_end", chunks_sent=sent,
                     seconds_sent=round(min(total, sent * voice.chunk), 3), barge_in=barged)
        if barged and say.on_barge_in is not None:
            self._record(conn.number, "event", "barge_in", after_chunks=sent)
            await self._steps(say.on_barge_in, ctx)
            raise _EndTurn

    async def _step_generation_complete(self, _: bool, ctx: _TurnCtx) -> None:
        await self._server_content("generation_complete", {"generationComplete": True})
        self.generation = "complete"

    async def _step_turn_complete(self, _: bool, ctx: _TurnCtx) -> None:
        """generationComplete if due, then turnComplete with usageMetadata on the same frame, then (if the client
        enabled resumption) the service's unprompted sessionResumptionUpdate."""
        conn = await self._conn()
        if self.generation not in ("complete", "interrupted"):
            await conn.send("generation_complete", {"serverContent": {"generationComplete": True}}, implicit=True)
        self.generation = "none"
        usage, conn.usage = conn.usage.metadata(), TurnUsage()
        frame = {"serverContent": {"turnComplete": True, **TURN_COMPLETE_EXTRAS}, "usageMetadata": usage}
        if not await conn.send("turn_complete", frame, usage=usage):
            return
        conn.info.tokens.add(usage)
        if conn.resumption:
            await send_update(conn, self.sim.handles, auto=True)

    async def _step_interrupted(self, _: bool, ctx: _TurnCtx) -> None:
        await self._server_content("interrupted", {"interrupted": True})
        self.generation = "interrupted"

    async def _step_cancel_tools(self, ids: list[str], ctx: _TurnCtx) -> None:
        conn = await self._conn()
        now = time.monotonic()
        for call_id in ids:
            call = conn.session.calls.get(call_id) if conn.session else None
            if call is not None and call.state == "outstanding":
                call.state, call.changed = "cancelled", now
        await conn.send("tool_call_cancellation", {"toolCallCancellation": {"ids": ids}}, ids=ids)

    async def _step_go_away(self, spec: GoAway, ctx: _TurnCtx) -> None:
        conn = await self._conn()
        left = duration_json(spec.time_left)
        if await conn.send("go_away", {"goAway": {"timeLeft": left}}, time_left=left):
            ctx.marker = conn.number
            conn.expiry = asyncio.create_task(self._expire(conn, spec.time_left))

    async def _expire(self, conn: Connection, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if conn.ws.state is State.OPEN:
            self._record(conn.number, "event", "go_away_expired")
            await conn.close(*DEADLINE)

    async def _step_resumption_update(self, spec: ResumptionUpdate, ctx: _TurnCtx) -> None:
        conn = await self._conn()
        if not conn.resumption:
            self._violation(conn.number, "the scenario issues a session resumption handle, but the client's setup "
                                         "did not enable session resumption (setup.sessionResumption)")
            return
        await send_update(conn, self.sim.handles, resumable=spec.resumable, force=spec.force)

    async def _step_forget_handles(self, _: bool, ctx: _TurnCtx) -> None:
        count = self.sim.handles.forget()
        self._record(self._current.number if self._current else 0, "event", "forget_handles", count=count)

    async def _step_raw(self, message: dict[str, Any], ctx: _TurnCtx) -> None:
        conn = await self._conn()
        await conn.send("raw", message, keys=sorted(message))

    async def _step_abort(self, _: bool, ctx: _TurnCtx) -> None:
        conn = await self._conn()
        self._record(conn.number, "out", "abort")
        conn.aborted = True
        ctx.marker = conn.number
        conn.ws.transport.abort()
        self._notify()

    async def _step_close(self, spec: Close, ctx: _TurnCtx) -> None:
        conn = await self._conn()
        ctx.marker = conn.number
        await conn.close(spec.code, spec.reason)

    async def _step_sleep(self, seconds: float, ctx: _TurnCtx) -> None:
        await asyncio.sleep(seconds)

    async def _step_expect_reconnect(self, spec: ExpectReconnect, ctx: _TurnCtx) -> None:
        timeout = spec.timeout or self.scenario.settings.reconnect_timeout
        deadline = time.monotonic() + timeout
        marker = ctx.marker if ctx.marker is not None else (self._current.number if self._current else 0)
        while True:
            conn = self._current
            if conn is not None and conn.open and conn.number > marker:
                break
            if not await self._wait_change(deadline):
                raise _ScenarioFailed(f"the client did not reconnect within {timeout:g} s")
        ctx.marker = None
        self._record(conn.number, "event", "reconnected", resumed=conn.info.resumed)
        if spec.resumed is not None and conn.info.resumed != spec.resumed:
            self._violation(conn.number, "the client reconnected " + (
                "without a resumption handle" if spec.resumed else "with a resumption handle")
                + f" (the scenario expects resumed: {str(spec.resumed).lower()})")
