"""What people use a voice assistant for every day, around the conversations: timers that ring and are announced,
announcements from Home Assistant, the volume and the barge-in policy (both kept across restarts). The daemon
hands it its conversations (`Host`); this module decides when to ring, when to speak and what to queue."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from pathlib import Path
from typing import Any, Protocol

from .audio.earcons import chime, error_earcon, ring
from .audio.frames import OUTPUT_RATE, output_seconds
from .audio.speech import spoken
from .builtins import builtin_tools
from .config import Config
from .events import Announced, Emit, Refused, TimerRinging, TimersChanged
from .logs import logger
from .state import StateFile, TokenBudget
from .timers import Timer, Timers
from .tools.engine import LocalTool

log = logger(__name__)

MAX_QUEUED = 8  # announcements waiting for a conversation to end; more are refused
SORRY = {
    "budget": "Sorry, I have used up today's conversation budget.",
    "failed": "Sorry, I cannot reach Gemini right now.",
}


class Host(Protocol):
    """What the household needs of the daemon."""

    @property
    def busy(self) -> bool: ...  # a conversation is open, or the satellites are deciding who answers

    def tell(self, text: str) -> bool: ...  # into the open conversation; False when there is none
    def announce_now(self, text: str, follow_up: bool) -> None: ...
    def play(self, pcm: bytes, level: float) -> None: ...
    def settings_changed(self) -> None: ...
    def hush(self) -> None: ...  # drop what the speaker still has queued


class Household:
    def __init__(self, config: Config, state_dir: Path, host: Host, emit: Emit) -> None:
        self.config = config
        self.host = host
        self.emit = emit
        self.settings = StateFile(state_dir / "settings.json")
        saved = self.settings.load()
        self.volume = _level(saved.get("volume"), config.audio.output.volume)
        policy = saved.get("barge_in")
        self.barge_in = policy if policy in ("wake_word", "voice", "off") else None  # None: the config's
        self.timers = Timers(state_dir, self._fired, self._timers_changed)
        self.budget = TokenBudget(state_dir, config.gemini.daily_token_budget)
        self._queue: deque[tuple[str, bool, bool]] = deque()
        self._ring_stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ringing: asyncio.Task[None] | None = None

    # ---- settings ------------------------------------------------------------------------------------------

    @property
    def policy(self) -> str:
        return self.barge_in or self.config.conversation.barge_in

    def set_volume(self, level: int) -> None:
        self.volume = max(0, min(100, int(level)))
        self._save()

    def set_barge_in(self, policy: str) -> None:
        self.barge_in = policy
        self._save()

    def reconfigure(self, config: Config) -> None:
        """A reload: a changed audio.output.volume in the file is the new level."""
        self.budget.limit = config.gemini.daily_token_budget
        if config.audio.output.volume != self.config.audio.output.volume:
            self.volume = config.audio.output.volume
            self._save()
        self.config = config

    def _save(self) -> None:
        self.settings.save({"volume": self.volume, "barge_in": self.barge_in})
        self.host.settings_changed()

    def tools(self) -> list[LocalTool]:
        return builtin_tools(self.config, self.timers, lambda: self.volume, self.set_volume)

    # ---- refusals -----------------------------------------------------------------------------------------

    def refuse_over_budget(self, trigger: str) -> bool:
        """Past gemini.daily_token_budget: a short spoken refusal instead of a session."""
        if not self.budget.exhausted:
            return False
        why = f"today's token budget is spent ({self.budget.today} of {self.budget.limit})"
        log.warning("%s not answered: %s", trigger, why)
        self.emit(Refused(trigger, why))
        self._spawn(self.apologise("budget"))
        return True

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="household")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def apologise(self, what: str) -> None:
        """The error cue, then a short sentence where espeak-ng is installed."""
        self.host.play(error_earcon(), self.config.audio.output.earcon_volume / 100)
        sentence = await asyncio.to_thread(spoken, SORRY[what], OUTPUT_RATE)
        if sentence is not None:
            self.host.play(sentence, 1.0)

    # ---- announcements -------------------------------------------------------------------------------------

    def announce(self, text: str, play_chime: bool = True, follow_up: bool = False) -> None:
        """Now, or after the conversation in progress. RuntimeError when too many are waiting."""
        if self.host.busy:
            if len(self._queue) >= MAX_QUEUED:
                raise RuntimeError(f"{MAX_QUEUED} announcements are already waiting")
            self._queue.append((text, play_chime, follow_up))
            log.info("announcement queued until the conversation ends (%d waiting)", len(self._queue))
            return
        self._announce(text, play_chime, follow_up)

    def _announce(self, text: str, play_chime: bool, follow_up: bool) -> None:
        if play_chime:
            self.host.play(chime(), self.config.audio.output.earcon_volume / 100)
        self.emit(Announced(text, follow_up))
        self.host.announce_now(text, follow_up)

    def next_announcement(self) -> bool:
        """After a conversation: say what waited. True if one was started."""
        if not self._queue or self.host.busy:
            return False
        self._announce(*self._queue.popleft())
        return True

    # ---- timers --------------------------------------------------------------------------------------------

    def _timers_changed(self, timers: list[Timer]) -> None:
        self.emit(TimersChanged(tuple(t.view() for t in timers)))
        self.host.settings_changed()

    async def _fired(self, timer: Timer) -> None:
        self.emit(TimerRinging(timer.id, timer.label))
        said = "timer" if timer.label == "timer" else f"{timer.label} timer"
        if self.host.tell(f"(The {said} the user set is done now. Tell them, in a few words.)"):
            return  # a conversation is open: the model says it there
        self._ring_stop.clear()
        self._ringing = asyncio.current_task()
        try:
            stopped = await self._ring(self.config.builtins.ring_for)
        finally:
            self._ringing = None
        if not stopped:
            self.announce(f"Your {said} is done.", play_chime=False, follow_up=True)

    async def _ring(self, seconds: float) -> bool:
        """Ring until stopped or for `seconds`; True if someone stopped it."""
        tone, level = ring(), self.config.audio.output.ring_volume / 100
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while loop.time() < until:
            self.host.play(tone, level)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ring_stop.wait(), output_seconds(len(tone)))
                log.info("the ring was stopped")
                return True
        return False

    @property
    def ringing(self) -> bool:
        return self._ringing is not None

    def stop_ringing(self) -> bool:
        """The wake word or a stop command: quiet now. False when nothing rang."""
        if self._ringing is None:
            return False
        self._ring_stop.set()
        self.host.hush()
        return True


def _level(saved: object, default: int) -> int:
    return saved if isinstance(saved, int) and not isinstance(saved, bool) and 0 <= saved <= 100 else default
