"""Pydantic building blocks shared by every config section: strict models that suggest the key a typo meant,
human durations, and turning a ValidationError into Problems that name file, line and field."""

from __future__ import annotations

import re
import unicodedata
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from .yamlsrc import Problem, dotted, locate, suggest

_SECRETISH = re.compile(r"pass|secret|token|key", re.IGNORECASE)
TOPIC_MAX_BYTES = 512


class StrictModel(BaseModel):
    """Unknown keys are errors (reported with the closest valid key by problems_from_validation)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _field_names(model: type[BaseModel]) -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        names.append(field.alias or name)
    return names


def _models_in(annotation: Any) -> list[Any]:
    """The members of Optional/Union/Annotated, so a path can be followed through them."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _models_in(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return [m for arg in get_args(annotation) for m in _models_in(arg)]
    return [annotation]


def model_at(root: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that validated the mapping at `path`, for suggesting its keys."""
    current: list[Any] = [root]
    for part in path:
        following: list[Any] = []
        for ann in current:
            for member in _models_in(ann):
                origin = get_origin(member)
                if isinstance(member, type) and issubclass(member, BaseModel):
                    field = member.model_fields.get(part) or next(
                        (f for f in member.model_fields.values() if f.alias == part), None
                    )
                    if field is not None:
                        following.append(field.annotation)
                elif origin in (list, tuple) and isinstance(part, int):
                    following.append(get_args(member)[0])
                elif origin is dict:
                    following.append(get_args(member)[1])
        current = following or current  # a part that matches nothing is a union tag: stay put
    for ann in current:
        for member in _models_in(ann):
            if isinstance(member, type) and issubclass(member, BaseModel):
                return member
    return None


def topic_problem(topic: str) -> str | None:
    """Why a concrete topic may not be published to, or None."""
    if not topic:
        return "empty topic"
    if "#" in topic or "+" in topic:
        return f"topic '{_cut(topic)}' contains an MQTT wildcard"
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in topic):
        return f"topic {_cut(topic)!r} contains a control character"
    if "" in topic.split("/"):
        return f"topic '{_cut(topic)}' has an empty level (leading, trailing or double '/')"
    if topic.startswith("$"):
        return f"topic '{_cut(topic)}' is a broker-internal ($) topic"
    if len(topic.encode()) > TOPIC_MAX_BYTES:
        return f"topic is longer than {TOPIC_MAX_BYTES} bytes"
    return None


def _cut(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + f"…({len(text)} chars)"


def _topic_prefix(value: str) -> str:
    if problem := topic_problem(value):
        raise ValueError(problem.replace("topic", "a topic prefix", 1))
    return value


# A prefix the daemon puts its own topics under (or Home Assistant's discovery prefix): a plain topic, no wildcard.
TopicPrefix = Annotated[str, AfterValidator(_topic_prefix)]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from 3, 2.5, '500ms', '3s', '10m', '1h'."""
    if isinstance(value, bool):
        raise PydanticCustomError("duration", "expected a duration such as 3s, 500ms or 10m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    else:
        raise PydanticCustomError("duration", "expected a duration such as 3s, 500ms or 10m")
    if seconds < 0:
        raise PydanticCustomError("duration", "a duration cannot be negative")
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(lambda s: f"{s:g}s", return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "description": "seconds"},
                {"type": "string", "pattern": _DURATION.pattern, "examples": ["500ms", "3s", "10m", "1h"]},
            ]
        }
    ),
]


def problems_from_validation(exc: ValidationError, root: Any, model: type[BaseModel]) -> list[Problem]:
    """Each pydantic error located in the YAML it came from. Inputs are echoed only when short and not under a
    key that looks like a secret."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        file, line = locate(root, loc)
        where = dotted([p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            owner = model_at(model, loc[:-1])
            msg = f"unknown key '{loc[-1]}'" + (suggest(loc[-1], _field_names(owner)) if owner else "")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        given = err.get("input")
        if (
            err["type"] not in ("extra_forbidden", "missing")
            and isinstance(given, str | int | float)
            and not isinstance(given, bool)
            and len(str(given)) <= 60
            and not _SECRETISH.search(where)
        ):
            msg += f" (got {given!r})"
        problems.append(Problem(file, line, where, msg))
    return problems
