"""Microphone in, loudspeaker out.

Inputs deliver 16 kHz mono s16le frames of 1280 samples (80 ms, openWakeWord's natural chunk), each
tagged with its position in samples since the stream started, so the wake word and the pre-roll buffer
agree on time. Outputs take the model's 24 kHz mono s16le audio. All blocking I/O (PortAudio, files,
stdin) runs in a thread per stream; the event loop only ever sees queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import os
import sys
import threading
import time
import wave
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import soxr

from .config import AudioInput, AudioOutput

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # what the wake word and Gemini Live want
FRAME_SAMPLES = 1280
FRAME_BYTES = 2 * FRAME_SAMPLES
OUTPUT_RATE = 24000  # what Gemini Live speaks
BLOCK_SECONDS = 0.02  # playback granularity: a flush takes effect within about one block
BLOCK_BYTES = 2 * int(OUTPUT_RATE * BLOCK_SECONDS)

Kind = Literal["input", "output"]


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


class _Framer:
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


# ----------------------------------------------------------------------------------------------------
# PortAudio devices


_PA_LOCK = threading.Lock()  # Pa_Initialize/Pa_Terminate are reference counted but not thread-safe
_quieted = False
_quiet_handlers: list[Any] = []


def _quiet_native_logs() -> None:
    """PortAudio probes every ALSA and JACK backend at start-up, and those libraries print dozens of harmless
    errors straight to stderr. Silence their printers (not stderr itself, which our own logging uses)."""
    global _quieted
    if _quieted or log.isEnabledFor(logging.DEBUG):
        return
    _quieted = True
    with contextlib.suppress(OSError, AttributeError):
        alsa = ctypes.CDLL("libasound.so.2")
        handler = ctypes.CFUNCTYPE(
            None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
        )(lambda *_: None)
        alsa.snd_lib_error_set_handler(handler)
        _quiet_handlers.append(handler)
    with contextlib.suppress(OSError, AttributeError):
        jack = ctypes.CDLL("libjack.so.0")
        printer = ctypes.CFUNCTYPE(None, ctypes.c_char_p)(lambda _: None)
        jack.jack_set_error_function(printer)
        jack.jack_set_info_function(printer)
        _quiet_handlers.append(printer)


def _new_pyaudio() -> Any:
    import pyaudio

    with _PA_LOCK:
        _quiet_native_logs()
        return pyaudio.PyAudio()


def _terminate(pa: Any) -> None:
    with _PA_LOCK, contextlib.suppress(Exception):
        pa.terminate()


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    input_channels: int
    output_channels: int
    default_rate: int
    default_input: bool = False
    default_output: bool = False

    def channels(self, kind: Kind) -> int:
        return self.input_channels if kind == "input" else self.output_channels

    def __str__(self) -> str:
        return f"{self.index} '{self.name}'"


def _device_infos(pa: Any) -> list[DeviceInfo]:
    defaults = {}
    for kind, getter in (
        ("input", pa.get_default_input_device_info),
        ("output", pa.get_default_output_device_info),
    ):
        with contextlib.suppress(OSError):
            defaults[kind] = getter()["index"]
    devices = []
    for i in range(pa.get_device_count()):
        d = pa.get_device_info_by_index(i)
        devices.append(
            DeviceInfo(
                index=i,
                name=str(d["name"]),
                input_channels=int(d["maxInputChannels"]),
                output_channels=int(d["maxOutputChannels"]),
                default_rate=int(d["defaultSampleRate"]),
                default_input=defaults.get("input") == i,
                default_output=defaults.get("output") == i,
            )
        )
    return devices


def list_devices() -> list[DeviceInfo]:
    """Every device PortAudio sees (blocking: PortAudio probes the sound system)."""
    pa = _new_pyaudio()
    try:
        return _device_infos(pa)
    finally:
        _terminate(pa)


_NO_DEVICES = (
    "PortAudio finds no sound devices at all (no sound card or USB audio plugged in, "
    "or this user may not open /dev/snd: add it to the 'audio' group)"
)


def format_devices(devices: list[DeviceInfo]) -> str:
    """The table for `livehome devices`."""
    if not devices:
        return f"no audio devices: {_NO_DEVICES}"
    width = max(len(d.name) for d in devices)
    lines = [f"{'index':>5}  {'name':<{width}}  {'in':>3}  {'out':>3}  {'rate':>6}"]
    for d in devices:
        marks = [
            m for m, on in (("default input", d.default_input), ("default output", d.default_output)) if on
        ]
        row = f"{d.index:>5}  {d.name:<{width}}  {d.input_channels:>3}  {d.output_channels:>3}"
        lines.append(f"{row}  {d.default_rate:>6}" + (f"  ({', '.join(marks)})" if marks else ""))
    return "\n".join(lines)


def _device_list(devices: list[DeviceInfo], kind: Kind) -> str:
    usable = [d for d in devices if d.channels(kind)]
    if not devices:
        return _NO_DEVICES
    if not usable:
        return f"no {kind} devices exist; all devices: " + ", ".join(map(str, devices))
    return f"{kind} devices: " + ", ".join(map(str, usable))


def find_device(devices: list[DeviceInfo], wanted: str | int | None, kind: Kind, field: str) -> DeviceInfo:
    """The device `wanted` names: an index, a (case-insensitive) name substring, or None for the default."""
    if not devices:
        raise AudioDeviceError(f"no audio {kind} device: {_NO_DEVICES}")
    usable = [d for d in devices if d.channels(kind)]
    if wanted is None:
        for d in usable:
            if d.default_input if kind == "input" else d.default_output:
                return d
        raise AudioDeviceError(
            f"no default audio {kind} device; set {field} to one of the " + _device_list(devices, kind)
        )
    if isinstance(wanted, int) or wanted.strip().isdigit():
        index = int(wanted)
        for d in usable:
            if d.index == index:
                return d
        raise AudioDeviceError(
            f"{field} {index} is not an audio {kind} device; {_device_list(devices, kind)}"
        )
    needle = wanted.strip().lower()
    exact = [d for d in usable if d.name.lower() == needle]
    matches = exact or [d for d in usable if needle in d.name.lower()]
    if not matches:
        raise AudioDeviceError(
            f"{field} '{wanted}' matches no audio {kind} device; {_device_list(devices, kind)}"
        )
    if len(matches) > 1:
        log.info("%s '%s' matches %s; using the first", field, wanted, ", ".join(map(str, matches)))
    return matches[0]


_PA_HINTS = {
    -9985: "the device is busy or unavailable (another program may be using it)",
    -9996: "invalid device",
    -9997: "the device does not support this sample rate",
    -9998: "the device does not support this channel count",
    -9999: "host error: the device was unplugged or the sound server went away",
}


def _pa_message(exc: BaseException) -> str:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else getattr(exc, "errno", None)
    text = exc.args[1] if len(exc.args) > 1 else str(exc)
    hint = _PA_HINTS.get(code) if isinstance(code, int) else None
    return f"{text} [{code}]" + (f": {hint}" if hint else "")


def _pick_format(pa: Any, device: DeviceInfo, kind: Kind, rates: list[int]) -> tuple[int, int]:
    """The first rate the device accepts, mono if it can (else stereo)."""
    import pyaudio

    for rate in rates:
        for channels in (1, 2):
            if channels > device.channels(kind):
                continue
            kwargs = {
                f"{kind}_device": device.index,
                f"{kind}_channels": channels,
                f"{kind}_format": pyaudio.paInt16,
            }
            with contextlib.suppress(ValueError):
                if pa.is_format_supported(rate, **kwargs):
                    return rate, channels
    raise AudioDeviceError(
        f"audio {kind} {device} supports none of the sample rates {rates} in 16-bit mono or stereo"
    )


class _PyAudioDevice:
    """One open PortAudio stream and the PortAudio instance it lives in; opened and used in one thread."""

    def __init__(self, kind: Kind, wanted: str | int | None, field: str, rates: list[int]) -> None:
        """`rates` in order of preference; 0 stands for the device's default rate."""
        import pyaudio

        self.pa = _new_pyaudio()
        self.info: DeviceInfo | str = repr(wanted)
        try:
            self.info = info = find_device(_device_infos(self.pa), wanted, kind, field)
            rates = list(dict.fromkeys(r or info.default_rate for r in rates))
            self.rate, self.channels = _pick_format(self.pa, info, kind, rates)
            self.stream = self.pa.open(
                format=pyaudio.paInt16,
                channels=self.channels,
                rate=self.rate,
                frames_per_buffer=self.rate // 50,
                **{kind: True, f"{kind}_device_index": info.index},
            )
        except OSError as exc:
            self.close()
            raise AudioDeviceError(f"cannot open audio {kind} {self.info}: {_pa_message(exc)}") from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        stream = getattr(self, "stream", None)
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
            self.stream = None
        _terminate(self.pa)


# ----------------------------------------------------------------------------------------------------
# Inputs


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


def _resolve(fut: asyncio.Future, exc: BaseException | None = None) -> None:
    if not fut.done():
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)


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
                call(_resolve, opened, exc)
            return
        try:
            call(_resolve, opened)
            framer = _Framer()
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
        self._dev: _PyAudioDevice | None = None
        self._resampler: soxr.ResampleStream | None = None

    def _open(self) -> None:
        rates = [self.force_rate] if self.force_rate else [SAMPLE_RATE, self.rate or 0, 0]
        dev = self._dev = _PyAudioDevice("input", self.device, self.field, rates)
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
            raise AudioDeviceError(f"{self.description} failed: {_pa_message(exc)}") from exc
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


# ----------------------------------------------------------------------------------------------------
# Outputs


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

    def play(self, pcm: bytes) -> None:
        """Queue audio; returns at once."""
        if len(pcm) % 2:
            raise ValueError(f"play(pcm): {len(pcm)} bytes is not a whole number of 16-bit samples")
        if not pcm:
            return
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
                fut.get_loop().call_soon_threadsafe(_resolve, fut)

    def _run(self, opened: asyncio.Future) -> None:
        assert self._loop is not None
        try:
            self._open()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(_resolve, opened, exc)
            return
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_resolve, opened)
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
        self._dev: _PyAudioDevice | None = None
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
        dev = _PyAudioDevice("output", self.device, self.field, rates)
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
            self._outage(AudioDeviceError(f"{self.description} failed: {_pa_message(exc)}"))
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
