"""Wake-word detection on real openWakeWord models (bundled with pyopen_wakeword) and espeak-ng speech."""

from __future__ import annotations

import importlib.util
import itertools
import shutil
from pathlib import Path

import pytest

from daemon.audio.frames import FRAME_BYTES, FRAME_SAMPLES, Frame
from daemon.audio.speech import silence
from daemon.config import Wake, WakeWord
from daemon.wake import (
    AsyncWakeDetector,
    Detection,
    PrerollBuffer,
    WakeDetector,
    WakeModelError,
    available_models,
    format_wake_test,
    resolve_model,
    wake_test,
)
from tests.support.onnx_words import constant_onnx
from tests.support.speech_files import padded, speech, write_wav

JARVIS = "hey jarvis, turn on the kitchen light"
ALEXA = "alexa, what time is it"
NEUTRAL = "the weather is nice today and the garden needs water"


def frames_of(pcm: bytes, start: int = 0) -> list[Frame]:
    pcm += bytes(-len(pcm) % FRAME_BYTES)
    return [Frame(pcm[i : i + FRAME_BYTES], start + i // 2) for i in range(0, len(pcm), FRAME_BYTES)]


def run(detector: WakeDetector, pcm: bytes) -> list[Detection]:
    return [d for f in frames_of(pcm) for d in detector.process(f)]


def wake(*words: str | WakeWord, **kwargs: object) -> Wake:
    return Wake(words=[w if isinstance(w, WakeWord) else WakeWord(model=w) for w in words], **kwargs)


@pytest.fixture(scope="module")
def jarvis_alexa() -> WakeDetector:
    return WakeDetector(wake("hey_jarvis", "alexa"))


def test_hey_jarvis_is_detected_inside_the_utterance() -> None:
    detector = WakeDetector(wake("hey_jarvis"))
    utterance = speech(JARVIS)
    hits = run(detector, padded(utterance, 1.5, 1.0))
    assert [d.word for d in hits] == ["hey_jarvis"]
    assert hits[0].score >= 0.5
    start, end = 1.5 * 16000, 1.5 * 16000 + len(utterance) // 2
    assert start < hits[0].position <= end  # fires while the phrase is spoken, not on the padding


def test_a_neutral_sentence_is_not_detected() -> None:
    detector = WakeDetector(wake("hey_jarvis"))
    assert run(detector, padded(speech(NEUTRAL), 1.5, 1.0)) == []
    assert detector.peaks["hey_jarvis"][0] < 0.1


def test_two_wake_words_at_once_each_detected_as_itself(jarvis_alexa: WakeDetector) -> None:
    stream = silence(1.5) + speech(ALEXA) + silence(2.5) + speech(JARVIS) + silence(1.0) + speech(NEUTRAL)
    hits = run(jarvis_alexa, stream + silence(1.0))
    assert [d.word for d in hits] == ["alexa", "hey_jarvis"]
    assert all(d.score >= 0.5 for d in hits)
    assert hits[0].position < hits[1].position


def _jarvis_twice() -> bytes:
    """Two 'hey jarvis' about 2.2 s apart; each scores over the threshold for about 0.5 s."""
    hj = speech("hey jarvis")
    return silence(1.5) + hj + silence(1.0) + hj + silence(1.0)


@pytest.mark.parametrize(("refractory", "expected"), [(5.0, 1), (1.0, 2)])
def test_refractory_period_suppresses_repeats(refractory: float, expected: int) -> None:
    hits = run(WakeDetector(wake("hey_jarvis", refractory=refractory)), _jarvis_twice())
    assert len(hits) == expected
    if expected == 2:
        assert hits[1].position - hits[0].position >= refractory * 16000


def test_without_refractory_every_frame_over_threshold_fires() -> None:
    hits = run(WakeDetector(wake("hey_jarvis", refractory=0)), _jarvis_twice())
    assert len(hits) > 4  # what the refractory period protects against


def test_reset_forgets_what_was_heard() -> None:
    hj = speech("hey jarvis")
    stream = frames_of(silence(1.5) + hj + silence(1.0))
    cut = int((1.5 + 0.45 * len(hj) / 32000) * 16000 / FRAME_SAMPLES)  # in the middle of "jarvis"
    results = {}
    for do_reset in (False, True):
        detector = WakeDetector(wake("hey_jarvis"))
        hits = []
        for i, frame in enumerate(stream):
            if do_reset and i == cut:
                detector.reset()
            hits += detector.process(frame)
        results[do_reset] = [d.word for d in hits]
    assert results == {False: ["hey_jarvis"], True: []}


def test_custom_model_by_path_is_named_after_its_file(tmp_path: Path) -> None:
    custom = tmp_path / "kitchen_helper.tflite"
    shutil.copy(available_models()["hey_jarvis"], custom)
    hits = run(WakeDetector(wake(str(custom))), padded(speech(JARVIS), 1.5, 1.0))
    assert [d.word for d in hits] == ["kitchen_helper"]


def test_models_dir_is_searched_first(tmp_path: Path) -> None:
    # a file named hey_jarvis in models_dir that is really the alexa model wins over the bundled hey_jarvis
    shutil.copy(available_models()["alexa"], tmp_path / "hey_jarvis.tflite")
    detector = WakeDetector(wake("hey_jarvis", models_dir=tmp_path))
    assert run(detector, padded(speech(JARVIS), 1.5, 1.0)) == []
    assert [d.word for d in run(detector, padded(speech(ALEXA), 1.0, 1.0))] == ["hey_jarvis"]


def test_missing_model_names_where_it_looked_and_what_exists(tmp_path: Path) -> None:
    with pytest.raises(WakeModelError) as err:
        WakeDetector(wake("hey_jarvis", "hey_computer", models_dir=tmp_path))
    message = str(err.value)
    assert "wake.words[1].model" in message and "'hey_computer'" in message
    assert str(tmp_path) in message and "pyopen_wakeword" in message
    assert "hey_jarvis" in message and "alexa" in message and "okay_nabu" in message


def test_missing_model_path_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(WakeModelError, match=r"wake\.words\[0\]\.model: the model file .*nope\.onnx"):
        resolve_model(str(tmp_path / "nope.onnx"), None, "wake.words[0].model")
    with pytest.raises(WakeModelError, match=r"wake\.models_dir"):
        resolve_model("hey_jarvis", tmp_path / "absent")


def test_a_word_configured_twice_is_an_error() -> None:
    with pytest.raises(WakeModelError, match="configured twice"):
        WakeDetector(wake("alexa", WakeWord(model="alexa", threshold=0.7)))


def test_a_broken_model_file_is_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a model")
    with pytest.raises(WakeModelError, match=r"broken\.tflite"):
        WakeDetector(wake(str(broken)))


# -- .onnx word models -------------------------------------------------------------------------------------


needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime (the onnx extra) is not installed"
)


@needs_onnxruntime
def test_onnx_only_detector_scores_on_the_shared_features(tmp_path: Path) -> None:
    model = constant_onnx(tmp_path / "always.onnx", 0.9)
    detector = WakeDetector(wake(str(model), refractory=1.0))
    hits = run(detector, silence(3.0))
    # openWakeWord zeroes the first 5 frames; then the refractory period spaces the detections 1 s apart
    assert [d.word for d in hits] == ["always"] * 3
    assert [d.position for d in hits] == [6 * FRAME_SAMPLES, 19 * FRAME_SAMPLES, 32 * FRAME_SAMPLES]
    assert hits[0].score == pytest.approx(0.9)


@needs_onnxruntime
def test_onnx_and_tflite_words_in_one_detector(tmp_path: Path) -> None:
    model = constant_onnx(tmp_path / "quiet.onnx", 0.3)  # under its threshold: never fires
    detector = WakeDetector(wake("hey_jarvis", str(model)))
    hits = run(detector, padded(speech(JARVIS), 1.5, 1.0))
    assert [d.word for d in hits] == ["hey_jarvis"]
    assert detector.last_scores["quiet"] == pytest.approx(0.3)


# -- async wrapper, pre-roll, wake-test --------------------------------------------------------------------


async def test_async_detector_matches_the_blocking_one() -> None:
    stream = frames_of(padded(speech(JARVIS), 1.5, 1.0))
    detector = await AsyncWakeDetector.create(wake("hey_jarvis", "alexa"))
    try:
        hits = [d for f in stream for d in await detector.process(f)]
        await detector.reset()
        again = [d for f in stream for d in await detector.process(f)]
    finally:
        detector.close()
    assert [d.word for d in hits] == ["hey_jarvis"]
    assert [d.word for d in again] == []  # still within the refractory period of the first detection
    reference = WakeDetector(wake("hey_jarvis", "alexa"))
    assert [(d.word, d.position) for d in hits] == [
        (d.word, d.position) for d in run(reference, b"".join(f.pcm for f in stream))
    ]


def test_preroll_hands_over_every_frame_from_a_position() -> None:
    buffer = PrerollBuffer(seconds=1.0)  # 13 frames
    frames = frames_of(bytes(range(256)) * 200)  # distinct contents
    for f in frames[:10]:
        buffer.append(f)
    assert buffer.since(3 * FRAME_SAMPLES) == frames[3:10]
    assert buffer.since(3 * FRAME_SAMPLES + 1) == frames[3:10]  # mid-frame: that frame too
    assert buffer.since(4 * FRAME_SAMPLES - 1) == frames[3:10]
    assert buffer.since(10 * FRAME_SAMPLES) == []
    assert buffer.covers(0)
    for f in frames[10:20]:
        buffer.append(f)
    assert len(buffer) == 13
    assert buffer.since(0) == frames[7:20]
    assert not buffer.covers(6 * FRAME_SAMPLES) and buffer.covers(7 * FRAME_SAMPLES)
    assert b"".join(f.pcm for f in buffer.since(12 * FRAME_SAMPLES)) == b"".join(f.pcm for f in frames[12:20])


def test_preroll_after_a_real_detection_is_contiguous() -> None:
    detector = WakeDetector(wake("hey_jarvis"))
    buffer = PrerollBuffer(seconds=3.0)
    handed: list[Frame] = []
    for frame in frames_of(padded(speech(JARVIS), 1.5, 1.0)):
        buffer.append(frame)
        if hits := detector.process(frame):
            handed = buffer.since(hits[0].position - int(0.3 * 16000))
            break
    assert handed, "no detection"
    assert handed[-1].end == hits[0].position
    assert handed[0].position <= hits[0].position - int(0.3 * 16000) < handed[0].end
    assert all(a.end == b.position for a, b in itertools.pairwise(handed))


def test_wake_test_reads_any_wav_and_reports_times(tmp_path: Path) -> None:
    utterance = speech(JARVIS, 22050)
    wav = write_wav(tmp_path / "sample.wav", silence(0.5, 22050) + utterance, rate=22050, channels=2)
    result = wake_test(wake("hey_jarvis", "alexa"), wav)
    assert result.duration == pytest.approx(0.5 + len(utterance) / 2 / 22050, abs=0.01)
    assert [d.word for d in result.detections] == ["hey_jarvis"]
    assert 0.5 < result.detections[0].seconds <= result.duration
    assert result.peaks["hey_jarvis"][0] >= result.detections[0].score
    assert result.peaks["alexa"][0] < 0.5
    text = format_wake_test(result)
    assert "hey_jarvis" in text and "peak scores" in text and "under threshold 0.5" in text
