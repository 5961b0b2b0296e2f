#!/usr/bin/env python3
"""Run every benchmark in ``bench/``, one after another, and write their JSON to one file.

Each benchmark runs as its own process (``python bench/<name>.py``), never two at
once: they measure against baselines of the same run, and a second benchmark
beside one would weigh on the subject and the baseline unevenly.  Known
benchmarks run in the order of :data:`BENCHMARKS` (those whose file is missing
are left out); any other ``bench/bench_*.py`` follows with its defaults.

Written, as one JSON object (``bench/results.json`` unless ``--out``): the machine
(cpus, load average before and after, python, platform, date, git commit), and per
benchmark its arguments, exit code, wall time, load average before it, and the
JSON it printed.  A benchmark that fails (exit status, timeout, output that is not
JSON) is recorded with its exit code and the tail of its stderr, and the others
still run.  The file is rewritten after each benchmark, so an interrupted run
keeps what it finished.

Usage::

    .venv/bin/python bench/run_all.py [--quick] [--only NAME ...] [--out PATH] [--timeout S]

``--quick`` passes each benchmark smaller sizes (a smoke run in a few minutes;
its figures are noisier and not comparable with a default run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "results.json"
DEFAULT_TIMEOUT_S = 3600.0
STOP_GRACE_S = 10.0  # after SIGTERM, before SIGKILL, for a benchmark's process group
STDERR_TAIL_CHARS = 4000

# name -> the arguments of a --quick run (a default run passes none)
BENCHMARKS: dict[str, list[str]] = {
    "bench_consensus": ["--seconds", "0.5"],
    "bench_hash": ["--seconds", "2"],
    "bench_chain": ["--blocks", "100", "--pool", "20000", "--long-chain", "2000"],
    "bench_node": ["--seconds", "2", "--rounds", "2", "--blocks", "100", "--sync-rounds", "1"],
    "bench_tracker": ["--members", "50", "--samples", "500", "--rounds", "1"],
    "bench_interval": ["--miners", "3", "--seconds", "8", "--network", "regtest"],
    "bench_explorer": ["--nodes", "2", "--rate", "200", "--seconds", "3"],
    "long_chain": ["--blocks", "2000"],
}


def discover() -> list[str]:
    """The benchmarks present in ``bench/``: the known ones in order, then any other ``bench_*.py``."""
    known = [name for name in BENCHMARKS if (BENCH_DIR / f"{name}.py").exists()]
    others = sorted(p.stem for p in BENCH_DIR.glob("bench_*.py") if p.stem not in BENCHMARKS)
    return known + others


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the benchmark's process group (it and the daemons it started), SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_one(name: str, args: list[str], timeout_s: float) -> dict:
    """Run ``bench/<name>.py`` with ``args``; its JSON, or why there is none."""
    command = [sys.executable, str(BENCH_DIR / f"{name}.py"), *args]
    record: dict = {"args": args, "loadavg_before": _loadavg()}
    started = time.monotonic()
    # A session of its own, so that a timeout or Ctrl-C stops the daemons it started too.
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
        status = "ok" if proc.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        stdout, stderr = proc.communicate()
        status = "timeout"
    except BaseException:  # Ctrl-C: take the benchmark's processes down with us
        _stop_group(proc)
        raise
    record["wall_seconds"] = round(time.monotonic() - started, 1)
    record["exit_code"] = proc.returncode
    if status == "ok":
        try:
            record["result"] = json.loads(stdout)
        except ValueError:
            status = "failed"
            record["error"] = "stdout is not one JSON object"
            record["stdout_tail"] = stdout[-STDERR_TAIL_CHARS:]
    if status != "ok":
        record["stderr_tail"] = stderr[-STDERR_TAIL_CHARS:]
    record["status"] = status
    return record


def write(path: Path, results: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes for every benchmark (a smoke run)")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON file to write (default bench/results.json)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"seconds one benchmark may take before it is stopped (default {DEFAULT_TIMEOUT_S:g})")
    args = parser.parse_args(argv)
    names = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"no such benchmark: {', '.join(unknown)} (present: {', '.join(names)})")
        names = [name for name in names if name in args.only]

    out = args.out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    results: dict = {
        "machine": {"cpus": os.cpu_count(), "loadavg_before": _loadavg(), "python": platform.python_version(),
                    "platform": platform.platform(),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "git": {"commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain"))},
        "quick": args.quick,
        "benchmarks": {},
    }
    failed = []
    for name in names:
        bench_args = BENCHMARKS.get(name, []) if args.quick else []
        if name == "long_chain" and "long_chain" in results["benchmarks"].get("bench_chain", {}).get("result", {}):
            results["benchmarks"][name] = {"status": "skipped", "reason": "bench_chain's JSON includes long_chain"}
            continue
        print(f"run_all: {name} {' '.join(bench_args)}".rstrip(), file=sys.stderr, flush=True)
        record = run_one(name, bench_args, args.timeout)
        results["benchmarks"][name] = record
        if record["status"] != "ok":
            failed.append(name)
            print(f"run_all: {name} {record['status']} (exit code {record['exit_code']})", file=sys.stderr, flush=True)
        results["machine"]["loadavg_after"] = _loadavg()
        results["seconds"] = round(time.monotonic() - began, 1)
        write(out, results)
    results["machine"]["loadavg_after"] = _loadavg()
    results["seconds"] = round(time.monotonic() - began, 1)
    results["failed"] = failed
    write(out, results)
    print(f"wrote {out}" + (f" ({len(failed)} failed: {', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
