"""Test audio: espeak-ng utterances (cached per test run), WAV writing, and comparing what came out with what
went in."""

from __future__ import annotations

import functools
import wave
from pathlib import Path

import numpy as np

from daemon.audio.speech import silence, synthesize


@functools.cache
def speech(text: str, rate: int = 16000, voice: str = "en-us") -> bytes:
    return synthesize(text, rate, voice=voice)


def padded(pcm: bytes, before: float = 1.0, after: float = 1.0, rate: int = 16000) -> bytes:
    return silence(before, rate) + pcm + silence(after, rate)


def frames(pcm: bytes, size: int = 2560) -> list[bytes]:
    """Chunks as a microphone hands them over (80 ms at 16 kHz by default)."""
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


def pcm16(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype=np.int16)


def write_wav(path: Path, pcm: bytes, rate: int = 16000, channels: int = 1) -> Path:
    """A 16-bit WAV; mono `pcm` is copied to every channel (with the right channel at half volume, so a
    down-mix is distinguishable from picking one channel)."""
    x = pcm16(pcm)
    if channels > 1:
        cols = [x] + [(x // 2).astype(np.int16)] * (channels - 1)
        x = np.stack(cols, axis=1).reshape(-1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.astype(np.int16).tobytes())
    return path


def read_wav(path: Path) -> tuple[np.ndarray, int, int]:
    with wave.open(str(path), "rb") as w:
        return pcm16(w.readframes(w.getnframes())), w.getframerate(), w.getnchannels()


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if len(x) else 0.0


def align(reference: np.ndarray, signal: np.ndarray) -> tuple[int, float]:
    """Where `reference` best matches inside `signal` (sample offset, may be negative) and the normalised
    correlation there, over the overlapping part."""
    ref = reference.astype(np.float64)
    sig = np.concatenate([np.zeros(len(ref)), signal.astype(np.float64), np.zeros(len(ref))])
    nfft = 1 << (len(sig) + len(ref)).bit_length()
    xc = np.fft.irfft(np.fft.rfft(sig, nfft) * np.conj(np.fft.rfft(ref, nfft)), nfft)[
        : len(sig) - len(ref) + 1
    ]
    lag = int(np.argmax(xc))
    seg = sig[lag : lag + len(ref)]
    corr = float(np.dot(seg, ref) / (np.linalg.norm(seg) * np.linalg.norm(ref) + 1e-9))
    return lag - len(ref), corr


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.3) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16).tobytes()
