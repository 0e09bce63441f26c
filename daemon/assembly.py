"""What the daemon runs on, and how a config becomes it: the devices it hears and speaks with, and its side of the
broker (the link, the tool engine, presence, arbitration). Start-up and a reload build them through the same
functions, so a reload that fails part way leaves the daemon whole on the old ones."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .audio.inputs import InputStream, open_input
from .audio.outputs import AudioSink, open_output
from .config import Config
from .credentials import SHARED_SECRET_CREDENTIAL, lookup_secret
from .events import Emit
from .live.client import make_client
from .loading import Loaded
from .logs import logger
from .mqtt.arbiter import Arbiter
from .mqtt.commands import Controller
from .mqtt.link import MqttLink
from .mqtt.presence import Presence
from .tools.engine import Engine, LocalTool
from .tools.stack import Discovered, tool_stack
from .wake import AsyncWakeDetector

log = logger(__name__)


@dataclass
class Options:
    input: str | None = None  # --input -|FILE
    output: str | None = None  # --output FILE.wav|none


@dataclass
class Devices:
    """What the daemon hears and speaks with; opened together at start, and swapped together by a reload."""

    wake: AsyncWakeDetector
    speaker: AudioSink
    mic: InputStream

    async def close(self, keep: Devices | None = None) -> None:
        """Release every device, except those `keep` goes on using."""
        if keep is None or self.mic is not keep.mic:
            await self.mic.aclose()
        if keep is None or self.speaker is not keep.speaker:
            await self.speaker.aclose()
        if keep is None or self.wake is not keep.wake:
            self.wake.close()


async def open_devices(config: Config, options: Options, current: tuple[Config, Devices] | None = None) -> Devices:
    """The devices `config` asks for. With `current` (a reload), devices whose settings did not change, and those
    --input/--output pinned, are kept. A failure closes whatever was opened here and raises: the current devices
    are never touched, so a reload that fails part way leaves the daemon whole."""
    old_config, old = current if current is not None else (None, None)
    opened: list[Any] = []
    try:
        if old is not None and old_config is not None and config.wake == old_config.wake:
            wake = old.wake
        else:
            wake = await AsyncWakeDetector.create(config.wake)
            opened.append(wake)
        audio_same = old_config is not None and config.audio == old_config.audio
        audio = config.audio
        if old is not None and (audio_same or options.output):
            speaker = old.speaker
        else:
            speaker = open_output(audio.output, options.output, audio.retry_delay)
            await speaker.start()
            opened.append(speaker)
        if old is not None and (audio_same or options.input):
            mic = old.mic
        else:
            mic = open_input(audio.input, options.input, audio.retry_delay)
            await mic.start()
            opened.append(mic)
    except BaseException:
        for device in reversed(opened):
            if isinstance(device, AsyncWakeDetector):
                device.close()
            else:
                await device.aclose()
        raise
    if old is not None and (speaker is not old.speaker or mic is not old.mic):
        log.info("audio settings changed: devices reopened")
    return Devices(wake, speaker, mic)


@dataclass
class MqttSide:
    """The daemon on the broker: the link, the tool engine publishing through it, presence and arbitration."""

    link: MqttLink
    engine: Engine
    presence: Presence
    arbiter: Arbiter
    task: asyncio.Task[None]
    discovered: Discovered | None = None  # the tools made from the broker's discovery data
    first_snapshot: asyncio.Task[Any] | None = None

    async def stop(self, timeout: float | None = None) -> None:
        if self.first_snapshot is not None:
            self.first_snapshot.cancel()
        await self.presence.stop(timeout)  # offline (retained) before a clean disconnect, which sends no will
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def open_mqtt(
    loaded: Loaded, controller: Controller, observer: Emit, local: Iterable[LocalTool], on_connect: Callable[[], None]
) -> MqttSide:
    """The daemon's side of the broker, running: tools (with those discovered once the broker's retained data is
    in), presence taking commands for `controller`, and arbitration among satellites."""
    cfg = loaded.config
    link, engine = tool_stack(loaded.registry, cfg.mqtt, observer, will=Presence.will(cfg))
    discovered = Discovered(loaded.sources, link, engine) if loaded.sources else None
    secret = shared_secret(cfg)
    for tool in local:
        engine.add_local(tool)
    presence = Presence(link, cfg, controller, secret)
    arbiter = Arbiter(link, cfg, report=observer, secret=secret)
    link.add_connect_hook(on_connect)
    side = MqttSide(link, engine, presence, arbiter, asyncio.create_task(link.run(), name="mqtt"), discovered)
    if discovered is not None:
        side.first_snapshot = asyncio.create_task(discovered.first(), name="discover")
    await presence.start()
    await arbiter.start()
    await link.wait_attempted(2.0)  # READY's status line must say whether the broker is there
    return side


def shared_secret(config: Config) -> bytes | None:
    """The satellites' shared secret, when there is one: commands and claims must then be signed with it."""
    value = lookup_secret(SHARED_SECRET_CREDENTIAL, config.assistant.shared_secret_file, "assistant.shared_secret_file")
    return value.encode() if value else None


def warm_client(loaded: Loaded, key: str, declarations: list[dict[str, Any]] | None = None) -> Any:
    """The Live client, the connect config of the next session and the SDK's first-use costs (daemon.live.setup
    .warm): tens of milliseconds the first time, which must not be spent between the wake word and the first audio
    byte. At start this runs right after READY (it imports the Gemini SDK), with the tool engine's declarations."""
    from .live.setup import warm

    warm(loaded.config.gemini, loaded.registry.declarations() if declarations is None else declarations)
    return make_client(loaded.config.gemini, key)
