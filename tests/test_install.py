"""The wheel as a user gets it: built from this tree, installed with pip into a clean venv (from PyPI, through pip's
cache), then used from another directory: `livehome init`, `check`, `tools`, and a short listening run on a WAV
of espeak-ng speech that hears "hey jarvis" and opens a session with the Live simulator.

This catches what an editable install hides: a module or data file the wheel forgets, a dependency only the
test extra brings (openwakeword, onnxruntime), an import of the source tree. Slow (~25 s with a warm pip cache,
a few minutes without): one venv for the module's tests."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path

import pytest

from daemon.audio.speech import silence
from daemon.sim.broker import running_broker
from daemon.sim.server import Simulator
from tests.support.daemonproc import child_env
from tests.support.speech_files import speech

ROOT = Path(__file__).resolve().parent.parent
KEY = "install-test-key-0001"
PIP = ("-m", "pip", "--disable-pip-version-check")

pytestmark = pytest.mark.timeout(600)


def run(argv: list[str | Path], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300):
    out = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{argv}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean venv with the wheel installed; returns its bin/ folder."""
    tmp = tmp_path_factory.mktemp("install")
    started = time.monotonic()
    # From a copy: setuptools builds in the tree's build/, where files deleted from the tree would linger and
    # end up in the wheel. pip builds in an isolated environment (setuptools >= 77 from PyPI).
    junk = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")
    shutil.copytree(ROOT, tmp / "src", ignore=junk)
    run([sys.executable, *PIP, "wheel", "--no-deps", "--wheel-dir", tmp / "dist", tmp / "src"], cwd=tmp)
    wheels = list((tmp / "dist").glob("livehome-*.whl"))
    assert len(wheels) == 1
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # As the suite's own venv was made: on 32-bit ARM it sees Debian's numpy and PyYAML (README, ./dev).
    system = "include-system-site-packages = true" in Path(sys.prefix, "pyvenv.cfg").read_text(errors="replace")
    run([sys.executable, "-m", "venv", *(["--system-site-packages"] if system else []), tmp / "venv"], cwd=tmp, env=env)
    python = tmp / "venv" / "bin" / "python"
    run([python, *PIP, "install", "-q", wheels[0]], cwd=tmp, env=env, timeout=540)
    took = time.monotonic() - started
    print(f"\nwheel built and installed into a clean venv in {took:.1f} s")
    listed = run([python, *PIP, "list", "--format=freeze"], cwd=tmp, env=env).stdout.lower()
    for absent in ("openwakeword", "onnxruntime", "scikit-learn", "scipy", "tqdm"):
        assert f"\n{absent}==" not in f"\n{listed}", f"{absent} is installed by the wheel's dependencies"
    return tmp / "venv" / "bin"


def user_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = child_env(extra)
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    return env


def configure(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, f"the example config no longer has {old!r}"
        text = text.replace(old, new)
    return text


def write_wav(path: Path, pcm: bytes) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    return path


def test_init_check_tools_from_another_directory(venv: Path, tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    run([venv / "livehome", "init", "home"], cwd=work, env=user_env())
    config = work / "home" / "config.yaml"
    mic = write_wav(work / "mic.wav", silence(1.0))
    config.write_text(configure(config.read_text(), {
        "  input: {backend: pyaudio}": f"  input: {{backend: file, file: {mic}}}",
        "  output: {backend: pyaudio}": "  output: {backend: none}",
    }))  # fmt: skip
    out = run([venv / "livehome", "check", "--config", config], cwd=work, env=user_env({"GEMINI_API_KEY": KEY}))
    assert out.stdout.startswith("OK: ")
    assert "XNNPACK" not in out.stderr
    tools = run([venv / "livehome", "tools", "--config", config], cwd=work, env=user_env())
    assert "set_light" in tools.stdout


async def test_listening_run_hears_the_wake_word_and_opens_a_session(venv: Path, tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    await asyncio.to_thread(run, [venv / "livehome", "init", "home"], work, user_env())
    mic = write_wav(work / "mic.wav", silence(1.0) + speech("hey jarvis, turn on the kitchen light") + silence(1.5))
    scenario = work / "turn.yaml"
    scenario.write_text("description: a spoken turn\nturns:\n  - on: speech\n    steps: [{say: OK.}, turn_complete]\n")
    with running_broker(work) as broker:
        async with Simulator(scenario, state_dir=work / "sim", api_key=KEY) as sim:
            config = work / "home" / "config.yaml"
            config.write_text(configure(config.read_text(), {
                "gemini:\n": f"gemini:\n  endpoint: {sim.url}\n  ca_file: {sim.ca_file}\n",
                "  host: localhost\n  port: 1883": f"  host: {broker.host}\n  port: {broker.port}",
                "  idle_timeout: 8s": "  idle_timeout: 1s",
            }))  # fmt: skip
            argv = [venv / "livehome", "run", "--config", config, "--input", mic, "--output", "none"]
            env = user_env({"GEMINI_API_KEY": KEY, "HOME": str(work / "home-dir")})
            out = await asyncio.to_thread(run, argv, work, env, 120)
            connected = bool(sim.connections) and sim.connections[0].first_audio is not None
            heard = [u.duration for u in sim.utterances]
        sim.assert_clean()
    log = out.stderr
    assert "ready: " in log and "wake word hey_jarvis" in log, log
    assert "XNNPACK" not in log
    assert not (work / "home-dir" / ".cache").exists()  # no onnxruntime, so no telemetry database under ~/.cache
    assert connected, log  # the session reached the simulator and streamed the microphone,
    assert len(heard) == 1, (heard, log)  # with what was said after the wake word
