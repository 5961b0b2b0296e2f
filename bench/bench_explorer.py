#!/usr/bin/env python3
"""Benchmark the explorer's tip endpoint under a transaction load, and print one JSON object.

Real processes, started through the CLI as a user would: a ``zcoin tracker``,
``--nodes`` non-mining regtest miners (``nodebench_util.start_miner``) and ``zcoin
explorer`` over all of them, with one ``/api/events`` stream open the whole time
(read by a thread of this process) so that the explorer does its full work on
every gossip frame.  A block submitted to the first node splits development
funds into one confirmed coin per transaction (``bench_node.presign``); every
transaction is signed before anything is measured, then pushed at ``--rate``
per second for ``--seconds``, round robin over the nodes (a DEALER per node,
pipelined, in a thread of its own).  Each node relays what it accepts, so the
explorer receives about ``rate x nodes`` gossip frames a second.

Meanwhile two threads probe side by side, each every ``--probe-interval``:

- subject: ``GET /api/blocks/tip/height`` on the explorer (one keep-alive HTTP/1.1
  connection, the way a page or a monitoring script asks);
- baseline: a ``status`` request straight to the first node's api (a DEALER),
  the request whose cached answer the explorer serves.

Both are also measured before the load (``idle``, :data:`IDLE_PROBES` answers).
Reported: p50/p90/p99/max in milliseconds of the answers that succeeded, the
failed ones apart (the explorer answers 503 when its own polls of every node time
out), the ratios subject/baseline, the explorer's CPU (cores busy, and
microseconds per gossip frame, everything it did included), the load actually
pushed and accepted, and the ``tx`` events the stream got (capped at 20 a second
by the explorer).

Usage::

    .venv/bin/python bench/bench_explorer.py [--nodes 4] [--rate 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench_node import presign  # noqa: E402  (bench/ is this script's directory)
from nodebench_util import (CLI, HWM, Daemon, cpu_times, node_endpoints, percentiles, start_miner,  # noqa: E402
                            start_tracker, stop_all, wait_until)

from zcoin import wire  # noqa: E402
from zcoin.client import NodeClient  # noqa: E402
from zcoin.consensus.params import REGTEST  # noqa: E402

GOAL_P99_MS = 10.0  # "a few milliseconds" under load
IDLE_PROBES = 200
CLIENT_TIMEOUT_S = 30.0
DRAIN_S = 2.0  # after the last push: replies still on their way


def explorer_metric(base: tuple[str, int], name: str, labels: str) -> float:
    """One sample of the explorer's /metrics."""
    conn = http.client.HTTPConnection(*base, timeout=CLIENT_TIMEOUT_S)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    finally:
        conn.close()
    match = re.search(rf"^{name}{{{labels}}} (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class Pusher(threading.Thread):
    """Pushes pre-encoded ``push_tx`` frames at a fixed rate, round robin over the nodes; counts replies."""

    def __init__(self, apis: list[str], frames: list[bytes], rate: float) -> None:
        super().__init__(daemon=True)
        self.apis, self.frames, self.rate = apis, frames, rate
        self.accepted = self.replied = 0
        self.push_seconds = 0.0

    def run(self) -> None:
        context = zmq.Context.instance()
        socks = []
        for api in self.apis:
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, HWM)
            sock.setsockopt(zmq.RCVHWM, HWM)
            sock.connect(api)
            socks.append(sock)
        poller = zmq.Poller()
        for sock in socks:
            poller.register(sock, zmq.POLLIN)
        start = time.monotonic()
        sent, n = 0, len(self.frames)
        try:
            while sent < n or (self.replied < n and time.monotonic() < start + sent / self.rate + DRAIN_S):
                due = min(n, int((time.monotonic() - start) * self.rate) + 1)
                while sent < due:
                    socks[sent % len(socks)].send(self.frames[sent])
                    sent += 1
                if sent == n and not self.push_seconds:
                    self.push_seconds = time.monotonic() - start
                wait_ms = 10 if sent >= n else max(0, math.ceil((start + sent / self.rate - time.monotonic()) * 1000))
                for sock, _ in poller.poll(wait_ms):
                    while True:
                        try:
                            reply = wire.decode(sock.recv(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                        self.replied += 1
                        self.accepted += bool(reply.get("accepted"))
        finally:
            for sock in socks:
                sock.close()


class StreamReader(threading.Thread):
    """Keeps an /api/events stream open and counts its ``tx`` events."""

    def __init__(self, base: tuple[str, int]) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_connection(base, timeout=CLIENT_TIMEOUT_S)
        self.sock.sendall(b"GET /api/events HTTP/1.0\r\n\r\n")
        self.tx_events = 0

    def run(self) -> None:
        buffer = b""
        try:
            while chunk := self.sock.recv(65536):
                *messages, buffer = (buffer + chunk).split(b"\n\n")
                self.tx_events += sum(m.startswith(b"event: tx\n") for m in messages)
        except OSError:
            pass  # closed at the end

    def close(self) -> None:
        self.sock.close()


class Prober(threading.Thread):
    """Times one kind of request every ``interval`` seconds until stopped; failed answers are counted apart."""

    def __init__(self, ask, interval: float) -> None:
        super().__init__(daemon=True)
        self.ask, self.interval = ask, interval
        self.samples: list[float] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            start = time.perf_counter()
            ok = self.ask()
            if ok:
                self.samples.append(time.perf_counter() - start)
            else:
                self.failures += 1
            self.stop.wait(self.interval)


def explorer_tip(base: tuple[str, int]):
    """The subject: GET /api/blocks/tip/height on one keep-alive connection; True when it answers 200."""
    conn = http.client.HTTPConnection(*base, timeout=CLIENT_TIMEOUT_S)

    def ask() -> bool:
        conn.request("GET", "/api/blocks/tip/height")
        reply = conn.getresponse()
        reply.read()
        return reply.status == 200

    return ask


def node_status(client: NodeClient):
    """The baseline: a ``status`` request straight to the node."""
    def ask() -> bool:
        client.request("status")
        return True

    return ask


def measure(probers: dict[str, Prober], until) -> dict:
    """Run the probers side by side until ``until()`` is false (or for their first ``IDLE_PROBES`` samples)."""
    for prober in probers.values():
        prober.start()
    wait_until(lambda: not until(), 3600, "the measured phase to end", interval=0.05)
    for prober in probers.values():
        prober.stop.set()
        prober.join()
    subject, baseline = percentiles(probers["explorer"].samples), percentiles(probers["node"].samples)
    return {"explorer_tip_height": {**subject, "failed": probers["explorer"].failures},
            "node_status": {**baseline, "failed": probers["node"].failures},
            "p50_ratio": ratio(subject["p50_ms"], baseline["p50_ms"]),
            "p99_ratio": ratio(subject["p99_ms"], baseline["p99_ms"])}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def bench(args, workdir: Path, daemons: list[Daemon]) -> dict:
    tracker, tracker_endpoint = start_tracker("tracker", workdir)
    daemons.append(tracker)
    names = [f"node{i}" for i in range(args.nodes)]
    miners = {name: start_miner(name, tracker_endpoint, workdir / name, workdir) for name in names}
    daemons.extend(miners.values())
    total = int(args.rate * args.seconds)
    started = time.perf_counter()
    split_block, txs = presign(REGTEST, total)  # while the daemons start
    presign_s = time.perf_counter() - started
    apis = [node_endpoints(miners[name], workdir / name)["api"] for name in names]
    explorer = Daemon("explorer", [*CLI, "explorer", *[a for api in apis for a in ("--node", api)],
                                   "--bind", "127.0.0.1:0"], workdir)
    daemons.append(explorer)
    url = explorer.wait_for_log(r"explorer listening on http://(\S+):(\d+)")
    base = (url.group(1), int(url.group(2)))
    clients = [NodeClient(api, timeout_s=CLIENT_TIMEOUT_S) for api in apis]
    http_conn = http.client.HTTPConnection(*base, timeout=CLIENT_TIMEOUT_S)
    stream = StreamReader(base)
    try:
        wait_until(lambda: all(c.request("status")["peers"] == args.nodes - 1 for c in clients), 30,
                   "a full mesh", interval=0.1)
        reply = clients[0].request("submit_block", block=split_block.raw)
        if not reply["accepted"]:
            raise RuntimeError(f"split block refused: {reply.get('reason')}")
        wait_until(lambda: all(c.request("get_tip")["height"] == 1 for c in clients), 30, "the split block everywhere",
                   interval=0.05)

        def explorer_at_height_1() -> bool:
            http_conn.request("GET", "/api/blocks/tip/height")
            reply = http_conn.getresponse()
            return reply.read() == b"1" and reply.status == 200

        wait_until(explorer_at_height_1, 30, "the explorer at height 1", interval=0.05)
        stream.start()

        def probers(client: NodeClient) -> dict[str, Prober]:
            return {"explorer": Prober(explorer_tip(base), args.probe_interval),
                    "node": Prober(node_status(client), args.probe_interval)}

        idle_probers = probers(clients[0])
        idle = measure(idle_probers, lambda: len(idle_probers["explorer"].samples) < IDLE_PROBES)
        pusher = Pusher(apis, [wire.encode("push_tx", tx=tx.raw) for tx in txs], args.rate)
        frames_before = explorer_metric(base, "zcoin_explorer_gossip_messages_total", 'topic="tx"')
        cpu_before, wall_before = sum(cpu_times(explorer.proc.pid)), time.monotonic()
        pusher.start()
        loaded = measure(probers(NodeClient(apis[0], timeout_s=CLIENT_TIMEOUT_S)), pusher.is_alive)
        cpu_s, wall_s = sum(cpu_times(explorer.proc.pid)) - cpu_before, time.monotonic() - wall_before
        frames = explorer_metric(base, "zcoin_explorer_gossip_messages_total", 'topic="tx"') - frames_before
        mempools = [c.request("status")["mempool"] for c in clients]
    finally:
        stream.close()
        http_conn.close()
        for client in clients:
            client.close()
        stop_all(daemons)

    subject, baseline = loaded["explorer_tip_height"], loaded["node_status"]
    return {
        "nodes": args.nodes, "rate_per_s": args.rate, "seconds": args.seconds, "sent": total,
        "replied": pusher.replied, "accepted": pusher.accepted,
        "achieved_rate_per_s": round(total / pusher.push_seconds, 1) if pusher.push_seconds else None,
        "presign_seconds": round(presign_s, 2), "mempool_sizes_after": mempools,
        "p50_ms": subject["p50_ms"], "p99_ms": subject["p99_ms"],
        "baseline_p50_ms": baseline["p50_ms"], "baseline_p99_ms": baseline["p99_ms"],
        "p50_ratio": loaded["p50_ratio"], "p99_ratio": loaded["p99_ratio"],
        "goal_p99_ms": GOAL_P99_MS, "goal_met": subject["p99_ms"] is not None and subject["p99_ms"] < GOAL_P99_MS,
        "under_load": loaded, "idle": idle,
        "explorer_gossip_tx_frames": int(frames),
        "explorer_cpu_cores_busy": round(cpu_s / wall_s, 3),
        "explorer_cpu_us_per_gossip_frame": round(cpu_s * 1e6 / frames, 1) if frames else None,
        "stream_tx_events": stream.tx_events,
        "stream_tx_events_per_s": round(stream.tx_events / wall_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4, help="non-mining regtest nodes, all watched by the explorer")
    parser.add_argument("--rate", type=float, default=1000.0, help="transactions pushed per second, in all")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of pushing")
    parser.add_argument("--probe-interval", type=float, default=0.01, help="seconds between pairs of probes")
    parser.add_argument("--keep", metavar="DIR", help="keep logs and data directories in DIR")
    args = parser.parse_args(argv)
    if args.nodes < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--nodes, --rate and --seconds must be positive")
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-explorer-"))
    workdir.mkdir(parents=True, exist_ok=True)
    daemons: list[Daemon] = []
    started = time.monotonic()
    result = {"machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in os.getloadavg()]}}
    try:
        result.update(bench(args, workdir, daemons))
    finally:
        stop_all(daemons)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
