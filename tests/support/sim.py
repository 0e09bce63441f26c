"""Driving the real google-genai SDK against the Live simulator: a client that trusts its CA, a config that declares
the scenario tools, and a receive helper that reads across turns (the SDK's receive() stops at each turnComplete)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import cache
from typing import Any

import numpy as np
from google import genai
from google.genai import types

from daemon.audio.speech import silence, synthesize
from daemon.sim.server import Simulator

MODEL = "gemini-3.8-live"
Start = Callable[..., Awaitable[Simulator]]  # the `start` fixture (tests/conftest.py)


def turn_complete(m: types.LiveServerMessage) -> bool:
    return bool(m.server_content and m.server_content.turn_complete)


def answer(call: types.FunctionCall, **response: Any) -> types.FunctionResponse:
    return types.FunctionResponse(id=call.id, name=call.name, response=response or {"ok": True})


def client_for(sim: Simulator, api_key: str | None = None) -> genai.Client:
    return genai.Client(api_key=api_key or sim.api_key, http_options=sim.http_options())


def live_config(
    *, handle: str | None = None, tools: tuple[str, ...] = ("set_light", "run_scene"), resumption: bool = True,
    text: bool = False,
) -> types.LiveConnectConfig:
    """The config a voice client would send: audio out, both transcriptions, resumption, these tools."""
    params = {"type": "object", "properties": {"light": {"type": "string"}, "state": {"type": "string"},
                                               "scene": {"type": "string"}}}
    return types.LiveConnectConfig(
        response_modalities=["TEXT" if text else "AUDIO"],
        input_audio_transcription=types.AudioTranscriptionConfig(),
        output_audio_transcription=types.AudioTranscriptionConfig(),
        session_resumption=types.SessionResumptionConfig(handle=handle) if resumption else None,
        tools=[types.Tool(function_declarations=[
            types.FunctionDeclaration(name=name, description=f"{name} tool", parameters=params,
                                      behavior=types.Behavior.NON_BLOCKING if name == "run_scene" else None)
            for name in tools
        ])],
    )


async def messages(session: genai.live.AsyncSession) -> AsyncIterator[types.LiveServerMessage]:
    """Every server message, across turns."""
    while True:
        async for message in session.receive():
            yield message


async def until(
    stream: AsyncIterator[types.LiveServerMessage],
    done: Callable[[types.LiveServerMessage], object],
    timeout: float = 10.0,
) -> list[types.LiveServerMessage]:
    """Messages up to and including the first for which `done` is true."""
    seen: list[types.LiveServerMessage] = []

    async def read() -> None:
        async for message in stream:
            seen.append(message)
            if done(message):
                return
        raise AssertionError("the stream ended")

    async with asyncio.timeout(timeout):
        await read()
    return seen


def audio_of(msgs: list[types.LiveServerMessage]) -> bytes:
    out = b""
    for m in msgs:
        if m.server_content and m.server_content.model_turn:
            for part in m.server_content.model_turn.parts or []:
                if part.inline_data and part.inline_data.data:
                    out += part.inline_data.data
    return out


@cache
def speech(text: str, rate: int = 16000) -> bytes:
    return synthesize(text, rate)


def voiced(pcm: bytes, rate: int = 16000, threshold: float = 500.0) -> bytes:
    """`pcm` from the first to the last 10 ms block louder than `threshold`: the part a listener must get."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    block = rate // 100
    n = samples.size // block
    rms = np.sqrt((samples[: n * block].reshape(n, block) ** 2).mean(axis=1))
    loud = np.flatnonzero(rms >= threshold)
    assert loud.size, "no speech in the sample"
    return pcm[loud[0] * block * 2 : (loud[-1] + 1) * block * 2]


async def send_pcm(session: genai.live.AsyncSession, pcm: bytes, rate: int = 16000, chunk: float = 0.1,
                   trailing_silence: float = 1.0) -> None:
    """Stream PCM as a client would (without pacing), then silence so the end of speech is detected."""
    data = pcm + silence(trailing_silence, rate)
    step = int(rate * chunk) * 2
    for i in range(0, len(data), step):
        await session.send_realtime_input(audio=types.Blob(data=data[i : i + step], mime_type=f"audio/pcm;rate={rate}"))
