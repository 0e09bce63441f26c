"""The YAML tool spec: what a tool may do, checked once when the config loads.

The security model lives here. Every topic a tool can ever publish to is enumerated at load time: a topic
placeholder may only take the values of an enum or a map, so a model can never steer a publish elsewhere.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator, model_validator

from ..schema import Duration, StrictModel
from ..yamlsrc import suggest

Scheduling = Literal["SILENT", "WHEN_IDLE", "INTERRUPT"]
Behavior = Literal["BLOCKING", "NON_BLOCKING"]
Scalar = StrictStr | StrictInt | StrictFloat
# A map may turn a spoken name into a small JSON object for a payload (a colour as {"x": .., "y": ..}); never a topic.
MapValue = Scalar | dict[str, Scalar]

NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
STRING_MAX_LENGTH = 256  # default cap on any string argument; a spec may lower it or raise it to HARD_MAX_LENGTH
HARD_MAX_LENGTH = 4096


class Param(StrictModel):
    """One argument, in a JSON-Schema subset Gemini understands."""

    type: Literal["string", "integer", "number", "boolean"]
    description: str | None = None
    enum: list[Scalar] | None = Field(default=None, min_length=1)
    map: dict[str, MapValue] | None = Field(
        default=None, min_length=1, description="spoken name → device value; the names form the enum"
    )
    scale: StrictInt | StrictFloat | None = Field(
        default=None, gt=0, description="the device gets the argument × scale (rounded for integers): 0-100 % → 0-254"
    )
    minimum: StrictInt | StrictFloat | None = None
    maximum: StrictInt | StrictFloat | None = None
    pattern: str | None = None
    minLength: int | None = Field(default=None, ge=0)
    maxLength: int | None = Field(default=None, ge=1, le=HARD_MAX_LENGTH)
    default: Scalar | StrictBool | None = None
    scope: Literal["room"] | None = Field(
        default=None, description="room: when the user names none, the satellite's assistant.room (if a choice)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Param:
        if self.scope is not None and self.map is None and self.enum is None:
            raise ValueError("scope: room needs an enum or map whose names include the rooms")
        if self.map is not None and self.type != "string":
            raise ValueError("map is for string parameters (the spoken names)")
        if self.map is not None and self.enum is not None:
            raise ValueError("give either enum or map: the map's names already form the enum")
        numeric = self.type in ("integer", "number")
        if (self.minimum is not None or self.maximum is not None or self.scale is not None) and not numeric:
            raise ValueError("minimum/maximum/scale are for integer and number parameters")
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError("minimum is greater than maximum")
        if (self.pattern or self.minLength is not None or self.maxLength is not None) and self.type != "string":
            raise ValueError("pattern/minLength/maxLength are for string parameters")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regular expression: {exc}") from None
        for value in self.enum or []:
            if not _type_ok(self.type, value):
                raise ValueError(f"enum value {value!r} is not of type {self.type}")
        if self.default is not None:
            allowed = list(self.map) if self.map else self.enum
            if not _type_ok(self.type, self.default) or (allowed is not None and self.default not in allowed):
                raise ValueError(f"default {self.default!r} is not a valid value of this parameter")
        return self

    @property
    def choices(self) -> list[Any] | None:
        """What the model may say: the map's names or the enum."""
        return list(self.map) if self.map else self.enum

    @property
    def values(self) -> list[Any] | None:
        """What the argument turns into after mapping: the map's values or the enum."""
        return list(self.map.values()) if self.map else self.enum


def _type_ok(kind: str, value: Any) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    return {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) or (isinstance(value, float) and value.is_integer()),
        "number": isinstance(value, int | float),
        "boolean": False,
    }[kind]


def _one_or_many(v: Any) -> Any:
    return [v] if isinstance(v, dict) else v


class Publish(StrictModel):
    topic: str = Field(min_length=1)
    payload: Any = Field(default=None, description="mapping/list → JSON, string → raw text, null → empty")
    qos: Literal[0, 1, 2] = 1
    retain: bool = False
    when: str | None = Field(default=None, description="sent only when this argument is given (one topic per feature)")


class Confirm(StrictModel):
    """Wait for the device to report the new state, so the model only says 'done' when it is."""

    topic: str = Field(min_length=1)
    expect: Any = Field(description="mapping: these fields must match; scalar: the whole payload must match")
    timeout: Duration = Field(default=3.0, gt=0, le=120)


class Read(StrictModel):
    """Answer from the last message seen on a state topic; never publishes."""

    topic: str = Field(min_length=1)
    max_age: Duration | None = Field(default=None, gt=0, description="older readings are reported as stale")
    fields: dict[str, str] | None = Field(default=None, description="answer name → dotted path in the payload")

    @field_validator("fields", mode="before")
    @classmethod
    def _list_fields(cls, v: Any) -> Any:
        if isinstance(v, list):
            return {str(p).rsplit(".", 1)[-1]: p for p in v}
        return v


class Undo(StrictModel):
    """A compensating publish, run when the call is cancelled after its publish went out."""

    publish: list[Publish] = Field(min_length=1)
    state_topic: str | None = Field(default=None, description="where {previous.*} comes from; default confirm.topic")

    @field_validator("publish", mode="before")
    @classmethod
    def _wrap(cls, v: Any) -> Any:
        return _one_or_many(v)


class SchedulingSpec(StrictModel):
    success: Scheduling = "WHEN_IDLE"
    error: Scheduling = "INTERRUPT"
    timeout: Scheduling | None = Field(default=None, description="unconfirmed; default: as error")

    @model_validator(mode="before")
    @classmethod
    def _single(cls, v: Any) -> Any:
        return {"success": v, "error": v, "timeout": v} if isinstance(v, str) else v

    def for_outcome(self, outcome: str) -> str:
        if outcome == "timeout":
            return self.timeout or self.error
        return self.success if outcome == "success" else self.error


class Availability(StrictModel):
    """Where a device says whether it is reachable: a call to it fails at once while it says it is not."""

    topic: str = Field(min_length=1)
    offline: Scalar | StrictBool = Field(description="the payload, or the field value at `field`, meaning offline")
    field: str | None = Field(default=None, description="dotted path in a JSON payload; default: the whole payload")


class Device(StrictModel):
    """One device behind a tool that chooses among devices (`devices:`): the arguments it takes, each narrowed to
    its own range or values, and its own action. A call naming it is checked against these before anything is sent."""

    parameters: dict[str, dict[str, Any] | None] = Field(
        default_factory=dict, description="the tool's parameters this device takes; null: as the tool declares it"
    )
    publish: list[Publish] | None = None
    confirm: Confirm | None = None
    read: Read | None = None
    undo: Undo | None = None
    source: str | None = Field(default=None, description="where it was found (shown by livehome tools)")
    availability: Availability | None = None

    @field_validator("publish", mode="before")
    @classmethod
    def _wrap(cls, v: Any) -> Any:
        return _one_or_many(v)


class ToolSpec(StrictModel):
    name: str = Field(pattern=NAME_RE, description="letters, digits and _, at most 64")
    description: str = Field(min_length=1, description="what the model reads to decide when to call it")
    parameters: dict[str, Param] = Field(default_factory=dict)
    required: list[str] = Field(default_factory=list)
    behavior: Behavior | None = Field(
        default=None, description="BLOCKING: the model waits for the answer; default: the model's own (see README)"
    )
    scheduling: SchedulingSpec | None = Field(default=None, description="how a NON_BLOCKING answer is delivered")
    voice_only: bool = Field(default=False, description="a text turn (an MQTT say, livehome say) can never call it")
    sensitive: bool = Field(
        default=False, description="runs only after the user says yes out loud (voice_only too): locks, alarms, doors"
    )
    publish: list[Publish] | None = Field(default=None, description="one publish or a list, sent in order")
    confirm: Confirm | None = None
    read: Read | None = None
    undo: Undo | None = None
    any_of: list[str] | None = Field(default=None, description="a call must give at least one of these arguments")
    device_parameter: str | None = Field(
        default=None, description="with devices: the parameter that names the device (its enum is their names)"
    )
    devices: dict[str, Device] | None = Field(
        default=None, description="device name → what it takes and does; instead of the tool's own action"
    )

    @field_validator("publish", mode="before")
    @classmethod
    def _wrap(cls, v: Any) -> Any:
        return _one_or_many(v)

    @field_validator("parameters")
    @classmethod
    def _param_names(cls, v: dict[str, Param]) -> dict[str, Param]:
        for name in v:
            if not re.match(NAME_RE, name) or name == "previous":
                raise ValueError(f"parameter name '{name}' must be letters, digits and _ (and not 'previous')")
        return v

    @model_validator(mode="after")
    def _shape(self) -> ToolSpec:
        for field_name, names in (("required", self.required), ("any_of", self.any_of or [])):
            for name in names:
                if name not in self.parameters:
                    raise ValueError(f"{field_name} names unknown parameter '{name}'{suggest(name, self.parameters)}")
        if self.devices is not None:
            return self._devices_shape()
        if self.device_parameter is not None:
            raise ValueError("device_parameter goes with devices:")
        _one_action(self)
        return self

    def _devices_shape(self) -> ToolSpec:
        if self.publish or self.read or self.confirm or self.undo:
            raise ValueError("with devices:, each device has its own publish/read; the tool has none")
        if not self.devices:
            raise ValueError("devices: needs at least one device")
        chooser = self.parameters.get(self.device_parameter or "")
        if chooser is None or chooser.type != "string" or self.device_parameter not in self.required:
            raise ValueError("devices: needs device_parameter, a required string parameter naming the device")
        if chooser.choices is not None and set(chooser.choices) != set(self.devices):
            raise ValueError(f"{self.device_parameter}: its values must be exactly the device names")
        for name, device in self.devices.items():
            _one_action(device, f"device '{name}': ")
            for param in device.parameters:
                if param not in self.parameters or param == self.device_parameter:
                    raise ValueError(
                        f"device '{name}' takes '{param}', which is not one of the tool's other parameters"
                        f"{suggest(param, self.parameters)}"
                    )
        return self


def _one_action(spec: ToolSpec | Device, who: str = "") -> None:
    if (spec.publish is None) == (spec.read is None):
        raise ValueError(f"{who}a tool has exactly one action: publish (optionally with confirm/undo) or read")
    if spec.read is not None and (spec.confirm or spec.undo):
        raise ValueError(f"{who}confirm and undo go with publish, not with read")
