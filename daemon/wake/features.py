"""openWakeWord's shared features, streamed: 16 kHz int16 audio → melspectrogram → one 96-d embedding per 80 ms.

This reproduces the streaming path of openWakeWord 0.6.0 (`AudioFeatures` in openwakeword/utils.py) exactly,
with the same two tflite models, because its scores are the reference: a word model is only as good as the
features it was trained on, and a tuned threshold only means something on the same scores. What must be kept,
and why:

* Audio is consumed in 1280-sample blocks; samples short of a block wait for the next call, and a call that
  completes several blocks processes them together.
* The melspectrogram model runs once per call, on the call's new blocks plus the 480 samples (3 hops) before
  them (only the block itself on the very first call). Its last stage clips every value to (max over its whole
  input − 80 dB), so a frame's value depends on the run that produced it: the runs themselves must be
  reproduced, not just the frame grid. A 480-sample context of zeros on the first block moves scores by 0.01;
  no context at all by up to 1.0.
* Its output is transformed with x / 10 + 2, in float32 (float64 moves scores by ~1e-6).
* The mel buffer starts as 76 rows of ones; each block appends 8 frames (5 on the first, which has no context)
  and yields one embedding of the last 76 frames.
* The embedding buffer starts with the embeddings of 4 s of uniform noise (randint(-1000, 1000)), so a 16-frame
  word model sees some noise for its first 15 blocks (≤ 5e-5 on the scores).

What is not kept is openWakeWord's waste: it copies a 10 s sample deque into a Python list and re-allocates the
melspectrogram interpreter on every frame, and computes the warm-up in one 4 s run whose arenas tflite never
gives back (~38 MiB). Here state is fixed-size and the interpreters keep their 1760-sample and 76-frame shapes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .tflite import TfliteModel

SAMPLE_RATE = 16000
BLOCK = 1280  # samples per 80 ms block: openWakeWord's unit of work
HOP = 160  # melspectrogram hop (10 ms)
MEL_CONTEXT = 3 * HOP  # samples before a call's blocks that the melspectrogram run also sees
MEL_WINDOW = 512  # melspectrogram FFT size: N samples give (N - 512) // 160 + 1 frames
MEL_BINS = 32
MEL_PER_BLOCK = BLOCK // HOP  # 8
EMB_WINDOW = 76  # mel frames per embedding (775 ms)
EMB_DIM = 96
FEATURE_BUFFER_MAX = 120  # openWakeWord's embedding buffer: a call completing more blocks than fit fails there
WARMUP_SAMPLES = 4 * SAMPLE_RATE


class FeaturePipeline:
    """Embeddings of a stream, newest last in `features` ([history, 96] float32). Not thread-safe."""

    def __init__(self, melspec_model: Path, embedding_model: Path, *, history: int = 16, seed: int = 0) -> None:
        """`history`: how many embeddings the word models need (their longest input). `seed`: for the warm-up
        noise, drawn again at each reset (openWakeWord draws it from numpy's global RNG, seeded by the OS; a
        fixed seed makes a run repeatable, and seeding both alike makes them agree bit for bit)."""
        if not 1 <= history <= FEATURE_BUFFER_MAX:
            raise ValueError(f"history must be within 1..{FEATURE_BUFFER_MAX}")
        self.history = history
        self.max_blocks_per_call = FEATURE_BUFFER_MAX - history + 1
        self._rng = np.random.RandomState(seed)  # the legacy generator: openWakeWord's randint draws from one
        self._mel = TfliteModel(melspec_model, input_shape=[1, MEL_CONTEXT + BLOCK])
        self._emb = TfliteModel(embedding_model, input_shape=[1, EMB_WINDOW, MEL_BINS, 1])
        self.reset()

    def reset(self) -> None:
        """Forget all audio, as openWakeWord's Model.reset() does (with fresh warm-up noise)."""
        self._pending = np.empty(0, dtype=np.int16)  # samples short of a whole block
        self._context = np.empty(0, dtype=np.int16)  # the last MEL_CONTEXT samples processed
        self._mel_frames = np.ones((EMB_WINDOW, MEL_BINS), dtype=np.float32)
        self.features = self._warmup_features(self._rng.randint(-1000, 1000, WARMUP_SAMPLES).astype(np.int16))

    def push(self, samples: np.ndarray) -> int:
        """Add int16 samples; returns how many blocks (hence new embeddings) they completed."""
        audio = np.concatenate((self._pending, samples)) if self._pending.size else samples
        n_blocks = len(audio) // BLOCK
        if n_blocks > self.max_blocks_per_call:
            raise ValueError(
                f"one call may complete at most {self.max_blocks_per_call} blocks of {BLOCK} samples "
                "(openWakeWord fails past that too)"
            )
        self._pending = audio[n_blocks * BLOCK :].copy()
        if n_blocks == 0:
            return 0
        mel_input = np.concatenate((self._context, audio[: n_blocks * BLOCK]))
        self._context = mel_input[-MEL_CONTEXT:].copy()
        mel = np.concatenate((self._mel_frames, self._melspectrogram(mel_input)))
        embeddings = [
            self._embed(mel[len(mel) - MEL_PER_BLOCK * back - EMB_WINDOW : len(mel) - MEL_PER_BLOCK * back])
            for back in range(n_blocks - 1, -1, -1)  # oldest block first
        ]
        self._mel_frames = mel[-EMB_WINDOW:]
        keep = self.history + n_blocks - 1  # the word models score each new block's window
        self.features = np.concatenate((self.features, np.stack(embeddings)))[-keep:]
        return n_blocks

    def window(self, frames: int, back: int = 0) -> np.ndarray:
        """The `frames` embeddings ending `back` blocks before the newest, shaped [1, frames, 96]."""
        end = len(self.features) - back
        return self.features[None, end - frames : end]

    def _melspectrogram(self, samples: np.ndarray) -> np.ndarray:
        out = self._mel(samples.astype(np.float32)[None, :])  # [1, 1, frames, 32]
        return out[0, 0] / np.float32(10) + np.float32(2)

    def _embed(self, window: np.ndarray) -> np.ndarray:
        return self._emb(window[None, :, :, None]).reshape(EMB_DIM)

    def _warmup_features(self, noise: np.ndarray) -> np.ndarray:
        """The last `history` embeddings of openWakeWord's 4 s of warm-up noise.

        openWakeWord runs the melspectrogram on all 64000 samples at once and embeds all 41 windows in one
        batch. Here the frames needed come from 1760-sample runs on the same 160-sample grid, and the embeddings
        one at a time, so the interpreters never grow. The result is bit-identical: the embedding model is
        batch-invariant, and the per-run clipping (max − 80 dB) never bites on uniform noise, whose frames'
        power differs by a few dB (tests/test_wake_equality.py compares the buffers).
        """
        n_frames = (WARMUP_SAMPLES - MEL_WINDOW) // HOP + 1  # 397
        n_windows = (n_frames - EMB_WINDOW) // MEL_PER_BLOCK + 1  # 41
        keep = min(self.history, n_windows)
        first_frame = MEL_PER_BLOCK * (n_windows - keep)
        n_runs = -(-(n_frames - first_frame) // MEL_PER_BLOCK)
        start = n_frames - MEL_PER_BLOCK * n_runs  # the runs end exactly at the last frame
        mel = np.concatenate(
            [
                self._melspectrogram(noise[HOP * f : HOP * f + MEL_CONTEXT + BLOCK])
                for f in range(start, n_frames, MEL_PER_BLOCK)
            ]
        )
        rows = [
            self._embed(mel[MEL_PER_BLOCK * w - start : MEL_PER_BLOCK * w - start + EMB_WINDOW])
            for w in range(n_windows - keep, n_windows)
        ]
        features = np.stack(rows)
        if keep < self.history:  # only for word models longer than 41 frames; keeps the shapes valid
            features = np.concatenate((np.zeros((self.history - keep, EMB_DIM), np.float32), features))
        return features
