"""The unit files, checked by systemd's own tools (systemd-analyze verify and security, offline).

`verify` exits 0 even for unknown keys and invalid values; it only warns on stderr, so any stderr output
is a failure here. It also warns when ExecStart='s program does not exist, and the units name the installed
path (/opt/livehome/bin/livehome, ~/.local/share/livehome/venv/bin/livehome). So the checks run on a copy
in a temp dir whose ExecStart points at this venv's own `livehome` console script: the same kind of file
the install puts there, and every other line is verified exactly as shipped."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon import credentials
from daemon.config import EX_CONFIG

UNITS = Path(__file__).resolve().parents[1] / "systemd"
LIVEHOME = Path(sys.executable).parent / "livehome"  # [project.scripts] in the venv running the tests
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
MAX_EXPOSURE = 1.5  # the system unit's budget
USER_UNIT_REGRESSION_BOUND = 2.5  # the user unit is weaker by nature; this only catches it getting worse


@dataclass(frozen=True)
class Unit:
    source: str
    exec_path: str  # ExecStart's program as shipped
    user: bool


SYSTEM = Unit("livehome.service", "/opt/livehome/bin/livehome", user=False)
USER = Unit("livehome-user.service", "%h/.local/share/livehome/venv/bin/livehome", user=True)


def installable_copy(unit: Unit, directory: Path, edit: Callable[[str], str] = lambda text: text) -> Path:
    """The unit as `livehome.service` (its installed name in both cases) with ExecStart on this venv."""
    text = (UNITS / unit.source).read_text()
    shipped = f"ExecStart={unit.exec_path} "
    assert text.count(shipped) == 1, f"{unit.source}: expected one {shipped!r}"
    assert LIVEHOME.is_file() and os.access(LIVEHOME, os.X_OK), f"{LIVEHOME}: run `pip install -e .` first"
    path = directory / "livehome.service"
    path.write_text(edit(text.replace(shipped, f"ExecStart={LIVEHOME} ")))
    return path


def analyze(unit: Unit, *args: str, runtime_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYSTEMD_", "JOURNAL_STREAM"))}
    env |= {
        "SYSTEMD_LOG_TARGET": "console",  # warnings to stderr, never to a journal this might run under
        "SYSTEMD_LOG_LEVEL": "info",
        "SYSTEMD_LOG_COLOR": "0",
        "SYSTEMD_PAGER": "",
        "XDG_RUNTIME_DIR": str(runtime_dir),  # --user needs one; offline analysis only checks it exists
    }
    cmd = [ANALYZE, *(["--user"] if unit.user else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)


def verify_problems(unit: Unit, path: Path, runtime_dir: Path) -> list[str]:
    """Everything `systemd-analyze verify` objects to: stderr lines and a non-zero exit."""
    result = analyze(unit, "verify", "--man=no", str(path), runtime_dir=runtime_dir)
    problems = [line for line in result.stderr.splitlines() if line.strip()]
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}")
    return problems


_SCORE = re.compile(r"Overall exposure level for livehome\.service: (\d+\.\d+) ")


def exposure(unit: Unit, path: Path, runtime_dir: Path, threshold: float = 10.0) -> tuple[float, int]:
    """The exposure score from `systemd-analyze security --offline=yes` and the exit status under
    --threshold (in tenths; non-zero when the score is above it). Parse warnings fail the test."""
    result = analyze(
        unit,
        "security",
        "--offline=yes",
        f"--threshold={round(threshold * 10)}",
        "--no-pager",
        str(path),
        runtime_dir=runtime_dir,
    )
    assert result.stderr == "", result.stderr
    match = _SCORE.search(result.stdout)
    assert match, result.stdout
    return float(match.group(1)), result.returncode


@pytest.fixture
def runtime_dir(tmp_path: Path) -> Path:
    d = tmp_path / "runtime"
    d.mkdir(mode=0o700)
    return d


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "unit"
    d.mkdir()
    return d


@pytest.mark.parametrize("unit", [SYSTEM, USER], ids=lambda u: u.source)
def test_verify_is_silent(unit: Unit, workdir: Path, runtime_dir: Path) -> None:
    assert verify_problems(unit, installable_copy(unit, workdir), runtime_dir) == []


@pytest.mark.parametrize("unit", [SYSTEM, USER], ids=lambda u: u.source)
@pytest.mark.parametrize(
    "breakage, complaint",
    [
        (lambda t: t.replace("RestartSec=5", "RestartSecs=5"), "Unknown key 'RestartSecs'"),
        (lambda t: t.replace("SetCredential=mqtt-password:\\x20", "SetCredential=mqtt-password:"), "Invalid syntax"),
        (lambda t: t.replace("ExecStart=", "ExecStart=/nonexistent/livehome #"), "is not executable"),
    ],
    ids=["misspelled-key", "empty-credential-fallback", "missing-program"],
)
def test_verify_catches_a_broken_copy(
    unit: Unit, breakage: Callable[[str], str], complaint: str, workdir: Path, runtime_dir: Path
) -> None:
    """Proves the check above can fail: verify exits 0 on all of these, only its stderr tells."""
    shipped = (UNITS / unit.source).read_text()
    assert breakage(shipped) != shipped  # the breakage applies to this unit
    path = installable_copy(unit, workdir, edit=breakage)
    problems = verify_problems(unit, path, runtime_dir)
    assert any(complaint in p for p in problems), problems


def test_system_unit_exposure_within_budget(workdir: Path, runtime_dir: Path) -> None:
    score, status = exposure(SYSTEM, installable_copy(SYSTEM, workdir), runtime_dir, threshold=MAX_EXPOSURE)
    print(f"livehome.service exposure {score}")
    assert score <= MAX_EXPOSURE
    assert status == 0  # the same gate as systemd-analyze's own --threshold


def test_exposure_gate_can_fail(workdir: Path, runtime_dir: Path) -> None:
    """A copy without the strongest levers scores above the budget and fails --threshold."""

    def weaken(text: str) -> str:
        return re.sub(r"^(CapabilityBoundingSet|DynamicUser|SystemCallFilter|PrivateUsers)=.*\n", "", text, flags=re.M)

    score, status = exposure(SYSTEM, installable_copy(SYSTEM, workdir, edit=weaken), runtime_dir, MAX_EXPOSURE)
    assert score > MAX_EXPOSURE
    assert status != 0


def test_user_unit_exposure_reported(workdir: Path, runtime_dir: Path) -> None:
    score, _ = exposure(USER, installable_copy(USER, workdir), runtime_dir)
    print(f"livehome-user.service exposure {score} (runs as the user, so DynamicUser & co. do not apply)")
    assert score <= USER_UNIT_REGRESSION_BOUND


# ------------------------------------------------------------------------------- agreement with the code


def _settings(unit: Unit, key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", (UNITS / unit.source).read_text(), flags=re.M)


@pytest.mark.parametrize("unit", [SYSTEM, USER], ids=lambda u: u.source)
def test_units_agree_with_the_daemon(unit: Unit) -> None:
    assert _settings(unit, "Type") == ["notify"]
    assert _settings(unit, "NotifyAccess") == ["main"]
    assert _settings(unit, "RestartPreventExitStatus") == [str(EX_CONFIG)]
    assert _settings(unit, "ExecReload") == ["/bin/kill -HUP $MAINPID"]  # service.install_signal_handlers
    names = {
        credentials.GEMINI_API_KEY_CREDENTIAL,
        credentials.MQTT_PASSWORD_CREDENTIAL,
        credentials.SHARED_SECRET_CREDENTIAL,
    }
    assert {v.split(":", 1)[0] for v in _settings(unit, "LoadCredential")} == names
    # Each credential is optional: a SetCredential= fallback that read_credential() reads as "not set".
    assert {v.split(":", 1)[0] for v in _settings(unit, "SetCredential")} == names
    assert all(v.split(":", 1)[1] == "\\x20" for v in _settings(unit, "SetCredential"))
