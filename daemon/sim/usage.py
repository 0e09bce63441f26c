"""Token counts for usageMetadata, which the service sends on the turnComplete frame.

The real counts come from the model's tokenizer; the simulator's are deterministic so a test can predict them:
  audio: 25 tokens per second (what the Live docs quote for audio input), rounded per turn and modality;
  text:  one token per 4 characters, rounded up, per turn and modality.
Prompt: everything the client sent on the connection since its last turnComplete (streamed audio, silence
included; realtime text; clientContent text, context lines included; tool responses as JSON). Response: what the
model sent (audio seconds actually sent, text parts, function calls as JSON).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

AUDIO_TOKENS_PER_SECOND = 25
CHARS_PER_TEXT_TOKEN = 4


def audio_tokens(seconds: float) -> int:
    return round(seconds * AUDIO_TOKENS_PER_SECOND)


def text_tokens(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TEXT_TOKEN)


def json_chars(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str))


@dataclass
class _Side:
    audio_seconds: float = 0.0
    text_chars: int = 0

    def details(self) -> list[dict[str, Any]]:
        counts = (("AUDIO", audio_tokens(self.audio_seconds)), ("TEXT", text_tokens(self.text_chars)))
        return [{"modality": m, "tokenCount": n} for m, n in counts if n]

    def tokens(self) -> int:
        return sum(d["tokenCount"] for d in self.details())


@dataclass
class TurnUsage:
    """What one connection's current turn has cost so far."""

    prompt: _Side = field(default_factory=_Side)
    response: _Side = field(default_factory=_Side)

    def metadata(self) -> dict[str, Any]:
        """usageMetadata as the service writes it (camelCase, per-modality details)."""
        prompt, response = self.prompt.tokens(), self.response.tokens()
        return {
            "promptTokenCount": prompt,
            "responseTokenCount": response,
            "totalTokenCount": prompt + response,
            "promptTokensDetails": self.prompt.details(),
            "responseTokensDetails": self.response.details(),
        }


@dataclass
class Tokens:
    """Totals the simulator reported on one connection (sum of its turnComplete frames' usageMetadata)."""

    prompt: int = 0
    response: int = 0
    turns: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.response

    def add(self, metadata: dict[str, Any]) -> None:
        self.prompt += metadata["promptTokenCount"]
        self.response += metadata["responseTokenCount"]
        self.turns += 1
