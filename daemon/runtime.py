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
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .arbiter import Arbiter
from .audio import SAMPLE_RATE, AudioError, AudioSink, Frame, InputStream, open_input, open_output
from .calls import EngineEvent
from .config import EX_CONFIG, Loaded, load
from .earcons import end_earcon, wake_earcon
from .live.client import SetupError, api_key, make_client
from .live.session import LiveSession, SessionResult
from .live.setup import connect_config
from .mqtt import MqttLink
from .presence import Presence
from .service import Notifier, install_signal_handlers, watchdog
from .tools.engine import Engine
from .wake import AsyncWakeDetector, Detection, PrerollBuffer, WakeModelError
from .yamlsrc import ConfigError

log = logging.getLogger(__name__)

SHUTDOWN_SETTLE = 2.0  # SIGTERM must end the process within 5 s, tool calls included
STATUS_EVERY = 2.0


class Phase(enum.Enum):
    LISTENING = "listening"
    CLAIMING = "claiming"  # heard the wake word; asking the other satellites who answers
    CONVERSATION = "conversation"


class Observer(Protocol):
    """Who watches the daemon (MQTT presence, the demo's trace): every hook is optional."""

    def daemon_event(self, kind: str, data: dict[str, Any]) -> None: ...
    def session_event(self, kind: str, data: dict[str, Any]) -> None: ...
    def tool_event(self, event: EngineEvent) -> None: ...


class Claimer(Protocol):
    """Decides, with the other satellites, whether this one answers a wake word (daemon.arbiter.Arbiter)."""

    async def claim(self, word: str, score: float) -> bool: ...


@dataclass
class Options:
    input: str | None = None  # --input -|FILE
    output: str | None = None  # --output FILE.wav|none


class Daemon:
    def __init__(self, loaded: Loaded, options: Options | None = None, notifier: Notifier | None = None) -> None:
        self.loaded = loaded
        self.options = options or Options()
        self.notifier = notifier or Notifier()
        self.observers: list[Any] = []
        self.claimer: Claimer | None = None
        self.phase = Phase.LISTENING
        self.muted = False
        self.session: LiveSession | None = None
        self.sessions = 0
        self.link: MqttLink | None = None
        self.engine: Engine | None = None
        self.wake: AsyncWakeDetector | None = None
        self.mic: InputStream | None = None
        self.speaker: AudioSink | None = None
        self.preroll = PrerollBuffer(10.0)
        self.presence: Presence | None = None
        self._key = ""
        self._client: Any = None
        self._fed_until = 0  # stream position up to which the microphone went to the current session
        self._open_mic_until = 0.0  # the mic stays open until then, whatever the speaker plays (earcon, flush tail)
        self._session_task: asyncio.Task[None] | None = None
        self._pending: Loaded | None = None
        self._stopping = asyncio.Event()
        self._link_task: asyncio.Task[None] | None = None
        self._last_status = ""
        self._background: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any, name: str) -> None:
        """A fire-and-forget task, kept referenced until it is done (the loop holds tasks only weakly)."""
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- observers -------------------------------------------------------------------------------------------

    def _observers(self) -> list[Any]:
        return [*self.observers, self.presence] if self.presence is not None else self.observers

    def _emit(self, kind: str, **data: Any) -> None:
        for o in self._observers():
            hook = getattr(o, "daemon_event", None)
            if hook:
                _safe(hook, kind, data)

    def _session_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind in ("connected", "speaking", "reconnecting"):
            self._update_status()
        for o in self._observers():
            hook = getattr(o, "session_event", None)
            if hook:
                _safe(hook, kind, data)

    def _tool_event(self, event: EngineEvent) -> None:
        for o in self._observers():
            hook = getattr(o, "tool_event", None)
            if hook:
                _safe(hook, event)

    # ---- start, run, stop ------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Until SIGTERM/SIGINT (exit 0), the end of a file input (exit 0), or a config problem (exit 78)."""
        try:
            await self._build(self.loaded)
        except (SetupError, WakeModelError, AudioError) as exc:
            log.error("cannot start: %s", exc)
            await self._teardown()
            return EX_CONFIG
        remove_signals = install_signal_handlers(self._on_sighup, self.stop)
        watchdog_task = asyncio.create_task(watchdog(self.notifier), name="watchdog")
        status_task = asyncio.create_task(self._status_loop(), name="status")
        self.notifier.ready(self._status())
        log.info("ready: %s", self._status())
        self._emit("ready")
        listener = asyncio.create_task(self._listen(), name="listen")
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
            self._emit("stopped")
            await self._teardown()
        return 0

    def stop(self) -> None:
        self._stopping.set()

    async def _build(self, loaded: Loaded) -> None:
        """Everything the daemon needs to do its job; raises what makes that impossible."""
        cfg = loaded.config
        self._key = api_key(cfg.gemini)
        self._client = await asyncio.to_thread(_warm_client, loaded, self._key)
        self.wake = await AsyncWakeDetector.create(cfg.wake)
        self.speaker = open_output(cfg.audio.output, self.options.output, cfg.audio.retry_delay)
        await self.speaker.start()
        self.mic = open_input(cfg.audio.input, self.options.input, cfg.audio.retry_delay)
        await self.mic.start()
        await self._start_tools(loaded)

    async def _start_tools(self, loaded: Loaded) -> None:
        """The MQTT link, the tool engine on it, and the daemon's own presence and arbitration there."""
        cfg = loaded.config
        self.link = MqttLink(cfg.mqtt, will=Presence.will(cfg))
        self.link.watch(loaded.registry.watched)
        self.engine = Engine(loaded.registry, self.link, self._tool_event)
        self.presence = Presence(self.link, cfg, self)
        arbiter = Arbiter(self.link, cfg, report=self.presence.event)
        self.claimer = arbiter if cfg.assistant.arbitration.enabled else None
        self.link.add_connect_hook(self._update_status)
        self._link_task = asyncio.create_task(self.link.run(), name="mqtt")
        await self.presence.start()
        await arbiter.start()
        await self.link.wait_attempted(2.0)  # READY's status line must say whether the broker is there

    async def _stop_tools(self, timeout: float | None = None) -> None:
        if self.presence is not None:
            await self.presence.stop(timeout)  # offline (retained) before a clean disconnect, which sends no will
            self.presence = None
        if self._link_task is not None:
            self._link_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._link_task
            self._link_task = None

    async def _teardown(self) -> None:
        if self.mic is not None:
            await self.mic.aclose()
        if self.speaker is not None:
            await self.speaker.aclose()
        if self.wake is not None:
            self.wake.close()
        await self._stop_tools(timeout=1.0)

    # ---- the microphone loop ---------------------------------------------------------------------------------

    async def _listen(self) -> None:
        while True:
            mic = self.mic
            assert mic is not None
            async for frame in mic:
                self.preroll.append(frame)
                if self.muted:
                    continue
                if self.phase is Phase.CONVERSATION and self.session is not None:
                    self._forward(frame)
                assert self.wake is not None
                for detection in await self.wake.process(frame):
                    self._on_wake(detection)
            if mic is self.mic:
                log.info("%s ended", mic.description)
                return
            self.preroll.clear()  # a reload swapped the input: its positions start again

    def _model_audible(self) -> bool:
        assert self.speaker is not None
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
        self._emit("wake", word=det.word, score=det.score, position=det.position, seconds=det.seconds)
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
                self._emit(
                    "barge_in",
                    word=det.word,
                    fed_from=frames[0].position if frames else None,
                    stream_position=stream_position,
                )

    async def _begin(self, det: Detection, start: int) -> None:
        if self.claimer is not None:
            won = await self.claimer.claim(det.word, det.score)
            if not won:
                log.info("another satellite answers this %s", det.word)
                self._set_phase(Phase.LISTENING)
                return
        if self._stopping.is_set():
            return
        self._open_session(trigger="wake", start=start, word=det.word)

    # ---- conversations ---------------------------------------------------------------------------------------

    def _open_session(self, trigger: str, start: int | None = None, text: str | None = None, word: str = "") -> None:
        assert self.speaker is not None and self.engine is not None
        cfg = self.loaded.config
        session = LiveSession(
            cfg.gemini,
            cfg.conversation,
            self.engine,
            self.loaded.registry.declarations(),
            key=self._key,
            speaker=self.speaker,
            observer=self._session_event,
            client=self._client,
            name=str(self.sessions + 1),
        )
        if cfg.conversation.earcons:
            tone = wake_earcon()
            self.speaker.play(tone)
            self._open_mic_until = time.monotonic() + len(tone) / 48000 + 0.1
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
        self._emit("session_started", trigger=trigger, word=word, fed_from=fed_from, number=self.sessions)
        self._session_task = asyncio.create_task(self._converse(session), name=f"session-{self.sessions}")

    async def _converse(self, session: LiveSession) -> None:
        result: SessionResult | None = None
        try:
            result = await session.run()
        finally:
            self.session = None
            assert self.speaker is not None
            if self.loaded.config.conversation.earcons and not self._stopping.is_set():
                self.speaker.play(end_earcon())
            if self.wake is not None:
                await self.wake.reset()  # nothing heard during the conversation may fire afterwards
            self._emit(
                "session_ended",
                reason=result.reason if result else "error",
                detail=result.detail if result else "",
                duration=result.duration if result else 0.0,
                tool_calls=result.tool_calls if result else 0,
            )
            self._set_phase(Phase.LISTENING)
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

    # ---- what MQTT commands ask for (daemon.presence.Controller) ---------------------------------------------

    async def start_conversation(self, text: str | None = None) -> None:
        if self.session is not None:
            if text:
                self.session.send_text(text)
            return
        if self.phase is Phase.LISTENING:
            self._open_session(trigger="command", text=text)

    async def end_conversation(self) -> None:
        if self.session is not None:
            self.session.stop("stopped", "ended by command")

    def set_muted(self, muted: bool) -> None:
        self.muted = muted
        log.info("microphone %s", "muted" if muted else "unmuted")
        self._set_phase(self.phase)

    async def reload(self) -> None:
        await self._reload()

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
            self._emit("reload_refused", problems=[str(p) for p in problems])
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
        wake = speaker = mic = None
        try:
            if new.config.wake != old.config.wake:
                wake = await AsyncWakeDetector.create(new.config.wake)
            if new.config.audio != old.config.audio:
                speaker, mic = await self._open_audio(new)
            key = api_key(new.config.gemini)
            client = await asyncio.to_thread(_warm_client, new, key)
        except (WakeModelError, AudioError, SetupError) as exc:
            log.error("reload failed, still running on the previous configuration: %s", exc)
            if wake is not None:
                wake.close()
            for device in (speaker, mic):
                if device is not None:
                    await device.aclose()
            return
        self._key, self._client = key, client
        if wake is not None:
            old_wake, self.wake = self.wake, wake
            if old_wake is not None:
                old_wake.close()
        if speaker is not None:
            old_speaker, self.speaker = self.speaker, speaker
            if old_speaker is not None:
                await old_speaker.aclose()
        if mic is not None:  # the listener moves to the new input by itself
            old_mic, self.mic = self.mic, mic
            if old_mic is not None:
                await old_mic.aclose()
        rebuild = (new.config.mqtt, new.config.assistant, new.config.tools) != (
            old.config.mqtt,
            old.config.assistant,
            old.config.tools,
        )
        if rebuild:
            await self._stop_tools(timeout=1.0)
            await self._start_tools(new)
        elif self.presence is not None:
            self.presence.reconfigure(new.config)
        self.loaded = new
        log.info("configuration reloaded from %s", new.path)
        self._emit("reloaded")

    async def _open_audio(self, new: Loaded) -> tuple[AudioSink | None, InputStream | None]:
        """The devices the new audio settings name (not those --input/--output override); not yet in use."""
        cfg = new.config.audio
        speaker = mic = None
        try:
            if not self.options.output:
                speaker = open_output(cfg.output, None, cfg.retry_delay)
                await speaker.start()
            if not self.options.input:
                mic = open_input(cfg.input, None, cfg.retry_delay)
                await mic.start()
        except AudioError:
            if speaker is not None:
                await speaker.aclose()
            raise
        if speaker is not None or mic is not None:
            log.info("audio settings changed: devices reopened")
        return speaker, mic

    # ---- state and status ------------------------------------------------------------------------------------

    def _set_phase(self, phase: Phase) -> None:
        self.phase = phase
        self._emit("state", state=self.state)
        self._update_status()

    @property
    def state(self) -> str:
        """idle (waiting for the wake word) → listening (heard it; deciding who answers) → connecting →
        conversation ⇄ speaking, or muted. The session's own events refine the conversation part."""
        if self.muted and self.phase is not Phase.CONVERSATION:
            return "muted"
        if self.phase is Phase.CLAIMING:
            return "listening"
        if self.phase is Phase.CONVERSATION:
            session = self.session
            if session is None or not session.connected:
                return "connecting"
            return "speaking" if self.speaker is not None and self._model_audible() else "conversation"
        return "idle"

    def _status(self) -> str:
        words = ", ".join(
            w.model.rsplit("/", 1)[-1].removesuffix(".tflite").removesuffix(".onnx")
            for w in self.loaded.config.wake.words
        )
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
        if self.link is not None and not self.link.connected:
            problems.append("MQTT broker unreachable, retrying")
        if getattr(self.mic, "unavailable", False):
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


def _warm_client(loaded: Loaded, key: str) -> Any:
    """The Live client, and one throw-away connect config: both cost tens of milliseconds the first time, which
    must not be spent between the wake word and the first audio byte."""
    connect_config(loaded.config.gemini, loaded.registry.declarations())
    return make_client(loaded.config.gemini, key)


def _safe(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("observer %r failed", fn)


def run(config_path: Path, options: Options) -> int:
    """`livehome run`: exit 78 on a config that cannot work, 0 on a clean stop."""
    try:
        loaded = load(config_path)
    except ConfigError as exc:
        log.error("invalid configuration %s:\n  %s", config_path, "\n  ".join(str(p) for p in exc.problems))
        return EX_CONFIG
    return asyncio.run(Daemon(loaded, options).run())
