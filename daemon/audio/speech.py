"""Synthesized speech from espeak-ng: the daemon's own short error sentences, the simulator's model voice, the
demo's microphone, test utterances."""

from __future__ import annotations

import io
import shutil
import subprocess
import wave

import numpy as np
import soxr


class SpeechUnavailable(RuntimeError):
    """espeak-ng is not installed or failed."""


def synthesize(text: str, rate: int = 16000, voice: str = "en-us", speed: int = 160) -> bytes:
    """Mono s16le PCM of `text` at `rate` Hz."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SpeechUnavailable("espeak-ng is not installed (apt install espeak-ng)")
    proc = subprocess.run(
        [exe, "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True, timeout=60, check=False
    )
    if proc.returncode != 0 or not proc.stdout:
        raise SpeechUnavailable(f"espeak-ng failed: {proc.stderr.decode(errors='replace').strip()}")
    with wave.open(io.BytesIO(proc.stdout)) as w:
        src_rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    if src_rate != rate:
        pcm = soxr.resample(pcm, src_rate, rate)
    return pcm.astype(np.int16).tobytes()


def spoken(text: str, rate: int) -> bytes | None:
    """`text` as speech for the speaker, or None where espeak-ng is not installed (a cue alone then)."""
    try:
        return synthesize(text, rate)
    except (SpeechUnavailable, OSError, subprocess.SubprocessError):
        return None


def silence(seconds: float, rate: int = 16000) -> bytes:
    return bytes(2 * int(seconds * rate))
