"""What a client sends: every frame checked more strictly than the service does (each deviation is a violation a
test can fail on), then turned into transcript entries, utterances, tool responses and user input. The model's
own rules (models.py) apply here too: a synchronous model closes on realtime input during a call, a model without
async calls refuses a scheduling, and gemini-3.8-live cancels an outstanding BLOCKING call on new user input.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import TYPE_CHECKING, Any

from .connection import Connection
from .models import NOT_SUPPORTED, profile, unknown_name
from .player import Input, Player
from .protocol import (
    CLIENT_MESSAGES,
    FUNCTION_RESPONSE,
    MESSAGE_BODIES,
    PCM_MIME,
    SCHEDULING,
    STD_B64,
    URLSAFE_B64,
    normalize,
    short,
    snake,
)
from .records import ToolResponseRecord
from .usage import json_chars
from .vad import Utterance

if TYPE_CHECKING:
    from .server import Simulator


class Inbound:
    """Handles client frames for the Simulator, kept apart for size: it records through the simulator and hands
    what the user typed or said to the player."""

    def __init__(self, sim: Simulator, player: Player) -> None:
        self.sim = sim
        self.player = player
        self._record = sim._record
        self._violation = sim._violation
        self._notify = sim._notify

    async def parse(self, conn: Connection, raw: str | bytes) -> dict[str, Any] | None:
        """A client frame as a dict with snake_case message keys; None (and the connection closing) when the
        service could not have parsed it."""
        if isinstance(raw, bytes):
            try:
                raw = raw.decode()
            except UnicodeDecodeError:
                self._violation(conn.number, "binary frame that is not UTF-8 JSON")
                await conn.refuse(1007, "Invalid JSON payload received.")
                return None
        try:
            message = json.loads(raw)
        except json.JSONDecodeError as exc:
            self._violation(conn.number, f"frame is not JSON ({exc.msg}): {short(raw)}")
            await conn.refuse(1007, f"Invalid JSON payload received. {exc.msg}.")
            return None
        if not isinstance(message, dict):
            self._violation(conn.number, f"frame is not a JSON object: {short(raw)}")
            await conn.refuse(1007, "Invalid JSON payload received.")
            return None
        out: dict[str, Any] = {}
        for key, value in message.items():
            name = snake(key)
            if name not in CLIENT_MESSAGES:
                self._violation(conn.number, f"unknown message kind {key!r}")
                await conn.refuse(1007, f"Invalid JSON payload received. Unknown name \"{key}\": Cannot find field.")
                return None
            out[name] = value
        if len(out) != 1:
            self._violation(conn.number, f"a message carries exactly one kind, got {', '.join(out) or 'none'}")
        return out

    async def on_frame(self, conn: Connection, raw: str | bytes) -> None:
        message = await self.parse(conn, raw)
        if message is None:
            return
        for kind, body in message.items():
            if kind == "setup":
                self._violation(conn.number, "setup sent again on an established connection")
                continue
            spec = MESSAGE_BODIES[kind]
            if not isinstance(body, dict):
                self._violation(conn.number, f"{kind} must be an object, got {short(body)}")
                continue
            problems: list[str] = []
            body = normalize(body, spec, kind, problems)
            if problems:
                for p in problems:
                    self._violation(conn.number, p)
                await conn.refuse(1007, problems[0])
                return
            await getattr(self, f"_on_{kind}")(conn, body)

    async def _on_realtime_input(self, conn: Connection, body: dict[str, Any]) -> None:
        now = time.monotonic()
        if not profile(conn.info.model).input_during_calls and conn.session and conn.session.outstanding():
            ids = ", ".join(conn.session.outstanding())
            self._violation(conn.number, f"realtime input ({', '.join(body) or 'empty'}) while call(s) {ids} are "
                                         f"outstanding: {conn.info.model} calls synchronously and closes with 1008")
            await conn.close(1008, NOT_SUPPORTED)
            return
        if "audio" in body:
            await self._on_audio(conn, body["audio"], "audio")
        for chunk in body.get("media_chunks") or []:
            if isinstance(chunk, dict) and str(chunk.get("mime_type", chunk.get("mimeType", ""))).startswith("audio"):
                await self._on_audio(conn, {snake(k): v for k, v in chunk.items()}, "media_chunks")
        if "video" in body:
            self._record(conn.number, "in", "video")
        if "text" in body:
            text = body["text"]
            if not isinstance(text, str):
                self._violation(conn.number, f"realtime_input.text must be a string, got {short(text)}")
            else:
                self._record(conn.number, "in", "text", text=text, via="realtime_input")
                conn.usage.prompt.text_chars += len(text)
                await self._user_input(conn)
                self.player.offer(Input("text", conn.number, text=text))
        if "audio_stream_end" in body:
            if body["audio_stream_end"] is not True:
                self._violation(conn.number, f"audioStreamEnd must be true, got {short(body['audio_stream_end'])}")
            self._record(conn.number, "in", "audio_stream_end")
            self.utterance_ended(conn, conn.vad.flush("audio_stream_end", now))
        if "activity_start" in body:
            self._record(conn.number, "in", "activity_start", offset=round(conn.info.audio_seconds, 3))
            if not conn.manual_activity:
                self._violation(conn.number, "activityStart while automatic activity detection is enabled "
                                             "(set realtime_input_config.automatic_activity_detection.disabled)")
            else:
                done = conn.vad.flush("activity_end", now) if conn.vad.in_speech else None
                self.utterance_ended(conn, done)
                conn.vad.begin_manual(now)
                await self._speech_started(conn)
        if "activity_end" in body:
            self._record(conn.number, "in", "activity_end", offset=round(conn.info.audio_seconds, 3))
            if not conn.manual_activity:
                self._violation(conn.number, "activityEnd while automatic activity detection is enabled")
            elif not conn.vad.in_speech:
                self._violation(conn.number, "activityEnd without activityStart")
            else:
                self.utterance_ended(conn, conn.vad.flush("activity_end", now))

    async def _on_audio(self, conn: Connection, blob: Any, via: str) -> None:
        if not isinstance(blob, dict):
            self._violation(conn.number, f"{via}: audio must be a Blob object")
            return
        data, mime = blob.get("data"), blob.get("mime_type")
        if not isinstance(data, str):
            self._violation(conn.number, f"{via}: audio.data must be a base64 string")
            return
        if not URLSAFE_B64.match(data) or len(data) % 4:
            if STD_B64.match(data) and len(data) % 4 == 0:
                self._violation(conn.number, f"{via}: audio.data uses the standard base64 alphabet; the SDK sends "
                                             "URL-safe base64")
            else:
                self._violation(conn.number, f"{via}: audio.data is not valid base64 ({len(data)} characters)")
                await conn.refuse(1007, "Invalid value at 'realtime_input.audio.data' (TYPE_BYTES), Base64 "
                                        "decoding failed")
                return
        try:
            pcm = base64.b64decode(data.replace("-", "+").replace("_", "/"), validate=True)
        except binascii.Error:
            self._violation(conn.number, f"{via}: audio.data is not valid base64")
            return
        match = PCM_MIME.match(mime) if isinstance(mime, str) else None
        if match is None:
            self._violation(conn.number, f"{via}: audio mime_type must be audio/pcm;rate=<Hz>, got {mime!r}")
            return
        rate = int(match.group(1)) if match.group(1) else 16000
        if not match.group(1):
            self._violation(conn.number, f"{via}: audio mime_type {mime!r} has no rate=")
        elif not 8000 <= rate <= 48000:
            self._violation(conn.number, f"{via}: audio rate {rate} Hz is out of range")
            return
        if len(pcm) % 2:
            self._violation(conn.number, f"{via}: odd number of PCM bytes ({len(pcm)}); 16-bit samples expected")
            pcm = pcm[:-1]
        conn.info.audio_bytes += len(pcm)
        conn.info.audio_seconds += len(pcm) / 2 / rate
        conn.usage.prompt.audio_seconds += len(pcm) / 2 / rate
        now = time.monotonic()
        if conn.info.first_audio is None:
            conn.info.first_audio = now
            self._notify()
        if conn.vad.rate is not None and rate != conn.vad.rate:
            self._violation(conn.number, f"audio rate changed from {conn.vad.rate} to {rate} Hz mid-stream")
        for kind, utterance in conn.vad.feed(pcm, rate, now):
            if kind == "start":
                await self._speech_started(conn)
            else:
                self.utterance_ended(conn, utterance)

    async def _speech_started(self, conn: Connection) -> None:
        self.player.speech_seq += 1
        self._record(conn.number, "event", "speech_start", offset=round(conn.info.audio_seconds, 3))
        self._notify()
        await self._user_input(conn)

    async def _user_input(self, conn: Connection) -> None:
        """New user input (speech starting, a text turn): a model that cancels BLOCKING calls on it does so now,
        as gemini-3.8-live's model page says."""
        session = conn.session
        if session is None or not profile(conn.info.model).cancel_blocking_on_input:
            return
        ids = [i for i in session.outstanding() if conn.info.tool_behaviors.get(session.calls[i].name) == "BLOCKING"]
        if not ids:
            return
        now = time.monotonic()
        for call_id in ids:
            session.calls[call_id].state, session.calls[call_id].changed = "cancelled", now
        self._record(conn.number, "event", "blocking_cancelled", ids=ids)
        await conn.send("tool_call_cancellation", {"toolCallCancellation": {"ids": ids}}, ids=ids)

    def utterance_ended(self, conn: Connection, utterance: Utterance | None) -> None:
        if utterance is None:
            return
        self.sim.utterances.append(utterance)
        self._record(conn.number, "event", "utterance", duration=round(utterance.duration, 3),
                     rms=round(utterance.rms, 1), rate=utterance.rate, complete=utterance.complete,
                     ended_by=utterance.ended_by)
        if utterance.complete:
            self.player.offer(Input("speech", conn.number, utterance=utterance))
        self._notify()

    async def _on_client_content(self, conn: Connection, body: dict[str, Any]) -> None:
        turns = body.get("turns") or []
        if not isinstance(turns, list):
            self._violation(conn.number, "client_content.turns must be a list")
            return
        texts: list[str] = []
        lines: list[dict[str, str]] = []
        for i, content in enumerate(turns):
            if not isinstance(content, dict) or not isinstance(content.get("parts", []), list):
                self._violation(conn.number, f"client_content.turns[{i}] must be a Content object with parts")
                continue
            role = content.get("role", "user")
            if role not in ("user", "model"):
                self._violation(conn.number, f"client_content.turns[{i}].role must be user or model, got {role!r}")
            for part in content.get("parts", []):
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    lines.append({"role": str(role), "text": part["text"]})
                    if role == "user":
                        texts.append(part["text"])
        complete = body.get("turn_complete", False)
        if not isinstance(complete, bool):
            self._violation(conn.number, "client_content.turnComplete must be a boolean")
            complete = False
        text = " ".join(texts)
        conn.usage.prompt.text_chars += sum(len(line["text"]) for line in lines)
        # turnComplete false: context the model keeps without answering (a "context line"); it starts no turn.
        self._record(conn.number, "in", "client_content", text=text, turns=len(turns), turn_complete=complete,
                     context=not complete, lines=lines)
        if complete and text:
            await self._user_input(conn)
            self.player.offer(Input("text", conn.number, text=text))

    async def _on_context_update(self, conn: Connection, body: dict[str, Any]) -> None:
        self._record(conn.number, "in", "context_update", keys=sorted(body))

    async def _on_tool_response(self, conn: Connection, body: dict[str, Any]) -> None:
        responses = body.get("function_responses")
        if not isinstance(responses, list) or not responses:
            self._violation(conn.number, "tool_response.functionResponses must be a non-empty list")
            return
        if not profile(conn.info.model).response_scheduling:
            for i, raw in enumerate(responses):
                key = next((k for k in raw if snake(str(k)) == "scheduling"), None) if isinstance(raw, dict) else None
                if key is not None:  # the service refuses the message; no call is answered
                    reason = unknown_name(key, f"tool_response.function_responses[{i}]")
                    self._violation(conn.number, f"{conn.info.model} calls synchronously: {reason}")
                    await conn.close(1007, reason)
                    return
        for raw in responses:
            problems: list[str] = []
            fr = normalize(raw, FUNCTION_RESPONSE, "tool_response.function_responses", problems) \
                if isinstance(raw, dict) else {}
            if not isinstance(raw, dict):
                problems.append(f"a function response must be an object, got {short(raw)}")
            conn.usage.prompt.text_chars += json_chars(raw)
            self._answer(conn, fr, problems)
        self._notify()

    def _answer(self, conn: Connection, fr: dict[str, Any], problems: list[str]) -> None:
        """Check one functionResponse against the calls outstanding in this connection's session."""
        now = time.monotonic()
        call_id, name, response = fr.get("id"), fr.get("name"), fr.get("response")
        scheduling = fr.get("scheduling")
        call = conn.session.calls.get(call_id) if conn.session and isinstance(call_id, str) else None
        if not call_id:
            problems.append("function response without an id")
        elif call is None:
            problems.append(f"response to unknown call id {call_id!r}{self._whereabouts(conn, call_id)}")
        elif call.state == "cancelled":
            ago = now - (call.changed or now)
            problems.append(f"response to call {call_id!r} ({call.name}) which was cancelled {ago * 1000:.0f} ms "
                            "earlier")
        elif call.state == "answered":
            problems.append(f"second response to call {call_id!r} ({call.name})")
        if call is not None and name != call.name:
            problems.append(f"response to call {call_id!r} names {name!r}, the call was {call.name!r}")
        if response is not None and not isinstance(response, dict):
            problems.append(f"response to {call_id!r}: `response` must be an object, got {short(response)}")
        if scheduling is not None and scheduling not in SCHEDULING:
            problems.append(f"response to {call_id!r}: unknown scheduling {scheduling!r}")
        accepted = not problems
        if accepted and call is not None:
            call.state, call.changed = "answered", now
        record = ToolResponseRecord(
            id=call_id if isinstance(call_id, str) else None, name=name if isinstance(name, str) else None,
            response=response, scheduling=scheduling, conn=conn.number, t=now, accepted=accepted,
            problem="; ".join(problems) or None, latency=(now - call.sent) if call else None,
        )
        self.sim.tool_responses.append(record)
        self._record(conn.number, "in", "tool_response", id=record.id, name=record.name, response=response,
                     scheduling=scheduling, accepted=accepted, latency=record.latency and round(record.latency, 4))
        for p in problems:
            self._violation(conn.number, p)

    def _whereabouts(self, conn: Connection, call_id: str) -> str:
        """Why an id is unknown here: issued in another session, or lost by resuming an older handle."""
        for other in self.sim._conns:
            if other.session is not None and other.session is not conn.session and call_id in other.session.calls:
                return (f" (it was issued in session {other.session.number}; connection {conn.number} is in "
                        f"session {conn.session.number if conn.session else '?'})")
        for entry in self.sim.entries("tool_call", "out"):
            if any(c["id"] == call_id for c in entry.detail["calls"]):
                return f" (issued on connection {entry.conn}, then lost by resuming from an older handle)"
        return ""
