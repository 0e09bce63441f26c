"""Short audible cues, generated in code so there are no sound files to ship: a rising two-tone when the wake
word is heard, a falling one when the conversation ends. 24 kHz mono s16le, the output's native format."""

from __future__ import annotations

import functools

import numpy as np

from .frames import OUTPUT_RATE

VOLUME = 0.25  # of full scale: audible over a room, not startling
FADE = 0.008  # seconds of raised-cosine fade at each edge: no clicks


def tone(freq: float, seconds: float, rate: int = OUTPUT_RATE, volume: float = VOLUME) -> np.ndarray:
    """A sine burst with faded edges, as float samples in [-1, 1]."""
    n = round(seconds * rate)
    x = volume * np.sin(2 * np.pi * freq * np.arange(n) / rate)
    fade = min(int(FADE * rate), n // 2)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade) if fade else np.zeros(0)
    x[:fade] *= ramp
    x[n - fade :] *= ramp[::-1]
    return x


def _render(*parts: np.ndarray) -> bytes:
    return (np.concatenate(parts) * 32767).round().astype("<i2").tobytes()


def _gap(seconds: float, rate: int = OUTPUT_RATE) -> np.ndarray:
    return np.zeros(round(seconds * rate))


@functools.cache
def wake_earcon() -> bytes:
    """Rising E5 → A5: "I'm listening"."""
    return _render(tone(659.25, 0.09), _gap(0.03), tone(880.0, 0.12))


@functools.cache
def end_earcon() -> bytes:
    """Falling A5 → E5: "done"."""
    return _render(tone(880.0, 0.09), _gap(0.03), tone(659.25, 0.12))


@functools.cache
def renewed_earcon() -> bytes:
    """Two short A5 blips: "the connection was renewed, go on" (distinct from both the wake and the end tone)."""
    return _render(tone(880.0, 0.05), _gap(0.05), tone(880.0, 0.05))


@functools.cache
def error_earcon() -> bytes:
    """Low, falling E4 → A3, longer than the end tone: "that did not work"."""
    return _render(tone(329.63, 0.15), _gap(0.05), tone(220.0, 0.25))


@functools.cache
def ring() -> bytes:
    """One ring of a timer: three quick C6 pulses, then a pause; played again until stopped."""
    pulse = tone(1046.5, 0.12, volume=0.35)
    return _render(pulse, _gap(0.08), pulse, _gap(0.08), pulse, _gap(0.6))


@functools.cache
def chime() -> bytes:
    """Before an announcement: a soft G5 → C6 → E6 arpeggio, "listen"."""
    return _render(tone(783.99, 0.1), tone(1046.5, 0.1), tone(1318.5, 0.2))
