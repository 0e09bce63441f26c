"""What the daemon remembers across restarts (today's tokens, and more as features need it), as small JSON files
in its state directory: systemd's StateDirectory= ($STATE_DIRECTORY), or ~/.local/state/livehome in a terminal.
Nothing secret is kept here. Files are replaced atomically, so a power cut leaves the old file or the new one."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .logs import logger

log = logger(__name__)

MAX_STATE_BYTES = 1 << 20  # a state file is small; anything bigger is not ours, or damaged


def default_state_dir() -> Path:
    systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "livehome"


class StateFile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        """The saved mapping; empty when there is none, and (logged) when it cannot be used."""
        try:
            with self.path.open("rb") as f:
                data = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("cannot read %s (%s); starting afresh", self.path, exc.strerror or exc)
            return {}
        try:
            if len(data) > MAX_STATE_BYTES:
                raise ValueError(f"larger than {MAX_STATE_BYTES} bytes")
            value = json.loads(data)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            log.warning("ignoring %s: %s", self.path, exc)
            return {}
        return value

    def save(self, value: dict[str, Any]) -> None:
        """Write atomically; a failure is logged, never raised (the daemon goes on without it)."""
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
            with os.fdopen(fd, "w") as f:
                json.dump(value, f, ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot save %s (%s)", self.path, exc.strerror or exc)
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)


class TokenBudget:
    """Tokens used today (local date), kept across restarts; `gemini.daily_token_budget` caps them."""

    def __init__(self, directory: Path, limit: int | None) -> None:
        self.file = StateFile(directory / "usage.json")
        self.limit = limit
        saved = self.file.load()
        self.day = str(saved.get("day", ""))
        tokens = saved.get("tokens", 0)
        self.tokens = tokens if isinstance(tokens, int) and tokens >= 0 else 0
        self._roll()

    def _roll(self) -> None:
        today = datetime.date.today().isoformat()
        if self.day != today:
            self.day, self.tokens = today, 0

    def add(self, tokens: int) -> None:
        self._roll()
        if tokens > 0:
            self.tokens += tokens
            self.file.save({"day": self.day, "tokens": self.tokens})

    @property
    def today(self) -> int:
        self._roll()
        return self.tokens

    @property
    def exhausted(self) -> bool:
        return self.limit is not None and self.today >= self.limit
