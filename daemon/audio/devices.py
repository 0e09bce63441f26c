"""PortAudio sound devices: finding the one the config names, opening it at a rate it accepts, and explaining
failures with the devices that do exist."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from dataclasses import dataclass
from typing import Any

from ..logs import logger
from .frames import AudioDeviceError, Kind

log = logger(__name__)

_PA_LOCK = threading.Lock()  # Pa_Initialize/Pa_Terminate are reference counted but not thread-safe
_quieted = False
_quiet_handlers: list[Any] = []


def _quiet_native_logs() -> None:
    """PortAudio probes every ALSA and JACK backend at start-up, and those libraries print dozens of harmless
    errors straight to stderr. Silence their printers (not stderr itself, which our own logging uses)."""
    global _quieted
    if _quieted or log.isEnabledFor(logging.DEBUG):
        return
    _quieted = True
    with contextlib.suppress(OSError, AttributeError):
        alsa = ctypes.CDLL("libasound.so.2")
        handler = ctypes.CFUNCTYPE(
            None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p
        )(lambda *_: None)
        alsa.snd_lib_error_set_handler(handler)
        _quiet_handlers.append(handler)
    with contextlib.suppress(OSError, AttributeError):
        jack = ctypes.CDLL("libjack.so.0")
        printer = ctypes.CFUNCTYPE(None, ctypes.c_char_p)(lambda _: None)
        jack.jack_set_error_function(printer)
        jack.jack_set_info_function(printer)
        _quiet_handlers.append(printer)


def new_pyaudio() -> Any:
    import pyaudio

    with _PA_LOCK:
        _quiet_native_logs()
        return pyaudio.PyAudio()


def terminate_pyaudio(pa: Any) -> None:
    with _PA_LOCK, contextlib.suppress(Exception):
        pa.terminate()


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    input_channels: int
    output_channels: int
    default_rate: int
    default_input: bool = False
    default_output: bool = False

    def channels(self, kind: Kind) -> int:
        return self.input_channels if kind == "input" else self.output_channels

    def __str__(self) -> str:
        return f"{self.index} '{self.name}'"


def device_infos(pa: Any) -> list[DeviceInfo]:
    defaults = {}
    for kind, getter in (
        ("input", pa.get_default_input_device_info),
        ("output", pa.get_default_output_device_info),
    ):
        with contextlib.suppress(OSError):
            defaults[kind] = getter()["index"]
    devices = []
    for i in range(pa.get_device_count()):
        d = pa.get_device_info_by_index(i)
        devices.append(
            DeviceInfo(
                index=i,
                name=str(d["name"]),
                input_channels=int(d["maxInputChannels"]),
                output_channels=int(d["maxOutputChannels"]),
                default_rate=int(d["defaultSampleRate"]),
                default_input=defaults.get("input") == i,
                default_output=defaults.get("output") == i,
            )
        )
    return devices


def list_devices() -> list[DeviceInfo]:
    """Every device PortAudio sees (blocking: PortAudio probes the sound system)."""
    pa = new_pyaudio()
    try:
        return device_infos(pa)
    finally:
        terminate_pyaudio(pa)


_NO_DEVICES = (
    "PortAudio finds no sound devices at all (no sound card or USB audio plugged in, "
    "or this user may not open /dev/snd: add it to the 'audio' group)"
)


def format_devices(devices: list[DeviceInfo]) -> str:
    """The table for `livehome devices`."""
    if not devices:
        return f"no audio devices: {_NO_DEVICES}"
    width = max(len(d.name) for d in devices)
    lines = [f"{'index':>5}  {'name':<{width}}  {'in':>3}  {'out':>3}  {'rate':>6}"]
    for d in devices:
        marks = [
            m for m, on in (("default input", d.default_input), ("default output", d.default_output)) if on
        ]
        row = f"{d.index:>5}  {d.name:<{width}}  {d.input_channels:>3}  {d.output_channels:>3}"
        lines.append(f"{row}  {d.default_rate:>6}" + (f"  ({', '.join(marks)})" if marks else ""))
    return "\n".join(lines)


def _device_list(devices: list[DeviceInfo], kind: Kind) -> str:
    usable = [d for d in devices if d.channels(kind)]
    if not devices:
        return _NO_DEVICES
    if not usable:
        return f"no {kind} devices exist; all devices: " + ", ".join(map(str, devices))
    return f"{kind} devices: " + ", ".join(map(str, usable))


def find_device(devices: list[DeviceInfo], wanted: str | int | None, kind: Kind, field: str) -> DeviceInfo:
    """The device `wanted` names: an index, a (case-insensitive) name substring, or None for the default."""
    if not devices:
        raise AudioDeviceError(f"no audio {kind} device: {_NO_DEVICES}")
    usable = [d for d in devices if d.channels(kind)]
    if wanted is None:
        for d in usable:
            if d.default_input if kind == "input" else d.default_output:
                return d
        raise AudioDeviceError(
            f"no default audio {kind} device; set {field} to one of the " + _device_list(devices, kind)
        )
    if isinstance(wanted, int) or wanted.strip().isdigit():
        index = int(wanted)
        for d in usable:
            if d.index == index:
                return d
        raise AudioDeviceError(
            f"{field} {index} is not an audio {kind} device; {_device_list(devices, kind)}"
        )
    needle = wanted.strip().lower()
    exact = [d for d in usable if d.name.lower() == needle]
    matches = exact or [d for d in usable if needle in d.name.lower()]
    if not matches:
        raise AudioDeviceError(
            f"{field} '{wanted}' matches no audio {kind} device; {_device_list(devices, kind)}"
        )
    if len(matches) > 1:
        log.info("%s '%s' matches %s; using the first", field, wanted, ", ".join(map(str, matches)))
    return matches[0]


_PA_HINTS = {
    -9985: "the device is busy or unavailable (another program may be using it)",
    -9996: "invalid device",
    -9997: "the device does not support this sample rate",
    -9998: "the device does not support this channel count",
    -9999: "host error: the device was unplugged or the sound server went away",
}


def pa_message(exc: BaseException) -> str:
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else getattr(exc, "errno", None)
    text = exc.args[1] if len(exc.args) > 1 else str(exc)
    hint = _PA_HINTS.get(code) if isinstance(code, int) else None
    return f"{text} [{code}]" + (f": {hint}" if hint else "")


def _pick_format(pa: Any, device: DeviceInfo, kind: Kind, rates: list[int]) -> tuple[int, int]:
    """The first rate the device accepts, mono if it can (else stereo)."""
    import pyaudio

    for rate in rates:
        for channels in (1, 2):
            if channels > device.channels(kind):
                continue
            kwargs = {
                f"{kind}_device": device.index,
                f"{kind}_channels": channels,
                f"{kind}_format": pyaudio.paInt16,
            }
            with contextlib.suppress(ValueError):
                if pa.is_format_supported(rate, **kwargs):
                    return rate, channels
    raise AudioDeviceError(
        f"audio {kind} {device} supports none of the sample rates {rates} in 16-bit mono or stereo"
    )


class PyAudioDevice:
    """One open PortAudio stream and the PortAudio instance it lives in; opened and used in one thread."""

    def __init__(self, kind: Kind, wanted: str | int | None, field: str, rates: list[int]) -> None:
        """`rates` in order of preference; 0 stands for the device's default rate."""
        import pyaudio

        self.pa = new_pyaudio()
        self.info: DeviceInfo | str = repr(wanted)
        try:
            self.info = info = find_device(device_infos(self.pa), wanted, kind, field)
            rates = list(dict.fromkeys(r or info.default_rate for r in rates))
            self.rate, self.channels = _pick_format(self.pa, info, kind, rates)
            self.stream = self.pa.open(
                format=pyaudio.paInt16,
                channels=self.channels,
                rate=self.rate,
                frames_per_buffer=self.rate // 50,
                **{kind: True, f"{kind}_device_index": info.index},
            )
        except OSError as exc:
            self.close()
            raise AudioDeviceError(f"cannot open audio {kind} {self.info}: {pa_message(exc)}") from exc
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        stream = getattr(self, "stream", None)
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
            self.stream = None
        terminate_pyaudio(self.pa)

