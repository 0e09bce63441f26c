"""A strict local stand-in for the Gemini Live API, so the real google-genai SDK can be exercised end to end.

This serves the Live WebSocket over TLS on loopback (its own CA, written to `state_dir`), refuses what the service
would refuse (see protocol.py, and models.py for what each model refuses), keeps sessions across reconnects as
the service does (resumption.py), and records everything: the transcript, utterances, tool responses,
connections, token counts, and every violation of the protocol a test can fail on. The model's side of the
conversation is the player's (player.py); the client's frames are handled in inbound.py.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from .connection import Connection
from .inbound import Inbound
from .models import DEFAULT_MODELS, setup_refusal, tool_behaviors
from .player import Player
from .protocol import (
    API_VERSIONS,
    BAD_KEY,
    DEADLINE,
    INVALID_ARGUMENT,
    NO_KEY,
    PATH_RE,
    SESSION_IN_USE,
    SESSION_NOT_FOUND,
    ClientSetup,
    check_setup,
)
from .records import ConnectionInfo, Entry, Session, ToolResponseRecord, Violation
from .resumption import Handles
from .scenario import Scenario, load_scenario
from .tls import make_tls_files
from .usage import Tokens
from .vad import Utterance

log = logging.getLogger("livehome.sim.server")


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
        loop: bool = False,
    ) -> None:
        self.scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario, vars)
        self.loop = loop  # replay the scenario after its end, for every later conversation
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
        self._conns: list[Connection] = []
        self._current: Connection | None = None
        self._sessions = itertools.count(1)
        self._conn_numbers = itertools.count(1)
        self.handles = Handles()
        self._jsonl: TextIO | None = None
        self._t0 = time.monotonic()
        self._player = Player(self)
        self._inbound = Inbound(self, self._player)

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
        """Every turn of the scenario ran (not merely: the player stopped)."""
        return self._player.position == "finished"

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

    @property
    def tokens_reported(self) -> dict[int, Tokens]:
        """Per connection number: the sums of the usageMetadata sent on its turnComplete frames (usage.py)."""
        return {c.number: c.tokens for c in self.connections if c.tokens.turns}

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
        conn = Connection(self, ws, info)
        self._conns.append(conn)
        self._record(number, "event", "connect", path=ws.request.path,
                     user_agent=ws.request.headers.get("user-agent"))
        try:
            if await self._handshake(conn):
                async for raw in ws:
                    await self._inbound.on_frame(conn, raw)
        except ConnectionClosed:
            pass
        finally:
            self._closed(conn)

    async def _handshake(self, conn: Connection) -> bool:
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
        message = await self._inbound.parse(conn, raw)
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
        refusal = setup_refusal(model, message["setup"])
        if refusal is not None:
            self._violation(conn.number, f"{model} does not support this setup: {refusal}")
            await conn.refuse(1007, refusal)
            return False
        handle = setup.handle
        if handle:
            found = self.handles.find(handle)
            if found is None:
                self._record(conn.number, "event", "unknown_handle", handle=handle,
                             forgotten=self.handles.was_forgotten(handle))
                await conn.refuse(*SESSION_NOT_FOUND)
                return False
            session, snapshot = found
            busy = [c for c in self._conns if c is not conn and c.session is session and c.open]
            if busy and settings.resume_while_open == "reject":
                self._record(conn.number, "event", "session_in_use", by=busy[0].number)
                await conn.refuse(*SESSION_IN_USE)
                return False
            superseded = handle != session.latest_handle
            session.calls = snapshot
            conn.info.resumed, conn.info.handle = True, handle
        else:
            session = Session(next(self._sessions))
            superseded = False
        conn.session = session
        conn.info.session = session.number
        if not await conn.send("setup_complete", {"setupComplete": {}}, binary=True):
            return False
        conn.ready = True
        self._current = conn
        if conn.info.resumed:
            self._record(conn.number, "event", "resumed", session=session.number, handle=handle,
                         superseded=superseded, outstanding=session.outstanding())
        log.info("connection %d: session %d%s", conn.number, session.number, " (resumed)" if conn.info.resumed
                 else "")
        self._notify()
        return True

    async def _check_setup(self, conn: Connection, raw: Any) -> ClientSetup | None:
        setup, problems = check_setup(raw)
        if setup is None:
            for p in problems:
                self._violation(conn.number, p)
            await conn.refuse(1007, problems[0] if problems[0].startswith("Invalid JSON") else INVALID_ARGUMENT[1])
            return None
        conn.info.model = setup.model
        conn.info.setup = setup.fields
        conn.info.declared_tools = setup.declared_tools
        conn.info.tool_behaviors = tool_behaviors(raw)
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

    def _closed(self, conn: Connection) -> None:
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
            self._inbound.utterance_ended(conn, conn.vad.flush("disconnect", info.closed))
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
    loop: bool = False,
) -> int:
    """`livehome simulate`: run the simulator until SIGINT/SIGTERM (or the scenario's end with until_finished);
    0 if the client kept to the protocol, 1 if there were violations. ConfigError propagates for bad scenarios."""
    out = out or sys.stdout
    sim = Simulator(scenario, api_key=api_key, host=host, port=port, state_dir=state_dir,
                    realtime_audio=realtime_audio, models=models, transcript_file=transcript_file, vars=vars,
                    loop=loop)
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
