"""Home Assistant MQTT discovery configs (retained under `<prefix>/<component>/[<node>/]<object>/config`, as
Tasmota, ESPHome, Shelly and zigbee2mqtt publish them) read as devices livehome can drive.

Read as Home Assistant reads them: abbreviations expanded per scope, then `~` put in front of (or after) every
`…topic` value that starts (or ends) with it. Only what can be sent exactly as the config documents is used: a
feature whose command goes through a Jinja `command_template` is left out, and a state is confirmed only where
its `value_template` is a plain `value_json` path.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .found import Found, colour_map, lit, percent_scale, ref, temperature_map

CONFIG_TOPIC = re.compile(r"^(?P<component>[a-z_]+)/(?:(?P<node>[A-Za-z0-9_-]+)/)?(?P<object>[A-Za-z0-9_-]+)/config$")
MAX_CONFIG_BYTES = 64 * 1024

ABBREVIATIONS = {
    "avty": "availability", "avty_mode": "availability_mode", "avty_t": "availability_topic",
    "avty_tpl": "availability_template", "bri_cmd_t": "brightness_command_topic",
    "bri_cmd_tpl": "brightness_command_template", "bri_scl": "brightness_scale", "bri_stat_t": "brightness_state_topic",
    "bri_val_tpl": "brightness_value_template", "clr_temp_cmd_t": "color_temp_command_topic",
    "clr_temp_cmd_tpl": "color_temp_command_template", "clr_temp_k": "color_temp_kelvin",
    "clr_temp_stat_t": "color_temp_state_topic", "clrm": "color_mode", "cmd_t": "command_topic",
    "cmd_tpl": "command_template", "cmps": "components", "dev": "device", "dev_cla": "device_class",
    "ent_cat": "entity_category", "fx_cmd_t": "effect_command_topic", "fx_list": "effect_list",
    "hs_cmd_t": "hs_command_topic", "hs_cmd_tpl": "hs_command_template", "json_attr_t": "json_attributes_topic",
    "max_mirs": "max_mireds", "max_temp": "max_temp", "min_mirs": "min_mireds", "min_temp": "min_temp",
    "mode_cmd_t": "mode_command_topic", "mode_cmd_tpl": "mode_command_template", "modes": "modes",
    "o": "origin", "obj_id": "object_id", "opt": "optimistic", "p": "platform", "pl_arm_away": "payload_arm_away",
    "pl_arm_home": "payload_arm_home", "pl_arm_nite": "payload_arm_night", "pl_avail": "payload_available",
    "pl_cls": "payload_close", "pl_disarm": "payload_disarm", "pl_lock": "payload_lock",
    "pl_not_avail": "payload_not_available", "pl_off": "payload_off", "pl_on": "payload_on",
    "pl_open": "payload_open", "pl_stop": "payload_stop", "pl_unlk": "payload_unlock", "pos_clsd": "position_closed",
    "pos_open": "position_open", "pr_mode_cmd_t": "preset_mode_command_topic",
    "pr_mode_cmd_tpl": "preset_mode_command_template", "pr_modes": "preset_modes", "ret": "retain",
    "rgb_cmd_t": "rgb_command_topic", "rgb_cmd_tpl": "rgb_command_template", "set_pos_t": "set_position_topic",
    "set_pos_tpl": "set_position_template", "stat_clsd": "state_closed", "stat_locked": "state_locked",
    "stat_off": "state_off", "stat_on": "state_on", "stat_open": "state_open", "stat_t": "state_topic",
    "stat_tpl": "state_template", "stat_unlocked": "state_unlocked", "stat_val_tpl": "state_value_template",
    "sup_clrm": "supported_color_modes", "temp_cmd_t": "temperature_command_topic",
    "temp_cmd_tpl": "temperature_command_template", "temp_unit": "temperature_unit", "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement", "val_tpl": "value_template", "xy_cmd_t": "xy_command_topic",
    "xy_cmd_tpl": "xy_command_template", "cod_arm_req": "code_arm_required", "cod_dis_req": "code_disarm_required",
}  # fmt: skip
DEVICE_ABBREVIATIONS = {"cns": "connections", "ids": "identifiers", "mf": "manufacturer", "mdl": "model",
                        "mdl_id": "model_id", "sw": "sw_version", "hw": "hw_version", "sa": "suggested_area",
                        "cu": "configuration_url", "sn": "serial_number"}  # fmt: skip
ORIGIN_ABBREVIATIONS = {"sw": "sw_version", "url": "support_url"}
AVAILABILITY_ABBREVIATIONS = {"t": "topic", "pl_avail": "payload_available", "pl_not_avail": "payload_not_available",
                              "val_tpl": "value_template"}  # fmt: skip
# Shared options a device-based config (`<prefix>/device/…`) hands down to each of its components.
SHARED = ("availability", "availability_topic", "availability_mode", "availability_template", "payload_available",
          "payload_not_available", "state_topic", "command_topic", "qos", "encoding")  # fmt: skip
_JSON_PATH = re.compile(r"""^\{\{\s*value_json((?:\.[A-Za-z_][A-Za-z0-9_]*|\[\s*(?:'[^']*'|"[^"]*")\s*\])+)\s*\}\}$""")
_STEP = re.compile(r"""\.([A-Za-z_][A-Za-z0-9_]*)|\[\s*(?:'([^']*)'|"([^"]*)")\s*\]""")


def _expand(config: dict[str, Any], table: dict[str, str]) -> dict[str, Any]:
    """Short keys to long ones; the short key wins when both are given, as in Home Assistant."""
    out = dict(config)
    for short, long in table.items():
        if short in out:
            out[long] = out.pop(short)
    return out


def expand(config: dict[str, Any]) -> dict[str, Any]:
    out = _expand(config, ABBREVIATIONS)
    for key, table in (("device", DEVICE_ABBREVIATIONS), ("origin", ORIGIN_ABBREVIATIONS)):
        if isinstance(out.get(key), dict):
            out[key] = _expand(out[key], table)
    if isinstance(out.get("availability"), list):
        out["availability"] = [_expand(a, AVAILABILITY_ABBREVIATIONS) if isinstance(a, dict) else a
                               for a in out["availability"]]  # fmt: skip
    base = out.pop("~", None)
    if isinstance(base, str):
        for key, value in out.items():
            if key.endswith("topic") and isinstance(value, str):
                out[key] = _tilde(value, base)
        for a in out.get("availability") or []:
            if isinstance(a, dict) and isinstance(a.get("topic"), str):
                a["topic"] = _tilde(a["topic"], base)
    return out


def _tilde(value: str, base: str) -> str:
    if value.startswith("~"):
        return base + value[1:]
    if value.endswith("~"):
        return value[:-1] + base
    return value


def json_path(template: Any) -> str | None:
    """`{{ value_json.a.b }}` / `{{ value_json['a'] }}` → "a.b"; None for any other template."""
    match = _JSON_PATH.match(template.strip()) if isinstance(template, str) else None
    if match is None:
        return None
    return ".".join(a or b or c for a, b, c in _STEP.findall(match.group(1)))


def entities(topic: str, payload: bytes, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """The (component, config) pairs of one retained discovery message; none for a deletion or a bad one."""
    rest = topic[len(prefix) + 1 :] if topic.startswith(prefix + "/") else ""
    match = CONFIG_TOPIC.match(rest)
    if match is None or not payload or len(payload) > MAX_CONFIG_BYTES:
        return []
    try:
        raw = json.loads(payload)
    except ValueError:
        return []
    if not isinstance(raw, dict):
        return []
    config = expand(raw)
    if match["component"] != "device":
        return [(match["component"], config)]
    out = []
    for part in (config.get("components") or {}).values():
        if isinstance(part, dict) and isinstance(part.get("platform"), str):
            shared = {k: config[k] for k in SHARED if k in config}
            merged = {**shared, "device": config.get("device"), "origin": config.get("origin"), **expand(part)}
            out.append((merged["platform"], merged))
    return out


def read_entities(configs: dict[str, bytes], prefix: str, skip_zigbee2mqtt: bool) -> tuple[list[Found], list[str]]:
    """Every usable entity in the retained configs (topic → payload), and why each skipped one was skipped."""
    found: list[Found] = []
    skipped: list[str] = []
    for topic in sorted(configs):
        for component, config in entities(topic, configs[topic], prefix):
            origin = config.get("origin") if isinstance(config.get("origin"), dict) else {}
            if skip_zigbee2mqtt and origin.get("name") == "Zigbee2MQTT":
                continue  # the zigbee2mqtt source has it, with its full capabilities
            if origin.get("name") == "livehome":
                continue  # a satellite's own entities (mute, volume…) are not the home's devices
            name = entity_name(config)
            if name is None or config.get("entity_category") in ("config", "diagnostic"):
                continue
            made = {"light": _light, "switch": _switch, "cover": _cover, "lock": _lock, "climate": _climate,
                    "fan": _fan, "alarm_control_panel": _alarm, "sensor": _sensor,
                    "binary_sensor": _sensor}.get(component)  # fmt: skip
            item = made(name, config, component) if made else None
            if item is None:
                if made:
                    skipped.append(f"{name} ({component} at {topic}): nothing livehome can send exactly")
                continue
            item.device["source"] = f"homeassistant {topic}" + _made_by(config)
            item.key = topic
            if availability := _availability(config):
                item.device["availability"] = availability
            found.append(item)
    return found, skipped


def entity_name(config: dict[str, Any]) -> str | None:
    """As Home Assistant names it: the device's name, then the entity's (unless it already starts with it)."""
    device = config.get("device") if isinstance(config.get("device"), dict) else {}
    own, of_device = config.get("name"), device.get("name")
    own = own if isinstance(own, str) and own.strip() else None
    of_device = of_device if isinstance(of_device, str) and of_device.strip() else None
    if own and of_device and not own.lower().startswith(of_device.lower()):
        return f"{of_device} {own}"
    return own or of_device


def _made_by(config: dict[str, Any]) -> str:
    device = config.get("device") if isinstance(config.get("device"), dict) else {}
    words = [str(device[k]) for k in ("manufacturer", "model") if isinstance(device.get(k), str)]
    return f": {' '.join(words)}" if words else ""


def _availability(config: dict[str, Any]) -> dict[str, Any] | None:
    entry = (config.get("availability") or [None])[0] if isinstance(config.get("availability"), list) else config
    if not isinstance(entry, dict):
        return None
    topic = entry.get("topic") if entry is not config else config.get("availability_topic")
    if not isinstance(topic, str) or not topic:
        return None
    out: dict[str, Any] = {"topic": topic, "offline": str(entry.get("payload_not_available", "offline"))}
    template = entry.get("value_template") or config.get("availability_template")
    if template:
        path = json_path(template)
        if path is None:
            return None  # a template livehome cannot read: better no check than a wrong one
        out["field"] = path
    return out


def _command(config: dict[str, Any], key: str = "command_topic") -> str | None:
    """A command topic that takes the payload as it is (no Jinja command template in between)."""
    topic = config.get(key)
    template_key = key.replace("_topic", "_template")
    if not isinstance(topic, str) or not topic or config.get(template_key):
        return None
    return lit(topic)


def _confirm(config: dict[str, Any], expect_ref: str, key: str = "state_topic",
             template_key: str = "value_template") -> dict[str, Any] | None:  # fmt: skip
    """Confirm from the state topic where its template is a plain JSON path (the reported field is then known)."""
    topic = config.get(key)
    path = json_path(config.get(template_key) or config.get("state_value_template"))
    if not isinstance(topic, str) or path is None or "." in path:
        return None
    return {"topic": lit(topic), "expect": {path: ref(expect_ref)}}


def _on_off(config: dict[str, Any]) -> dict[str, Any]:
    return {"map": {"on": str(config.get("payload_on", "ON")), "off": str(config.get("payload_off", "OFF"))}}


def _states_match(config: dict[str, Any], pairs: tuple[tuple[str, str], ...]) -> bool:
    """The state reported is the payload sent (so one argument can be both sent and expected back)."""
    return all(config.get(state, config.get(payload)) == config.get(payload) for state, payload in pairs)


def _light(name: str, config: dict[str, Any], _: str) -> Found | None:
    if config.get("schema") == "json":
        return _json_light(name, config)
    command = _command(config)
    if command is None:
        return None
    params: dict[str, Any] = {"state": _on_off(config)}
    publish: list[dict[str, Any]] = [{"topic": command, "payload": ref("state"), "when": "state"}]
    can = []
    if bri := _command(config, "brightness_command_topic"):
        params["brightness"] = {"scale": percent_scale(float(config.get("brightness_scale", 255)))}
        publish.append({"topic": bri, "payload": ref("brightness"), "when": "brightness"})
        can.append("brightness")
    if ct := _command(config, "color_temp_command_topic"):
        low, high = float(config.get("min_mireds", 153)), float(config.get("max_mireds", 500))
        params["color_temp"] = {"map": temperature_map(low, high, kelvin=bool(config.get("color_temp_kelvin")))}
        publish.append({"topic": ct, "payload": ref("color_temp"), "when": "color_temp"})
        can.append("colour temperature")
    for key, form in (("rgb_command_topic", "rgb_text"), ("hs_command_topic", "hs_text")):
        if colour := _command(config, key):
            params["color"] = {"map": colour_map(form)}
            publish.append({"topic": colour, "payload": ref("color"), "when": "color"})
            can.append("colour")
            break
    device: dict[str, Any] = {"parameters": params, "publish": publish}
    if _states_match(config, (("state_on", "payload_on"), ("state_off", "payload_off"))) and (
        confirm := _confirm(config, "state")
    ):
        device["confirm"] = confirm
    return Found("light", name, device, ", ".join(can) or "on/off", "homeassistant")


def _json_light(name: str, config: dict[str, Any]) -> Found | None:
    command = _command(config)
    if command is None:
        return None
    modes = config.get("supported_color_modes")
    modes = set(modes) if isinstance(modes, list) else ({"brightness"} if config.get("brightness") else {"onoff"})
    params: dict[str, Any] = {"state": {"map": {"on": "ON", "off": "OFF"}}}
    payload: dict[str, str] = {"state": ref("state")}
    can = []
    if modes - {"onoff"}:
        params["brightness"] = {"scale": percent_scale(float(config.get("brightness_scale", 255)))}
        payload["brightness"] = ref("brightness")
        can.append("brightness")
    if "color_temp" in modes:
        low, high = float(config.get("min_mireds", 153)), float(config.get("max_mireds", 500))
        params["color_temp"] = {"map": temperature_map(low, high, kelvin=bool(config.get("color_temp_kelvin")))}
        payload["color_temp"] = ref("color_temp")
        can.append("colour temperature")
    form = next((f for mode, f in (("rgb", "rgb"), ("rgbw", "rgb"), ("rgbww", "rgb"), ("hs", "hs_ha"), ("xy", "xy"))
                 if mode in modes), None)  # fmt: skip
    if form is not None:
        params["color"] = {"map": colour_map(form)}
        payload["color"] = ref("color")
        can.append("colour")
    device: dict[str, Any] = {"parameters": params, "publish": {"topic": command, "payload": payload}}
    if isinstance(config.get("state_topic"), str):
        expect = {k: v for k, v in payload.items() if k in ("state", "brightness")}
        device["confirm"] = {"topic": lit(config["state_topic"]), "expect": expect}
    return Found("light", name, device, ", ".join(can) or "on/off", "homeassistant")


def _switch(name: str, config: dict[str, Any], _: str) -> Found | None:
    command = _command(config)
    if command is None:
        return None
    device: dict[str, Any] = {"parameters": {"state": _on_off(config)},
                              "publish": {"topic": command, "payload": ref("state")}}  # fmt: skip
    if _states_match(config, (("state_on", "payload_on"), ("state_off", "payload_off"))) and (
        confirm := _confirm(config, "state")
    ):
        device["confirm"] = confirm
    return Found("switch", name, device, "on/off", "homeassistant")


def _cover(name: str, config: dict[str, Any], _: str) -> Found | None:
    kind = "garage" if config.get("device_class") in ("garage", "gate", "door") else "cover"
    params: dict[str, Any] = {}
    publish: list[dict[str, Any]] = []
    if command := _command(config):
        moves = {word: config.get(f"payload_{key}", default)
                 for word, key, default in (("open", "open", "OPEN"), ("close", "close", "CLOSE"),
                                            ("stop", "stop", "STOP"))}  # fmt: skip
        moves = {word: str(payload) for word, payload in moves.items() if payload is not None}  # null: not offered
        if moves:
            params["action"] = {"map": moves}
            publish.append({"topic": command, "payload": ref("action"), "when": "action"})
    position = _command(config, "set_position_topic")
    if position and config.get("position_open", 100) == 100 and config.get("position_closed", 0) == 0:
        params["position"] = {"minimum": 0, "maximum": 100}
        publish.append({"topic": position, "payload": ref("position"), "when": "position"})
    if not publish:
        return None
    return Found(kind, name, {"parameters": params, "publish": publish}, "position" * ("position" in params),
                 "homeassistant")  # fmt: skip


def _lock(name: str, config: dict[str, Any], _: str) -> Found | None:
    command = _command(config)
    if command is None:
        return None
    payloads = {"lock": str(config.get("payload_lock", "LOCK")), "unlock": str(config.get("payload_unlock", "UNLOCK"))}
    device: dict[str, Any] = {"parameters": {"action": {"map": payloads}},
                              "publish": {"topic": command, "payload": ref("action")}}  # fmt: skip
    states = {"lock": config.get("state_locked", "LOCKED"), "unlock": config.get("state_unlocked", "UNLOCKED")}
    if states == payloads and (confirm := _confirm(config, "action")):
        device["confirm"] = {**confirm, "timeout": "10s"}
    return Found("lock", name, device, "lock/unlock", "homeassistant")


def _climate(name: str, config: dict[str, Any], _: str) -> Found | None:
    params: dict[str, Any] = {}
    publish: list[dict[str, Any]] = []
    if temperature := _command(config, "temperature_command_topic"):
        unit = "°F" if config.get("temperature_unit") == "F" else "°C"
        low, high = (7, 35) if unit == "°C" else (44, 95)
        params["temperature"] = {"minimum": config.get("min_temp", low), "maximum": config.get("max_temp", high)}
        publish.append({"topic": temperature, "payload": ref("temperature"), "when": "temperature"})
    modes = config.get("modes", ["auto", "off", "cool", "heat", "dry", "fan_only"])
    if (mode := _command(config, "mode_command_topic")) and isinstance(modes, list) and modes:
        params["mode"] = {"map": {str(m): str(m) for m in modes}}
        publish.append({"topic": mode, "payload": ref("mode"), "when": "mode"})
    if not publish:
        return None
    return Found("climate", name, {"parameters": params, "publish": publish}, "", "homeassistant")


def _fan(name: str, config: dict[str, Any], _: str) -> Found | None:
    command = _command(config)
    if command is None:
        return None
    params: dict[str, Any] = {"state": _on_off(config)}
    publish: list[dict[str, Any]] = [{"topic": command, "payload": ref("state"), "when": "state"}]
    presets = config.get("preset_modes")
    if (preset := _command(config, "preset_mode_command_topic")) and isinstance(presets, list) and presets:
        params["mode"] = {"map": {str(m): str(m) for m in presets}}
        publish.append({"topic": preset, "payload": ref("mode"), "when": "mode"})
    return Found("fan", name, {"parameters": params, "publish": publish}, "", "homeassistant")


def _alarm(name: str, config: dict[str, Any], _: str) -> Found | None:
    command = _command(config)
    if command is None or config.get("code") or config.get("code_arm_required") is True:
        return None  # an alarm that wants a code is armed from its own keypad, not by voice
    actions = {word: str(config.get(f"payload_{word}", word.upper())) for word in ("arm_away", "arm_home", "disarm")}
    device = {"parameters": {"action": {"map": actions}}, "publish": {"topic": command, "payload": ref("action")}}
    return Found("alarm", name, device, "", "homeassistant")


def _sensor(name: str, config: dict[str, Any], component: str) -> Found | None:
    topic = config.get("state_topic")
    if not isinstance(topic, str) or not topic:
        return None
    template = config.get("value_template")
    path = json_path(template) if template else None
    if template and path is None:
        return None  # its reading needs a template livehome does not run
    unit = config.get("unit_of_measurement")
    what = str(config.get("device_class") or "value")
    label = f"{what} ({unit.strip()})" if isinstance(unit, str) and unit.strip() else what
    read: dict[str, Any] = {"topic": lit(topic)}
    if path:
        read["fields"] = {label: path}
    describe = label
    if component == "binary_sensor":
        describe += f" ({config.get('payload_on', 'ON')} means on/detected/open)"
    return Found("binary_sensor" if component == "binary_sensor" else "sensor", name, {"read": read}, describe,
                 "homeassistant")  # fmt: skip
