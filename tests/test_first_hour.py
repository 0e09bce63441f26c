"""A new user's first hour, on real parts: the command line as the README spells it, `check` finding what `run`
would refuse, bundled packs and `init` from another directory, `call` reading retained state, exit codes that
tell the truth, and an MQTT reload that rebuilds discovery without losing the daemon."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

from daemon.config import EX_CONFIG
from tests.support.broker import Broker
from tests.support.daemonproc import child_env, daemon_process
from tests.support.mqttworld import world

ROOT = Path(__file__).resolve().parent.parent
KEY_ENV = {"GEMINI_API_KEY": "first-hour-key-0001"}
START = 30.0


def livehome(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args], capture_output=True, text=True, cwd=cwd,
        env=child_env(env), timeout=120, check=False,
    )  # fmt: skip


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_global_options_go_before_or_after_the_command(tmp_path: Path) -> None:
    config = str(ROOT / "config.yaml")
    for argv in (["-v", "check", "--config", config], ["check", "--config", config, "-v"],
                 ["-c", config, "-q", "tools"], ["tools", "-q", "-c", config]):  # fmt: skip
        out = livehome(*argv, env=KEY_ENV)
        assert out.returncode == 0, (argv, out.stderr)
        assert "unrecognized arguments" not in out.stderr
    version = livehome("--version")
    assert version.returncode == 0 and version.stdout.startswith("livehome ")


def test_check_finds_everything_run_would_refuse_at_once(tmp_path: Path) -> None:
    text = (
        "gemini:\n  api_key_file: secrets/gemini-api-key\n"
        "wake:\n  words: [hey_jarvs]\n"
        f"audio:\n  input: {{backend: file, file: {ROOT / 'config.yaml'}}}\n"
        "  output: {backend: wav, file: nowhere/out.wav}\n"
    )
    config = tmp_path / "config.yaml"
    config.write_text(text)
    out = livehome("check", "--config", str(config))
    assert out.returncode == EX_CONFIG, out.stderr
    err = out.stderr
    assert f"{config}:{line_of(text, 'api_key_file')}: gemini.api_key_file: " in err and "does not exist" in err
    assert f"{config}:{line_of(text, 'hey_jarvs')}: wake.words[0].model: no wake-word model named 'hey_jarvs' " \
           "(did you mean 'hey_jarvis'?)" in err
    assert f"{config}:{line_of(text, 'output')}: audio.output: " in err and "nowhere does not exist" in err
    run = livehome("run", "--config", str(config))  # run refuses with the same list, before opening anything
    assert run.returncode == EX_CONFIG
    for needle in ("gemini.api_key_file", "hey_jarvs", "audio.output"):
        assert needle in run.stderr
    no_key = tmp_path / "nokey.yaml"
    no_key.write_text("mqtt: {host: 127.0.0.1}\n")
    out = livehome("check", "--config", str(no_key))
    assert out.returncode == EX_CONFIG and "no Gemini API key: looked in" in out.stderr


def test_init_from_another_directory_writes_a_config_that_checks(tmp_path: Path) -> None:
    elsewhere = tmp_path / "somewhere"
    elsewhere.mkdir()
    out = livehome("init", str(tmp_path / "conf"), cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    config = tmp_path / "conf" / "config.yaml"
    assert "include: zigbee2mqtt" in config.read_text()  # bundled packs resolve by name
    assert livehome("init", str(tmp_path / "conf"), cwd=elsewhere).returncode == 1  # never overwrites silently
    out = livehome("check", "--config", str(config), cwd=elsewhere, env=KEY_ENV)
    assert out.returncode == 0 and out.stdout.startswith("OK:"), out.stderr
    tools = livehome("tools", "--config", str(config), cwd=elsewhere)
    assert "set_light" in tools.stdout
    copies = livehome("init", str(tmp_path / "mine"), "--packs", cwd=elsewhere)
    assert copies.returncode == 0, copies.stderr
    text = (tmp_path / "mine" / "config.yaml").read_text()
    assert "include: packs/zigbee2mqtt.yaml" in text and (tmp_path / "mine" / "packs" / "tasmota.yaml").is_file()
    assert livehome("check", "--config", str(tmp_path / "mine" / "config.yaml"), env=KEY_ENV).returncode == 0


def test_an_unknown_pack_name_suggests_the_bundled_one(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("tools:\n  - include: zigbee2mqt\n    vars: {lights: {kitchen: K}}\n")
    out = livehome("check", "--config", str(config), env=KEY_ENV)
    assert out.returncode == EX_CONFIG
    assert f"{config}:2: " in out.stderr and "did you mean 'zigbee2mqtt'?" in out.stderr


CLIMATE = """
mqtt: {{host: 127.0.0.1, port: {port}}}
tools:
  - include: zigbee2mqtt
    vars:
      climate_sensors: {{living room: Living Room Sensor}}
    only: [read_climate]
"""


async def test_call_reads_the_retained_state_on_the_broker(tmp_path: Path, broker: Broker) -> None:
    async with world(broker) as w:
        reading = {"temperature": 21.5, "humidity": 48, "battery": 97, "linkquality": 120}
        await w.client.publish("zigbee2mqtt/Living Room Sensor", json.dumps(reading), qos=1, retain=True)
    config = tmp_path / "config.yaml"
    config.write_text(CLIMATE.format(port=broker.port))
    out = await asyncio.to_thread(livehome, "call", "--config", str(config), "read_climate", "sensor=living room")
    assert out.returncode == 0, out.stdout + out.stderr
    body = json.loads(out.stdout.partition("\noutcome:")[0])
    assert body["status"] == "read" and body["retained"] is True
    assert body["value"] == {"temperature": 21.5, "humidity": 48, "battery": 97}


def test_call_and_say_exit_non_zero_when_the_broker_is_down(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CLIMATE.format(port=1))  # nothing listens on port 1
    out = livehome("call", "--config", str(config), "read_climate", "sensor=living room", "--wait", "1")
    assert out.returncode == 69 and "not reachable" in out.stderr
    say = livehome("say", "--config", str(config), "how warm is it", env=KEY_ENV)
    assert say.returncode == 69 and "unreachable" in say.stderr


def test_say_without_an_api_key_is_a_config_problem_as_in_check_and_run(tmp_path: Path) -> None:
    """A missing key is the config's fault (78, as `check` and `run` say it), not a failed tool call (1)."""
    config = tmp_path / "config.yaml"
    config.write_text(CLIMATE.format(port=1))
    say = livehome("say", "--config", str(config), "how warm is it")
    assert say.returncode == EX_CONFIG and "no Gemini API key" in say.stderr, say.stderr
    assert livehome("check", "--config", str(config)).returncode == EX_CONFIG


DISCOVERY = """
mqtt: {{host: 127.0.0.1, port: {port}, reconnect_max: 0.5s}}
assistant: {{id: den, discovery_prefix: homeassistant{off}}}
tools: []
"""


async def test_a_reload_by_mqtt_that_changes_discovery_keeps_the_daemon_whole(tmp_path: Path, broker: Broker) -> None:
    """The reload rebuilds the MQTT side from inside one of its own command tasks: the entities go, the daemon
    stays commandable, and a later SIGTERM still marks it offline (the bug: none of that happened)."""
    base = "livehome/den"
    async with world(broker) as w:
        with daemon_process(tmp_path, DISCOVERY.format(port=broker.port, off=""), env=KEY_ENV) as d:
            await asyncio.to_thread(d.notify.wait_for, "READY=1", START)
            entity = "homeassistant/switch/livehome_den_mute/config"
            await w.wait_for(lambda s: s.topic == entity and s.payload != b"", 10)
            d.config.write_text(DISCOVERY.format(port=broker.port, off=", discovery: false"))
            await w.client.publish(f"{base}/command", '{"command": "reload"}', qos=1)
            await w.wait_for(lambda s: s.topic == entity and s.payload == b"", 10)  # the entities are removed
            await w.wait_for(lambda s: s.topic == f"{base}/events" and s.json()["event_type"] == "reloaded", 10)
            await w.client.publish(f"{base}/command", "mute", qos=1)  # still listening to commands
            await w.wait_for(lambda s: s.topic == f"{base}/state" and s.json()["muted"] is True, 10)
            d.send(signal.SIGTERM)
            assert await asyncio.to_thread(d.wait, 5) == 0, d.log
            assert "RecursionError" not in d.log and "Traceback" not in d.log, d.log
        await w.wait_for(lambda s: s.topic == f"{base}/availability" and s.payload == b"offline", 5)


def test_the_journal_says_what_was_published_in_one_line(tmp_path: Path, broker: Broker) -> None:
    """`livehome call` logs through the same engine as the daemon: one line per call, JSON, with its topic."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"mqtt: {{host: 127.0.0.1, port: {broker.port}}}\n"
        "tools:\n  - include: zigbee2mqtt\n    vars: {lights: {kitchen: Kitchen Ceiling}}\n    only: [set_light]\n"
    )
    out = livehome("-v", "call", "--config", str(config), "set_light", "light=kitchen", "state=ON")
    lines = [x for x in out.stderr.splitlines() if "set_light kitchen ON →" in x]
    assert len(lines) == 1, out.stderr
    assert 'zigbee2mqtt/Kitchen Ceiling/set {"state":"ON"} → unconfirmed after' in lines[0]


def test_sound_system_probing_stays_out_of_the_log_unless_verbose(tmp_path: Path) -> None:
    """PortAudio probes every ALSA and JACK backend, and those print dozens of lines straight to stderr."""
    quiet = livehome("devices")
    assert "ALSA lib" not in quiet.stderr and "jack" not in quiet.stderr.lower(), quiet.stderr
    loud = livehome("-v", "devices")
    assert loud.returncode == 0  # -v shows them (on a machine with no card at all, ALSA has a lot to say)
