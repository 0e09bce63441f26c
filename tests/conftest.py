"""Shared fixtures: real services as child processes, never mocks of what a test claims to test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Broker, running_broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh mosquitto for one test."""
    with running_broker(tmp_path) as b:
        yield b
