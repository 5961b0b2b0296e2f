"""Benchmark: the mining pool's hash rate against a plain hashlib midstate loop.

Prints one JSON object (see :func:`zcoin.bench.bench_hash` for every field):
the pool's rate with 1 and with N workers, measured from its own counters, and
the rate of the same per-nonce work in a plain loop in this process, the three
measured in short alternating slices; rates are medians over the rounds and
ratios (``scaling`` among them) medians of same-round ratios, beside the CPU that
other processes took meanwhile (``other_load_cores``).  Run it with
``python bench/bench_hash.py [--workers N] [--seconds S]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from zcoin.bench import bench_hash


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: CPUs)")
    parser.add_argument("--seconds", type=float, default=6.0, help="total measuring time (default: 6)")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.seconds <= 0:
        parser.error("--workers and --seconds must be positive")
    print(json.dumps(bench_hash(args.workers, args.seconds), indent=2))
    return 0


if __name__ == "__main__":  # spawned workers import this file as __mp_main__: keep the guard
    sys.exit(main())
