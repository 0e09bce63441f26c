"""Issue 5, the daemon as systemd runs it: the real `livehome run` child process (tests.support.daemonproc) with a
NOTIFY_SOCKET, WATCHDOG_USEC and signals, a real mosquitto, and where a conversation is needed the Live simulator
in this process with espeak-ng speech on the daemon's stdin. Unit verification and the exposure gate are in
test_units.py; the notifier, the watchdog coroutine and redaction in isolation are in test_service.py."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest

from daemon.audio.speech import silence
from daemon.config import EX_CONFIG
from daemon.sim.server import Simulator
from tests.support.broker import Broker, running_broker
from tests.support.daemonproc import WatchedBroker, daemon_process
from tests.support.livestack import KEY, TOOLS
from tests.support.mqttworld import world
from tests.support.notify import Notification
from tests.support.speech_files import speech

CLIENT = "lh-lifecycle"  # the daemon's MQTT client id, to find its subscriptions in the broker's log
KEY_ENV = {"GEMINI_API_KEY": KEY}
START = 30.0  # generous: model loading on a loaded CI machine; the benchmark measures the real figure
STOP_LIMIT = 5.0  # the hard limit: systemd's stop timeout for the unit

FAN = """
  - name: set_fan
    description: Switch the fan.
    parameters: {state: {type: string, enum: ["ON", "OFF"]}}
    required: [state]
    publish: {topic: "tasmota/fan/cmnd/POWER", payload: "{state}"}
    confirm: {topic: "tasmota/fan/stat/POWER", expect: "{state}", timeout: 5s}
"""
FAN_STATE = "tasmota/fan/stat/POWER"

# The slow scene: published, never confirmed, still outstanding when SIGTERM comes.
SCENE_HANGS = """
description: a slow scene is still running when the service is stopped
turns:
  - on: {speech: true}
    steps:
      - tool_call: {id: scene-1, name: run_scene, args: {scene: movie}}
      - say: Starting the movie scene.
      - await_tools: {ids: [scene-1], timeout: 30s, on_timeout: continue}
"""


def config(
    port: int,
    *,
    sim: Simulator | None = None,
    tools: str = TOOLS,
    mqtt: str = "",
    extra: str = "",
    conversation: str = "idle_timeout: 1s",
) -> str:
    gemini = f"gemini:\n  endpoint: {sim.url}\n  ca_file: {sim.ca_file}\n" if sim else ""
    return (
        f"{gemini}mqtt: {{host: 127.0.0.1, port: {port}, client_id: {CLIENT}, reconnect_max: 0.5s{mqtt}}}\n"
        f"conversation: {{{conversation}}}\n{extra}{tools}"
    )


def status(note: Notification) -> str:
    [line] = [x for x in note.lines if x.startswith("STATUS=")]
    return line.removeprefix("STATUS=")


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


# ------------------------------------------------------------------------------------------ ready, watchdog


def test_ready_names_the_wake_word_and_watchdog_pings_stay_within_it(tmp_path: Path, broker: Broker) -> None:
    with daemon_process(tmp_path, config(broker.port), env=KEY_ENV, watchdog_usec=1_000_000) as d:
        ready = d.notify.wait_for("READY=1", START)
        assert "listening for hey_jarvis" in status(ready)
        pings = [p for p in d.notify.wait_for_count("WATCHDOG=1", 8, timeout=10) if p.time >= ready.time]
        times = [ready.time] + [p.time for p in pings]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(gaps) >= 6 and max(gaps) < 1.0, gaps  # systemd would kill the service at a 1 s gap
        assert d.alive


def test_ready_status_does_not_call_a_running_broker_unreachable(tmp_path: Path, broker: Broker) -> None:
    """`systemctl status` right after a start must not claim that a healthy broker is unreachable."""
    with daemon_process(tmp_path, config(broker.port), env=KEY_ENV) as d:
        ready = d.notify.wait_for("READY=1", START)
        d.wait_log("MQTT connected")
        assert "unreachable" not in status(ready), ready.message


def test_broker_down_at_start_still_ready_and_status_recovers(tmp_path: Path) -> None:
    broker = WatchedBroker(tmp_path)  # its port is chosen, nothing listens there yet
    with daemon_process(tmp_path / "d", config(broker.port), env=KEY_ENV) as d:
        ready = d.notify.wait_for("READY=1", START)
        assert status(ready) == "listening for hey_jarvis; MQTT broker unreachable, retrying"
        mark = len(d.notify)
        broker.start()
        try:
            back = d.notify.wait_for(lambda m: "STATUS=listening for hey_jarvis" in m.split("\n"), 10, start=mark)
            assert "READY=1" not in back.lines  # a status change, not a second start
            broker.wait_subscribed(CLIENT, "z2m/kitchen_ceiling")  # and it does its job: the state topics
        finally:
            broker.stop()


# -------------------------------------------------------------------------------------------------- reload


def test_sighup_applies_a_valid_config(tmp_path: Path) -> None:
    broker = WatchedBroker(tmp_path).start()
    try:
        with daemon_process(tmp_path / "d", config(broker.port), env=KEY_ENV) as d:
            d.notify.wait_for("READY=1", START)
            broker.wait_subscribed(CLIENT, "z2m/kitchen_ceiling")
            assert FAN_STATE not in broker.subscriptions(CLIENT)
            d.config.write_text(config(broker.port, tools=TOOLS + FAN))
            mark = len(d.notify)
            sent = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            d.send(signal.SIGHUP)
            reloading = d.notify.wait_for("RELOADING=1", 10, start=mark)
            [usec] = [int(x.split("=", 1)[1]) for x in reloading.lines if x.startswith("MONOTONIC_USEC=")]
            assert sent <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            ready = d.notify.wait_for("READY=1", 10, start=mark)
            assert d.notify.records.index(ready) > d.notify.records.index(reloading)
            broker.wait_subscribed(CLIENT, FAN_STATE)  # the new tool's state topic: the change took effect
            d.wait_log(f"configuration reloaded from {d.config}")
    finally:
        broker.stop()


def test_sighup_with_an_invalid_config_keeps_the_old_one_and_says_where(tmp_path: Path, broker: Broker) -> None:
    with daemon_process(tmp_path, config(broker.port), env=KEY_ENV) as d:
        d.notify.wait_for("READY=1", START)
        # Another wake word and another tool, and one mistake: none of it may apply.
        bad = config(
            broker.port, tools="\ntools:" + FAN, extra="wake: {words: [alexa]}\n", conversation="idle_timeout: soon"
        )
        d.config.write_text(bad)
        mark = len(d.notify)
        d.send(signal.SIGHUP)
        d.notify.wait_for("RELOADING=1", 10, start=mark)
        ready = d.notify.wait_for("READY=1", 10, start=mark)
        assert status(ready).startswith("listening for hey_jarvis")  # still the old wake word
        log = d.wait_log("reload refused")
        assert f"{d.config}:{line_of(bad, 'soon')}: conversation.idle_timeout" in log
        assert "alexa" not in log and "configuration reloaded" not in log
        assert d.alive


# ---------------------------------------------------------------------------------------------------- stop


def test_sigterm_when_idle_stops_cleanly(tmp_path: Path, broker: Broker) -> None:
    with daemon_process(tmp_path, config(broker.port), env=KEY_ENV) as d:
        d.notify.wait_for("READY=1", START)
        d.wait_log("MQTT connected")
        mark = len(d.notify)
        sent = d.send(signal.SIGTERM)
        assert d.wait(STOP_LIMIT) == 0, d.log
        assert time.monotonic() - sent < STOP_LIMIT
        d.notify.wait_for("STOPPING=1", 1, start=mark)
        assert "Traceback" not in d.log and "Fatal" not in d.log, d.log


async def test_sigterm_mid_conversation_undoes_the_slow_call(tmp_path: Path, broker: Broker) -> None:
    """The outstanding call gets the shutdown's settle time, then is cancelled and undone, never answered."""
    scenario = tmp_path / "scene.yaml"
    scenario.write_text(SCENE_HANGS)
    async with Simulator(scenario, state_dir=tmp_path / "sim", api_key=KEY) as sim, world(broker) as w:
        text = config(broker.port, sim=sim, conversation="idle_timeout: 30s")
        with daemon_process(tmp_path / "d", text, env=KEY_ENV) as d:
            await asyncio.to_thread(d.notify.wait_for, "READY=1", START)
            d.mic.say(speech("hey jarvis, start the movie scene"))
            await w.wait_for(lambda s: s.topic == "scenes/movie/run" and s.json() == {"run": True}, 30)
            await asyncio.to_thread(d.notify.wait_for, "STATUS=in conversation: 1 tool call", 10)
            mark = len(d.notify)
            sent = d.send(signal.SIGTERM)
            try:
                rc = await asyncio.to_thread(d.wait, STOP_LIMIT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"still running {STOP_LIMIT} s after SIGTERM; log:\n{d.log}")
            stopped = time.monotonic() - sent
            log = d.log
            assert rc == 0, log
            assert stopped < STOP_LIMIT
            d.notify.wait_for("STOPPING=1", 1, start=mark)
        undo = await w.wait_for(lambda s: s.topic == "scenes/movie/run" and s.json() == {"run": False}, 5)
        await sim.wait_closed()
        [conn] = sim.connections
        assert (conn.closed_by, conn.close_code) == ("client", 1000), conn
        [closed] = sim.entries("closed")
        assert undo.t < closed.t  # undone while the session was still open
        assert "scene-1" not in [r.id for r in sim.tool_responses]  # a cancelled call is never answered
        sim.assert_clean()


# ------------------------------------------------------------------------------------------- exit 78 at start


def test_config_problems_at_start_exit_78_with_a_clear_message(tmp_path: Path) -> None:
    """Three broken starts at once (each alone would cost a model load): systemd must not restart any of them
    (RestartPreventExitStatus=78), and none may have claimed to be ready."""
    invalid = config(1, conversation="idle_timeout: soon")
    cases = {
        "invalid": (invalid, KEY_ENV, f":{line_of(invalid, 'soon')}: conversation.idle_timeout: expected a duration"),
        "wake": (config(1, extra="wake: {words: [hey_nobody]}\n"), KEY_ENV, "no wake-word model named 'hey_nobody'"),
        "no key": (config(1), {}, "no Gemini API key: looked in"),
    }
    with contextlib.ExitStack() as stack:
        started = {
            name: stack.enter_context(daemon_process(tmp_path / name.replace(" ", "_"), text, env=env))
            for name, (text, env, _) in cases.items()
        }
        for name, d in started.items():
            expected = cases[name][2]
            assert d.wait(START) == EX_CONFIG, (name, d.log)
            assert expected in d.log, (name, d.log)
            assert "Traceback" not in d.log, (name, d.log)
            assert not d.notify.matching("READY=1"), (name, d.notify.messages)


# --------------------------------------------------------------------------------------------- credentials

SECRET_KEY = "lh-KEY/life+cycle=0042"  # '/', '+', '=' make its URL and JSON forms differ from the raw one
SECRET_PASSWORD = "mqtt-PW/life+cycle=0077"


def forms(secret: str) -> set[str]:
    return {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret), json.dumps(secret)[1:-1]}


@contextlib.asynccontextmanager
async def observer(port: int, username: str, password: str) -> AsyncIterator[list[aiomqtt.Message]]:
    """Everything published on the broker ('#'), and a kitchen light that confirms what it is told."""
    seen: list[aiomqtt.Message] = []
    ident = f"observer-{uuid.uuid4().hex[:6]}"
    async with aiomqtt.Client("127.0.0.1", port, identifier=ident, username=username, password=password) as c:
        await c.subscribe("#", qos=1)

        async def pump() -> None:
            async for m in c.messages:
                seen.append(m)
                if m.topic.matches("z2m/+/set"):
                    state = json.loads(bytes(m.payload))["state"]  # type: ignore[arg-type]
                    await c.publish(str(m.topic).removesuffix("/set"), json.dumps({"state": state}), qos=1)

        task = asyncio.create_task(pump())
        try:
            yield seen
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await task


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Broker]:
    """mosquitto that lets nobody in without the password (tests/test_credentials.py adds TLS as well)."""
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "livehome", SECRET_PASSWORD], check=True)
    with running_broker(tmp_path, extra_conf=f"allow_anonymous false\npassword_file {passwd}\n") as broker:
        yield broker


async def test_credentials_never_show_in_debug_output_or_on_mqtt(tmp_path: Path, password_broker: Broker) -> None:
    broker = password_broker
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "gemini-api-key").write_text(SECRET_KEY + "\n")
    (creds / "mqtt-password").write_text(SECRET_PASSWORD + "\n")
    async with (
        Simulator("lights_on", state_dir=tmp_path / "sim", api_key=SECRET_KEY) as sim,
        observer(broker.port, "livehome", SECRET_PASSWORD) as seen,
    ):
        text = config(broker.port, sim=sim, mqtt=", username: livehome")
        env = {"CREDENTIALS_DIRECTORY": str(creds)}
        with daemon_process(tmp_path / "d", text, env=env, verbose=True, watchdog_usec=2_000_000) as d:
            await asyncio.to_thread(d.notify.wait_for, "READY=1", START)
            await asyncio.to_thread(d.wait_log, "MQTT connected", 10)
            d.mic.say(speech("hey jarvis, turn on the kitchen light") + silence(0.5))
            await sim.wait_finished(30)
            await sim.wait_closed(10)  # the conversation ended (idle) and the daemon hung up
            d.send(signal.SIGTERM)
            await asyncio.to_thread(d.wait, STOP_LIMIT)
            output = d.output
    # The key really went over the wire (the simulator accepts no other), the password really logged in.
    [conn] = sim.connections
    assert conn.rejected is None and conn.setup is not None
    sim.assert_clean()
    assert [r.id for r in sim.tool_responses if r.accepted] == ["light-1"]
    assert any(str(m.topic) == "z2m/kitchen_ceiling/set" for m in seen)
    assert " DEBUG " in output  # -v really was on (the watchdog logs its interval at debug level)
    for secret in (SECRET_KEY, SECRET_PASSWORD):
        for form in forms(secret):
            assert form not in output, f"{form!r} in the daemon's output"
            for m in seen:
                raw = bytes(m.payload) if isinstance(m.payload, bytes | bytearray) else str(m.payload).encode()
                assert form not in str(m.topic) and form.encode() not in raw, (str(m.topic), raw)
