"""Finding wake-word model files: by name in a few folders, or by path.

openWakeWord's wheel ships no model files (it would download them at run time), so the shared feature models
(melspectrogram, embedding) and the stock words come from the pyopen_wakeword package, which bundles them. The
folders are found without importing the packages: importing openwakeword alone costs ~100 MiB and a second.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from ..config import WakeWord
from ..yamlsrc import suggest

MODEL_SUFFIXES = (".tflite", ".onnx")
FEATURE_MODELS = ("melspectrogram", "embedding_model")
_NOT_WAKE_WORDS = {*FEATURE_MODELS, "silero_vad"}
_VERSION_SUFFIX = re.compile(r"_v\d+(\.\d+)*$")  # openWakeWord's own files: hey_jarvis_v0.1.tflite


class WakeModelError(ValueError):
    """A wake-word model that cannot be found or loaded."""


def _package_dir(package: str, *parts: str) -> Path | None:
    """A package's data folder, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def search_dirs(models_dir: Path | None) -> list[tuple[Path, str]]:
    """Where models are looked up by name, in order, each with what it is."""
    dirs = []
    if models_dir is not None:
        dirs.append((Path(models_dir), "wake.models_dir"))
    if (oww := _package_dir("openwakeword", "resources", "models")) is not None:
        dirs.append((oww, "openWakeWord's model folder"))
    if (bundled := _package_dir("pyopen_wakeword", "models")) is not None:
        dirs.append((bundled, "models bundled with pyopen_wakeword"))
    return dirs


def _model_name(path: Path) -> str:
    return _VERSION_SUFFIX.sub("", path.stem)


def available_models(models_dir: Path | None = None) -> dict[str, Path]:
    """Every wake-word model findable by name; earlier folders win."""
    found: dict[str, Path] = {}
    for folder, _ in search_dirs(models_dir):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            name = _model_name(path)
            if path.suffix in MODEL_SUFFIXES and name not in _NOT_WAKE_WORDS:
                found.setdefault(name, path)
    return found


def resolve_model(model: str, models_dir: Path | None = None, where: str = "wake.words[].model") -> Path:
    """The file for a model name (searched in `search_dirs`) or an explicit .tflite/.onnx path."""
    if models_dir is not None and not Path(models_dir).is_dir():
        raise WakeModelError(f"wake.models_dir: {models_dir} is not a directory")
    if WakeWord(model=model).is_path:
        path = Path(model).expanduser()
        if path.suffix not in MODEL_SUFFIXES:
            raise WakeModelError(f"{where}: {model} is neither a .tflite nor an .onnx model")
        if not path.is_file():
            raise WakeModelError(f"{where}: the model file {path} does not exist")
        return path
    found = available_models(models_dir).get(model)
    if found is not None:
        return found
    looked = "; ".join(
        f"{folder} ({what}{'' if folder.is_dir() else ', missing'})"
        for folder, what in search_dirs(models_dir)
    )
    known = sorted(available_models(models_dir))
    raise WakeModelError(
        f"{where}: no wake-word model named '{model}'{suggest(model, known)}. Looked in: {looked}. "
        f"Available: {', '.join(known) or 'none'}"
    )


def feature_model(name: str, models_dir: Path | None = None) -> Path:
    """openWakeWord's shared melspectrogram or embedding model (tflite)."""
    for folder, _ in search_dirs(models_dir):
        if (folder / f"{name}.tflite").is_file():
            return folder / f"{name}.tflite"
    raise WakeModelError(
        f"openWakeWord's feature model {name}.tflite is missing; looked in "
        + ", ".join(str(f) for f, _ in search_dirs(models_dir))
        + " (is pyopen-wakeword installed?)"
    )
