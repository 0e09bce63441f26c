"""Tools from the broker's discovery data (issue 15), on a real mosquitto holding retained data recorded in the
real formats (tests/data/discovery): zigbee2mqtt's device list, Tasmota's and ESPHome's Home Assistant configs.
What the model is told, the exact messages each call publishes, what each device refuses, the lock that needs
naming and a spoken yes, and a topic set that changes only by a refresh."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt

from daemon.audio.speech import silence
from daemon.calls import ToolCall
from daemon.events import Event
from daemon.loading import load
from daemon.mqtt.topics import Topics
from daemon.runtime import Daemon, Options
from daemon.tools.discover import Discover, build
from daemon.tools.engine import Engine
from daemon.tools.hass import read_entities
from daemon.tools.snapshot import compile_built
from daemon.tools.stack import running_tools
from daemon.tools.zigbee import read_devices
from tests.support.broker import Broker
from tests.support.mqttworld import World, device, world, write_config
from tests.support.speech_files import write_wav
from tests.support.waiting import eventually

DATA = Path(__file__).parent / "data" / "discovery"
ROOT = Path(__file__).resolve().parent.parent


def messages(name: str) -> dict[str, bytes]:
    """A recorded file's topics and payloads (an object is sent as JSON, a string as it is)."""
    data = json.loads((DATA / name).read_text())
    return {k: v.encode() if isinstance(v, str) else json.dumps(v).encode() for k, v in data.items()
            if not k.startswith("_")}  # fmt: skip


DEVICE_LIST = (DATA / "z2m_bridge_devices.json").read_bytes()
HA = {**messages("ha_tasmota_relay.json"), **messages("ha_esphome_light.json")}
HA_CONFIGS = {k: v for k, v in HA.items() if k.endswith("/config")}
STATES = messages("z2m_states.json")
RETAINED = {
    "zigbee2mqtt/bridge/devices": DEVICE_LIST,
    **{k: v for k, v in STATES.items() if k.endswith("/availability") or k == "zigbee2mqtt/bridge/state"},
    **HA_CONFIGS,
    "tasmota_A1B2C3/tele/LWT": b"Online",
    "desk-lamp/status": b"online",
}
BOTH = "tools:\n  - discover: zigbee2mqtt\n  - discover: homeassistant\n"


def declared(tools: list[Any]) -> dict[str, dict[str, Any]]:
    return {t.name: t.declaration() for t in tools}


def discovered(devices: Any = None, allow: list[str] | None = None) -> list[Any]:
    z2m, _ = read_devices(json.loads(DEVICE_LIST) if devices is None else devices, "zigbee2mqtt")
    ha, _ = read_entities(HA_CONFIGS, "homeassistant", skip_zigbee2mqtt=True)
    sources = [Discover(discover="zigbee2mqtt", allow=allow), Discover(discover="homeassistant")]
    return compile_built(build([(0, f) for f in z2m] + [(1, f) for f in ha], sources))


# ---- pure: what the recorded data makes -------------------------------------------------------------------------


def test_the_recorded_devices_become_a_few_grouped_tools() -> None:
    tools = declared(discovered())
    assert sorted(tools) == ["read_sensor", "set_climate", "set_cover", "set_light", "set_switch"]  # no lock
    light = tools["set_light"]["parameters"]["properties"]
    assert light["light"]["enum"] == ["Hallway Light", "Living Room Lamp", "Desk Lamp RGB Strip"]
    assert set(light) == {"light", "state", "brightness", "color_temp", "color"}
    assert light["brightness"] == {"type": "integer", "minimum": 0, "maximum": 100, "description": "percent (0 is off)"}
    switches = tools["set_switch"]["parameters"]["properties"]["switch"]["enum"]
    assert switches == ["coffee_machine_plug", "kitchen/wall_switch left", "kitchen/wall_switch right", "Kettle"]
    assert tools["set_switch"]["parameters"]["required"] == ["switch", "state"]
    climate = tools["set_climate"]["parameters"]["properties"]
    assert (climate["temperature"]["minimum"], climate["temperature"]["maximum"]) == (4, 35)
    assert climate["mode"]["enum"] == ["off", "auto", "heat"]
    sensors = tools["read_sensor"]["parameters"]["properties"]["sensor"]["enum"]
    assert {"bathroom_climate", "Front Door Contact", "coffee_machine_plug", "Kettle status"} <= set(sensors)
    assert "temperature (°C), humidity (%), pressure (hPa)" in tools["read_sensor"]["description"]
    assert "Front Door Lock" not in json.dumps(tools)
    assert "linkquality" not in json.dumps(tools) and "battery" not in json.dumps(tools)  # diagnostics left out


def test_a_lock_needs_its_exact_name_in_allow_and_then_a_spoken_yes() -> None:
    assert "set_lock" not in declared(discovered(allow=["*"]))  # a glob is not naming it
    assert "set_lock" not in declared(discovered(allow=["front door*"]))
    [lock] = [t for t in discovered(allow=["*", "front door lock"]) if t.name == "set_lock"]
    assert lock.spec.sensitive and lock.spec.voice_only
    assert lock.declaration()["parameters"]["properties"]["lock"]["enum"] == ["Front Door Lock"]


def test_deny_and_kinds_leave_devices_out() -> None:
    z2m, _ = read_devices(json.loads(DEVICE_LIST), "zigbee2mqtt")
    source = Discover(discover="zigbee2mqtt", deny=["Living*"], kinds=["light", "sensor"])
    tools = declared(compile_built(build([(0, f) for f in z2m], [source])))
    assert sorted(tools) == ["read_sensor", "set_light"]
    assert tools["set_light"]["parameters"]["properties"]["light"]["enum"] == ["Hallway Light"]
    assert "color" not in tools["set_light"]["parameters"]["properties"]  # only the colour light took colour
    assert "Front Door Contact" not in json.dumps(tools)  # a binary sensor: not in kinds


# ---- on a real broker: each call publishes exactly what its device documents -------------------------------


def z2m_reply(topic: str, payload: Any) -> tuple[str, Any] | None:
    if not topic.endswith("/set") or not isinstance(payload, dict):
        return None
    return topic.removesuffix("/set"), payload  # a zigbee2mqtt device reports the state it was set to


def tasmota_reply(topic: str, payload: Any) -> tuple[str, Any]:
    return "tasmota_A1B2C3/tele/STATE", {"POWER": payload, "Wifi": {"RSSI": 74}}


def esphome_reply(topic: str, payload: Any) -> tuple[str, Any]:
    return "desk-lamp/light/rgb_strip/state", {"color_mode": "rgb", "state": "ON", **payload}


async def publish(broker: Broker, retained: dict[str, bytes]) -> None:
    async with aiomqtt.Client(broker.host, broker.port, identifier="recorder") as client:
        for topic, payload in retained.items():
            await client.publish(topic, payload, qos=1, retain=True)


@asynccontextmanager
async def home(tmp_path: Path, broker: Broker, body: str = BOTH) -> AsyncIterator[tuple[Engine, World]]:
    """The recorded home on the broker, its devices answering, and the tool layer as the daemon runs it."""
    await publish(broker, RETAINED)
    loaded = load(write_config(tmp_path, broker, body))
    events: list[Event] = []
    async with AsyncExitStack() as stack:
        w = await stack.enter_async_context(world(broker))
        for topic_filter, reply in (("zigbee2mqtt/#", z2m_reply), ("tasmota_A1B2C3/cmnd/POWER", tasmota_reply),
                                    ("desk-lamp/light/rgb_strip/command", esphome_reply)):  # fmt: skip
            await stack.enter_async_context(device(broker, topic_filter, reply))
        tools = running_tools(loaded.registry, loaded.config.mqtt, events.append, 5.0, loaded.sources)
        _, engine = await stack.enter_async_context(tools)
        yield engine, w


async def call(engine: Engine, name: str, spoken: bool = True, **args: Any) -> dict[str, Any]:
    response = await engine.run(ToolCall(f"c{id(args)}-{len(args)}-{name}", name, args, spoken))
    assert response is not None
    return response.response


PUBLISHED = [
    ("set_light", {"light": "Hallway Light", "state": "on", "brightness": 50},
     "zigbee2mqtt/Hallway Light/set", {"state": "ON", "brightness": 127}),
    ("set_light", {"light": "Living Room Lamp", "color_temp": "warm"},
     "zigbee2mqtt/Living Room Lamp/set", {"color_temp": 454}),
    ("set_light", {"light": "Living Room Lamp", "color": "red"},
     "zigbee2mqtt/Living Room Lamp/set", {"color": {"x": 0.6401, "y": 0.33}}),
    ("set_light", {"light": "Desk Lamp RGB Strip", "color": "blue", "brightness": 100},
     "desk-lamp/light/rgb_strip/command", {"brightness": 255, "color": {"r": 0, "g": 0, "b": 255}}),
    ("set_switch", {"switch": "kitchen/wall_switch left", "state": "off"},
     "zigbee2mqtt/kitchen/wall_switch/set", {"state_left": "OFF"}),
    ("set_switch", {"switch": "Kettle", "state": "on"}, "tasmota_A1B2C3/cmnd/POWER", "ON"),
    ("set_cover", {"cover": "Bedroom Blind", "position": 30}, "zigbee2mqtt/Bedroom Blind/set", {"position": 30}),
    ("set_climate", {"thermostat": "Office Radiator", "temperature": 21.5, "mode": "heat"},
     "zigbee2mqtt/Office Radiator/set", {"occupied_heating_setpoint": 21.5, "system_mode": "heat"}),
]  # fmt: skip


async def test_each_call_publishes_the_documented_payload_and_is_confirmed(tmp_path: Path, broker: Broker) -> None:
    async with home(tmp_path, broker) as (engine, w):
        for name, args, topic, payload in PUBLISHED:
            before = len(w.on(topic))
            answer = await call(engine, name, **args)
            assert answer["ok"] and answer["status"] == "confirmed", (name, args, answer)
            sent = w.on(topic)[before:]
            assert len(sent) == 1, (name, args)
            assert (sent[0].json() if isinstance(payload, dict) else sent[0].payload.decode()) == payload
            assert sent[0].payload == (json.dumps(payload, separators=(",", ":")).encode()
                                       if isinstance(payload, dict) else payload.encode())  # fmt: skip


async def test_a_sensor_is_read_from_its_state_topic(tmp_path: Path, broker: Broker) -> None:
    async with home(tmp_path, broker) as (engine, w):
        await w.client.publish("zigbee2mqtt/bathroom_climate", STATES["zigbee2mqtt/bathroom_climate"], qos=1)
        state = json.loads(STATES["zigbee2mqtt/bathroom_climate"])
        await eventually(lambda: engine.link.last("zigbee2mqtt/bathroom_climate") is not None)
        answer = await call(engine, "read_sensor", sensor="bathroom_climate")
        assert answer["ok"], answer
        assert answer["value"]["temperature (°C)"] == state["temperature"]
        assert answer["value"]["humidity (%)"] == state["humidity"]


REFUSED = [
    ("set_light", {"light": "Hallway Light", "color": "red"}, "Hallway Light cannot take color (it takes state, "
                                                              "brightness)"),
    ("set_light", {"light": "Hallway Light"}, "give at least one of state, brightness, color_temp, color"),
    ("set_light", {"light": "Garage Light", "state": "on"}, "light: 'Garage Light' is not one of"),
    ("set_switch", {"switch": "coffee_machine_plug", "state": "on", "brightness": 20},
     "unknown argument(s): brightness"),
    ("set_climate", {"thermostat": "Office Radiator", "temperature": 50}, "temperature: 50 is above the maximum of 35"),
    ("set_climate", {"thermostat": "Office Radiator", "mode": "cool"}, "mode: 'cool' is not one of off, auto, heat"),
    ("set_cover", {"cover": "Bedroom Blind", "position": 130}, "above the maximum of 100"),
    ("set_lock", {"lock": "Front Door Lock", "action": "unlock"}, "unknown tool 'set_lock'"),
]  # fmt: skip


async def test_wrong_arguments_are_refused_by_the_device_and_nothing_is_sent(tmp_path: Path, broker: Broker) -> None:
    async with home(tmp_path, broker) as (engine, w):
        start = len(w.seen)
        for name, args, why in REFUSED:
            answer = await call(engine, name, **args)
            assert not answer["ok"] and why in answer["error"], (args, answer)
        await w.fence(engine.link)
        assert [s.topic for s in w.seen[start:] if not s.topic.startswith("fence/")] == []


async def test_an_allowed_lock_needs_a_spoken_yes(tmp_path: Path, broker: Broker) -> None:
    body = "tools:\n  - discover: zigbee2mqtt\n    allow: ['*', Front Door Lock]\n"
    async with home(tmp_path, broker, body) as (engine, w):
        unlock = {"lock": "Front Door Lock", "action": "unlock"}
        typed = await call(engine, "set_lock", spoken=False, **unlock)
        assert typed["status"] == "refused"  # a text turn can never reach it
        asked = await call(engine, "set_lock", **unlock)
        assert asked["status"] == "needs_confirmation"
        engine.heard("yes", spoken=False)  # a typed yes does not count
        assert (await call(engine, "set_lock", **unlock))["status"] == "needs_confirmation"
        engine.heard("yes, unlock it", spoken=True)
        done = await call(engine, "set_lock", **unlock)
        assert done["ok"] and done["status"] == "confirmed", done
        assert [s.json() for s in w.on("zigbee2mqtt/Front Door Lock/set")] == [{"state": "UNLOCK"}]


async def test_a_device_that_leaves_or_goes_offline_fails_clearly(tmp_path: Path, broker: Broker) -> None:
    async with home(tmp_path, broker) as (engine, w):
        await w.client.publish("desk-lamp/status", b"offline", qos=1, retain=True)
        await eventually(lambda: engine.link.last("desk-lamp/status").payload == b"offline")
        answer = await call(engine, "set_light", light="Desk Lamp RGB Strip", state="on")
        assert answer["status"] == "unavailable" and "reports itself offline on desk-lamp/status" in answer["error"]
        fewer = [d for d in json.loads(DEVICE_LIST) if d["friendly_name"] != "Hallway Light"]
        await w.client.publish("zigbee2mqtt/bridge/devices", json.dumps(fewer), qos=1, retain=True)
        await eventually(lambda: engine.registry.get("set_light").variants["Hallway Light"].gone is not None)
        answer = await call(engine, "set_light", light="Hallway Light", state="on")
        assert answer["status"] == "unavailable"
        assert "Hallway Light is no longer in zigbee2mqtt/bridge/devices" in answer["error"]
        assert w.on("zigbee2mqtt/Hallway Light/set") == [] and w.on("desk-lamp/light/rgb_strip/command") == []


# ---- the topic set changes only by a refresh (or a reload) -------------------------------------------------


def lights(daemon: Daemon) -> list[str]:
    assert daemon._mqtt is not None
    [tool] = [d for d in daemon._mqtt.engine.declarations() if d["name"] == "set_light"]
    return tool["parameters"]["properties"]["light"]["enum"]


async def test_a_device_added_after_start_is_unreachable_until_refresh(tmp_path: Path, broker: Broker) -> None:
    everything = json.loads(DEVICE_LIST)
    before = [d for d in everything if d["friendly_name"] != "Living Room Lamp"]
    await publish(broker, {**RETAINED, "zigbee2mqtt/bridge/devices": json.dumps(before).encode()})
    write_wav(tmp_path / "mic.wav", silence(30.0))
    config = write_config(tmp_path, broker, f"assistant: {{id: hall, state_dir: {tmp_path / 'state'}}}\n"
                                            "tools:\n  - discover: zigbee2mqtt\n")  # fmt: skip
    os.environ["GEMINI_API_KEY"] = "not-used-no-conversation-opens"
    daemon = Daemon(load(config), Options(input=str(tmp_path / "mic.wav"), output="none"))
    try:
        async with world(broker) as w, device(broker, "zigbee2mqtt/#", z2m_reply):
            task = asyncio.create_task(daemon.run())
            await eventually(lambda: daemon._mqtt is not None and daemon._mqtt.engine.registry.get("set_light"))
            assert lights(daemon) == ["Hallway Light"]
            await w.client.publish("zigbee2mqtt/bridge/devices", DEVICE_LIST, qos=1, retain=True)
            assert daemon._mqtt is not None
            snapshots = daemon._mqtt.discovered.snapshots  # type: ignore[union-attr]
            await eventually(lambda: len(snapshots.devices[0]) == len(everything))
            assert lights(daemon) == ["Hallway Light"]  # seen on the broker, still not reachable
            engine = daemon._mqtt.engine
            answer = await call(engine, "set_light", light="Living Room Lamp", state="on")
            assert "is not one of Hallway Light" in answer["error"]
            command = Topics.of(daemon.loaded.config).command
            await w.client.publish(command, json.dumps({"command": "refresh"}), qos=1)
            await eventually(lambda: lights(daemon) == ["Hallway Light", "Living Room Lamp"])
            answer = await call(daemon._mqtt.engine, "set_light", light="Living Room Lamp", state="on")
            assert answer["ok"], answer
            assert [s.json() for s in w.on("zigbee2mqtt/Living Room Lamp/set")] == [{"state": "ON"}]
            daemon.stop()
            assert await asyncio.wait_for(task, 20) == 0
    finally:
        os.environ.pop("GEMINI_API_KEY", None)
        daemon.stop()


# ---- the command line --------------------------------------------------------------------------------------


def livehome(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", *map(str, args)], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)  # fmt: skip


async def test_discover_prints_yaml_that_loads_as_the_same_tools(tmp_path: Path, broker: Broker) -> None:
    await publish(broker, RETAINED)
    config = write_config(tmp_path, broker, BOTH)
    out = await asyncio.to_thread(livehome, "discover", "--config", config)
    assert out.returncode == 0, out.stderr
    assert "#   left out: Front Door Lock (lock): a lock: only when named exactly in allow" in out.stdout
    (tmp_path / "pasted").mkdir()
    static = load(write_config(tmp_path / "pasted", broker, out.stdout))
    assert not static.sources  # plain tools now, their topic set fixed in the file
    live = declared(discovered())
    assert {n: t.declaration() for n, t in static.registry.tools.items()} == live
    assert static.registry.topics == frozenset().union(*(t.topics for t in discovered()))


async def test_tools_and_acl_show_the_discovered_tools_and_where_they_came_from(tmp_path: Path, broker: Broker) -> None:
    await publish(broker, RETAINED)
    config = write_config(tmp_path, broker, BOTH)
    tools = await asyncio.to_thread(livehome, "tools", "--config", config)
    assert tools.returncode == 0, tools.stderr
    [declarations] = json.loads(tools.stdout)
    assert "set_light" in {d["name"] for d in declarations["functionDeclarations"]}
    assert "#   Kettle: homeassistant homeassistant/switch/A1B2C3_RL_1/config" in tools.stderr
    assert "#   Hallway Light: zigbee2mqtt zigbee2mqtt/bridge/devices: IKEA LED1623G12" in tools.stderr
    acl = await asyncio.to_thread(livehome, "acl", "--config", config)
    assert acl.returncode == 0, acl.stderr
    assert "topic write zigbee2mqtt/Hallway Light/set" in acl.stdout.splitlines()
    assert "topic read zigbee2mqtt/bridge/devices" in acl.stdout.splitlines()


async def test_without_the_broker_the_discovering_commands_say_so(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("mqtt: {host: 127.0.0.1, port: 9}\n" + BOTH)
    for command in ("discover", "tools", "acl"):
        out = await asyncio.to_thread(livehome, command, "--config", config, "--wait", "1")
        assert out.returncode == 69, (command, out.stdout, out.stderr)
        assert "not reachable within 1s" in out.stderr


def test_a_configured_tool_may_not_take_a_discovered_tools_name(tmp_path: Path) -> None:
    from daemon.yamlsrc import ConfigError

    config = tmp_path / "config.yaml"
    config.write_text("tools:\n  - discover: zigbee2mqtt\n  - include: tasmota\n    only: [read_sensor]\n"
                      "    vars: {sensors: {hall: tasmota_hall}}\n")
    try:
        load(config)
    except ConfigError as exc:
        problems = [str(p) for p in exc.problems]
    else:
        raise AssertionError("loaded")
    assert any("'read_sensor' is the name the discover: source at tools[0] gives its tool" in p for p in problems), (
        problems)
