"""Waiting for a condition with a deadline, so a broken test fails with a message instead of hanging."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(pred: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)
