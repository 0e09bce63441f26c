"""What the daemon, a conversation and the tool layer report as they go, as typed values, and who listens.

Each layer emits only its own events (the live layer knows nothing of tools' events and vice versa); the daemon
hands all of them to its observers (MQTT presence, the journal's trace, a test). An observer is anything with
`notify(event)`, and one observer failing never stops the others or the daemon.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Protocol

# idle: waiting for the wake word; listening: wake word heard, deciding with the other satellites who answers;
# connecting: opening (or reopening) the Live connection; conversation: the user's turn; speaking: the model's.
STATES = ("idle", "listening", "connecting", "conversation", "speaking", "muted")


@dataclass(frozen=True)
class Event:
    kind: ClassVar[str]

    def fields(self) -> dict[str, Any]:
        return asdict(self)


# ---- the daemon ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready(Event):
    kind = "ready"


@dataclass(frozen=True)
class Stopped(Event):
    kind = "stopped"


@dataclass(frozen=True)
class StateChanged(Event):
    """The assistant's state as users see it; `muted` is the microphone switch, shown in every state."""

    kind = "state"
    state: str
    muted: bool


@dataclass(frozen=True)
class WakeHeard(Event):
    kind = "wake"
    word: str
    score: float
    position: int  # stream position (samples) of the end of the frame that fired
    seconds: float


@dataclass(frozen=True)
class BargeIn(Event):
    """The wake word over the model's voice: playback flushed, the held-back microphone audio handed over."""

    kind = "barge_in"
    word: str
    fed_from: int | None  # stream position of the first frame handed over
    stream_position: int  # where that audio sits in the session's input stream


@dataclass(frozen=True)
class StoodDown(Event):
    """Another satellite heard the wake word better and answers it."""

    kind = "stood_down"
    word: str
    score: float
    winner: str
    winner_score: float


@dataclass(frozen=True)
class SessionStarted(Event):
    kind = "session_started"
    trigger: str  # wake | command
    word: str
    fed_from: int | None
    number: int


@dataclass(frozen=True)
class SessionEnded(Event):
    kind = "session_ended"
    reason: str  # end_conversation | idle | max_duration | stopped | shutdown, or one of FAILURES
    detail: str
    duration: float
    tool_calls: int
    tokens: int = 0

    FAILURES: ClassVar[tuple[str, ...]] = ("fatal", "connection_lost", "setup", "error")

    @property
    def failed(self) -> bool:
        return self.reason in self.FAILURES


@dataclass(frozen=True)
class Refused(Event):
    """A wake word or a start command not answered with a session (today's token budget is spent)."""

    kind = "refused"
    trigger: str
    why: str


@dataclass(frozen=True)
class Status(Event):
    """What the daemon shows besides its state: settings and diagnostics (Home Assistant's sensors)."""

    kind = "status"
    volume: int
    barge_in: str
    live: str  # disconnected | connecting | connected
    tokens_today: int
    last_error: str
    next_timer: str  # ISO time of the next timer's end, or ""


@dataclass(frozen=True)
class TimersChanged(Event):
    kind = "timers"
    timers: tuple[dict[str, Any], ...]  # each {id, label, ends_at (ISO), seconds_left}


@dataclass(frozen=True)
class TimerRinging(Event):
    kind = "timer_ringing"
    id: str
    label: str


@dataclass(frozen=True)
class Announced(Event):
    kind = "announced"
    text: str
    follow_up: bool


@dataclass(frozen=True)
class Reloaded(Event):
    kind = "reloaded"


@dataclass(frozen=True)
class ReloadRefused(Event):
    kind = "reload_refused"
    problems: tuple[str, ...]


# ---- a conversation (daemon.live.session) --------------------------------------------------------------------


@dataclass(frozen=True)
class Connecting(Event):
    kind = "connecting"
    resumed: bool


@dataclass(frozen=True)
class Connected(Event):
    kind = "connected"
    resumed: bool
    connection: int


@dataclass(frozen=True)
class Reconnecting(Event):
    kind = "reconnecting"
    why: str
    attempt: int


@dataclass(frozen=True)
class Renewed(Event):
    """The service lost the session: a new one started, and the model was told which calls already ran."""

    kind = "renewed"
    calls_told: int


@dataclass(frozen=True)
class GoingAway(Event):
    kind = "goaway"
    time_left: float


@dataclass(frozen=True)
class Speaking(Event):
    """The model started a turn."""

    kind = "speaking"


@dataclass(frozen=True)
class TurnEnded(Event):
    """The model's turn is over (complete or interrupted); its audio may still be playing."""

    kind = "turn_ended"


@dataclass(frozen=True)
class Interrupted(Event):
    kind = "interrupted"
    dropped_bytes: int
    local: bool  # True: our barge-in; False: the service said so


@dataclass(frozen=True)
class Transcript(Event):
    kind = "transcript"
    who: str  # user | model
    text: str


@dataclass(frozen=True)
class ModelCalled(Event):
    """The model asked for a tool call (before the tool layer runs it)."""

    kind = "tool_call"
    id: str
    name: str
    args: dict[str, Any]
    repeated: bool


@dataclass(frozen=True)
class Answered(Event):
    kind = "answered"
    id: str
    name: str
    outcome: str
    scheduling: str | None
    response: dict[str, Any]


@dataclass(frozen=True)
class ConversationEnded(Event):
    kind = "ended"
    reason: str
    detail: str
    duration: float


# ---- the tool layer (daemon.tools.engine) --------------------------------------------------------------------


@dataclass(frozen=True)
class ToolStarted(Event):
    kind = "tool_started"
    id: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class ToolRepeated(Event):
    """A call id seen before: not run again."""

    kind = "tool_repeated"
    id: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class ToolFinished(Event):
    kind = "tool_finished"
    id: str
    name: str
    args: dict[str, Any]
    outcome: str  # success | error | timeout
    latency: float
    detail: str = ""
    published: tuple[str, ...] = ()  # "topic payload" of each message the call sent, in order


@dataclass(frozen=True)
class ToolCancelled(Event):
    kind = "cancelled"
    id: str
    name: str
    # not_found | already_answered | already_cancelled | not_published | undone | no_undo | undo_skipped | undo_failed
    result: str
    detail: str = ""


# ---- observers -----------------------------------------------------------------------------------------------


class Observer(Protocol):
    def notify(self, event: Event) -> None: ...


Emit = Callable[[Event], None]


def notify_all(hooks: Iterable[Emit], event: Event, log: logging.Logger) -> None:
    """Every hook sees the event; one that raises is logged and the rest still see it."""
    for hook in hooks:
        try:
            hook(event)
        except Exception:
            log.exception("%r failed on the %s event", hook, event.kind)
