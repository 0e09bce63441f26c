"""livehome's wake-word scores are openWakeWord's: the same espeak-ng audio (several voices, wake words and other
speech) fed to openWakeWord 0.6.0's own `Model.predict` and to livehome's scorer and detector, frame by frame.

openWakeWord is a test dependency only (the `test` extra). Both sides start from the same warm-up noise:
openWakeWord draws it from numpy's global RNG, so the test seeds that before constructing its Model, and gives
livehome's scorer the same seed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

from daemon.audio.frames import Frame
from daemon.audio.speech import silence
from daemon.config import Wake, WakeWord
from daemon.wake import WakeDetector, available_models, feature_model
from daemon.wake.scorer import WakeWordScorer
from tests.support.onnx_words import linear_onnx
from tests.support.speech_files import padded, pcm16, speech

oww_model = pytest.importorskip("openwakeword.model", reason="openwakeword (the test extra) is the reference")

TOLERANCE = 1e-4
JARVIS = "hey jarvis, turn on the kitchen light"
CLIPS = {  # name: (voice, text)
    "jarvis en-us": ("en-us", JARVIS),
    "jarvis en-gb": ("en-gb", JARVIS),
    "jarvis en-us+f3": ("en-us+f3", JARVIS),
    "jarvis en-gb-x-rp+m3": ("en-gb-x-rp+m3", JARVIS),
    "alexa en-us": ("en-us", "alexa, what time is it"),
    "alexa en-gb+f4": ("en-gb+f4", "alexa, play some music"),
    "other speech en-us": ("en-us", "the weather is lovely today and nobody is talking to the assistant"),
    "other speech en-gb+f2": ("en-gb+f2", "please remember to water the garden before it gets dark"),
}
WORDS = ["hey_jarvis", "alexa", "hey_mycroft", "okay_nabu"]
MEL, EMB = feature_model("melspectrogram"), feature_model("embedding_model")


def clip(name: str) -> np.ndarray:
    voice, text = CLIPS[name]
    return pcm16(padded(speech(text, voice=voice), 1.0, 1.5))


def reference(words: list[str], seed: int) -> oww_model.Model:
    np.random.seed(seed)
    return oww_model.Model(
        wakeword_models=[str(available_models()[w]) for w in words],
        inference_framework="tflite",
        melspec_model_path=str(MEL),
        embedding_model_path=str(EMB),
    )


def ours(words: list[str], seed: int) -> WakeWordScorer:
    return WakeWordScorer({w: available_models()[w] for w in words}, MEL, EMB, seed=seed)


def chunks(pcm: np.ndarray, sizes: Iterable[int]) -> Iterator[np.ndarray]:
    sizes = list(sizes)
    i = k = 0
    while i < len(pcm):
        size = sizes[k % len(sizes)]
        yield pcm[i : i + size]
        i, k = i + size, k + 1


def compare(ref: oww_model.Model, mine: WakeWordScorer, stream: Iterable[np.ndarray | str]) -> tuple[float, dict]:
    """The largest score difference over every call and word, and livehome's peak score per word."""
    worst, peaks = 0.0, dict.fromkeys(mine.words, 0.0)
    for audio in stream:
        if isinstance(audio, str):  # "reset"
            ref.reset()
            mine.reset()
            continue
        expected, got = ref.predict(audio), mine.predict(audio)
        assert set(got) == set(mine.words)
        for word, score in got.items():
            worst = max(worst, abs(float(expected[word]) - score))
            peaks[word] = max(peaks[word], score)
    return worst, peaks


def test_warm_up_features_equal_openwakewords_buffer() -> None:
    for seed in range(5):
        ref, mine = reference(["hey_jarvis"], seed), ours(["hey_jarvis"], seed)
        assert np.abs(ref.preprocessor.feature_buffer[-16:] - mine.features.features).max() <= TOLERANCE


@pytest.mark.parametrize("name", list(CLIPS))
def test_every_frame_scores_as_openwakeword_scores_it(name: str) -> None:
    pcm = clip(name)
    ref, mine = reference(WORDS, 1), ours(WORDS, 1)
    worst, peaks = compare(ref, mine, chunks(pcm, [1280]))
    assert worst <= TOLERANCE
    spoken = {"jarvis": "hey_jarvis", "alexa": "alexa"}.get(name.split()[0])
    for word, peak in peaks.items():  # and the scores mean something: the spoken word wins, others stay low
        assert (peak >= 0.5) if word == spoken else (peak < 0.5), (word, peak)


@pytest.mark.parametrize(
    "sizes", [[1000], [2560], [160], [512, 0, 2048, 7], [1280 * 7], [5000, 100, 1280]], ids=lambda s: str(s)
)
def test_any_chunking_scores_as_openwakeword_scores_it(sizes: list[int]) -> None:
    pcm = np.concatenate([clip("jarvis en-us"), clip("alexa en-gb+f4")])
    worst, _ = compare(reference(["hey_jarvis", "alexa"], 2), ours(["hey_jarvis", "alexa"], 2), chunks(pcm, sizes))
    assert worst <= TOLERANCE


def test_reset_mid_utterance_and_after_a_detection() -> None:
    a, b = list(chunks(clip("jarvis en-us"), [1280])), list(chunks(clip("jarvis en-gb"), [1280]))
    stream = [*a[:30], "reset", *b, "reset", *chunks(clip("other speech en-us"), [999]), *a]
    worst, _ = compare(reference(["hey_jarvis", "alexa"], 3), ours(["hey_jarvis", "alexa"], 3), stream)
    assert worst <= TOLERANCE


def test_silence_and_noise() -> None:
    noise = np.random.default_rng(7).normal(0, 300, 5 * 16000).astype(np.int16)
    stream = chunks(np.concatenate([pcm16(silence(4.0)), noise]), [1280])
    worst, _ = compare(reference(["hey_jarvis"], 4), ours(["hey_jarvis"], 4), stream)
    assert worst <= TOLERANCE


def test_an_onnx_word_scores_as_openwakeword_runs_it(tmp_path: Path) -> None:
    """An .onnx word on the shared tflite features, beside the same onnxruntime session plugged into
    openWakeWord's tables (it cannot mix frameworks in one Model, and nothing ships onnx feature models)."""
    import onnxruntime as ort

    toy = linear_onnx(tmp_path / "toy.onnx")
    ref = reference(["hey_jarvis"], 5)
    session = ort.InferenceSession(str(toy), providers=["CPUExecutionProvider"])
    ref.models["toy"] = session
    ref.model_inputs["toy"], ref.model_outputs["toy"] = 16, 1
    ref.model_prediction_function["toy"] = lambda x: session.run(None, {"x": x})
    ref.class_mapping["toy"] = {"0": "0"}
    mine = WakeWordScorer({"hey_jarvis": available_models()["hey_jarvis"], "toy": toy}, MEL, EMB, seed=5)
    pcm = np.concatenate([clip("jarvis en-us"), clip("other speech en-gb+f2")])
    worst, peaks = compare(ref, mine, chunks(pcm, [1280]))
    assert worst <= TOLERANCE
    assert 0.01 < peaks["toy"] < 0.99  # the toy's score moves with the features


@pytest.mark.parametrize("name", ["jarvis en-gb-x-rp+m3", "alexa en-us", "other speech en-gb+f2"])
def test_the_daemons_detector_scores_and_fires_as_openwakeword(name: str) -> None:
    """The detector the daemon listens with (two words, 80 ms frames): its per-frame scores are openWakeWord's,
    and it fires on the first frame where openWakeWord's score reaches the threshold."""
    words = ["hey_jarvis", "alexa"]
    ref = reference(words, 0)  # the detector's warm-up noise is drawn with seed 0
    detector = WakeDetector(Wake(words=[WakeWord(model=w) for w in words], refractory=30.0))
    first, fired, worst = None, None, 0.0
    for i, audio in enumerate(chunks(clip(name), [1280])):
        expected = ref.predict(audio)
        hits = detector.process(Frame(audio.tobytes(), 1280 * i))
        worst = max(worst, *(abs(float(expected[w]) - detector.last_scores[w]) for w in words))
        if first is None and max(float(expected[w]) for w in words) >= 0.5:
            first = i
        if hits and fired is None:
            fired = i
    assert worst <= TOLERANCE
    assert fired == first
    assert (first is None) == name.startswith("other")
