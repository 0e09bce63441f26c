"""The discovery data on the broker, watched for as long as the MQTT link runs, and tools made from a snapshot
of it.

The snapshot is the audited part: the tools (and so the topics a call can reach) change only when `take()` is
called, at start-up once the broker has handed over its retained messages, on a reload, or on an explicit
`refresh`. Between snapshots the data is still followed, only to say what changed: a device that appears is
logged (and stays unreachable), and a device that disappears makes its calls fail with a clear reason.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from ..logs import logger
from ..mqtt.link import Message, MqttLink
from .discover import Built, Discover, build
from .found import Found
from .hass import read_entities
from .registry import Registry, SpecError, Tool, compile_tool
from .spec import ToolSpec
from .zigbee import read_devices

log = logger(__name__)

DISCOVERY_MAX_BYTES = 4 * 1024 * 1024  # zigbee2mqtt's device list: about 6 kB a device, so room for ~600
MAX_CONFIGS = 5000  # Home Assistant discovery configs kept per source
LOOK_AFTER = 0.5  # seconds of quiet after a change before it is looked at


class Snapshots:
    """Follows the sources' retained data on one link; `take()` makes tools from what it holds now."""

    def __init__(self, sources: Iterable[Discover], link: MqttLink) -> None:
        self.sources = list(sources)
        self.devices: dict[int, Any] = {}  # zigbee2mqtt source → its last device list
        self.configs: dict[int, dict[str, bytes]] = {i: {} for i in range(len(self.sources))}
        self.built: Built | None = None
        self.tools: list[Tool] = []
        self._told: set[tuple[int, str]] = set()
        self._look: asyncio.TimerHandle | None = None
        for index, source in enumerate(self.sources):
            for topic_filter in source.filters:
                if source.discover == "zigbee2mqtt":
                    link.handle(topic_filter, self._devices_of(index), DISCOVERY_MAX_BYTES)
                else:
                    link.handle(topic_filter, self._config_of(index))

    @property
    def taken(self) -> bool:
        return self.built is not None

    def _devices_of(self, index: int):
        def on_message(msg: Message) -> None:
            if msg.truncated:
                log.warning("%s is larger than %d bytes; ignored", msg.topic, DISCOVERY_MAX_BYTES)
                return
            try:
                self.devices[index] = json.loads(msg.payload) if msg.payload else []
            except ValueError as exc:
                log.warning("%s is not JSON (%s); ignored", msg.topic, exc)
                return
            self._changed()

        return on_message

    def _config_of(self, index: int):
        def on_message(msg: Message) -> None:
            configs = self.configs[index]
            if not msg.payload:
                configs.pop(msg.topic, None)  # an empty retained config removes the entity
            elif msg.topic in configs or len(configs) < MAX_CONFIGS:
                configs[msg.topic] = msg.payload
            else:
                log.warning("more than %d discovery configs under %s; %s ignored", MAX_CONFIGS,
                            self.sources[index].base, msg.topic)  # fmt: skip
                return
            self._changed()

        return on_message

    # ---- reading the data ------------------------------------------------------------------------------------

    def found(self) -> tuple[list[tuple[int, Found]], list[str]]:
        out: list[tuple[int, Found]] = []
        notes: list[str] = []
        with_zigbee2mqtt = any(s.discover == "zigbee2mqtt" for s in self.sources)
        for index, source in enumerate(self.sources):
            if source.discover == "zigbee2mqtt":
                if index not in self.devices:
                    notes.append(f"nothing on {source.where} (is zigbee2mqtt running, with this base_topic?)")
                    continue
                items, skipped = read_devices(self.devices[index], source.base)
            else:
                items, skipped = read_entities(self.configs[index], source.base, skip_zigbee2mqtt=with_zigbee2mqtt)
            out += [(index, item) for item in items]
            notes += skipped
        return out, notes

    def present(self, index: int) -> set[str]:
        """The keys of what the source's data holds now (friendly names, config topics)."""
        if self.sources[index].discover == "homeassistant":
            return set(self.configs[index])
        devices = self.devices.get(index)
        return {d["friendly_name"] for d in devices if isinstance(d, dict) and isinstance(d.get("friendly_name"), str)
                and not d.get("disabled")} if isinstance(devices, list) else set()  # fmt: skip

    # ---- snapshots -------------------------------------------------------------------------------------------

    def take(self) -> tuple[list[Tool], Built]:
        """Tools from the data held now. A device whose messages cannot be made safe is left out and said so."""
        found, notes = self.found()
        built = build(found, self.sources, notes)
        tools = compile_built(built)
        self.built, self.tools = built, tools
        self._told = {key for key in built.keys.values()}
        self._mark_gone()
        return tools, built

    def _changed(self) -> None:
        """After the snapshot, a change is looked at once the data has been quiet for a moment: a broker
        handing over thousands of configs again (Home Assistant restarting) costs one look, not thousands."""
        if self.built is None:
            return
        if self._look is not None:
            self._look.cancel()
        self._look = asyncio.get_running_loop().call_later(LOOK_AFTER, self._look_again)

    def _look_again(self) -> None:
        self._look = None
        self._mark_gone()
        found, _ = self.found()
        for index, item in found:
            if (index, item.key) not in self._told and self.sources[index].takes(item) is None:
                self._told.add((index, item.key))
                log.info("%s (%s) appeared on %s; it is not reachable until the tools are refreshed (the refresh "
                         "command, or a reload)", item.name, item.kind, self.sources[index].where)  # fmt: skip

    def _mark_gone(self) -> None:
        assert self.built is not None
        present = {index: self.present(index) for index in range(len(self.sources))}
        for tool in self.tools:
            for device, variant in tool.variants.items():
                index, key = self.built.keys[(tool.name, device)]
                where = self.sources[index].where
                variant.gone = None if key in present[index] else (
                    f"{device} is no longer in {where}: it was removed after the tools were made (refresh to update "
                    "them)"
                )


def compile_built(built: Built) -> list[Tool]:
    """Each built tool compiled; a device that does not compile (a topic with a wildcard in a friendly name, say)
    is dropped with a warning and the rest of its tool is kept."""
    tools = []
    for raw in built.tools:
        for _ in range(2):
            try:
                tools.append(compile_tool(ToolSpec.model_validate(raw)))
                break
            except SpecError as exc:
                bad = {w[1] for w, _ in exc.problems if len(w) > 1 and w[0] == "devices"}
                for where, message in exc.problems:
                    log.warning("discovered %s left out: %s", " ".join(map(str, where[1:2])) or raw["name"], message)
                    built.left_out.append(f"{where[1] if len(where) > 1 else raw['name']}: {message}")
                raw = {**raw, "devices": {k: v for k, v in raw["devices"].items() if k not in bad}}
                if not bad or not raw["devices"]:
                    break
            except ValidationError as exc:
                log.warning("discovered tool %s left out: %s", raw["name"], exc)
                break
    return tools


def merged(static: Registry, tools: list[Tool]) -> Registry:
    """The config's own tools and the discovered ones; a discovered tool never replaces a configured one."""
    return Registry([*static.tools.values(), *(t for t in tools if t.name not in static)])
