"""The daemon's main job: listen, hear the wake word, talk with Gemini, act, and listen again, forever.

Microphone frames arrive on the event loop from the input's thread; each frame goes into the pre-roll buffer,
to the open conversation (subject to the barge-in policy), and through the wake word on its own thread. A wake
opens a LiveSession fed first with the pre-roll from just before the wake word, so what the user says in the
same breath reaches the model while it connects. The tool layer and the live layer meet only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .assembly import Devices, MqttSide, Options, open_devices, warm_client
from .audio.earcons import end_earcon, error_earcon, wake_earcon
from .audio.frames import OUTPUT_RATE, SAMPLE_RATE, AudioError, Frame, output_seconds
from .audio.outputs import AudioSink
from .audio.speech import spoken
from .config import EX_CONFIG
from .events import (
    BargeIn,
    Connected,
    Connecting,
    Event,
    Interrupted,
    Observer,
    Ready,
    Reconnecting,
    Refused,
    Reloaded,
    ReloadRefused,
    SessionEnded,
    SessionStarted,
    Speaking,
    StateChanged,
    Stopped,
    TurnEnded,
    WakeHeard,
    notify_all,
)
from .live.client import SetupError, api_key
from .loading import Loaded, load
from .logs import logger
from .mqtt.arbiter import Arbiter
from .mqtt.presence import Presence
from .service import Notifier, install_signal_handlers, watchdog
from .state import TokenBudget, default_state_dir
from .tools.stack import tool_stack
from .wake import AsyncWakeDetector, Detection, PrerollBuffer, WakeModelError
from .yamlsrc import ConfigError

if TYPE_CHECKING:
    from .live.session import LiveSession, SessionResult

log = logger(__name__)

SHUTDOWN_SETTLE = 2.0  # SIGTERM must end the process within 5 s, tool calls included
SORRY = {
    "budget": "Sorry, I have used up today's conversation budget.",
    "failed": "Sorry, I cannot reach Gemini right now.",
}
STATUS_EVERY = 2.0
# Session events after which the assistant's state may have changed.
_STATE_EVENTS = (Connecting, Connected, Reconnecting, Speaking, TurnEnded, Interrupted)


class Phase(enum.Enum):
    LISTENING = "listening"
    CLAIMING = "claiming"  # heard the wake word; asking the other satellites who answers
    CONVERSATION = "conversation"


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
        self._stopping = asyncio.Event()
        self._last_status = ""
        self._shown: StateChanged | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.budget = TokenBudget(self.state_dir, loaded.config.gemini.daily_token_budget)

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

    def _spawn(self, coro: Any, name: str) -> None:
        """A fire-and-forget task, kept referenced until it is done (the loop holds tasks only weakly)."""
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _notify(self, event: Event) -> None:
        hooks = [o.notify for o in self.observers]
        if self._mqtt is not None:
            hooks.append(self._mqtt.presence.notify)
        notify_all(hooks, event, log)

    def _on_session_event(self, event: Event) -> None:
        self._notify(event)
        if isinstance(event, _STATE_EVENTS):
            self._refresh_state()

    # ---- start, run, stop ------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Until SIGTERM/SIGINT (exit 0), the end of a file input (exit 0), or a config problem (exit 78)."""
        try:
            # The Gemini SDK is a third of start-up when this process has not imported it yet: then it is
            # imported right after READY (_warm_up), while the daemon listens; otherwise the client is built now.
            sdk_loaded = "google.genai" in sys.modules
            self._key, self._client, self._devices = await self._prepare(self.loaded, warm=sdk_loaded)
            await self._start_mqtt(self.loaded)
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
        if self._client is None:
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
        """Right after READY: the Gemini SDK, the Live client and the session module, on a thread while the
        daemon listens. A wake word heard before this is done waits for the import to finish, and its session
        builds its own client."""
        try:
            client = await asyncio.to_thread(self._warm_client, loaded)
        except Exception as exc:  # the first session builds its own client and reports what fails there
            log.warning("could not prepare the Live client: %s", exc)
            return
        if self.loaded is loaded and self._client is None:  # a reload may have built a newer one meanwhile
            self._client = client
        log.info("Live client ready")

    def _warm_client(self, loaded: Loaded) -> Any:
        from .live import session  # noqa: F401  (imported here, off the event loop)

        return warm_client(loaded, self._key)

    async def _start_mqtt(self, loaded: Loaded) -> None:
        cfg = loaded.config
        link, engine = tool_stack(loaded.registry, cfg.mqtt, self._notify, will=Presence.will(cfg))
        presence = Presence(link, cfg, self)
        arbiter = Arbiter(link, cfg, report=self._notify)
        link.add_connect_hook(self._update_status)
        task = asyncio.create_task(link.run(), name="mqtt")
        self._mqtt = MqttSide(link, engine, presence, arbiter, task)
        await presence.start()
        await arbiter.start()
        await link.wait_attempted(2.0)  # READY's status line must say whether the broker is there

    async def _stop_mqtt(self, timeout: float | None = None) -> None:
        mqtt, self._mqtt = self._mqtt, None
        if mqtt is not None:
            await mqtt.stop(timeout)

    async def _teardown(self) -> None:
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
        if self.loaded.config.conversation.barge_in != "voice" and self._model_audible():
            return
        self.session.feed(frame.pcm)
        self._fed_until = frame.end

    def _on_wake(self, det: Detection) -> None:
        log.info("wake word %s (score %.2f) at %.2fs", det.word, det.score, det.seconds)
        self._notify(WakeHeard(det.word, det.score, det.position, det.seconds))
        start = det.position - int(self.loaded.config.wake.preroll * SAMPLE_RATE)
        if self.phase is Phase.LISTENING:
            self._set_phase(Phase.CLAIMING)
            self._spawn(self._begin(det, start), "begin")
        elif self.phase is Phase.CONVERSATION and self.session is not None:
            policy = self.loaded.config.conversation.barge_in
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
        mqtt = self._mqtt
        if mqtt is not None and self.loaded.config.assistant.arbitration.enabled:
            won = await mqtt.arbiter.claim(det.word, det.score)
            if not won:
                log.info("another satellite answers this %s", det.word)
                self._set_phase(Phase.LISTENING)
                return
        if self._stopping.is_set():
            return
        if self._refuse_over_budget("wake"):
            return
        self._open_session(trigger="wake", start=start, word=det.word, opened_at=heard_at)

    def _refuse_over_budget(self, trigger: str) -> bool:
        """Past gemini.daily_token_budget: a short spoken refusal instead of a session."""
        if not self.budget.exhausted:
            return False
        why = f"today's token budget is spent ({self.budget.today} of {self.budget.limit})"
        log.warning("%s not answered: %s", trigger, why)
        self._notify(Refused(trigger, why))
        self._set_phase(Phase.LISTENING)
        self._spawn(self._apologise("budget"), "apologise")
        return True

    async def _apologise(self, what: str) -> None:
        """The error cue, then a short sentence where espeak-ng is installed."""
        self.speaker.play(error_earcon())
        sentence = await asyncio.to_thread(spoken, SORRY[what], OUTPUT_RATE)
        if sentence is not None:
            self.speaker.play(sentence)

    # ---- conversations ---------------------------------------------------------------------------------------

    def _open_session(
        self, trigger: str, start: int | None = None, text: str | None = None, word: str = "",
        opened_at: float | None = None,
    ) -> None:
        from .live.session import LiveSession  # imported by _warm_up after READY; waits for it if still under way

        assert self._mqtt is not None
        cfg = self.loaded.config
        session = LiveSession(
            cfg.gemini,
            cfg.conversation,
            self._mqtt.engine,
            self.loaded.registry.declarations(),
            key=self._key,
            speaker=self.speaker,
            observer=self._on_session_event,
            client=self._client,
            name=str(self.sessions + 1),
            opened_at=opened_at,
        )
        if cfg.conversation.earcons:
            tone = wake_earcon()
            self.speaker.play(tone)
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
            if not self._stopping.is_set():
                if failed:
                    self._spawn(self._apologise("failed"), "apologise")
                elif self.loaded.config.conversation.earcons:
                    self.speaker.play(end_earcon())
            await self.wake.reset()  # nothing heard during the conversation may fire afterwards
            if result is None:
                self._notify(SessionEnded("error", "", 0.0, 0))
            else:
                self.budget.add(result.tokens)
                self._notify(
                    SessionEnded(result.reason, result.detail, result.duration, result.tool_calls, result.tokens)
                )
            self._set_phase(Phase.LISTENING)
            if not self._stopping.is_set():
                log.info("back to listening for %s", ", ".join(w.name for w in self.loaded.config.wake.words))
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

    async def start_conversation(self, text: str | None = None) -> None:
        if self.session is not None:
            if text:
                self.session.send_text(text)
            return
        if self.phase is Phase.LISTENING and not self._refuse_over_budget("command"):
            self._open_session(trigger="command", text=text)

    async def end_conversation(self) -> None:
        if self.session is not None:
            self.session.stop("stopped", "ended by command")

    def set_muted(self, muted: bool) -> None:
        self.muted = muted
        log.info("microphone %s", "muted" if muted else "unmuted")
        self._refresh_state()

    async def reload(self) -> None:
        """A reload in a task of the daemon's own: a reload that rebuilds MQTT stops the very presence whose
        command task asked for it, and must not be cancelled with that task."""
        task = asyncio.create_task(self._reload(), name="reload")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        await asyncio.shield(task)

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
        self.budget.limit = new.config.gemini.daily_token_budget
        old_devices, self._devices = self._devices, devices  # the listener moves to a new input by itself
        if old_devices is not None:
            await old_devices.close(keep=devices)
        cfg, was = new.config, old.config
        if (cfg.mqtt, cfg.assistant, cfg.tools) != (was.mqtt, was.assistant, was.tools):
            await self._stop_mqtt(timeout=1.0)
            await self._start_mqtt(new)
        elif self._mqtt is not None:
            self._mqtt.presence.reconfigure(cfg)
        self.loaded = new
        log.info("configuration reloaded from %s", new.path)
        self._notify(Reloaded())
        self._refresh_state()

    # ---- state and status ------------------------------------------------------------------------------------

    def _set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self._refresh_state()

    @property
    def state(self) -> str:
        """idle (waiting for the wake word) → listening (heard it; deciding who answers) → connecting →
        conversation ⇄ speaking, or muted (one of events.STATES)."""
        if self.muted and self.phase is not Phase.CONVERSATION:
            return "muted"
        if self.phase is Phase.CLAIMING:
            return "listening"
        if self.phase is Phase.CONVERSATION:
            session = self.session
            if session is None or not session.connected:
                return "connecting"
            return "speaking" if session.speaking else "conversation"
        return "idle"

    def _refresh_state(self) -> None:
        """Tell the observers the state whenever it, or the mute switch, changed."""
        shown = StateChanged(self.state, self.muted)
        if shown != self._shown:
            self._shown = shown
            self._notify(shown)
        self._update_status()

    def _status(self) -> str:
        words = ", ".join(w.name for w in self.loaded.config.wake.words)
        if self.muted:
            line = "microphone muted"
        elif self.phase is Phase.CONVERSATION:
            calls = self.session.tool_calls if self.session else 0
            line = f"in conversation: {calls} tool call{'s' if calls != 1 else ''}"
        elif self.phase is Phase.CLAIMING:
            line = "wake word heard, deciding which satellite answers"
        else:
            line = f"listening for {words}"
        problems = []
        if self._mqtt is not None and not self._mqtt.link.connected:
            problems.append("MQTT broker unreachable, retrying")
        if self._devices is not None and getattr(self._devices.mic, "unavailable", False):
            problems.append("microphone unavailable, retrying")
        return "; ".join([line, *problems])

    def _update_status(self) -> None:
        line = self._status()
        if line != self._last_status:
            self._last_status = line
            self.notifier.status(line)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(STATUS_EVERY)
            self._update_status()


def run(config_path: Path, options: Options) -> int:
    """`livehome run`: exit 78 on a config that cannot work (every problem at once, as `check` shows them), 0 on
    a clean stop."""
    from .preflight import preflight

    try:
        loaded = load(config_path)
    except ConfigError as exc:
        log.error("invalid configuration %s:\n  %s", config_path, "\n  ".join(str(p) for p in exc.problems))
        return EX_CONFIG
    for warning in loaded.warnings:
        log.warning("%s", warning)
    problems = preflight(loaded, input_override=options.input, output_override=options.output, load_models=False)
    if problems:
        log.error("cannot start with %s:\n  %s", config_path, "\n  ".join(str(p) for p in problems))
        return EX_CONFIG
    return asyncio.run(Daemon(loaded, options).run())
