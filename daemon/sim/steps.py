"""The steps a scenario turn is made of: what the fake model does, one mapping with one key each.

Kept apart from scenario.py (the file format, triggers and loading) for size; scenario.py re-exports them.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..schema import Duration, StrictModel
from ..yamlsrc import suggest

# Steps written as a bare word (`- turn_complete`) or with an empty value.
FLAG_STEPS = ("generation_complete", "turn_complete", "interrupted", "abort", "forget_handles")
# Steps whose value may be left out: `- await_tools` means "all outstanding calls".
OPTIONAL_VALUE_STEPS = ("await_tools", "resumption_update", "expect_reconnect")
TOOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")


class CallSpec(StrictModel):
    name: str = Field(description="the tool's name as the client declares it")
    args: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(default=None, min_length=1, description="fixed id, so later steps can refer to it")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TOOL_NAME.match(v):
            raise ValueError("a tool name starts with a letter or _, then letters, digits, _ . : - (64 at most)")
        return v


class AwaitTools(StrictModel):
    ids: list[str] | None = Field(default=None, description="the calls to wait for; all outstanding ones if unset")
    timeout: Duration | None = Field(default=None, gt=0, description="settings.tool_timeout if unset")
    expect: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per id, keys and values the response must contain"
    )
    same_as: dict[str, str] = Field(
        default_factory=dict,
        description="per id, an earlier call id whose response this one must equal (the model re-issued a call)",
    )
    on_timeout: Literal["violation", "continue"] = "violation"

    @model_validator(mode="before")
    @classmethod
    def _short(cls, data: Any) -> Any:
        if data is None or data == "all":
            return {}
        if isinstance(data, str):
            return {"ids": [data]}
        if isinstance(data, list):
            return {"ids": data}
        return data


class Say(StrictModel):
    text: str = Field(min_length=1, description="what the model says (espeak-ng)")
    transcript: bool | str = Field(default=True, description="outputTranscription: the text, other text, or none")
    pace: Literal["fast", "realtime"] | None = None
    on_barge_in: list[Step] | None = Field(
        default=None,
        description="if the user starts speaking while this audio plays: run these steps and end the turn",
    )

    @model_validator(mode="before")
    @classmethod
    def _short(cls, data: Any) -> Any:
        return {"text": data} if isinstance(data, str) else data


class GoAway(StrictModel):
    time_left: Duration = Field(default=10.0, description="then the connection is closed if the client stays")

    @model_validator(mode="before")
    @classmethod
    def _short(cls, data: Any) -> Any:
        return {"time_left": data} if not isinstance(data, dict) else data


class ResumptionUpdate(StrictModel):
    resumable: bool = True
    force: bool = Field(default=False, description="issue a handle even while a call is outstanding (unlike the "
                                                    "service: the handle then remembers the call)")

    @model_validator(mode="before")
    @classmethod
    def _short(cls, data: Any) -> Any:
        if data is None:
            return {}
        return {"resumable": data} if isinstance(data, bool) else data


class Close(StrictModel):
    code: int = Field(ge=1000, le=4999)
    reason: str = Field(default="", max_length=123)

    @model_validator(mode="before")
    @classmethod
    def _short(cls, data: Any) -> Any:
        return {"code": data} if isinstance(data, int) and not isinstance(data, bool) else data

    @field_validator("code")
    @classmethod
    def _sendable(cls, v: int) -> int:
        if v in (1004, 1005, 1006, 1015) or 1016 <= v <= 2999:
            raise ValueError(f"close code {v} cannot be sent in a close frame (use abort for an abrupt close)")
        return v

    @field_validator("reason")
    @classmethod
    def _bytes(cls, v: str) -> str:
        if len(v.encode()) > 123:
            raise ValueError("a close reason is at most 123 bytes of UTF-8")
        return v


class ExpectReconnect(StrictModel):
    resumed: bool | None = Field(default=True, description="true: must resume; false: must not; null: either")
    timeout: Duration | None = Field(default=None, gt=0, description="settings.reconnect_timeout if unset")

    @model_validator(mode="before")
    @classmethod
    def _short(cls, data: Any) -> Any:
        return {} if data is None else data


class Step(StrictModel):
    """One thing the fake model does: a mapping with exactly one key, the step's kind."""

    input_transcription: str | None = Field(default=None, description="serverContent.inputTranscription")
    tool_call: list[CallSpec] | None = Field(default=None, description="one toolCall message with these calls")
    await_tools: AwaitTools | None = None
    say: Say | None = None
    generation_complete: Literal[True] | None = None
    turn_complete: Literal[True] | None = None
    interrupted: Literal[True] | None = None
    cancel_tools: list[str] | None = Field(default=None, min_length=1, description="toolCallCancellation ids")
    go_away: GoAway | None = None
    resumption_update: ResumptionUpdate | None = None
    abort: Literal[True] | None = Field(default=None, description="drop the TCP connection (the client sees 1006)")
    close: Close | None = None
    sleep: Duration | None = None
    expect_reconnect: ExpectReconnect | None = None
    forget_handles: Literal[True] | None = Field(
        default=None, description="every handle issued so far is refused from now on (1008 session not found)"
    )
    raw: dict[str, Any] | None = Field(default=None, description="send this JSON message verbatim")

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, data: Any) -> Any:
        kinds = list(cls.model_fields)
        if isinstance(data, str):
            if data in FLAG_STEPS:
                return {data: True}
            if data in OPTIONAL_VALUE_STEPS:
                return {data: {}}
            if data in kinds:
                raise PydanticCustomError("step", "step '{kind}' needs a value", {"kind": data})
            raise PydanticCustomError("step", "unknown step '{kind}'{hint}", {"kind": data,
                                                                              "hint": suggest(data, kinds)})
        if isinstance(data, dict):
            if len(data) != 1:
                raise PydanticCustomError(
                    "step",
                    "a step is a mapping with one key, its kind (got {keys}); put options under it, "
                    "e.g. `say: {text: ..., pace: realtime}`",
                    {"keys": ", ".join(map(str, data)) or "none"},
                )
            (kind, value), = data.items()
            if value is None:
                if kind in FLAG_STEPS:
                    return {kind: True}
                if kind in OPTIONAL_VALUE_STEPS:
                    return {kind: {}}
                if kind in kinds and kind not in OPTIONAL_VALUE_STEPS:
                    raise PydanticCustomError("step", "step '{kind}' needs a value", {"kind": kind})
            return data
        raise PydanticCustomError("step", "a step is a word such as turn_complete or a one-key mapping")

    @field_validator("tool_call", mode="before")
    @classmethod
    def _one_call(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @field_validator("cancel_tools", mode="before")
    @classmethod
    def _one_id(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @property
    def kind(self) -> str:
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)

    @property
    def value(self) -> Any:
        return getattr(self, self.kind)


Say.model_rebuild()
