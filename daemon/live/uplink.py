"""What goes up to the service, in order: microphone audio, text turns, and the markers that frame them.

The markers are activityStart/activityEnd when the client finds the user's turns itself (the service's voice
activity detection turned off, `gemini.vad.enabled: false`), and audioStreamEnd when the microphone pauses for
more than a second (the service's own detection then closes the turn at once). Everything waits here while the
connection is down, and while a call the model waits for is pending: the service refuses realtime input then
(close 1008). Audio is bounded (oldest dropped first) and so are text turns, so an outage cannot eat memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Literal

import numpy as np

from ..audio.frames import SAMPLE_RATE

Kind = Literal["audio", "text", "activity_start", "activity_end", "stream_end"]

MAX_SEND_BYTES = 2 * SAMPLE_RATE // 5  # 200 ms per audio message when catching up after a reconnect
MAX_TEXTS = 16
SPEECH_RMS = 500.0  # mic RMS (of 32768) that counts as the user speaking
STEP = SAMPLE_RATE // 50  # 20 ms


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype=np.int16)
    return float(np.sqrt(np.mean(samples.astype(np.float32) ** 2))) if samples.size else 0.0


class Endpointer:
    """The user's turns in the microphone stream, from 20 ms frame energies: a turn starts after `start` of voiced
    audio (and reaches back `preroll` before it), and ends after `silence` of quiet. Between turns no audio goes
    up, since the service ignores it without an activity around it."""

    def __init__(self, threshold: float, preroll: float, silence: float, start: float = 0.06) -> None:
        self.threshold = threshold
        self._preroll = deque(maxlen=max(1, round(preroll * 50)))
        self._start = max(1, round(start * 50))
        self._end = max(1, round(silence * 50))
        self._pending = b""
        self._voiced = 0
        self._quiet = 0
        self.in_turn = False

    def feed(self, pcm: bytes) -> list[tuple[Kind, bytes]]:
        out: list[tuple[Kind, bytes]] = []
        data = self._pending + pcm
        usable = len(data) // (2 * STEP) * (2 * STEP)
        self._pending = data[usable:]
        for pos in range(0, usable, 2 * STEP):
            frame = data[pos : pos + 2 * STEP]
            voiced = rms(frame) >= self.threshold
            if not self.in_turn:
                self._preroll.append(frame)
                self._voiced = self._voiced + 1 if voiced else 0
                if self._voiced >= self._start:
                    self.in_turn, self._quiet = True, 0
                    out += [("activity_start", b""), ("audio", b"".join(self._preroll))]
                    self._preroll.clear()
                continue
            out.append(("audio", frame))
            self._quiet = 0 if voiced else self._quiet + 1
            if self._quiet >= self._end:
                self.in_turn, self._voiced = False, 0
                out.append(("activity_end", b""))
        return out


class Uplink:
    def __init__(self, max_seconds: float, endpointer: Endpointer | None, log: logging.LoggerAdapter) -> None:
        self._items: deque[tuple[Kind, bytes | str]] = deque()
        self._audio_bytes = 0
        self._texts = 0
        self._max = int(max_seconds * SAMPLE_RATE) * 2
        self._ready = asyncio.Event()
        self._open = asyncio.Event()  # cleared while held
        self._open.set()
        self.endpointer = endpointer
        self.log = log
        self.dropped_bytes = 0
        self.sent_bytes = 0
        self.streaming = False  # audio went up since the last audioStreamEnd

    def push_audio(self, pcm: bytes) -> None:
        items = self.endpointer.feed(pcm) if self.endpointer is not None else [("audio", pcm)]
        for kind, data in items:
            self._push(kind, data)
        self._trim()

    def push_text(self, text: str) -> None:
        if self._texts >= MAX_TEXTS:
            for i, (kind, _) in enumerate(self._items):
                if kind == "text":
                    del self._items[i]
                    self._texts -= 1
                    self.log.warning("more than %d text turns waiting: the oldest was dropped", MAX_TEXTS)
                    break
        self._push("text", text)

    def end_stream(self) -> None:
        """The microphone paused: say so, so the service ends the user's turn now, not after its silence."""
        if self.streaming and self.endpointer is None:
            self.streaming = False
            self._push("stream_end", b"")

    def hold(self, held: bool) -> None:
        """Keep everything back while a call the model waits for is pending."""
        if held:
            self._open.clear()
        else:
            self._open.set()

    @property
    def held(self) -> bool:
        return not self._open.is_set()

    def _push(self, kind: Kind, data: bytes | str) -> None:
        if kind == "audio":
            if not data:
                return
            self._audio_bytes += len(data)
            self.streaming = True
        elif kind == "text":
            self._texts += 1
        self._items.append((kind, data))
        self._ready.set()

    def _trim(self) -> None:
        while self._audio_bytes > self._max:
            for i, (kind, data) in enumerate(self._items):
                if kind == "audio":
                    del self._items[i]
                    self._audio_bytes -= len(data)
                    self.dropped_bytes += len(data)
                    break

    def unshift(self, kind: Kind, data: bytes | str) -> None:
        """Put back what a dead connection could not send: it goes first on the next one."""
        self._items.appendleft((kind, data))
        if kind == "audio":
            self._audio_bytes += len(data)
        elif kind == "text":
            self._texts += 1
        self._ready.set()

    async def take(self) -> tuple[Kind, bytes | str]:
        """The next marker or text, or as much queued audio as fits one message; waits while held."""
        while True:
            await self._open.wait()
            if self._items:
                break
            self._ready.clear()
            await self._ready.wait()
        kind, data = self._items.popleft()
        if kind == "text":
            self._texts -= 1
        if kind != "audio":
            return kind, data
        assert isinstance(data, bytes)
        chunks = [data]
        size = len(data)
        while self._items and self._items[0][0] == "audio" and size + len(self._items[0][1]) <= MAX_SEND_BYTES:
            more = self._items.popleft()[1]
            assert isinstance(more, bytes)
            chunks.append(more)
            size += len(more)
        self._audio_bytes -= size
        return "audio", b"".join(chunks)

    def clear(self) -> None:
        """The conversation is over: what never went up is dropped now (up to 20 s of audio)."""
        self._items.clear()
        self._audio_bytes = self._texts = 0

    @property
    def queued_audio_bytes(self) -> int:
        return self._audio_bytes
