"""Tool calls on the live side: what the model asked for goes to the tool port, and answers go back only to ids
the service's current session issued (daemon.live.ledger keeps that straight across resumes). While the model
waits for an answer (a synchronous model, or a BLOCKING tool) the uplink is held: the service refuses realtime
input then."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import replace
from typing import Any, Protocol

from google.genai import types

from ..calls import CancelReport, ToolCall, ToolResponse
from ..events import Answered, Emit, ModelCalled
from .ledger import CallLedger, Reuse
from .models import ModelProfile
from .uplink import Uplink


class ToolPort(Protocol):
    """What the session needs from the tool layer (daemon.tools.engine.Engine)."""

    def submit(self, call: ToolCall) -> bool: ...
    def heard(self, text: str, spoken: bool) -> None: ...
    def adopt(self, call: ToolCall, earlier: ToolResponse) -> None: ...
    async def next_response(self) -> ToolResponse: ...
    def requeue(self, response: ToolResponse) -> None: ...
    def ready_responses(self) -> list[ToolResponse]: ...
    def cancel(self, ids: list[str]) -> asyncio.Task[list[CancelReport]]: ...
    async def settle(self, timeout: float) -> list[CancelReport]: ...
    @property
    def outstanding(self) -> list[str]: ...


class ToolCalls:
    def __init__(
        self,
        port: ToolPort,
        model: ModelProfile,
        declarations: list[dict[str, Any]],
        uplink: Uplink,
        emit: Emit,
        log: logging.LoggerAdapter,
    ) -> None:
        self.port = port
        self.model = model
        self.uplink = uplink
        self.emit = emit
        self.log = log
        self.ledger = CallLedger()
        self.count = 0
        self._blocking = {d["name"] for d in declarations if d.get("behavior") == "BLOCKING"}
        self._waited_on: set[str] = set()  # calls the model waits for: the uplink is held until they are answered

    def connected(self, handle: str | None) -> None:
        """A new connection: nothing is waited for on it yet; calls it does not know are logged."""
        lost = self.ledger.connected(handle)
        self._waited_on.clear()
        self.uplink.hold(False)
        if lost and handle is not None:
            self.log.info(
                "the resumed session went back to before %s: their answers are not sent to it",
                ", ".join(f"{c.name} {c.id}" for c in lost),
            )

    def call(self, call_id: str, name: str, args: dict[str, Any], spoken: bool = True) -> None:
        self.count += 1
        fields = {"TOOL": name, "CALL_ID": call_id}
        reuse = self.ledger.issued(call_id, name, args)
        if reuse is not None:
            self.log.warning(
                "tool call %s %s %s repeats %s, which already ran before the service lost it: it gets that "
                "call's result, not a second run",
                name,
                call_id,
                json.dumps(args, ensure_ascii=False),
                reuse.earlier,
                extra=fields,
            )
            self.emit(ModelCalled(call_id, name, args, repeated=True))
            self._wait_for(call_id, name)
            if reuse.result is not None:
                self._reuse(reuse)
            return
        fresh = self.port.submit(ToolCall(call_id, name, args, spoken))
        self.log.debug(
            "tool call %s %s %s%s",
            name,
            call_id,
            json.dumps(args, ensure_ascii=False),
            "" if fresh else " (repeated id: ignored)",
            extra=fields,
        )
        if fresh:
            self._wait_for(call_id, name)
        self.emit(ModelCalled(call_id, name, args, repeated=not fresh))

    def cancel(self, ids: list[str]) -> None:
        for cid in ids:
            self.ledger.forget_waiting(cid)
            self._release(cid)
        self.port.cancel(ids).add_done_callback(self._cancelled)  # stops the calls now, undoes in a task

    def _reuse(self, reuse: Reuse) -> None:
        assert reuse.result is not None
        earlier = reuse.result
        self.port.adopt(ToolCall(reuse.new_id, earlier.name, {}), replace(earlier, id=reuse.new_id))

    def _wait_for(self, call_id: str, name: str) -> None:
        """A synchronous model, or a BLOCKING tool: the model waits for this answer, and input sent meanwhile
        would be refused (close 1008), so the uplink holds it until the answer has gone out."""
        if not self.model.async_calls or name in self._blocking:
            self._waited_on.add(call_id)
            self.uplink.hold(True)

    def _release(self, call_id: str) -> None:
        self._waited_on.discard(call_id)
        if not self._waited_on:
            self.uplink.hold(False)

    async def sender(self, session: Any) -> None:
        """The answer loop of one connection."""
        while True:
            response = await self.port.next_response()
            for reuse in self.ledger.finished(response):
                self._reuse(reuse)
            if not self.ledger.deliverable(response.id):
                self.log.info(
                    "not answering %s %s: the service's current session never issued that id",
                    response.name,
                    response.id,
                    extra={"TOOL": response.name, "CALL_ID": response.id},
                )
                continue
            delivered = False
            try:
                await self.send(session, response)
                delivered = True
            finally:
                if not delivered:
                    self.port.requeue(response)

    async def send(self, session: Any, response: ToolResponse) -> None:
        scheduling = response.scheduling if self.model.async_calls else None
        answer = types.FunctionResponse(
            id=response.id,
            name=response.name,
            response=response.response,
            scheduling=types.FunctionResponseScheduling(scheduling) if scheduling else None,
        )
        await session.send_tool_response(function_responses=[answer])
        self._release(response.id)
        self.log.debug(
            "answered %s %s: %s (%s)",
            response.name,
            response.id,
            response.outcome,
            scheduling or "-",
            extra={"TOOL": response.name, "CALL_ID": response.id},
        )
        self.emit(Answered(response.id, response.name, response.outcome, scheduling, response.response))

    def answer_now(self, session: Any, call_id: str, name: str, args: dict[str, Any], body: dict[str, Any]) -> None:
        """Answer a call the session handles itself (end_conversation) without the tool layer, silently."""
        self.ledger.issued(call_id, name, args)
        answer = ToolResponse(call_id, name, body, "SILENT", "success")
        task = asyncio.get_running_loop().create_task(self.send(session, answer))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a dropped socket is fine here

    async def settle_and_answer(self, session: Any, timeout: float) -> None:
        """The end of a conversation on a live socket: give running calls `timeout`, then answer what finished."""
        if self.port.outstanding:
            await self.port.settle(timeout)  # the tool layer reports each cancellation
        for response in self.port.ready_responses():
            if self.ledger.deliverable(response.id):
                with contextlib.suppress(Exception):
                    await self.send(session, response)

    def _cancelled(self, task: asyncio.Task[list[CancelReport]]) -> None:
        """The tool layer reports each cancellation itself; only a failure to cancel is the session's to log."""
        if task.cancelled() or task.exception() is not None:
            self.log.error(
                "cancelling tool calls failed: %s", task.exception() if not task.cancelled() else "cancelled"
            )
