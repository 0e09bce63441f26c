"""Tool packs: reusable YAML files of tools, included from the config with the values of one home.

A pack declares variables (`vars:`, null = required) and uses them as `${name}`; the config's include entry
supplies them. `${lights}` alone as a value takes the whole structure (a map of rooms, say); inside a longer
string it takes a scalar's text. `$${` writes a literal `${`.
"""

from __future__ import annotations

import copy
import glob
import re
from pathlib import Path
from typing import Any

from pydantic import Field

from ..bundled import packs, packs_dir
from ..schema import StrictModel
from ..yamlsrc import ConfigError, LDict, LList, Problem, load_yaml, suggest

_VAR = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_PACK_KEYS = ("description", "vars", "tools")
_INCLUDE_KEYS = ("include", "vars", "only")


class Include(StrictModel):
    """An entry of the config's `tools:` list that pulls in tool packs (for the JSON Schema; expanded earlier)."""

    include: str | list[str] = Field(
        description="a bundled pack's name (zigbee2mqtt, tasmota, shelly), or a file or glob relative to the config"
    )
    vars: dict[str, Any] = Field(default_factory=dict, description="values for the pack's ${variables}")
    only: list[str] | None = Field(default=None, description="take just these tools from the pack")


def _problem(node: Any, key: Any, message: str, where: str = "") -> Problem:
    if isinstance(node, LDict):
        line = node.lines.get(key, node.line)
    elif isinstance(node, LList) and isinstance(key, int) and 0 <= key < len(node.lines):
        line = node.lines[key]
    else:
        line = getattr(node, "line", 0)
    return Problem(getattr(node, "file", "?"), line, where, message)


def expand_tools(raw: Any, base: Path, problems: list[Problem]) -> Any:
    """The config's tools list with every include entry replaced by the tools it brings in."""
    if not isinstance(raw, LList):
        return raw  # pydantic reports the wrong type
    out = LList()
    out.file, out.line = raw.file, raw.line
    seen: dict[str, Problem] = {}
    for index, entry in enumerate(raw):
        items: list[tuple[Any, int]]
        if isinstance(entry, LDict) and "include" in entry:
            items = [(tool, tool.line if isinstance(tool, LDict) else 0) for tool in _include(entry, base, problems)]
        else:
            items = [(entry, raw.lines[index])]
        for tool, line in items:
            out.append(tool)
            out.lines.append(line)
            name = tool.get("name") if isinstance(tool, LDict) else None
            if isinstance(name, str):
                here = _problem(tool, "name", "")
                if name in seen:
                    first = seen[name]
                    again = f"defined twice (first at {first.file}:{first.line})"
                    problems.append(Problem(here.file, here.line, f"tool '{name}'", again))
                else:
                    seen[name] = here
    return out


def _include(entry: LDict, base: Path, problems: list[Problem]) -> list[Any]:
    for key in entry:
        if key not in _INCLUDE_KEYS:
            problems.append(_problem(entry, key, f"unknown key '{key}' in include{suggest(key, _INCLUDE_KEYS)}"))
            return []
    patterns = entry["include"]
    patterns = [patterns] if isinstance(patterns, str) else patterns
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        problems.append(_problem(entry, "include", "include takes a file or glob, or a list of them"))
        return []
    given = entry.get("vars") or LDict()
    only = entry.get("only")
    if not isinstance(given, dict):
        problems.append(_problem(entry, "vars", "vars must be a mapping of name: value"))
        return []
    if only is not None and (not isinstance(only, list) or not all(isinstance(n, str) for n in only)):
        problems.append(_problem(entry, "only", "only takes a list of tool names"))
        return []
    files: list[Path] = []
    bundled = packs()
    for pattern in patterns:
        full = pattern if Path(pattern).is_absolute() else str(base / pattern)
        matched = sorted(Path(p) for p in glob.glob(full))
        if not matched and pattern in bundled:
            matched = [bundled[pattern]]
        if not matched:
            names = ", ".join(bundled) or "none"
            problems.append(_problem(entry, "include", f"no file matches '{pattern}' (relative to {base}), and no "
                                                       f"bundled pack has that name{suggest(pattern, bundled)} "
                                                       f"(bundled: {names})"))
        files += matched
    declared: set[str] = set()
    tools: list[Any] = []
    names: list[Any] = []
    complete = bool(files)  # only then can an unknown var be told apart from a pack that failed to load
    for path in files:
        try:
            pack = load_yaml(path, _display(path, base))
        except ConfigError as exc:
            for p in exc.problems:  # a file that cannot be read at all is the include line's problem
                problems.append(p if p.line else _problem(entry, "include", f"{p.file}: {p.message}", "include"))
            complete = False
            continue
        pack_vars, pack_tools = _split_pack(pack, problems)
        if pack_tools is None:
            complete = False
            continue
        declared |= set(pack_vars)
        values = {**pack_vars, **{k: v for k, v in given.items() if k in pack_vars}}
        for tool in pack_tools:
            name = tool.get("name") if isinstance(tool, dict) else None
            names.append(name)
            if only is not None and name not in only:
                continue  # a tool left out may use vars this home has no values for
            unset: set[str] = set()
            tools.append(_substitute(tool, values, problems, unset))
            if unset:
                hint = "give them under vars:, or leave the tool out with only: [...]"
                message = f"{_display(path, base)}: tool '{name}' needs vars: {', '.join(sorted(unset))} ({hint})"
                problems.append(_problem(entry, "include", message))
    for key in given:
        if complete and key not in declared:
            problems.append(_problem(given, key, f"no included pack declares var '{key}'{suggest(key, declared)}"))
    for name in only or []:
        if complete and name not in names:
            problems.append(_problem(entry, "only", f"no included tool is named '{name}'{suggest(name, names)}"))
    return tools


def _display(path: Path, base: Path) -> str:
    for folder, shown in ((base, ""), (packs_dir(), "<bundled pack> ")):
        try:
            return shown + str(path.relative_to(folder))
        except ValueError:
            continue
    return str(path)


def _split_pack(pack: Any, problems: list[Problem]) -> tuple[dict[str, Any], list[Any] | None]:
    if isinstance(pack, LList):
        return {}, list(pack)
    if not isinstance(pack, LDict) or "tools" not in pack:
        problems.append(_problem(pack, None, "a tool pack is a list of tools, or a mapping with tools: (and vars:)"))
        return {}, None
    for key in pack:
        if key not in _PACK_KEYS:
            problems.append(_problem(pack, key, f"unknown key '{key}' in tool pack{suggest(key, _PACK_KEYS)}"))
            return {}, None
    pack_vars = pack.get("vars") or {}
    if not isinstance(pack_vars, dict) or not isinstance(pack["tools"], list):
        problems.append(_problem(pack, "tools", "tools must be a list and vars a mapping"))
        return {}, None
    return dict(pack_vars), list(pack["tools"])


def _substitute(
    node: Any, values: dict[str, Any], problems: list[Problem], unset: set[str], parent: Any = None, key: Any = None
) -> Any:
    """Replace ${vars}; a declared var without a value is collected in `unset` for one clear message."""
    if isinstance(node, LDict):
        out = LDict()
        out.file, out.line, out.lines = node.file, node.line, dict(node.lines)
        for k, v in node.items():
            out[k] = _substitute(v, values, problems, unset, node, k)
        return out
    if isinstance(node, LList):
        out_list = LList()
        out_list.file, out_list.line, out_list.lines = node.file, node.line, list(node.lines)
        out_list.extend(_substitute(v, values, problems, unset, node, i) for i, v in enumerate(node))
        return out_list
    if not isinstance(node, str) or "$" not in node:
        return node
    whole = _VAR.fullmatch(node)
    if whole and whole.group(1) is not None:
        name = whole.group(1)
        if name in values:
            if values[name] is None:
                unset.add(name)
            return copy.deepcopy(values[name])
    out_text = ""
    pos = 0
    for m in _VAR.finditer(node):
        out_text += node[pos : m.start()]
        pos = m.end()
        if m.group(1) is None:
            out_text += "${"
            continue
        name = m.group(1)
        if name not in values:
            problems.append(_problem(parent, key, f"unknown pack variable ${{{name}}}{suggest(name, values)}"))
            continue
        value = values[name]
        if value is None:
            unset.add(name)
            continue
        if isinstance(value, dict | list):
            problems.append(_problem(parent, key, f"${{{name}}} is a structure; use it alone as a whole value"))
            continue
        out_text += str(value)
    return out_text + node[pos:]
