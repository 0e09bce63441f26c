"""`livehome` command line. Each subcommand is a thin shell over a module that does the work. The global options
(-v, -q, --config) go before or after the subcommand."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .config import EX_CONFIG
from .loading import Loaded, json_schema, load
from .logs import logger
from .yamlsrc import ConfigError, Problem

EX_USAGE = 64
EX_UNAVAILABLE = 69
EX_CANTCREAT = 73

log = logger(__name__)


def _print_problems(path: Path, problems: Sequence[Problem | str]) -> None:
    print(f"{path}: invalid configuration", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)


def _load_or_exit(path: Path) -> Loaded:
    try:
        loaded = load(path)
    except ConfigError as exc:
        _print_problems(path, exc.problems)
        raise SystemExit(EX_CONFIG) from None
    for warning in loaded.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return loaded


def cmd_check(args: argparse.Namespace) -> int:
    from .preflight import online, preflight

    loaded = _load_or_exit(args.config)
    problems = preflight(loaded)
    if problems:
        _print_problems(args.config, problems)
        return EX_CONFIG
    reg = loaded.registry
    print(
        f"OK: {args.config}: {len(reg.tools)} tools, {len(reg.topics)} topics they may publish to, "
        f"{len(reg.watched)} state topics watched"
    )
    for source in loaded.sources:
        print(f"  plus the tools discovered on {source.where} once the broker is reached (livehome discover)")
    model = loaded.model
    known = "its profile" if model.known else "not in livehome's table, a conservative profile"
    print(f"  model {loaded.config.gemini.model} ({known}): {model.note}")
    if not args.online:
        return 0
    trouble, notes = asyncio.run(online(loaded))
    for note in notes:
        print(f"  {note}")
    for line in trouble:
        print(f"  unreachable: {line}", file=sys.stderr)
    return EX_UNAVAILABLE if trouble else 0


def _with_discovered(loaded: Loaded, wait: float, command: str) -> tuple[Any, Any]:
    """The registry with the tools discovered on the broker now, and what the snapshot made (None without
    discover: sources); exits 69 when the broker cannot be asked."""
    from .tools.stack import BrokerUnreachable, discover_once

    if not loaded.sources:
        return loaded.registry, None
    try:
        return asyncio.run(discover_once(loaded.registry, loaded.config.mqtt, loaded.sources, wait))
    except BrokerUnreachable as exc:
        print(f"livehome {command}: {exc}; the discovered tools need it", file=sys.stderr)
        raise SystemExit(EX_UNAVAILABLE) from None


def cmd_acl(args: argparse.Namespace) -> int:
    from .acl import acl_lines

    loaded = _load_or_exit(args.config)
    registry, _ = _with_discovered(loaded, args.wait, "acl")
    print("\n".join(acl_lines(loaded, registry)))
    return 0


def cmd_discover(args: argparse.Namespace) -> int:
    import yaml

    from .tools.discover import Discover
    from .tools.stack import BrokerUnreachable, discover_once

    loaded = _load_or_exit(args.config)
    sources = loaded.sources or (Discover(discover="zigbee2mqtt"), Discover(discover="homeassistant"))
    try:
        _, built = asyncio.run(discover_once(loaded.registry, loaded.config.mqtt, sources, args.wait))
    except BrokerUnreachable as exc:
        print(f"livehome discover: {exc}", file=sys.stderr)
        return EX_UNAVAILABLE
    where = ", ".join(s.where for s in sources)
    print(f"# livehome discover: {built.devices} devices from {where} on {loaded.config.mqtt.host}")
    print("# Paste these under tools: in place of the discover: entries to pin them down and edit them (rename a")
    print("# device, drop one); the topic set is then fixed in the file, like any tool's.")
    for line in built.left_out:
        print(f"#   left out: {line}")

    class Plain(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    if not built.tools:
        print("# nothing usable found: is the base_topic (or discovery prefix) right, and is discovery on?")
    print(yaml.dump({"tools": built.tools}, Dumper=Plain, sort_keys=False, allow_unicode=True, width=110), end="")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json_schema())
    return 0


def cmd_tools(args: argparse.Namespace) -> int:
    """The declarations on stdout, exactly as sent; where each tool (and device) came from on stderr."""
    from .live.setup import setup_frame

    loaded = _load_or_exit(args.config)
    registry, _ = _with_discovered(loaded, args.wait, "tools")
    frame = setup_frame(loaded.config.gemini, registry.declarations() + _builtin_declarations(loaded))
    print(json.dumps(frame["setup"]["tools"], indent=2, ensure_ascii=False))
    entries = loaded.source.get("tools", []) if isinstance(loaded.source, dict) else []
    origins = {e.get("name"): f"{getattr(e, 'file', '?')}:{getattr(e, 'line', 0)}" for e in entries
               if isinstance(e, dict) and "name" in e}  # fmt: skip
    for tool in registry.tools.values():
        print(f"# {tool.name}: {origins.get(tool.name, 'discovered on the broker')}", file=sys.stderr)
        for device, variant in tool.variants.items():
            print(f"#   {device}: {variant.source or 'no source given'}", file=sys.stderr)
    return 0


def _builtin_declarations(loaded: Loaded) -> list[dict[str, Any]]:
    """The daemon's own tools as `run` declares them (their handlers never run here)."""
    from .builtins import builtin_tools
    from .state import default_state_dir
    from .timers import Timers

    state = loaded.config.assistant.state_dir or default_state_dir()
    timers = Timers(state, lambda _: asyncio.sleep(0), lambda _: None)
    return [t.declaration() for t in builtin_tools(loaded.config, timers, lambda: 0, lambda _: None)]


def parse_call_args(pairs: Sequence[str]) -> dict[str, Any]:
    """key=value pairs; a value that reads as JSON keeps its type (40, true, "40"), anything else is text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"argument {pair!r} is not key=value")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


async def _call(loaded: Loaded, name: str, call_args: dict[str, Any], wait: float) -> int:
    from .calls import ToolCall
    from .events import Event, ToolFinished
    from .tools.stack import running_tools

    finished: list[ToolFinished] = []

    def seen(event: Event) -> None:
        if isinstance(event, ToolFinished):
            finished.append(event)

    started = time.monotonic()
    mqtt = loaded.config.mqtt
    async with running_tools(loaded.registry, mqtt, seen, connect_wait=wait, sources=loaded.sources) as (link, engine):
        connect_time = time.monotonic() - started
        if not link.connected:
            print(f"MQTT broker {link.where} not reachable within {wait:g}s ({link.last_error})", file=sys.stderr)
            return EX_UNAVAILABLE
        await link.wait_settled(wait)  # a read answers from the retained state on the broker
        response = await engine.run(ToolCall("cli-1", name, call_args))
    assert response is not None
    for event in finished:
        for message in event.published:
            print(f"published {message}")
    print(json.dumps(response.response, indent=2, ensure_ascii=False))
    print(f"outcome: {response.outcome}, scheduling: {response.scheduling or '-'} (BLOCKING tools have none)")
    steps = {"connect": connect_time, **response.timings}
    width = max(len(k) for k in steps)
    for step, seconds in steps.items():
        print(f"  {step:<{width}}  {seconds * 1000:9.1f} ms")
    return 0 if response.outcome == "success" else 1


def cmd_call(args: argparse.Namespace) -> int:
    loaded = _load_or_exit(args.config)
    try:
        call_args = json.loads(args.json) if args.json else parse_call_args(args.args)
    except ValueError as exc:
        print(f"livehome call: {exc}", file=sys.stderr)
        return EX_USAGE
    return asyncio.run(_call(loaded, args.name, call_args, args.wait))


def cmd_say(args: argparse.Namespace) -> int:
    from .say import say

    loaded = _load_or_exit(args.config)
    return asyncio.run(say(loaded, " ".join(args.text), args.output, args.idle))


def cmd_simulate(args: argparse.Namespace) -> int:
    from .sim.protocol import DEFAULT_MODELS
    from .sim.server import serve

    overrides: dict[str, str] = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"livehome simulate: --set {item!r} is not NAME=VALUE", file=sys.stderr)
            return EX_USAGE
        overrides[name] = value
    try:
        args.state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"livehome simulate: --state-dir {args.state_dir}: {exc.strerror}", file=sys.stderr)
        return EX_CANTCREAT
    try:
        return asyncio.run(
            serve(
                args.scenario,
                host=args.host,
                port=args.port,
                state_dir=args.state_dir,
                api_key=args.api_key,
                realtime_audio=not args.fast,
                until_finished=args.until_finished,
                transcript_file=args.transcript,
                vars=overrides,
                models=[*DEFAULT_MODELS, *args.model],
                loop=args.loop,
            )
        )
    except ConfigError as exc:
        print(f"{args.scenario}: invalid scenario", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EX_CONFIG


def cmd_run(args: argparse.Namespace) -> int:
    """`livehome run`: exit 78 on a config that cannot work (every problem at once, as `check` shows them), 0 on
    a clean stop."""
    from .preflight import preflight
    from .runtime import Daemon, Options

    try:
        loaded = load(args.config)
    except ConfigError as exc:
        log.error("invalid configuration %s:\n  %s", args.config, "\n  ".join(str(p) for p in exc.problems))
        return EX_CONFIG
    for warning in loaded.warnings:
        log.warning("%s", warning)
    problems = preflight(loaded, input_override=args.input, output_override=args.output, load_models=False)
    if problems:
        log.error("cannot start with %s:\n  %s", args.config, "\n  ".join(str(p) for p in problems))
        return EX_CONFIG
    return asyncio.run(Daemon(loaded, Options(input=args.input, output=args.output)).run())


def cmd_devices(args: argparse.Namespace) -> int:
    from .audio.devices import format_devices, list_devices

    print(format_devices(list_devices()))
    return 0


def cmd_wake_test(args: argparse.Namespace) -> int:
    from .audio.frames import AudioError
    from .wake import WakeModelError, format_wake_test, wake_test

    loaded = _load_or_exit(args.config)
    try:
        print(format_wake_test(wake_test(loaded.config.wake, args.file)))
    except (WakeModelError, AudioError) as exc:
        print(f"livehome wake-test: {exc}", file=sys.stderr)
        return EX_CONFIG if isinstance(exc, WakeModelError) else 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .sim.demo import demo

    return asyncio.run(demo(args.dir))


def cmd_init(args: argparse.Namespace) -> int:
    from .bundled import example_config, packs

    target: Path = args.dir
    config = target / "config.yaml"
    if config.exists() and not args.force:
        print(f"livehome init: {config} exists; keep it, or write over it with --force", file=sys.stderr)
        return 1
    target.mkdir(parents=True, exist_ok=True)
    text = example_config().read_text()
    if args.packs:
        (target / "packs").mkdir(exist_ok=True)
        for name, path in packs().items():
            shutil.copyfile(path, target / "packs" / path.name)
            text = text.replace(f"include: {name}\n", f"include: packs/{path.name}\n")
        print(f"copied the tool packs to {target / 'packs'}/ (the config includes these copies)")
    config.write_text(text)
    print(f"wrote {config}; next: livehome check --config {config}")
    return 0


def version() -> str:
    from .mqtt.discovery import version as package_version

    return package_version()


def build_parser() -> argparse.ArgumentParser:
    from .sim.scenario import packaged_scenarios

    # Global options are declared on both the main parser and each subcommand; a subcommand's copy has no
    # default, so a value given before the subcommand survives.
    def global_options(p: argparse.ArgumentParser, defaults: bool) -> None:
        d = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
        p.add_argument("-v", "--verbose", action="store_true", default=d(False), help="debug logging")
        p.add_argument("-q", "--quiet", action="store_true", default=d(False), help="warnings and errors only")
        p.add_argument("-c", "--config", type=Path, default=d(Path("config.yaml")), help="config file")

    parser = argparse.ArgumentParser(prog="livehome", description="Wake word → Gemini Live → MQTT voice daemon.")
    parser.add_argument("--version", action="version", version=f"livehome {version()}")
    global_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        global_options(p, defaults=False)
        p.set_defaults(func=func)
        return p

    p = command("run", cmd_run, "run the daemon: listen for the wake word, talk, act (the systemd service)")
    p.add_argument("--input", help="'-' for raw 16 kHz s16le mono on stdin, or a WAV/raw file (overrides audio.input)")
    p.add_argument("--output", help="a .wav file to record what is played, or 'none' (overrides audio.output)")
    p = command("init", cmd_init, "write a commented config.yaml into DIR (and, with --packs, copies of the packs)")
    p.add_argument("dir", type=Path, help="where to write config.yaml, e.g. ~/.config/livehome")
    p.add_argument("--packs", action="store_true", help="also copy the bundled tool packs there, to edit")
    p.add_argument("--force", action="store_true", help="write over an existing config.yaml")
    p = command("demo", cmd_demo, "offline end-to-end run: local mosquitto, Live simulator, spoken wake word")
    p.add_argument("--dir", type=Path, help="where to keep the files (default: a new temporary folder)")
    p = command("check", cmd_check, "everything start-up checks, all problems at once (exit 78 when invalid)")
    p.add_argument("--online", action="store_true", help="also probe the broker, the Live endpoint and state topics")
    command("schema", cmd_schema, "print the config's JSON Schema (for editor completion)")
    p = command("acl", cmd_acl, "print mosquitto ACL lines giving this satellite only the topics it uses")
    p.add_argument("--wait", type=float, default=5.0, help="seconds to wait for the broker's discovery data")
    p = command("tools", cmd_tools, "print the function declarations exactly as sent to Gemini (origins on stderr)")
    p.add_argument("--wait", type=float, default=5.0, help="seconds to wait for the broker's discovery data")
    p = command("discover", cmd_discover, "print, as tools YAML to paste, what the broker's device data makes now")
    p.add_argument("--wait", type=float, default=5.0, help="seconds to wait for the broker (default 5)")
    command("devices", cmd_devices, "list the sound devices (for audio.input.device / audio.output.device)")
    p = command("wake-test", cmd_wake_test, "run a WAV file through the wake word: detections, scores, times")
    p.add_argument("file", type=Path, help="a WAV file (any rate, mono or stereo)")
    p = command("call", cmd_call, "run one tool against the configured broker and time each step")
    p.add_argument("name", help="tool name")
    p.add_argument("args", nargs="*", help="key=value arguments (values are JSON when they parse: 40, true)")
    p.add_argument("--json", help="arguments as one JSON object instead of key=value")
    p.add_argument("--wait", type=float, default=5.0, help="seconds to wait for the broker (default 5)")
    p = command("say", cmd_say, "one typed turn through Gemini, the tools and MQTT, printed as it happens")
    p.add_argument("text", nargs="+", help="what you would have said")
    p.add_argument("--output", type=Path, help="write the model's voice to this WAV file")
    p.add_argument("--idle", type=float, default=3.0, help="end after this many quiet seconds (default 3)")
    p = command("simulate", cmd_simulate, "run the local Gemini Live simulator on a scenario")
    p.add_argument(
        "scenario",
        help=f"a packaged scenario ({', '.join(packaged_scenarios())}) or a scenario YAML file",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/tmp/livehome-simulator"),
        help="where the CA certificate and the API key file are written",
    )
    p.add_argument("--api-key", default="sim-key", help="the key clients must send")
    p.add_argument("--until-finished", action="store_true", help="exit when the scenario has run")
    p.add_argument("--loop", action="store_true", help="replay the scenario for every later conversation")
    p.add_argument("--fast", action="store_true", help="send model audio as fast as possible, not in real time")
    p.add_argument("--transcript", type=Path, help="write the protocol transcript as JSON lines")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a scenario var")
    p.add_argument("--model", action="append", default=[], help="accept this model name too")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .logs import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)  # the journal under systemd, readable lines on a terminal; secrets redacted
    if args.quiet or (args.command != "run" and not args.verbose):
        logging.getLogger().setLevel(logging.WARNING)  # one-shot commands print their own results
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `livehome tools | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
