"""Configuration: every error names file, line and field; YAML gotchas are defused; tool packs; the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from daemon.config import EX_CONFIG
from daemon.loading import load
from daemon.tools.registry import ArgumentError
from daemon.yamlsrc import ConfigError
from tests.support.broker import Broker

ROOT = Path(__file__).resolve().parent.parent

LIGHT = """
  - name: set_light
    description: Switch a light.
    parameters:
      room: {type: string, map: {kitchen: "0x00158d0001a2b3c4", hall: hall_lamp}}
      state: {type: string, enum: [ON, OFF]}
    required: [room, state]
    publish: {topic: "z2m/{room}/set", payload: {state: "{state}"}}
"""


def problems(tmp_path: Path, text: str, files: dict[str, str] | None = None) -> list[str]:
    for name, body in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(path)
    return [str(p).replace(f"{tmp_path}/", "") for p in err.value.problems]


def loads(tmp_path: Path, text: str, files: dict[str, str] | None = None):
    for name, body in (files or {}).items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load(path)


def test_typo_names_file_line_field_and_suggests(tmp_path: Path) -> None:
    out = problems(tmp_path, "gemini:\n  model: x\nmqtt:\n  host: h\n  prot: 1883\nconversaton: {}\n")
    assert "config.yaml:5: mqtt.prot: unknown key 'prot' (did you mean 'port'?)" in out[0]
    assert (
        len(out) == 2
        and "config.yaml:6: conversaton: unknown key 'conversaton' (did you mean 'conversation'?)" in out[1]
    )


def test_bad_values_name_their_line(tmp_path: Path) -> None:
    out = problems(tmp_path, "mqtt:\n  port: 99999\nwake:\n  refractory: soon\nconversation:\n  barge_in: never\n")
    assert out[0].startswith("config.yaml:2: mqtt.port:") and "99999" in out[0]
    assert out[1].startswith("config.yaml:4: wake.refractory: expected a duration")
    assert out[2].startswith("config.yaml:6: conversation.barge_in:") and "wake_word" in out[2]


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    out = problems(tmp_path, "mqtt:\n  host: [unclosed\n")
    assert out[0].startswith("config.yaml:3: YAML syntax")


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    out = problems(tmp_path, "mqtt:\n  host: a\n  host: b\n")
    assert out == ["config.yaml:3: host: duplicate key (first set on line 2)"]


def test_yaml_gotchas_stay_strings(tmp_path: Path) -> None:
    loaded = loads(tmp_path, "tools:" + LIGHT.replace('"0x00158d0001a2b3c4"', "0x00158d0001a2b3c4"))
    tool = loaded.registry.get("set_light")
    assert tool is not None
    assert tool.spec.parameters["state"].enum == ["ON", "OFF"]  # not True/False as YAML 1.1 would have it
    assert "z2m/0x00158d0001a2b3c4/set" in tool.topics  # not an integer
    assert loads(tmp_path, "gemini: {transcription: false}").config.gemini.transcription is False


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    cfg = loads(tmp_path, "gemini: {ca_file: sim/ca.pem}\nmqtt: {tls: true}\n").config
    assert cfg.gemini.model == "gemini-3.8-live" and cfg.gemini.sliding_window is True
    assert cfg.gemini.ca_file == tmp_path / "sim/ca.pem"  # relative to the config file, not the cwd
    assert cfg.mqtt.effective_port == 8883
    assert cfg.conversation.barge_in == "wake_word"


PACK = """
vars:
  base: zigbee2mqtt
  lights: ~
  plugs: ~
tools:
  - name: set_light
    description: Switch a light.
    parameters:
      light: {type: string, map: "${lights}"}
      state: {type: string, enum: [ON, OFF]}
    required: [light, state]
    publish: {topic: "${base}/{light}/set", payload: {state: "{state}"}}
  - name: set_plug
    description: Switch a plug.
    parameters:
      plug: {type: string, map: "${plugs}"}
    required: [plug]
    publish: {topic: "${base}/{plug}/set", payload: {state: "ON"}}
"""


def test_pack_vars_and_only(tmp_path: Path) -> None:
    cfg = "tools:\n  - include: packs/*.yaml\n    vars:\n      lights: {kitchen: Kitchen}\n    only: [set_light]\n"
    loaded = loads(tmp_path, cfg, {"packs/z.yaml": PACK})
    assert list(loaded.registry.tools) == ["set_light"]
    assert loaded.registry.topics == {"zigbee2mqtt/Kitchen/set"}


def test_pack_errors(tmp_path: Path) -> None:
    cfg = "tools:\n  - include: packs/z.yaml\n    vars:\n      lihgts: {kitchen: K}\n  - include: nothing/*.yaml\n"
    out = problems(tmp_path, cfg, {"packs/z.yaml": PACK})
    assert any(
        p.startswith("config.yaml:2: packs/z.yaml: tool 'set_light' needs vars: lights") and "only:" in p for p in out
    )
    assert "config.yaml:4: no included pack declares var 'lihgts' (did you mean 'lights'?)" in out
    assert any(p.startswith("config.yaml:5: no file matches 'nothing/*.yaml'") for p in out)


def test_error_inside_a_pack_points_into_the_pack(tmp_path: Path) -> None:
    bad = PACK.replace('payload: {state: "{state}"}', 'payload: {state: "{stat}"}')
    cfg = "tools:\n  - include: packs/z.yaml\n    vars: {lights: {a: A}, plugs: {b: B}}\n"
    out = problems(tmp_path, cfg, {"packs/z.yaml": bad})
    assert out == [
        "packs/z.yaml:13: tool 'set_light' publish[0].payload.state: unknown placeholder {stat} (did you mean 'state'?)"
    ]


def test_tool_defined_twice_names_both_places(tmp_path: Path) -> None:
    cfg = "tools:\n  - include: packs/z.yaml\n    vars: {lights: {a: A}, plugs: {b: B}}\n" + LIGHT
    out = problems(tmp_path, cfg, {"packs/z.yaml": PACK})
    assert out == ["config.yaml:5: tool 'set_light': defined twice (first at packs/z.yaml:7)"]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('topic: "z2m/{room}/set"', 'topic: "z2m/{text}/set"'), "must take an enum or map parameter"),
        (("hall: hall_lamp", 'hall: "hall/#"'), "contains an MQTT wildcard"),
        (("hall: hall_lamp", 'hall: "hall+"'), "contains an MQTT wildcard"),
        (("hall: hall_lamp", 'hall: "hall/"'), "empty level"),
        (("hall: hall_lamp", 'hall: "a\\u0000b"'), "control character"),
        (("hall: hall_lamp", 'hall: "a\\nb"'), "control character"),
        (('topic: "z2m/{room}/set"', 'topic: "$SYS/{room}"'), "broker-internal"),
        (("hall: hall_lamp", "hall: " + "x" * 600), "longer than 512 bytes"),
        (('payload: {state: "{state}"}', 'payload: "{text} now"'), "optional parameter 'text'"),
        (('payload: {state: "{state}"}', 'payload: {state: "{previous.state}"}'), "only available in undo"),
        (('payload: {state: "{state}"}', 'payload: {state: "{state"}'), "unbalanced '{'"),
        (("required: [room, state]", "required: [state]"), "needs a required parameter or one with a default"),
        (("required: [room, state]", "required: [room, stat]"), "unknown parameter 'stat' (did you mean 'state'?)"),
        (("    publish:", "    read: {topic: x}\n    publish:"), "exactly one action"),
        (("enum: [ON, OFF]", "enum: [ON, OFF], minimum: 1"), "minimum/maximum/scale are for integer and number"),
        (("enum: [ON, OFF]", "enum: [1, 2]"), "is not of type string"),
        (("name: set_light", "name: set-light"), "String should match pattern"),
    ],
)
def test_tool_spec_refusals(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    body = LIGHT.replace("      state:", "      text: {type: string}\n      state:")
    assert change[0] in body
    out = problems(tmp_path, "tools:" + body.replace(*change))
    assert any(expected in p for p in out), out
    assert all(p.startswith("config.yaml:") and "config.yaml:0" not in p for p in out), out


def test_undo_previous_needs_a_state_topic(tmp_path: Path) -> None:
    body = LIGHT + '    undo: {publish: {topic: "z2m/{room}/set", payload: {state: "{previous.state}"}}}\n'
    out = problems(tmp_path, "tools:" + body)
    assert any("needs a state topic" in p for p in out)


def test_topic_explosion_is_refused(tmp_path: Path) -> None:
    params = "".join(
        f"      p{i}: {{type: integer, enum: [{', '.join(str(n) for n in range(10))}]}}\n" for i in range(5)
    )
    body = f"""
  - name: many
    description: x
    parameters:
{params}    required: [p0, p1, p2, p3, p4]
    publish: {{topic: "a/{{p0}}/{{p1}}/{{p2}}/{{p3}}/{{p4}}"}}
"""
    assert any("100000 topics" in p for p in problems(tmp_path, "tools:" + body))


def test_secrets_are_not_echoed(tmp_path: Path) -> None:
    secret = "hunter2-very-secret"
    (tmp_path / "pw").write_text(secret)
    out = problems(tmp_path, f"mqtt:\n  password_file: pw\n  username: 5\n  password: {secret}\n")
    assert out and not any(secret in p for p in out)


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GEMINI_API_KEY": "test-key-not-real"}  # `check` looks for the key, as start-up does
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60,
        check=False,
    )


def test_check_cli_exit_codes(tmp_path: Path) -> None:
    ok = run_cli("check", "--config", str(ROOT / "config.yaml"))
    assert ok.returncode == 0 and ok.stdout.startswith("OK:"), ok.stderr
    (tmp_path / "bad.yaml").write_text("mqtt:\n  hots: x\n")
    bad = run_cli("check", "--config", str(tmp_path / "bad.yaml"))
    assert bad.returncode == EX_CONFIG
    assert "bad.yaml:2: mqtt.hots: unknown key 'hots' (did you mean 'host'?)" in bad.stderr


def test_schema_validates_the_example_config_and_packs() -> None:
    schema = json.loads(run_cli("schema").stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    example = yaml.safe_load((ROOT / "config.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(example)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate({"mqtt": {"hots": "x"}})


def test_shipped_packs_compile_with_all_tools(tmp_path: Path) -> None:
    cfg = f"""tools:
  - include: {ROOT}/tools/zigbee2mqtt.yaml
    vars: {{lights: {{kitchen: K}}, plugs: {{kettle: P}}, climate_sensors: {{hall: S}}, contact_sensors: {{door: D}},
           locks: {{front door: L}}, covers: {{blinds: B}}}}
  - include: {ROOT}/tools/tasmota.yaml
    vars: {{relays: {{fan: tasmota_1}}, dimmers: {{hall: tasmota_2}}, sensors: {{attic: tasmota_3}}}}
  - include: {ROOT}/tools/shelly.yaml
    vars: {{switches: {{pump: shellyplus1-abc}}}}
"""
    loaded = loads(tmp_path, cfg)
    assert set(loaded.registry.tools) == {
        "set_light", "set_plug", "read_climate", "read_contact", "set_lock", "set_cover", "set_power", "set_dimmer",
        "read_sensor", "set_switch",
    }  # fmt: skip
    assert loaded.registry.topics == {
        "zigbee2mqtt/K/set", "zigbee2mqtt/P/set", "zigbee2mqtt/L/set", "zigbee2mqtt/B/set", "cmnd/tasmota_1/POWER",
        "cmnd/tasmota_2/Dimmer", "shellyplus1-abc/rpc",
    }  # fmt: skip
    locks = [t for t in loaded.registry.tools.values() if t.spec.sensitive]
    assert {t.name for t in locks} == {"set_lock", "set_cover"} and all(t.spec.voice_only for t in locks)


def test_tools_cli_prints_the_wire_declarations() -> None:
    out = run_cli("tools", "--config", str(ROOT / "config.yaml"))
    assert out.returncode == 0, out.stderr
    [tool] = json.loads(out.stdout)
    decls = {d["name"]: d for d in tool["functionDeclarations"]}
    assert decls["set_light"]["behavior"] == "NON_BLOCKING"
    assert decls["set_light"]["parameters"]["properties"]["light"]["enum"] == ["kitchen", "living room", "bedroom"]
    assert decls["set_light"]["parameters"]["required"] == ["light", "state"]
    assert "end_conversation" in decls
    assert {"set_timer", "list_timers", "cancel_timer", "set_volume"} <= set(decls)  # as `run` declares them
    assert "# set_light: " in out.stderr and "zigbee2mqtt.yaml:" in out.stderr  # where it came from


def test_cli_reads_cleanly_into_a_pipe_and_names_a_bad_folder(tmp_path: Path) -> None:
    # `true` reads nothing and is gone before the declarations are written: the pipe is closed under them.
    piped = subprocess.run(f"{sys.executable} -m daemon tools --config {ROOT / 'config.yaml'} | true",
                           shell=True, capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr, piped.stderr
    bad = run_cli("simulate", "lights_on", "--state-dir", "/dev/null/sim")
    assert bad.returncode == 73
    assert bad.stderr.strip() == "livehome simulate: --state-dir /dev/null/sim: Not a directory"


def test_call_cli_runs_a_tool_and_times_it(tmp_path: Path, broker: Broker) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"mqtt: {{host: 127.0.0.1, port: {broker.port}}}\ntools:" + LIGHT)
    out = run_cli("call", "--config", str(cfg), "set_light", "room=hall", "state=ON")
    assert out.returncode == 0, out.stderr
    published, _, out_rest = out.stdout.partition("\n")
    assert published == 'published z2m/hall_lamp/set {"state":"ON"}'  # exactly what went on the wire
    body, _, rest = out_rest.partition("\noutcome:")
    assert json.loads(body) == {"ok": True, "status": "sent"}
    assert "connect" in rest and "publish z2m/hall_lamp/set" in rest and " ms" in rest
    bad = run_cli("call", "--config", str(cfg), "set_light", "room=#", "state=ON")
    assert bad.returncode == 1 and "is not one of kitchen, hall" in bad.stdout
    usage = run_cli("call", "--config", str(cfg), "set_light", "room")
    assert usage.returncode == 64 and "not key=value" in usage.stderr


ROOMS = """
assistant: {{room: {room}}}
tools:
  - name: set_light
    description: Switch a light.
    parameters:
      light: {{type: string, map: {{kitchen: k_lamp, hall: h_lamp}}, scope: room}}
      state: {{type: string, enum: [ON, OFF]}}
    required: [light, state]
    publish: {{topic: "z2m/{{light}}/set", payload: {{state: "{{state}}"}}}}
"""


def test_room_scope_makes_this_room_the_default(tmp_path: Path) -> None:
    tool = loads(tmp_path, ROOMS.format(room="kitchen")).registry.get("set_light")
    assert tool is not None
    decl = tool.declaration()["parameters"]
    assert decl["required"] == ["state"]  # "turn on the light" may leave the light out
    assert decl["properties"]["light"]["default"] == "kitchen"
    assert "Leave out to mean kitchen (the room this assistant is in)" in decl["properties"]["light"]["description"]
    assert tool.check_args({"state": "ON"}) == {"light": "k_lamp", "state": "ON"}
    assert tool.check_args({"light": "hall", "state": "ON"})["light"] == "h_lamp"


def test_room_scope_without_a_matching_room_keeps_the_parameter_required(tmp_path: Path) -> None:
    tool = loads(tmp_path, ROOMS.format(room="attic")).registry.get("set_light")
    assert tool is not None
    assert tool.declaration()["parameters"]["required"] == ["light", "state"]
    with pytest.raises(ArgumentError, match="missing required argument 'light'"):
        tool.check_args({"state": "ON"})


def test_room_scope_needs_choices(tmp_path: Path) -> None:
    body = ROOMS.format(room="kitchen").replace("map: {kitchen: k_lamp, hall: h_lamp}, scope: room", "scope: room")
    assert any("scope: room needs an enum or map" in p for p in problems(tmp_path, body))
