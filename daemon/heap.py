"""The garbage collector, kept off the paths users wait on.

A full collection walks every object the process holds: 30-45 ms on x86 once the Gemini SDK, pydantic and the
wake word are loaded (several times that on a Pi), due whenever allocations tip its thresholds: between a wake
word and the first audio byte, between a cancellation and its undo. So the daemon
- freezes what it holds once it is warm (READY, the SDK imported, the Live client built): later collections walk
  only what was made since, a few thousand objects, and take well under a millisecond;
- collects after each conversation, while nobody waits: what the conversation left in reference cycles goes
  now rather than at some later full collection, by when its buffers (256 KiB per TLS connection) have been
  spread over the heap and RSS does not come back down;
- unfreezes, collects and freezes again after a reload or a refresh of discovered devices, so what they
  replaced stays collectable.
"""

from __future__ import annotations

import gc


def freeze() -> None:
    """Collect, then move everything left out of the collector's sight (it is the daemon's lasting state)."""
    gc.collect()
    gc.freeze()


def refreeze() -> None:
    """After a reload or a refresh: the replaced objects were frozen; they must become collectable again."""
    gc.unfreeze()
    freeze()


def collect() -> int:
    """A collection of everything made since the freeze (a conversation's leftovers); how many were freed. The
    first conversation may end before anything was frozen (a wake word during the warm-up, which then leaves the
    full collection to it rather than stall the conversation): then this is the freeze."""
    if not gc.get_freeze_count():
        freeze()
        return 0
    return gc.collect()
