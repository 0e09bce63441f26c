"""The design kept true: which parts of daemon/ may import which, read from the package's own source (imports
inside functions included), and every module small enough to read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "daemon"
MAX_LINES = 600

# The top of the tree: entry points and the composition root. Nothing below may reach up to them.
TOP = (
    "daemon.cli",
    "daemon.__main__",
    "daemon.runtime",
    "daemon.assembly",
    "daemon.preflight",
    "daemon.acl",
    "daemon.say",
    "daemon.trace",
    "daemon.sim",
)
LOW = (
    "daemon.config",
    "daemon.calls",
    "daemon.events",
    "daemon.loading",
    "daemon.audio",
    "daemon.wake",
    "daemon.live",
    "daemon.tools",
    "daemon.mqtt",
    "daemon.credentials",
    "daemon.logs",
    "daemon.service",
    "daemon.schema",
    "daemon.yamlsrc",
    "daemon.bundled",
    "daemon.state",
    "daemon.status",
    "daemon.heap",
)
# Between them: the household's everyday features, built on the layers below and used by the runtime.
MIDDLE = ("daemon.household", "daemon.hooks", "daemon.timers", "daemon.builtins")
# (importer, what it must not import, why)
UP = "a lower layer never reaches up to an entry point or the composition root"
RULES = [
    *((low, top, UP) for low in LOW + MIDDLE for top in TOP),
    *((low, mid, UP) for low in LOW for mid in MIDDLE),
    ("daemon.live", "daemon.tools", "the live layer knows nothing of the tools"),
    ("daemon.live", "daemon.mqtt", "the live layer knows nothing of MQTT"),
    ("daemon.tools", "daemon.audio", "the tool layer knows nothing of audio"),
    ("daemon.tools", "daemon.live", "the tool layer knows nothing of Gemini's transport"),
    ("daemon.tools", "daemon.wake", "the tool layer knows nothing of the wake word"),
    ("daemon.mqtt", "daemon.tools", "MQTT is below the tools"),
    ("daemon.mqtt", "daemon.live", "MQTT knows nothing of Gemini"),
    ("daemon.mqtt", "daemon.audio", "MQTT knows nothing of audio"),
    ("daemon.audio", "daemon.live", "audio is below the live layer"),
    ("daemon.audio", "daemon.tools", "audio knows nothing of the tools"),
    ("daemon.audio", "daemon.mqtt", "audio knows nothing of MQTT"),
    ("daemon.audio", "daemon.wake", "audio is below the wake word"),
    *((leaf, other, "config is a leaf") for leaf in ["daemon.config"] for other in LOW if other not in (
        "daemon.config", "daemon.schema", "daemon.yamlsrc")),
    *(("daemon.events", other, "events is a leaf") for other in LOW if other != "daemon.events"),
    *(("daemon.calls", other, "calls is a leaf") for other in LOW if other != "daemon.calls"),
]
# Product code never imports the simulator; only the command line starts it (`livehome simulate`, `demo`).
SIM_ALLOWED = ("daemon.sim", "daemon.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every daemon module this file imports, at any depth of the file, relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # `from . import template` names a module
    return {m for m in found if m == "daemon" or m.startswith("daemon.")}


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def modules() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for importer, imported in graph.items():
        for target in imported:
            for low, forbidden, why in RULES:
                if within(importer, low) and within(target, forbidden):
                    out.append(f"{importer} imports {target}: {why}")
            if within(target, "daemon.sim") and not any(within(importer, a) for a in SIM_ALLOWED):
                out.append(f"{importer} imports {target}: product code never imports the simulator")
    return sorted(set(out))


def test_the_reader_sees_real_imports() -> None:
    graph = modules()
    assert "daemon.live.session" in graph["daemon.runtime"]
    assert "daemon.tools.template" in graph["daemon.tools.engine"]  # `from . import template as tpl`
    assert "daemon.audio.frames" in graph["daemon.live.session"]  # a relative import two levels up


def test_a_violation_is_caught() -> None:
    graph = {"daemon.live.session": {"daemon.mqtt.link"}, "daemon.mqtt.presence": {"daemon.sim.server"}}
    assert violations(graph) == [
        "daemon.live.session imports daemon.mqtt.link: the live layer knows nothing of MQTT",
        f"daemon.mqtt.presence imports daemon.sim.server: {UP}",
        "daemon.mqtt.presence imports daemon.sim.server: product code never imports the simulator",
    ]


def test_layers_import_only_downwards() -> None:
    assert violations(modules()) == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_reads_in_one_sitting(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_every_package_ships() -> None:
    """pyproject.toml lists the packages (two of them live outside daemon/): none may be forgotten."""
    import tomllib

    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert on_disk <= listed
