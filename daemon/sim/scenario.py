"""Scenarios for the Live API simulator: what the fake model does when the user types or says something.

A scenario is a list of turns run in order. Each turn waits for user input matching its trigger (`on:`) and then
runs its steps, which send what the real service would send (transcriptions, tool calls, audio, goAway, ...) or
wait for the client (tool responses, a reconnect). The format is user-facing (`livehome simulate`), so every
mistake is reported with its file and line, and ids that steps refer to are checked before anything runs.

Steps (steps.py): input_transcription; tool_call (same id again: a repeat; same name and args under a new id: a
re-issue); await_tools {ids, timeout, expect, same_as: {new: earlier} (answers must be equal), on_timeout}; say
{text, transcript, pace, on_barge_in}; generation_complete; turn_complete (adds generationComplete if the turn
has not sent one and was not interrupted; carries usageMetadata; then an automatic resumption update);
interrupted; cancel_tools; go_away; resumption_update {resumable, force} (no handle while a call is outstanding
unless force); forget_handles (every handle issued so far is refused: 1008 session not found); raw (a JSON
message sent verbatim); abort; close {code, reason}; sleep; expect_reconnect {resumed: true | false | null}.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..schema import Duration, StrictModel, problems_from_validation
from ..yamlsrc import ConfigError, LDict, LList, Problem, dotted, load_yaml, locate, suggest
from .steps import (
    FLAG_STEPS,
    OPTIONAL_VALUE_STEPS,
    TOOL_NAME,
    AwaitTools,
    CallSpec,
    Close,
    ExpectReconnect,
    GoAway,
    ResumptionUpdate,
    Say,
    Step,
)

__all__ = [
    "FLAG_STEPS", "OPTIONAL_VALUE_STEPS", "TOOL_NAME", "AwaitTools", "CallSpec", "Close", "ConfigError",
    "ExpectReconnect", "GoAway", "ResumptionUpdate", "Say", "Scenario", "Settings", "Step", "Trigger", "Turn",
    "load_scenario", "packaged_scenarios",
]

SCENARIO_DIR = Path(__file__).parent / "scenarios"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WORDS = re.compile(r"[^\w\s]+")


def normalize_text(text: str) -> str:
    """Case, punctuation and spacing do not matter when matching what the user typed."""
    return " ".join(_WORDS.sub(" ", text.casefold()).split())


class VadSettings(StrictModel):
    """Energy-based utterance detection on the PCM the client streams (the service's own VAD is a model; an
    RMS gate is enough to tell whether the client's speech arrived, and whole)."""

    threshold: float = Field(default=500.0, gt=0, description="RMS (int16 units) of a 20 ms frame that is speech")
    speech_start: Duration = Field(default=0.06, description="voiced time before an utterance counts as started")
    end_silence: Duration = Field(default=0.6, gt=0, description="silence that ends an utterance")
    preroll: Duration = Field(default=0.3, le=5, description="audio kept from before the speech started")


class VoiceSettings(StrictModel):
    """The model's voice: espeak-ng, sent as the service sends it (s16le PCM in base64 chunks)."""

    rate: int = Field(default=24000, ge=8000, le=48000)
    chunk: Duration = Field(default=0.04, gt=0, le=1, description="audio per serverContent message")
    voice: str = "en-us"
    speed: int = Field(default=175, ge=80, le=450, description="words per minute")


class Settings(StrictModel):
    pace: Literal["fast", "realtime"] = Field(
        default="fast", description="send model audio as fast as possible, or one chunk per chunk duration"
    )
    reconnect_timeout: Duration = Field(default=15.0, gt=0, description="how long a step waits for a connection")
    setup_timeout: Duration = Field(default=10.0, gt=0, description="how long a new connection may take to set up")
    tool_timeout: Duration = Field(default=10.0, gt=0, description="default for await_tools")
    unexpected_input: Literal["violation", "ignore"] = Field(
        default="violation", description="user input that no pending turn expects"
    )
    resume_while_open: Literal["reject", "allow"] = Field(
        default="reject", description="a resume while the session's previous connection is still open"
    )
    vad: VadSettings = VadSettings()
    voice: VoiceSettings = VoiceSettings()


class SpeechTrigger(StrictModel):
    min_duration: Duration = 0.0
    max_duration: Duration | None = None


class Trigger(StrictModel):
    """What starts a turn. Several keys mean any of them; `on: text`, `on: speech`, `on: any` are shorthands."""

    text: bool | str | list[str] | None = Field(
        default=None, description="true for any text, or the text(s) expected (case and punctuation ignored)"
    )
    pattern: str | None = Field(default=None, description="regular expression searched in the text, ignoring case")
    speech: bool | SpeechTrigger | None = Field(default=None, description="an utterance in the streamed audio")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            forms = {"text": {"text": True}, "speech": {"speech": True}, "any": {"text": True, "speech": True}}
            if data not in forms:
                raise PydanticCustomError(
                    "trigger", "expected text, speech, any or a mapping{hint}", {"hint": suggest(data, forms)}
                )
            return forms[data]
        return data

    @field_validator("pattern")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return v

    @model_validator(mode="after")
    def _something(self) -> Trigger:
        if not (self.text or self.pattern or self.speech):
            raise ValueError("a trigger needs text, pattern or speech")
        return self

    def accepts_text(self, text: str) -> bool:
        if self.text is True:
            return True
        wanted = [self.text] if isinstance(self.text, str) else (self.text or [])
        if normalize_text(text) in {normalize_text(w) for w in wanted}:
            return True
        return bool(self.pattern and re.search(self.pattern, text, re.IGNORECASE))

    def accepts_speech(self, duration: float) -> bool:
        if not self.speech:
            return False
        if isinstance(self.speech, SpeechTrigger):
            if duration < self.speech.min_duration:
                return False
            if self.speech.max_duration is not None and duration > self.speech.max_duration:
                return False
        return True

    def describe(self) -> str:
        parts = []
        if self.text is True:
            parts.append("any text")
        elif self.text:
            parts.append("text " + " or ".join(repr(t) for t in ([self.text] if isinstance(self.text, str)
                                                                 else self.text)))
        if self.pattern:
            parts.append(f"text matching /{self.pattern}/")
        if self.speech:
            parts.append("speech")
        return " or ".join(parts)


class Turn(StrictModel):
    name: str | None = None
    on: Trigger
    steps: list[Step] = Field(min_length=1)

    def label(self, index: int) -> str:
        return f"turn {index + 1}" + (f" ({self.name})" if self.name else "")


class Scenario(StrictModel):
    name: str = ""
    description: str = ""
    models: list[str] = Field(default_factory=list, description="model names accepted besides the default")
    vars: dict[str, Any] = Field(default_factory=dict, description="${name} placeholders, overridable")
    settings: Settings = Settings()
    turns: list[Turn] = Field(min_length=1)

    _source: str = PrivateAttr(default="")

    @property
    def source(self) -> str:
        return self._source

    @classmethod
    def from_yaml(cls, path: Path | str, vars: Mapping[str, Any] | None = None) -> Scenario:
        """Load and check one scenario file; raises ConfigError naming file, line and field of each problem."""
        path = Path(path)
        raw = load_yaml(path)
        if not isinstance(raw, LDict):
            raise ConfigError([Problem(str(path), getattr(raw, "line", 1), "", "a scenario is a mapping")])
        _substitute(raw, dict(vars or {}))
        try:
            scenario = cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(_problems(exc, raw)) from None
        problems = _check_references(scenario, raw)
        if problems:
            raise ConfigError(problems)
        if not scenario.name:
            scenario = scenario.model_copy(update={"name": path.stem})
        scenario._source = str(path)
        return scenario

    def steps(self) -> Iterator[Step]:
        """Every step, nested barge-in steps included."""

        def walk(steps: list[Step]) -> Iterator[Step]:
            for step in steps:
                yield step
                if step.say and step.say.on_barge_in:
                    yield from walk(step.say.on_barge_in)

        for turn in self.turns:
            yield from walk(turn.steps)

    def tool_names(self) -> set[str]:
        return {c.name for s in self.steps() if s.tool_call for c in s.tool_call}


def packaged_scenarios() -> dict[str, Path]:
    """The scenarios shipped with livehome, by name."""
    return {p.stem: p for p in sorted(SCENARIO_DIR.glob("*.yaml"))}


def find_scenario(name_or_path: str | Path) -> Path:
    """A packaged scenario by name ("lights_on"), else a file path."""
    packaged = packaged_scenarios()
    if isinstance(name_or_path, str) and name_or_path in packaged:
        return packaged[name_or_path]
    path = Path(name_or_path)
    if not path.exists() and isinstance(name_or_path, str) and "/" not in name_or_path and path.suffix == "":
        raise ConfigError([Problem(name_or_path, 0, "", "no such scenario file or packaged scenario"
                                   f"{suggest(name_or_path, packaged)} (packaged: {', '.join(packaged)})")])
    return path


def load_scenario(name_or_path: str | Path, vars: Mapping[str, Any] | None = None) -> Scenario:
    return Scenario.from_yaml(find_scenario(name_or_path), vars)


def _substitute(raw: LDict, overrides: dict[str, Any]) -> None:
    """Replace ${name} in string values with the scenario's vars (a whole-value reference keeps the var's type),
    so one scenario can serve clients whose tools are named differently."""
    problems: list[Problem] = []
    defined = raw.get("vars") or {}
    if not isinstance(defined, dict):
        return  # validation reports it
    for key in overrides:
        if key not in defined:
            problems.append(Problem(raw.file, 0, f"vars.{key}", f"the scenario has no such variable"
                                    f"{suggest(key, defined)} (it defines: {', '.join(defined) or 'none'})"))
    values = {**defined, **overrides}

    def subst(value: str, file: str, line: int, where: list[Any]) -> Any:
        def one(name: str) -> Any:
            if name not in values:
                problems.append(Problem(file, line, dotted(where),
                                        f"undefined variable '{name}'{suggest(name, values)}"))
                return ""
            return values[name]

        whole = _VAR.fullmatch(value)
        if whole:
            return one(whole.group(1))
        return _VAR.sub(lambda m: str(one(m.group(1))), value)

    def walk(node: Any, where: list[Any]) -> None:
        if isinstance(node, LDict):
            for key, child in node.items():
                if not where and key == "vars":
                    continue
                if isinstance(child, str) and "${" in child:
                    node[key] = subst(child, node.file, node.lines.get(key, node.line), [*where, key])
                else:
                    walk(child, [*where, key])
        elif isinstance(node, LList):
            for i, child in enumerate(node):
                if isinstance(child, str) and "${" in child:
                    node[i] = subst(child, node.file, node.lines[i], [*where, i])
                else:
                    walk(child, [*where, i])

    walk(raw, [])
    if isinstance(raw.get("vars"), LDict):
        for key, value in overrides.items():
            if key in raw["vars"]:
                raw["vars"][key] = value
    if problems:
        raise ConfigError(problems)


def _problems(exc: ValidationError, root: Any) -> list[Problem]:
    """schema.problems_from_validation, with the step and trigger messages (which already name what was given)
    kept as they are."""
    problems = problems_from_validation(exc, root, Scenario)
    for i, err in enumerate(exc.errors(include_url=False)):
        if err["type"] in ("step", "trigger"):
            problems[i] = Problem(problems[i].file, problems[i].line, problems[i].where, err["msg"])
    return problems


def _check_references(scenario: Scenario, raw: Any) -> list[Problem]:
    """Ids that steps refer to must be defined by an earlier tool_call with a fixed id, and an id names one
    tool only; caught here so a typo fails at load time, not halfway through a run."""
    problems: list[Problem] = []
    defined: dict[str, str] = {}

    def problem(loc: tuple[Any, ...], message: str) -> None:
        file, line = locate(raw, loc)
        problems.append(Problem(file, line, dotted(loc), message))

    def known(call_id: str, loc: tuple[Any, ...]) -> None:
        if call_id not in defined:
            problem(loc, f"no earlier tool_call has id '{call_id}'{suggest(call_id, defined)}"
                         f" (give the call an `id:` to refer to it)")

    def walk(steps: list[Step], loc: tuple[Any, ...]) -> None:
        for j, step in enumerate(steps):
            here = (*loc, j)
            if step.tool_call:
                for k, call in enumerate(step.tool_call):
                    if call.id is None:
                        continue
                    if defined.get(call.id, call.name) != call.name:
                        problem((*here, "tool_call", k, "id"),
                                f"id '{call.id}' was already used for tool '{defined[call.id]}'")
                    defined.setdefault(call.id, call.name)
            if step.await_tools:
                for k, call_id in enumerate(step.await_tools.ids or []):
                    known(call_id, (*here, "await_tools", "ids", k))
                for field in ("expect", "same_as"):
                    for call_id, value in getattr(step.await_tools, field).items():
                        known(call_id, (*here, "await_tools", field, call_id))
                        if step.await_tools.ids is not None and call_id not in step.await_tools.ids:
                            problem((*here, "await_tools", field, call_id), f"'{call_id}' is not in ids")
                        if field == "same_as":
                            known(value, (*here, "await_tools", field, call_id))
            if step.cancel_tools:
                for k, call_id in enumerate(step.cancel_tools):
                    known(call_id, (*here, "cancel_tools", k))
            if step.say and step.say.on_barge_in:
                walk(step.say.on_barge_in, (*here, "say", "on_barge_in"))

    for i, turn in enumerate(scenario.turns):
        walk(turn.steps, ("turns", i, "steps"))
    return problems
