"""`livehome wake-test`: a recording run through the detector as if it were the microphone, for tuning thresholds."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..audio.frames import FRAME_SAMPLES, SAMPLE_RATE, Frame
from ..audio.inputs import read_audio_file
from ..config import Wake
from .detector import WakeDetector

_PAD_SECONDS = 2.0  # openWakeWord scores over 1.28 s of features: lead-in silence makes runs repeatable


@dataclass(frozen=True)
class TimedDetection:
    word: str
    score: float
    seconds: float  # from the start of the file


@dataclass
class WakeTestResult:
    path: Path
    duration: float
    thresholds: dict[str, float]
    detections: list[TimedDetection] = field(default_factory=list)
    peaks: dict[str, tuple[float, float]] = field(default_factory=dict)  # word -> (score, seconds)


def wake_test(settings: Wake, wav_path: Path) -> WakeTestResult:
    """Run a recording through the detector as if it were the microphone (blocking)."""
    audio = read_audio_file(Path(wav_path), field="wake-test")
    pad = np.zeros(int(_PAD_SECONDS * SAMPLE_RATE), dtype=np.int16)
    stream = np.concatenate([pad, audio, pad])
    stream = np.concatenate([stream, np.zeros(-len(stream) % FRAME_SAMPLES, dtype=np.int16)])
    detector = WakeDetector(settings)

    def seconds(position: int) -> float:
        return round(max(0.0, (position - len(pad)) / SAMPLE_RATE), 2)

    result = WakeTestResult(
        Path(wav_path), len(audio) / SAMPLE_RATE, {w.name: w.threshold for w in detector.words}
    )
    for start in range(0, len(stream), FRAME_SAMPLES):
        frame = Frame(stream[start : start + FRAME_SAMPLES].tobytes(), start)
        for d in detector.process(frame):
            result.detections.append(TimedDetection(d.word, d.score, seconds(d.position)))
    result.peaks = {name: (score, seconds(pos)) for name, (score, pos) in detector.peaks.items()}
    return result


def format_wake_test(result: WakeTestResult) -> str:
    lines = [f"{result.path}: {result.duration:.2f} s"]
    if result.detections:
        lines += [f"  {d.seconds:7.2f} s  {d.word}  score {d.score:.3f}" for d in result.detections]
    else:
        lines.append("  no detections")
    lines.append("peak scores:")
    for name, (score, at) in result.peaks.items():
        threshold = result.thresholds[name]
        verdict = "over" if score >= threshold else "under"
        lines.append(f"  {name}: {score:.3f} at {at:.2f} s ({verdict} threshold {threshold:g})")
    return "\n".join(lines)
