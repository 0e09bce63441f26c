"""The tool layer on a real mosquitto: each action kind, confirmations, cancellation with undo, duplicates,
injection attempts, and a broker that goes away."""

from __future__ import annotations

import asyncio
import json

import aiomqtt
import pytest

from daemon.calls import ToolCall
from tests.support.broker import Broker
from tests.support.mqttworld import device, rig, world
from tests.support.waiting import eventually

TOOLS = """
tools:
  - name: set_light
    description: Switch a room's light on or off, optionally with brightness in percent.
    parameters:
      room: {type: string, map: {kitchen: kitchen_ceiling, bedroom: bedroom_lamp}}
      state: {type: string, enum: [ON, OFF]}
      brightness: {type: integer, minimum: 1, maximum: 100}
      transition: {type: number, minimum: 0, maximum: 10}
    required: [room, state]
    scheduling: {success: WHEN_IDLE, error: INTERRUPT, timeout: SILENT}
    publish:
      topic: "z2m/{room}/set"
      payload: {state: "{state}", brightness: "{brightness}", transition: "{transition}"}
    confirm: {topic: "z2m/{room}", expect: {state: "{state}"}, timeout: 1s}
    undo: {publish: {topic: "z2m/{room}/set", payload: {state: "{previous.state|OFF}"}}}
  - name: unlock_door
    description: Unlock the front door.
    publish: {topic: "lock/front/set", payload: {state: UNLOCK}}
    confirm: {topic: "lock/front", expect: {state: UNLOCKED}, timeout: 30s}
    undo: {publish: {topic: "lock/front/set", payload: {state: LOCK}}}
  - name: plug
    description: Switch the plug.
    behavior: BLOCKING
    parameters: {state: {type: string, enum: [ON, OFF, TOGGLE]}}
    required: [state]
    publish: {topic: "cmnd/plug/POWER", payload: "{state}", qos: 0}
  - name: goodnight
    description: Everything off.
    publish:
      - {topic: "z2m/kitchen_ceiling/set", payload: {state: OFF}}
      - {topic: "z2m/bedroom_lamp/set", payload: {state: OFF, transition: 3}}
      - {topic: "cmnd/plug/POWER", payload: "OFF"}
  - name: note
    description: Leave a note on the kitchen display.
    parameters: {text: {type: string, maxLength: 100}, urgent: {type: boolean}}
    required: [text]
    publish: {topic: "home/note", payload: {text: "{text}", urgent: "{urgent}"}, retain: true}
  - name: read_climate
    description: Temperature and humidity of a room.
    parameters: {sensor: {type: string, map: {living: living_sensor, garden: garden_sensor}}}
    required: [sensor]
    read: {topic: "z2m/{sensor}", max_age: 1h, fields: {temperature: temperature, humidity: humidity}}
  - name: read_power
    description: Whether the plug is on.
    read: {topic: "stat/plug/POWER", max_age: 200ms}
"""

DECLARED = {
    "z2m/kitchen_ceiling/set",
    "z2m/bedroom_lamp/set",
    "lock/front/set",
    "cmnd/plug/POWER",
    "home/note",
}


def light_device(topic: str, payload: dict) -> tuple[str, dict]:
    return topic.removesuffix("/set"), {"state": payload["state"], "brightness": 254, "linkquality": 90}


async def test_declared_topic_set_is_fixed_at_load(tmp_path, broker: Broker) -> None:
    async with rig(tmp_path, broker, TOOLS) as r:
        assert r.loaded.registry.topics == DECLARED
        assert r.loaded.registry.watched == {
            "z2m/kitchen_ceiling",
            "z2m/bedroom_lamp",
            "lock/front",
            "z2m/living_sensor",
            "z2m/garden_sensor",
            "stat/plug/POWER",
        }


async def test_typed_payload_map_and_absent_optional(tmp_path, broker: Broker) -> None:
    async with rig(tmp_path, broker, TOOLS) as r, world(broker) as w, device(broker, "z2m/+/set", light_device):
        resp = await r.engine.run(ToolCall("c1", "set_light", {"room": "kitchen", "state": "ON", "brightness": 40}))
        sent = w.on("z2m/kitchen_ceiling/set")
        assert [s.json() for s in sent] == [{"state": "ON", "brightness": 40}]  # int stays int; no transition key
        assert resp is not None and resp.outcome == "success" and resp.scheduling == "WHEN_IDLE"
        assert resp.response == {
            "ok": True,
            "status": "confirmed",
            "state": {"state": "ON", "brightness": 254, "linkquality": 90},
        }
        resp = await r.engine.run(ToolCall("c2", "set_light", {"room": "bedroom", "state": "OFF", "transition": 1.5}))
        assert w.on("z2m/bedroom_lamp/set")[-1].json() == {"state": "OFF", "transition": 1.5}
        assert resp is not None and resp.outcome == "success"


async def test_raw_text_payload_blocking_tool(tmp_path, broker: Broker) -> None:
    async with rig(tmp_path, broker, TOOLS) as r, world(broker) as w:
        resp = await r.engine.run(ToolCall("p1", "plug", {"state": "TOGGLE"}))
        await w.fence(r.link)
        assert [s.payload for s in w.on("cmnd/plug/POWER")] == [b"TOGGLE"]
        assert resp is not None and resp.response == {"ok": True, "status": "sent"}
        assert resp.scheduling is None  # BLOCKING: the model waits for the answer, scheduling does not apply


async def test_scene_publishes_in_order(tmp_path, broker: Broker) -> None:
    async with rig(tmp_path, broker, TOOLS) as r, world(broker) as w:
        resp = await r.engine.run(ToolCall("s1", "goodnight", {}))
        await w.fence(r.link)
        assert [(s.topic, s.payload) for s in w.seen if not s.topic.startswith("fence/")] == [
            ("z2m/kitchen_ceiling/set", b'{"state":"OFF"}'),
            ("z2m/bedroom_lamp/set", b'{"state":"OFF","transition":3}'),
            ("cmnd/plug/POWER", b"OFF"),
        ]
        assert resp is not None and resp.outcome == "success"
        assert [k for k in resp.timings if k.startswith("publish")] == [
            "publish z2m/kitchen_ceiling/set",
            "publish z2m/bedroom_lamp/set",
            "publish cmnd/plug/POWER",
        ]


async def test_retain_and_boolean_payload(tmp_path, broker: Broker) -> None:
    async with rig(tmp_path, broker, TOOLS) as r:
        resp = await r.engine.run(ToolCall("n1", "note", {"text": "milk, eggs", "urgent": True}))
        assert resp is not None and resp.outcome == "success"
    async with world(broker) as late:  # subscribes after the publish: only a retained message reaches it
        got = await late.wait_for(lambda s: s.topic == "home/note")
        assert got.retain and got.json() == {"text": "milk, eggs", "urgent": True}


async def test_confirm_timeout_reports_unconfirmed(tmp_path, broker: Broker) -> None:
    silent = device(broker, "z2m/+/set", lambda t, p: (t.removesuffix("/set"), {"state": "OFF"}))  # stuck device
    async with rig(tmp_path, broker, TOOLS) as r, silent:
        resp = await r.engine.run(ToolCall("t1", "set_light", {"room": "kitchen", "state": "ON"}))
        assert resp is not None and resp.outcome == "timeout"
        assert resp.scheduling == "SILENT"  # per the spec's scheduling for timeouts
        assert resp.response["ok"] is False and resp.response["status"] == "unconfirmed"
        assert "did not confirm within 1s" in resp.response["error"]
        assert '"state": "OFF"' in resp.response["error"]  # what the device did say


async def test_read_from_retained_state(tmp_path, broker: Broker) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as sensor:  # published before the daemon starts
        await sensor.publish("z2m/living_sensor", json.dumps({"temperature": 21.5, "humidity": 40}), retain=True)
        await sensor.publish("stat/plug/POWER", "ON", retain=True)
    async with rig(tmp_path, broker, TOOLS) as r, world(broker) as w:
        await w.wait_for(lambda s: s.topic == "stat/plug/POWER")
        await eventually(lambda: r.link.last("stat/plug/POWER") is not None)
        resp = await r.engine.run(ToolCall("r1", "read_climate", {"sensor": "living"}))
        assert resp is not None and resp.outcome == "success"
        assert resp.response["value"] == {"temperature": 21.5, "humidity": 40}
        assert resp.response["retained"] is True
        resp = await r.engine.run(ToolCall("r2", "read_climate", {"sensor": "garden"}))
        assert resp is not None and resp.outcome == "error" and "no reading" in resp.response["error"]
        resp = await r.engine.run(ToolCall("r3", "read_power", {}))
        assert resp is not None and resp.response["value"] == "ON"  # plain text payloads are read as text
        await asyncio.sleep(0.3)
        resp = await r.engine.run(ToolCall("r4", "read_power", {}))
        assert resp is not None and resp.response["status"] == "stale" and resp.response["value"] == "ON"
        await w.fence(r.link)
        assert w.topics() == ["z2m/living_sensor", "stat/plug/POWER"]  # the retained copies; reads publish nothing


async def test_cancel_before_publish_publishes_nothing(tmp_path, broker: Broker) -> None:
    async with rig(tmp_path, broker, TOOLS) as r, world(broker) as w:
        assert r.engine.submit(ToolCall("x1", "unlock_door", {}))
        [report] = await r.engine.cancel(["x1"])  # before the call's task got to run
        assert report.result == "not_published"
        await w.fence(r.link)
        assert w.topics() == []
        assert r.engine.ready_responses() == []


async def test_cancel_during_confirm_runs_undo_and_never_answers(tmp_path, broker: Broker) -> None:
    async with rig(tmp_path, broker, TOOLS) as r, world(broker) as w:
        assert r.engine.submit(ToolCall("d1", "unlock_door", {}))
        await w.wait_for(lambda s: s.topic == "lock/front/set")  # published; now waiting up to 30 s to confirm
        [report] = await r.engine.cancel(["d1"])
        assert report.result == "undone"
        await w.fence(r.link)
        assert [s.json() for s in w.on("lock/front/set")] == [{"state": "UNLOCK"}, {"state": "LOCK"}]
        assert r.engine.ready_responses() == []
        assert r.engine.outstanding == []
        assert [e.kind for e in r.events] == ["tool_started", "cancelled"]


async def test_undo_restores_previous_state(tmp_path, broker: Broker) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as bulb:
        await bulb.publish("z2m/kitchen_ceiling", json.dumps({"state": "ON", "brightness": 80}), retain=True)
    async with rig(tmp_path, broker, TOOLS) as r, world(broker) as w:
        await eventually(lambda: r.link.last("z2m/kitchen_ceiling") is not None)
        r.engine.submit(ToolCall("u1", "set_light", {"room": "kitchen", "state": "OFF"}))
        await w.wait_for(lambda s: s.topic == "z2m/kitchen_ceiling/set")
        [report] = await r.engine.cancel(["u1"])
        assert report.result == "undone"
        await w.fence(r.link)
        assert [s.json() for s in w.on("z2m/kitchen_ceiling/set")] == [{"state": "OFF"}, {"state": "ON"}]


async def test_cancel_of_ready_answer_withdraws_it_and_undoes(tmp_path, broker: Broker) -> None:
    async with rig(tmp_path, broker, TOOLS) as r, world(broker) as w:
        await r.engine.run(ToolCall("k0", "plug", {"state": "ON"}))  # an answered call cannot be cancelled
        r.engine.submit(ToolCall("k1", "note", {"text": "hi"}))
        await eventually(lambda: "k1" not in r.engine.outstanding)
        reports = await r.engine.cancel(["k1", "k0", "nope"])
        assert [x.result for x in reports] == ["no_undo", "already_answered", "not_found"]
        assert r.engine.ready_responses() == []  # the ready answer was withdrawn
        await w.fence(r.link)


async def test_duplicate_ids_execute_once(tmp_path, broker: Broker) -> None:
    async with rig(tmp_path, broker, TOOLS) as r, world(broker) as w:
        call = ToolCall("dup", "plug", {"state": "ON"})
        assert r.engine.submit(call)
        assert not r.engine.submit(call)
        first = await asyncio.wait_for(r.engine.next_response(), 5)
        assert not r.engine.submit(ToolCall("dup", "plug", {"state": "OFF"}))  # even after it was answered
        await w.fence(r.link)
        assert [s.payload for s in w.on("cmnd/plug/POWER")] == [b"ON"]
        assert first.id == "dup" and r.engine.ready_responses() == []
        assert [e.kind for e in r.events] == ["tool_started", "tool_repeated", "tool_finished", "tool_repeated"]


async def test_parallel_calls_answer_as_each_finishes(tmp_path, broker: Broker) -> None:
    async with rig(tmp_path, broker, TOOLS) as r, device(broker, "z2m/+/set", light_device):
        r.engine.submit(ToolCall("slow", "unlock_door", {}))  # nobody confirms: still waiting
        r.engine.submit(ToolCall("fast", "set_light", {"room": "bedroom", "state": "ON"}))
        first = await asyncio.wait_for(r.engine.next_response(), 5)
        assert first.id == "fast"
        assert r.engine.outstanding == ["slow"]
        reports = await r.engine.settle(timeout=0.05)  # end of conversation: the late one is cancelled and undone
        assert [(x.id, x.result) for x in reports] == [("slow", "undone")]


INJECTIONS = [
    ("set_light", {"room": "#", "state": "ON"}),
    ("set_light", {"room": "+", "state": "ON"}),
    ("set_light", {"room": "kitchen/../bedroom", "state": "ON"}),
    ("set_light", {"room": "kitchen\x00", "state": "ON"}),
    ("set_light", {"room": "k" * 10_000, "state": "ON"}),
    ("set_light", {"room": "kitchen", "state": "ON", "brightness": "50"}),
    ("set_light", {"room": "kitchen", "state": "ON", "brightness": 500}),
    ("set_light", {"room": "kitchen", "state": "ON", "brightness": True}),
    ("set_light", {"room": "kitchen", "state": ["ON"]}),
    ("set_light", {"room": "kitchen", "state": "ON", "topic": "lock/front/set"}),
    ("set_light", {"state": "ON"}),
    ("note", {"text": "x" * 10_000}),
    ("note", {"text": "bell\x07"}),
    ("note", {"text": {"nested": "object"}}),
    ("unlock_the_door", {}),
    ("plug", "ON"),
]


@pytest.mark.parametrize(("name", "args"), INJECTIONS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(INJECTIONS)])
async def test_injection_attempts_publish_nothing(tmp_path, broker: Broker, name, args) -> None:
    async with rig(tmp_path, broker, TOOLS) as r, world(broker) as w:
        resp = await r.engine.run(ToolCall("i1", name, args))
        await w.fence(r.link)
        assert w.topics() == []
        assert resp is not None and resp.outcome == "error" and resp.response["ok"] is False
        assert len(json.dumps(resp.response)) < 600  # a 10 kB argument is not echoed back


async def test_unknown_tool_suggests_the_closest(tmp_path, broker: Broker) -> None:
    async with rig(tmp_path, broker, TOOLS) as r:
        resp = await r.engine.run(ToolCall("u", "unlock_dor", {}))
        assert resp is not None and "unknown tool 'unlock_dor'" in resp.response["error"]
        assert "unlock_door" in resp.response["error"]


async def test_broker_down_fails_fast_and_never_publishes_later(tmp_path, broker: Broker) -> None:
    async with rig(tmp_path, broker, TOOLS) as r:
        broker.stop()
        await eventually(lambda: not r.link.connected, what="the link to notice the broker is gone")
        resp = await r.engine.run(ToolCall("b1", "unlock_door", {}))
        assert resp is not None and resp.outcome == "error"
        assert "unreachable" in resp.response["error"] and "nothing was sent" in resp.response["error"]
        assert not [k for k in resp.timings if k.startswith("publish")]  # refused before any publish was tried
        broker.start()
        async with world(broker) as w:
            assert await r.link.wait_connected(10)
            await w.fence(r.link)
            ok = await r.engine.run(ToolCall("b2", "plug", {"state": "OFF"}))
            await w.fence(r.link)
            assert w.topics() == ["cmnd/plug/POWER"]  # the refused unlock never went out after the reconnect
            assert ok is not None and ok.outcome == "success"
