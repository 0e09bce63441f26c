"""livehome benchmarks: each measures our path beside a raw baseline taken in the same run, and prints a table of
ratios. Run all with `./dev bench`, or some: `./dev bench tools`. `--record` rewrites bench/RESULTS.md.

On a Raspberry Pi, `./dev bench --pi` measures what matters on the device (listening CPU share of one core, peak
RSS, spawn → READY, wake word → first audio byte) and prints them under a line naming the board, the OS's Python,
the TFLite runtime and the memory. Where openWakeWord cannot be installed (32-bit ARM, CPython >= 3.12) the
figures come without a baseline. `--pi --record` writes bench/RESULTS-pi.md."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import importlib.metadata
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.common import Row, table  # noqa: E402

BENCHES = ["tools", "live", "wake", "start", "soak"]
PI_BENCHES = ["wake", "start"]


def device() -> str:
    """One line naming what the figures were measured on."""
    try:
        board = Path("/proc/device-tree/model").read_text().strip("\0\n ")
    except OSError:
        board = platform.node()
    from daemon.wake.tflite import interpreter_class

    runtime = interpreter_class().__module__.split(".")[0]
    try:
        version = importlib.metadata.version(runtime.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem = next((ln.split()[1] for ln in meminfo if ln.startswith("MemTotal:")), "0")
    return (
        f"{board}: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
        f"{runtime} {version}, numpy {importlib.metadata.version('numpy')}, {int(mem) // 1024} MiB RAM, "
        f"{os.cpu_count()} cores"
    )


def notes(results: Path) -> str:
    """What follows the table in the current RESULTS.md (the notes, written by hand), kept by --record."""
    lines = results.read_text().splitlines() if results.exists() else []
    last = max((i for i, line in enumerate(lines) if line.startswith("|")), default=len(lines) - 1)
    rest = "\n".join(lines[last + 1 :]).strip("\n")
    return f"\n{rest}\n" if rest else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help=f"some of {', '.join(BENCHES)} (default: all)")
    parser.add_argument("--record", action="store_true", help="write the table into bench/RESULTS.md")
    parser.add_argument("--pi", action="store_true", help="the on-device figures (wake and start) for a Pi owner")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    rows: list[Row] = []
    for name in args.names or (PI_BENCHES if args.pi else BENCHES):
        module = importlib.import_module(f"bench.bench_{name}")
        print(f"running {name} …", file=sys.stderr, flush=True)
        rows += asyncio.run(module.run())
    text = table(rows)
    if args.pi:
        text = f"{device()}\n\n{text}"
    print(text)
    if args.record and args.pi:
        stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        (HERE / "RESULTS-pi.md").write_text(
            f"# On-device figures\n\nRecorded {stamp} with `./dev bench --pi --record`.\n\n{text}\n"
        )
    elif args.record:
        stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        machine = f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
        (HERE / "RESULTS.md").write_text(
            "# Benchmark results\n\n"
            f"Recorded {stamp} on {machine} with `./dev bench --record`. Each baseline is measured in the same run "
            "as the figure beside it; the ratio is ours ÷ baseline (lower is better; 1.0 = no overhead).\n\n"
            f"{text}\n{notes(HERE / 'RESULTS.md')}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
