"""Many miners on one laptop: an interval-mode cluster's CPU, block rate and convergence.

Starts a tracker and N miners (default 8) as real processes with ``--mining
interval:S`` (default 2 s) and one worker each, lets them mine for a while, and
prints one JSON object per network:

- ``cpu_cores``: the miners' CPU (node processes and their mining workers)
  divided by the wall time, i.e. how many cores the cluster held on average,
  next to ``continuous_cpu_cores``: the same cluster in continuous mode, measured
  in the same run (the baseline: what the miners took before interval mode);
- ``blocks_per_miner_per_slot``: blocks each miner found per slot (at most 1 by
  design; less when the difficulty does not allow one a slot);
- ``converged``: every miner reported the same tip at the end.

Run it with ``python bench/bench_interval.py [--miners 8] [--interval 2] [--seconds 30]
[--network regtest --network local]``.  On ``local`` the difficulty retargets toward
a 5 s block time, so interval mode cannot keep the miners idle there for long:
the figure is reported as measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nodebench_util import CLI, Daemon, POLL_S, node_endpoints, start_tracker, stop_all, wait_until  # noqa: E402

from zcoin.client import NodeClient, NodeUnavailable  # noqa: E402


def children(pid: int) -> list[int]:
    """Pids of the live children of ``pid`` (its mining workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run_cluster(network: str, miners: int, mode: str, seconds: float, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    daemons: list[Daemon] = []
    try:
        tracker, endpoint = start_tracker("tracker", work)
        daemons.append(tracker)
        nodes = []
        for i in range(miners):
            data = work / f"m{i}"
            args = [*CLI, "miner", "--name", f"m{i}", "--network", network, "--mining", mode, "--workers", "1",
                    "--tracker", endpoint, "--data-dir", str(data), "--api", "tcp://127.0.0.1:*",
                    "--gossip", "tcp://127.0.0.1:*"]
            daemon = Daemon(f"m{i}", args, work)
            daemons.append(daemon)
            nodes.append((daemon, data))
        clients = [NodeClient(node_endpoints(d, data)["api"], timeout_s=10) for d, data in nodes]
        wait_until(lambda: all(c.request("status")["synced"] for c in clients), 60, "every miner synced", POLL_S)
        pids = [d.proc.pid for d, _ in nodes]
        start_height = max(c.request("status")["height"] for c in clients)
        found_before = [len(re.findall(r"block found", d.log())) for d, _ in nodes]
        start, before = time.monotonic(), cpu_seconds(pids + [c for p in pids for c in children(p)])
        time.sleep(seconds)  # the measured period: the cluster runs on its own
        elapsed = time.monotonic() - start
        used = cpu_seconds(pids + [c for p in pids for c in children(p)]) - before
        found = [len(re.findall(r"block found", d.log())) - n for (d, _), n in zip(nodes, found_before)]
        tips = set()

        def converged() -> bool:
            tips.clear()
            try:
                tips.update(c.request("status")["tip"] for c in clients)
            except NodeUnavailable:  # a miner busy with a storm of blocks (continuous regtest): ask again
                return False
            return len(tips) == 1

        try:
            wait_until(converged, 15, "one tip", 0.05)
            agreed = True
        except AssertionError:
            agreed = False
        height = max(c.request("status")["height"] for c in clients)
        for client in clients:
            client.close()
        return {"cpu_cores": round(used / elapsed, 3), "seconds": round(elapsed, 1),
                "blocks": height - start_height, "blocks_found_per_miner": found, "converged": agreed}
    finally:
        stop_all(daemons)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--miners", type=int, default=8)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--network", action="append", choices=["regtest", "local"])
    args = parser.parse_args()
    results = {"miners": args.miners, "interval_s": args.interval, "cpu_count": os.cpu_count(), "networks": {}}
    with tempfile.TemporaryDirectory(prefix="bench-interval-") as tmp:
        for network in args.network or ["regtest", "local"]:
            interval = run_cluster(network, args.miners, f"interval:{args.interval:g}", args.seconds,
                                   Path(tmp) / network / "interval")
            baseline = run_cluster(network, args.miners, "continuous", min(args.seconds, 15.0),
                                   Path(tmp) / network / "continuous")
            slots = math.floor(interval["seconds"] / args.interval) + 1  # slot starts a window can hold
            results["networks"][network] = {
                **interval,
                "blocks_per_miner_per_slot": round(max(interval["blocks_found_per_miner"]) / slots, 3),
                "continuous_cpu_cores": baseline["cpu_cores"],
                "cpu_ratio_to_continuous": round(interval["cpu_cores"] / baseline["cpu_cores"], 3)
                if baseline["cpu_cores"] else None,
            }
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
