"""The assistant itself on MQTT: availability (with a last will), retained state, events, commands, and Home
Assistant discovery.

Everything here is best effort and never in the way of a conversation: updates go out in order through one
publisher task, are dropped (never queued for later) while the broker is unreachable, and after every reconnect
the current availability, state and discovery are published again. A stale "start a conversation" delivered
minutes late is worse than none, so nothing survives an outage but the latest state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..config import Config
from ..credentials import redact
from ..events import (
    STATES,
    Announced,
    Event,
    Reconnecting,
    Refused,
    Reloaded,
    ReloadRefused,
    SessionEnded,
    SessionStarted,
    StateChanged,
    Status,
    StoodDown,
    TimerRinging,
    TimersChanged,
    ToolCancelled,
    ToolFinished,
    WakeHeard,
)
from ..logs import log_every, logger
from .commands import Command, CommandError, Controller, parse_command
from .discovery import discovery
from .link import BrokerUnavailable, DeliveryUnknown, Message, MqttLink, Will
from .payloads import Verifier
from .topics import EVENT_TYPES, OFFLINE, ONLINE, Topics

log = logger(__name__)

COMMAND_BACKLOG = 16  # commands waiting for the controller; more are refused rather than run late
PUBLISH_BACKLOG = 256
HA_BIRTH_JITTER = 0.5  # HA asks for a random delay before answering its birth message


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(data: Any) -> bytes:
    """JSON with registered secrets redacted: defence in depth for error texts that quote a failure."""
    return redact(json.dumps(data, ensure_ascii=False, default=str, separators=(",", ":"))).encode()


@dataclass(frozen=True)
class _Out:
    topic: str
    payload: bytes
    retain: bool
    connection: int  # link.connects when queued: never delivered on a later connection


class Presence:
    """This satellite's face on MQTT: it publishes what the daemon reports (`notify`, an events.Observer) and
    hands the commands it receives to the controller, one at a time."""

    def __init__(self, link: MqttLink, config: Config, controller: Controller, secret: bytes | None = None) -> None:
        self.link = link
        self.config = config
        self.controller = controller
        self.verifier = Verifier(secret) if secret else None  # a shared secret: only signed commands count
        self.topics = Topics.of(config)
        self._state = "idle"
        self._since = _now()
        self._muted = False
        self._last_wake: dict[str, Any] | None = None
        self._last_tool: dict[str, Any] | None = None
        self._status: dict[str, Any] = {}
        self._timers: list[dict[str, Any]] | None = None
        self._published_state: bytes | None = None  # the state payload without `since`, for skipping duplicates
        self._outbox: asyncio.Queue[_Out] = asyncio.Queue()
        self._commands: asyncio.Queue[Command] = asyncio.Queue(COMMAND_BACKLOG)
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False
        self._down_logged = False
        self._birth_topics: set[str] = set()
        self._attached = False  # subscriptions and the connect hook outlive a stop(): registered once
        self._clearing = 0

    @staticmethod
    def will(config: Config) -> Will:
        """The last will for MqttLink: the broker marks this satellite offline if it dies without a word."""
        return Will(Topics.of(config).availability, OFFLINE.encode(), qos=1, retain=True)

    @property
    def state(self) -> str:
        return self._state

    @property
    def muted(self) -> bool:
        return self._muted

    # ---- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to commands and announce availability, state and discovery now and after every reconnect."""
        if self._running:
            return
        self._running = True
        loop = asyncio.get_running_loop()
        for worker, name in ((self._publisher(), "presence-publish"), (self._executor(), "presence-commands")):
            task = loop.create_task(worker, name=name)
            self._tasks.add(task)
        if not self._attached:
            self._attached = True
            self.link.handle(self.topics.command, self._on_command)
            self.link.add_connect_hook(self._announce)
        self._watch_birth()
        if self.link.connected:
            self._announce()

    async def stop(self, timeout: float | None = None) -> None:
        """Send what is pending, then mark this satellite offline (retained): a clean disconnect sends no will."""
        if not self._running:
            return
        self._running = False
        wait = self.link.settings.publish_timeout if timeout is None else timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._outbox.join(), wait)
        current = asyncio.current_task()
        others = [t for t in self._tasks if t is not current]  # a command that stops presence must not cancel itself
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self._tasks.clear()
        try:
            await self.link.publish(self.topics.availability, OFFLINE.encode(), qos=1, retain=True)
        except (BrokerUnavailable, DeliveryUnknown) as exc:
            log.warning("could not mark %s offline: %s", self.topics.availability, exc)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until everything queued so far has been published (or dropped)."""
        async with asyncio.timeout(timeout):
            await self._outbox.join()

    def reconfigure(self, config: Config) -> None:
        """After a reload: new room, name, wake words or discovery settings are published at once; entities that
        no longer exist are removed from HA. A new assistant.id or topic prefix needs a restart (the last will is
        fixed for the life of a connection)."""
        old = self.config
        if Topics.of(config) != self.topics:
            log.warning(
                "assistant.id and mqtt.topic_prefix changes apply after a restart; still publishing under %s",
                self.topics.base,
            )
            assistant = config.assistant.model_copy(update={"id": old.assistant.id})
            mqtt = config.mqtt.model_copy(update={"topic_prefix": old.mqtt.topic_prefix})
            config = config.model_copy(update={"assistant": assistant, "mqtt": mqtt})
        self.config = config
        self._watch_birth()
        if self._running and self.link.connected:
            stale = set(discovery(old)) - set(self._discovery())
            for topic in sorted(stale):
                self._send(topic, b"", retain=True)
            self._send_discovery()
            self._send_state(force=True)

    # ---- what the daemon says ------------------------------------------------------------------------------

    def set_state(self, state: str, muted: bool | None = None) -> None:
        """Publish the daemon's state (retained) unless nothing changed."""
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")
        if state != self._state:
            self._since = _now()
        self._state = state
        if muted is not None:
            self._muted = muted
        self._send_state()

    def on_wake(self, word: str, score: float) -> None:
        """An event now; the state shows it as last_wake from the state change that follows."""
        self._last_wake = {"word": word, "score": round(float(score), 3), "at": _now()}
        self.event("wake", word=word, score=round(float(score), 3))

    def event(self, kind: str, **data: Any) -> None:
        """Publish an event (not retained). Best effort: dropped while the broker is unreachable."""
        if kind not in EVENT_TYPES:
            raise ValueError(f"event kind must be one of {', '.join(EVENT_TYPES)}, not {kind!r}")
        if "event_type" in data or "at" in data:
            raise ValueError("event fields event_type and at are set by Presence itself")
        self._send(self.topics.events, _dumps({"event_type": kind, **data, "at": _now()}), retain=False)

    # ---- what the daemon reports -----------------------------------------------------------------------------

    def notify(self, event: Event) -> None:
        """The daemon's observer hook: its state as it sees it, wake words, sessions, tool calls and reloads."""
        match event:
            case StateChanged(state=state, muted=muted):
                self.set_state(state, muted)
            case WakeHeard(word=word, score=score):
                self.on_wake(word, score)
            case SessionStarted(trigger=trigger, word=word):
                self.event("session_started", **{k: v for k, v in (("trigger", trigger), ("word", word)) if v})
            case SessionEnded(reason=reason, detail=detail, duration=duration, tool_calls=calls, tokens=tokens):
                self.event(
                    "session_ended",
                    reason=reason,
                    detail=detail,
                    duration=round(duration, 3),
                    tool_calls=calls,
                    tokens=tokens,
                )
                if event.failed:
                    self.event("error", message=f"conversation ended: {reason}" + (f": {detail}" if detail else ""))
            case Reconnecting(why=why, attempt=attempt):
                self.event("reconnecting", why=why, attempt=attempt)
            case ToolFinished():
                self._tool_finished(event)
            case ToolCancelled(id=cid, name=name, result=result, detail=detail):
                self.event("cancelled", id=cid, name=name, result=result, detail=detail)
            case StoodDown():
                self.event("stood_down", **event.fields())
            case Refused(trigger=trigger, why=why):
                self.event("error", message=f"{trigger} refused: {why}")
            case Status():
                self._status = {k: v for k, v in event.fields().items()}
                self._send_state()
            case TimersChanged(timers=timers):
                self._timers = list(timers)
                self._send(self.topics.timers, _dumps(self._timers), retain=True)
            case TimerRinging(id=tid, label=label):
                self.event("timer_fired", id=tid, label=label)
            case Announced(text=text, follow_up=follow_up):
                self.event("announced", length=len(text), follow_up=follow_up)  # the text is not published
            case Reloaded():
                self.event("reloaded")
            case ReloadRefused(problems=problems):
                self.event("reload_refused", problems=list(problems))

    def _tool_finished(self, e: ToolFinished) -> None:
        record = {
            "id": e.id,
            "name": e.name,
            "args": e.args or {},
            "outcome": e.outcome,
            "latency": round(e.latency, 3),
        }
        if e.detail:
            record["detail"] = e.detail
        self.event("tool_call", **record)
        self._last_tool = {**record, "at": _now()}
        self._send(self.topics.last_tool, _dumps(self._last_tool), retain=True)

    # ---- commands --------------------------------------------------------------------------------------------

    def _on_command(self, msg: Message) -> None:
        if msg.retain:
            if msg.payload:  # a retained command would run again on every reconnect: refuse it, and clear it
                self._reject(
                    "retained command ignored (it would run on every start); clearing it. If it comes back, "
                    f"clear it with: mosquitto_pub -r -n -t '{self.topics.command}'",
                    None,
                )
                self._send(self.topics.command, b"", retain=True)
                self._clearing += 1  # the broker hands our own empty message back: not a command
            return
        if not msg.payload and self._clearing:
            self._clearing -= 1
            return
        try:
            command = parse_command(msg.payload, self.verifier)
        except CommandError as exc:
            self._reject(str(exc), exc.command)
            return
        if command.name not in self.config.assistant.commands:
            self._reject(f"{command.name} is not enabled here (assistant.commands)", command.name)
            return
        try:
            self._commands.put_nowait(command)
        except asyncio.QueueFull:
            self._reject(f"busy: {COMMAND_BACKLOG} commands are already waiting", command.name)

    def _reject(self, message: str, command: str | None) -> None:
        log_every(log, f"reject:{message[:40]}", 10.0, logging.WARNING, "MQTT command on %s rejected: %s",
                  self.topics.command, message)
        self.event("command_rejected", message=message, **({"command": command} if command else {}))

    async def _executor(self) -> None:
        """One command at a time, in arrival order: "start" then "end" must not overtake each other."""
        while True:
            command = await self._commands.get()
            log.info("MQTT command: %s%s", command.name, f" ({len(command.text)} characters)" if command.text else "")
            try:
                await self._execute(command)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("MQTT command %s failed", command.name)
                self.event("command_failed", command=command.name, message=str(exc) or type(exc).__name__)

    async def _execute(self, command: Command) -> None:
        c = self.controller
        if command.name == "start":
            await c.start_conversation(None)
        elif command.name == "say":
            await c.start_conversation(command.text)
        elif command.name == "end":
            await c.end_conversation()
        elif command.name in ("mute", "unmute"):
            muted = command.name == "mute"
            c.set_muted(muted)
        elif command.name == "reload":
            await c.reload()
        elif command.name == "announce":
            a = command.args
            await c.announce(a["text"], a.get("chime", True), a.get("follow_up", False))
        elif command.name == "volume":
            c.set_volume(command.args["level"])
        elif command.name == "stop":
            c.stop_ringing()
        elif command.name == "barge_in":
            c.set_barge_in(command.args["policy"])
        elif command.name == "refresh":
            await c.refresh()
        else:  # a command in SPECS that nothing carries out would be dropped silently
            raise RuntimeError(f"{command.name} is not carried out by this daemon")

    # ---- publishing ------------------------------------------------------------------------------------------

    def _state_payload(self) -> dict[str, Any]:
        return {
            **self._status,  # volume, barge_in, live, tokens_today, last_error, next_timer
            "state": self._state,
            "muted": self._muted,
            "room": self.config.assistant.room,
            "wake_words": [w.name for w in self.config.wake.words],
            "last_wake": self._last_wake,
        }

    def _send_state(self, force: bool = False) -> None:
        body = self._state_payload()
        key = _dumps(body)
        if key == self._published_state and not force:
            return
        self._published_state = key
        self._send(self.topics.state, _dumps({**body, "since": self._since}), retain=True)

    def _discovery(self) -> dict[str, dict[str, Any]]:
        return discovery(self.config) if self.config.assistant.discovery_enabled else {}

    def _send_discovery(self) -> None:
        """Publish discovery, or remove it (empty retained payloads) when it was turned off with discovery: false."""
        if self.config.assistant.discovery_enabled:
            for topic, payload in self._discovery().items():
                self._send(topic, _dumps(payload), retain=True)
        else:
            for topic in discovery(self.config):
                self._send(topic, b"", retain=True)

    def _announce(self) -> None:
        """After every (re)connect: retained discovery, state and last tool call, then online."""
        self._down_logged = False
        self._send_discovery()
        self._send_state(force=True)
        if self._last_tool is not None:
            self._send(self.topics.last_tool, _dumps(self._last_tool), retain=True)
        if self._timers is not None:
            self._send(self.topics.timers, _dumps(self._timers), retain=True)
        self._send(self.topics.availability, ONLINE.encode(), retain=True)

    def _watch_birth(self) -> None:
        """HA's birth message (<discovery_prefix>/status = online) asks for discovery and state again."""
        prefix = self.config.assistant.discovery_prefix
        if not prefix or not self._running:
            return
        topic = f"{prefix}/status"
        if topic not in self._birth_topics:
            self._birth_topics.add(topic)
            self.link.handle(topic, self._on_birth)

    def _on_birth(self, msg: Message) -> None:
        prefix = self.config.assistant.discovery_prefix
        if msg.topic != f"{prefix}/status" or msg.payload.strip() != ONLINE.encode():
            return
        if not self.config.assistant.discovery_enabled:
            return

        async def answer() -> None:
            await asyncio.sleep(random.uniform(0, HA_BIRTH_JITTER))
            if self._running and self.link.connected:
                self._send_discovery()
                self._send_state(force=True)
                self._send(self.topics.availability, ONLINE.encode(), retain=True)

        task = asyncio.get_running_loop().create_task(answer(), name="presence-birth")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, topic: str, payload: bytes, retain: bool) -> None:
        if not self._running:
            return
        if not self.link.connected:
            self._dropped(f"MQTT broker {self.link.where} unreachable")
            return
        if self._outbox.qsize() >= PUBLISH_BACKLOG:
            log_every(log, "presence-full", 60.0, logging.WARNING,
                      "presence updates are dropped: %d are waiting for the broker", PUBLISH_BACKLOG)
            return
        self._outbox.put_nowait(_Out(topic, payload, retain, self.link.connects))

    def _dropped(self, reason: str) -> None:
        if not self._down_logged:
            self._down_logged = True
            log.warning("presence updates are dropped until the broker is back (%s)", reason)

    async def _publisher(self) -> None:
        while True:
            out = await self._outbox.get()
            try:
                if out.connection != self.link.connects or not self.link.connected:
                    self._dropped("the connection they were meant for was lost")
                    continue
                await self.link.publish(out.topic, out.payload, qos=1, retain=out.retain)
            except (BrokerUnavailable, DeliveryUnknown) as exc:
                self._dropped(str(exc))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("publishing %s failed", out.topic)
            finally:
                self._outbox.task_done()
