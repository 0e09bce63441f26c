"""The assistant's own topics under `<topic_prefix>/<assistant.id>/`, and what the shared ones carry."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config

ONLINE, OFFLINE = "online", "offline"

# Every kind the events topic carries; Home Assistant's event entity has to be told them all in advance.
EVENT_TYPES = (
    "wake",
    "session_started",
    "session_ended",
    "tool_call",
    "cancelled",
    "reconnecting",
    "error",
    "stood_down",
    "command_rejected",
    "command_failed",
    "reloaded",
    "reload_refused",
    "timer_fired",
    "announced",
)


@dataclass(frozen=True)
class Topics:
    base: str
    availability: str
    state: str
    events: str
    command: str
    last_tool: str
    timers: str

    @classmethod
    def of(cls, config: Config) -> Topics:
        base = f"{config.mqtt.topic_prefix}/{config.assistant.id}"
        return cls(
            base, *(f"{base}/{name}" for name in ("availability", "state", "events", "command", "last_tool", "timers"))
        )


def availability_filter(config: Config) -> str:
    """Every satellite's availability topic on this prefix (the arbiter uses it to know its peers)."""
    return f"{config.mqtt.topic_prefix}/+/availability"


def arbitration_topic(config: Config) -> str:
    """Where satellites on this prefix claim wake words (daemon.mqtt.arbiter)."""
    return f"{config.mqtt.topic_prefix}/arbitration"
