"""What listening costs: the wake word loads without the openwakeword package and its trainer's dependencies,
onnxruntime only when an .onnx word asks for it, nothing written under the home directory, and TFLite's INFO
line kept off stderr. Each in a fresh process, since imports and fd 2 are process-wide. The memory figure is a
loose guard against regressions (bench/ measures it properly, beside a bare openWakeWord process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.wake.tflite import XNNPACK_NOTICE, quiet_tflite_notice
from tests.support.onnx_words import linear_onnx
from tests.support.speech_files import padded, speech, write_wav

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ["openwakeword", "onnxruntime", "sklearn", "scipy", "requests", "tqdm", "google.genai"]
PROBE = """
import json, sys
from pathlib import Path
import numpy as np
from daemon.audio.frames import Frame
from daemon.config import Wake, WakeWord
from daemon.wake import WakeDetector
detector = WakeDetector(Wake(words=[WakeWord(model=m) for m in sys.argv[1:]]))
audio = np.zeros(5 * 16000, dtype=np.int16)
for i in range(0, len(audio), 1280):
    detector.process(Frame(audio[i : i + 1280].tobytes(), i))
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
heavy = [m for m in HEAVY if m in sys.modules]
print(json.dumps({"modules": heavy, "hwm_kib": int(status["VmHWM"].split()[0])}))
""".replace("HEAVY", repr(HEAVY))


def fresh_home(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    return {**env, "HOME": str(home), "PYTHONPATH": str(ROOT)}


def probe(tmp_path: Path, *models: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *models], env=fresh_home(tmp_path), cwd=tmp_path, capture_output=True,
        text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "XNNPACK" not in out.stderr
    return json.loads(out.stdout)


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def test_listening_imports_no_trainer_dependencies_and_writes_nothing(tmp_path: Path) -> None:
    got = probe(tmp_path, "hey_jarvis", "alexa")
    assert got["modules"] == []
    assert files_under(tmp_path / "home") == []  # onnxruntime's telemetry database is not created
    assert got["hwm_kib"] < 100 * 1024  # ~52 MiB on x86_64; a bare openWakeWord process peaks near 190 MiB


def test_an_onnx_word_brings_in_onnxruntime_and_only_it(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    got = probe(tmp_path, "hey_jarvis", str(linear_onnx(tmp_path / "toy.onnx")))
    assert got["modules"] == ["onnxruntime"]


def test_an_onnx_word_without_onnxruntime_is_a_clear_error(tmp_path: Path) -> None:
    code = f"""
import sys
sys.modules["onnxruntime"] = None  # as where it is not installed (the onnx extra; no 32-bit ARM wheel)
from daemon.config import Wake, WakeWord
from daemon.wake import WakeDetector, WakeModelError
try:
    WakeDetector(Wake(words=[WakeWord(model={str(linear_onnx(tmp_path / "toy.onnx"))!r})]))
except WakeModelError as exc:
    print(exc)
"""
    out = subprocess.run([sys.executable, "-c", code], env=fresh_home(tmp_path), capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    assert out.stdout.startswith("wake.words[0].model: ")
    assert "toy.onnx" in out.stdout and "pip install 'livehome[onnx]'" in out.stdout


def test_without_a_tflite_runtime_check_names_the_platform_and_the_fix(tmp_path: Path) -> None:
    """As on 32-bit ARM with Python >= 3.12, where neither runtime has a wheel: `check` (and `run`) refuse with
    exit 78 and say what to do, instead of an ImportError's traceback."""
    config = tmp_path / "config.yaml"
    config.write_text("wake: {words: [hey_jarvis]}\naudio: {input: {backend: stdin}, output: {backend: none}}\n")
    code = (
        "import sys\n"
        "sys.modules['tflite_runtime'] = sys.modules['ai_edge_litert'] = None\n"
        "from daemon.cli import main\n"
        f"sys.exit(main(['check', '--config', {str(config)!r}]))\n"
    )
    env = {**fresh_home(tmp_path), "GEMINI_API_KEY": "test-key-0001"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 78, out.stdout + out.stderr
    text = out.stdout + out.stderr
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"no TensorFlow Lite runtime for Python {version} on " in text and "Fix: " in text, text
    assert "Traceback" not in text


def run_cli(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text("wake: {words: [hey_jarvis, alexa]}\naudio: {input: {backend: stdin}, output: {backend: none}}\n")
    env = {**fresh_home(tmp_path), "GEMINI_API_KEY": "test-key-0001"}
    return subprocess.run(
        [sys.executable, "-m", "daemon", *argv, "--config", str(config)], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_wake_test_prints_no_tflite_info_line(tmp_path: Path) -> None:
    wav = write_wav(tmp_path / "jarvis.wav", padded(speech("hey jarvis, turn on the kitchen light"), 0.5, 0.5))
    out = run_cli(tmp_path, "wake-test", str(wav))
    assert out.returncode == 0, out.stderr
    assert "hey_jarvis  score" in out.stdout
    assert "XNNPACK" not in out.stderr and "INFO:" not in out.stderr


def test_check_prints_no_tflite_info_line_but_debug_logs_it(tmp_path: Path) -> None:
    out = run_cli(tmp_path, "check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "XNNPACK" not in out.stderr
    verbose = run_cli(tmp_path, "check", "-v")
    assert verbose.returncode == 0, verbose.stdout + verbose.stderr
    logged = [line for line in verbose.stderr.splitlines() if "XNNPACK" in line]
    assert len(logged) == 1 and "DEBUG" in logged[0] and "livehome.wake.tflite" in logged[0]


def test_other_native_stderr_output_passes_through(capfd: pytest.CaptureFixture[str]) -> None:
    with quiet_tflite_notice():
        os.write(2, b"before\n" + XNNPACK_NOTICE + b"\nERROR: something TFLite wants you to see\n")
        print("python's own stderr", file=sys.stderr)
    err = capfd.readouterr().err
    assert "XNNPACK" not in err
    native = [line for line in err.splitlines() if "python" not in line]  # pytest captures sys.stderr apart
    assert native == ["before", "ERROR: something TFLite wants you to see"]
    assert "python's own stderr" in err
