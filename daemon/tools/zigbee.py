"""zigbee2mqtt's device list (the retained `<base>/bridge/devices`) read as devices livehome can drive.

Each device's `definition.exposes` says what it takes: a `light`/`switch`/`cover`/`lock`/`climate`/`fan` with its
features (settable when `access & 2`), and plain readings. Every message built here is one zigbee2mqtt documents:
a JSON object of exposed properties on `<base>/<friendly name>/set`, its state coming back on `<base>/<friendly
name>`. Friendly names may hold `/` and spaces; topics are built from them whole, never split.
"""

from __future__ import annotations

import copy
from typing import Any

from .found import Found, colour_map, lit, percent_scale, ref, temperature_map

SETTABLE = 2
PUBLISHED = 1
# Readings that are events or bookkeeping, not a state worth a question.
NOT_READINGS = ("action", "linkquality", "update")


def read_devices(devices: Any, base: str) -> tuple[list[Found], list[str]]:
    """Everything usable in a `bridge/devices` payload, and why each skipped device was skipped."""
    found: list[Found] = []
    skipped: list[str] = []
    if not isinstance(devices, list):
        return [], [f"{base}/bridge/devices is not a list"]
    for entry in devices:
        if not isinstance(entry, dict) or not isinstance(entry.get("friendly_name"), str):
            continue
        name = entry["friendly_name"]
        definition = entry.get("definition")
        if entry.get("type") == "Coordinator":
            continue
        if entry.get("disabled"):
            skipped.append(f"{name}: disabled in zigbee2mqtt")
            continue
        if not isinstance(definition, dict) or not isinstance(definition.get("exposes"), list):
            skipped.append(f"{name}: no definition (unsupported, or still being interviewed)")
            continue
        for item in _device(name, definition, base):
            item.key = name
            found.append(item)
    return found, skipped


def _device(name: str, definition: dict[str, Any], base: str) -> list[Found]:
    model = f"{definition.get('vendor', '?')} {definition.get('model', '?')}"
    common = {
        "source": f"zigbee2mqtt {base}/bridge/devices: {model}",
        "availability": {"topic": f"{base}/{name}/availability", "offline": "offline", "field": "state"},
    }
    out: list[Found] = []
    exposes = [e for e in definition["exposes"] if isinstance(e, dict)]
    specific = [e for e in exposes if isinstance(e.get("features"), list) and e.get("type") != "composite"]
    several = {e.get("type") for e in specific if e.get("endpoint")}
    for expose in specific:
        features = {f.get("name"): f for f in expose["features"] if isinstance(f, dict) and f.get("property")}
        kind = expose.get("type")
        label = f"{name} {expose['endpoint']}" if kind in several and expose.get("endpoint") else name
        made = {"light": _light, "switch": _switch, "cover": _cover, "lock": _lock, "climate": _climate,
                "fan": _fan}.get(kind)  # fmt: skip
        if made is not None and (item := made(label, features, name, base)) is not None:
            item.device.update(copy.deepcopy(common))
            out.append(item)
    readings = _readings(exposes)
    if readings:
        fields = {_field_name(e): e["property"] for e in readings}
        binary_only = all(e.get("type") == "binary" for e in readings)
        notes = [f"{key}: {e['description']}" for key, e in zip(fields, readings, strict=True)
                 if e.get("type") == "binary" and e.get("description")]  # fmt: skip
        device = {**copy.deepcopy(common), "read": {"topic": f"{lit(base)}/{lit(name)}", "fields": fields}}
        describe = ", ".join(fields) + (f" ({'; '.join(notes)})" if notes else "")
        out.append(Found("binary_sensor" if binary_only else "sensor", name, device, describe, "zigbee2mqtt"))
    return out


def _settable(feature: dict[str, Any] | None) -> bool:
    return isinstance(feature, dict) and isinstance(feature.get("access"), int) and bool(feature["access"] & SETTABLE)


def _set_topic(name: str, base: str) -> str:
    return f"{lit(base)}/{lit(name)}/set"


def _state_topic(name: str, base: str) -> str:
    return f"{lit(base)}/{lit(name)}"


def _on_off(feature: dict[str, Any]) -> dict[str, Any]:
    return {"map": {"on": feature.get("value_on", "ON"), "off": feature.get("value_off", "OFF")}}


def _action(name: str, base: str, params: dict[str, Any], payload: dict[str, str], expect: dict[str, str],
            timeout: float = 3.0) -> dict[str, Any]:  # fmt: skip
    device: dict[str, Any] = {"parameters": params, "publish": {"topic": _set_topic(name, base), "payload": payload}}
    device["confirm"] = {"topic": _state_topic(name, base), "expect": expect, "timeout": f"{timeout:g}s"}
    return device


def _light(label: str, f: dict[str, Any], name: str, base: str) -> Found | None:
    state = f.get("state")
    if not _settable(state):
        return None
    params: dict[str, Any] = {"state": _on_off(state)}
    payload, expect, can = {state["property"]: ref("state")}, {state["property"]: ref("state")}, []
    bright = f.get("brightness")
    if _settable(bright) and isinstance(bright.get("value_max"), int | float):
        params["brightness"] = {"scale": percent_scale(bright["value_max"])}
        payload[bright["property"]] = expect[bright["property"]] = ref("brightness")
        can.append("brightness")
    temp = f.get("color_temp")
    if _settable(temp):
        low, high = temp.get("value_min", 150), temp.get("value_max", 500)
        presets = {p.get("name"): p.get("value") for p in temp.get("presets", []) if isinstance(p, dict)}
        params["color_temp"] = {"map": temperature_map(low, high, presets)}
        payload[temp["property"]] = expect[temp["property"]] = ref("color_temp")
        can.append("colour temperature")
    colour = next((f[k] for k in ("color_xy", "color_hs") if _settable(f.get(k))), None)
    if colour is not None:  # the first listed is the one the device prefers
        form = "xy" if colour.get("name") == "color_xy" else "hs"
        params["color"] = {"map": colour_map(form)}
        payload[colour["property"]] = ref("color")  # reported back as x, y, hue and saturation: not confirmed
        can.append("colour")
    return Found("light", label, _action(name, base, params, payload, expect), ", ".join(can) or "on/off",
                 "zigbee2mqtt")  # fmt: skip


def _switch(label: str, f: dict[str, Any], name: str, base: str) -> Found | None:
    state = f.get("state")
    if not _settable(state):
        return None
    prop = state["property"]
    device = _action(name, base, {"state": _on_off(state)}, {prop: ref("state")}, {prop: ref("state")})
    return Found("switch", label, device, "on/off", "zigbee2mqtt")


def _cover(label: str, f: dict[str, Any], name: str, base: str) -> Found | None:
    state, position = f.get("state"), f.get("position")
    params: dict[str, Any] = {}
    payload: dict[str, str] = {}
    expect: dict[str, str] = {}
    if _settable(state) and isinstance(state.get("values"), list):
        moves = {v.lower(): v for v in state["values"] if isinstance(v, str) and v.upper() in ("OPEN", "CLOSE", "STOP")}
        if moves:
            params["action"] = {"map": moves}
            payload[state["property"]] = ref("action")
    if _settable(position):
        params["position"] = {"minimum": position.get("value_min", 0), "maximum": position.get("value_max", 100)}
        payload[position["property"]] = expect[position["property"]] = ref("position")
    if not params:
        return None
    # A blind takes its time: the report that it reached the position may come half a minute later.
    device = _action(name, base, params, payload, expect, timeout=60.0)
    return Found("cover", label, device, "position" if "position" in params else "open/close", "zigbee2mqtt")


def _lock(label: str, f: dict[str, Any], name: str, base: str) -> Found | None:
    state = f.get("state")
    if not _settable(state):
        return None
    prop = state["property"]
    params = {"action": {"map": {"lock": state.get("value_on", "LOCK"), "unlock": state.get("value_off", "UNLOCK")}}}
    return Found("lock", label, _action(name, base, params, {prop: ref("action")}, {prop: ref("action")}, 10.0),
                 "lock/unlock", "zigbee2mqtt")  # fmt: skip


def _climate(label: str, f: dict[str, Any], name: str, base: str) -> Found | None:
    params: dict[str, Any] = {}
    payload: dict[str, str] = {}
    setpoint = next((f[k] for k in ("current_heating_setpoint", "occupied_heating_setpoint",
                                    "occupied_cooling_setpoint") if _settable(f.get(k))), None)  # fmt: skip
    if setpoint is not None:
        params["temperature"] = {k: setpoint[v] for k, v in (("minimum", "value_min"), ("maximum", "value_max"))
                                 if isinstance(setpoint.get(v), int | float)}  # fmt: skip
        payload[setpoint["property"]] = ref("temperature")
    mode = f.get("system_mode")
    if _settable(mode) and isinstance(mode.get("values"), list) and mode["values"]:
        params["mode"] = {"map": {str(v): v for v in mode["values"] if isinstance(v, str)}}
        payload[mode["property"]] = ref("mode")
    if not params:
        return None
    found = Found("climate", label, _action(name, base, params, payload, dict(payload), 10.0), "", "zigbee2mqtt")
    if "temperature" in params:
        t = params["temperature"]
        found.describe = f"{t.get('minimum', '?')}-{t.get('maximum', '?')} {setpoint.get('unit', '°C')}"
    if "mode" in params:
        found.describe = ", ".join(filter(None, [found.describe, f"modes {', '.join(params['mode']['map'])}"]))
    return found


def _fan(label: str, f: dict[str, Any], name: str, base: str) -> Found | None:
    state = f.get("state") or f.get("fan_state")
    if not _settable(state):
        return None
    params: dict[str, Any] = {"state": _on_off(state)}
    payload = {state["property"]: ref("state")}
    mode = f.get("mode")
    if _settable(mode) and isinstance(mode.get("values"), list):
        params["mode"] = {"map": {str(v): v for v in mode["values"] if isinstance(v, str)}}
        payload[mode["property"]] = ref("mode")
    return Found("fan", label, _action(name, base, params, payload, dict(payload)), "", "zigbee2mqtt")


def _readings(exposes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The plain readings worth a question: published, not settable, not diagnostic or configuration."""
    out = []
    for e in exposes:
        access, prop = e.get("access"), e.get("property")
        if e.get("type") not in ("numeric", "binary") or not isinstance(prop, str) or not isinstance(access, int):
            continue
        if not access & PUBLISHED or access & SETTABLE or e.get("category") or prop.startswith(NOT_READINGS):
            continue
        out.append(e)
    return out


def _field_name(expose: dict[str, Any]) -> str:
    unit = expose.get("unit")
    return f"{expose['property']} ({unit})" if isinstance(unit, str) and unit.strip() else expose["property"]
