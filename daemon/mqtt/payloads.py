"""What arrives from the broker is read defensively: anyone on it can publish. JSON is parsed within size and
depth limits (a 4000-deep array must be a clear refusal, not a RecursionError), and, with a shared secret, a
command or claim counts only when signed by someone who has the secret and not seen before (HMAC-SHA256 over
the message without its signature, a timestamp within a window, a nonce never reused)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from typing import Any

MAX_DEPTH = 8
WINDOW = 30.0  # seconds a signed message stays valid either side of now (satellites' clocks roughly agree)
NONCES = 4096  # nonces remembered to refuse a replay within the window


class PayloadError(ValueError):
    """A payload refused, with a message naming why (never echoing much of it). The message reads after "the
    payload is", except for a field's own problem (`field` is set: "<field>: given twice")."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


def _depth(text: str) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise PayloadError("given twice", field=key)
        seen[key] = value
    return seen


def parse_json(text: str, max_depth: int = MAX_DEPTH) -> Any:
    """JSON within `max_depth` levels, duplicate keys refused."""
    if _depth(text) > max_depth:
        raise PayloadError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:  # behind the depth check; never a traceback
        raise PayloadError(f"nested deeper than {max_depth} levels") from None


def _mac(secret: bytes, body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(secret, canonical.encode(), hashlib.sha256).hexdigest()


def sign(body: dict[str, Any], secret: bytes, now: float | None = None) -> dict[str, Any]:
    """`body` with a timestamp, a nonce and its signature (`sig`)."""
    stamped = {**body, "ts": round(time.time() if now is None else now, 3), "nonce": secrets.token_hex(8)}
    return {**stamped, "sig": _mac(secret, stamped)}


class Verifier:
    """Checks signatures and refuses replays; one per kind of message (commands, claims)."""

    def __init__(self, secret: bytes, window: float = WINDOW) -> None:
        self.secret = secret
        self.window = window
        self._seen: OrderedDict[str, float] = OrderedDict()

    def verify(self, body: dict[str, Any], now: float | None = None) -> dict[str, Any]:
        """The body without ts/nonce/sig, or PayloadError."""
        now = time.time() if now is None else now
        sig, ts, nonce = body.get("sig"), body.get("ts"), body.get("nonce")
        if not isinstance(sig, str):
            raise PayloadError("unsigned; a shared secret is set, so every message must be signed")
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not isinstance(nonce, str) or len(nonce) > 64:
            raise PayloadError("signed without a numeric ts and a nonce")
        unsigned = {k: v for k, v in body.items() if k != "sig"}
        if not hmac.compare_digest(sig, _mac(self.secret, unsigned)):
            raise PayloadError("signed with the wrong secret (bad signature)")
        if abs(now - ts) > self.window:
            raise PayloadError(f"too old or from the future ({now - ts:+.0f} s; the window is {self.window:g} s)")
        if nonce in self._seen:
            raise PayloadError("replayed (this nonce was seen before)")
        self._seen[nonce] = ts
        while len(self._seen) > NONCES or (self._seen and next(iter(self._seen.values())) < now - 2 * self.window):
            self._seen.popitem(last=False)
        return {k: v for k, v in unsigned.items() if k not in ("ts", "nonce")}
