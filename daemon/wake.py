"""Wake-word detection with openWakeWord, fully offline.

openWakeWord 0.6 ships no model files and would download them at run time, so the feature models
(melspectrogram, embedding) and the stock wake words come from the pyopen_wakeword package, which bundles
them. Several wake words share one openWakeWord Model, hence one feature pipeline. Detections carry the
stream position (in samples) of the end of the frame that triggered them, which is what the pre-roll buffer
is indexed by.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .audio.frames import FRAME_SAMPLES, SAMPLE_RATE, Frame
from .audio.inputs import read_audio_file
from .config import Wake, WakeWord
from .yamlsrc import suggest

MODEL_SUFFIXES = (".tflite", ".onnx")
FEATURE_MODELS = ("melspectrogram", "embedding_model")
_NOT_WAKE_WORDS = {*FEATURE_MODELS, "silero_vad"}
_VERSION_SUFFIX = re.compile(r"_v\d+(\.\d+)*$")  # openWakeWord's own files: hey_jarvis_v0.1.tflite


class WakeModelError(ValueError):
    """A wake-word model that cannot be found or loaded."""


def _package_dir(package: str, *parts: str) -> Path | None:
    """A package's data folder, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def search_dirs(models_dir: Path | None) -> list[tuple[Path, str]]:
    """Where models are looked up by name, in order, each with what it is."""
    dirs = []
    if models_dir is not None:
        dirs.append((Path(models_dir), "wake.models_dir"))
    if (oww := _package_dir("openwakeword", "resources", "models")) is not None:
        dirs.append((oww, "openWakeWord's model folder"))
    if (bundled := _package_dir("pyopen_wakeword", "models")) is not None:
        dirs.append((bundled, "models bundled with pyopen_wakeword"))
    return dirs


def _model_name(path: Path) -> str:
    return _VERSION_SUFFIX.sub("", path.stem)


def available_models(models_dir: Path | None = None) -> dict[str, Path]:
    """Every wake-word model findable by name; earlier folders win."""
    found: dict[str, Path] = {}
    for folder, _ in search_dirs(models_dir):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            name = _model_name(path)
            if path.suffix in MODEL_SUFFIXES and name not in _NOT_WAKE_WORDS:
                found.setdefault(name, path)
    return found


def resolve_model(model: str, models_dir: Path | None = None, where: str = "wake.words[].model") -> Path:
    """The file for a model name (searched in `search_dirs`) or an explicit .tflite/.onnx path."""
    if models_dir is not None and not Path(models_dir).is_dir():
        raise WakeModelError(f"wake.models_dir: {models_dir} is not a directory")
    if WakeWord(model=model).is_path:
        path = Path(model).expanduser()
        if path.suffix not in MODEL_SUFFIXES:
            raise WakeModelError(f"{where}: {model} is neither a .tflite nor an .onnx model")
        if not path.is_file():
            raise WakeModelError(f"{where}: the model file {path} does not exist")
        return path
    found = available_models(models_dir).get(model)
    if found is not None:
        return found
    looked = "; ".join(
        f"{folder} ({what}{'' if folder.is_dir() else ', missing'})"
        for folder, what in search_dirs(models_dir)
    )
    known = sorted(available_models(models_dir))
    raise WakeModelError(
        f"{where}: no wake-word model named '{model}'{suggest(model, known)}. Looked in: {looked}. "
        f"Available: {', '.join(known) or 'none'}"
    )


def feature_model(name: str, models_dir: Path | None = None) -> Path:
    """openWakeWord's shared melspectrogram or embedding model (tflite)."""
    for folder, _ in search_dirs(models_dir):
        if (folder / f"{name}.tflite").is_file():
            return folder / f"{name}.tflite"
    raise WakeModelError(
        f"openWakeWord's feature model {name}.tflite is missing; looked in "
        + ", ".join(str(f) for f, _ in search_dirs(models_dir))
        + " (is pyopen-wakeword installed?)"
    )


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
    key: str  # openWakeWord's name for the model
    path: Path
    threshold: float


def _register_onnx(model: Any, key: str, path: Path, where: str) -> None:
    """Adds an .onnx word model to a tflite openWakeWord Model's tables.

    openWakeWord can't mix frameworks in one Model, and an onnx Model would need onnx feature models, which
    nothing installed ships. The word model only needs the shared features, so it runs on onnxruntime and
    scores on the same feature stream as every other word; Model.predict treats it like any other model.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.inter_op_num_threads = options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise WakeModelError(f"{where}: cannot load the onnx model {path}: {exc}") from None
    input_name = session.get_inputs()[0].name
    model.models[key] = session
    model.model_inputs[key] = session.get_inputs()[0].shape[1]
    model.model_outputs[key] = session.get_outputs()[0].shape[1]
    model.model_prediction_function[key] = lambda x: session.run(None, {input_name: x})
    model.class_mapping[key] = {str(i): str(i) for i in range(model.model_outputs[key])}


def _unregister(model: Any, key: str) -> None:
    for table in (
        model.models,
        model.model_inputs,
        model.model_outputs,
        model.model_prediction_function,
        model.class_mapping,
    ):
        table.pop(key, None)


class WakeDetector:
    """One openWakeWord Model for all configured words; per-word thresholds, one refractory period.

    Blocking and not thread-safe (tflite interpreters): call it from one thread, e.g. via AsyncWakeDetector.
    """

    def __init__(self, settings: Wake) -> None:
        from openwakeword.model import Model

        self.settings = settings
        self.refractory_samples = int(settings.refractory * SAMPLE_RATE)
        words: list[_Word] = []
        for i, ww in enumerate(settings.words):
            where = f"wake.words[{i}].model"
            path = resolve_model(ww.model, settings.models_dir, where)
            word = _Word(name=ww.name, key=path.stem, path=path, threshold=ww.threshold)
            if any(w.key == word.key or w.name == word.name for w in words):
                raise WakeModelError(f"{where}: '{word.name}' is configured twice")
            words.append(word)
        self.words = words
        tflite = [w for w in words if w.path.suffix == ".tflite"]
        # Model() with no word models would load openWakeWord's (absent) stock models; a placeholder fills in
        placeholder = None if tflite else resolve_model("alexa", None, "placeholder")
        paths = [str(w.path) for w in tflite] or [str(placeholder)]
        try:
            self._model = Model(
                wakeword_models=paths,
                inference_framework="tflite",
                melspec_model_path=str(feature_model("melspectrogram", settings.models_dir)),
                embedding_model_path=str(feature_model("embedding_model", settings.models_dir)),
            )
        except (ValueError, RuntimeError) as exc:
            raise WakeModelError(f"wake.words: cannot load {', '.join(paths)}: {exc}") from None
        if placeholder is not None:
            _unregister(self._model, placeholder.stem)
        for i, w in enumerate(words):
            if w.path.suffix == ".onnx":
                _register_onnx(self._model, w.key, w.path, f"wake.words[{i}].model")
        for i, w in enumerate(words):
            if self._model.model_outputs[w.key] != 1:
                raise WakeModelError(
                    f"wake.words[{i}].model: {w.path} is a multi-class model; only "
                    "single wake-word models are supported"
                )
        self._quiet_until = 0
        self.last_scores: dict[str, float] = dict.fromkeys(self.names, 0.0)
        self.peaks: dict[str, tuple[float, int]] = dict.fromkeys(self.names, (0.0, 0))

    @property
    def names(self) -> list[str]:
        return [w.name for w in self.words]

    def process(self, frame: Frame) -> list[Detection]:
        """Score one frame (normally 1280 samples); the words over their thresholds, unless refractory."""
        scores = self._model.predict(frame.samples())
        hits = []
        for w in self.words:
            score = float(scores[w.key])
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
        """Forget the audio heard so far (openWakeWord's feature and score buffers), e.g. after a
        conversation, so what was said in it cannot complete a wake word. The refractory period holds."""
        self._model.reset()


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


# ---------------------------------------------------------------------------------------------------------
# livehome wake-test

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
