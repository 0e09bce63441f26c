"""The configuration file: sections, defaults, and loading with every error placed at its file and line."""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from .schema import Duration, StrictModel, problems_from_validation
from .tools.packs import Include, expand_tools
from .tools.registry import Registry, SpecError, compile_tool
from .tools.spec import ToolSpec
from .yamlsrc import ConfigError, LDict, Problem, dotted, load_yaml, locate

EX_CONFIG = 78  # sysexits.h: the unit file's RestartPreventExitStatus relies on it

DEFAULT_INSTRUCTION = (
    "You are a voice assistant for a home. Answer briefly, in one or two short sentences. "
    "Use the tools to control and read devices; never claim a device changed unless its tool said so. "
    "When the user says goodbye or has nothing more to ask, call end_conversation."
)


class Vad(StrictModel):
    """Gemini's automatic voice activity detection."""

    enabled: bool = True
    start_sensitivity: Literal["high", "low"] | None = None
    end_sensitivity: Literal["high", "low"] | None = None
    prefix_padding: Duration | None = None
    silence: Duration | None = Field(default=None, description="silence that ends the user's turn")


class Gemini(StrictModel):
    model: str = "gemini-3.8-live"
    endpoint: str | None = Field(default=None, description="service base URL (a proxy or `livehome simulate`)")
    api_version: str = "v1beta"
    ca_file: Path | None = Field(default=None, description="CA certificate that signs the endpoint's TLS certificate")
    api_key_file: Path | None = None
    voice: str | None = "Puck"
    language: str | None = "en-US"
    system_instruction: str = DEFAULT_INSTRUCTION
    vad: Vad = Vad()
    sliding_window: bool = Field(default=True, description="context-window compression, so sessions can run long")
    compression_trigger_tokens: int | None = Field(default=None, gt=0)
    transcription: bool = True
    connect_timeout: Duration = 10.0
    reconnect_attempts: int = Field(default=5, ge=0, le=100)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("https://", "http://")):
            raise ValueError("endpoint must be a URL such as https://127.0.0.1:8443 (the client always uses TLS)")
        return v


class MqttTls(StrictModel):
    enabled: bool = True
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = Field(default=False, description="skip hostname verification (testing only)")


class Mqtt(StrictModel):
    host: str = "localhost"
    port: int | None = Field(default=None, ge=1, le=65535, description="1883, or 8883 with TLS")
    username: str | None = None
    password_file: Path | None = Field(
        default=None, description="file holding the password; $CREDENTIALS_DIRECTORY/mqtt-password wins"
    )
    tls: MqttTls = MqttTls(enabled=False)
    client_id: str | None = Field(default=None, description="default: livehome-<assistant.id>, unique per satellite")
    topic_prefix: str = "livehome"
    keepalive: Duration = 30.0
    reconnect_min: Duration = 0.5
    reconnect_max: Duration = 30.0
    publish_timeout: Duration = 5.0

    @field_validator("tls", mode="before")
    @classmethod
    def _tls_bool(cls, v: Any) -> Any:
        return {"enabled": v} if isinstance(v, bool) else v

    @property
    def effective_port(self) -> int:
        return self.port or (8883 if self.tls.enabled else 1883)


class WakeWord(StrictModel):
    model: str = Field(
        description="a bundled name (hey_jarvis, alexa, hey_mycroft, hey_rhasspy, okay_nabu) or a "
        ".tflite/.onnx path relative to the config file"
    )
    threshold: float = Field(default=0.5, gt=0, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, v: Any) -> Any:
        return {"model": v} if isinstance(v, str) else v


class Wake(StrictModel):
    words: list[WakeWord] = Field(default_factory=lambda: [WakeWord(model="hey_jarvis")], min_length=1)
    refractory: Duration = Field(default=2.0, description="ignore further detections for this long")
    preroll: Duration = Field(default=0.3, le=5, description="audio before the detection point sent to the model")
    models_dir: Path | None = Field(default=None, description="where to look for models by name first")


class AudioInput(StrictModel):
    backend: Literal["pyaudio", "file", "stdin"] = "pyaudio"
    device: str | int | None = Field(default=None, description="name substring or index; default device if unset")
    file: Path | None = Field(default=None, description="WAV or raw 16 kHz s16le for backend: file")
    realtime: bool = Field(default=True, description="pace file input in real time")
    rate: int | None = Field(default=None, description="capture rate when the device cannot do 16000")


class AudioOutput(StrictModel):
    backend: Literal["pyaudio", "wav", "none"] = "pyaudio"
    device: str | int | None = None
    file: Path | None = Field(default=None, description="where backend: wav writes what was played")


class Audio(StrictModel):
    input: AudioInput = AudioInput()
    output: AudioOutput = AudioOutput()
    retry_delay: Duration = Field(default=2.0, description="wait before reopening a device that failed")


class Conversation(StrictModel):
    idle_timeout: Duration = Field(default=8.0, gt=0, description="end after this long without speech either way")
    max_duration: Duration = Field(default=300.0, gt=0)
    barge_in: Literal["wake_word", "voice", "off"] = "wake_word"
    earcons: bool = True
    settle_timeout: Duration = Field(default=5.0, description="time outstanding tool calls get at the end")


def _default_id() -> str:
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname()).strip("-").lower()
    return slug or "livehome"


class Arbitration(StrictModel):
    """Several satellites on one broker: the one that heard the wake word best opens the session."""

    enabled: bool = True
    window: Duration = Field(default=0.3, gt=0, le=2, description="how long to collect other satellites' claims")


class Assistant(StrictModel):
    """The daemon itself on MQTT: availability, state, events, commands, Home Assistant discovery."""

    id: str = Field(default_factory=_default_id, pattern=r"^[A-Za-z0-9_-]{1,64}$", description="unique per satellite")
    name: str | None = Field(default=None, description="friendly name in Home Assistant (default: livehome <id>)")
    room: str | None = Field(default=None, description="where this satellite stands; tools can default to it")
    discovery_prefix: str | None = Field(
        default=None, description="Home Assistant's discovery prefix, usually homeassistant; unset: no discovery"
    )
    discovery: bool | None = Field(default=None, description="default: on when discovery_prefix is set")
    arbitration: Arbitration = Arbitration()

    @property
    def discovery_enabled(self) -> bool:
        return bool(self.discovery_prefix) and self.discovery is not False


class Config(StrictModel):
    gemini: Gemini = Gemini()
    mqtt: Mqtt = Mqtt()
    wake: Wake = Wake()
    audio: Audio = Audio()
    conversation: Conversation = Conversation()
    assistant: Assistant = Assistant()
    tools: list[ToolSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _client_id(self) -> Config:
        """Two satellites must never share an MQTT client id: the broker would keep disconnecting one for the
        other. The default follows assistant.id, which already has to be unique."""
        if self.mqtt.client_id is None:
            mqtt = self.mqtt.model_copy(update={"client_id": f"livehome-{self.assistant.id}"})
            object.__setattr__(self, "mqtt", mqtt)
        return self


@dataclass(frozen=True)
class Loaded:
    """A validated config with its tools compiled: what the daemon runs on (and what a reload swaps)."""

    path: Path
    config: Config
    registry: Registry


def load(path: Path) -> Loaded:
    """Load, validate and compile. Raises ConfigError with every problem found, each at its file and line."""
    config, raw = load_config(path)
    tools, problems = [], []
    for index, spec in enumerate(config.tools):
        try:
            tools.append(compile_tool(spec, config.assistant.room))
        except SpecError as exc:
            for where, message in exc.problems:
                file, line = locate(raw, ("tools", index, *where))
                problems.append(Problem(file, line, f"tool '{spec.name}' {dotted(where)}".rstrip(), message))
    if problems:
        raise ConfigError(problems)
    return Loaded(Path(path), config, Registry(tools))


def load_config(path: Path) -> tuple[Config, Any]:
    """Parse, expand tool includes, validate. Returns the config and the located raw data (for later checks);
    raises ConfigError listing every problem found with its place."""
    path = Path(path)
    raw = load_yaml(path)
    if raw is None:
        raw = LDict()
        raw.file = str(path)
    if not isinstance(raw, dict):
        raise ConfigError([Problem(str(path), getattr(raw, "line", 1), "", "the config must be a mapping")])
    problems: list[Problem] = []
    if "tools" in raw:
        raw["tools"] = expand_tools(raw["tools"], path.parent, problems)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems += problems_from_validation(exc, raw, Config)
    if problems:
        raise ConfigError(problems)
    return _resolve_paths(config, path.parent), raw


def _resolve_paths(config: Config, base: Path) -> Config:
    """Relative paths in the config are relative to the config file, not to wherever the daemon was started."""

    def fix(p: Path | None) -> Path | None:
        return p if p is None or p.is_absolute() else (base / p)

    g, m, a, w = config.gemini, config.mqtt, config.audio, config.wake
    return config.model_copy(
        update={
            "gemini": g.model_copy(update={"ca_file": fix(g.ca_file), "api_key_file": fix(g.api_key_file)}),
            "mqtt": m.model_copy(
                update={
                    "password_file": fix(m.password_file),
                    "tls": m.tls.model_copy(
                        update={k: fix(getattr(m.tls, k)) for k in ("ca_file", "cert_file", "key_file")}
                    ),
                }
            ),
            "audio": a.model_copy(
                update={
                    "input": a.input.model_copy(update={"file": fix(a.input.file)}),
                    "output": a.output.model_copy(update={"file": fix(a.output.file)}),
                }
            ),
            "wake": w.model_copy(
                update={
                    "models_dir": fix(w.models_dir),
                    "words": [
                        ww.model_copy(update={"model": str(base / ww.model)})
                        if ww.model.endswith((".tflite", ".onnx")) and not os.path.isabs(ww.model)
                        else ww
                        for ww in w.words
                    ],
                }
            ),
        }
    )


def json_schema() -> str:
    """The config's JSON Schema, for editors' completion and validation of config.yaml."""
    schema = Config.model_json_schema(mode="validation")
    # In the file, a tools entry may also be an include (expanded before validation).
    include = Include.model_json_schema()
    schema.setdefault("$defs", {})["Include"] = include
    tools = schema["properties"]["tools"]
    tools["items"] = {"anyOf": [tools["items"], {"$ref": "#/$defs/Include"}]}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "livehome configuration"
    return json.dumps(schema, indent=2)
