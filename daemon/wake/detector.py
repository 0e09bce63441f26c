"""The wake-word detector the daemon listens with: configured words, thresholds, a refractory period, and the
thread it runs on; plus the pre-roll buffer that hands the audio around a detection to the session.

Detections carry the stream position (in samples) of the end of the frame that triggered them, which is what
the pre-roll buffer is indexed by.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..audio.frames import FRAME_SAMPLES, SAMPLE_RATE, Frame
from ..config import Wake
from .models import WakeModelError, feature_model, resolve_model
from .scorer import WakeWordScorer, WordModel, load_word
from .tflite import interpreter_class


@dataclass(frozen=True, slots=True)
class Detection:
    word: str
    score: float
    position: int  # stream position (samples) of the end of the frame that fired

    @property
    def seconds(self) -> float:
        return self.position / SAMPLE_RATE


@dataclass(frozen=True)
class _Word:
    name: str  # what detections are called: the configured name, or the file's stem
    threshold: float


class WakeDetector:
    """All configured words on one shared feature pipeline; per-word thresholds, one refractory period.

    Blocking and not thread-safe (tflite interpreters): call it from one thread, e.g. via AsyncWakeDetector.
    """

    def __init__(self, settings: Wake) -> None:
        interpreter_class()  # no TFLite at all is the machine's problem, not a word's: said once, plainly
        self.settings = settings
        self.refractory_samples = int(settings.refractory * SAMPLE_RATE)
        words: list[_Word] = []
        models: dict[str, WordModel] = {}
        for i, ww in enumerate(settings.words):
            where = f"wake.words[{i}].model"
            path = resolve_model(ww.model, settings.models_dir, where)
            if any(w.name == ww.name for w in words):
                raise WakeModelError(f"{where}: '{ww.name}' is configured twice")
            try:
                models[ww.name] = load_word(path)
            except WakeModelError as exc:
                raise WakeModelError(f"{where}: {exc}") from None
            words.append(_Word(ww.name, ww.threshold))
        self.words = words
        self._scorer = WakeWordScorer(
            models,
            feature_model("melspectrogram", settings.models_dir),
            feature_model("embedding_model", settings.models_dir),
        )
        self._quiet_until = 0
        self.last_scores: dict[str, float] = dict.fromkeys(self.names, 0.0)
        self.peaks: dict[str, tuple[float, int]] = dict.fromkeys(self.names, (0.0, 0))

    @property
    def names(self) -> list[str]:
        return [w.name for w in self.words]

    def process(self, frame: Frame) -> list[Detection]:
        """Score one frame (normally 1280 samples); the words over their thresholds, unless refractory."""
        scores = self._scorer.predict(frame.samples())
        hits = []
        for w in self.words:
            score = scores[w.name]
            self.last_scores[w.name] = score
            if score > self.peaks[w.name][0]:
                self.peaks[w.name] = (score, frame.end)
            if score >= w.threshold:
                hits.append(Detection(w.name, score, frame.end))
        if not hits or frame.end < self._quiet_until:
            return []
        self._quiet_until = frame.end + self.refractory_samples
        return sorted(hits, key=lambda d: -d.score)

    def reset(self) -> None:
        """Forget the audio heard so far (the feature and score buffers), e.g. after a conversation, so what
        was said in it cannot complete a wake word. The refractory period holds."""
        self._scorer.reset()


class AsyncWakeDetector:
    """Runs a WakeDetector on one dedicated thread: inference never runs on the loop, and the tflite
    interpreters only ever see that one thread."""

    def __init__(self, detector: WakeDetector, executor: ThreadPoolExecutor) -> None:
        self.detector = detector
        self._executor = executor

    @classmethod
    async def create(cls, settings: Wake) -> AsyncWakeDetector:
        """Loads the models on the detector's thread."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wake")
        try:
            detector = await asyncio.get_running_loop().run_in_executor(executor, WakeDetector, settings)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(detector, executor)

    async def process(self, frame: Frame) -> list[Detection]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.detector.process, frame)

    async def reset(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.detector.reset)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class PrerollBuffer:
    """The last `seconds` of frames, so that what the user said right after the wake word (while the session
    connects) can be handed over without a gap."""

    def __init__(self, seconds: float = 5.0) -> None:
        self._frames: deque[Frame] = deque(maxlen=max(1, math.ceil(seconds * SAMPLE_RATE / FRAME_SAMPLES)))

    def append(self, frame: Frame) -> None:
        self._frames.append(frame)

    def since(self, position: int) -> list[Frame]:
        """All frames holding audio at or after `position`, oldest first (the first may start before it)."""
        return [f for f in self._frames if f.end > position]

    def covers(self, position: int) -> bool:
        """Whether nothing from `position` on has been pushed out yet."""
        return bool(self._frames) and self._frames[0].position <= max(position, 0)

    def clear(self) -> None:
        self._frames.clear()

    def __len__(self) -> int:
        return len(self._frames)
