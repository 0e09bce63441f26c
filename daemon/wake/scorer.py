"""Wake-word scores: word models on the shared features, as openWakeWord's `Model.predict` computes them.

Several words share one feature pipeline (the costly part: ~1 ms of CPU per 80 ms block; a word model is
~0.02 ms). The scores equal openWakeWord 0.6.0's own for the same audio, chunking and warm-up noise
(tests/test_wake_equality.py); what `predict` keeps from it, and why:

* per call, a word scores the last `input_frames` embeddings; a call that completed several blocks reports the
  highest of their scores, and one that completed none repeats the word's previous score;
* the first 5 calls after construction or `reset()` report 0.0, whatever the model says (their features are
  mostly warm-up noise).

Not reproduced, because livehome does not use them: patience/debounce (the detector has its refractory period),
Speex noise suppression, Silero VAD, custom verifiers and multi-class models.

onnxruntime is imported only when an .onnx word is configured: it costs ~35 MiB and writes a telemetry database
under ~/.cache (the service's state directory) as it loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from .features import EMB_DIM, FeaturePipeline
from .models import WakeModelError
from .tflite import TfliteModel

ZEROED_CALLS = 5


class WordModel(Protocol):
    """A wake-word classifier: embeddings [1, input_frames, 96] float32 → one probability."""

    input_frames: int

    def __call__(self, features: np.ndarray) -> float: ...


def _expect_word_shape(path: Path, shape: tuple[object, ...], out: tuple[object, ...]) -> int:
    """The number of embeddings a word model reads; a clear error for anything that is not a single word."""
    if len(out) != 2 or out[1] != 1:
        raise WakeModelError(
            f"{path} is a multi-class model (output {list(out)}); only single wake-word models are supported"
        )
    if len(shape) != 3 or shape[2] != EMB_DIM or not isinstance(shape[1], int) or shape[1] < 1:
        raise WakeModelError(
            f"{path} is not an openWakeWord word model: its input is {list(shape)}, not [1, frames, {EMB_DIM}]"
        )
    return shape[1]


class TfliteWord:
    """An openWakeWord word model in TFLite format."""

    def __init__(self, path: Path) -> None:
        self._model = TfliteModel(path)
        self.input_frames = _expect_word_shape(path, self._model.input_shape, self._model.output_shape)

    def __call__(self, features: np.ndarray) -> float:
        return float(self._model(features)[0, 0])


class OnnxWord:
    """An openWakeWord word model in ONNX format, on onnxruntime (one thread, CPU, as openWakeWord runs it).

    It scores the same shared features as the tflite words: openWakeWord's onnx feature models are not needed
    (and no installed package ships them).
    """

    def __init__(self, path: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise WakeModelError(
                f"{path}: .onnx wake words need onnxruntime, which is not installed "
                "(pip install 'livehome[onnx]'; it has no wheel for 32-bit ARM: convert the model to .tflite)"
            ) from None
        options = ort.SessionOptions()
        options.inter_op_num_threads = options.intra_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types, not a common base
            raise WakeModelError(f"cannot load the onnx model {path}: {exc}") from None
        inp, out = self._session.get_inputs()[0], self._session.get_outputs()[0]
        self._input_name = inp.name
        self.input_frames = _expect_word_shape(path, tuple(inp.shape), tuple(out.shape))

    def __call__(self, features: np.ndarray) -> float:
        return float(self._session.run(None, {self._input_name: features})[0][0, 0])


def load_word(path: Path) -> WordModel:
    if path.suffix == ".onnx":
        return OnnxWord(path)
    if path.suffix == ".tflite":
        return TfliteWord(path)
    raise WakeModelError(f"{path} is neither a .tflite nor an .onnx model")


class WakeWordScorer:
    """Several wake words on one shared feature pipeline; `predict` returns what openWakeWord's would.

    Not thread-safe (tflite interpreters): one instance, one thread.
    """

    def __init__(
        self, words: Mapping[str, Path | WordModel], melspec_model: Path, embedding_model: Path, *, seed: int = 0
    ) -> None:
        """`words`: name → model file (.tflite, or .onnx) or a loaded WordModel. `seed`: see FeaturePipeline."""
        if not words:
            raise ValueError("no wake-word models")
        self.words: dict[str, WordModel] = {
            name: load_word(model) if isinstance(model, Path) else model for name, model in words.items()
        }
        history = max(word.input_frames for word in self.words.values())
        self.features = FeaturePipeline(melspec_model, embedding_model, history=history, seed=seed)
        self._reset_scores()

    def reset(self) -> None:
        """openWakeWord's Model.reset(): forget the audio and the scores (with fresh warm-up noise)."""
        self.features.reset()
        self._reset_scores()

    def _reset_scores(self) -> None:
        self._calls = 0
        self._last: dict[str, float] = dict.fromkeys(self.words, 0.0)

    def predict(self, samples: np.ndarray) -> dict[str, float]:
        """Scores for 16 kHz mono int16 audio of any length (1280 samples per call is the normal case)."""
        if samples.dtype != np.int16 or samples.ndim != 1:
            raise TypeError("expected a 1-D int16 array of 16 kHz samples")
        n_blocks = self.features.push(samples)
        scores: dict[str, float] = {}
        for name, model in self.words.items():
            if n_blocks == 0:
                score = self._last[name]
            else:
                score = max(
                    model(self.features.window(model.input_frames, back)) for back in range(n_blocks - 1, -1, -1)
                )
            scores[name] = 0.0 if self._calls < ZEROED_CALLS else score
        self._calls += 1
        self._last = scores
        return scores
