"""Home Assistant MQTT discovery: the entities that show this satellite in HA, tied to its availability."""

from __future__ import annotations

import importlib.metadata
import json
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
        # Retained, so HA shows the last call after its own restart (the events topic is not retained).
        ("sensor", "last_tool"): {
            "name": "Last tool call",
            "state_topic": t.last_tool,
            "value_template": "{{ value_json.name }}",
            "json_attributes_topic": t.last_tool,
            "icon": "mdi:tools",
            "entity_category": "diagnostic",
        },
        ("event", "events"): {
            "name": "Events",
            "state_topic": t.events,
            "event_types": list(EVENT_TYPES),
        },
    }
    return {
        f"{a.discovery_prefix}/{component}/{uid}_{key}/config": {"unique_id": f"{uid}_{key}", **common, **fields}
        for (component, key), fields in entities.items()
    }
