"""Shared fixtures: real services as child processes, never mocks of what a test claims to test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.sim.server import Simulator
from tests.support.broker import Broker, running_broker
from tests.support.sim import Start


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """websockets and httpx honour proxy variables; the simulator and the broker are on loopback."""
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh mosquitto for one test."""
    with running_broker(tmp_path) as b:
        yield b


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """Starts simulators (a scenario name, a file, or a scenario's text), each in its own state folder; all are
    stopped after the test."""
    sims: list[Simulator] = []

    async def make(scenario: str | Path, **kwargs: Any) -> Simulator:
        if isinstance(scenario, str) and "\n" in scenario:
            path = tmp_path / f"scenario{len(sims)}.yaml"
            path.write_text(scenario)
            scenario = path
        sim = Simulator(scenario, state_dir=tmp_path / f"sim{len(sims)}", **kwargs)
        await sim.start()
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        await sim.stop()
