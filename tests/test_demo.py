"""The README's main-job command: the offline end-to-end demo must pass and say what happened."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """With --dir relative to the current folder, as the README shows it (its config must still find the CA)."""
    proc = subprocess.run(
        [sys.executable, "-m", "daemon", "demo", "--dir", "demo"],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
    )  # fmt: skip
    folder = tmp_path / "demo"
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for expected in (
        "wake word hey_jarvis, score",
        "connected in",
        'tool call set_light [light-1] {"light": "kitchen", "state": "ON"}',
        'mqtt publish zigbee2mqtt/Kitchen Ceiling/set {"state":"ON"}',
        'answer to [light-1]: success, WHEN_IDLE: {"ok": true, "status": "confirmed"',
        "model: The kitchen light is on.",
        "conversation ended: idle",
        f"model audio: {folder / 'speaker.wav'}",
        "demo OK",
    ):
        assert expected in out, out
    assert (folder / "speaker.wav").stat().st_size > 48000
