"""Where the user's speech starts and ends in the audio a client streams.

The service's own voice activity detection is a model; an energy gate is enough to tell whether the client's
speech arrived, and whole, and that is all the simulator needs to know.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .scenario import VadSettings

FRAME_SECONDS = 0.02


@dataclass(frozen=True)
class Utterance:
    """Speech found in the client's audio. `pcm` runs from the preroll before the speech to the point the end was
    detected; `duration` and `rms` cover the voiced part only (first to last voiced 20 ms frame), in audio time,
    so they do not depend on how fast the client sent it."""

    conn: int
    rate: int
    pcm: bytes
    offset: float  # where `pcm` starts, in seconds of this connection's audio stream
    speech_start: float  # where the voiced part starts, same clock
    duration: float
    rms: float
    started: float  # monotonic time the start was detected
    ended: float
    complete: bool
    ended_by: Literal["silence", "audio_stream_end", "activity_end", "disconnect", "rate_change"]

    @property
    def speech_pcm(self) -> bytes:
        start = round((self.speech_start - self.offset) * self.rate) * 2
        return self.pcm[start : start + round(self.duration * self.rate) * 2]


def frame_rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)
    return float(math.sqrt(np.mean(samples * samples))) if samples.size else 0.0


class EnergyVad:
    """Utterance boundaries in a PCM stream from 20 ms frame energies: start after `speech_start` of voiced
    frames, end after `end_silence` of quiet ones. Pure and synchronous; the connection feeds it."""

    def __init__(self, settings: VadSettings, conn: int) -> None:
        self.settings = settings
        self.conn = conn
        self.rate: int | None = None
        self._pending = b""
        self._stream_s = 0.0  # audio time at the start of the next whole frame
        self._ring: deque[tuple[bytes, bool, float]] = deque()
        self._voiced_run = 0
        self._utt: list[tuple[bytes, bool, float]] | None = None
        self._utt_offset = 0.0
        self._first = 0
        self._last = 0
        self._silent = 0
        self._started = 0.0
        self.manual = False  # in an utterance bounded by activityStart/activityEnd
        self.manual_only = False  # the client turned automatic activity detection off

    @property
    def in_speech(self) -> bool:
        return self._utt is not None

    def _frames(self, seconds: float) -> int:
        return max(1, round(seconds / FRAME_SECONDS))

    def feed(self, pcm: bytes, rate: int, now: float) -> list[tuple[str, Utterance | None]]:
        """Events ("start", None) and ("end", utterance) found in this chunk."""
        events: list[tuple[str, Utterance | None]] = []
        if self.rate is not None and rate != self.rate:
            done = self.flush("rate_change", now)
            if done:
                events.append(("end", done))
            self._ring.clear()
            self._voiced_run = 0
        self.rate = rate
        frame_bytes = rate // 50 * 2
        data = self._pending + pcm
        usable = len(data) // frame_bytes * frame_bytes
        self._pending = data[usable:]
        start_frames = self._frames(self.settings.speech_start)
        keep = self._frames(self.settings.preroll) + start_frames
        for pos in range(0, usable, frame_bytes):
            frame = data[pos : pos + frame_bytes]
            rms = frame_rms(frame)
            voiced = rms >= self.settings.threshold
            item = (frame, voiced, rms * rms * (frame_bytes // 2))
            frame_start = self._stream_s
            self._stream_s += FRAME_SECONDS
            if self._utt is None:
                self._ring.append(item)
                while len(self._ring) > keep:
                    self._ring.popleft()
                self._voiced_run = self._voiced_run + 1 if voiced else 0
                if self._voiced_run >= start_frames and not self.manual_only:
                    self._utt = list(self._ring)
                    self._utt_offset = frame_start + FRAME_SECONDS - len(self._utt) * FRAME_SECONDS
                    self._first = len(self._utt) - self._voiced_run
                    self._last = len(self._utt) - 1
                    self._silent = 0
                    self._started = now
                    self._ring.clear()
                    events.append(("start", None))
                continue
            self._utt.append(item)
            if voiced:
                if self._first < 0:
                    self._first = len(self._utt) - 1
                self._last = len(self._utt) - 1
                self._silent = 0
            else:
                self._silent += 1
                if not self.manual and self._silent >= self._frames(self.settings.end_silence):
                    events.append(("end", self._finish("silence", True, now)))
        return events

    def begin_manual(self, now: float) -> None:
        """activityStart: everything from here until activityEnd is one utterance, whatever its energy. Audio
        sent before activityStart is not part of it (no preroll): the client has said where speech starts."""
        self.manual = True
        self._stream_s += len(self._pending) / 2 / (self.rate or 16000)
        self._pending = b""
        self._utt = []
        self._utt_offset = self._stream_s
        self._first, self._last, self._silent, self._started = -1, -1, 0, now
        self._ring.clear()

    def flush(self, reason: str, now: float) -> Utterance | None:
        """The stream stopped (audioStreamEnd, activityEnd, disconnect): the utterance in progress, if any."""
        if self._utt is None:
            self._stream_s += len(self._pending) / 2 / (self.rate or 16000)
            self._pending = b""
            self.manual = False
            return None
        if self._pending:
            self._utt.append((self._pending, False, 0.0))
            self._stream_s += len(self._pending) / 2 / (self.rate or 16000)
            self._pending = b""
        complete = reason in ("audio_stream_end", "activity_end")
        return self._finish(reason, complete, now)  # type: ignore[arg-type]

    def _finish(self, reason: Any, complete: bool, now: float) -> Utterance | None:
        frames = self._utt or []
        self._utt = None
        self._voiced_run = 0
        self.manual = False
        if self._first < 0 or not frames:
            return None
        rate = self.rate or 16000
        speech = frames[self._first : self._last + 1]
        samples = sum(len(f) // 2 for f, _, _ in speech)
        energy = sum(e for _, _, e in speech)
        return Utterance(
            conn=self.conn,
            rate=rate,
            pcm=b"".join(f for f, _, _ in frames),
            offset=self._utt_offset,
            speech_start=self._utt_offset + self._first * FRAME_SECONDS,
            duration=samples / rate,
            rms=math.sqrt(energy / samples) if samples else 0.0,
            started=self._started,
            ended=now,
            complete=complete,
            ended_by=reason,
        )
