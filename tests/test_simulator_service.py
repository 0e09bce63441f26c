"""The Live simulator behaves like the real service where that is less kind than a polite fake (issue 10):
frame shapes, the end of a turn and usage. Each driven by the real google-genai SDK (or, for byte-level shapes, a raw
WebSocket) over TLS; see ../shared/docs/live-real-service.md for the facts and their sources."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from google.genai import types
from websockets.asyncio.client import connect as ws_connect

from daemon.sim.server import Simulator
from daemon.sim.usage import audio_tokens, text_tokens
from tests.support.sim import MODEL, client_for, live_config, messages, until

Start = Callable[..., Awaitable[Simulator]]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
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


def turn_complete(m: types.LiveServerMessage) -> bool:
    return bool(m.server_content and m.server_content.turn_complete)


async def test_frames_are_shaped_as_the_service_sends_them(start: Start) -> None:
    """setupComplete is binary; audio and its words share a serverContent; generationComplete, then turnComplete
    with usageMetadata and fields clients rarely see."""
    sim = await start("""
turns:
  - on: {text: hello}
    steps:
      - say: Hello there, how are you?
      - turn_complete
  - on: {text: again}
    steps:
      - say: Fine.
      - turn_complete
""")
    uri = sim.url.replace("https", "wss") + "/ws/google.ai.generativelanguage.v1beta.GenerativeService." \
                                            "BidiGenerateContent"
    tls = ssl.create_default_context(cafile=sim.ca_file)
    frames: list[dict[str, Any]] = []
    async with ws_connect(uri, ssl=tls, additional_headers={"x-goog-api-key": sim.api_key}, proxy=None) as ws:
        await ws.send(json.dumps({"setup": {"model": f"models/{MODEL}", "outputAudioTranscription": {}}}))
        first = await ws.recv()
        assert isinstance(first, bytes) and json.loads(first) == {"setupComplete": {}}
        for text in ("hello", "again"):
            await ws.send(json.dumps({"realtimeInput": {"text": text}}))
            while True:
                frame = json.loads(await ws.recv())
                frames.append(frame)
                if frame.get("serverContent", {}).get("turnComplete"):
                    break
    await sim.wait_finished(5)
    sim.assert_clean()

    first_turn = frames[: next(i for i, f in enumerate(frames) if "usageMetadata" in f) + 1]
    words = [f["serverContent"] for f in first_turn if "outputTranscription" in f.get("serverContent", {})]
    assert len(words) > 1 and all("inlineData" in c["modelTurn"]["parts"][0] for c in words)
    assert "".join(c["outputTranscription"]["text"] for c in words) == "Hello there, how are you?"
    *_, generation, done = first_turn
    assert generation == {"serverContent": {"generationComplete": True}}
    assert done["serverContent"] == {"turnComplete": True, "turnCompleteReason": "NEED_MORE_INPUT",
                                     "waitingForInput": True, "futureHint": {"x": 1}}
    said = sim.entries("audio", "out")[0].detail["seconds"]
    assert done["usageMetadata"] == {
        "promptTokenCount": text_tokens(len("hello")), "responseTokenCount": audio_tokens(said),
        "totalTokenCount": text_tokens(5) + audio_tokens(said),
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": text_tokens(5)}],
        "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": audio_tokens(said)}],
    }
    reported = [f["usageMetadata"] for f in frames if "usageMetadata" in f]
    (tokens,) = sim.tokens_reported.values()
    assert tokens.turns == 2 and tokens.prompt == sum(u["promptTokenCount"] for u in reported)
    assert tokens.total == sum(u["totalTokenCount"] for u in reported)


async def test_generation_complete_once_per_turn_and_none_when_interrupted(start: Start) -> None:
    sim = await start("""
turns:
  - on: {text: one}
    steps: [{say: One.}, turn_complete]
  - on: {text: two}
    steps: [{say: Two.}, generation_complete, turn_complete]
  - on: {text: three}
    steps: [{say: Three.}, interrupted, turn_complete]
""")
    flags: list[list[str]] = []
    async with client_for(sim).aio.live.connect(model=MODEL, config=live_config()) as session:
        stream = messages(session)
        for text in ("one", "two", "three"):
            await session.send_realtime_input(text=text)
            msgs = await until(stream, turn_complete)
            flags.append([k for m in msgs if m.server_content for k in ("generation_complete", "interrupted",
                                                                        "turn_complete")
                          if getattr(m.server_content, k)])
            assert msgs[-1].usage_metadata.total_token_count > 0  # on the turnComplete message itself
    assert flags == [["generation_complete", "turn_complete"], ["generation_complete", "turn_complete"],
                     ["interrupted", "turn_complete"]]
    await sim.wait_finished(5)
    sim.assert_clean()


