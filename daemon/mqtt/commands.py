"""Commands on the assistant's command topic: what may be asked, parsed strictly, and who carries them out.

A payload is a JSON object such as {"command": "say", "text": "..."}, or a bare word for the commands that take
nothing ("start", "mute"). Anything else is refused with a message naming the field at fault."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .payloads import PayloadError, Verifier, parse_json

MAX_COMMAND_BYTES = 4096
MAX_TEXT_CHARS = 1000
MAX_SAY_CHARS = MAX_TEXT_CHARS


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {_shown(value)}")
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"{len(value)} characters; at most {MAX_TEXT_CHARS} are accepted")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {_shown(value)}")
    return value


def _percent(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        raise ValueError(f"must be a number from 0 to 100, not {_shown(value)}")
    return round(value)


def _policy(value: Any) -> str:
    if value not in ("wake_word", "voice", "off"):
        raise ValueError(f"must be wake_word, voice or off, not {_shown(value)}")
    return str(value)


@dataclass(frozen=True)
class Spec:
    required: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    optional: dict[str, Callable[[Any], Any]] = field(default_factory=dict)


# Every command, its arguments and their checks. `say` is a text turn: it is off unless assistant.commands has it.
SPECS: dict[str, Spec] = {
    "start": Spec(),
    "end": Spec(),
    "mute": Spec(),
    "unmute": Spec(),
    "reload": Spec(),
    "say": Spec({"text": _text}),
    "announce": Spec({"text": _text}, {"chime": _flag, "follow_up": _flag}),
    "volume": Spec({"level": _percent}),
    "stop": Spec(),  # a ringing timer
    "barge_in": Spec({"policy": _policy}),
    "refresh": Spec(),  # tools discovered from the broker
}
COMMANDS = tuple(SPECS)
PLAIN_COMMANDS = frozenset(n for n, spec in SPECS.items() if not spec.required)  # bare words work too


class CommandError(ValueError):
    def __init__(self, message: str, command: str | None = None) -> None:
        super().__init__(message)
        self.command = command


@dataclass(frozen=True)
class Command:
    name: str
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str | None:
        return self.args.get("text")


def _shown(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def parse_command(payload: bytes, verifier: Verifier | None = None) -> Command:
    """A command payload → Command, or CommandError naming the field at fault. JSON objects such as
    {"command": "say", "text": "..."}, or a bare word for the commands that take nothing ("start", "mute").
    With a verifier (a shared secret is set) only signed JSON is accepted."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"command is {len(payload)} bytes; at most {MAX_COMMAND_BYTES} are accepted")
    try:
        body = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CommandError("command is not UTF-8 text") from None
    if not body:
        raise CommandError('empty command; send e.g. {"command": "start"}')
    expected = ", ".join(COMMANDS)
    if body[0] not in '{["':
        word = body.lower()
        if verifier is not None:
            raise CommandError("command is unsigned; a shared secret is set, so every command must be signed JSON")
        if word in PLAIN_COMMANDS:
            return Command(word)
        if word.split(" ", 1)[0] in SPECS:
            name = word.split(" ", 1)[0]
            raise CommandError(f'{name} needs JSON: {{"command": "{name}", ...}}', name)
        raise CommandError(f"unknown command {_shown(body)}; expected one of {expected}")
    try:
        data = parse_json(body)
        if not isinstance(data, dict):
            raise CommandError('command must be a JSON object such as {"command": "start"}')
        if verifier is not None:
            data = verifier.verify(data)
    except PayloadError as exc:
        raise CommandError(str(exc) if exc.field else f"command is {exc}") from None
    if "command" not in data:
        raise CommandError(f"command: missing; expected one of {expected}")
    name = data["command"]
    if not isinstance(name, str):
        raise CommandError(f"command: must be a string, not {_shown(name)}")
    spec = SPECS.get(name)
    if spec is None:
        raise CommandError(f"command: unknown command {_shown(name)}; expected one of {expected}")
    allowed = {"command", *spec.required, *spec.optional}
    unknown = sorted(set(data) - allowed)
    if unknown:
        keys = ", ".join(_shown(k) for k in unknown)
        raise CommandError(f"unknown key{'s' if len(unknown) > 1 else ''} {keys} for command {name}", name)
    args: dict[str, Any] = {}
    for key, check in {**spec.required, **spec.optional}.items():
        if key not in data:
            if key in spec.required:
                raise CommandError(f"{key}: missing; {name} needs it", name)
            continue
        try:
            args[key] = check(data[key])
        except ValueError as exc:
            raise CommandError(f"{key}: {exc}", name) from None
    return Command(name, args)


class Controller(Protocol):
    """What MQTT commands ask of the daemon."""

    async def start_conversation(self, text: str | None = None) -> None: ...
    async def end_conversation(self) -> None: ...
    def set_muted(self, muted: bool) -> None: ...
    async def reload(self) -> None: ...
    async def announce(self, text: str, chime: bool = True, follow_up: bool = False) -> None: ...
    def set_volume(self, level: int) -> None: ...
    def stop_ringing(self) -> None: ...
    def set_barge_in(self, policy: str) -> None: ...
    async def refresh(self) -> None: ...
