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
import importlib.metadata
import json
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePath
from typing import Any, Protocol

from .calls import EngineEvent
from .config import Config
from .mqtt import BrokerUnavailable, DeliveryUnknown, Message, MqttLink, Will
from .service import redact

log = logging.getLogger(__name__)

ONLINE, OFFLINE = "online", "offline"

# idle: waiting for the wake word; listening: wake word heard, deciding with the other satellites who answers;
# connecting: opening (or reopening) the Live connection; conversation: the user's turn; speaking: the model's.
STATES = ("idle", "listening", "connecting", "conversation", "speaking", "muted")

# Every kind the events topic carries; Home Assistant's event entity has to be told them all in advance.
EVENT_TYPES = (
    "wake",
    "session_started",
    "session_ended",
    "tool_call",
    "cancelled",
    "reconnecting",
    "error",
    "stood_down",
    "command_rejected",
    "command_failed",
    "reloaded",
    "reload_refused",
)

COMMANDS = ("start", "end", "mute", "unmute", "say", "reload")
PLAIN_COMMANDS = frozenset(COMMANDS) - {"say"}  # accepted as bare words too: handy in HA's mqtt.publish
MAX_COMMAND_BYTES = 4096
MAX_SAY_CHARS = 1000
COMMAND_BACKLOG = 16  # commands waiting for the controller; more are refused rather than run late
PUBLISH_BACKLOG = 256
HA_BIRTH_JITTER = 0.5  # HA asks for a random delay before answering its birth message
SESSION_FAILURES = ("fatal", "connection_lost", "setup", "error")
_STATE_KEYS = frozenset({"state", "muted", "room", "wake_words", "last_wake", "since"})


def version() -> str:
    try:
        return importlib.metadata.version("livehome")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(data: Any) -> bytes:
    """JSON with registered secrets redacted: defence in depth for error texts that quote a failure."""
    return redact(json.dumps(data, ensure_ascii=False, default=str, separators=(",", ":"))).encode()


def wake_word_name(model: str) -> str:
    """What detections of a configured word are called (daemon.wake does the same): a file's stem, or the name."""
    if model.endswith((".tflite", ".onnx")) or "/" in model or "\\" in model:
        return PurePath(model).stem
    return model


@dataclass(frozen=True)
class Topics:
    base: str
    availability: str
    state: str
    events: str
    command: str
    last_tool: str

    @classmethod
    def of(cls, config: Config) -> Topics:
        base = f"{config.mqtt.topic_prefix}/{config.assistant.id}"
        return cls(
            base, f"{base}/availability", f"{base}/state", f"{base}/events", f"{base}/command", f"{base}/last_tool"
        )


def availability_filter(config: Config) -> str:
    """Every satellite's availability topic on this prefix (the arbiter uses it to know its peers)."""
    return f"{config.mqtt.topic_prefix}/+/availability"


# ---- commands ----------------------------------------------------------------------------------------------------


class CommandError(ValueError):
    def __init__(self, message: str, command: str | None = None) -> None:
        super().__init__(message)
        self.command = command


@dataclass(frozen=True)
class Command:
    name: str
    text: str | None = None


def _shown(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise CommandError(f"{key}: given twice")
        seen[key] = value
    return seen


def parse_command(payload: bytes) -> Command:
    """A command payload → Command, or CommandError naming the field at fault. JSON objects such as
    {"command": "say", "text": "..."}, or a bare word for the commands that take nothing ("start", "mute")."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"command is {len(payload)} bytes; at most {MAX_COMMAND_BYTES} are accepted")
    try:
        body = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CommandError("command is not UTF-8 text") from None
    if not body:
        raise CommandError('empty command; send e.g. {"command": "start"}')
    expected = ", ".join(COMMANDS)
    if body[0] not in '{["':
        word = body.lower()
        if word in PLAIN_COMMANDS:
            return Command(word)
        if word == "say" or word.startswith("say "):
            raise CommandError('say needs JSON: {"command": "say", "text": "..."}', "say")
        raise CommandError(f"unknown command {_shown(body)}; expected one of {expected}")
    try:
        data = json.loads(body, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise CommandError(f"command is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict):
        raise CommandError('command must be a JSON object such as {"command": "start"}')
    if "command" not in data:
        raise CommandError(f"command: missing; expected one of {expected}")
    name = data["command"]
    if not isinstance(name, str):
        raise CommandError(f"command: must be a string, not {_shown(name)}")
    if name not in COMMANDS:
        raise CommandError(f"command: unknown command {_shown(name)}; expected one of {expected}")
    allowed = {"command", "text"} if name == "say" else {"command"}
    if "text" in data and name != "say":
        raise CommandError(f"text: only the say command takes text, not {name}", name)
    unknown = sorted(set(data) - allowed)
    if unknown:
        keys = ", ".join(_shown(k) for k in unknown)
        raise CommandError(f"unknown key{'s' if len(unknown) > 1 else ''} {keys} for command {name}", name)
    if name != "say":
        return Command(name)
    text = data.get("text")
    if text is None:
        raise CommandError("text: missing; say needs the text to send", name)
    if not isinstance(text, str):
        raise CommandError(f"text: must be a string, not {_shown(text)}", name)
    text = text.strip()
    if not text:
        raise CommandError("text: must not be empty", name)
    if len(text) > MAX_SAY_CHARS:
        raise CommandError(f"text: {len(text)} characters; at most {MAX_SAY_CHARS} are accepted", name)
    return Command(name, text)


class Controller(Protocol):
    """What MQTT commands ask of the conversation loop."""

    async def start_conversation(self, text: str | None = None) -> None: ...
    async def end_conversation(self) -> None: ...
    def set_muted(self, muted: bool) -> None: ...
    async def reload(self) -> None: ...


# ---- Home Assistant discovery ------------------------------------------------------------------------------------


def discovery(config: Config) -> dict[str, dict[str, Any]]:
    """Discovery topic → payload for each entity of this satellite, in HA's single-component format
    (<prefix>/<component>/<object_id>/config with object_id = unique_id, HA's documented best practice).
    Empty when assistant.discovery_prefix is unset."""
    a = config.assistant
    if not a.discovery_prefix:
        return {}
    t = Topics.of(config)
    uid = f"livehome_{a.id}"
    device: dict[str, Any] = {
        "identifiers": [uid],
        "name": a.name or f"livehome {a.id}",
        "manufacturer": "livehome",
        "model": "Voice satellite",
        "sw_version": version(),
    }
    if a.room:
        device["suggested_area"] = a.room
    common = {
        "availability_topic": t.availability,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "device": device,
        "origin": {"name": "livehome", "sw_version": version()},
        "qos": 1,
    }
    entities: dict[tuple[str, str], dict[str, Any]] = {
        ("sensor", "state"): {
            "name": "State",
            "state_topic": t.state,
            "value_template": "{{ value_json.state }}",
            "json_attributes_topic": t.state,
            "device_class": "enum",
            "options": list(STATES),
            "icon": "mdi:account-voice",
        },
        ("switch", "mute"): {
            "name": "Mute",
            "command_topic": t.command,
            "payload_on": json.dumps({"command": "mute"}),
            "payload_off": json.dumps({"command": "unmute"}),
            "state_topic": t.state,
            "value_template": "{{ 'ON' if value_json.muted else 'OFF' }}",
            "state_on": "ON",
            "state_off": "OFF",
            "icon": "mdi:microphone-off",
        },
        ("button", "start"): {
            "name": "Start conversation",
            "command_topic": t.command,
            "payload_press": json.dumps({"command": "start"}),
            "icon": "mdi:microphone-message",
        },
        ("button", "end"): {
            "name": "End conversation",
            "command_topic": t.command,
            "payload_press": json.dumps({"command": "end"}),
            "icon": "mdi:microphone-message-off",
        },
        # Retained, so HA shows the last call after its own restart (the events topic is not retained).
        ("sensor", "last_tool"): {
            "name": "Last tool call",
            "state_topic": t.last_tool,
            "value_template": "{{ value_json.name }}",
            "json_attributes_topic": t.last_tool,
            "icon": "mdi:tools",
            "entity_category": "diagnostic",
        },
        ("event", "events"): {
            "name": "Events",
            "state_topic": t.events,
            "event_types": list(EVENT_TYPES),
        },
    }
    return {
        f"{a.discovery_prefix}/{component}/{uid}_{key}/config": {"unique_id": f"{uid}_{key}", **common, **fields}
        for (component, key), fields in entities.items()
    }


# ---- presence ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Out:
    topic: str
    payload: bytes
    retain: bool
    connection: int  # link.connects when queued: never delivered on a later connection


class Presence:
    """This satellite's face on MQTT. Hooks: set_state/set_muted/on_wake/event for the conversation loop, and
    on_session_event/on_tool_event as LiveSession's and the Engine's observers (also available under the names
    of daemon.runtime's Observer protocol: daemon_event, session_event, tool_event)."""

    def __init__(self, link: MqttLink, config: Config, controller: Controller) -> None:
        self.link = link
        self.config = config
        self.controller = controller
        self.topics = Topics.of(config)
        self._state = "idle"
        self._since = _now()
        self._extra: dict[str, Any] = {}
        self._muted = False
        self._last_wake: dict[str, Any] | None = None
        self._last_tool: dict[str, Any] | None = None
        self._published_state: bytes | None = None  # the state payload without `since`, for skipping duplicates
        self._in_session = False
        self._session_tool_calls = 0
        self._outbox: asyncio.Queue[_Out] = asyncio.Queue()
        self._commands: asyncio.Queue[Command] = asyncio.Queue(COMMAND_BACKLOG)
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False
        self._down_logged = False
        self._full_logged = False
        self._birth_topics: set[str] = set()
        self._attached = False  # subscriptions and the connect hook outlive a stop(): registered once

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
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
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

    # ---- what the conversation loop calls --------------------------------------------------------------------

    def set_state(self, state: str, **extra: Any) -> None:
        """Publish the state (retained) unless nothing changed; extra fields go into the state payload."""
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")
        clash = _STATE_KEYS & set(extra)
        if clash:
            raise ValueError(f"state fields {', '.join(sorted(clash))} are set by Presence itself")
        if state != self._state:
            self._since = _now()
        self._state = state
        self._extra = extra
        if state == "muted":
            self._muted = True
        self._send_state()

    def set_muted(self, muted: bool) -> None:
        """Record a mute from anywhere (a command, a button): idle ↔ muted; a conversation keeps its state."""
        self._muted = muted
        if muted and self._state == "idle":
            self.set_state("muted")
        elif not muted and self._state == "muted":
            self.set_state("idle")
        else:
            self._send_state()

    def on_wake(self, word: str, score: float) -> None:
        self._last_wake = {"word": word, "score": round(float(score), 3), "at": _now()}
        self.event("wake", word=word, score=round(float(score), 3))
        if self._state == "idle":
            self.set_state("listening")
        else:
            self._send_state()

    def event(self, kind: str, **data: Any) -> None:
        """Publish an event (not retained). Best effort: dropped while the broker is unreachable."""
        if kind not in EVENT_TYPES:
            raise ValueError(f"event kind must be one of {', '.join(EVENT_TYPES)}, not {kind!r}")
        if "event_type" in data or "at" in data:
            raise ValueError("event fields event_type and at are set by Presence itself")
        self._send(self.topics.events, _dumps({"event_type": kind, **data, "at": _now()}), retain=False)

    # ---- observers -------------------------------------------------------------------------------------------

    def on_session_event(self, kind: str, data: Mapping[str, Any]) -> None:
        """LiveSession's observer: connection and turn changes become states; the session's end an event."""
        try:
            self._session_event(kind, data)
        except Exception:
            log.exception("presence failed on session event %s", kind)

    def _session_event(self, kind: str, data: Mapping[str, Any]) -> None:
        if kind in ("connecting", "connected", "reconnecting"):
            self._begin_session({})
        if kind in ("connecting", "reconnecting"):
            self.set_state("connecting")
        if kind == "reconnecting":
            self.event("reconnecting", why=data.get("why", ""), attempt=data.get("attempt"))
        elif kind == "connected":
            self.set_state("conversation")
        elif kind == "speaking":
            self.set_state("speaking")
        elif kind == "interrupted" or (kind == "transcript" and data.get("who") == "model"):
            if self._state == "speaking":
                self.set_state("conversation")
        elif kind == "ended":
            self._end_session(
                reason=data.get("reason", ""),
                detail=data.get("detail", ""),
                duration=round(float(data.get("duration") or 0.0), 3),
            )

    def on_tool_event(self, event: EngineEvent) -> None:
        """The Engine's observer: finished calls become tool_call events and the retained last_tool."""
        try:
            self._tool_event(event)
        except Exception:
            log.exception("presence failed on tool event %s", event.kind)

    def _tool_event(self, e: EngineEvent) -> None:
        if e.kind == "call":
            self._session_tool_calls += 1
        elif e.kind == "result":
            record = {
                "id": e.id,
                "name": e.name,
                "args": e.args or {},
                "outcome": e.outcome,
                "latency": round(e.latency, 3) if e.latency is not None else None,
            }
            if e.detail:
                record["detail"] = e.detail
            self.event("tool_call", **record)
            self._last_tool = {**record, "at": _now()}
            self._send(self.topics.last_tool, _dumps(self._last_tool), retain=True)
        elif e.kind == "cancel":
            self.event("cancelled", id=e.id, name=e.name, result=e.outcome, detail=e.detail)

    def daemon_event(self, kind: str, data: Mapping[str, Any]) -> None:
        """daemon.runtime's observer hook: its states, wake words, sessions and reloads."""
        try:
            if kind == "state":
                state = data.get("state")
                if state in STATES:
                    self._muted = state == "muted"  # the daemon reports "muted" whenever the microphone is
                    self.set_state(str(state))
                else:
                    log.error("presence: unknown state %r from the daemon", state)
            elif kind == "wake":
                self.on_wake(str(data.get("word", "")), float(data.get("score", 0.0)))
            elif kind == "session_started":
                self._begin_session({k: data[k] for k in ("trigger", "word") if data.get(k)})
            elif kind == "session_ended" and self._in_session:  # the session did not report its own end
                self._end_session(
                    reason=data.get("reason", ""),
                    detail=data.get("detail", ""),
                    duration=round(float(data.get("duration") or 0.0), 3),
                )
            elif kind == "reloaded":
                self.event("reloaded")
            elif kind == "reload_refused":
                self.event("reload_refused", problems=list(data.get("problems", [])))
        except Exception:
            log.exception("presence failed on daemon event %s", kind)

    session_event = on_session_event
    tool_event = on_tool_event

    def _begin_session(self, info: dict[str, Any]) -> None:
        if self._in_session:
            return
        self._in_session = True
        self._session_tool_calls = 0
        self.event("session_started", **info)

    def _end_session(self, reason: str, detail: str, duration: float) -> None:
        self._in_session = False
        self.event(
            "session_ended", reason=reason, detail=detail, duration=duration, tool_calls=self._session_tool_calls
        )
        if reason in SESSION_FAILURES:
            self.event("error", message=f"conversation ended: {reason}" + (f": {detail}" if detail else ""))
        self.set_state("muted" if self._muted else "idle")

    # ---- commands --------------------------------------------------------------------------------------------

    def _on_command(self, msg: Message) -> None:
        if msg.retain:
            if msg.payload:  # a retained command would run again on every reconnect
                self._reject("retained command ignored; publish commands without the retain flag", None)
            return
        try:
            command = parse_command(msg.payload)
        except CommandError as exc:
            self._reject(str(exc), exc.command)
            return
        try:
            self._commands.put_nowait(command)
        except asyncio.QueueFull:
            self._reject(f"busy: {COMMAND_BACKLOG} commands are already waiting", command.name)

    def _reject(self, message: str, command: str | None) -> None:
        log.warning("MQTT command on %s rejected: %s", self.topics.command, message)
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
            self.set_muted(muted)
        elif command.name == "reload":
            await c.reload()

    # ---- publishing ------------------------------------------------------------------------------------------

    def _state_payload(self) -> dict[str, Any]:
        return {
            **self._extra,
            "state": self._state,
            "muted": self._muted,
            "room": self.config.assistant.room,
            "wake_words": [wake_word_name(w.model) for w in self.config.wake.words],
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
            if not self._full_logged:
                self._full_logged = True
                log.warning("presence updates are dropped: %d are waiting for the broker", PUBLISH_BACKLOG)
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
                self._full_logged = False
            except (BrokerUnavailable, DeliveryUnknown) as exc:
                self._dropped(str(exc))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("publishing %s failed", out.topic)
            finally:
                self._outbox.task_done()
