"""Commands on the assistant's command topic: what may be asked, parsed strictly, and who carries them out.

A payload is a JSON object such as {"command": "say", "text": "..."}, or a bare word for the commands that take
nothing ("start", "mute"). Anything else is refused with a message naming the field at fault."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

COMMANDS = ("start", "end", "mute", "unmute", "say", "reload")
PLAIN_COMMANDS = frozenset(COMMANDS) - {"say"}  # accepted as bare words too: handy in HA's mqtt.publish
MAX_COMMAND_BYTES = 4096
MAX_SAY_CHARS = 1000


class CommandError(ValueError):
    def __init__(self, message: str, command: str | None = None) -> None:
        super().__init__(message)
        self.command = command


@dataclass(frozen=True)
class Command:
    name: str
    text: str | None = None


def _shown(value: Any, limit: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise CommandError(f"{key}: given twice")
        seen[key] = value
    return seen


def parse_command(payload: bytes) -> Command:
    """A command payload → Command, or CommandError naming the field at fault. JSON objects such as
    {"command": "say", "text": "..."}, or a bare word for the commands that take nothing ("start", "mute")."""
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
        if word in PLAIN_COMMANDS:
            return Command(word)
        if word == "say" or word.startswith("say "):
            raise CommandError('say needs JSON: {"command": "say", "text": "..."}', "say")
        raise CommandError(f"unknown command {_shown(body)}; expected one of {expected}")
    try:
        data = json.loads(body, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise CommandError(f"command is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict):
        raise CommandError('command must be a JSON object such as {"command": "start"}')
    if "command" not in data:
        raise CommandError(f"command: missing; expected one of {expected}")
    name = data["command"]
    if not isinstance(name, str):
        raise CommandError(f"command: must be a string, not {_shown(name)}")
    if name not in COMMANDS:
        raise CommandError(f"command: unknown command {_shown(name)}; expected one of {expected}")
    allowed = {"command", "text"} if name == "say" else {"command"}
    if "text" in data and name != "say":
        raise CommandError(f"text: only the say command takes text, not {name}", name)
    unknown = sorted(set(data) - allowed)
    if unknown:
        keys = ", ".join(_shown(k) for k in unknown)
        raise CommandError(f"unknown key{'s' if len(unknown) > 1 else ''} {keys} for command {name}", name)
    if name != "say":
        return Command(name)
    text = data.get("text")
    if text is None:
        raise CommandError("text: missing; say needs the text to send", name)
    if not isinstance(text, str):
        raise CommandError(f"text: must be a string, not {_shown(text)}", name)
    text = text.strip()
    if not text:
        raise CommandError("text: must not be empty", name)
    if len(text) > MAX_SAY_CHARS:
        raise CommandError(f"text: {len(text)} characters; at most {MAX_SAY_CHARS} are accepted", name)
    return Command(name, text)


class Controller(Protocol):
    """What MQTT commands ask of the conversation loop."""

    async def start_conversation(self, text: str | None = None) -> None: ...
    async def end_conversation(self) -> None: ...
    def set_muted(self, muted: bool) -> None: ...
    async def reload(self) -> None: ...
