"""Files that ship with livehome: the tool packs (the repository's tools/) and the example config (its
config.yaml). An installed wheel carries them inside the package (daemon/packs, daemon/starter); a source
checkout has them next to the package. Either way they are found without a path from the user."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _first(*candidates: Path) -> Path:
    return next((c for c in candidates if c.exists()), candidates[0])


def packs_dir() -> Path:
    return _first(_PACKAGE / "packs", _PACKAGE.parent / "tools")


def example_config() -> Path:
    return _first(_PACKAGE / "starter" / "config.yaml", _PACKAGE.parent / "config.yaml")


def packs() -> dict[str, Path]:
    """The bundled tool packs by name (`zigbee2mqtt`), for `include: zigbee2mqtt`."""
    folder = packs_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}
