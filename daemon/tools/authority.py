"""Who may make the house act. A tool marked `voice_only` answers only a request whose last words were spoken in
the room: a text turn (an MQTT `say`, `livehome say`) can never reach it, whoever sent it. A `sensitive` tool (a
lock, an alarm, a garage door) also needs a spoken yes: its first call only asks for one, and it runs when the
model calls it again after the user's next utterance, spoken, said yes. A typed yes never counts.

The tool layer knows nothing of audio: it is told what the user said and whether it was spoken (heard())."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from ..calls import ToolCall
from .spec import ToolSpec

ASK_VALID = 120.0  # a confirmation asked for this long ago no longer counts
_YES = re.compile(r"^\W*(yes|yeah|yep|yup|sure|correct|confirm(ed)?|do it|go ahead|please do|affirmative|ok(ay)?)\b",
                  re.IGNORECASE)
_NO = re.compile(r"\b(no|not|don'?t|cancel|stop|wait|never)\b", re.IGNORECASE)


def is_yes(text: str) -> bool:
    return bool(_YES.search(text)) and not _NO.search(text)


@dataclass
class _Ask:
    at: float
    decided: bool = False
    yes: bool = False


class Refusal(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class Authority:
    def __init__(self) -> None:
        self._asks: dict[str, _Ask] = {}

    def check(self, spec: ToolSpec, call: ToolCall) -> None:
        """Raises Refusal when this call may not run (now); nothing has been published then."""
        if (spec.voice_only or spec.sensitive) and not call.spoken:
            raise Refusal(
                "refused",
                f"{spec.name} can only be used by someone speaking in the room; a typed request cannot use it. "
                "Tell the user to ask out loud.",
            )
        if not spec.sensitive:
            return
        key = _key(call)
        ask = self._asks.pop(key, None)
        now = time.monotonic()
        if ask is not None and ask.decided and ask.yes and now - ask.at <= ASK_VALID:
            return
        self._asks = {k: a for k, a in self._asks.items() if now - a.at <= ASK_VALID}
        self._asks[key] = _Ask(now)
        raise Refusal(
            "needs_confirmation",
            f"{spec.name} needs a spoken yes first: ask the user out loud to confirm ({_describe(call)}). Only "
            "after they answer yes, call it again with the same arguments. Nothing was done.",
        )

    def heard(self, text: str, spoken: bool) -> None:
        """The user's next utterance decides every confirmation asked before it: a spoken yes, or no."""
        for ask in self._asks.values():
            if not ask.decided:
                ask.decided, ask.yes = True, spoken and is_yes(text)


def _key(call: ToolCall) -> str:
    return json.dumps([call.name, call.args], sort_keys=True, default=str)


def _describe(call: ToolCall) -> str:
    args: Any = call.args
    return ", ".join(f"{k} {v}" for k, v in args.items()) if isinstance(args, dict) else call.name
