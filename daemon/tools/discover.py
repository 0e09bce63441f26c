"""Tools from what the broker already knows: the config's `discover:` sources, and how the devices they find
become a few well-described tools (one `set_light` whose `light` is any of the lights found, one `read_sensor`…).

The tools are ordinary tool specs with `devices:` (so `livehome discover` prints YAML that loads as it is), and
the topic set is computed from them like any other: a device is reachable only once it is in a snapshot.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator

from ..schema import StrictModel, topic_problem
from .found import COLOURS, DEFAULT_KINDS, KINDS, SENSITIVE_KINDS, TEMPERATURES, Found, Kind

MAX_DEVICES_PER_TOOL = 200
MAX_NAME = 100
MAX_DESCRIPTION = 2000
DEFAULT_BASE = {"zigbee2mqtt": "zigbee2mqtt", "homeassistant": "homeassistant"}


class Discover(StrictModel):
    """A `tools:` entry that makes tools from the broker's discovery data."""

    discover: Literal["zigbee2mqtt", "homeassistant"] = Field(description="whose discovery data to read")
    base_topic: str | None = Field(
        default=None, description="zigbee2mqtt's base topic, or Home Assistant's discovery prefix (the defaults)"
    )
    allow: list[str] | None = Field(
        default=None, max_length=200, description="friendly names or globs; default: every device of the kinds"
    )
    deny: list[str] = Field(default_factory=list, max_length=200, description="names or globs left out")
    kinds: list[Kind] = Field(
        default_factory=lambda: list(DEFAULT_KINDS),
        description="what to make tools for; locks, alarms and garage doors come only when named exactly in allow",
    )

    @field_validator("base_topic")
    @classmethod
    def _topic(cls, v: str | None) -> str | None:
        if v is not None and (problem := topic_problem(v) or ("ends with /" if v.endswith("/") else None)):
            raise ValueError(f"base_topic: {problem}")
        return v

    @field_validator("allow", "deny")
    @classmethod
    def _patterns(cls, v: list[str] | None) -> list[str] | None:
        for pattern in v or []:
            if not pattern or len(pattern) > MAX_NAME:
                raise ValueError(f"'{pattern[:40]}': a name or glob of 1 to {MAX_NAME} characters")
        return v

    @property
    def base(self) -> str:
        return self.base_topic or DEFAULT_BASE[self.discover]

    @property
    def filters(self) -> list[str]:
        """The topics its data is on (device lists and discovery configs are retained there)."""
        if self.discover == "zigbee2mqtt":
            return [f"{self.base}/bridge/devices"]
        return [f"{self.base}/+/+/config", f"{self.base}/+/+/+/config"]

    @property
    def where(self) -> str:
        return f"{self.base}/bridge/devices" if self.discover == "zigbee2mqtt" else f"{self.base}/…/config"

    def takes(self, item: Found) -> str | None:
        """Why this source leaves the device out, or None to take it."""
        name = item.name.casefold()
        if item.kind in SENSITIVE_KINDS:
            if not any(p.casefold() == name for p in self.allow or []):
                return f"a {item.kind}: only when named exactly in allow"
        elif item.kind not in self.kinds:
            return f"kind {item.kind} is not in kinds"
        elif self.allow is not None and not any(fnmatch.fnmatchcase(name, p.casefold()) for p in self.allow):
            return "not in allow"
        if any(fnmatch.fnmatchcase(name, p.casefold()) for p in self.deny):
            return "denied"
        return None


@dataclass(frozen=True)
class ToolKind:
    tool: str
    chooser: str
    says: str
    parameters: dict[str, dict[str, Any]]
    sensitive: bool = False


_ON_OFF = {"type": "string", "enum": ["on", "off"]}
KIND_TOOLS: dict[str, ToolKind] = {
    "light": ToolKind("set_light", "light", "Switch a light on or off, dim it, or change its colour temperature or "
                      "colour. Give only what the user asked to change.", {
        "state": _ON_OFF,
        "brightness": {"type": "integer", "minimum": 0, "maximum": 100, "description": "percent (0 is off)"},
        "color_temp": {"type": "string", "enum": list(TEMPERATURES), "description": "white from cool to warm"},
        "color": {"type": "string", "enum": list(COLOURS)},
    }),
    "switch": ToolKind("set_switch", "switch", "Switch a plug, relay or wall switch on or off.", {"state": _ON_OFF}),
    "cover": ToolKind("set_cover", "cover", "Open, close or stop a blind, shutter or curtain, or move it to a "
                      "position.", {
        "action": {"type": "string", "enum": ["open", "close", "stop"]},
        "position": {"type": "integer", "minimum": 0, "maximum": 100, "description": "percent open (100 = open)"},
    }),
    "climate": ToolKind("set_climate", "thermostat", "Set a thermostat's target temperature or its mode.", {
        "temperature": {"type": "number", "description": "target temperature"},
        "mode": {"type": "string"},
    }),
    "fan": ToolKind("set_fan", "fan", "Switch a fan on or off, or set its mode.",
                    {"state": _ON_OFF, "mode": {"type": "string"}}),
    "sensor": ToolKind("read_sensor", "sensor", "Read a sensor's last reported values (answers with their age).", {}),
    "lock": ToolKind("set_lock", "lock", "Lock or unlock a door lock.",
                     {"action": {"type": "string", "enum": ["lock", "unlock"]}}, sensitive=True),
    "garage": ToolKind("set_garage_door", "door", "Open, close or stop a garage door or gate.",
                       {"action": {"type": "string", "enum": ["open", "close", "stop"]}}, sensitive=True),
    "alarm": ToolKind("set_alarm", "alarm", "Arm or disarm an alarm panel.",
                      {"action": {"type": "string", "enum": ["arm_away", "arm_home", "disarm"]}}, sensitive=True),
}  # fmt: skip
TOOL_OF_KIND = {kind: KIND_TOOLS["sensor" if kind == "binary_sensor" else kind] for kind in KINDS}
DISCOVERED_TOOL_NAMES = tuple(sorted({k.tool for k in KIND_TOOLS.values()}))


@dataclass
class Built:
    """What one snapshot of the discovery data makes: tool specs (as YAML would hold them), and the report."""

    tools: list[dict[str, Any]] = field(default_factory=list)
    keys: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)  # (tool, device) → (source, key)
    left_out: list[str] = field(default_factory=list)

    @property
    def devices(self) -> int:
        return sum(len(t["devices"]) for t in self.tools)


def build(found: list[tuple[int, Found]], sources: list[Discover], left_out: list[str] | None = None) -> Built:
    """Group what every source found into one tool per kind. `found` pairs each find with its source's index."""
    out = Built(left_out=list(left_out or []))
    by_tool: dict[str, list[tuple[int, Found]]] = {}
    for index, item in found:
        why = sources[index].takes(item)
        if why is None and not _speakable(item.name):
            why = "its name has control characters or is too long"
        if why is not None:
            out.left_out.append(f"{item.name} ({item.kind}): {why}")
            continue
        by_tool.setdefault(TOOL_OF_KIND[item.kind].tool, []).append((index, item))
    for kind in KIND_TOOLS.values():
        items = by_tool.get(kind.tool, [])
        if items:
            out.tools.append(_tool(kind, items, out))
    return out


def _speakable(name: str) -> bool:
    return 0 < len(name) <= MAX_NAME and name.strip() == name and all(c.isprintable() for c in name)


def _tool(kind: ToolKind, items: list[tuple[int, Found]], out: Built) -> dict[str, Any]:
    devices: dict[str, dict[str, Any]] = {}
    lines = []
    for index, item in items:
        name = item.name
        if name in devices:  # the same name from two sources or two kinds of sensor: say which
            name = f"{item.name} ({item.origin})"
        n = 2
        while name in devices:
            name, n = f"{item.name} {n}", n + 1
        if len(devices) == MAX_DEVICES_PER_TOOL:
            out.left_out.append(f"{item.name}: more than {MAX_DEVICES_PER_TOOL} devices for {kind.tool}")
            continue
        devices[name] = item.device
        out.keys[(kind.tool, name)] = (index, item.key)
        lines.append(f"{name} ({item.describe})" if item.describe else name)
    parameters: dict[str, Any] = {kind.chooser: {"type": "string", "description": f"which {kind.chooser}"}}
    for pname, base in kind.parameters.items():
        used = [d["parameters"][pname] or {} for d in devices.values() if pname in d.get("parameters", {})]
        if used:
            parameters[pname] = _widest(base, used)
    description = f"{kind.says} The {kind.chooser} is one of: {'; '.join(lines)}."
    if len(description) > MAX_DESCRIPTION:
        description = description[: MAX_DESCRIPTION - 1] + "…"
    spec: dict[str, Any] = {"name": kind.tool, "description": description, "parameters": parameters,
                            "required": [kind.chooser], "device_parameter": kind.chooser}  # fmt: skip
    others = [p for p in parameters if p != kind.chooser]
    if len(others) == 1:
        spec["required"].append(others[0])
    elif others:
        spec["any_of"] = others
    if kind.sensitive:
        spec["sensitive"] = spec["voice_only"] = True
    spec["devices"] = devices
    return spec


def _widest(base: dict[str, Any], used: list[dict[str, Any]]) -> dict[str, Any]:
    """The tool-level parameter: what any device takes (the devices' own maps and ranges narrow it per call)."""
    out = dict(base)
    names = [name for u in used for name in (u.get("map") or {})]
    if names and "enum" not in base:
        out["enum"] = list(dict.fromkeys(names))
    elif names:
        out["enum"] = [v for v in base["enum"] if v in names]
    lows = [u["minimum"] for u in used if "minimum" in u]
    highs = [u["maximum"] for u in used if "maximum" in u]
    if lows and "minimum" not in base:
        out["minimum"] = min(lows)
    if highs and "maximum" not in base:
        out["maximum"] = max(highs)
    return out
