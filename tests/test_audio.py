"""Audio inputs and outputs on real parts: a private PulseAudio (virtual microphone and speaker) behind
PyAudio, real files, real pipes, a real subprocess reading stdin."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from daemon.audio.devices import DeviceInfo, format_devices, list_devices
from daemon.audio.earcons import end_earcon, wake_earcon
from daemon.audio.frames import FRAME_BYTES, FRAME_SAMPLES, AudioDeviceError, AudioError, Frame
from daemon.audio.inputs import AudioSource, FileSource, PyAudioSource, RetryingSource, StdinSource, open_input
from daemon.audio.outputs import NullSink, PyAudioSink, WavSink, open_output
from daemon.audio.speech import silence
from daemon.config import AudioInput, AudioOutput
from tests.support.pulse import MISSING, PULSEAUDIO, PulseServer, running_pulse
from tests.support.speech_files import align, pcm16, read_wav, rms, speech, tone, write_wav

ROOT = Path(__file__).resolve().parents[1]
SENTENCE = "hey jarvis, turn on the kitchen light"

needs_pulse = pytest.mark.skipif(PULSEAUDIO is None, reason=MISSING)


@pytest.fixture(scope="module")
def pulse() -> Iterator[PulseServer]:
    if PULSEAUDIO is None:
        pytest.skip(MISSING)
    with running_pulse() as server:
        yield server


async def collect(source: AudioSource | RetryingSource, n: int | None = None) -> list[Frame]:
    frames = []
    async for frame in source:
        frames.append(frame)
        if n is not None and len(frames) == n:
            break
    return frames


def joined(frames: list[Frame]) -> np.ndarray:
    return np.concatenate([f.samples() for f in frames])


def contiguous(frames: list[Frame], start: int = 0) -> bool:
    return [f.position for f in frames] == list(
        range(start, start + FRAME_SAMPLES * len(frames), FRAME_SAMPLES)
    )


def loud_seconds(x: np.ndarray, rate: int, level: float = 1000.0) -> float:
    """How long the signal is above `level` RMS, in 10 ms windows."""
    win = rate // 100
    return sum(rms(x[i : i + win]) > level for i in range(0, len(x) - win + 1, win)) / 100


# -- PyAudio input from the virtual microphone ---------------------------------------------------------------


async def _hear(pulse: PulseServer, source: PyAudioSource, utterance: bytes) -> list[Frame]:
    """Capture while `utterance` is played into the virtual microphone, plus a little after."""
    frames: list[Frame] = []
    async with source:
        frames += await collect(source, 3)
        feeder = pulse.feed_mic(utterance)
        while feeder.poll() is None:
            frames.append(await anext(source))
        frames += await collect(source, 4)
    return frames


@needs_pulse
@pytest.mark.parametrize("force_rate", [None, 48000], ids=["16k", "48k-resampled"])
async def test_pyaudio_input_hears_the_speech(pulse: PulseServer, force_rate: int | None) -> None:
    utterance = speech(SENTENCE)
    frames = await _hear(pulse, PyAudioSource(force_rate=force_rate), utterance)
    assert all(len(f.pcm) == FRAME_BYTES for f in frames)
    assert contiguous(frames)
    heard, said = joined(frames), pcm16(utterance)
    lag, corr = align(said, heard)
    assert corr > 0.95
    assert lag >= 0 and lag + len(said) <= len(heard)  # all of it was captured
    assert rms(heard[lag : lag + len(said)]) == pytest.approx(rms(said), rel=0.1)
    assert loud_seconds(heard, 16000) == pytest.approx(loud_seconds(said, 16000), abs=0.1)


@needs_pulse
async def test_pyaudio_input_by_name_substring_and_by_index(pulse: PulseServer) -> None:
    devices = await asyncio.to_thread(list_devices)
    pulse_device = next(d for d in devices if d.name == "pulse")
    for wanted in ("PuLs", pulse_device.index, str(pulse_device.index)):
        source = PyAudioSource(device=wanted)
        async with source:
            frames = await collect(source, 2)
        assert source.description == f"audio input {pulse_device}", wanted
        assert contiguous(frames)


@needs_pulse
@pytest.mark.parametrize("wanted", ["usb speakerphone", 42])
async def test_a_bad_input_device_names_what_exists(pulse: PulseServer, wanted: str | int) -> None:
    with pytest.raises(AudioDeviceError) as err:
        await PyAudioSource(device=wanted).start()
    message = str(err.value)
    assert f"audio.input.device {wanted!r}" in message or f"audio.input.device {wanted} " in message
    assert "'pulse'" in message and "'default'" in message


@needs_pulse
async def test_a_bad_output_device_names_what_exists(pulse: PulseServer) -> None:
    with pytest.raises(AudioDeviceError, match=r"audio\.output\.device 'hdmi'.*'pulse'"):
        await PyAudioSink(device="hdmi").start()


@needs_pulse
def test_devices_table_lists_the_virtual_devices(pulse: PulseServer) -> None:
    table = format_devices(list_devices())
    assert "pulse" in table and "(default input, default output)" in table


def test_devices_table_without_any_device() -> None:
    assert "no audio devices" in format_devices([])
    row = format_devices([DeviceInfo(3, "USB PnP Sound Device: Audio (hw:1,0)", 1, 0, 48000, True)])
    assert "USB PnP Sound Device" in row and "48000" in row and "(default input)" in row


def test_no_sound_card_at_all_is_a_clear_error(tmp_path: Path) -> None:
    """With no sound card and no sound server PortAudio sees nothing (error -9996 territory)."""
    (tmp_path / "client.conf").write_text("autospawn = no\n")
    env = dict(
        os.environ,
        PULSE_SERVER=f"unix:{tmp_path}/absent",
        PULSE_CLIENTCONFIG=str(tmp_path / "client.conf"),
        ALSA_CONFIG_PATH="/usr/share/alsa/alsa.conf",
    )
    script = (
        "import asyncio\n"
        "from daemon.audio.inputs import PyAudioSource\n"
        "from daemon.audio.frames import AudioDeviceError\n"
        "from daemon.audio.devices import list_devices\n"
        "print(len(list_devices()))\n"
        "try:\n"
        "    asyncio.run(PyAudioSource().start())\n"
        "except AudioDeviceError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    count, message = out.stdout.splitlines()[:2]
    if count != "0":
        pytest.skip(f"this machine has a sound card ({count} devices)")
    assert message.startswith("no audio input device: PortAudio finds no sound devices at all")
    assert "ALSA lib" not in out.stderr  # the backends' start-up noise is silenced


@needs_pulse
async def test_retrying_input_survives_the_sound_server_going_away(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="livehome.audio")
    with running_pulse() as server:
        source = RetryingSource(PyAudioSource, retry_delay=0.1)
        async with source:
            before = await collect(source, 3)
            server.stop()
            pending = asyncio.ensure_future(collect(source, 3))
            await asyncio.sleep(1.0)  # several reopening attempts fail meanwhile
            assert not pending.done()
            await asyncio.to_thread(server.start)
            after = await asyncio.wait_for(pending, 30)
    assert contiguous(before) and contiguous(after, start=before[-1].end)
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "retrying every 0.1 s" in m]) == 1  # once per outage
    assert len([m for m in messages if "is back after" in m]) == 1


# -- PyAudio output to the virtual speaker -------------------------------------------------------------------


@needs_pulse
@pytest.mark.parametrize(
    ("rate", "volume"), [(None, 1.0), (48000, 1.0), (None, 0.3)], ids=["24k", "48k-resampled", "24k-volume-30"]
)
async def test_pyaudio_output_is_heard_on_the_speaker(pulse: PulseServer, rate: int | None, volume: float) -> None:
    said = speech(SENTENCE, 24000)
    with pulse.record_speaker(24000) as recording:
        sink = PyAudioSink(rate=rate)
        sink.volume = volume
        async with sink:
            sink.play(said)
            assert sink.playing
            await sink.drain()
            assert not sink.playing
        await asyncio.sleep(0.2)  # the recorder's own latency
    heard = pcm16(recording.pcm)
    lag, corr = align(pcm16(said), heard)
    assert corr > 0.95
    assert lag >= 0 and lag + len(said) // 2 <= len(heard)
    assert rms(heard[lag : lag + len(said) // 2]) == pytest.approx(volume * rms(pcm16(said)), rel=0.1)


@needs_pulse
async def test_flush_silences_the_speaker(pulse: PulseServer) -> None:
    total = tone(440, 4.0, 24000)
    with pulse.record_speaker(24000) as recording:
        sink = PyAudioSink()
        async with sink:
            sink.play(total)
            await asyncio.sleep(0.5)
            dropped = sink.flush()
            assert not sink.flush()  # nothing left to drop
            await sink.drain()
            assert not sink.playing
            await asyncio.sleep(0.3)
            played = sink.played_bytes
    assert dropped > 0 and played > 0
    assert played + dropped == len(total)  # every byte either played or dropped
    heard = loud_seconds(pcm16(recording.pcm), 24000)
    assert 0.1 < heard < 2.0  # a 4 s tone, cut short


@needs_pulse
async def test_output_survives_the_sound_server_going_away(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="livehome.audio")
    said = speech("the light is on", 24000)
    with running_pulse() as server:
        sink = PyAudioSink(retry_delay=0.1)
        async with sink:
            sink.play(tone(440, 0.3, 24000))
            await sink.drain()
            server.stop()
            sink.play(tone(440, 1.0, 24000))
            await sink.drain()  # does not hang on a dead device
            assert sink.dropped_bytes > 0
            await asyncio.sleep(0.3)
            sink.play(tone(440, 0.5, 24000))  # still down: dropped again, no new error line
            await sink.drain()
            await asyncio.to_thread(server.start)
            await asyncio.sleep(0.2)
            with server.record_speaker(24000) as recording:
                sink.play(said)
                await sink.drain()
                await asyncio.sleep(0.2)
    assert align(pcm16(said), pcm16(recording.pcm))[1] > 0.9
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "dropping audio and retrying every 0.1 s" in m]) == 1
    assert len([m for m in messages if "is back after" in m]) == 1


# -- files -------------------------------------------------------------------------------------------------


async def test_raw_and_wav_files_at_16k_come_through_unchanged(tmp_path: Path) -> None:
    pcm = speech(SENTENCE)
    raw = tmp_path / "speech.raw"
    raw.write_bytes(pcm)
    wav = write_wav(tmp_path / "speech.wav", pcm)
    for path in (raw, wav):
        frames = await collect(FileSource(path, realtime=False))
        assert contiguous(frames)
        assert all(len(f.pcm) == FRAME_BYTES for f in frames)
        assert b"".join(f.pcm for f in frames) == pcm + bytes(-len(pcm) % FRAME_BYTES)


async def test_a_stereo_44k_wav_is_downmixed_and_resampled(tmp_path: Path) -> None:
    reference = pcm16(speech(SENTENCE, 16000))
    wav = write_wav(tmp_path / "stereo.wav", speech(SENTENCE, 44100), rate=44100, channels=2)
    frames = await collect(FileSource(wav, realtime=False))
    got = joined(frames)
    assert abs(len(got) - len(reference)) <= FRAME_SAMPLES
    lag, corr = align(reference, got)
    assert abs(lag) <= 8 and corr > 0.98
    assert rms(got) == pytest.approx(0.75 * rms(reference), rel=0.05)  # the mean of full and half volume


async def test_end_of_file_ends_the_stream_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="livehome.audio")
    raw = tmp_path / "short.raw"
    raw.write_bytes(silence(0.5))
    source = FileSource(raw, realtime=False)
    frames = await collect(source)
    assert len(frames) == 7  # 8000 samples: six frames and a padded seventh
    with pytest.raises(StopAsyncIteration):
        await anext(source)
    assert any(f"end of input file {raw}" in r.getMessage() for r in caplog.records)


async def test_realtime_file_input_is_never_faster_than_real_time(tmp_path: Path) -> None:
    raw = tmp_path / "one-second.raw"
    raw.write_bytes(silence(1.0))
    start = time.monotonic()
    arrivals = []
    async for frame in FileSource(raw, realtime=True):
        arrivals.append((frame.end / 16000, time.monotonic() - start))
    assert len(arrivals) == 13
    # a lower bound only: each frame arrives no earlier than a microphone could have delivered it
    # (the last frame is padded: its audio ends with the file, at 1.0 s)
    assert all(elapsed >= min(audio_end, 1.0) - 0.02 for audio_end, elapsed in arrivals)
    assert arrivals[-1][1] >= 0.95


async def test_a_lagging_consumer_loses_nothing_from_a_file(tmp_path: Path) -> None:
    pcm = np.random.default_rng(1).integers(-3000, 3000, 16000 * 12, dtype=np.int16).tobytes()  # 150 frames
    raw = tmp_path / "noise.raw"
    raw.write_bytes(pcm)
    source = FileSource(raw, realtime=False)
    async with source:
        await asyncio.sleep(0.5)  # the reader fills the queue and has to wait
        frames = await collect(source)
    assert b"".join(f.pcm for f in frames) == pcm
    assert source.overruns == 0


class _Burst(AudioSource):
    """A live source that delivers 100 frames at once, faster than anyone consumes them."""

    def __init__(self) -> None:
        super().__init__("burst")
        self._left = 100

    def _open(self) -> None:
        pass

    def _read(self) -> bytes | None:
        self._left -= 1
        return bytes([self._left]) * FRAME_BYTES if self._left >= 0 else None


async def test_a_live_source_drops_the_oldest_frames_and_counts_them() -> None:
    source = _Burst()
    async with source:
        assert source._thread is not None
        await asyncio.to_thread(source._thread.join, 10)
        await asyncio.sleep(0)  # let the loop take the handed-over frames
        frames = await collect(source)
    assert source.overruns == 100 - AudioSource.queue_frames
    assert len(frames) == AudioSource.queue_frames
    assert frames[0].position == source.overruns * FRAME_SAMPLES and contiguous(frames, frames[0].position)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: FileSource(p / "absent.wav"), "audio.input.file: .*absent.wav does not exist"),
        (lambda p: open_input(AudioInput(), str(p / "absent.raw")), "--input: .*absent.raw does not exist"),
        (lambda p: open_input(AudioInput(backend="file")), "audio.input.file must be set"),
        (lambda p: open_output(AudioOutput(backend="wav")), "audio.output.file must be set"),
        (lambda p: open_output(AudioOutput(), "out.mp3"), "--output: expected a .wav file or 'none'"),
        (lambda p: WavSink(p / "no" / "dir.wav"), "audio.output.file: the directory .*no does not exist"),
    ],
)
def test_bad_options_name_the_field(tmp_path: Path, make: Callable[[Path], object], expected: str) -> None:
    with pytest.raises(AudioError, match=expected):
        make(tmp_path)


async def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    fake = tmp_path / "fake.wav"
    fake.write_bytes(b"not really audio" * 100)
    deep = tmp_path / "deep.wav"
    with wave.open(str(deep), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(48000)
        w.writeframes(bytes(300))
    with pytest.raises(AudioError, match=r"fake\.wav is named \.wav but is not a RIFF/WAVE file"):
        await FileSource(fake).start()
    with pytest.raises(AudioError, match=r"deep\.wav has 24-bit samples; 16-bit PCM is needed"):
        await FileSource(deep, field="--input").start()


# -- stdin ---------------------------------------------------------------------------------------------------


async def test_stdin_source_reassembles_a_pipe_written_in_odd_pieces() -> None:
    pcm = speech(SENTENCE)
    read_fd, write_fd = os.pipe()

    def writer() -> None:
        with os.fdopen(write_fd, "wb", buffering=0) as w:
            for i in range(0, len(pcm), 999):
                w.write(pcm[i : i + 999])

    thread = threading.Thread(target=writer)
    thread.start()
    with os.fdopen(read_fd, "rb") as r:
        frames = await collect(StdinSource(r))
    thread.join()
    assert contiguous(frames)
    assert b"".join(f.pcm for f in frames) == pcm + bytes(-len(pcm) % FRAME_BYTES)


def test_input_dash_reads_stdin_of_the_process() -> None:
    pcm = speech(SENTENCE)
    script = (
        "import asyncio, hashlib\n"
        "from daemon.audio.inputs import open_input\n"
        "from daemon.config import AudioInput\n"
        "async def main():\n"
        "    source = open_input(AudioInput(), '-')\n"
        "    data = b''\n"
        "    async with source:\n"
        "        async for frame in source:\n"
        "            data += frame.pcm\n"
        "    print(type(source).__name__, len(data), hashlib.sha256(data).hexdigest())\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], input=pcm, cwd=ROOT, capture_output=True, timeout=60, check=True
    )
    padded_pcm = pcm + bytes(-len(pcm) % FRAME_BYTES)
    assert out.stdout.decode().split() == [
        "StdinSource",
        str(len(padded_pcm)),
        hashlib.sha256(padded_pcm).hexdigest(),
    ]


# -- WAV and null outputs ------------------------------------------------------------------------------------


async def test_wav_output_records_what_was_played(tmp_path: Path) -> None:
    a, b = speech("one", 24000), speech("two", 24000)
    sink = WavSink(tmp_path / "out.wav", paced=False)
    async with sink:
        sink.play(a)
        sink.play(b)
        await sink.drain()
        assert not sink.playing
    samples, rate, channels = read_wav(tmp_path / "out.wav")
    assert (rate, channels) == (24000, 1)
    assert samples.tobytes() == a + b


async def test_paced_wav_output_behaves_like_a_speaker(tmp_path: Path) -> None:
    said = speech(SENTENCE, 24000)
    sink = WavSink(tmp_path / "out.wav", paced=True)
    async with sink:
        sink.play(said)
        assert sink.playing
        await asyncio.sleep(0.3)
        dropped = sink.flush()
        await sink.drain()
        assert not sink.playing
    samples, _, _ = read_wav(tmp_path / "out.wav")
    assert 0 < dropped < len(said)
    assert len(samples) * 2 + dropped == len(said)  # what was not dropped was played, in order
    assert samples.tobytes() == said[: len(samples) * 2]


async def test_drain_waits_for_paced_playback_to_finish(tmp_path: Path) -> None:
    said = speech("short", 24000)
    sink = WavSink(tmp_path / "out.wav", paced=True)
    async with sink:
        sink.play(said)
        await sink.drain()
        assert sink.played_bytes == len(said) and not sink.playing
        assert sink.flush() == 0


async def test_open_output_overrides(tmp_path: Path) -> None:
    assert isinstance(open_output(AudioOutput(), "none"), NullSink)
    sink = open_output(AudioOutput(), str(tmp_path / "x.wav"))
    assert isinstance(sink, WavSink) and sink.paced
    null = NullSink()
    async with null:
        null.play(speech("nothing", 24000))
        await null.drain()
        assert not null.playing
    with pytest.raises(ValueError, match="play"):
        null.play(b"\x00\x01\x02")


def test_open_input_overrides(tmp_path: Path) -> None:
    raw = tmp_path / "x.raw"
    raw.write_bytes(bytes(100))
    assert isinstance(open_input(AudioInput(backend="file", file=raw)), FileSource)
    assert isinstance(open_input(AudioInput(), "-"), StdinSource)
    assert isinstance(open_input(AudioInput(), None), PyAudioSource)
    assert isinstance(open_input(AudioInput(), None, retry_delay=2.0), RetryingSource)


# -- earcons -------------------------------------------------------------------------------------------------


def _dominant_hz(x: np.ndarray, rate: int = 24000) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize(("earcon", "rising"), [(wake_earcon, True), (end_earcon, False)])
def test_earcons_are_short_soft_two_tones_without_clicks(earcon: Callable[[], bytes], rising: bool) -> None:
    x = pcm16(earcon()).astype(np.float64)
    assert 0.15 < len(x) / 24000 < 0.5
    assert 0.1 * 32767 < np.abs(x).max() <= 0.3 * 32767
    assert abs(x[0]) < 200 and abs(x[-1]) < 200 and np.abs(np.diff(x)).max() < 0.1 * 32767
    first, second = _dominant_hz(x[: len(x) // 3]), _dominant_hz(x[-len(x) // 3 :])
    assert (second > first * 1.2) if rising else (first > second * 1.2)
