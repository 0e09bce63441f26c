"""Why the service closed the connection, judged by cause rather than by number: the same code means "your key is
wrong" at setup and "something hiccuped around a tool call" mid-session. Each verdict says what to do next:

- fatal: retrying cannot help (a bad key, an unknown model, a setup field the model refuses); one clear line.
- fresh: the service lost or refused the session (1008/1011 mid-session, a resumption handle it no longer knows):
  drop the handle and start a new session.
- resume: anything else (a dropped socket, a restart): reconnect with the handle, with backoff.
(Sources: ../shared/docs/live-real-service.md, close codes seen in the wild.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

# Codes that mean the client sent something the service cannot take: the same frames would be refused again.
BAD_FRAMES = {1002, 1003, 1007, 1009, 1010}
_FIELD = re.compile(r"""(?:Unknown name|Invalid value at|field|parameter)\s*["'`]?([\w.\[\]]+)["'`]?""", re.I)


@dataclass(frozen=True)
class Verdict:
    action: Literal["fatal", "fresh", "resume"]
    detail: str


def judge(code: int, reason: str, *, at_setup: bool, resuming: bool, model: str) -> Verdict:
    text = reason or "no reason given"
    low = text.lower()
    said = f"({code}: {text})"
    if "api key" in low or "api_key" in low or "unregistered callers" in low or code in (401, 403):
        return Verdict("fatal", f"Gemini refused the API key {said}; check the gemini-api-key credential")
    if at_setup and resuming and "session not found" in low:
        return Verdict("fresh", f"the service no longer knows this session {said}")
    if at_setup and (code == 404 or ("not found" in low and "model" in low) or "not supported for bidi" in low):
        return Verdict("fatal", f"Gemini does not offer model '{model}' for Live {said}; check gemini.model")
    if at_setup and code == 1007:
        field = _FIELD.search(text)
        what = f"the setup field '{field.group(1)}'" if field else "a setup field"
        return Verdict(
            "fatal",
            f"model '{model}' refused {what} {said}; see `livehome check` and the model table in the README",
        )
    if code in BAD_FRAMES:
        return Verdict("fatal", f"Gemini closed the session for good {said}")
    if not at_setup and code in (1008, 1011):
        return Verdict("fresh", f"the service dropped the session {said}")
    if at_setup and code == 1008:
        return Verdict("fatal", f"Gemini refused the session {said}")
    return Verdict("resume", f"connection closed {said}")
