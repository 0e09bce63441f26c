"""Several satellites on one broker: when more than one hears the same wake word, only the one that heard it best
opens a conversation.

Coordinated over MQTT alone, without a leader: each detection is published as a claim on one shared topic, and
every satellite (the claimant included, through its own echo) sorts the claims into rounds by when they reach
it. A broker hands the messages of one topic to all subscribers in the same order and within milliseconds, so
everyone sees the same rounds and reaches the same verdict independently:

- the first claim for a word opens a round, which lasts the opener's window; claims arriving within it join;
- the best score in the round wins, ties going to the lowest assistant id (then nonce);
- a claim arriving within one more window after the round closed is late: that round's winner already
  answers, so a late claim loses whatever its score (a slow detection of the same utterance);
- a satellite that knows of no other satellite online (their retained availability topics) does not wait: it
  answers at once, and its claim says `decided`. That claim is an ordinary claim for everyone else: it only
  makes them stand down if it also has the best score. A `decided` flag that always won would let anyone on
  the broker silence every satellite.

Only claims from satellites that announced themselves online count, only for this satellite's own wake words
(so a flood of claims costs bounded memory), and with a shared secret only signed, fresh ones. Without the
broker a satellite decides alone and answers: a deaf assistant is worse than two answering.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..events import Emit, StoodDown, notify_all
from ..logs import logger
from .link import BrokerUnavailable, DeliveryUnknown, Message, MqttLink
from .payloads import Verifier, parse_json, sign
from .topics import ONLINE, arbitration_topic, availability_filter

log = logger(__name__)

MAX_ROUND = 64  # claims kept per round; a flood cannot grow memory
MAX_PEERS = 256
MAX_CLAIM_BYTES = 1024
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class Claim:
    id: str
    word: str
    score: float
    nonce: str
    window: float
    decided: bool
    arrived: float  # time.monotonic() when it reached this satellite


def parse_claim(payload: bytes, arrived: float, verifier: Verifier | None = None) -> Claim:
    """A claim from the wire, or ValueError naming the field at fault (or the signature)."""
    if len(payload) > MAX_CLAIM_BYTES:
        raise ValueError(f"{len(payload)} bytes; a claim is at most {MAX_CLAIM_BYTES}")
    try:
        data = parse_json(payload.decode("utf-8"), max_depth=1)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    nonce = data.get("nonce")
    if verifier is not None:
        data = verifier.verify(data)
    sid, word, score = data.get("id"), data.get("word"), data.get("score")
    window, decided = data.get("window"), data.get("decided", False)
    if not isinstance(sid, str) or not _ID.match(sid):
        raise ValueError(f"id: must be an assistant id, not {sid!r}")
    if not isinstance(word, str) or not 0 < len(word) <= 100:
        raise ValueError("word: must be a non-empty string of at most 100 characters")
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise ValueError(f"score: must be a number, not {score!r}")
    if not isinstance(nonce, str) or not 0 < len(nonce) <= 64:
        raise ValueError("nonce: must be a non-empty string of at most 64 characters")
    if isinstance(window, bool) or not isinstance(window, int | float) or not 0 < window <= 2:
        raise ValueError(f"window: must be seconds in (0, 2], not {window!r}")
    if not isinstance(decided, bool):
        raise ValueError(f"decided: must be true or false, not {decided!r}")
    return Claim(sid, word, float(score), nonce, float(window), decided, arrived)


@dataclass
class Round:
    word: str
    opened: float
    window: float
    members: list[Claim] = field(default_factory=list)

    @property
    def closes(self) -> float:
        return self.opened + self.window

    def winner(self) -> Claim:
        return min(self.members, key=lambda c: (-c.score, c.id, c.nonce))


class Arbiter:
    """Arbiter(link, config).claim(word, score) → whether this satellite answers."""

    def __init__(
        self, link: MqttLink, config: Config, report: Emit | None = None, secret: bytes | None = None
    ) -> None:
        self.link = link
        self.config = config
        self.report = report
        self.secret = secret
        self.verifier = Verifier(secret) if secret else None
        self.topic = arbitration_topic(config)
        self._peers: set[str] = set()
        self._rounds: dict[str, Round] = {}
        self._mine: dict[str, asyncio.Future[tuple[Round, bool]]] = {}
        self._own_nonces: deque[str] = deque(maxlen=64)
        self._warned: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._started = False

    @property
    def me(self) -> str:
        return self.config.assistant.id

    @property
    def peers(self) -> frozenset[str]:
        """Other satellites whose availability says online."""
        return frozenset(self._peers)

    @property
    def settled(self) -> bool:
        """No round is open or could still take late claims: the next claim opens a fresh round."""
        now = time.monotonic()
        return all(now > r.closes + r.window for r in self._rounds.values())

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.link.handle(self.topic, self._on_claim)
        self.link.handle(availability_filter(self.config), self._on_availability)

    def reconfigure(self, config: Config) -> None:
        """A reload may change enabled and window; the topics stay until a restart."""
        self.config = config

    async def claim(self, word: str, score: float) -> bool:
        """True if this satellite should answer this wake word. Waits at most the window (never when alone)."""
        if self.claim_now(word, score):
            return True
        window = float(self.config.assistant.arbitration.window)
        body, nonce, payload = self._claim(word, score, decided=False)
        placed: asyncio.Future[tuple[Round, bool]] = asyncio.get_running_loop().create_future()
        self._mine[nonce] = placed
        try:
            async with asyncio.timeout(window):
                await self.link.publish(self.topic, payload, qos=1)
                round_, late = await placed
        except (BrokerUnavailable, DeliveryUnknown, TimeoutError) as exc:
            log.warning("arbitration failed (%s): answering %s without it", exc or "no echo in time", word)
            return True
        finally:
            self._mine.pop(nonce, None)
        if not late:
            await asyncio.sleep(max(0.0, round_.closes - time.monotonic()))
        winner = round_.winner()
        if winner.nonce == nonce or (late and winner.id == self.me):  # late after our own win: still ours
            log.info("arbitration: this satellite answers %s (%d claims)", word, len(round_.members))
            return True
        log.info(
            "arbitration: %s answers %s (score %.3f%s); standing down (score %.3f%s)",
            winner.id,
            word,
            winner.score,
            ", already answering" if winner.decided else "",
            score,
            ", late" if late else "",
        )
        if self.report is not None:
            notify_all([self.report], StoodDown(word, float(body["score"]), winner.id, winner.score), log)
        return False

    def claim_now(self, word: str, score: float) -> bool:
        """claim() without a round, where none is needed (arbitration off, the broker unreachable, no other
        satellite online): True, the claim announced, and the wake word's session need not wait for a task.
        False: a round must be held (claim())."""
        if not self.config.assistant.arbitration.enabled:
            return True
        if not self._started:
            raise RuntimeError("Arbiter.start() must be called before claim()")
        if not self.link.connected:
            log.info("MQTT broker unreachable: answering %s without asking the other satellites", word)
            return True
        if self._peers:
            return False
        # Still told, so a satellite that sees us but that we do not see yet stands down.
        self._spawn(self._publish_quietly(self._claim(word, score, decided=True)[2]))
        log.debug("no other satellite online: answering %s at once", word)
        return True

    def _claim(self, word: str, score: float, decided: bool) -> tuple[dict[str, Any], str, bytes]:
        body: dict[str, Any] = {
            "id": self.me,
            "word": word,
            "score": round(float(score), 4),
            "window": float(self.config.assistant.arbitration.window),
            "decided": decided,
        }
        body = sign(body, self.secret) if self.secret else {**body, "nonce": secrets.token_hex(8)}
        self._own_nonces.append(body["nonce"])
        return body, body["nonce"], json.dumps(body).encode()

    # ---- MQTT ------------------------------------------------------------------------------------------------

    def _on_claim(self, msg: Message) -> None:
        try:
            claim = parse_claim(msg.payload, msg.received, self.verifier)
        except ValueError as exc:
            self._warn_once(f"bad:{str(exc)[:40]}", "ignoring a bad arbitration claim on %s: %s", msg.topic, exc)
            return
        if claim.word not in {w.name for w in self.config.wake.words}:
            return  # not a word this satellite listens for: no round of ours
        if claim.id != self.me and claim.id not in self._peers:
            self._warn_once(f"stranger:{claim.id}", "ignoring a claim from %s, which never announced itself online",
                            claim.id)
            return
        if claim.id == self.me and claim.nonce not in self._own_nonces:
            self._warn_once(
                "dup", "another satellite also uses assistant.id %s: arbitration cannot tell them apart", self.me
            )
        round_, late = self._place(claim)
        waiting = self._mine.get(claim.nonce)
        if waiting is not None and not waiting.done() and claim.id == self.me:
            waiting.set_result((round_, late))

    def _place(self, claim: Claim) -> tuple[Round, bool]:
        """Which round a claim belongs to, judged by arrival time alone, so every satellite judges alike."""
        current = self._rounds.get(claim.word)
        if current is not None and claim.arrived <= current.closes:
            if len(current.members) < MAX_ROUND:
                current.members.append(claim)
            return current, False
        if current is not None and claim.arrived <= current.closes + current.window:
            return current, True
        fresh = Round(claim.word, claim.arrived, claim.window, [claim])
        self._rounds[claim.word] = fresh
        return fresh, False

    def _on_availability(self, msg: Message) -> None:
        parts = msg.topic.split("/")
        sid = parts[-2] if len(parts) >= 2 else ""
        if sid == self.me or not _ID.match(sid):
            return
        if msg.payload.strip() == ONLINE.encode():
            if len(self._peers) < MAX_PEERS:
                self._peers.add(sid)
        else:
            self._peers.discard(sid)

    async def _publish_quietly(self, payload: bytes) -> None:
        try:
            await self.link.publish(self.topic, payload, qos=1)
        except (BrokerUnavailable, DeliveryUnknown) as exc:
            log.debug("claim not published: %s", exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="arbiter-claim")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned and len(self._warned) < 100:
            self._warned.add(key)
            log.warning(message, *args)
