"""Home Assistant MQTT discovery: the entities that show this satellite in HA, tied to its availability."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

from ..config import Config
from ..events import STATES
from .topics import EVENT_TYPES, OFFLINE, ONLINE, Topics


def version() -> str:
    try:
        return importlib.metadata.version("livehome")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def discovery(config: Config) -> dict[str, dict[str, Any]]:
    """Discovery topic → payload for each entity of this satellite, in HA's single-component format
    (<prefix>/<component>/<object_id>/config with object_id = unique_id, HA's documented best practice).
    Empty when assistant.discovery_prefix is unset."""
    a = config.assistant
    if not a.discovery_prefix:
        return {}
    t = Topics.of(config)
    uid = f"livehome_{a.id}"
    device: dict[str, Any] = {
        "identifiers": [uid],
        "name": a.name or f"livehome {a.id}",
        "manufacturer": "livehome",
        "model": "Voice satellite",
        "sw_version": version(),
    }
    if a.room:
        device["suggested_area"] = a.room
    if board := pi_model():
        device["hw_version"] = board
    common = {
        "availability_topic": t.availability,
        "payload_available": ONLINE,
        "payload_not_available": OFFLINE,
        "device": device,
        "origin": {"name": "livehome", "sw_version": version()},
        "qos": 1,
    }
    entities: dict[tuple[str, str], dict[str, Any]] = {
        ("sensor", "state"): {
            "name": "State",
            "state_topic": t.state,
            "value_template": "{{ value_json.state }}",
            "json_attributes_topic": t.state,
            "device_class": "enum",
            "options": list(STATES),
            "icon": "mdi:account-voice",
        },
        ("switch", "mute"): {
            "name": "Mute",
            "command_topic": t.command,
            "payload_on": json.dumps({"command": "mute"}),
            "payload_off": json.dumps({"command": "unmute"}),
            "state_topic": t.state,
            "value_template": "{{ 'ON' if value_json.muted else 'OFF' }}",
            "state_on": "ON",
            "state_off": "OFF",
            "icon": "mdi:microphone-off",
        },
        ("button", "start"): {
            "name": "Start conversation",
            "command_topic": t.command,
            "payload_press": json.dumps({"command": "start"}),
            "icon": "mdi:microphone-message",
        },
        ("button", "end"): {
            "name": "End conversation",
            "command_topic": t.command,
            "payload_press": json.dumps({"command": "end"}),
            "icon": "mdi:microphone-message-off",
        },
        # Retained, so HA shows the last call after its own restart (the events topic is not retained). Its state is
        # the call's time, so that it changes on every call and automations can trigger on it.
        ("sensor", "last_tool"): {
            "name": "Last tool call",
            "state_topic": t.last_tool,
            "value_template": "{{ value_json.at }}",
            "device_class": "timestamp",
            "json_attributes_topic": t.last_tool,
            "icon": "mdi:tools",
            "entity_category": "diagnostic",
        },
        ("sensor", "next_timer"): {
            "name": "Next timer",
            "state_topic": t.state,
            "value_template": "{{ value_json.next_timer or None }}",
            "device_class": "timestamp",
            "json_attributes_topic": t.timers,
            "json_attributes_template": "{{ {'timers': value_json} | tojson }}",
            "icon": "mdi:timer-outline",
        },
        **_diagnostics(t),
        ("event", "events"): {
            "name": "Events",
            "state_topic": t.events,
            "event_types": list(EVENT_TYPES),
        },
    }
    discovers = any(isinstance(tool, dict) and "discover" in tool for tool in config.tools)
    entities.update(_controls(t, [c for c in a.commands if c != "refresh" or discovers]))
    return {
        f"{a.discovery_prefix}/{component}/{uid}_{key}/config": {"unique_id": f"{uid}_{key}", **common, **fields}
        for (component, key), fields in entities.items()
    }


def _command(name: str, **args: str) -> str:
    """A command template: HA renders it with the entity's `value` into one of our JSON commands."""
    inner = ", ".join([f"'command': '{name}'", *(f"'{k}': {v}" for k, v in args.items())])
    return "{{ {" + inner + "} | tojson }}"


def _controls(t: Topics, enabled: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """The entities that send commands, for the commands this satellite accepts (assistant.commands)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    if "announce" in enabled:
        out["notify", "announce"] = {"name": "Announce", "command_topic": t.command,
                                     "command_template": _command("announce", text="value"), "icon": "mdi:bullhorn"}
    if "say" in enabled:
        out["text", "say"] = {"name": "Say", "command_topic": t.command, "max": 255,
                              "command_template": _command("say", text="value"), "icon": "mdi:keyboard"}
    if "volume" in enabled:
        out["number", "volume"] = {"name": "Volume", "command_topic": t.command, "min": 0, "max": 100, "step": 1,
                                   "unit_of_measurement": "%", "state_topic": t.state,
                                   "command_template": _command("volume", level="value|int"),
                                   "value_template": "{{ value_json.volume }}", "icon": "mdi:volume-high"}
    if "barge_in" in enabled:
        out["select", "barge_in"] = {"name": "Barge-in", "command_topic": t.command,
                                     "options": ["wake_word", "voice", "off"],
                                     "command_template": _command("barge_in", policy="value"),
                                     "state_topic": t.state, "value_template": "{{ value_json.barge_in }}",
                                     "entity_category": "config", "icon": "mdi:account-voice"}
    if "stop" in enabled:
        out["button", "stop"] = {"name": "Stop ringing", "command_topic": t.command,
                                 "payload_press": json.dumps({"command": "stop"}), "icon": "mdi:alarm-off"}
    if "reload" in enabled:
        out["button", "reload"] = {"name": "Reload configuration", "command_topic": t.command,
                                   "payload_press": json.dumps({"command": "reload"}), "entity_category": "config",
                                   "icon": "mdi:reload"}
    if "refresh" in enabled:  # only with discover: sources; new devices become reachable only this way
        out["button", "refresh"] = {"name": "Refresh devices", "command_topic": t.command,
                                    "payload_press": json.dumps({"command": "refresh"}), "entity_category": "config",
                                    "icon": "mdi:devices"}
    return out  # fmt: skip


def _diagnostics(t: Topics) -> dict[tuple[str, str], dict[str, Any]]:
    common = {"state_topic": t.state, "entity_category": "diagnostic"}
    return {
        ("sensor", "wake_score"): {"name": "Last wake score", **common, "icon": "mdi:waveform",
                                   "value_template": "{{ (value_json.last_wake or {}).score | default(None) }}"},
        ("sensor", "live"): {"name": "Gemini Live", **common, "device_class": "enum",
                             "options": ["disconnected", "connecting", "connected"],
                             "value_template": "{{ value_json.live | default('disconnected') }}", "icon": "mdi:cloud"},
        ("sensor", "last_error"): {"name": "Last error", **common,
                                   "value_template": "{{ value_json.last_error | default('') }}",
                                   "icon": "mdi:alert-circle-outline"},
        ("sensor", "tokens_today"): {"name": "Tokens today", **common, "state_class": "measurement",
                                     "value_template": "{{ value_json.tokens_today | default(0) }}",
                                     "icon": "mdi:counter"},
    }  # fmt: skip


def pi_model() -> str | None:
    """The board, on a Raspberry Pi ("Raspberry Pi Zero 2 W Rev 1.0"): Home Assistant's hardware version."""
    try:
        return Path("/proc/device-tree/model").read_bytes().rstrip(b"\0").decode(errors="replace")[:100] or None
    except OSError:
        return None
