"""The TensorFlow Lite runtime the wake word runs on, and one model on it.

Two packages provide the same `Interpreter`: tflite-runtime 2.14 (its last release: CPython <= 3.11, wheels for
x86_64, aarch64 and armv7l, built against numpy 1.x) and ai-edge-litert, its successor (CPython >= 3.12, x86_64
and aarch64 only). pyproject.toml installs exactly one of them by environment markers; this module takes
whichever is there, imported on first use so that commands that never score audio don't pay for it.

TFLite's C++ logger writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." straight to file descriptor
2 the first time an interpreter allocates its tensors; no environment variable or Python API turns it off. So
loading swaps fd 2 for a memory file and passes on everything else written meanwhile (other threads' output is
delayed, never lost). The notice itself is logged at DEBUG.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..logs import logger
from .models import WakeModelError

log = logger(__name__)

XNNPACK_NOTICE = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


class WakeRuntimeError(WakeModelError):
    """No usable TensorFlow Lite runtime on this machine: an install problem, not something a restart fixes."""


_runtime: Any = None
_runtime_lock = threading.Lock()


def interpreter_class() -> Any:
    """tflite_runtime's or ai_edge_litert's Interpreter, or a WakeRuntimeError saying what to install."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = _import_interpreter()
        return _runtime


def _import_interpreter() -> Any:
    problems = []
    for module in ("tflite_runtime.interpreter", "ai_edge_litert.interpreter"):
        try:
            return __import__(module, fromlist=["Interpreter"]).Interpreter
        except ImportError as exc:  # absent, or built against another numpy (tflite-runtime with numpy 2)
            problems.append(f"{module.split('.')[0]}: {str(exc).strip().splitlines()[-1]}")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    machine = platform.machine()
    if sys.maxsize < 2**32 and machine in ("aarch64", "arm64"):
        machine = "armv7l (a 32-bit OS on a 64-bit kernel)"  # uname says aarch64; Python and its wheels are 32-bit
    if sys.version_info < (3, 12):
        fix = "pip install 'tflite-runtime==2.14.0' 'numpy<2' (wheels for x86_64, aarch64 and armv7l)"
    elif machine in ("x86_64", "aarch64", "arm64", "AMD64"):
        fix = "pip install ai-edge-litert"
    else:
        fix = (
            f"no TensorFlow Lite wheel exists for Python {python} on {machine}: use Python 3.11 there "
            "(Raspberry Pi OS bookworm) with tflite-runtime 2.14, or a 64-bit OS"
        )
    raise WakeRuntimeError(
        f"no TensorFlow Lite runtime for Python {python} on {machine} ({'; '.join(problems)}). Fix: {fix}"
    )


_stderr_lock = threading.Lock()


@contextlib.contextmanager
def quiet_tflite_notice() -> Iterator[None]:
    """Inside the block, TFLite's XNNPACK notice on fd 2 goes to the DEBUG log; all else written to fd 2 passes."""
    with _stderr_lock:  # fd 2 is process-wide: one swap at a time
        sys.stderr.flush()
        saved = os.dup(2)
        capture = _memory_file()
        try:
            os.dup2(capture.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
        finally:
            os.close(saved)
            capture.seek(0)
            written = capture.read()
            capture.close()
            _replay(written)


def _memory_file() -> Any:
    if hasattr(os, "memfd_create"):  # no file system needed (the service's is mostly read-only)
        return os.fdopen(os.memfd_create("livehome-stderr"), "w+b")
    return tempfile.TemporaryFile()  # pragma: no cover - not Linux


def _replay(written: bytes) -> None:
    kept = []
    for line in written.splitlines(keepends=True):
        if line.strip() == XNNPACK_NOTICE:
            log.debug("%s", line.strip().decode())
        else:
            kept.append(line)
    if kept:
        os.write(2, b"".join(kept))


class TfliteModel:
    """One model with one input and one output, run the way openWakeWord runs it (one thread, the default op
    resolver, hence XNNPACK: scores are bit-identical to openWakeWord's only with the same kernels).

    The input is re-allocated only when its shape changes. TFLite never shrinks an arena, so callers keep their
    input shapes small and steady. Not thread-safe: one thread per model.
    """

    def __init__(self, path: Path, input_shape: Sequence[int] | None = None) -> None:
        interpreter = interpreter_class()
        self.path = path
        try:
            with quiet_tflite_notice():
                self._interp = interpreter(model_path=str(path), num_threads=1)
                inputs, outputs = self._interp.get_input_details(), self._interp.get_output_details()
                if len(inputs) != 1 or len(outputs) != 1:
                    raise ValueError(f"expected one input and one output, got {len(inputs)} and {len(outputs)}")
                self._input, self._output = inputs[0]["index"], outputs[0]["index"]
                shape = list(input_shape) if input_shape is not None else [int(d) for d in inputs[0]["shape"]]
                self._allocate(shape)
        except (ValueError, RuntimeError) as exc:
            raise WakeModelError(f"cannot load {path}: {exc}") from None

    def _allocate(self, shape: list[int]) -> None:
        self._interp.resize_tensor_input(self._input, shape, strict=True)
        self._interp.allocate_tensors()
        self.input_shape = tuple(shape)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self._interp.get_output_details()[0]["shape"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.shape != self.input_shape:
            self._allocate(list(x.shape))
        self._interp.set_tensor(self._input, x)
        self._interp.invoke()
        return self._interp.get_tensor(self._output)
