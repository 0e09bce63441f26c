"""Pydantic building blocks shared by every config section: strict models that suggest the key a typo meant,
human durations, and turning a ValidationError into Problems that name file, line and field."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PlainSerializer, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from .yamlsrc import Problem, dotted, locate, suggest

_SECRETISH = re.compile(r"pass|secret|token|key", re.IGNORECASE)


class StrictModel(BaseModel):
    """Unknown keys are errors, reported with the closest valid key."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set()
            for name, field in cls.model_fields.items():
                known.add(name)
                if field.alias:
                    known.add(field.alias)
            for key in data:
                if key not in known:
                    raise PydanticCustomError(
                        "unknown_key",
                        "unknown key '{key}'{hint}",
                        {"key": str(key), "hint": suggest(key, sorted(known))},
                    )
        return data


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
]


def problems_from_validation(exc: ValidationError, root: Any, prefix: tuple[Any, ...] = ()) -> list[Problem]:
    """Each pydantic error located in the YAML it came from. Inputs are echoed only when short and not under a
    key that looks like a secret."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        if err["type"] == "unknown_key":
            loc = (*loc, err["ctx"]["key"])
        file, line = locate(root, loc)
        where = dotted([p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))])
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        given = err.get("input")
        if (
            err["type"] not in ("unknown_key", "missing")
            and isinstance(given, str | int | float)
            and not isinstance(given, bool)
            and len(str(given)) <= 60
            and not _SECRETISH.search(where)
        ):
            msg += f" (got {given!r})"
        problems.append(Problem(file, line, where, msg))
    return problems
