"""Helpers for ``bench_node.py``: zcoin daemons as real processes, and the raw pyzmq baseline relays.

Node benchmarks run every miner as its own process started through the CLI
(``python -m zcoin.cli miner ...``), as a user would, because in-process nodes
share one GIL and would measure the interpreter lock rather than the node.

The baseline of the propagation benchmark is the same topology in bare pyzmq,
also one process per hop, started from this file:

- ``python bench/nodebench_util.py head``: a ROUTER that takes a frame, publishes
  it unchanged on a PUB under topic ``tx`` (one frame, as a node's gossip) and answers with a fixed frame (a node
  accepts, publishes, then answers, in that order);
- ``python bench/nodebench_util.py relay --upstream ENDPOINT``: a SUB on the head's
  PUB that republishes every message on a PUB of its own (a node relays what it
  accepts), so that an observer watches it exactly as it watches a node.

Both print one JSON line with their endpoints, then serve until SIGTERM.  No
decoding, no checks, no state: what is left is ZeroMQ and the Python loop.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import itertools
import time
from collections.abc import Iterable
from pathlib import Path

import zmq

REPO = Path(__file__).resolve().parents[1]
TESTS_DIR = REPO / "tests"
if str(TESTS_DIR) not in sys.path:  # the tests' support package: one wait_until for tests and benchmarks
    sys.path.insert(0, str(TESTS_DIR))

from support.waiting import wait_until  # noqa: E402
from zcoin.wire import MAX_BLOCKS_PER_REQUEST  # noqa: E402

CLI = [sys.executable, "-m", "zcoin.cli"]
SYNC_BATCH = MAX_BLOCKS_PER_REQUEST  # blocks a syncing node connects per SQL transaction: one ``blocks`` reply
HWM = 100_000  # the node's GOSSIP_HWM, so that neither side drops at the default 1000
POLL_S = 0.01
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds a live process has used so far (Linux ``/proc``, all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def percentiles(values_s: list[float], missing: int = 0) -> dict:
    """p50/p90/p99/max (nearest rank) in milliseconds; a missing sample counts as infinitely late."""
    count = len(values_s) + missing
    if not count:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "count": 0, "missing": 0}
    ordered = sorted(values_s) + [float("inf")] * missing

    def rank(q: float) -> float | None:
        value = ordered[min(count - 1, int(q * count))]
        return None if value == float("inf") else round(value * 1000, 3)

    return {"p50_ms": rank(0.50), "p90_ms": rank(0.90), "p99_ms": rank(0.99),
            "max_ms": rank(1.0), "count": len(values_s), "missing": missing}


class Daemon:
    """One child process with its output in a log file; stopped with SIGTERM (SIGKILL as a last resort)."""

    def __init__(self, name: str, args: list[str], log_dir: Path, *, capture_stdout: bool = False,
                 is_tracker: bool = False) -> None:
        self.name = name
        self.is_tracker = is_tracker
        self.args = args
        self.log_path = log_dir / f"{name}.log"
        log = self.log_path.open("w")
        self.started_at = time.time()  # wall clock: compared with the child's log timestamps
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE if capture_stdout else log, stderr=log,
                                     stdin=subprocess.DEVNULL, cwd=REPO,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"}, text=capture_stdout)
        log.close()

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal_stop(self) -> None:
        """SIGTERM without waiting (see :func:`stop_all`)."""
        if self.running():
            self.proc.send_signal(signal.SIGTERM)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, timeout_s: float = START_TIMEOUT_S) -> re.Match:
        regex = re.compile(pattern)

        def found():
            if not self.running():
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log()[-2000:]}")
            return regex.search(self.log())

        return wait_until(found, timeout_s, f"{self.name} to log {pattern!r}", POLL_S)

    def stop(self) -> None:
        self.signal_stop()
        if self.proc.poll() is None:
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def stop_all(daemons: list[Daemon]) -> None:
    """Stop every daemon, the trackers last (so that the nodes' LEAVE is answered), and empty the list."""
    nodes = [d for d in daemons if not d.is_tracker]
    trackers = [d for d in daemons if d.is_tracker]
    for group in (nodes, trackers):
        for daemon in group:
            daemon.signal_stop()  # all at once: they shut down in parallel
        for daemon in group:
            daemon.stop()
    daemons.clear()


def start_tracker(name: str, log_dir: Path) -> tuple[Daemon, str]:
    """A ``zcoin tracker`` on ephemeral loopback ports; returns it and its request endpoint."""
    daemon = Daemon(name, [*CLI, "tracker", "--bind", "tcp://127.0.0.1:*", "--events", "tcp://127.0.0.1:*"],
                    log_dir, is_tracker=True)
    match = daemon.wait_for_log(r"tracker listening api=(tcp://127\.0\.0\.1:\d+)")
    return daemon, match.group(1)


def start_miner(name: str, tracker: str, data_dir: Path, log_dir: Path, *, network: str = "regtest",
                log_level: str = "INFO", log_json: bool = False, profile: Path | None = None) -> Daemon:
    """A non-mining ``zcoin miner`` on ephemeral loopback ports (endpoints: :func:`node_endpoints`).

    With ``profile``, the process runs under cProfile and leaves its statistics in that file when it stops.
    """
    python = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "zcoin.cli"] if profile else CLI
    args = [*python, "--log-level", log_level, *(["--log-json"] if log_json else []),
            "miner", "--name", name, "--network", network, "--no-mine", "--tracker", tracker,
            "--data-dir", str(data_dir), "--api", "tcp://127.0.0.1:*", "--gossip", "tcp://127.0.0.1:*"]
    return Daemon(name, args, log_dir)


def node_endpoints(daemon: Daemon, data_dir: Path, timeout_s: float = START_TIMEOUT_S) -> dict:
    """The ``node.json`` a miner writes once its sockets are bound."""
    path = data_dir / "node.json"

    def read():
        if not daemon.running():
            raise RuntimeError(f"{daemon.name} exited with {daemon.proc.returncode}: {daemon.log()[-2000:]}")
        return json.loads(path.read_text()) if path.exists() else None

    return wait_until(read, timeout_s, f"{daemon.name}'s node.json", POLL_S)


def start_pubsub(kind: str, log_dir: Path, name: str, upstream: str | None = None) -> tuple[Daemon, dict]:
    """One baseline hop (``head`` or ``relay``) as a process; returns it and its endpoints."""
    args = [sys.executable, str(Path(__file__).resolve()), kind]
    if upstream:
        args += ["--upstream", upstream]
    daemon = Daemon(name, args, log_dir, capture_stdout=True)
    line = daemon.proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{name} exited before printing its endpoints: {daemon.log()[-2000:]}")
    return daemon, json.loads(line)


def log_records(path: Path) -> list[dict]:
    """The records of a ``--log-json`` log file (lines that are not JSON are skipped)."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


# --- the baseline hops ---------------------------------------------------------------


def _socket(context: zmq.Context, kind: int) -> zmq.Socket:
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    return sock


def serve_pubsub(kind: str, upstream: str | None) -> None:
    """Run one baseline hop until SIGTERM (see the module docstring)."""
    from zcoin import wire
    from zcoin.sockets import Envelope

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    context = zmq.Context()
    pub = _socket(context, zmq.PUB)
    pub.bind("tcp://127.0.0.1:*")
    endpoints = {"gossip": pub.getsockopt_string(zmq.LAST_ENDPOINT)}
    if kind == "head":
        inbox = _socket(context, zmq.ROUTER)
        inbox.bind("tcp://127.0.0.1:*")
        endpoints["api"] = inbox.getsockopt_string(zmq.LAST_ENDPOINT)
        reply = wire.encode("tx_result", accepted=True, txid="00" * 32)  # a node's answer, byte for byte in size
    else:
        inbox = _socket(context, zmq.SUB)
        inbox.setsockopt(zmq.SUBSCRIBE, b"tx")
        inbox.connect(upstream)
    print(json.dumps(endpoints), flush=True)
    poller = zmq.Poller()
    poller.register(inbox, zmq.POLLIN)
    while not stopping:
        if not poller.poll(100):
            continue
        while True:  # drain every ready message per wake-up, like the node
            try:
                frames = inbox.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if kind == "head":
                pub.send(Envelope.gossip(wire.TOPIC_TX, frames[-1]))  # framed as a node frames gossip
                inbox.send_multipart([frames[0], reply])
            else:
                pub.send_multipart(frames)
    pub.close()
    inbox.close()
    context.term()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A raw pyzmq hop of bench_node's propagation baseline.")
    parser.add_argument("kind", choices=["head", "relay"])
    parser.add_argument("--upstream", help="the head's PUB endpoint (relay only)")
    args = parser.parse_args(argv)
    if args.kind == "relay" and not args.upstream:
        parser.error("relay needs --upstream")
    serve_pubsub(args.kind, args.upstream)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())


def connect_as_sync(chain, blocks: Iterable, now: int) -> None:
    """Connect ``blocks`` as a syncing node does: ``Chain.add_block`` each, ``SYNC_BATCH`` of them
    (one reply's worth) to an SQL transaction (``Chain.batch``)."""
    remaining = iter(blocks)
    while batch := list(itertools.islice(remaining, SYNC_BATCH)):
        with chain.batch(batch):
            for block in batch:
                chain.add_block(block, now)
