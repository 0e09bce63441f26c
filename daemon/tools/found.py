"""A device found in what the broker already knows (zigbee2mqtt's device list, Home Assistant discovery), in the
terms of the tool spec: what it takes and the exact messages it documents. The two readers (zigbee.py, hass.py)
make these; discover.py groups them into tools. Also the one home of the words a model may use for colours and
colour temperatures, and what each device format makes of them."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Any, Literal, get_args

# What each kind of device becomes, and the kinds that act on a home's safety: these are never found unless the
# user names the device in `allow:` exactly, and then the tool needs a spoken yes.
Kind = Literal["light", "switch", "cover", "climate", "sensor", "binary_sensor", "fan", "lock", "alarm", "garage"]
KINDS: tuple[str, ...] = get_args(Kind)
DEFAULT_KINDS = ("light", "switch", "cover", "climate", "sensor", "binary_sensor", "fan")
SENSITIVE_KINDS = ("lock", "alarm", "garage")

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "orange": (255, 128, 0),
    "yellow": (255, 220, 0),
    "green": (0, 255, 0),
    "cyan": (0, 255, 255),
    "blue": (0, 0, 255),
    "purple": (128, 0, 255),
    "pink": (255, 80, 180),
    "white": (255, 255, 255),
}
# zigbee2mqtt's own preset names for colour temperature (mired), the model's words for it.
TEMPERATURES = {"coolest": None, "cool": 250, "neutral": 370, "warm": 454, "warmest": None}


@dataclass
class Found:
    """One controllable (or readable) part of a device: a light, one gang of a wall switch, a sensor's readings.

    `device` is a `devices:` entry of a tool spec (parameters, publish/confirm or read, availability, source);
    `describe` says what it can do, for the tool's description."""

    kind: str
    name: str
    device: dict[str, Any]
    describe: str = ""
    origin: str = ""  # which source found it, for names that clash
    key: str = ""  # what identifies it in its source's data (a friendly name, a config topic): gone when absent


def lit(text: str) -> str:
    """Text put into a topic or payload template as itself: a friendly name with braces is not a placeholder."""
    return text.replace("{", "{{").replace("}", "}}")


def ref(name: str) -> str:
    return "{" + name + "}"


def xy(rgb: tuple[int, int, int]) -> dict[str, float]:
    """CIE 1931 xy of an sRGB colour (D65), as zigbee2mqtt's `color: {x, y}` takes it."""
    lin = [((c / 255 + 0.055) / 1.055) ** 2.4 if c / 255 > 0.04045 else c / 255 / 12.92 for c in rgb]
    r, g, b = lin
    x = r * 0.4124 + g * 0.3576 + b * 0.1805
    y = r * 0.2126 + g * 0.7152 + b * 0.0722
    z = r * 0.0193 + g * 0.1192 + b * 0.9505
    total = x + y + z
    return {"x": round(x / total, 4), "y": round(y / total, 4)}


def hs(rgb: tuple[int, int, int]) -> tuple[int, int]:
    h, s, _ = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    return round(h * 360), round(s * 100)


def colour_map(form: str) -> dict[str, Any]:
    """Colour word → what a device takes: `xy`/`hs`/`rgb` objects (JSON lights), `rgb_text`/`hs_text` ("r,g,b",
    "h,s": Home Assistant's default light schema)."""
    out: dict[str, Any] = {}
    for name, rgb in COLOURS.items():
        h, s = hs(rgb)
        out[name] = {
            "xy": lambda rgb=rgb: xy(rgb),
            "hs": lambda h=h, s=s: {"hue": h, "saturation": s},
            "hs_ha": lambda h=h, s=s: {"h": h, "s": s},
            "rgb": lambda rgb=rgb: dict(zip("rgb", rgb, strict=True)),
            "rgb_text": lambda rgb=rgb: ",".join(map(str, rgb)),
            "hs_text": lambda h=h, s=s: f"{h},{s}",
        }[form]()
    return out


def temperature_map(low: float, high: float, presets: dict[str, Any] | None = None, kelvin: bool = False) -> dict:
    """Colour temperature word → the device's value within its own range (mired, or kelvin when it takes kelvin).
    A device's own presets win over zigbee2mqtt's defaults."""
    out: dict[str, int] = {}
    for name, mired in TEMPERATURES.items():
        value = (presets or {}).get(name, mired)
        if not isinstance(value, int | float):
            value = low if name == "coolest" else high if name == "warmest" else None
        if value is None:
            continue
        mired_value = min(max(float(value), low), high)
        out[name] = round(1_000_000 / mired_value) if kelvin else round(mired_value)
    return out


def percent_scale(maximum: float) -> float:
    """The factor from 0-100 % to a device's own brightness range (254 for zigbee2mqtt, 255, 100 for Tasmota)."""
    return round(maximum / 100, 6)
