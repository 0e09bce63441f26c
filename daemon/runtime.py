"""The daemon's main job: listen, hear the wake word, talk with Gemini, act, and listen again, forever.

Microphone frames arrive on the event loop from the input's thread; each frame goes into the pre-roll buffer,
to the open conversation (subject to the barge-in policy), and through the wake word on its own thread. A wake
opens a LiveSession fed first with the pre-roll from just before the wake word, so what the user says in the
same breath reaches the model while it connects. The tool layer and the live layer meet only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import heap
from .assembly import Devices, MqttSide, Options, open_devices, open_mqtt, warm_client
from .audio.earcons import end_earcon, wake_earcon
from .audio.frames import SAMPLE_RATE, AudioError, Frame, output_seconds
from .audio.outputs import AudioSink
from .config import EX_CONFIG
from .events import (
    BargeIn,
    Connected,
    Connecting,
    ConversationEnded,
    Event,
    Interrupted,
    Observer,
    Ready,
    Reconnecting,
    Reloaded,
    ReloadRefused,
    SessionEnded,
    SessionStarted,
    Speaking,
    StateChanged,
    Status,
    Stopped,
    TimersChanged,
    TurnEnded,
    WakeHeard,
    notify_all,
)
from .hooks import Hooks
from .household import Household
from .live.client import SetupError, api_key
from .loading import Loaded, load
from .logs import logger
from .service import Notifier, install_signal_handlers, watchdog
from .state import default_state_dir
from .status import Phase, assistant_state, status_line
from .wake import AsyncWakeDetector, Detection, PrerollBuffer, WakeModelError
from .yamlsrc import ConfigError

if TYPE_CHECKING:
    from .live.session import LiveSession, SessionResult

log = logger(__name__)

SHUTDOWN_SETTLE = 2.0  # SIGTERM must end the process within 5 s, tool calls included
STATUS_EVERY = 2.0
# Session events after which the assistant's state may have changed.
_STATE_EVENTS = (Connecting, Connected, Reconnecting, Speaking, TurnEnded, Interrupted)


class Daemon:
    def __init__(self, loaded: Loaded, options: Options | None = None, notifier: Notifier | None = None) -> None:
        self.loaded = loaded
        self.options = options or Options()
        self.notifier = notifier or Notifier()
        self.observers: list[Observer] = []
        self.phase = Phase.LISTENING
        self.muted = False
        self.session: LiveSession | None = None
        self.sessions = 0
        self.preroll = PrerollBuffer(10.0)
        self._devices: Devices | None = None
        self._mqtt: MqttSide | None = None
        self._key = ""
        self._client: Any = None
        self._fed_until = 0  # stream position up to which the microphone went to the current session
        self._open_mic_until = 0.0  # the mic stays open until then, whatever the speaker plays (earcon, flush tail)
        self._session_task: asyncio.Task[None] | None = None
        self._pending: Loaded | None = None
        self._queued_start: tuple[str | None] | None = None  # a start command that came while a conversation ended
        self._stopping = asyncio.Event()
        self._last_status = ""
        self._shown: StateChanged | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.household = Household(loaded.config, self.state_dir, self, self._notify)
        self.hooks = Hooks(loaded.config.hooks)
        self._remembered: tuple[str, float] | None = None  # the last conversation's handle, and when it ended
        self._live = "disconnected"
        self._last_error = ""
        self._next_timer = ""
        self._shown_status: Status | None = None

    @property
    def state_dir(self) -> Path:
        return self.loaded.config.assistant.state_dir or default_state_dir()

    @property
    def devices(self) -> Devices:
        if self._devices is None:
            raise RuntimeError("the daemon is not running")
        return self._devices

    @property
    def wake(self) -> AsyncWakeDetector:
        return self.devices.wake

    @property
    def speaker(self) -> AudioSink:
        return self.devices.speaker

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        """A task of the daemon's own, kept referenced until it is done (the loop holds tasks only weakly)."""
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _notify(self, event: Event) -> None:
        hooks = [o.notify for o in self.observers] + [self.hooks.notify]
        if self._mqtt is not None:
            hooks.append(self._mqtt.presence.notify)
        notify_all(hooks, event, log)
        if isinstance(event, TimersChanged):
            self._next_timer = event.timers[0]["ends_at"] if event.timers else ""

    def _on_session_event(self, event: Event) -> None:
        self._notify(event)
        if isinstance(event, _STATE_EVENTS):
            self._live = "connected" if isinstance(event, Connected | Speaking | TurnEnded | Interrupted) else (
                "connecting")
            self._refresh_state()
        elif isinstance(event, ConversationEnded):
            self._live = "disconnected"
            self.settings_changed()

    # ---- start, run, stop ------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Until SIGTERM/SIGINT (exit 0), the end of a file input (exit 0), or a config problem (exit 78)."""
        try:
            # The Gemini SDK is a third of start-up when this process has not imported it yet: then it is
            # imported right after READY (_warm_up), while the daemon listens; otherwise the client is built now.
            sdk_loaded = "google.genai" in sys.modules
            self._key, self._client, self._devices = await self._prepare(self.loaded, warm=sdk_loaded)
            self.speaker.volume = self.household.volume / 100
            await self._start_mqtt(self.loaded)
            self.household.timers.start()
        except (SetupError, WakeModelError, AudioError) as exc:
            log.error("cannot start: %s", exc)
            await self._teardown()
            return EX_CONFIG
        remove_signals = install_signal_handlers(self._on_sighup, self.stop)
        watchdog_task = asyncio.create_task(watchdog(self.notifier), name="watchdog")
        status_task = asyncio.create_task(self._status_loop(), name="status")
        self.notifier.ready(self._status())
        log.info("ready: %s", self._status())
        self._notify(Ready())
        self._refresh_state()
        listener = asyncio.create_task(self._listen(), name="listen")
        self._spawn(self._warm_up(self.loaded), "warm-up")
        stopper = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({listener, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if listener.done() and listener.exception() is not None:
                raise listener.exception()  # type: ignore[misc]
            if listener.done() and self._session_task is not None:
                await self._session_task  # the input ended: let the last conversation finish
        finally:
            self.notifier.stopping("stopping")
            log.info("stopping")
            for task in (listener, stopper, status_task, watchdog_task):
                task.cancel()
            await self._end_session("shutdown")
            remove_signals()
            self._notify(Stopped())
            await self._teardown()
        return 0

    def stop(self) -> None:
        self._stopping.set()

    async def _prepare(self, loaded: Loaded, warm: bool = True) -> tuple[str, Any, Devices]:
        """The key, the Live client and the devices a config needs, used by start and reload alike; raises what
        makes them impossible, having released whatever it opened. Without `warm` the client is left for
        `_warm_up` (start: it imports the Gemini SDK, which READY need not wait for)."""
        key = api_key(loaded.config.gemini)
        client = await asyncio.to_thread(warm_client, loaded, key) if warm else None
        current = (self.loaded.config, self._devices) if self._devices is not None else None
        devices = await open_devices(loaded.config, self.options, current)
        return key, client, devices

    async def _warm_up(self, loaded: Loaded) -> None:
        """Right after READY: the Gemini SDK, the Live client, the session module and the next session's setup
        (daemon.live.setup.warm), on a thread while the daemon listens; then the heap is frozen (daemon.heap). A
        wake word heard before this is done waits for the import to finish, and its session builds its own client."""
        try:
            client = await asyncio.to_thread(self._warm_client, loaded)
        except Exception as exc:  # the first session builds its own client and reports what fails there
            log.warning("could not prepare the Live client: %s", exc)
            return
        if self.loaded is loaded and self._client is None:  # a reload may have built a newer one meanwhile
            self._client = client
        if self.phase is Phase.LISTENING:  # else a conversation is under way: its end freezes (heap.collect)
            heap.freeze()
        log.info("Live client ready")

    def _warm_client(self, loaded: Loaded) -> Any:
        from .live import session  # noqa: F401  (imported here, off the event loop)

        return warm_client(loaded, self._key, self._mqtt.engine.declarations() if self._mqtt else None)

    async def _start_mqtt(self, loaded: Loaded) -> None:
        self._mqtt = await open_mqtt(loaded, self, self._notify, self.household.tools(), self._update_status)

    async def _stop_mqtt(self, timeout: float | None = None) -> None:
        mqtt, self._mqtt = self._mqtt, None
        if mqtt is not None:
            await mqtt.stop(timeout)

    async def _teardown(self) -> None:
        await self.household.timers.stop()
        await self.hooks.close()
        if self._devices is not None:
            await self._devices.close()
        await self._stop_mqtt(timeout=1.0)

    # ---- the microphone loop ---------------------------------------------------------------------------------

    async def _listen(self) -> None:
        while True:
            mic = self.devices.mic
            async for frame in mic:
                self.preroll.append(frame)
                if self.muted:
                    continue
                if self.phase is Phase.CONVERSATION and self.session is not None:
                    self._forward(frame)
                for detection in await self.wake.process(frame):
                    self._on_wake(detection)
            if mic is self.devices.mic:
                log.info("%s ended", mic.description)
                return
            self.preroll.clear()  # a reload swapped the input: its positions start again

    def _model_audible(self) -> bool:
        return self.speaker.playing and time.monotonic() >= self._open_mic_until

    def _forward(self, frame: Frame) -> None:
        """Barge-in policy: without echo cancellation the model must not hear itself, so the microphone is
        closed while it speaks (wake_word, off); `voice` keeps it open for headsets and AEC microphones."""
        assert self.session is not None
        if self.household.policy != "voice" and self._model_audible():
            return
        self.session.feed(frame.pcm)
        self._fed_until = frame.end

    def _on_wake(self, det: Detection) -> None:
        log.info("wake word %s (score %.2f) at %.2fs", det.word, det.score, det.seconds)
        self._notify(WakeHeard(det.word, det.score, det.position, det.seconds))
        start = det.position - int(self.loaded.config.wake.preroll * SAMPLE_RATE)
        if self.household.stop_ringing():
            return  # the wake word silences a ringing timer, and opens nothing
        if self.phase is Phase.LISTENING and not self._stopping.is_set():
            self._set_phase(Phase.CLAIMING)
            if self._mqtt is not None and not self._mqtt.arbiter.claim_now(det.word, det.score):
                self._spawn(self._begin(det, start), "begin")  # a round with the other satellites first
            elif not self._refuse_over_budget("wake"):  # alone: the session opens now, not a task later
                self._open_session(trigger="wake", start=start, word=det.word, opened_at=time.monotonic())
        elif self.phase is Phase.CONVERSATION and self.session is not None:
            policy = self.household.policy
            if policy == "wake_word" and (self._model_audible() or self.session.model_turn):
                self.session.barge_in()
                self._open_mic_until = time.monotonic() + 0.5  # the device's last block must not re-mute the user
                stream_position = self.session.fed_samples
                frames = self.preroll.since(max(start, self._fed_until))  # only what the mute held back
                for frame in frames:  # what was said with the wake word, unheard so far
                    self.session.feed(frame.pcm)
                self._notify(BargeIn(det.word, frames[0].position if frames else None, stream_position))

    async def _begin(self, det: Detection, start: int) -> None:
        heard_at = time.monotonic()
        if self._mqtt is not None and not await self._mqtt.arbiter.claim(det.word, det.score):
            log.info("another satellite answers this %s", det.word)
            self._set_phase(Phase.LISTENING)
            await self._listening_again()
        elif not self._stopping.is_set() and not self._refuse_over_budget("wake"):
            self._open_session(trigger="wake", start=start, word=det.word, opened_at=heard_at)

    def _refuse_over_budget(self, trigger: str) -> bool:
        if not self.household.refuse_over_budget(trigger):
            return False
        self._set_phase(Phase.LISTENING)
        return True

    # ---- the household's host (daemon.household.Host) ------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self.phase is not Phase.LISTENING

    def tell(self, text: str) -> bool:
        if self.session is None:
            return False
        self.session.send_text(text)
        return True

    def announce_now(self, text: str, follow_up: bool) -> None:
        instruction = (
            "Read this announcement to the people in the room, word for word, adding nothing before or after it: "
            f"{text}"
        )
        self._open_session(trigger="announce", text=instruction, end_after_turn=not follow_up)

    def play(self, pcm: bytes, level: float = 1.0) -> None:
        self.speaker.volume = self.household.volume / 100
        self.speaker.play(pcm, level)

    def settings_changed(self) -> None:
        if self._devices is not None:
            self.speaker.volume = self.household.volume / 100
        status = Status(
            self.household.volume, self.household.policy, self._live, self.household.budget.today, self._last_error,
            self._next_timer,
        )
        if status != self._shown_status:
            self._shown_status = status
            self._notify(status)

    # ---- conversations ---------------------------------------------------------------------------------------

    def _open_session(
        self, trigger: str, start: int | None = None, text: str | None = None, word: str = "",
        opened_at: float | None = None, end_after_turn: bool = False,
    ) -> None:
        from .live.session import LiveSession  # imported by _warm_up after READY; waits for it if still under way

        assert self._mqtt is not None
        cfg = self.loaded.config
        handle = None
        if self._remembered is not None and time.monotonic() - self._remembered[1] <= cfg.conversation.remember:
            handle = self._remembered[0]  # conversation.remember: go on where the last one ended
            log.info("conversation %d resumes the last one", self.sessions + 1)
        session = LiveSession(
            cfg.gemini,
            cfg.conversation,
            self._mqtt.engine,
            self._mqtt.engine.declarations(),
            key=self._key,
            speaker=self.speaker,
            observer=self._on_session_event,
            client=self._client,
            name=str(self.sessions + 1),
            opened_at=opened_at,
            handle=handle,
            end_after_turn=end_after_turn,
        )
        if cfg.conversation.earcons and trigger != "announce":  # an announcement had its chime
            tone = wake_earcon()
            self.play(tone, cfg.audio.output.earcon_volume / 100)
            self._open_mic_until = time.monotonic() + output_seconds(len(tone)) + 0.1
        fed_from = None
        if start is not None:
            frames = self.preroll.since(start)
            if frames:
                fed_from = frames[0].position
                self._fed_until = frames[-1].end
            for frame in frames:  # everything since just before the wake word, then live frames follow
                session.feed(frame.pcm)
        if text:
            session.send_text(text)
        self.session = session
        self.sessions += 1
        self._set_phase(Phase.CONVERSATION)
        self._notify(SessionStarted(trigger, word, fed_from, self.sessions))
        self._session_task = asyncio.create_task(self._converse(session), name=f"session-{self.sessions}")

    async def _converse(self, session: LiveSession) -> None:
        result: SessionResult | None = None
        try:
            result = await session.run()
        finally:
            self.session = None
            failed = result is None or result.reason in SessionEnded.FAILURES
            if session.handle and session.resumable and not failed:
                self._remembered = (session.handle, time.monotonic())
            if not self._stopping.is_set():
                if failed:
                    self._spawn(self.household.apologise("failed"), "apologise")
                elif self.loaded.config.conversation.earcons:
                    self.play(end_earcon(), self.loaded.config.audio.output.earcon_volume / 100)
            await self.wake.reset()  # nothing heard during the conversation may fire afterwards
            if result is None:
                self._last_error = "the conversation failed"
                self._notify(SessionEnded("error", "", 0.0, 0))
            else:
                if failed:
                    self._last_error = f"{result.reason}: {result.detail}"[:300]
                self.household.budget.add(result.tokens)
                self._notify(
                    SessionEnded(result.reason, result.detail, result.duration, result.tool_calls, result.tokens)
                )
            self._set_phase(Phase.LISTENING)
            heap.collect()
            if not self._stopping.is_set():
                log.info("back to listening for %s", ", ".join(w.name for w in self.loaded.config.wake.words))
            await self._listening_again()
            if self._pending is not None and not self._stopping.is_set():
                await self._apply(self._pending)

    async def _end_session(self, reason: str) -> None:
        if self.session is not None:
            if reason == "shutdown":
                self.session.conversation = self.session.conversation.model_copy(
                    update={"settle_timeout": min(SHUTDOWN_SETTLE, self.session.conversation.settle_timeout)}
                )
            self.session.stop(reason)
        if self._session_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._session_task

    # ---- what MQTT commands ask for (daemon.mqtt.commands.Controller) ----------------------------------------

    async def _listening_again(self) -> None:
        """What waited for the conversation to end goes first: an announcement, else a start command."""
        if not self._stopping.is_set() and not self.household.next_announcement():
            await self._serve_queued_start()
        self.settings_changed()

    async def _serve_queued_start(self) -> None:
        if self._queued_start is not None and not self._stopping.is_set() and self.phase is Phase.LISTENING:
            (text,), self._queued_start = self._queued_start, None
            await self.start_conversation(text)

    async def start_conversation(self, text: str | None = None) -> None:
        """A start (or a text turn) from MQTT: into the open conversation, a new one, or, while one is ending or
        the satellites are deciding, the next one (a command is never dropped silently)."""
        if self.session is not None:
            if text:
                self.session.send_text(text)
            return
        if self.phase is Phase.LISTENING:
            if not self._refuse_over_budget("command"):
                self._open_session(trigger="command", text=text)
            return
        if self._queued_start is not None:
            raise RuntimeError("busy: a conversation is ending and another start is already waiting")
        self._queued_start = (text,)
        log.info("a start command waits for the conversation that is ending")

    async def end_conversation(self) -> None:
        if self.session is not None:
            self.session.stop("stopped", "ended by command")

    def set_muted(self, muted: bool) -> None:
        self.muted = muted
        log.info("microphone %s", "muted" if muted else "unmuted")
        self._refresh_state()

    async def announce(self, text: str, chime: bool = True, follow_up: bool = False) -> None:
        self.household.announce(text, chime, follow_up)

    def set_volume(self, level: int) -> None:
        self.household.set_volume(level)

    def stop_ringing(self) -> None:
        if not self.household.stop_ringing():
            raise RuntimeError("no timer is ringing")

    def set_barge_in(self, policy: str) -> None:
        self.household.set_barge_in(policy)

    def hush(self) -> None:
        self.speaker.flush()

    async def refresh(self) -> None:
        """New discovery data on the broker becomes reachable only here (or by a reload): the topic set is audited."""
        if self._mqtt is None or self._mqtt.discovered is None:
            raise RuntimeError("no tool source in this config discovers devices (tools: - discover: ...)")
        if not self._mqtt.link.connected:
            raise RuntimeError("the broker is unreachable: nothing to refresh from")
        self._mqtt.discovered.take()
        heap.refreeze()  # the replaced tools were frozen with the rest

    async def reload(self) -> None:
        """A reload in a task of the daemon's own: a reload that rebuilds MQTT stops the very presence whose
        command task asked for it, and must not be cancelled with that task."""
        await asyncio.shield(self._spawn(self._reload(), "reload"))

    # ---- reload ----------------------------------------------------------------------------------------------

    def _on_sighup(self) -> None:
        self._spawn(self._reload(), "reload")

    async def _reload(self) -> None:
        """Re-read the config: an invalid one is refused and the old one keeps running; a valid one applies at
        once when idle, or when the current conversation ends (which finishes on the old config)."""
        self.notifier.reloading("reloading configuration")
        try:
            new = await asyncio.to_thread(load, self.loaded.path)
            api_key(new.config.gemini)
        except (ConfigError, SetupError) as exc:
            problems = exc.problems if isinstance(exc, ConfigError) else [exc]
            log.error(
                "reload refused, still running on the previous configuration: %s", "; ".join(str(p) for p in problems)
            )
            self._notify(ReloadRefused(tuple(str(p) for p in problems)))
        else:
            if self.phase is Phase.LISTENING:
                await self._apply(new)
            else:
                self._pending = new
                log.info("reload accepted; applies when this conversation ends")
        self.notifier.ready(self._status())

    async def _apply(self, new: Loaded) -> None:
        """Build everything the new config needs first, then swap it all in: a reload that fails part way
        leaves the daemon entirely on the old configuration."""
        old, self._pending = self.loaded, None
        try:
            key, client, devices = await self._prepare(new)
        except (WakeModelError, AudioError, SetupError) as exc:
            log.error("reload failed, still running on the previous configuration: %s", exc)
            return
        self._key, self._client = key, client
        old_devices, self._devices = self._devices, devices  # the listener moves to a new input by itself
        if old_devices is not None:
            await old_devices.close(keep=devices)
        cfg, was = new.config, old.config
        if (cfg.mqtt, cfg.assistant, cfg.tools) != (was.mqtt, was.assistant, was.tools):
            await self._stop_mqtt(timeout=1.0)
            await self._start_mqtt(new)
        elif self._mqtt is not None:
            self._mqtt.presence.reconfigure(cfg)
            if self._mqtt.discovered is not None and self._mqtt.link.connected:
                self._mqtt.discovered.take()  # a reload also takes a fresh look at the broker's devices
        self.household.reconfigure(cfg)
        self.hooks.hooks = cfg.hooks
        self.loaded = new
        heap.refreeze()
        log.info("configuration reloaded from %s", new.path)
        self._notify(Reloaded())
        self._refresh_state()

    # ---- state and status ------------------------------------------------------------------------------------

    def _set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self._refresh_state()

    @property
    def state(self) -> str:
        session = self.session
        connected, speaking = (session.connected, session.speaking) if session is not None else (False, False)
        return assistant_state(self.phase, self.muted, connected, speaking)

    def _refresh_state(self) -> None:
        """Tell the observers the state whenever it, or the mute switch, changed."""
        shown = StateChanged(self.state, self.muted)
        if shown != self._shown:
            self._shown = shown
            self._notify(shown)
        self._update_status()

    def _status(self) -> str:
        return status_line(
            self.phase,
            self.muted,
            [w.name for w in self.loaded.config.wake.words],
            self.session.tool_calls if self.session else 0,
            broker_down=self._mqtt is not None and not self._mqtt.link.connected,
            mic_down=self._devices is not None and getattr(self._devices.mic, "unavailable", False),
        )

    def _update_status(self) -> None:
        line = self._status()
        if line != self._last_status:
            self._last_status = line
            self.notifier.status(line)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY)
            self._update_status()
