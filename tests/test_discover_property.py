"""Property: whatever the broker's discovery data says (hostile friendly names, odd ranges, topics with wildcards)
and whatever a model then sends, a discovered tool never publishes outside the topic set computed from the
snapshot, and that set holds only topics the devices themselves documented."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.schema import topic_problem
from daemon.tools import template as tpl
from daemon.tools.discover import Discover, build
from daemon.tools.hass import read_entities
from daemon.tools.registry import ArgumentError
from daemon.tools.snapshot import compile_built
from daemon.tools.zigbee import read_devices

NASTY = ["#", "+", "/", "a/b", "x/#", "{light}", "}{", "$SYS/x", "\x00", "lamp\n", " lamp", "k" * 300, "~/x", "%s"]
names = st.one_of(st.sampled_from(NASTY), st.text(min_size=1, max_size=20))
numbers = st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False))


@st.composite
def z2m_device(draw: st.DrawFn) -> dict[str, Any]:
    lo, hi = draw(numbers), draw(numbers)
    feature = {
        "light": [{"name": "state", "property": "state", "type": "binary", "access": 7, "value_on": "ON",
                   "value_off": "OFF"},
                  {"name": "brightness", "property": "brightness", "type": "numeric", "access": 7, "value_min": 0,
                   "value_max": draw(st.integers(1, 1000))},
                  {"name": "color_temp", "property": "color_temp", "type": "numeric", "access": 7,
                   "value_min": min(lo, hi), "value_max": max(lo, hi) or 1}],
        "switch": [{"name": "state", "property": f"state_{draw(names)}", "type": "binary", "access": 7,
                    "value_on": draw(names), "value_off": "OFF"}],
        "cover": [{"name": "position", "property": "position", "type": "numeric", "access": 7, "value_min": 0,
                   "value_max": 100}],
        "climate": [{"name": "occupied_heating_setpoint", "property": "occupied_heating_setpoint", "type": "numeric",
                     "access": 7, "value_min": min(lo, hi), "value_max": max(lo, hi)}],
        "lock": [{"name": "state", "property": "state", "type": "binary", "access": 7, "value_on": "LOCK",
                  "value_off": "UNLOCK"}],
    }  # fmt: skip
    kind = draw(st.sampled_from(sorted(feature)))
    expose = {"type": kind, "features": feature[kind]}
    if draw(st.booleans()):
        expose["endpoint"] = draw(names)
    return {"friendly_name": draw(names), "type": "Router", "definition": {"model": "m", "vendor": "v",
            "exposes": [expose, {"type": "numeric", "name": "t", "property": draw(names), "access": 1}]}}  # fmt: skip


@st.composite
def ha_config(draw: st.DrawFn) -> tuple[str, bytes]:
    component = draw(st.sampled_from(["switch", "light", "lock", "cover", "sensor"]))
    config = {"name": draw(names), "cmd_t": draw(names), "stat_t": draw(names), "~": draw(names),
              "val_tpl": "{{ value_json.POWER }}", "pl_on": draw(names), "schema": draw(st.sampled_from(["json", "x"])),
              "set_pos_t": draw(names), "bri_cmd_t": draw(names)}  # fmt: skip
    return f"homeassistant/{component}/{draw(st.from_regex(r'[a-z0-9_]{1,8}', fullmatch=True))}/config", json.dumps(
        config
    ).encode()


args = st.dictionaries(
    st.sampled_from(["light", "switch", "cover", "thermostat", "lock", "sensor", "state", "brightness", "color_temp",
                     "position", "temperature", "action", "x"]),
    st.one_of(names, numbers, st.booleans(), st.sampled_from(["on", "off", "warm", "lock", "unlock"])),
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(z2m_device(), max_size=6), st.lists(ha_config(), max_size=6), st.data())
def test_no_publish_outside_the_computed_topic_set(devices: list[Any], configs: list[Any], data: st.DataObject) -> None:
    z2m, _ = read_devices(devices, "zigbee2mqtt")
    ha, _ = read_entities(dict(configs), "homeassistant", skip_zigbee2mqtt=False)
    lock_names = [d["friendly_name"] for d in devices]
    sources = [Discover(discover="zigbee2mqtt", allow=["*", *[n for n in lock_names if 0 < len(n) <= 100]]),
               Discover(discover="homeassistant")]  # fmt: skip
    tools = compile_built(build([(0, f) for f in z2m] + [(1, f) for f in ha], sources))
    documented = {f"zigbee2mqtt/{d['friendly_name']}/set" for d in devices}
    documented |= {json.loads(p).get("cmd_t", "") for _, p in configs} | {
        json.loads(p).get(k, "") for _, p in configs for k in ("set_pos_t", "bri_cmd_t")}
    for tool in tools:
        assert all(topic_problem(t) is None for t in tool.topics)
        for topic in tool.topics:  # a documented command topic, possibly behind the config's own `~`
            assert topic in documented or any(topic.endswith(d.lstrip("~")) for d in documented if d.startswith("~"))
        for _ in range(5):
            call = data.draw(args) if data.draw(st.booleans()) else data.draw(well_formed(tool))
            try:
                device, checked = tool.select(call)
                sent = device.render_publishes(device.publishes, tpl.Env(checked))
            except (ArgumentError, tpl.Missing):
                continue
            SENT.append(len(sent))
            assert {m.topic for m in sent} <= tool.topics


SENT: list[int] = []


@st.composite
def well_formed(draw: st.DrawFn, tool: Any) -> dict[str, Any]:
    """A call a model could make: a device it offers, and values of the kinds the device's parameters take."""
    if not tool.variants:
        return {}
    name = draw(st.sampled_from(sorted(tool.variants)))
    out: dict[str, Any] = {tool.spec.device_parameter: name}
    for pname, param in tool.variants[name].spec.parameters.items():
        if param.choices:
            out[pname] = draw(st.sampled_from(param.choices))
        elif param.type in ("integer", "number"):
            low, high = param.minimum if param.minimum is not None else -100, param.maximum or 100
            out[pname] = draw(st.integers(int(low) - 1, int(high) + 1) if param.type == "integer" else numbers)
    return out


def test_the_property_exercised_real_publishes() -> None:
    """The property above is not vacuous: many of its calls got as far as building messages."""
    if not SENT:
        test_no_publish_outside_the_computed_topic_set()
    assert sum(SENT) > 50
