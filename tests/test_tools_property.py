"""Property: whatever a model sends, the daemon never publishes outside the topic set fixed at load time."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.calls import ToolCall
from tests.support.broker import Broker, running_broker
from tests.support.mqttworld import rig, world
from tests.test_tools import DECLARED, TOOLS

NAMES = ["set_light", "unlock_door", "plug", "goodnight", "note", "read_climate", "read_power"]
NASTY = ["#", "+", "/", "a/b", "kitchen/#", "\x00", "kitchen\n", "$SYS/x", "", " ", "k" * 5000, "../lock/front"]
VALID = ["kitchen", "bedroom", "ON", "OFF", "TOGGLE", "living", "garden"]

scalars = st.one_of(
    st.sampled_from(NASTY + VALID),
    st.text(max_size=40),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
keys = st.sampled_from(["room", "state", "brightness", "transition", "text", "urgent", "sensor", "topic"]) | st.text(
    max_size=10
)
GOOD = [
    ("plug", {"state": "ON"}),
    ("set_light", {"room": "kitchen", "state": "OFF", "brightness": 3}),
    ("goodnight", {}),
    ("note", {"text": "#/+"}),
]
call = st.tuples(st.sampled_from(NAMES) | st.text(max_size=12), st.dictionaries(keys, values, max_size=5) | values)
# Each batch holds one call known to publish, so every example shows the pipeline really publishing.
calls = st.tuples(st.lists(call, max_size=6), st.sampled_from(GOOD)).map(lambda t: [*t[0], t[1]])


@pytest.fixture(scope="module")
def shared_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with running_broker(tmp_path_factory.mktemp("prop")) as b:
        yield b


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=calls)
def test_random_calls_never_publish_outside_declared_topics(
    batch: list[tuple[str, object]], shared_broker: Broker, tmp_path: Path
) -> None:
    async def run() -> list[str]:
        async with rig(tmp_path, shared_broker, TOOLS) as r, world(shared_broker) as w:
            for i, (name, args) in enumerate(batch):
                r.engine.submit(ToolCall(f"h{i}", name, args))  # type: ignore[arg-type]
            await asyncio.wait_for(r.engine.settle(timeout=0.2), 10)
            await w.fence(r.link)
            # Retained copies from earlier examples arrive on subscribing; only this example's publishes count.
            return [s.topic for s in w.seen if not s.retain and not s.topic.startswith("fence/")]

    seen = asyncio.run(run())
    assert seen, "the valid call in the batch published nothing"
    assert set(seen) <= DECLARED, f"published outside the declared set: {set(seen) - DECLARED}"
