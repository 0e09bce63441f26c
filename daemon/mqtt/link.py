"""The MQTT link: one connection with reconnect and backoff, a cache of the last message per watched topic, and
waiters for confirmations.

Publishing while the broker is unreachable fails at once and is never retried later: a queued "unlock the door"
delivered after a reconnect, minutes after the user asked, is worse than an error. Each connection therefore
uses a fresh client, so no message paho queued on a dead connection is resent on the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from ..config import Mqtt
from ..credentials import MQTT_PASSWORD_CREDENTIAL, CredentialError, lookup_secret
from ..logs import RateLimit, logger

log = logger(__name__)
_client_log = logger(__name__ + ".client")  # aiomqtt's own warnings ("Message queue is full"), at most once a minute
_client_log.addFilter(RateLimit(60.0))

SUBSCRIBE_BATCH = 100
# Messages waiting to be handled: a flood from anyone on the broker is dropped past this, never buffered.
MAX_QUEUED_MESSAGES = 1024
MAX_MESSAGE_BYTES = 64 * 1024  # a device state bigger than this is kept cut: a 9 MB retained state costs 64 KiB


class BrokerUnavailable(Exception):
    """The broker cannot be reached now; nothing was published."""


class DeliveryUnknown(Exception):
    """The connection dropped before the broker acknowledged: the message may or may not have gone out."""


@dataclass
class Message:
    topic: str
    payload: bytes  # at most MAX_MESSAGE_BYTES of it: a bigger one is kept cut, never parsed
    retain: bool
    received: float = field(default_factory=time.monotonic)
    size: int = -1  # the size it arrived with
    _parsed: Any = field(default=None, repr=False)
    _tried: bool = field(default=False, repr=False)

    @property
    def truncated(self) -> bool:
        return self.size > len(self.payload)

    def json(self) -> Any:
        """The payload as JSON, or None when it is not JSON (Tasmota's plain ON/OFF) or was cut."""
        if not self._tried and not self.truncated:
            self._tried = True
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                self._parsed = json.loads(self.payload)
        return self._parsed

    def value(self) -> Any:
        """JSON when it parses, else the text."""
        parsed = self.json()
        return parsed if parsed is not None else self.payload.decode(errors="replace")


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def read_password(settings: Mqtt) -> str | None:
    """The broker password (daemon.credentials.lookup_secret); BrokerUnavailable when it is set but unusable."""
    try:
        return lookup_secret(MQTT_PASSWORD_CREDENTIAL, settings.password_file, "mqtt.password_file")
    except CredentialError as exc:
        raise BrokerUnavailable(str(exc)) from None


def tls_context(settings: Mqtt) -> ssl.SSLContext | None:
    if not settings.tls.enabled:
        return None
    ctx = ssl.create_default_context(cafile=str(settings.tls.ca_file) if settings.tls.ca_file else None)
    if settings.tls.cert_file:
        ctx.load_cert_chain(str(settings.tls.cert_file), str(settings.tls.key_file) if settings.tls.key_file else None)
    if settings.tls.insecure:
        ctx.check_hostname = False
    return ctx


Handler = Callable[[Message], Awaitable[None] | None]


class MqttLink:
    def __init__(
        self,
        settings: Mqtt,
        *,
        will: Will | None = None,
        on_connect: Callable[[], Awaitable[None] | None] | None = None,
    ) -> None:
        self.settings = settings
        self.will = will
        self._watched: set[str] = set()
        self._patterns: list[tuple[str, Handler, int]] = []
        self._cache: dict[str, Message] = {}
        self._waiters: dict[str, list[asyncio.Queue[Message]]] = {}
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._attempted = asyncio.Event()  # the first connection attempt has succeeded or failed
        self._settled = asyncio.Event()  # connected, and the retained messages of the watched topics are in
        self._fence = f"{settings.topic_prefix}/{settings.client_id}/fence"
        self._lost: asyncio.Future[None] | None = None
        self._connect_hooks: list[Callable[[], Awaitable[None] | None]] = [on_connect] if on_connect else []
        self.last_error = "not connected yet"
        self.connects = 0

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.effective_port}"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def watch(self, topics: Iterable[str]) -> None:
        """Keep the last message of these topics (subscribed now if connected, and after every reconnect)."""
        new = set(topics) - self._watched
        self._watched |= new
        if new and self._client is not None and self.connected:
            asyncio.get_running_loop().create_task(self._subscribe(self._client, sorted(new)))

    def handle(self, topic_filter: str, handler: Handler, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        """Call handler for every message matching a (wildcard) filter, e.g. a command topic; it sees at most
        `max_bytes` of each (more for a device list than for a device's state)."""
        self._patterns.append((topic_filter, handler, max_bytes))
        if self._client is not None and self.connected:
            asyncio.get_running_loop().create_task(self._subscribe(self._client, [topic_filter]))

    def add_connect_hook(self, hook: Callable[[], Awaitable[None] | None]) -> None:
        """Run after every (re)connect, once subscriptions are in place (e.g. to publish retained state)."""
        self._connect_hooks.append(hook)

    def last(self, topic: str) -> Message | None:
        return self._cache.get(topic)

    @contextlib.contextmanager
    def listen(self, topic: str):
        """A queue of messages arriving on `topic` from now on; register before publishing so no reply is missed."""
        queue: asyncio.Queue[Message] = asyncio.Queue()
        self._waiters.setdefault(topic, []).append(queue)
        try:
            yield queue
        finally:
            queues = self._waiters.get(topic, [])
            if queue in queues:
                queues.remove(queue)
            if not queues:
                self._waiters.pop(topic, None)

    async def wait_attempted(self, timeout: float) -> None:
        """Until the first connection attempt has an outcome (bounded), so a status line tells the truth."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._attempted.wait(), timeout)

    async def wait_settled(self, timeout: float) -> bool:
        """Until the broker has handed over the retained messages of every watched topic (a read right after
        start-up must see a reading that is on the broker), bounded; whether that happened."""
        try:
            await asyncio.wait_for(self._settled.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def wait_connected(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        """Publish now or fail now. QoS 1/2 wait for the broker's acknowledgement."""
        client, lost = self._client, self._lost
        if client is None or lost is None or not self.connected:
            raise BrokerUnavailable(f"MQTT broker {self.where} unreachable ({self.last_error})")
        send = asyncio.ensure_future(client.publish(topic, payload, qos=qos, retain=retain, timeout=math.inf))
        try:
            done, _ = await asyncio.wait(
                {send, lost}, timeout=self.settings.publish_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not send.done():
                send.cancel()
        if send in done:
            exc = send.exception()
            if exc is None:
                return
            if isinstance(exc, aiomqtt.MqttCodeError) and not self.connected:
                raise BrokerUnavailable(f"MQTT broker {self.where} unreachable ({self.last_error})")
            raise DeliveryUnknown(f"publish to {topic} failed: {exc}")
        if lost in done:
            raise DeliveryUnknown(f"connection to {self.where} lost before the broker acknowledged {topic}")
        raise DeliveryUnknown(
            f"broker {self.where} did not acknowledge {topic} within {self.settings.publish_timeout}s"
        )

    async def run(self) -> None:
        """Connect, and reconnect with backoff, until cancelled."""
        delay = self.settings.reconnect_min
        logged_down = False
        short_lived = 0
        while True:
            began = time.monotonic()
            connects = self.connects
            try:
                await self._session()
                delay = self.settings.reconnect_min
                logged_down = False
            except asyncio.CancelledError:
                raise
            except (aiomqtt.MqttError, OSError, BrokerUnavailable, ssl.SSLError) as exc:
                self.last_error = _reason(exc)
                self._attempted.set()
                # Connected, then dropped at once, again and again: typically another client with our id.
                short_lived = short_lived + 1 if self.connects > connects and time.monotonic() - began < 5 else 0
                if short_lived == 3:
                    log.warning(
                        "MQTT connection to %s keeps being dropped right after connecting: is another client using "
                        "client_id %r (e.g. a second satellite with the same assistant.id)?",
                        self.where,
                        self.settings.client_id,
                    )
                if not logged_down:
                    log.warning("MQTT broker %s unreachable (%s); retrying", self.where, self.last_error)
                    logged_down = True
                else:
                    log.debug("MQTT reconnect to %s failed (%s)", self.where, self.last_error)
            finally:
                self._mark_down()
            await asyncio.sleep(delay * (0.8 + 0.4 * random.random()))
            delay = min(delay * 2, self.settings.reconnect_max)

    def _mark_down(self) -> None:
        self._connected.clear()
        self._settled.clear()
        self._client = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)

    async def _session(self) -> None:
        s = self.settings
        client = aiomqtt.Client(
            s.host,
            s.effective_port,
            identifier=s.client_id,
            username=s.username,
            password=read_password(s),
            keepalive=int(s.keepalive),
            tls_context=tls_context(s),
            tls_insecure=s.tls.insecure if s.tls.enabled else None,
            will=aiomqtt.Will(self.will.topic, self.will.payload, self.will.qos, self.will.retain)
            if self.will
            else None,
            clean_session=True,
            timeout=s.publish_timeout,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            max_queued_incoming_messages=MAX_QUEUED_MESSAGES,
            logger=_client_log,
        )
        async with client:
            self._client = client
            self._lost = asyncio.get_running_loop().create_future()
            self.connects += 1
            topics = sorted(self._watched) + [f for f, _, _ in self._patterns]
            await self._subscribe(client, [*topics, self._fence])
            # A broker keeps one client's messages in order: once our own fence message is back, the retained
            # messages of the subscriptions before it have all arrived.
            await client.publish(self._fence, b"", qos=1)
            self._connected.set()
            self._attempted.set()
            log.info("MQTT connected to %s (%d topics watched)", self.where, len(self._watched))
            for hook in self._connect_hooks:
                try:
                    result = hook()
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    log.exception("MQTT connect hook failed")
            async for message in client.messages:
                self._dispatch(message)
        raise BrokerUnavailable("the broker closed the connection")

    async def _subscribe(self, client: aiomqtt.Client, topics: list[str]) -> None:
        for i in range(0, len(topics), SUBSCRIBE_BATCH):
            await client.subscribe([(t, 1) for t in topics[i : i + SUBSCRIBE_BATCH]])

    def _dispatch(self, raw: aiomqtt.Message) -> None:
        payload = raw.payload if isinstance(raw.payload, bytes | bytearray) else str(raw.payload or "").encode()
        msg = Message(str(raw.topic), bytes(payload[:MAX_MESSAGE_BYTES]), bool(raw.retain), size=len(payload))
        if msg.topic == self._fence:
            self._settled.set()
            return
        if msg.topic in self._watched:
            self._cache[msg.topic] = msg
        for queue in self._waiters.get(msg.topic, ()):
            queue.put_nowait(msg)
        for topic_filter, handler, max_bytes in self._patterns:
            if raw.topic.matches(topic_filter):
                seen = msg
                if max_bytes != MAX_MESSAGE_BYTES:
                    seen = Message(msg.topic, bytes(payload[:max_bytes]), msg.retain, size=len(payload))
                try:
                    result = handler(seen)
                    if asyncio.iscoroutine(result):
                        asyncio.get_running_loop().create_task(result)
                except Exception:
                    log.exception("handler for %s failed", topic_filter)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "host name not found"
    text = str(exc) or type(exc).__name__
    if "Connection refused" in text:
        return "connection refused"
    if "Disconnected" in text or "closed the connection" in text:
        return "connection lost"
    return text
