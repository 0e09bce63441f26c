"""Loudspeaker-like outputs: a PortAudio device, a WAV recording, or nothing, each playing 24 kHz mono s16le.

`play` only queues (safe on the loop); a thread per output writes ~20 ms blocks, so a flush (barge-in) silences
the speaker within about one block plus the device's own buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import wave
from abc import ABC, abstractmethod
from collections import deque
from pathlib import Path

import numpy as np
import soxr

from ..config import AudioOutput
from ..logs import logger
from .devices import PyAudioDevice, pa_message
from .frames import BLOCK_BYTES, OUTPUT_RATE, AudioDeviceError, AudioError, resolve_future

log = logger(__name__)

class AudioSink(ABC):
    """Plays 24 kHz mono s16le. `play` only queues (safe on the loop); a thread writes ~20 ms blocks, so
    `flush` (barge-in) silences the speaker within about one block plus the device's own buffer."""

    rate = OUTPUT_RATE

    def __init__(self, description: str) -> None:
        self.description = description
        self._cond = threading.Condition()
        self._blocks: deque[bytes] = deque()
        self._queued = 0
        self._busy = False
        self._dry = True  # everything written has been handed to the device (tails included)
        self._flush_pending = False
        self._audible_until = 0.0
        self._stopping = False
        self._waiters: list[asyncio.Future] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.played_bytes = 0
        self.volume = 1.0  # software gain for everything played (0.0 to 1.0)

    # -- the thread's hooks --
    def _open(self) -> None:
        """Blocking; raises AudioError."""
        return None

    @abstractmethod
    def _write(self, block: bytes) -> float | None:
        """Blocking; returns the monotonic time by which this block will have been heard, None if it was
        dropped (a failed device)."""

    def _ran_dry(self) -> float:
        """The queue emptied: push out anything held back (resampler tails). Returns when it will be heard."""
        return 0.0

    def _flushed(self) -> None:
        """Forget audio held back for continuity (resampler state) after a flush."""
        return None

    def _close(self) -> None:
        """Blocking; releases what `_open` took."""
        return None

    # -- the loop's side --
    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        opened = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(opened,), name="audio-out", daemon=True)
        self._thread.start()
        await opened

    async def __aenter__(self) -> AudioSink:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def play(self, pcm: bytes, level: float = 1.0) -> None:
        """Queue audio at the output's volume times `level` (a tone's share of it); returns at once."""
        if len(pcm) % 2:
            raise ValueError(f"play(pcm): {len(pcm)} bytes is not a whole number of 16-bit samples")
        if not pcm:
            return
        factor = self.volume * level
        if factor != 1.0:  # in float, then clipped: a loud source never wraps around
            scaled = np.frombuffer(pcm, dtype=np.int16).astype(np.float32) * factor
            pcm = np.clip(np.round(scaled), -32768, 32767).astype(np.int16).tobytes()
        blocks = [pcm[i : i + BLOCK_BYTES] for i in range(0, len(pcm), BLOCK_BYTES)]
        with self._cond:
            if self._stopping:
                return
            self._blocks.extend(blocks)
            self._queued += len(pcm)
            self._cond.notify()

    def flush(self) -> int:
        """Drop everything queued now; returns the number of bytes dropped."""
        with self._cond:
            dropped = self._queued
            self._blocks.clear()
            self._queued = 0
            self._flush_pending = True
            self._cond.notify()
        return dropped

    @property
    def queued_bytes(self) -> int:
        return self._queued

    @property
    def playing(self) -> bool:
        """Whether sound is coming out of the speaker now (queued, being written, or still in the device)."""
        return bool(self._queued) or self._busy or time.monotonic() < self._audible_until

    def _idle_locked(self) -> bool:
        return not self._blocks and not self._busy and self._dry and time.monotonic() >= self._audible_until

    async def drain(self) -> None:
        """Wait until everything queued has been heard."""
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if (
                    self._stopping
                    or self._thread is None
                    or not self._thread.is_alive()
                    or self._idle_locked()
                ):
                    return
                fut = loop.create_future()
                self._waiters.append(fut)
                self._cond.notify()
            await fut

    def close(self) -> None:
        """Stop at once, dropping what is queued; the thread releases the device."""
        with self._cond:
            self._stopping = True
            self._blocks.clear()
            self._queued = 0
            self._cond.notify()
            self._wake_waiters_locked()

    async def aclose(self) -> None:
        """close(), and wait until the device (or file) is released."""
        self.close()
        if self._thread is not None and self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, 5.0)

    def _wake_waiters_locked(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            with contextlib.suppress(RuntimeError):
                fut.get_loop().call_soon_threadsafe(resolve_future, fut)

    def _run(self, opened: asyncio.Future) -> None:
        assert self._loop is not None
        try:
            self._open()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(resolve_future, opened, exc)
            return
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(resolve_future, opened)
        try:
            self._play_loop()
        except Exception:
            log.exception("%s: playback failed", self.description)
        finally:
            with self._cond:
                self._stopping = True
                self._wake_waiters_locked()
            with contextlib.suppress(Exception):
                self._close()

    def _play_loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                flushed, self._flush_pending = self._flush_pending, False
                block = self._blocks.popleft() if self._blocks else None
                if block is not None:
                    self._queued -= len(block)
                    self._busy = True
                    self._dry = False
                elif self._dry and not flushed:
                    remaining = self._audible_until - time.monotonic()
                    if remaining > 0:
                        self._cond.wait(remaining)
                    else:
                        self._wake_waiters_locked()
                        self._cond.wait()
                    continue
            if flushed:
                self._flushed()
            if block is None:
                if not self._dry:
                    until = self._ran_dry()
                    with self._cond:
                        self._audible_until = max(self._audible_until, until)
                        self._dry = True
                continue
            until = None
            try:
                until = self._write(block)
            finally:
                with self._cond:
                    self._busy = False
                    if until is not None:
                        self.played_bytes += len(block)
                        self._audible_until = max(self._audible_until, until)


class NullSink(AudioSink):
    """Plays nothing, at once (`--output none`)."""

    def __init__(self) -> None:
        super().__init__("no audio output")

    def _write(self, block: bytes) -> float:
        return time.monotonic()


class WavSink(AudioSink):
    """Records what was played into a 24 kHz WAV. `paced` consumes audio at real-time speed like a sound card,
    so flush and drain behave as they would with a speaker."""

    def __init__(self, path: Path, paced: bool = True, field: str = "audio.output.file") -> None:
        path = Path(path)
        if not path.parent.is_dir():
            raise AudioError(f"{field}: the directory {path.parent} does not exist")
        super().__init__(f"audio output file {path}")
        self.path, self.paced, self.field = path, paced, field
        self._wav: wave.Wave_write | None = None
        self._clock = 0.0
        self._pause = threading.Event()  # never set: an interruptible sleep

    def _open(self) -> None:
        try:
            self._wav = wave.open(str(self.path), "wb")  # noqa: SIM115 - closed by _close()
        except OSError as exc:
            raise AudioError(f"{self.field}: cannot write {self.path}: {exc.strerror or exc}") from None
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(OUTPUT_RATE)

    def _write(self, block: bytes) -> float:
        assert self._wav is not None
        now = time.monotonic()
        self._wav.writeframes(block)
        if not self.paced:
            return now
        self._clock = max(self._clock, now) + len(block) / 2 / OUTPUT_RATE
        while not self._stopping and (delay := self._clock - time.monotonic()) > 0:
            self._pause.wait(min(delay, 0.01))
        return self._clock

    def _close(self) -> None:
        if self._wav is not None:
            self._wav.close()
            self._wav = None


class PyAudioSink(AudioSink):
    """A speaker through PortAudio, at 24 kHz if the device allows, else resampled with soxr.

    A device that fails is reopened at most every `retry_delay` seconds while audio keeps coming; what arrives
    meanwhile is dropped (counted in `dropped_bytes`), one log line per outage.
    """

    def __init__(
        self,
        device: str | int | None = None,
        *,
        rate: int | None = None,
        retry_delay: float | None = None,
        field: str = "audio.output.device",
    ) -> None:
        """`rate`: open the device at exactly this rate (odd hardware, tests of the resampling path)."""
        super().__init__("audio output " + (repr(device) if device is not None else "(default device)"))
        self.device, self.force_rate, self.retry_delay, self.field = device, rate, retry_delay, field
        self._dev: PyAudioDevice | None = None
        self._resampler: soxr.ResampleStream | None = None
        self._retry_at = 0.0
        self._down_since: float | None = None
        self.dropped_bytes = 0

    def _open(self) -> None:
        try:
            self._open_device()
        except AudioDeviceError as exc:
            if self.retry_delay is None:
                raise
            self._outage(exc)

    def _open_device(self) -> None:
        rates = [self.force_rate] if self.force_rate else [OUTPUT_RATE, 0]
        dev = PyAudioDevice("output", self.device, self.field, rates)
        self._dev = dev
        self.description = f"audio output {dev.info}"
        self._resampler = (
            soxr.ResampleStream(OUTPUT_RATE, dev.rate, 1, dtype="int16") if dev.rate != OUTPUT_RATE else None
        )
        log.info(
            "audio output: %s at %d Hz, %d channel(s)%s",
            dev.info,
            dev.rate,
            dev.channels,
            ", resampled from 24000 Hz" if self._resampler else "",
        )

    def _outage(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + (self.retry_delay or 0.0)
        if self._down_since is None:
            self._down_since = time.monotonic()
            if self.retry_delay is None:
                log.error("%s; no audio output from now on", exc)
            else:
                log.error("%s; dropping audio and retrying every %g s", exc, self.retry_delay)
        else:
            log.debug("audio output still failing: %s", exc)

    def _device_write(self, x: np.ndarray) -> float:
        assert self._dev is not None
        if self._dev.channels == 2:
            x = np.repeat(x, 2)
        self._dev.stream.write(x.tobytes())
        return time.monotonic() + self._dev.stream.get_output_latency()

    def _write(self, block: bytes) -> float | None:
        if self._dev is None:
            if self.retry_delay is None or time.monotonic() < self._retry_at:
                self.dropped_bytes += len(block)
                return None
            try:
                self._open_device()
            except AudioDeviceError as exc:
                self._outage(exc)
                self.dropped_bytes += len(block)
                return None
            if self._down_since is not None:
                log.warning("%s is back after %.1f s", self.description, time.monotonic() - self._down_since)
                self._down_since = None
        x = np.frombuffer(block, dtype=np.int16)
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x)
        try:
            return self._device_write(x)
        except OSError as exc:
            self._close()
            self.dropped_bytes += len(block) + self.flush()
            self._outage(AudioDeviceError(f"{self.description} failed: {pa_message(exc)}"))
            return None

    def _ran_dry(self) -> float:
        if self._dev is None or self._resampler is None:
            return 0.0
        tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        self._resampler.clear()
        try:
            return self._device_write(tail) if len(tail) else 0.0
        except OSError:
            return 0.0  # the next block's write reports the failure

    def _flushed(self) -> None:
        if self._resampler is not None:
            self._resampler.clear()

    def _close(self) -> None:
        if self._dev is not None:
            self._dev.close()
            self._dev = None


def open_output(
    settings: AudioOutput, override: str | None = None, retry_delay: float | None = None
) -> AudioSink:
    """The output the config (or `--output FILE.wav|none`) asks for; not yet started."""
    if override is not None:
        if override.lower() == "none":
            return NullSink()
        if not override.lower().endswith(".wav"):
            raise AudioError(f"--output: expected a .wav file or 'none', got '{override}'")
        return WavSink(Path(override), field="--output")
    if settings.backend == "none":
        return NullSink()
    if settings.backend == "wav":
        if settings.file is None:
            raise AudioError("audio.output.file must be set when audio.output.backend is wav")
        return WavSink(settings.file)
    return PyAudioSink(settings.device, retry_delay=retry_delay)
