"""Microphone-like inputs: a PortAudio device, a recording, or a pipe, each delivering 80 ms frames on the loop.

All blocking I/O runs in a thread per stream; the event loop only ever sees a queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import sys
import threading
import time
import wave
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soxr

from ..config import AudioInput
from ..logs import logger
from .devices import PyAudioDevice, pa_message
from .frames import FRAME_BYTES, FRAME_SAMPLES, SAMPLE_RATE, AudioDeviceError, AudioError, Frame, Framer, resolve_future

log = logger(__name__)

class InputStream(ABC):
    """An async iterator of Frames; `async with` opens it, the end of the input ends the iteration."""

    description: str
    overruns: int

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def __anext__(self) -> Frame: ...

    @abstractmethod
    async def aclose(self) -> None: ...

    def __aiter__(self) -> InputStream:
        return self

    async def __aenter__(self) -> InputStream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()



class AudioSource(InputStream):
    """Runs `_open`/`_read`/`_close` in a reader thread and hands frames to the loop.

    Live sources drop the oldest frame when the consumer falls `queue_frames` behind (counted in `overruns`);
    lossless sources (files, pipes) make the reader wait instead, so nothing of a recording is skipped.
    """

    queue_frames = 64
    lossless = False
    stall_timeout: float | None = None  # a device that delivers nothing for this long counts as failed
    join_timeout = 2.0

    def __init__(self, description: str) -> None:
        self.description = description
        self.overruns = 0
        self.ended = False
        self._queue: asyncio.Queue[Frame | BaseException | None] = asyncio.Queue()
        self._slots = threading.Semaphore(self.queue_frames)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @abstractmethod
    def _open(self) -> None:
        """Blocking; raises AudioError."""

    @abstractmethod
    def _read(self) -> bytes | None:
        """Blocking; 16 kHz mono s16le of any length (possibly empty), None at the end of the input."""

    def _close(self) -> None:
        """Blocking; releases what `_open` took."""

    def _end_message(self) -> str:
        return f"{self.description}: end of input"

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        opened = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(opened,), name="audio-in", daemon=True)
        self._thread.start()
        try:
            await opened
        except BaseException:
            self.ended = True
            raise

    def _run(self, opened: asyncio.Future) -> None:
        assert self._loop is not None
        call = self._loop.call_soon_threadsafe
        try:
            self._open()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):
                call(resolve_future, opened, exc)
            return
        try:
            call(resolve_future, opened)
            framer = Framer()
            while not self._stop.is_set():
                data = self._read()
                if data is None:
                    tail = framer.tail()
                    if tail is not None:
                        self._emit(tail)
                    call(self._deliver, None)
                    return
                for frame in framer.push(data):
                    self._emit(frame)
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):  # RuntimeError: the loop is closed, nobody is listening
                call(self._deliver, exc)
        finally:
            with contextlib.suppress(Exception):
                self._close()

    def _emit(self, frame: Frame) -> None:
        assert self._loop is not None
        if self.lossless:
            while not self._slots.acquire(timeout=0.1):
                if self._stop.is_set():
                    return
        self._loop.call_soon_threadsafe(self._deliver, frame)

    def _deliver(self, item: Frame | BaseException | None) -> None:
        if isinstance(item, Frame) and not self.lossless and self._queue.qsize() >= self.queue_frames:
            self._queue.get_nowait()
            self.overruns += 1
            if self.overruns == 1 or self.overruns % 100 == 0:
                log.warning(
                    "%s: the consumer falls behind; dropped %d frames so far", self.description, self.overruns
                )
        self._queue.put_nowait(item)

    async def __anext__(self) -> Frame:
        if self._thread is None:
            await self.start()
        if self.ended and self._queue.empty():
            raise StopAsyncIteration
        try:
            item = await asyncio.wait_for(self._queue.get(), self.stall_timeout)
        except TimeoutError:
            self.ended = True
            self._stop.set()
            raise AudioDeviceError(
                f"{self.description}: no audio for {self.stall_timeout:g} s (device stalled)"
            ) from None
        if isinstance(item, Frame):
            if self.lossless:
                self._slots.release()
            return item
        self.ended = True
        self._stop.set()
        if item is None:
            log.info("%s", self._end_message())
            raise StopAsyncIteration
        raise item

    async def aclose(self) -> None:
        self.ended = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and self.join_timeout > 0:
            await asyncio.to_thread(thread.join, self.join_timeout)


class PyAudioSource(AudioSource):
    """A microphone through PortAudio, at 16 kHz if the device allows, else resampled with soxr."""

    stall_timeout = 5.0

    def __init__(
        self,
        device: str | int | None = None,
        rate: int | None = None,
        *,
        force_rate: int | None = None,
        field: str = "audio.input.device",
    ) -> None:
        """`rate`: the capture rate to try when the device refuses 16 kHz (else its default rate);
        `force_rate`: capture at exactly this rate (odd hardware, tests of the resampling path)."""
        super().__init__("audio input " + (repr(device) if device is not None else "(default device)"))
        self.device, self.field = device, field
        self.rate, self.force_rate = rate, force_rate
        self._dev: PyAudioDevice | None = None
        self._resampler: soxr.ResampleStream | None = None

    def _open(self) -> None:
        rates = [self.force_rate] if self.force_rate else [SAMPLE_RATE, self.rate or 0, 0]
        dev = self._dev = PyAudioDevice("input", self.device, self.field, rates)
        self.description = f"audio input {dev.info}"
        self._chunk = max(1, round(FRAME_SAMPLES * dev.rate / SAMPLE_RATE))
        self._resampler = (
            soxr.ResampleStream(dev.rate, SAMPLE_RATE, 1, dtype="int16") if dev.rate != SAMPLE_RATE else None
        )
        log.info(
            "audio input: %s at %d Hz, %d channel(s)%s",
            dev.info,
            dev.rate,
            dev.channels,
            ", resampled to 16000 Hz" if self._resampler else "",
        )

    def _read(self) -> bytes:
        assert self._dev is not None
        try:
            data = self._dev.stream.read(self._chunk, exception_on_overflow=False)
        except OSError as exc:
            raise AudioDeviceError(f"{self.description} failed: {pa_message(exc)}") from exc
        x = np.frombuffer(data, dtype=np.int16)
        if self._dev.channels > 1:
            x = np.ascontiguousarray(x.reshape(-1, self._dev.channels)[:, 0])
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x)
        return x.tobytes()

    def _close(self) -> None:
        if self._dev is not None:
            self._dev.close()
            self._dev = None


class _PcmFileReader:
    """16 kHz mono int16 from a 16-bit PCM WAV (any rate, any channels) or a raw s16le 16 kHz mono file."""

    def __init__(self, path: Path, field: str) -> None:
        self.path = path
        try:
            self._f: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise AudioError(f"{field}: cannot read {path}: {exc.strerror or exc}") from None
        head = self._f.read(12)
        self._f.seek(0)
        self._wav: wave.Wave_read | None = None
        self.rate, self.channels = SAMPLE_RATE, 1
        if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
            try:
                self._wav = wave.open(self._f, "rb")  # noqa: SIM115 - closed by close()
            except (wave.Error, EOFError) as exc:
                self.close()
                raise AudioError(
                    f"{field}: {path} is not a WAV file this can read ({exc}); "
                    "convert it to 16-bit PCM, e.g. sox IN -b 16 OUT.wav"
                ) from None
            if self._wav.getsampwidth() != 2:
                bits = 8 * self._wav.getsampwidth()
                self.close()
                raise AudioError(
                    f"{field}: {path} has {bits}-bit samples; 16-bit PCM is needed (sox IN -b 16 OUT.wav)"
                )
            self.rate, self.channels = self._wav.getframerate(), self._wav.getnchannels()
        elif path.suffix.lower() in (".wav", ".wave"):
            self.close()
            raise AudioError(f"{field}: {path} is named .wav but is not a RIFF/WAVE file")
        self._resampler = (
            soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="int16")
            if self.rate != SAMPLE_RATE
            else None
        )
        self._done = False

    def read(self, samples: int) -> np.ndarray | None:
        """About `samples` output samples; None at the end."""
        if self._done:
            return None
        n_in = max(1, math.ceil(samples * self.rate / SAMPLE_RATE))
        data = self._wav.readframes(n_in) if self._wav else self._f.read(2 * n_in)
        data = data[: len(data) - len(data) % (2 * self.channels)]
        x = np.frombuffer(data, dtype=np.int16)
        if self.channels > 1:
            x = np.round(x.reshape(-1, self.channels).mean(axis=1)).astype(np.int16)
        last = len(x) == 0
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x, last=last)
        if last:
            self._done = True
            return x if len(x) else None
        return x

    def close(self) -> None:
        if self._wav is not None:
            self._wav.close()
        self._f.close()


def read_audio_file(path: Path, field: str = "file") -> np.ndarray:
    """A whole WAV or raw file as 16 kHz mono int16 (blocking)."""
    reader = _PcmFileReader(Path(path), field)
    try:
        chunks = []
        while (x := reader.read(16 * FRAME_SAMPLES)) is not None:
            chunks.append(x)
    finally:
        reader.close()
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


class FileSource(AudioSource):
    """A recording as if it were a microphone: paced in real time, or as fast as the consumer takes it."""

    lossless = True

    def __init__(self, path: Path, realtime: bool = True, field: str = "audio.input.file") -> None:
        path = Path(path)
        if not path.is_file():
            problem = "is not a file" if path.exists() else "does not exist"
            raise AudioError(f"{field}: {path} {problem}")
        super().__init__(f"audio input file {path}")
        self.path, self.realtime, self.field = path, realtime, field
        self._reader: _PcmFileReader | None = None
        self._samples = 0
        self._t0 = 0.0

    def _open(self) -> None:
        self._reader = _PcmFileReader(self.path, self.field)
        self._t0 = time.monotonic()

    def _read(self) -> bytes | None:
        assert self._reader is not None
        x = self._reader.read(FRAME_SAMPLES)
        if x is None:
            return None
        self._samples += len(x)
        if self.realtime:  # a microphone hands over 80 ms of audio only after those 80 ms have passed
            self._stop.wait(max(0.0, self._t0 + self._samples / SAMPLE_RATE - time.monotonic()))
        return x.tobytes()

    def _close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def _end_message(self) -> str:
        return f"end of input file {self.path} ({self._samples / SAMPLE_RATE:.1f} s of audio)"


class StdinSource(AudioSource):
    """Raw s16le 16 kHz mono from a pipe, e.g. `arecord -f S16_LE -r 16000 -c 1 | livehome run --input -`."""

    lossless = True
    join_timeout = 0.0  # a read from a pipe cannot be interrupted; the thread is a daemon

    def __init__(self, stream: BinaryIO | None = None) -> None:
        super().__init__("audio input stdin")
        self._stream = stream if stream is not None else sys.stdin.buffer

    def _open(self) -> None:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            if os.isatty(self._stream.fileno()):
                raise AudioError(
                    "--input -: stdin is a terminal; pipe raw 16 kHz mono s16le audio into it, "
                    "e.g. arecord -f S16_LE -r 16000 -c 1 | livehome run --input -"
                )

    def _read(self) -> bytes | None:
        # os.read on the descriptor, not the buffered reader: a thread blocked in BufferedReader.read1 holds
        # its lock, and interpreter shutdown (SIGTERM with the pipe still open) then aborts on that lock.
        try:
            fd = self._stream.fileno()
        except (AttributeError, OSError, ValueError):
            return getattr(self._stream, "read1", self._stream.read)(FRAME_BYTES) or None
        return os.read(fd, FRAME_BYTES) or None


class RetryingSource(InputStream):
    """Reopens a failed device every `retry_delay` seconds instead of dying; one log line per outage.

    Positions continue across reopenings, so they stay increasing for everything downstream.
    """

    def __init__(self, open_source: Callable[[], AudioSource], retry_delay: float) -> None:
        self._open_source = open_source
        self.retry_delay = retry_delay
        self.description = "audio input"
        self._source: AudioSource | None = None
        self._offset = 0
        self._next = 0
        self._down_since: float | None = None
        self._closed = False
        self._dropped = 0

    @property
    def overruns(self) -> int:
        return self._dropped + (self._source.overruns if self._source else 0)

    @property
    def unavailable(self) -> bool:
        """Whether the device is failing now (for the daemon's status line)."""
        return self._down_since is not None

    async def start(self) -> None:
        """Opens the device now if it can; if not, iteration keeps trying."""
        if self._source is None:
            await self._try_open()

    async def _try_open(self) -> bool:
        source = self._open_source()
        try:
            await source.start()
        except AudioDeviceError as exc:
            await source.aclose()
            self._outage(exc)
            return False
        self._source, self.description = source, source.description
        self._offset = self._next
        if self._down_since is not None:
            log.warning("%s is back after %.1f s", source.description, time.monotonic() - self._down_since)
            self._down_since = None
        return True

    def _outage(self, exc: AudioDeviceError) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.error("%s; retrying every %g s", exc, self.retry_delay)
        else:
            log.debug("audio input still failing: %s", exc)

    async def __anext__(self) -> Frame:
        while not self._closed:
            if self._source is None and not await self._try_open():
                await asyncio.sleep(self.retry_delay)
                continue
            assert self._source is not None
            try:
                frame = await self._source.__anext__()
            except AudioDeviceError as exc:
                self._dropped += self._source.overruns
                await self._source.aclose()
                self._source = None
                self._outage(exc)
                await asyncio.sleep(self.retry_delay)
                continue
            frame = Frame(frame.pcm, frame.position + self._offset)
            self._next = frame.end
            return frame
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._closed = True
        if self._source is not None:
            await self._source.aclose()


def open_input(
    settings: AudioInput, override: str | None = None, retry_delay: float | None = None
) -> InputStream:
    """The input the config (or `--input -|FILE`) asks for; not yet started. With `retry_delay`, a sound
    device that fails is reopened after that delay instead of ending the stream."""
    if override == "-":
        return StdinSource()
    if override:
        return FileSource(Path(override), settings.realtime, field="--input")
    if settings.backend == "stdin":
        return StdinSource()
    if settings.backend == "file":
        if settings.file is None:
            raise AudioError("audio.input.file must be set when audio.input.backend is file")
        return FileSource(settings.file, settings.realtime)

    def make() -> PyAudioSource:
        return PyAudioSource(settings.device, settings.rate)

    return RetryingSource(make, retry_delay) if retry_delay is not None else make()

