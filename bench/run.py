"""livehome benchmarks: each measures our path beside a raw baseline taken in the same run, and prints a table of
ratios. Run all with `./dev bench`, or some: `./dev bench tools`. `--record` rewrites bench/RESULTS.md."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.common import Row, table  # noqa: E402

BENCHES = ["tools", "live", "wake", "start"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help=f"some of {', '.join(BENCHES)} (default: all)")
    parser.add_argument("--record", action="store_true", help="write the table into bench/RESULTS.md")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    rows: list[Row] = []
    for name in args.names or BENCHES:
        module = importlib.import_module(f"bench.bench_{name}")
        print(f"running {name} …", file=sys.stderr, flush=True)
        rows += asyncio.run(module.run())
    text = table(rows)
    print(text)
    if args.record:
        stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        machine = f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
        (HERE / "RESULTS.md").write_text(
            "# Benchmark results\n\n"
            f"Recorded {stamp} on {machine} with `./dev bench --record`. Each baseline is measured in the same run "
            "as the figure beside it; the ratio is ours ÷ baseline (lower is better; 1.0 = no overhead).\n\n"
            f"{text}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
