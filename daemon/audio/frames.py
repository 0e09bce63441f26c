"""The audio vocabulary every layer shares: sample rates, 80 ms frames with stream positions, audio errors.

Inputs deliver 16 kHz mono s16le frames of 1280 samples (80 ms, openWakeWord's natural chunk), each tagged with its
position in samples since the stream started, so the wake word and the pre-roll buffer agree on time. Outputs take
the model's 24 kHz mono s16le audio. This is the one home of those numbers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Literal

import numpy as np

SAMPLE_RATE = 16000  # what the wake word and Gemini Live want
FRAME_SAMPLES = 1280
FRAME_BYTES = 2 * FRAME_SAMPLES
OUTPUT_RATE = 24000  # what Gemini Live speaks
BLOCK_SECONDS = 0.02  # playback granularity: a flush takes effect within about one block
BLOCK_BYTES = 2 * int(OUTPUT_RATE * BLOCK_SECONDS)

Kind = Literal["input", "output"]


def output_seconds(pcm_bytes: int) -> float:
    """How long this many bytes of output audio (24 kHz s16le mono) play."""
    return pcm_bytes / (2 * OUTPUT_RATE)


class AudioError(Exception):
    """Audio that cannot be read or written: a bad file, a bad option."""


class AudioDeviceError(AudioError):
    """A sound device that is missing, busy or failed; the message says what was asked for and what exists."""


@dataclass(frozen=True, slots=True)
class Frame:
    """80 ms of 16 kHz mono s16le audio and the sample position of its first sample."""

    pcm: bytes
    position: int

    @property
    def end(self) -> int:
        return self.position + len(self.pcm) // 2

    def samples(self) -> np.ndarray:
        return np.frombuffer(self.pcm, dtype=np.int16)


class Framer:
    """Cuts a byte stream of any chunk size into whole frames, keeping count of positions."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.position = 0

    def push(self, pcm: bytes) -> list[Frame]:
        self._buf += pcm
        frames = []
        while len(self._buf) >= FRAME_BYTES:
            frames.append(Frame(bytes(self._buf[:FRAME_BYTES]), self.position))
            del self._buf[:FRAME_BYTES]
            self.position += FRAME_SAMPLES
        return frames

    def tail(self) -> Frame | None:
        """The last partial frame padded with silence, so the end of a file is not lost."""
        if not self._buf:
            return None
        frame = Frame(bytes(self._buf) + bytes(FRAME_BYTES - len(self._buf)), self.position)
        self._buf.clear()
        self.position += FRAME_SAMPLES
        return frame

def resolve_future(fut: asyncio.Future, exc: BaseException | None = None) -> None:
    if not fut.done():
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)
