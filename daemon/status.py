"""What the daemon shows of itself: the assistant's state (for MQTT, hooks and the trace) and the one-line status
systemd prints in `systemctl status`. Pure functions of the daemon's situation, so each wording has one home."""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    LISTENING = "listening"
    CLAIMING = "claiming"  # heard the wake word; asking the other satellites who answers
    CONVERSATION = "conversation"


def assistant_state(phase: Phase, muted: bool, connected: bool, speaking: bool) -> str:
    """idle (waiting for the wake word) → listening (heard it; deciding who answers) → connecting →
    conversation ⇄ speaking, or muted (one of events.STATES)."""
    if muted and phase is not Phase.CONVERSATION:
        return "muted"
    if phase is Phase.CLAIMING:
        return "listening"
    if phase is Phase.CONVERSATION:
        if not connected:
            return "connecting"
        return "speaking" if speaking else "conversation"
    return "idle"


def status_line(
    phase: Phase, muted: bool, words: list[str], tool_calls: int, broker_down: bool, mic_down: bool
) -> str:
    if muted:
        line = "microphone muted"
    elif phase is Phase.CONVERSATION:
        line = f"in conversation: {tool_calls} tool call{'s' if tool_calls != 1 else ''}"
    elif phase is Phase.CLAIMING:
        line = "wake word heard, deciding which satellite answers"
    else:
        line = f"listening for {', '.join(words)}"
    problems = ["MQTT broker unreachable, retrying"] * broker_down + ["microphone unavailable, retrying"] * mic_down
    return "; ".join([line, *problems])
