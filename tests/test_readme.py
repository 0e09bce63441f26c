"""Every `livehome` line in the README's shell blocks runs as written, on real parts, so the README cannot drift
from the code again: a private mosquitto with a zigbee2mqtt light on it, the Live simulator over TLS (the real
google-genai client inside livehome talks to it), a PulseAudio whose null sinks are the sound card, and the
shipped config.yaml with only its endpoints pointed at them. The one other substitution is the simulator's port
in the command line (8765 in the README, a free port here)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import build_parser
from daemon.sim.broker import free_port
from daemon.sim.server import Simulator
from tests.support.broker import Broker
from tests.support.daemonproc import child_env
from tests.support.mqttworld import device
from tests.support.notify import NotifySocket
from tests.support.pulse import MISSING, PULSEAUDIO, PulseServer
from tests.support.speech_files import padded, speech, write_wav

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent  # the venv's bin: its `livehome` script comes first on PATH
KEY = "readme-sim-key-0001"
README_SIM_PORT = "8765"  # the simulator port the README's examples use
ONE_SHOT_TIMEOUT = 90.0
READY_TIMEOUT = 60.0
SETTLE = 1.0  # a long-running command runs this long after it is ready, then gets SIGTERM
STOP_TIMEOUT = 10.0
# What the README's zigbee2mqtt light reports after a /set (the pack confirms on state).
LIGHT_STATE = {"brightness": 254, "linkquality": 120}

SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
_FENCE = re.compile(r"^\s*```\s*([\w+-]*)")
_LIVEHOME = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*livehome(?:\s|$)")
_EXIT = re.compile(r"#.*\bexit(?:s| status)? (\d+)\b")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


# ---- what the README says ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    line: int  # where the command starts in the README (1-based)
    command: str  # as a shell runs it: continuation lines joined
    expect: int = 0  # the exit status; another only where the README's own comment says "exits N"

    @property
    def argv(self) -> list[str]:
        """The livehome command's words: no VAR= prefixes, nothing from a pipe, redirection or comment on."""
        lexer = shlex.shlex(self.command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words: list[str] = []
        for token in lexer:
            if set(token) <= set("();<>|&"):
                break
            words.append(token)
        while words and _ASSIGNMENT.match(words[0]):
            words.pop(0)
        return words

    def option(self, *names: str) -> str | None:
        words = self.argv
        for i, word in enumerate(words):
            for name in names:
                if word == name and i + 1 < len(words):
                    return words[i + 1]
                if word.startswith(name + "=") and name.startswith("--"):
                    return word.partition("=")[2]
        return None

    @property
    def subcommand(self) -> str | None:
        words = iter(self.argv[1:])
        for word in words:
            if word in ("-c", "--config"):
                next(words, None)
            elif not word.startswith("-"):
                return word
        return None

    @property
    def long_running(self) -> bool:
        """The simulator, and the daemon on a microphone: they run until stopped, as under systemd."""
        return self.subcommand == "simulate" or (self.subcommand == "run" and self.option("--input") is None)

    @property
    def id(self) -> str:
        return f"README.md:{self.line}-{self.subcommand or 'livehome'}"


def examples(text: str) -> list[Example]:
    """Every command line in a ```sh/bash/shell/console block that starts with `livehome` (after any VAR=value
    prefixes), with backslash continuations joined and console prompts ("$ ") removed."""
    found: list[Example] = []
    language: str | None = None  # None: outside a fenced block
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        fence = _FENCE.match(raw)
        if fence and not parts:
            language = fence.group(1).lower() if language is None else None
            continue
        if language not in SHELL_LANGUAGES:
            continue
        line = raw.strip()
        if language == "console" and not parts:
            if not line.startswith("$ "):
                continue  # output shown after a prompt
            line = line[2:]
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        command = " ".join([*parts, line]).strip()
        parts = []
        if _LIVEHOME.match(command):
            status = _EXIT.search(command)
            found.append(Example(start, command, int(status.group(1)) if status else 0))
    return found


def readme_examples() -> list[Example]:
    return examples(README.read_text(encoding="utf-8"))


def subcommands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


# ---- the world the examples run in ---------------------------------------------------------------------------


@dataclass
class Stage:
    """One example's surroundings: a home folder, a working folder, the services the config points at."""

    root: Path
    cwd: Path
    home: Path
    env: dict[str, str]
    config: str  # the shipped config.yaml, endpoints substituted
    notify: NotifySocket

    def path(self, text: str) -> Path:
        """A path as the README's shell reads it: ~ and $HOME are this stage's home, relative is from its cwd."""
        for home in ("~", "$HOME", "${HOME}"):
            if text == home or text.startswith(home + "/"):
                return self.home / text[len(home) + 1 :]
        return self.cwd / text  # an absolute path stays as it is


def readme_config(endpoint: str, ca_file: Path, key_file: Path, broker: Broker) -> str:
    """config.yaml as shipped, with the Live endpoint, its CA and key file, and the broker's address swapped in."""
    text = (ROOT / "config.yaml").read_text(encoding="utf-8")
    swaps = {
        "gemini:\n": f"gemini:\n  endpoint: {endpoint}\n  ca_file: {ca_file}\n  api_key_file: {key_file}\n",
        "  host: localhost\n": f"  host: {broker.host}\n",
        "  port: 1883\n": f"  port: {broker.port}\n",
    }
    for old, new in swaps.items():
        assert text.count(old) == 1, f"config.yaml does not have {old!r} exactly once: adjust the substitution"
        text = text.replace(old, new)
    return text


def zigbee2mqtt(topic: str, payload: Any) -> tuple[str, Any] | None:
    """A zigbee2mqtt device: a /set comes back as the device's new state on its own topic."""
    if not isinstance(payload, dict):
        return None
    return topic.removesuffix("/set"), {**LIGHT_STATE, **{k: v for k, v in payload.items() if k == "state"}}


@pytest.fixture(scope="module")
def pulse() -> Iterator[PulseServer | None]:
    """The sound card for `devices` and `run` on a microphone: null sinks on a private PulseAudio."""
    if PULSEAUDIO is None:
        yield None
        return
    server = PulseServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@contextlib.asynccontextmanager
async def staged(tmp_path: Path, broker: Broker, pulse: PulseServer | None) -> AsyncIterator[Stage]:
    """The Live simulator (lights_on, replayed for every conversation) and a zigbee2mqtt light on the broker; a
    fresh home (where `~/.local/state/livehome` is) and working folder with `recording.wav`; an environment with
    the venv's livehome first on PATH, this tree's code, a NOTIFY_SOCKET, and the PulseAudio when there is one."""
    sim = Simulator("lights_on", state_dir=tmp_path / "live-simulator", api_key=KEY, loop=True)
    await sim.start()
    notify = NotifySocket()
    try:
        key_file = tmp_path / "gemini-api-key"
        key_file.write_text(KEY + "\n")
        home, cwd, tmp = tmp_path / "home", tmp_path / "work", tmp_path / "tmp"
        for folder in (home, cwd, tmp):
            folder.mkdir()
        write_wav(cwd / "recording.wav", padded(speech("hey jarvis, turn on the kitchen light")))
        env = child_env({
            "HOME": str(home),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "TMPDIR": str(tmp),
            "NOTIFY_SOCKET": notify.path,
            **(pulse.env if pulse is not None else {}),
        })  # fmt: skip
        for name in ("XDG_STATE_HOME", "XDG_CONFIG_HOME", "STATE_DIRECTORY", "LIVEHOME_CONFIG"):
            env.pop(name, None)
        async with device(broker, "zigbee2mqtt/+/set", zigbee2mqtt):
            yield Stage(tmp_path, cwd, home, env, readme_config(sim.url, sim.ca_file, key_file, broker), notify)
    finally:
        notify.close()
        await sim.stop()


def place_configs(example: Example, stage: Stage) -> None:
    """The config where the example looks for it (its --config, and the default config.yaml); an `init`
    example writes its own."""
    if example.subcommand == "init":
        return
    for where in {"config.yaml", example.option("-c", "--config") or "config.yaml"}:
        path = stage.path(where)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(stage.config, encoding="utf-8")


def adapted(command: str) -> str:
    """The README's command with the simulator's port swapped for a free one (nothing else changes)."""
    port = str(free_port())
    command = re.sub(rf"(--port[= ]){README_SIM_PORT}\b", rf"\g<1>{port}", command)
    return command.replace(f"127.0.0.1:{README_SIM_PORT}", f"127.0.0.1:{port}")


# ---- running one ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    command: str
    returncode: int | None
    stdout: str
    stderr: str
    ready: bool = True

    def report(self) -> str:
        return (f"$ {self.command}\nexit status {self.returncode}\n--- stdout\n{self.stdout[-3000:]}\n"
                f"--- stderr\n{self.stderr[-3000:]}")  # fmt: skip


def livehome_pids(session: int) -> list[int]:
    """The livehome processes in the example's session (bash may have exec'd into one, or wait for it)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            argv = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[3]) == session and any(Path(a.decode(errors="replace")).name == "livehome" for a in argv[:2]):
            pids.append(int(stat.parent.name))
    return pids


_runs = itertools.count(1)


class Launched:
    """An example's command started through bash, as a reader would paste it; output in files."""

    def __init__(self, example: Example, stage: Stage) -> None:
        self.example = example
        self.stage = stage
        self.command = adapted(example.command)
        n = next(_runs)
        self.out, self.err = stage.root / f"stdout-{n}.txt", stage.root / f"stderr-{n}.txt"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Launched:
        with self.out.open("wb") as stdout, self.err.open("wb") as stderr:
            self.proc = await asyncio.create_subprocess_exec(
                "bash", "-o", "pipefail", "-c", self.command, cwd=self.stage.cwd, env=self.stage.env,
                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True,
            )  # fmt: skip
        return self

    async def ready(self) -> bool:
        """The daemon said READY=1 (as to systemd); the simulator printed its endpoint."""
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and self.proc.returncode is None:
            if self.example.subcommand == "run" and self.stage.notify.matching("READY=1"):
                return True
            if self.example.subcommand == "simulate" and "endpoint:" in self.out.read_text(errors="replace"):
                return True
            await asyncio.sleep(0.05)
        return False

    async def terminate(self) -> Outcome:
        """SIGTERM to livehome itself, as systemd stops it; it must exit 0 within STOP_TIMEOUT."""
        assert self.proc is not None
        for pid in livehome_pids(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        return await self.finish(STOP_TIMEOUT)

    async def finish(self, timeout: float, ready: bool = True) -> Outcome:
        assert self.proc is not None
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
            returncode = None
        else:
            returncode = self.proc.returncode
        return Outcome(self.command, returncode, self.out.read_text(errors="replace"),
                       self.err.read_text(errors="replace"), ready)  # fmt: skip


async def run_example(example: Example, stage: Stage) -> Outcome:
    launched = await Launched(example, stage).start()
    if not example.long_running:
        return await launched.finish(ONE_SHOT_TIMEOUT)
    if not await launched.ready():
        return await launched.finish(1.0, ready=False)
    await asyncio.sleep(SETTLE)
    return await launched.terminate()


def problems(example: Example, outcome: Outcome) -> list[str]:
    found = []
    if not outcome.ready:
        found.append("never became ready")
    if outcome.returncode != example.expect:
        found.append(f"exit status {outcome.returncode}, the README implies {example.expect}")
    for sign in ("usage:", "unrecognized arguments", "invalid choice", "Traceback"):
        if sign in outcome.stderr:
            found.append(f"{sign!r} on stderr")
    return found


# ---- the tests -----------------------------------------------------------------------------------------------


def _needs(example: Example, pulse: PulseServer | None) -> None:
    """What a machine without a sound server cannot run; everything else runs everywhere the suite does."""
    if pulse is None and example.long_running and example.subcommand == "run":
        pytest.skip(f"the daemon on a microphone needs a sound card: {MISSING}")


@pytest.mark.parametrize("example", readme_examples(), ids=lambda e: e.id)
async def test_readme_example(example: Example, tmp_path: Path, broker: Broker, pulse: PulseServer | None) -> None:
    _needs(example, pulse)
    async with staged(tmp_path, broker, pulse) as stage:
        place_configs(example, stage)
        outcome = await run_example(example, stage)
    assert not problems(example, outcome), f"README.md line {example.line}: {problems(example, outcome)}\n" \
                                           + outcome.report()


def test_the_extractor_finds_the_readme_examples() -> None:
    """It reads the README itself: many examples, every subcommand among them and in the commands table."""
    found = readme_examples()
    assert len(found) >= 15, [e.command for e in found]
    assert len({e.id for e in found}) == len(found)
    lines = README.read_text(encoding="utf-8").splitlines()
    for example in found:
        assert "livehome" in lines[example.line - 1], example
    shown = {e.subcommand for e in found}
    table = README.read_text(encoding="utf-8").partition("## Commands")[2].partition("\n## ")[0]
    for name in sorted(subcommands()):
        assert name in shown, f"no README example runs `livehome {name}`"
        assert f"`livehome {name}" in table, f"the commands table does not list `livehome {name}`"


SAMPLE = """Some text with `livehome check` inline, which is not run.

```sh
livehome check --config config.yaml      # OK, or every problem
sudo systemctl restart livehome
GEMINI_API_KEY=abc livehome say --config ~/lh/config.yaml \\
    "turn on the kitchen light"
livehome acl --config config.yaml > livehome.acl
livehome check --config broken.yaml     # exits 78
```

```yaml
livehome: not a command
```

```console
$ livehome --version
livehome 0.1.0
```
"""


def test_the_extractor_reads_what_a_shell_would_run() -> None:
    found = examples(SAMPLE)
    assert [(e.line, e.command, e.expect) for e in found] == [
        (4, "livehome check --config config.yaml      # OK, or every problem", 0),
        (6, 'GEMINI_API_KEY=abc livehome say --config ~/lh/config.yaml "turn on the kitchen light"', 0),
        (8, "livehome acl --config config.yaml > livehome.acl", 0),
        (9, "livehome check --config broken.yaml     # exits 78", 78),
        (17, "livehome --version", 0),
    ]
    say, acl = found[1], found[2]
    assert say.argv == ["livehome", "say", "--config", "~/lh/config.yaml", "turn on the kitchen light"]
    assert (say.subcommand, say.option("--config"), acl.argv[-1]) == ("say", "~/lh/config.yaml", "config.yaml")
    assert [e.long_running for e in examples("```sh\nlivehome -c x.yaml run\nlivehome run --input a.wav\n"
                                             "livehome simulate lights_on --port 8765\n```\n")] == [True, False, True]
    moved = adapted(f"livehome simulate x --port {README_SIM_PORT}   # https://127.0.0.1:{README_SIM_PORT}")
    port = re.fullmatch(r"livehome simulate x --port (\d+)   # https://127.0.0.1:(\d+)", moved)
    assert port is not None and port.group(1) == port.group(2) != README_SIM_PORT


@pytest.mark.parametrize("command", [
    "livehome check --confg config.yaml",  # a misspelt option: argparse's usage error
    "livehome call --config config.yaml set_light room=kitchen state=ON",  # the pack's parameter is `light`
    "livehome simulate lights_of --port 8765 --state-dir ~/sim",  # a long-running command that never starts
], ids=["usage", "stale-parameter", "never-ready"])  # fmt: skip
async def test_a_broken_example_is_caught(command: str, tmp_path: Path, broker: Broker) -> None:
    """The checks above can fail: what an outdated README line would do is reported, not passed."""
    example = examples(f"```sh\n{command}\n```\n")[0]
    async with staged(tmp_path, broker, None) as stage:
        place_configs(example, stage)
        outcome = await run_example(example, stage)
    assert problems(example, outcome), outcome.report()


async def test_simulate_loop_replays_the_scenario_for_the_next_conversation(tmp_path: Path, broker: Broker) -> None:
    """`--loop`: a second `say` (a new connection and session) gets the scenario from its first turn again."""
    async with staged(tmp_path, broker, None) as stage:
        state, port = stage.home / "sim", free_port()
        simulate = Example(0, f"livehome simulate lights_on --loop --fast --port {port} --state-dir {state}")
        launched = await Launched(simulate, stage).start()
        assert await launched.ready(), (await launched.finish(1.0)).report()
        config = stage.cwd / "looped.yaml"
        config.write_text(readme_config(f"https://127.0.0.1:{port}", state / "sim-ca.pem", state / "sim-api-key",
                                        broker))  # fmt: skip
        for _ in range(2):
            say = Example(0, f"livehome say --idle 1 --config {config} turn on the kitchen light")
            outcome = await run_example(say, stage)
            assert not problems(say, outcome), outcome.report()
            assert 'tool call set_light [light-1] {"light": "kitchen", "state": "ON"}' in outcome.stdout, \
                outcome.report()
        outcome = await launched.terminate()
    assert outcome.returncode == 0, outcome.report()  # no violation: the second conversation was expected
    assert "2 connection(s)" in outcome.stdout and "0 violation(s)" in outcome.stdout, outcome.report()


async def test_the_simulator_keeps_its_ca_in_the_state_folder(tmp_path: Path, broker: Broker) -> None:
    """A ca_file copied into a config stays good: a second start reuses the CA (its server certificate is new)."""
    async with staged(tmp_path, broker, None) as stage:
        state = stage.home / "sim"
        seen = []
        for _ in range(2):
            simulate = Example(0, f"livehome simulate lights_on --port {free_port()} --state-dir {state}")
            outcome = await run_example(simulate, stage)
            assert not problems(simulate, outcome), outcome.report()
            seen.append(((state / "sim-ca.pem").read_bytes(), (state / "sim-server.pem").read_bytes()))
    (ca1, server1), (ca2, server2) = seen
    assert ca1 == ca2 and server1 != server2
    assert (state / "sim-ca.key").stat().st_mode & 0o077 == 0
