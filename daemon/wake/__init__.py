"""Wake-word detection with openWakeWord's models and pipeline, fully offline, without the openwakeword package.

openWakeWord is the engine and the reference: its melspectrogram → embedding → word-model pipeline and its
models, scored exactly as its `Model.predict` scores them (tests/test_wake_equality.py compares the two frame by
frame). Only the package is left out: importing it pulls in scikit-learn, scipy, onnxruntime, requests and tqdm,
which inference never uses (~125 MiB and most of a second at start on a Pi Zero 2 W's 512 MiB), and its
streaming code copies and re-allocates on every frame. Here it is numpy and a TFLite interpreter.

    models.py     finding model files by name or path
    tflite.py     the TFLite runtime (tflite-runtime or ai-edge-litert) and one model on it
    features.py   audio → melspectrogram → embeddings, streamed exactly as openWakeWord does
    scorer.py     word models (.tflite; .onnx on onnxruntime, imported only then) scoring the shared features
    detector.py   the daemon's detector: thresholds, refractory period, its thread; the pre-roll buffer
    trial.py      `livehome wake-test`
"""

from .detector import AsyncWakeDetector, Detection, PrerollBuffer, WakeDetector
from .models import WakeModelError, available_models, feature_model, resolve_model, search_dirs
from .tflite import WakeRuntimeError
from .trial import TimedDetection, WakeTestResult, format_wake_test, wake_test

__all__ = [
    "AsyncWakeDetector",
    "Detection",
    "PrerollBuffer",
    "TimedDetection",
    "WakeDetector",
    "WakeModelError",
    "WakeRuntimeError",
    "WakeTestResult",
    "available_models",
    "feature_model",
    "format_wake_test",
    "resolve_model",
    "search_dirs",
    "wake_test",
]
