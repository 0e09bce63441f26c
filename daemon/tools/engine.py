"""Runs tool calls as MQTT actions. Knows nothing of the Live transport: calls come in as (id, name, args),
answers go out as (id, name, response, scheduling), and cancellations come in as ids.

Guarantees, per call id: executed at most once; a call cancelled before its publish publishes nothing; a call
cancelled after its publish runs its undo; a cancelled call is never answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import jsonschema

from ..calls import CancelReport, ToolCall, ToolResponse
from ..events import Emit, Event, ToolCancelled, ToolFinished, ToolRepeated, ToolStarted, notify_all
from ..logs import logger
from ..mqtt.link import BrokerUnavailable, DeliveryUnknown
from ..yamlsrc import suggest
from . import template as tpl
from .authority import Authority, Refusal
from .registry import ArgumentError, Registry, RenderedPublish, Tool, describe_error
from .spec import SchedulingSpec

log = logger(__name__)

ID_MEMORY = 4096  # how many call ids are remembered to refuse repeats
ANSWERED_KEPT = 64  # answered calls kept whole, for an answer that comes back undelivered (requeue)
STATE_INLINE_BYTES = 1024  # larger device states are cut down to the expected fields
SETTLE_WAIT = 2.0  # how long a read may wait for the broker's retained messages after a (re)connect


class Link(Protocol):
    """What the engine needs of MQTT (daemon.mqtt.MqttLink)."""

    where: str
    last_error: str

    @property
    def connected(self) -> bool: ...

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None: ...

    def last(self, topic: str) -> Any: ...

    def listen(self, topic: str) -> contextlib.AbstractContextManager[asyncio.Queue[Any]]: ...

    async def wait_settled(self, timeout: float) -> bool: ...


@dataclass
class LocalTool:
    """A tool the daemon answers itself (timers, volume): declared like the others, run in-process, never
    publishing. The tool layer only validates and times it; what it does is the handler's business."""

    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments
    handler: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
    validator: jsonschema.Draft202012Validator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.validator = jsonschema.Draft202012Validator(self.parameters)

    def declaration(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters, "behavior": None}


class _Failed(Exception):
    def __init__(self, message: str, outcome: str = "error", status: str | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.status = status or ("unconfirmed" if outcome == "timeout" else "error")


@dataclass
class _Call:
    call: ToolCall
    started: float
    task: asyncio.Task[None] | None = None
    published: bool = False
    args: dict[str, Any] = field(default_factory=dict)
    tool: Tool | None = None  # what runs it: the tool, or for a tool with devices the named device's own
    previous: Any = None
    sent: list[str] = field(default_factory=list)
    response: ToolResponse | None = None
    finished: asyncio.Future[ToolResponse | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Engine:
    def __init__(self, registry: Registry, link: Link, observer: Emit | None = None) -> None:
        self.registry = registry
        self.link = link
        self.observer = observer
        self._calls: dict[str, _Call] = {}
        self._status: OrderedDict[str, str] = OrderedDict()  # id → running | ready | answered | cancelled
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._names: dict[str, str] = {}  # names of calls being cancelled, for their events
        self._late_cancels: set[str] = set()
        self._answered: deque[str] = deque()
        self.authority = Authority()
        self.local: dict[str, LocalTool] = {}

    def add_local(self, tool: LocalTool) -> None:
        self.local[tool.name] = tool

    def declarations(self) -> list[dict[str, Any]]:
        """Every tool the model may call: the configured ones, then the daemon's own."""
        return self.registry.declarations() + [t.declaration() for t in self.local.values()]

    # ---- the interface the live layer uses -------------------------------------------------------------------

    def submit(self, call: ToolCall) -> bool:
        """Start a call; False for an id already seen (the service is known to repeat calls)."""
        if call.id in self._status:
            log.info("tool call %s (%s) repeated; executed once", call.id, call.name, extra=_fields(call))
            self._emit(ToolRepeated(call.id, call.name, call.args))
            return False
        self._remember(call.id, "running")
        c = _Call(call, time.monotonic())
        self._calls[call.id] = c
        c.task = asyncio.get_running_loop().create_task(self._run(c), name=f"tool-{call.id}")
        self._emit(ToolStarted(call.id, call.name, call.args))
        return True

    def heard(self, text: str, spoken: bool) -> None:
        """What the user said, and whether it was spoken (sensitive tools need a spoken yes)."""
        self.authority.heard(text, spoken)

    def adopt(self, call: ToolCall, earlier: ToolResponse) -> None:
        """Answer `call` with a result another call already produced, without running anything: the service
        lost the earlier call and asked again. Cancelling it later has nothing to undo."""
        if call.id in self._status:
            return
        c = _Call(call, time.monotonic())
        c.response = earlier
        c.finished.set_result(earlier)
        self._calls[call.id] = c
        self._remember(call.id, "ready")
        self._ready.put_nowait(call.id)

    async def next_response(self) -> ToolResponse:
        """The next answer that is ready; cancelled calls never come out of here. Hand it back with requeue()
        if it could not be delivered."""
        while True:
            cid = await self._ready.get()
            c = self._calls.get(cid)
            if c is not None and self._status.get(cid) == "ready" and c.response is not None:
                self._remember(cid, "answered")
                return c.response

    def ready_responses(self) -> list[ToolResponse]:
        """Every answer ready now, without waiting (used when a session is closing)."""
        out = []
        while not self._ready.empty():
            cid = self._ready.get_nowait()
            c = self._calls.get(cid)
            if c is not None and self._status.get(cid) == "ready" and c.response is not None:
                self._remember(cid, "answered")
                out.append(c.response)
        return out

    def requeue(self, response: ToolResponse) -> None:
        """An answer taken for delivery did not reach the service (the connection dropped): make it ready again
        for the next connection, unless the call was cancelled meanwhile, in which case undo it instead."""
        cid = response.id
        c = self._calls.get(cid)
        if c is None or self._status.get(cid) != "answered":
            return
        if cid in self._late_cancels:
            self._late_cancels.discard(cid)
            self._remember(cid, "cancelled")
            self._names[cid] = c.call.name
            self._calls.pop(cid, None)
            asyncio.get_running_loop().create_task(self._report([self._compensate(c)]))
            return
        self._remember(cid, "ready")
        self._ready.put_nowait(cid)

    def cancel(self, ids: list[str]) -> asyncio.Task[list[CancelReport]]:
        """Cancel calls by id: running ones stop (and undo what they published); ready but unanswered ones
        are withdrawn and undone. The stopping happens now, before this returns, so a call whose task has not
        run yet never publishes; the returned task finishes the undo and reports what happened to each."""
        stopped = [self._stop(cid) for cid in ids]
        pending = [c if isinstance(c, CancelReport) else self._undo(c) for c in stopped]
        return asyncio.get_running_loop().create_task(self._report(pending), name="tool-cancel")

    def _undo(self, c: _Call) -> Awaitable[CancelReport]:
        """A call that has handed a message to the link is undone now, not after its task has unwound: it was
        cancelled at an await, so it publishes nothing more, and what the undo needs was set before that
        publish. One that has not published is waited for, and reports that nothing went out."""
        if c.published:
            return asyncio.ensure_future(self._compensate(c))
        return self._settle_one(c)

    async def _report(self, pending: list[CancelReport | Awaitable[CancelReport]]) -> list[CancelReport]:
        settled = iter(await asyncio.gather(*(p for p in pending if not isinstance(p, CancelReport))))
        reports = [p if isinstance(p, CancelReport) else next(settled) for p in pending]
        for r in reports:
            name = self._names.pop(r.id, "?")
            log.info("tool call %s cancelled: %s %s", r.id, r.result, r.detail, extra={"CALL_ID": r.id, "TOOL": name})
            self._emit(ToolCancelled(r.id, name, r.result, r.detail))
        return reports

    async def run(self, call: ToolCall) -> ToolResponse | None:
        """Submit one call and wait for its answer (the `livehome call` and `say` paths)."""
        if not self.submit(call):
            return None
        c = self._calls[call.id]
        response = await asyncio.shield(c.finished)
        if response is not None and self._status.get(call.id) == "ready":
            self._remember(call.id, "answered")
            self._calls.pop(call.id, None)
        return response

    @property
    def outstanding(self) -> list[str]:
        """Ids still running."""
        return [cid for cid, c in self._calls.items() if self._status.get(cid) == "running"]

    async def settle(self, timeout: float) -> list[CancelReport]:
        """End of a conversation: give running calls `timeout` to finish, then cancel (and undo) the rest."""
        running = [c.task for c in self._calls.values() if c.task and not c.task.done()]
        if running:
            await asyncio.wait(running, timeout=timeout)
        late = self.outstanding
        return await self.cancel(late) if late else []

    # ---- execution -------------------------------------------------------------------------------------------

    async def _run(self, c: _Call) -> None:
        try:
            response = await self._execute(c)
        except asyncio.CancelledError:
            c.finished.set_result(None)
            if self._status.get(c.call.id) != "cancelled":
                raise  # not our cancellation: the daemon is shutting down
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return
        c.response = response
        self._remember(c.call.id, "ready")
        self._ready.put_nowait(c.call.id)
        c.finished.set_result(response)
        level = logging.INFO if response.outcome == "success" else logging.WARNING
        log.log(level, "%s", _journal_line(c, response), extra=_fields(c.call))
        self._emit(
            ToolFinished(
                c.call.id,
                c.call.name,
                c.call.args,
                response.outcome,
                response.timings["total"],
                response.response.get("error", ""),
                tuple(c.sent),
            )
        )

    async def _execute(self, c: _Call) -> ToolResponse:
        timings: dict[str, float] = {}
        try:
            result, outcome = await self._steps(c, timings), "success"
        except _Failed as failure:
            result, outcome = {"ok": False, "status": failure.status, "error": str(failure)}, failure.outcome
        timings["total"] = time.monotonic() - c.started
        tool = self.registry.get(c.call.name)
        scheduling = None
        if c.call.name in self.local:
            scheduling = SchedulingSpec().for_outcome(outcome)
        elif tool is not None and tool.spec.behavior != "BLOCKING":  # the live layer drops it for synchronous models
            scheduling = (tool.spec.scheduling or SchedulingSpec()).for_outcome(outcome)
        return ToolResponse(c.call.id, c.call.name, result, scheduling, outcome, timings)

    async def _steps(self, c: _Call, timings: dict[str, float]) -> dict[str, Any]:
        local = self.local.get(c.call.name)
        if local is not None:
            return await self._run_local(local, c)
        tool = self.registry.get(c.call.name)
        if tool is None:
            raise _Failed(f"unknown tool '{c.call.name}'{suggest(c.call.name, self.registry.tools)}")
        mark = time.monotonic()
        try:
            device, c.args = tool.select(c.call.args)
        except ArgumentError as exc:
            raise _Failed(f"invalid arguments, nothing was done: {exc}") from None
        try:
            self.authority.check(tool.spec, c.call)
        except Refusal as refusal:
            raise _Failed(str(refusal), status=refusal.status) from None
        if why := device.gone or self._offline(device):
            raise _Failed(f"{why}; nothing was sent", status="unavailable")
        c.tool = tool = device
        if tool.read_topic is not None:
            if self.link.connected:  # right after a (re)connect the retained readings are on their way
                await self.link.wait_settled(SETTLE_WAIT)
            return self._read(tool, c.args)
        env = tpl.Env(c.args)
        try:
            messages = tool.render_publishes(tool.publishes, env)
            confirm_topic = tpl.render_text(tool.confirm_topic, env) if tool.confirm_topic else None
            expect = tpl.render(tool.confirm_expect, env) if confirm_topic else None
            state_topic = tpl.render_text(tool.state_topic, env) if tool.state_topic else None
        except (ArgumentError, tpl.Missing) as exc:
            raise _Failed(f"cannot build the message, nothing was done: {exc}") from None
        timings["validate"] = time.monotonic() - mark
        if state_topic is not None:
            previous = self.link.last(state_topic)
            c.previous = previous.value() if previous is not None else None
        if not self.link.connected:
            raise _Failed(f"MQTT broker {self.link.where} unreachable ({self.link.last_error}); nothing was sent")
        listening = self.link.listen(confirm_topic) if confirm_topic else contextlib.nullcontext(None)
        with listening as replies:
            await self._publish_all(c, messages, timings)
            if confirm_topic is None or tool.spec.confirm is None:
                return {"ok": True, "status": "sent"}
            mark = time.monotonic()
            state = await self._confirm(replies, expect, tool.spec.confirm.timeout)
            timings["confirm"] = time.monotonic() - mark
        return {"ok": True, "status": "confirmed", "state": _trim_state(state, expect)}

    async def _publish_all(self, c: _Call, messages: list[RenderedPublish], timings: dict[str, float]) -> None:
        for i, m in enumerate(messages):
            mark = time.monotonic()
            c.published = True  # from here on the message may be on the wire: a cancel must undo
            try:
                await self.link.publish(m.topic, m.payload, m.qos, m.retain)
            except (BrokerUnavailable, DeliveryUnknown) as exc:
                if i == 0 and isinstance(exc, BrokerUnavailable):
                    c.published = False  # refused before anything was handed to the socket
                sent = f"; {i} of {len(messages)} messages went out" if len(messages) > 1 else ""
                raise _Failed(f"{exc}{sent}") from None
            timings[f"publish {m.topic}"] = time.monotonic() - mark
            c.sent.append(f"{m.topic} {m.payload.decode(errors='replace')}")

    async def _confirm(self, replies: asyncio.Queue[Any], expect: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await asyncio.wait_for(replies.get(), left)
            except TimeoutError:
                break
            last = msg.value()
            if _matches(last, expect):
                return last
        seen = f"; last report: {_short_json(last)}" if last is not None else ""
        raise _Failed(f"sent, but the device did not confirm within {timeout:g}s{seen}", "timeout")

    async def _run_local(self, tool: LocalTool, c: _Call) -> dict[str, Any]:
        args = c.call.args if isinstance(c.call.args, dict) else {}
        problems = [describe_error(e) for e in tool.validator.iter_errors(c.call.args)]
        if problems:
            raise _Failed(f"invalid arguments, nothing was done: {'; '.join(problems)}")
        result = await tool.handler(dict(args))
        if not result.get("ok", True):
            raise _Failed(str(result.get("error", "failed")))
        return {"ok": True, **result}

    def _offline(self, tool: Tool) -> str | None:
        """Why the device says it cannot be reached now, from the last message on its availability topic."""
        spec = tool.availability
        msg = self.link.last(spec.topic) if spec is not None else None
        if spec is None or msg is None:
            return None
        value = msg.value()
        said = _path(value, spec.field) if spec.field and isinstance(value, dict) else value  # or the bare word
        return f"the device reports itself offline on {spec.topic}" if said == spec.offline else None

    def _read(self, tool: Tool, args: dict[str, Any]) -> dict[str, Any]:
        assert tool.read_topic is not None and tool.spec.read is not None
        spec = tool.spec.read
        topic = tpl.render_text(tool.read_topic, tpl.Env(args))
        msg = self.link.last(topic)
        if msg is None:
            state = "connected" if self.link.connected else f"not connected: {self.link.last_error}"
            raise _Failed(f"no reading from the device yet (MQTT {state})")
        value = msg.value()
        if msg.truncated:
            value = value[:1024]
        if spec.fields:
            picked = {name: _path(value, path) for name, path in spec.fields.items()}
            if all(v is None for v in picked.values()):
                raise _Failed(f"the last report has none of the fields {', '.join(spec.fields.values())}")
            value = picked
        age = round(time.monotonic() - msg.received, 1)
        value, cut = device_data(value)
        result: dict[str, Any] = {"ok": True, "status": "read", "value": value, "age_seconds": age}
        if cut or msg.truncated:
            result["truncated"] = True  # the device said more than the model is given
        if msg.retain:
            result["retained"] = True  # the broker's stored copy: its true age is unknown
        if spec.max_age is not None and age > spec.max_age:
            result.update(ok=False, status="stale", error=f"the last reading is {age:g}s old (limit {spec.max_age:g}s)")
        return result

    # ---- cancellation ----------------------------------------------------------------------------------------

    def _stop(self, cid: str) -> CancelReport | _Call:
        status = self._status.get(cid)
        c = self._calls.get(cid)
        if status is None:
            return CancelReport(cid, "not_found", "no such call")
        if status == "answered":
            self._late_cancels.add(cid)  # honoured if the answer comes back undelivered (requeue)
            return CancelReport(cid, "already_answered", "its answer had already been handed over")
        if status == "cancelled" or c is None:
            return CancelReport(cid, "already_cancelled")
        self._remember(cid, "cancelled")
        self._names[cid] = c.call.name
        self._calls.pop(cid, None)
        if c.task is not None and not c.task.done():
            c.task.cancel()
        return c

    async def _settle_one(self, c: _Call) -> CancelReport:
        if c.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await c.task
        return await self._compensate(c)

    async def _compensate(self, c: _Call) -> CancelReport:
        cid = c.call.id
        if not c.published:
            return CancelReport(cid, "not_published", "nothing had been published")
        tool = c.tool
        if tool is None or not tool.undo:
            return CancelReport(cid, "no_undo", "the publish had gone out and this tool has no undo")
        try:
            messages = tool.render_publishes(tool.undo, tpl.Env(c.args, c.previous))
        except (ArgumentError, tpl.Missing) as exc:
            return CancelReport(cid, "undo_skipped", f"undo not possible: {exc}")
        try:
            for m in messages:
                await self.link.publish(m.topic, m.payload, m.qos, m.retain)
        except Exception as exc:
            return CancelReport(cid, "undo_failed", str(exc))
        return CancelReport(
            cid, "undone", ", ".join(f"{m.topic} {m.payload.decode(errors='replace')}" for m in messages)
        )

    # ---- bookkeeping -----------------------------------------------------------------------------------------

    def _remember(self, cid: str, status: str) -> None:
        self._status[cid] = status
        self._status.move_to_end(cid)
        while len(self._status) > ID_MEMORY:
            old, _ = self._status.popitem(last=False)
            self._calls.pop(old, None)
        if status == "answered":  # its id is remembered (repeats), the call itself (~3 KiB) only for a while
            self._answered.append(cid)
            while len(self._answered) > ANSWERED_KEPT:
                old = self._answered.popleft()
                if self._status.get(old) == "answered":
                    self._calls.pop(old, None)

    def _emit(self, event: Event) -> None:
        if self.observer is not None:
            notify_all([self.observer], event, log)


def _journal_line(c: _Call, response: ToolResponse) -> str:
    """One line per call, in the words a person debugging from the journal needs: what was asked, what went on
    the wire, what came of it. `set_light kitchen ON → zigbee2mqtt/Kitchen/set {"state":"ON"} → confirmed in 8 ms`"""
    args = c.call.args
    values = args.values() if isinstance(args, dict) else [args]
    asked = " ".join([c.call.name, *(_short(v, 80) if isinstance(v, str) else _short_json(v) for v in values)])
    body = response.response
    took = f"{response.timings.get('total', 0.0) * 1000:.0f} ms"
    if body.get("status") in ("read", "stale") and not c.sent:
        return f"{asked} → {body['status']} {_short_json(body.get('value'))} in {took}"
    wire = ", ".join(_short(m, 300) for m in c.sent) or "nothing published"
    if response.outcome == "success":
        return f"{asked} → {wire} → {body.get('status')} in {took}"
    return f"{asked} → {wire} → {body.get('status')} after {took}: {body.get('error', '')}"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _fields(call: ToolCall) -> dict[str, str]:
    return {"TOOL": call.name, "CALL_ID": call.id}


def _matches(value: Any, expect: Any) -> bool:
    if isinstance(expect, dict):
        return isinstance(value, dict) and all(k in value and value[k] == v for k, v in expect.items())
    if isinstance(value, dict | list):
        return value == expect
    return tpl.to_text(value) == tpl.to_text(expect)


def _path(value: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _short_json(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 200 else text[:200] + "…"


def _trim_state(state: Any, expect: Any) -> Any:
    if isinstance(state, dict) and len(json.dumps(state)) > STATE_INLINE_BYTES and isinstance(expect, dict):
        return {k: state[k] for k in expect if k in state}
    return device_data(state)[0]


MAX_FIELDS = 32
MAX_STRING = 256
MAX_DEPTH = 4
MAX_DATA_BYTES = 4096


def device_data(value: Any, depth: int = 0) -> tuple[Any, bool]:
    """A device's report as the model gets it: bounded in depth, fields, items and string length (anyone who can
    publish a state can put text there, "ignore previous instructions" included). Returns (value, was_cut)."""
    cut = False
    if isinstance(value, str):
        return (value, False) if len(value) <= MAX_STRING else (value[:MAX_STRING] + "…", True)
    if isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            return "…", True
        items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
        if len(items) > MAX_FIELDS:
            items, cut = items[:MAX_FIELDS], True
        out = []
        for key, item in items:
            bounded, item_cut = device_data(item, depth + 1)
            cut |= item_cut
            out.append((str(key)[:MAX_STRING] if isinstance(value, dict) else key, bounded))
        value = dict(out) if isinstance(value, dict) else [v for _, v in out]
        if depth == 0 and len(json.dumps(value, ensure_ascii=False, default=str)) > MAX_DATA_BYTES:
            return json.dumps(value, ensure_ascii=False, default=str)[:MAX_DATA_BYTES] + "…", True
    return value, cut
