#!/usr/bin/env python3
"""Benchmark the consensus core and print one JSON object.

Each figure comes with the baseline measured in the same run and its ratio to
it (see ``zcoin/bench.py``).  Usage::

    .venv/bin/python bench/bench_consensus.py [--seconds S] [--only verify|header_hash]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys

from zcoin.bench import BENCHMARKS, DEFAULT_SECONDS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                        help=f"measuring time per benchmark (default {DEFAULT_SECONDS})")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append",
                        help="run only this benchmark (repeatable)")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    results = {name: BENCHMARKS[name](args.seconds) for name in (args.only or BENCHMARKS)}
    results["python"] = platform.python_version()
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
