"""A strict local stand-in for the Gemini Live API, so the real google-genai SDK can be exercised end to end.

The real service cannot be reached from tests or from a Pi on the bench, and a mock inside the SDK would test
nothing that matters: the wire format, TLS, close codes and timing of frames are where clients break. This
serves the Live WebSocket over TLS on loopback (its own CA, written to `state_dir`), speaks the frames the
service speaks, plays a scenario (see scenario.py) and is much stricter than the service about what the client
sends: every deviation is recorded as a violation so a test can fail on it.

Refusals imitate the service (close codes and reasons as users report them from the real one):
  wrong API key          -> close 1007 "API key not valid. Please pass a valid API key."
  no API key             -> close 1008 "Method doesn't allow unregistered callers ..."
  unknown model          -> close 1008 "models/x is not found for API version v1beta, or is not supported ..."
  malformed setup/frame  -> close 1007 "Invalid JSON payload received. ..." / "Request contains an invalid argument."
  unknown resume handle  -> close 1007 "Request contains an invalid argument."
  goAway deadline passed -> close 1011 "Deadline expired before operation could complete."
Each refusal happens after the client's setup frame, as the service does, so the SDK raises APIError(code).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import itertools
import json
import logging
import math
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal, TextIO

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from .player import Input, Player
from .protocol import (
    API_VERSIONS,
    BAD_KEY,
    CLIENT_MESSAGES,
    DEADLINE,
    DEFAULT_MODELS,
    FUNCTION_RESPONSE,
    INVALID_ARGUMENT,
    MESSAGE_BODIES,
    NO_KEY,
    PATH_RE,
    PCM_MIME,
    SCHEDULING,
    SESSION_IN_USE,
    STD_B64,
    URLSAFE_B64,
    ClientSetup,
    check_setup,
    normalize,
    short,
    snake,
    truncate_reason,
)
from .records import Call, ConnectionInfo, Entry, Session, ToolResponseRecord, Violation
from .scenario import Scenario, load_scenario
from .tls import make_tls_files
from .vad import EnergyVad, Utterance

log = logging.getLogger("livehome.sim.server")


# ----------------------------------------------------------------------------------------------------------------
# Connections


class _Conn:
    """One WebSocket: its setup, its audio stream and its link to a session."""

    def __init__(self, sim: Simulator, ws: ServerConnection, info: ConnectionInfo) -> None:
        self.sim = sim
        self.ws = ws
        self.info = info
        self.session: Session | None = None
        self.vad = EnergyVad(sim.scenario.settings.vad, info.number)
        self.ready = False
        self.aborted = False
        self.input_transcription = False
        self.output_transcription = False
        self.resumption = False
        self.manual_activity = False
        self.text_mode = False
        self.content_text: list[str] = []
        self.expiry: asyncio.Task[None] | None = None

    @property
    def number(self) -> int:
        return self.info.number

    @property
    def open(self) -> bool:
        return self.ready and not self.aborted and self.ws.state is State.OPEN

    async def send(self, kind: str, frame: dict[str, Any], *, record: bool = True, **detail: Any) -> bool:
        if self.aborted or self.ws.state is not State.OPEN:
            self.sim._record(self.number, "event", "dropped", frame=kind, why="connection closed")
            return False
        try:
            await self.ws.send(json.dumps(frame))
        except ConnectionClosed:
            self.sim._record(self.number, "event", "dropped", frame=kind, why="connection closed")
            return False
        if record:
            self.sim._record(self.number, "out", kind, **detail)
        return True

    async def refuse(self, code: int, reason: str) -> None:
        """Close as the service does when it will not serve this connection."""
        self.info.rejected = (code, reason)
        log.warning("connection %d refused: %d %s", self.number, code, reason)
        await self.close(code, reason)

    async def close(self, code: int, reason: str) -> None:
        self.sim._record(self.number, "out", "close", code=code, reason=reason)
        with contextlib.suppress(ConnectionClosed):
            await self.ws.close(code, truncate_reason(reason))


# ----------------------------------------------------------------------------------------------------------------
# The simulator


class Simulator:
    """A Live API service on loopback that plays one scenario and records everything.

    Typical test use:
        async with Simulator("lights_on", state_dir=tmp_path) as sim:
            client = genai.Client(api_key=sim.api_key, http_options=sim.http_options())
            ...
            await sim.wait_finished(10)
        sim.assert_clean()
    """

    def __init__(
        self,
        scenario: Scenario | str | Path,
        *,
        api_key: str = "sim-key",
        host: str = "127.0.0.1",
        port: int = 0,
        state_dir: Path,
        realtime_audio: bool = False,
        models: Iterable[str] | None = None,
        transcript_file: Path | None = None,
        vars: Mapping[str, Any] | None = None,
        cert_hosts: Iterable[str] = (),
    ) -> None:
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario, vars)
        self.api_key = api_key
        self.host = host
        self.port = port
        self.state_dir = Path(state_dir)
        self.realtime_audio = realtime_audio
        accepted = list(models) if models is not None else list(DEFAULT_MODELS)
        accepted += self.scenario.models
        self.models = {m if m.startswith("models/") else f"models/{m}" for m in accepted}
        self.transcript_file = transcript_file
        self.cert_hosts = tuple(cert_hosts)

        self.transcript: list[Entry] = []
        self.violations: list[Violation] = []
        self.utterances: list[Utterance] = []
        self.connections: list[ConnectionInfo] = []
        self.tool_responses: list[ToolResponseRecord] = []
        self.ca_file: Path = self.state_dir / "sim-ca.pem"

        self._server: Server | None = None
        self._runner: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._conns: list[_Conn] = []
        self._current: _Conn | None = None
        self._sessions = itertools.count(1)
        self._conn_numbers = itertools.count(1)
        self._handles: dict[str, tuple[Session, dict[str, Call]]] = {}
        self._jsonl: TextIO | None = None
        self._t0 = time.monotonic()
        self._player = Player(self)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> Simulator:
        """Make the certificates, render the model's lines, listen. The port is known once this returns."""
        _, cert_file, key_file = await asyncio.to_thread(make_tls_files, self.state_dir,
                                                         (self.host, *self.cert_hosts))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_file, key_file)
        await self._player.prerender()
        if self.transcript_file:
            self._jsonl = await asyncio.to_thread(self.transcript_file.open, "w", encoding="utf-8")
        self._server = await ws_serve(
            self._handler, self.host, self.port, ssl=context, process_request=self._check_request,
            max_size=8 * 2**20,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._t0 = time.monotonic()
        self._runner = asyncio.create_task(self._player.run(), name="simulator-scenario")
        log.info("simulator %s listening on %s", self.scenario.name, self.url)
        return self

    async def stop(self) -> None:
        if self._runner:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        for conn in self._conns:
            if conn.expiry:
                conn.expiry.cancel()
        if self._server:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._jsonl:
            self._jsonl.close()
            self._jsonl = None

    async def __aenter__(self) -> Simulator:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- public view --------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def finished(self) -> bool:
        return self._player.done.is_set()

    @property
    def position(self) -> str:
        """Where the scenario is, for messages."""
        return self._player.position

    @property
    def failed(self) -> str | None:
        """Why the scenario stopped short (also a violation), or None."""
        return self._player.failed

    def http_options(self, api_version: str = "v1beta") -> Any:
        """google.genai HttpOptions that reach this simulator (its URL, its CA)."""
        from google.genai import types

        return types.HttpOptions(
            base_url=self.url,
            api_version=api_version,
            async_client_args={"ssl": ssl.create_default_context(cafile=str(self.ca_file))},
        )

    def entries(self, kind: str | None = None, direction: str | None = None, conn: int | None = None) -> list[Entry]:
        return [
            e for e in self.transcript
            if (kind is None or e.kind == kind) and (direction is None or e.direction == direction)
            and (conn is None or e.conn == conn)
        ]

    async def wait_finished(self, timeout: float = 10.0) -> None:
        """Until the last turn's last step ran (or the scenario failed: see violations)."""
        try:
            async with asyncio.timeout(timeout):
                await self._player.done.wait()
        except TimeoutError:
            raise TimeoutError(
                f"scenario {self.scenario.name!r} not finished after {timeout:g} s: {self.position}"
                + "".join(f"\n  violation: {v}" for v in self.violations)
            ) from None

    async def wait_until(self, condition: Callable[[], object], timeout: float = 5.0) -> None:
        """Until `condition()` holds, checked whenever the simulator records something: what a client sent
        crosses a socket before the simulator sees it."""
        async with asyncio.timeout(timeout):
            while not condition():
                await self._wait_change(None)

    async def wait_closed(self, timeout: float = 5.0) -> None:
        """Until every connection so far has closed and been recorded (closing races the client's return)."""
        await self.wait_until(lambda: all(c.closed is not None for c in self.connections), timeout)

    def assert_clean(self) -> None:
        if self.violations:
            raise AssertionError(
                f"simulator ({self.scenario.name}) recorded {len(self.violations)} violation(s):\n"
                + "\n".join(f"  {v}" for v in self.violations)
            )

    # -- recording ---------------------------------------------------------------------------------------------

    def _record(self, conn: int, direction: Literal["in", "out", "event"], kind: str, **detail: Any) -> Entry:
        entry = Entry(conn, direction, kind, detail, time.monotonic())
        self.transcript.append(entry)
        log.debug("%s", entry)
        if self._jsonl:
            self._jsonl.write(json.dumps(entry.to_json(), ensure_ascii=False, default=str) + "\n")
            self._jsonl.flush()
        self._notify()
        return entry

    def _violation(self, conn: int, message: str) -> None:
        self.violations.append(Violation(conn, message, time.monotonic()))
        self._record(conn, "event", "violation", message=message)
        log.warning("violation (connection %d): %s", conn, message)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, deadline: float | None) -> bool:
        event = self._changed
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            return False
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that races the event.
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True

    # -- connections -------------------------------------------------------------------------------------------

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        match = PATH_RE.search(path)
        if match is None or match.group(1) not in API_VERSIONS:
            self._record(0, "event", "http_rejected", path=request.path, status=404)
            log.warning("refused HTTP request for %s", request.path)
            return connection.respond(HTTPStatus.NOT_FOUND, f"{request.path} is not a Live API endpoint\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        number = next(self._conn_numbers)
        match = PATH_RE.search(ws.request.path.split("?", 1)[0])
        info = ConnectionInfo(number, ws.request.path, match.group(1) if match else "?", time.monotonic())
        self.connections.append(info)
        conn = _Conn(self, ws, info)
        self._conns.append(conn)
        self._record(number, "event", "connect", path=ws.request.path,
                     user_agent=ws.request.headers.get("user-agent"))
        try:
            if await self._handshake(conn):
                async for raw in ws:
                    await self._on_frame(conn, raw)
        except ConnectionClosed:
            pass
        finally:
            self._closed(conn)

    async def _handshake(self, conn: _Conn) -> bool:
        settings = self.scenario.settings
        try:
            async with asyncio.timeout(settings.setup_timeout):
                raw = await conn.ws.recv()
        except TimeoutError:
            self._violation(conn.number, f"no setup message within {settings.setup_timeout:g} s")
            await conn.refuse(*DEADLINE)
            return False
        key = conn.ws.request.headers.get("x-goog-api-key") if conn.ws.request else None
        if key is None:
            await conn.refuse(*NO_KEY)
            return False
        if key != self.api_key:
            await conn.refuse(*BAD_KEY)
            return False
        message = await self._parse(conn, raw)
        if message is None:
            return False
        if list(message) != ["setup"]:
            self._violation(conn.number, f"the first message must be setup, got {', '.join(message) or 'empty'}")
            await conn.refuse(*INVALID_ARGUMENT)
            return False
        setup = await self._check_setup(conn, message["setup"])
        if setup is None:
            return False
        model = setup.model
        if model not in self.models:
            await conn.refuse(1008, f"{model} is not found for API version {conn.info.api_version}, or is not "
                                    "supported for bidiGenerateContent. Call ListModels to see the list of "
                                    "available models and their supported methods.")
            return False
        handle = setup.handle
        if handle:
            found = self._handles.get(handle)
            if found is None:
                self._record(conn.number, "event", "unknown_handle", handle=handle)
                await conn.refuse(*INVALID_ARGUMENT)
                return False
            session, snapshot = found
            busy = [c for c in self._conns if c is not conn and c.session is session and c.open]
            if busy and settings.resume_while_open == "reject":
                self._record(conn.number, "event", "session_in_use", by=busy[0].number)
                await conn.refuse(*SESSION_IN_USE)
                return False
            superseded = handle != session.latest_handle
            session.calls = copy.deepcopy(snapshot)
            conn.info.resumed, conn.info.handle = True, handle
        else:
            session = Session(next(self._sessions))
            superseded = False
        conn.session = session
        conn.info.session = session.number
        if not await conn.send("setup_complete", {"setupComplete": {}}):
            return False
        conn.ready = True
        self._current = conn
        if conn.info.resumed:
            self._record(conn.number, "event", "resumed", session=session.number, handle=handle,
                         superseded=superseded, outstanding=[c.id for c in session.calls.values()
                                                             if c.state == "outstanding"])
        log.info("connection %d: session %d%s", conn.number, session.number, " (resumed)" if conn.info.resumed
                 else "")
        self._notify()
        return True

    async def _check_setup(self, conn: _Conn, raw: Any) -> ClientSetup | None:
        setup, problems = check_setup(raw)
        if setup is None:
            for p in problems:
                self._violation(conn.number, p)
            await conn.refuse(1007, problems[0] if problems[0].startswith("Invalid JSON") else INVALID_ARGUMENT[1])
            return None
        conn.info.model = setup.model
        conn.info.setup = setup.fields
        conn.info.declared_tools = setup.declared_tools
        conn.input_transcription = setup.input_transcription
        conn.output_transcription = setup.output_transcription
        conn.resumption = setup.resumption
        conn.manual_activity = setup.manual_activity
        conn.vad.manual_only = conn.manual_activity
        conn.text_mode = setup.text_mode
        self._record(conn.number, "in", "setup", model=setup.model, tools=list(setup.declared_tools),
                     modalities=setup.modalities or ["AUDIO"], handle=setup.handle,
                     resumption=conn.resumption, input_transcription=conn.input_transcription,
                     output_transcription=conn.output_transcription, manual_activity=conn.manual_activity)
        return setup

    async def _parse(self, conn: _Conn, raw: str | bytes) -> dict[str, Any] | None:
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

    async def _on_frame(self, conn: _Conn, raw: str | bytes) -> None:
        message = await self._parse(conn, raw)
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

    async def _on_realtime_input(self, conn: _Conn, body: dict[str, Any]) -> None:
        now = time.monotonic()
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
                self._player.offer(Input("text", conn.number, text=text))
        if "audio_stream_end" in body:
            if body["audio_stream_end"] is not True:
                self._violation(conn.number, f"audioStreamEnd must be true, got {short(body['audio_stream_end'])}")
            self._record(conn.number, "in", "audio_stream_end")
            self._utterance_ended(conn, conn.vad.flush("audio_stream_end", now))
        if "activity_start" in body:
            self._record(conn.number, "in", "activity_start")
            if not conn.manual_activity:
                self._violation(conn.number, "activityStart while automatic activity detection is enabled "
                                             "(set realtime_input_config.automatic_activity_detection.disabled)")
            else:
                done = conn.vad.flush("activity_end", now) if conn.vad.in_speech else None
                self._utterance_ended(conn, done)
                conn.vad.begin_manual(now)
                self._speech_started(conn)
        if "activity_end" in body:
            self._record(conn.number, "in", "activity_end")
            if not conn.manual_activity:
                self._violation(conn.number, "activityEnd while automatic activity detection is enabled")
            elif not conn.vad.in_speech:
                self._violation(conn.number, "activityEnd without activityStart")
            else:
                self._utterance_ended(conn, conn.vad.flush("activity_end", now))

    async def _on_audio(self, conn: _Conn, blob: Any, via: str) -> None:
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
        now = time.monotonic()
        if conn.info.first_audio is None:
            conn.info.first_audio = now
            self._notify()
        if conn.vad.rate is not None and rate != conn.vad.rate:
            self._violation(conn.number, f"audio rate changed from {conn.vad.rate} to {rate} Hz mid-stream")
        for kind, utterance in conn.vad.feed(pcm, rate, now):
            if kind == "start":
                self._speech_started(conn)
            else:
                self._utterance_ended(conn, utterance)

    def _speech_started(self, conn: _Conn) -> None:
        self._player.speech_seq += 1
        self._record(conn.number, "event", "speech_start", offset=round(conn.info.audio_seconds, 3))
        self._notify()

    def _utterance_ended(self, conn: _Conn, utterance: Utterance | None) -> None:
        if utterance is None:
            return
        self.utterances.append(utterance)
        self._record(conn.number, "event", "utterance", duration=round(utterance.duration, 3),
                     rms=round(utterance.rms, 1), rate=utterance.rate, complete=utterance.complete,
                     ended_by=utterance.ended_by)
        if utterance.complete:
            self._player.offer(Input("speech", conn.number, utterance=utterance))
        self._notify()

    async def _on_client_content(self, conn: _Conn, body: dict[str, Any]) -> None:
        turns = body.get("turns") or []
        if not isinstance(turns, list):
            self._violation(conn.number, "client_content.turns must be a list")
            return
        texts: list[str] = []
        for i, content in enumerate(turns):
            if not isinstance(content, dict) or not isinstance(content.get("parts", []), list):
                self._violation(conn.number, f"client_content.turns[{i}] must be a Content object with parts")
                continue
            role = content.get("role", "user")
            if role not in ("user", "model"):
                self._violation(conn.number, f"client_content.turns[{i}].role must be user or model, got {role!r}")
            for part in content.get("parts", []):
                if role == "user" and isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
        complete = body.get("turn_complete", False)
        if not isinstance(complete, bool):
            self._violation(conn.number, "client_content.turnComplete must be a boolean")
            complete = False
        conn.content_text.extend(texts)
        self._record(conn.number, "in", "client_content", text=" ".join(texts), turns=len(turns),
                     turn_complete=complete)
        if complete and conn.content_text:
            self._player.offer(Input("text", conn.number, text=" ".join(conn.content_text)))
            conn.content_text = []

    async def _on_context_update(self, conn: _Conn, body: dict[str, Any]) -> None:
        self._record(conn.number, "in", "context_update", keys=sorted(body))

    async def _on_tool_response(self, conn: _Conn, body: dict[str, Any]) -> None:
        responses = body.get("function_responses")
        if not isinstance(responses, list) or not responses:
            self._violation(conn.number, "tool_response.functionResponses must be a non-empty list")
            return
        for raw in responses:
            problems: list[str] = []
            fr = normalize(raw, FUNCTION_RESPONSE, "tool_response.function_responses", problems) \
                if isinstance(raw, dict) else {}
            if not isinstance(raw, dict):
                problems.append(f"a function response must be an object, got {short(raw)}")
            self._answer(conn, fr, problems)
        self._notify()

    def _answer(self, conn: _Conn, fr: dict[str, Any], problems: list[str]) -> None:
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
        self.tool_responses.append(record)
        self._record(conn.number, "in", "tool_response", id=record.id, name=record.name, response=response,
                     scheduling=scheduling, accepted=accepted, latency=record.latency and round(record.latency, 4))
        for p in problems:
            self._violation(conn.number, p)

    def _whereabouts(self, conn: _Conn, call_id: str) -> str:
        """Why an id is unknown here: issued in another session, or lost by resuming an older handle."""
        for other in self._conns:
            if other.session is not None and other.session is not conn.session and call_id in other.session.calls:
                return (f" (it was issued in session {other.session.number}; connection {conn.number} is in "
                        f"session {conn.session.number if conn.session else '?'})")
        for entry in self.entries("tool_call", "out"):
            if any(c["id"] == call_id for c in entry.detail["calls"]):
                return f" (issued on connection {entry.conn}, then lost by resuming from an older handle)"
        return ""

    def _closed(self, conn: _Conn) -> None:
        info = conn.info
        info.closed = time.monotonic()
        ws = conn.ws
        info.close_code, info.close_reason = ws.close_code, ws.close_reason
        if conn.aborted:
            info.closed_by = "abort"
        elif ws.protocol.close_rcvd_then_sent:
            info.closed_by = "client"
        elif ws.protocol.close_sent is not None:
            info.closed_by = "server"
        else:
            info.closed_by = "network"
        if conn.expiry:
            conn.expiry.cancel()
        if conn.vad.in_speech:
            self._utterance_ended(conn, conn.vad.flush("disconnect", info.closed))
        conn.ready = False
        if self._current is conn:
            self._current = None
        self._record(conn.number, "event", "closed", code=info.close_code, reason=info.close_reason,
                     by=info.closed_by)
        self._notify()

async def serve(
    scenario: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    state_dir: Path,
    api_key: str = "sim-key",
    realtime_audio: bool = True,
    until_finished: bool = False,
    transcript_file: Path | None = None,
    vars: Mapping[str, Any] | None = None,
    models: Iterable[str] | None = None,
    out: TextIO | None = None,
) -> int:
    """`livehome simulate`: run the simulator until SIGINT/SIGTERM (or the scenario's end with until_finished);
    0 if the client kept to the protocol, 1 if there were violations. ConfigError propagates for bad scenarios."""
    out = out or sys.stdout
    sim = Simulator(scenario, api_key=api_key, host=host, port=port, state_dir=state_dir,
                    realtime_audio=realtime_audio, models=models, transcript_file=transcript_file, vars=vars)
    key_file = Path(state_dir) / "sim-api-key"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        async with sim:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(api_key + "\n")
            print(f"livehome simulator: scenario {sim.scenario.name} ({sim.scenario.source})", file=out)
            if sim.scenario.description:
                print(f"  {sim.scenario.description}", file=out)
            print(f"  endpoint: {sim.url}\n  ca_file:  {sim.ca_file}\n"
                  f"  api key:  {api_key!r} (also in {key_file})\n"
                  f"  config:   gemini: {{endpoint: {sim.url}, ca_file: {sim.ca_file}, api_key_file: {key_file}}}",
                  file=out, flush=True)
            waits = [asyncio.ensure_future(stop.wait())]
            if until_finished:
                waits.append(asyncio.ensure_future(sim.wait_finished(timeout=math.inf)))
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    print(f"scenario {sim.scenario.name}: {sim.position}; {len(sim.connections)} connection(s), "
          f"{len(sim.utterances)} utterance(s), {len(sim.violations)} violation(s)", file=out)
    for v in sim.violations:
        print(f"  violation: {v}", file=out)
    return 1 if sim.violations else 0
