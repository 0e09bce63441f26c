"""The assistant on MQTT, on a real mosquitto: the last will, retained availability/state/discovery, state and
events from real conversations (the Live simulator and the real tool layer), commands, Home Assistant
discovery, and outages. The controller is a recording stand-in for the conversation loop."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from daemon import credentials
from daemon.audio.speech import silence
from daemon.events import (
    STATES,
    ReloadRefused,
    SessionEnded,
    SessionStarted,
    StateChanged,
    Status,
    ToolFinished,
    ToolStarted,
    WakeHeard,
)
from daemon.mqtt.commands import MAX_SAY_CHARS
from daemon.mqtt.discovery import discovery
from daemon.mqtt.presence import Presence
from daemon.mqtt.topics import EVENT_TYPES, Topics
from tests.support.broker import Broker
from tests.support.daemonrig import Running, running_daemon
from tests.support.livestack import CANCEL_AT_ONCE
from tests.support.mqttworld import Seen, World, world
from tests.support.presence_helpers import RecordingController, Relay, satellite, satellite_config
from tests.support.speech_files import speech, write_wav
from tests.support.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent
HA = "homeassistant"


def transitions(w: World, topics: Topics) -> list[str]:
    """The states a real daemon went through: its state topic also changes for other fields (volume, tokens)."""
    out: list[str] = []
    for state in states(w, topics):
        if not out or out[-1] != state:
            out.append(state)
    return out


def states(w: World, topics: Topics) -> list[str]:
    return [s.json()["state"] for s in w.on(topics.state)]


def events(w: World, topics: Topics, kind: str | None = None) -> list[dict[str, Any]]:
    seen = [s.json() for s in w.on(topics.events)]
    return [e for e in seen if kind is None or e["event_type"] == kind]


async def settle(presence: Presence, w: World) -> None:
    """Everything Presence queued so far is published and has reached the observer."""
    await presence.flush(10)
    await w.fence(presence.link)


# ---- availability --------------------------------------------------------------------------------------------


async def test_a_killed_satellite_shows_offline_through_its_last_will(broker: Broker) -> None:
    topic = "livehome/victim/availability"
    async with world(broker) as w:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.support.presence_helpers", broker.host, str(broker.port), "victim",
            cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"ready\n"
            await w.wait_for(lambda s: s.topic == topic and s.payload == b"online")
            proc.kill()  # SIGKILL: no chance to say goodbye
            await proc.wait()
            await w.wait_for(lambda s: s.topic == topic and s.payload == b"offline", timeout=10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    async with world(broker) as late:  # the will was retained: whoever looks later sees it too
        seen = await late.wait_for(lambda s: s.topic == topic)
        assert (seen.payload, seen.retain) == (b"offline", True)


async def test_a_clean_stop_publishes_offline_retained(broker: Broker) -> None:
    async with world(broker) as w, satellite(broker, "den") as sat:
        await w.wait_for(lambda s: s.topic == sat.topics.availability and s.payload == b"online")
        await sat.presence.stop()
        await w.wait_for(lambda s: s.topic == sat.topics.availability and s.payload == b"offline")
        sat.presence.set_state("listening")  # after stop: silently ignored, never raised
    async with world(broker) as late:
        seen = await late.wait_for(lambda s: s.topic == "livehome/den/availability")
        assert (seen.payload, seen.retain) == (b"offline", True)


async def test_late_subscriber_sees_availability_state_and_discovery(broker: Broker) -> None:
    async with satellite(broker, "kitchen", room="Kitchen", discovery_prefix=HA) as sat:
        sat.presence.notify(WakeHeard("hey_jarvis", 0.8731, 16000, 1.0))
        sat.presence.notify(StateChanged("listening", False))
        sat.presence.event("error", message="not retained")
        await sat.presence.flush(10)
        expected = set(discovery(sat.config))
        async with world(broker) as late:
            await late.wait_for(lambda s: s.topic == sat.topics.availability)
            for topic in expected:
                await late.wait_for(lambda s, t=topic: s.topic == t)
            await late.wait_for(lambda s: s.topic == sat.topics.state)
            await late.fence(sat.link)
            assert all(s.retain for s in late.seen if not s.topic.startswith("fence/"))
            assert late.on(sat.topics.availability)[0].payload == b"online"
            [state] = late.on(sat.topics.state)
            body = state.json()
            assert body["state"] == "listening" and body["muted"] is False and body["room"] == "Kitchen"
            assert body["wake_words"] == ["hey_jarvis", "alexa"]  # the satellite helper's words
            assert body["last_wake"]["word"] == "hey_jarvis" and body["last_wake"]["score"] == 0.873
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["since"])
            assert late.on(sat.topics.events) == []  # events are not retained
            assert {s.topic for s in late.seen if s.topic.startswith(HA + "/")} == expected


# ---- state and events from real conversations -----------------------------------------------------------------


def topics_of(run: Running) -> Topics:
    return Topics.of(run.daemon.loaded.config)


async def conversation_by_command(tmp_path: Path, broker: Broker, scenario: str | Path, text: str, **kw: Any):
    """The real daemon on a silent microphone, a conversation started as the `say` command starts it."""
    write_wav(tmp_path / "mic.wav", silence(8.0))
    async with running_daemon(tmp_path, broker, scenario, input=str(tmp_path / "mic.wav"), **kw) as run:
        await run.until(lambda: run.trace.of("ready"))
        await run.daemon.start_conversation(text)
        await run.until(lambda: run.trace.of("session_ended"))
        run.daemon.stop()
        assert await asyncio.wait_for(run.task, 30) == 0
    return run


async def test_state_and_events_follow_a_real_conversation(tmp_path: Path, broker: Broker) -> None:
    write_wav(tmp_path / "mic.wav", silence(1.0) + speech("hey jarvis, turn on the kitchen light") + silence(4.0))
    async with running_daemon(tmp_path, broker, "lights_on", input=str(tmp_path / "mic.wav")) as run:
        assert await asyncio.wait_for(run.task, 60) == 0
        t = topics_of(run)
        assert transitions(run.world, t) == [
            "idle",
            "listening",
            "connecting",
            "conversation",
            "speaking",
            "conversation",
            "idle",
        ]
        kinds = [e["event_type"] for e in events(run.world, t)]
        assert kinds == ["wake", "session_started", "tool_call", "session_ended"]
        [call] = events(run.world, t, "tool_call")
        assert (call["id"], call["name"], call["args"], call["outcome"]) == (
            "light-1",
            "set_light",
            {"light": "kitchen", "state": "ON"},
            "success",
        )
        assert call["latency"] > 0
        [ended] = events(run.world, t, "session_ended")
        assert (ended["reason"], ended["tool_calls"]) == ("idle", 1) and ended["duration"] > 0
        [last] = run.world.on(t.last_tool)
        assert last.json()["name"] == "set_light" and last.json()["outcome"] == "success"
    async with world(broker) as late:  # what HA shows after its own restart
        seen = await late.wait_for(lambda s: s.topic == t.last_tool)
        assert seen.retain and seen.json()["id"] == "light-1"


async def test_a_dropped_connection_shows_connecting_and_a_reconnecting_event(tmp_path: Path, broker: Broker) -> None:
    slow_kitchen = {"z2m/kitchen_ceiling/set": 0.6}
    run = await conversation_by_command(
        tmp_path, broker, "drop_and_resume", "turn on the kitchen light", delays=slow_kitchen
    )
    t = topics_of(run)
    seq = transitions(run.world, t)
    assert seq[:3] == ["idle", "connecting", "conversation"]
    assert seq[3:5] == ["connecting", "conversation"]  # the drop, then the resumed connection
    assert seq[-1] == "idle"
    [again] = events(run.world, t, "reconnecting")
    assert again["attempt"] == 1 and "1006" in again["why"]
    assert len(events(run.world, t, "session_started")) == 1  # a resumed connection is the same conversation


async def test_a_cancelled_tool_call_is_an_event(tmp_path: Path, broker: Broker) -> None:
    scenario = tmp_path / "cancel.yaml"
    scenario.write_text(CANCEL_AT_ONCE)
    run = await conversation_by_command(tmp_path, broker, scenario, "dinner scene")
    t = topics_of(run)
    [cancelled] = events(run.world, t, "cancelled")
    assert (cancelled["id"], cancelled["name"], cancelled["result"]) == ("scene-2", "run_scene", "not_published")
    assert events(run.world, t, "tool_call") == []


async def test_states_are_published_as_the_daemon_reports_them_and_never_twice(broker: Broker) -> None:
    async with world(broker) as w, satellite(broker, "hall") as sat:
        p = sat.presence
        # What the daemon reports when the user talks over the model (see test_daemon's barge-in test).
        for state in ["connecting", "conversation", "speaking", "speaking", "conversation", "speaking", "conversation"]:
            p.notify(StateChanged(state, False))
        p.notify(SessionEnded("fatal", "Gemini closed the session for good", 4.2, 0))
        p.notify(StateChanged("idle", False))
        p.notify(StateChanged("idle", False))  # the loop saying what Presence already published
        await settle(p, w)
        expected = [
            "idle",
            "connecting",
            "conversation",
            "speaking",
            "conversation",
            "speaking",
            "conversation",
            "idle",
        ]
        assert states(w, sat.topics) == expected
        [error] = events(w, sat.topics, "error")
        assert error["message"] == "conversation ended: fatal: Gemini closed the session for good"


async def test_daemon_events_become_mqtt_events(broker: Broker) -> None:
    async with world(broker) as w, satellite(broker, "study") as sat:
        p = sat.presence
        p.notify(WakeHeard("alexa", 0.7, 1280, 0.08))
        p.notify(StateChanged("listening", False))
        p.notify(StateChanged("connecting", False))
        p.notify(SessionStarted("wake", "alexa", 0, 1))
        p.notify(StateChanged("conversation", False))
        p.notify(ToolStarted("c1", "plug", {"state": "ON"}))
        p.notify(ToolFinished("c1", "plug", {"state": "ON"}, "error", 0.0123, "no such plug"))
        p.notify(SessionEnded("idle", "", 9.6, 1))
        p.notify(StateChanged("idle", False))
        p.notify(ReloadRefused(("config.yaml:3: gemini.model: bad",)))
        p.notify(StateChanged("muted", True))  # a mute from elsewhere (a button on the satellite)
        p.notify(StateChanged("idle", False))
        await settle(p, w)
        assert [s.json()["muted"] for s in w.on(sat.topics.state)][-2:] == [True, False]
        kinds = [e["event_type"] for e in events(w, sat.topics)]
        assert kinds == ["wake", "session_started", "tool_call", "session_ended", "reload_refused"]
        [started] = events(w, sat.topics, "session_started")
        assert (started["trigger"], started["word"]) == ("wake", "alexa")
        [call] = events(w, sat.topics, "tool_call")
        assert (call["outcome"], call["latency"], call["detail"]) == ("error", 0.012, "no such plug")
        assert states(w, sat.topics) == ["idle", "listening", "connecting", "conversation", "idle", "muted", "idle"]


def test_unknown_states_and_events_are_programming_errors() -> None:
    config = satellite_config("127.0.0.1", 1, "x")
    p = Presence(None, config, RecordingController())  # type: ignore[arg-type]  # nothing is published
    with pytest.raises(ValueError, match="state must be one of"):
        p.set_state("thinking")
    with pytest.raises(ValueError, match="event kind must be one of"):
        p.event("sneezed")


# ---- commands ------------------------------------------------------------------------------------------------


async def send(w: World, topic: str, payload: str | bytes, retain: bool = False) -> None:
    await w.client.publish(topic, payload, qos=1, retain=retain)


async def test_each_command_reaches_the_controller_in_order(broker: Broker) -> None:
    enabled = ["start", "end", "mute", "unmute", "say", "reload"]  # say, a text turn, is off by default
    async with world(broker) as w, satellite(broker, "office", commands=enabled) as sat:
        sat.controller.slow = {"start_conversation": 0.05}  # the next command must not overtake a running one
        topic = sat.topics.command
        for payload in [
            '{"command": "start"}',
            '{"command": "say", "text": "  turn on the kitchen light  "}',
            '{"command": "end"}',
            '{"command": "mute"}',
            '{"command": "unmute"}',
            '{"command": "reload"}',
            "start",
            " MUTE\n",
            "unmute",
            "end",
        ]:
            await send(w, topic, payload)
        await eventually(lambda: len(sat.controller.calls) == 10, what="all ten commands")
        assert sat.controller.calls == [
            ("start_conversation", None),
            ("start_conversation", "turn on the kitchen light"),
            ("end_conversation",),
            ("set_muted", True),
            ("set_muted", False),
            ("reload",),
            ("start_conversation", None),
            ("set_muted", True),
            ("set_muted", False),
            ("end_conversation",),
        ]
        await settle(sat.presence, w)
        assert [s.json()["muted"] for s in w.on(sat.topics.state)] == [False, True, False, True, False]
        assert states(w, sat.topics) == ["idle", "muted", "idle", "muted", "idle"]
        assert events(w, sat.topics) == []


BAD_COMMANDS = [
    (b"", "empty command"),
    (b"   ", "empty command"),
    (b"dance", "unknown command 'dance'; expected one of start, end, mute, unmute, reload, say, announce"),
    (b"say hello", "say needs JSON"),
    (b"{not json", "command is not valid JSON"),
    (b'["start"]', "command must be a JSON object"),
    (b'"start"', "command must be a JSON object"),
    (b"{}", "command: missing"),
    (b'{"command": 7}', "command: must be a string"),
    (b'{"command": "launch"}', "command: unknown command 'launch'"),
    (b'{"command": "start", "extra": 1}', "unknown key 'extra' for command start"),
    (b'{"command": "mute", "b": 1, "a": 2}', "unknown keys 'a', 'b' for command mute"),
    (b'{"command": "start", "text": "hi"}', "unknown key 'text' for command start"),
    (b'{"command": "say"}', "text: missing"),
    (b'{"command": "say", "text": 42}', "text: must be a string"),
    (b'{"command": "say", "text": "   "}', "text: must not be empty"),
    (json.dumps({"command": "say", "text": "x" * (MAX_SAY_CHARS + 1)}).encode(), "text: 1001 characters; at most 1000"),
    (b'{"command": "start", "command": "end"}', "command: given twice"),
    (b"\xff\xfe", "command is not UTF-8 text"),
    (b"x" * 5000, "command is 5000 bytes; at most 4096"),
    (b"[" * 2000 + b"]" * 2000, "nested deeper than 8 levels"),
]


async def test_bad_commands_are_rejected_with_an_event_naming_the_problem(broker: Broker) -> None:
    async with world(broker) as w, satellite(broker, "attic") as sat:
        for payload, _ in BAD_COMMANDS:
            await send(w, sat.topics.command, payload)
        await send(w, sat.topics.command, "end")  # commands are handled in order: once this ran, all had their turn
        await sat.controller.wait_for("end_conversation")
        await settle(sat.presence, w)
        assert sat.controller.calls == [("end_conversation",)]
        rejected = events(w, sat.topics, "command_rejected")
        assert len(rejected) == len(BAD_COMMANDS)
        for event, (payload, expected) in zip(rejected, BAD_COMMANDS, strict=True):
            assert expected in event["message"], (payload[:60], event["message"])
        assert len(json.dumps(rejected[-1])) < 300  # a huge payload is not echoed back


async def test_a_retained_command_is_never_run(broker: Broker) -> None:
    async with world(broker) as w:
        await send(w, "livehome/porch/command", '{"command": "start"}', retain=True)
        async with satellite(broker, "porch") as sat:
            await w.wait_for(lambda s: s.topic == sat.topics.events)
            await send(w, sat.topics.command, "end")
            await sat.controller.wait_for("end_conversation")
            assert sat.controller.calls == [("end_conversation",)]
            [event] = events(w, sat.topics)
            assert event["event_type"] == "command_rejected" and "retained" in event["message"]
            assert "mosquitto_pub -r -n -t 'livehome/porch/command'" in event["message"]  # how to clear it
            await w.wait_for(lambda s: s.topic == sat.topics.command and s.payload == b"" and s.retain is False)
    async with world(broker) as late:  # the daemon cleared it: the next start finds no retained command
        await late.client.publish("fence/late", b"", qos=1)
        await late.wait_for(lambda s: s.topic == "fence/late")
        assert late.on("livehome/porch/command") == []


async def test_a_failing_controller_is_reported_and_later_commands_still_run(broker: Broker) -> None:
    async with world(broker) as w, satellite(broker, "garage") as sat:
        sat.controller.fail = RuntimeError("the conversation loop is busy")
        await send(w, sat.topics.command, "reload")
        await w.wait_for(lambda s: s.topic == sat.topics.events)
        sat.controller.fail = None
        await send(w, sat.topics.command, "start")
        await sat.controller.wait_for("start_conversation", None)
        [failed] = events(w, sat.topics, "command_failed")
        assert (failed["command"], failed["message"]) == ("reload", "the conversation loop is busy")


async def test_secrets_never_reach_mqtt(broker: Broker) -> None:
    secret = "AIzaSy-TEST-not-a-real-key-0123456789"
    credentials.register_secret(secret)
    try:
        async with world(broker) as w, satellite(broker, "vault") as sat:
            sat.controller.fail = RuntimeError(f"the service refused key {secret}")
            await send(w, sat.topics.command, "start")
            seen = await w.wait_for(lambda s: s.topic == sat.topics.events)
            assert seen.json()["message"] == "the service refused key ***"
            assert secret.encode() not in b"".join(s.payload for s in w.seen)
    finally:
        credentials.clear_secrets()


# ---- Home Assistant discovery --------------------------------------------------------------------------------

REQUIRED = {
    "sensor": {"state_topic"},
    "switch": {"command_topic", "state_topic", "payload_on", "payload_off"},
    "button": {"command_topic", "payload_press"},
    "event": {"state_topic", "event_types"},
    "notify": {"command_topic", "command_template"},
    "text": {"command_topic", "command_template"},
    "number": {"command_topic", "command_template", "state_topic", "value_template", "min", "max"},
    "select": {"command_topic", "command_template", "state_topic", "value_template", "options"},
}
EVERY_COMMAND = ["start", "end", "mute", "unmute", "say", "announce", "volume", "stop", "barge_in", "reload"]


async def test_discovery_payloads_follow_ha_conventions_and_use_the_real_topics(broker: Broker) -> None:
    async with (
        world(broker) as w,
        satellite(broker, "lounge", name="Lounge", room="Living room", discovery_prefix=HA,
                  commands=EVERY_COMMAND) as sat,
    ):
        t = sat.topics
        configs: dict[str, dict[str, Any]] = {}
        for topic in discovery(sat.config):
            seen = await w.wait_for(lambda s, topic=topic: s.topic == topic)
            configs[topic] = seen.json()  # retention: test_late_subscriber_sees_availability_state_and_discovery
        components = {}
        for topic, cfg in configs.items():
            m = re.fullmatch(rf"{HA}/(sensor|switch|button|event|notify|text|number|select)/([A-Za-z0-9_-]+)/config",
                             topic)
            assert m, topic
            component, object_id = m.groups()
            assert object_id == cfg["unique_id"]
            assert REQUIRED[component] <= set(cfg), (topic, REQUIRED[component] - set(cfg))
            assert cfg["availability_topic"] == t.availability
            assert (cfg["payload_available"], cfg["payload_not_available"]) == ("online", "offline")
            assert {k: v for k, v in cfg["device"].items() if k != "hw_version"} == {  # hw_version: on a Pi only
                "identifiers": ["livehome_lounge"],
                "name": "Lounge",
                "manufacturer": "livehome",
                "model": "Voice satellite",
                "sw_version": cfg["origin"]["sw_version"],
                "suggested_area": "Living room",
            }
            assert cfg["origin"]["name"] == "livehome" and cfg["name"]
            components[cfg["unique_id"].removeprefix("livehome_lounge_")] = cfg
        assert len({c["unique_id"] for c in configs.values()}) == len(configs) == 17
        assert components["state"]["state_topic"] == t.state and components["state"]["options"] == list(STATES)
        assert components["events"]["state_topic"] == t.events and components["events"]["event_types"] == list(
            EVENT_TYPES
        )
        assert components["last_tool"]["state_topic"] == t.last_tool

        # Pressing the buttons and flipping the switch the way HA would: their payloads on their topics.
        start, end, mute = components["start"], components["end"], components["mute"]
        await send(w, start["command_topic"], start["payload_press"])
        await sat.controller.wait_for("start_conversation", None)
        await send(w, end["command_topic"], end["payload_press"])
        await sat.controller.wait_for("end_conversation")
        await send(w, mute["command_topic"], mute["payload_on"])
        await sat.controller.wait_for("set_muted", True)
        await w.wait_for(lambda s: s.topic == mute["state_topic"] and s.json()["muted"] is True)
        await send(w, mute["command_topic"], mute["payload_off"])
        await sat.controller.wait_for("set_muted", False)
        await w.wait_for(lambda s: s.topic == mute["state_topic"] and s.json()["muted"] is False)
        # The new entities, the way HA sends them: their command_template rendered with the entity's value.
        jinja2 = pytest.importorskip("jinja2")
        env = jinja2.Environment(undefined=jinja2.StrictUndefined)
        for key, value, call in [
            ("announce", "Dinner is ready", ("announce", "Dinner is ready", True, False)),
            ("say", 'turn on the "big" light', ("start_conversation", 'turn on the "big" light')),
            ("volume", "30.0", ("set_volume", 30)),
            ("barge_in", "voice", ("set_barge_in", "voice")),
        ]:
            entity = components[key]
            payload = env.from_string(entity["command_template"]).render(value=value)
            await send(w, entity["command_topic"], payload)
            await sat.controller.wait_for(*call)
        for key, call in [("stop", ("stop_ringing",)), ("reload", ("reload",))]:
            await send(w, components[key]["command_topic"], components[key]["payload_press"])
            await sat.controller.wait_for(*call)
        assert not events(w, t, "command_rejected")


async def test_discovery_templates_render_against_what_is_published(broker: Broker) -> None:
    """HA renders value_template with Jinja and value_json; so does this test, on the real retained payloads."""
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)

    def render(cfg: dict[str, Any], seen: Seen) -> str:
        return env.from_string(cfg["value_template"]).render(value_json=seen.json(), value=seen.payload.decode())

    async with world(broker) as w, satellite(broker, "bath", discovery_prefix=HA) as sat:
        cfg = {c["unique_id"]: c for c in (json.loads(json.dumps(p)) for p in discovery(sat.config).values())}
        state, mute, last = cfg["livehome_bath_state"], cfg["livehome_bath_mute"], cfg["livehome_bath_last_tool"]
        sat.presence.notify(StateChanged("muted", True))
        sat.presence.notify(ToolFinished("t1", "set_light", {"room": "bath"}, "success", 0.2))
        sat.presence.notify(WakeHeard("hey_jarvis", 0.87, 16000, 1.0))
        sat.presence.notify(Status(35, "voice", "connected", 1234, "fatal: no key", "2026-11-29T12:00:00+00:00"))
        await settle(sat.presence, w)
        latest = w.on(sat.topics.state)[-1]
        assert render(state, latest) == "muted" and render(state, latest) in state["options"]
        assert render(mute, latest) == mute["state_on"]
        last_tool = w.on(sat.topics.last_tool)[-1]
        assert render(last, last_tool) == last_tool.json()["at"] and last_tool.json()["name"] == "set_light"
        for key, expected in [("volume", "35"), ("barge_in", "voice"), ("wake_score", "0.87"), ("live", "connected"),
                              ("tokens_today", "1234"), ("last_error", "fatal: no key"),
                              ("next_timer", "2026-11-29T12:00:00+00:00")]:  # fmt: skip
            assert render(cfg[f"livehome_bath_{key}"], latest) == expected, key
        sat.presence.notify(StateChanged("idle", False))
        await settle(sat.presence, w)
        latest = w.on(sat.topics.state)[-1]
        assert render(mute, latest) == mute["state_off"] and render(state, latest) == "idle"
        for event in events(w, sat.topics):
            assert event["event_type"] in cfg["livehome_bath_events"]["event_types"]


async def test_discovery_turned_off_removes_the_entities(broker: Broker) -> None:
    async with satellite(broker, "cellar", discovery_prefix=HA) as sat:
        topics = set(discovery(sat.config))
    async with world(broker) as w:
        for topic in topics:
            await w.wait_for(lambda s, t=topic: s.topic == t)  # retained while the satellite was away
        async with satellite(broker, "cellar", discovery_prefix=HA, discovery=False) as sat:
            for topic in topics:
                await w.wait_for(lambda s, t=topic: s.topic == t and s.payload == b"")
            async with world(broker) as late:  # Home Assistant starting now finds nothing to discover
                await late.wait_for(lambda s: s.topic == sat.topics.availability)
                await late.fence(sat.link)
                assert not [s for s in late.seen if s.topic.startswith(HA + "/")]


async def test_ha_birth_message_republishes_discovery_and_state(broker: Broker) -> None:
    async with world(broker) as w, satellite(broker, "nursery", discovery_prefix=HA) as sat:
        config_topic = next(iter(discovery(sat.config)))
        await w.wait_for(lambda s: s.topic == config_topic)
        before = len(w.on(config_topic)), len(w.on(sat.topics.state))
        await send(w, f"{HA}/status", "online")
        await w.wait_for(lambda s: s.topic == config_topic and len(w.on(config_topic)) > before[0])
        await w.wait_for(lambda s: s.topic == sat.topics.state and len(w.on(sat.topics.state)) > before[1])


async def test_reconfigure_updates_room_and_removes_discovery(broker: Broker) -> None:
    async with world(broker) as w, satellite(broker, "loft", room="Loft", discovery_prefix=HA) as sat:
        topics = set(discovery(sat.config))
        moved = satellite_config(broker.host, broker.port, "loft", room="Bedroom", discovery_prefix=HA)
        sat.presence.reconfigure(moved)
        await settle(sat.presence, w)
        assert w.on(sat.topics.state)[-1].json()["room"] == "Bedroom"
        assert all(w.on(t)[-1].json()["device"]["suggested_area"] == "Bedroom" for t in topics)
        sat.presence.reconfigure(satellite_config(broker.host, broker.port, "loft", room="Bedroom"))
        await settle(sat.presence, w)
        assert all(w.on(t)[-1].payload == b"" for t in topics)  # discovery_prefix unset: removed


# ---- outages -------------------------------------------------------------------------------------------------


async def test_outage_drops_updates_never_queues_them_and_reannounces_the_latest(
    broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await Relay(broker).start()
    try:
        async with world(broker) as w, satellite(broker, "shed", port=relay.port) as sat:
            p = sat.presence
            p.set_state("listening")
            await settle(p, w)
            relay.cut()
            # The broker sees the connection die without a DISCONNECT: the will marks the satellite offline.
            await w.wait_for(lambda s: s.topic == sat.topics.availability and s.payload == b"offline")
            await eventually(lambda: not sat.link.connected, what="the link to notice the outage")
            caplog.set_level(logging.WARNING, logger="livehome.mqtt.presence")
            p.set_state("connecting")
            p.event("error", message="lost during the outage")
            p.set_state("conversation")
            p.notify(ToolFinished("x1", "plug", {}, "success", 0.1))
            dropped = [r for r in caplog.records if r.name == "livehome.mqtt.presence"]
            assert len(dropped) == 1 and "dropped" in dropped[0].getMessage()  # once per outage
            relay.restore()
            avail = sat.topics.availability
            # online, the will's offline, then online again after the reconnect
            await w.wait_for(lambda s: s.topic == avail and len(w.on(avail)) >= 3, timeout=10)
            assert [s.payload for s in w.on(avail)] == [b"online", b"offline", b"online"]
            await settle(p, w)
            assert states(w, sat.topics) == ["idle", "listening", "conversation"]  # the latest, nothing between
            assert events(w, sat.topics) == []
            assert w.on(sat.topics.last_tool)[-1].json()["id"] == "x1"  # retained state is restored, not queued
    finally:
        await relay.close()
