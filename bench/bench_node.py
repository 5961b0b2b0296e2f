#!/usr/bin/env python3
"""Benchmark the miner node over the network, and print one JSON object.

Every node is a real process started through ``python -m zcoin.cli miner
--network regtest --no-mine``, joined through a real ``zcoin tracker`` process,
on loopback with ephemeral ports; endpoints are read from ``<data-dir>/node.json``.
(In-process nodes would share one GIL and measure the lock, not the node.)

- ``propagation``: four nodes A-D.  The funds of some development accounts are
  split into many outputs by a block submitted to A (so the load spends
  confirmed coins, the usual case), and one transaction per output is signed
  before anything is measured.  They are pushed to A at ``--rate`` per second
  over a DEALER (pipelined, pre-encoded frames).  A SUB on every node's gossip
  PUB (topics ``tx`` and ``rtx``) times each transaction's arrival: a node
  announces exactly what its mempool accepts (under ``tx`` what a client gave it,
  under ``rtx`` what it took from a peer), so its ``gossip_tx`` of X is X's
  arrival there.  Nodes relay as a cluster does: A announces X to B, C and D,
  which do not send it on to each other (a full mesh; see ``zcoin/relay.py``).  The figure is
  the latency from the push on A to the announcement by the *last* of B, C, D.
  Baseline, in the same run and at the same rate: the same topology in bare
  pyzmq, one process per hop (``nodebench_util.py``): a ROUTER "A" that publishes
  each frame it gets and answers, and three SUB->PUB relays, carrying the very
  ``gossip_tx`` frames A would publish, watched by the same observer.  Subject
  and baseline alternate in ``--rounds`` segments (order swapped every round) so
  that other load on the machine weighs on both alike.  Each side also reports
  the CPU time per transaction of every hop's process (``/proc``, all threads):
  latency only stays low while the four processes together need fewer cores
  than the machine has free, so this figure explains the percentiles.  Next to it,
  measured in this process: the raw BIP340 verify of the same signatures
  (``verify_ms_per_signature``, key parsed in advance), with ``cpu_ratio_to_verify``
  (the median node's ``cpu_ms_per_tx`` over it) and ``cpu_ratio_to_verify_plus_bare_hop``
  (over the verify plus a bare relay hop's own CPU per transaction).
- ``sync``: ``--blocks`` regtest blocks of ``--txs-per-block`` transfers each
  are built once and submitted to node A.  A fresh node B is started; its own
  log (``--log-json``) times when it connected to A and when it connected the
  last block, and blocks/s is taken from "connected" (also reported from the
  process start).  Baseline, in the same run, before and after every sync: the
  same raw blocks parsed and connected with ``Chain.add_block`` (16 to an SQL
  transaction, as the syncing node) into a fresh ``ChainStore`` (the node's
  settings) in the same file system - the node's work without the network.

Usage::

    .venv/bin/python bench/bench_node.py [--rate 1000] [--seconds 8] [--rounds 4]
                                         [--blocks 300] [--txs-per-block 4] [--sync-rounds 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import coincurve
import msgpack
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench_chain import build_blocks, presign  # noqa: E402  (bench/ is this script's directory)
from nodebench_util import (HWM, Daemon, connect_as_sync, cpu_times, log_records, node_endpoints,  # noqa: E402
                            percentiles, start_miner, start_pubsub, start_tracker, stop_all, wait_until)

from zcoin import wire  # noqa: E402
from zcoin.chain import Chain  # noqa: E402
from zcoin.client import NodeClient  # noqa: E402
from zcoin.sockets import Envelope  # noqa: E402
from zcoin.consensus.params import REGTEST, ChainParams  # noqa: E402
from zcoin.consensus.primitives import Block, Transaction, sighash  # noqa: E402
from zcoin.storage import ChainStore  # noqa: E402

PROPAGATION_GOAL_P99_MS = 50.0
SYNC_GOAL_RATIO = 0.7
FEE = 200
WARMUP_TXS = 50  # pushed first, slowly, until every observer sees them (subscriptions are up)
SETTLE_S = 0.5  # idle time between segments (the nodes finish the duplicates of the last relays)
NODE_NAMES = ("a", "b", "c", "d")
CLIENT_TIMEOUT_S = 30.0


# --- one measured segment ---------------------------------------------------------------


def _socket(context: zmq.Context, kind: int) -> zmq.Socket:
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    return sock


class Target:
    """What a segment pushes at and watches: a DEALER to the head's api, a SUB on each hop's PUB."""

    def __init__(self, context: zmq.Context, label: str, api: str, gossips: dict[str, str],
                 pids: dict[str, int]) -> None:
        self.label = label
        self.pids = pids  # each hop's process, for its CPU time
        self.push = _socket(context, zmq.DEALER)
        self.push.connect(api)
        self.subs: dict[zmq.Socket, str] = {}
        for name, endpoint in gossips.items():
            sub = _socket(context, zmq.SUB)
            for topic in (wire.TOPIC_TX, wire.TOPIC_RELAYED_TX):  # first hand, and what a node took from a peer
                sub.setsockopt(zmq.SUBSCRIBE, topic)
            sub.connect(endpoint)
            self.subs[sub] = name
        self.head = next(iter(gossips))
        self.others = list(gossips)[1:]

    def close(self) -> None:
        self.push.close()
        for sub in self.subs:
            sub.close()


def run_segment(target: Target, frames: list[bytes], raws: list[bytes], rate: float, drain_timeout_s: float) -> dict:
    """Push ``frames`` at ``rate``/s and time when each hop announces each transaction.

    Send times follow a fixed schedule (transaction i at start + i/rate); the loop
    sleeps in ``poll`` between sends (no busy wait: the nodes need the cores).
    Every received message is stamped when it is read and matched by its
    transaction bytes; reading is cheap next to what the hops do.
    """
    index = {raw: i for i, raw in enumerate(raws)}
    n = len(frames)
    sent = [0.0] * n
    replies: list[float] = []
    reply_frames: list[bytes] = []
    arrivals = {name: {} for name in target.subs.values()}
    poller = zmq.Poller()
    poller.register(target.push, zmq.POLLIN)
    for sub in target.subs:
        poller.register(sub, zmq.POLLIN)
    watched = len(arrivals)
    complete = 0  # transactions seen by every hop
    seen_by = [0] * n
    cpu_before = {name: cpu_times(pid) for name, pid in target.pids.items()}
    observer_before = time.process_time()
    start = time.monotonic()
    i = 0
    while True:
        now = time.monotonic()
        due = n if rate <= 0 else min(n, int((now - start) * rate) + 1)
        while i < due:
            target.push.send(frames[i])
            sent[i] = time.monotonic()
            i += 1
        if i >= n and (complete == n and len(replies) == n or now > sent[-1] + drain_timeout_s):
            break
        wait_ms = 10 if i >= n else max(0, math.ceil((start + i / rate - time.monotonic()) * 1000))
        for sock, _ in poller.poll(wait_ms):
            while True:
                try:
                    msg = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                stamp = time.monotonic()
                if sock is target.push:
                    replies.append(stamp)
                    reply_frames.append(msg[-1])
                    continue
                body = msgpack.unpackb(Envelope.gossip_parts(msg)[1], raw=False)
                seen = arrivals[target.subs[sock]]
                for raw in body.get("txs") or [body.get("tx")]:  # one transaction, or a batch of them
                    k = index.get(raw)
                    if k is None or k in seen:
                        continue  # a warm-up or earlier transaction, or a repeat
                    seen[k] = stamp
                    seen_by[k] += 1
                    if seen_by[k] == watched:
                        complete += 1
    time.sleep(SETTLE_S)  # the hops finish what follows the last announcement (duplicates), on the bill
    cpu = {name: tuple(after - before for after, before in zip(cpu_times(pid), cpu_before[name]))
           for name, pid in target.pids.items()}  # (user, system)
    observer_cpu = time.process_time() - observer_before
    wall = time.monotonic() - start
    accepted = sum(1 for f in reply_frames if wire.decode(f).get("accepted"))
    head, others = arrivals[target.head], [arrivals[name] for name in target.others]
    to_head, to_first, to_last, to_reply = [], [], [], []
    missing_last = 0
    for k in range(n):
        if k in head:
            to_head.append(head[k] - sent[k])
        times = [seen[k] for seen in others if k in seen]
        if times:
            to_first.append(min(times) - sent[k])
        if len(times) == len(others):
            to_last.append(max(times) - sent[k])
        else:
            missing_last += 1
    to_reply = [t - s for t, s in zip(replies, sent)]
    return {"sent": n, "replied": len(replies), "accepted": accepted,
            "push_seconds": sent[-1] - sent[0] if n > 1 else 0.0,
            "to_head": to_head, "to_first": to_first, "to_last": to_last, "to_reply": to_reply,
            "missing_head": n - len(to_head), "missing_last": missing_last, "cpu_seconds": cpu,
            "observer_cpu_seconds": observer_cpu, "wall_seconds": wall}


def summarize(segments: list[dict]) -> dict:
    def cat(key: str) -> list[float]:
        return [x for s in segments for x in s[key]]

    sent = sum(s["sent"] for s in segments)
    push_s = sum(s["push_seconds"] for s in segments)
    user = {name: sum(s["cpu_seconds"][name][0] for s in segments) for name in segments[0]["cpu_seconds"]}
    system = {name: sum(s["cpu_seconds"][name][1] for s in segments) for name in segments[0]["cpu_seconds"]}
    return {
        "sent": sent,
        "replied": sum(s["replied"] for s in segments),
        "accepted_by_head": sum(s["accepted"] for s in segments),
        "achieved_rate_per_s": round(sent / push_s, 1) if push_s else None,
        "push_to_head_announce": percentiles(cat("to_head"), sum(s["missing_head"] for s in segments)),
        "push_to_first_other": percentiles(cat("to_first"), sent - len(cat("to_first"))),
        "push_to_last_other": percentiles(cat("to_last"), sum(s["missing_last"] for s in segments)),
        "push_to_reply": percentiles(cat("to_reply"), sent - len(cat("to_reply"))),
        # CPU per transaction of each hop's process, and all of them as cores busy while pushing
        # (the cluster has os.cpu_count() cores; near it, queues and latency grow).
        "cpu_ms_per_tx": {name: round((user[name] + system[name]) * 1000 / sent, 3) for name in user},
        "cpu_system_ms_per_tx": {name: round(system[name] * 1000 / sent, 3) for name in user},
        "cpu_cores_busy": round((sum(user.values()) + sum(system.values()))
                                / sum(s["wall_seconds"] for s in segments), 2),
        "observer_cpu_ms_per_tx": round(sum(s["observer_cpu_seconds"] for s in segments) * 1000 / sent, 3),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


# --- propagation -------------------------------------------------------------------------


def bench_propagation(args, workdir: Path, daemons: list[Daemon]) -> dict:
    params = REGTEST
    per_round = max(1, round(args.rate * args.seconds / args.rounds))
    total = WARMUP_TXS + per_round * args.rounds
    tracker, tracker_endpoint = start_tracker("prop-tracker", workdir)
    daemons.append(tracker)
    nodes = {}
    for name in NODE_NAMES:
        data_dir = workdir / f"prop-{name}"
        profile = Path(args.profile) / f"prop-{name}.prof" if args.profile else None
        nodes[name] = (start_miner(f"prop-{name}", tracker_endpoint, data_dir, workdir,
                                   log_level=args.node_log_level, profile=profile), data_dir)
        daemons.append(nodes[name][0])
    head, head_endpoints = start_pubsub("head", workdir, "raw-a")
    daemons.append(head)
    relays, relay_daemons = {}, {}
    for name in NODE_NAMES[1:]:
        relay, endpoints = start_pubsub("relay", workdir, f"raw-{name}", upstream=head_endpoints["gossip"])
        daemons.append(relay)
        relays[name], relay_daemons[name] = endpoints, relay

    started = time.perf_counter()
    split_block, txs = presign(params, total, fee=FEE)  # while the daemons start
    sign_s = time.perf_counter() - started

    endpoints = {name: node_endpoints(daemon, data_dir) for name, (daemon, data_dir) in nodes.items()}
    clients = {name: NodeClient(ep["api"], timeout_s=CLIENT_TIMEOUT_S) for name, ep in endpoints.items()}
    context = zmq.Context.instance()
    subject = Target(context, "zcoin", endpoints["a"]["api"], {n: ep["gossip"] for n, ep in endpoints.items()},
                     {n: daemon.proc.pid for n, (daemon, _) in nodes.items()})
    baseline = Target(context, "raw_pubsub", head_endpoints["api"],
                      {"a": head_endpoints["gossip"], **{n: ep["gossip"] for n, ep in relays.items()}},
                      {"a": head.proc.pid, **{n: daemon.proc.pid for n, daemon in relay_daemons.items()}})
    try:
        wait_until(lambda: all(c.request("status")["peers"] == len(NODE_NAMES) - 1 for c in clients.values()),
                   30, "a full mesh of four nodes", interval=0.1)
        reply = clients["a"].request("submit_block", block=split_block.raw)
        if not reply["accepted"]:
            raise RuntimeError(f"split block refused: {reply.get('reason')}")
        wait_until(lambda: all(c.request("get_tip")["height"] == 1 for c in clients.values()), 30,
                   "the split block on every node", interval=0.05)

        raws = [tx.raw for tx in txs]
        push_frames = [wire.encode("push_tx", tx=raw) for raw in raws]
        gossip_frames = [wire.encode("gossip_tx", seq=i + 1, tx=raw) for i, raw in enumerate(raws)]
        warm = slice(0, WARMUP_TXS)
        for target, frames in ((subject, push_frames), (baseline, gossip_frames)):
            warmup = run_segment(target, frames[warm], raws[warm], 100.0, 30.0)
            if warmup["missing_last"]:
                raise RuntimeError(f"{target.label}: warm-up transactions did not reach every hop")
        results = {"zcoin": [], "raw_pubsub": []}
        order = []
        for r in range(args.rounds):
            part = slice(WARMUP_TXS + r * per_round, WARMUP_TXS + (r + 1) * per_round)
            pairs = [(baseline, gossip_frames), (subject, push_frames)]
            for target, frames in (pairs if r % 2 == 0 else pairs[::-1]):
                results[target.label].append(run_segment(target, frames[part], raws[part], args.rate,
                                                         args.drain_timeout))
                order.append(target.label)
        mempools = {name: c.request("status")["mempool"] for name, c in clients.items()}
    finally:
        subject.close()
        baseline.close()
        for client in clients.values():
            client.close()
        stop_all(daemons)

    zc, raw = summarize(results["zcoin"]), summarize(results["raw_pubsub"])
    last_zc, last_raw = zc["push_to_last_other"], raw["push_to_last_other"]
    rounds = []
    for seg_zc, seg_raw in zip(results["zcoin"], results["raw_pubsub"]):
        a, b = percentiles(seg_zc["to_last"], seg_zc["missing_last"]), \
            percentiles(seg_raw["to_last"], seg_raw["missing_last"])
        rounds.append({"zcoin_p50_ms": a["p50_ms"], "zcoin_p99_ms": a["p99_ms"],
                       "raw_p50_ms": b["p50_ms"], "raw_p99_ms": b["p99_ms"],
                       "p99_ratio": _ratio(a["p99_ms"], b["p99_ms"])})
    return {
        "nodes": len(NODE_NAMES),
        "rate_per_s": args.rate,
        "rounds": args.rounds,
        "transactions_per_round": per_round,
        "tx_bytes": len(txs[0].raw),
        "gossip_frame_bytes": len(gossip_frames[0]),
        "presign_seconds": round(sign_s, 2),
        "segment_order": order,
        "zcoin": zc,
        "raw_pubsub": raw,
        "p50_ms": last_zc["p50_ms"],
        "p99_ms": last_zc["p99_ms"],
        "baseline_p50_ms": last_raw["p50_ms"],
        "baseline_p99_ms": last_raw["p99_ms"],
        "p50_ratio": _ratio(last_zc["p50_ms"], last_raw["p50_ms"]),
        "p99_ratio": _ratio(last_zc["p99_ms"], last_raw["p99_ms"]),
        **cpu_against_verify(zc["cpu_ms_per_tx"], raw["cpu_ms_per_tx"], split_block, txs),
        "goal_p99_ms": PROPAGATION_GOAL_P99_MS,
        "goal_met": last_zc["p99_ms"] is not None and last_zc["p99_ms"] < PROPAGATION_GOAL_P99_MS,
        "per_round": rounds,
        "mempool_sizes_after": mempools,
    }


def cpu_against_verify(node_cpu: dict[str, float], hop_cpu: dict[str, float], split_block: Block,
                       txs: list[Transaction]) -> dict:
    """The median node's CPU per relayed transaction next to the raw BIP340 verify of its signature
    (coincurve, key parsed in advance: the only work a node cannot avoid), timed here in the same run,
    and next to a bare pyzmq hop of the baseline (what receiving and announcing a frame costs)."""
    keys = {tx.txid: coincurve.PublicKeyXOnly(tx.outputs[0].pubkey) for tx in split_block.txs[1:]}
    checks = [(keys[tx.inputs[0].prev.txid], tx.inputs[0].signature, sighash(tx.sighash_digest(), 0)) for tx in txs]
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for key, signature, message in checks:
            key.verify(signature, message)
        best = min(best, (time.process_time() - started) / len(checks))
    verify_ms = best * 1000
    node_ms = statistics.median(node_cpu.values())
    hop_ms = statistics.median(hop_cpu[n] for n in NODE_NAMES[1:])
    return {"verify_ms_per_signature": round(verify_ms, 4), "median_node_cpu_ms_per_tx": round(node_ms, 3),
            "cpu_ratio_to_verify": round(node_ms / verify_ms, 2), "bare_hop_cpu_ms_per_tx": round(hop_ms, 3),
            "cpu_ratio_to_verify_plus_bare_hop": round(node_ms / (verify_ms + hop_ms), 2)}


# --- sync --------------------------------------------------------------------------------


def replay(params: ChainParams, raws: list[bytes], workdir: Path) -> float:
    """Seconds to parse and connect ``raws`` into a fresh store (the node's settings) in ``workdir``."""
    directory = Path(tempfile.mkdtemp(prefix="replay-", dir=workdir))
    try:
        store = ChainStore(directory / "chain.sqlite", params)
        chain = Chain(store, params)
        start = time.perf_counter()
        connect_as_sync(chain, (Block.parse(raw) for raw in raws), int(time.time()))
        elapsed = time.perf_counter() - start
        if chain.height != len(raws):
            raise RuntimeError(f"replay ended at height {chain.height}, not {len(raws)}")
        store.close()
        return elapsed
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def sync_once(args, workdir: Path, tracker_endpoint: str, tip: tuple[int, bytes], label: str,
              daemons: list[Daemon]) -> dict:
    """Start a fresh node, wait until its tip is ``tip``, and read its own log for the timings."""
    height, tip_hash = tip
    data_dir = workdir / label
    profile = Path(args.profile) / f"{label}.prof" if args.profile else None
    daemon = start_miner(label, tracker_endpoint, data_dir, workdir, log_level="INFO", log_json=True,
                         profile=profile)
    daemons.append(daemon)
    spawned = daemon.started_at
    endpoints = node_endpoints(daemon, data_dir, timeout_s=60)
    client = NodeClient(endpoints["api"], timeout_s=CLIENT_TIMEOUT_S)
    try:
        def synced():
            reply = client.request("get_tip")
            return reply["height"] == height and reply["hash"] == tip_hash

        wait_until(synced, args.sync_timeout, f"{label} to reach height {height}", interval=0.02)
        observed_done = time.time()
    finally:
        client.close()
        daemon.stop()
        daemons.remove(daemon)
    records = log_records(daemon.log_path)

    def first(message: str, **extra) -> float | None:
        for record in records:
            if record["message"] == message and all(record.get(k) == v for k, v in extra.items()):
                return record["time"]
        return None

    node_started, connected = first("node started"), first("peer connected")
    headers, done = first("sync progress"), first("synced", height=height)  # its first sync ended
    if connected is None or done is None:
        raise RuntimeError(f"{label}: no 'peer connected' or 'synced' line at height {height} in its log")
    return {
        "seconds_from_spawn": round(done - spawned, 3),
        "seconds_from_connected": round(done - connected, 3),
        "blocks_per_second_from_connected": round(height / (done - connected), 1),
        "blocks_per_second_from_spawn": round(height / (done - spawned), 1),
        "spawn_to_node_started_s": round(node_started - spawned, 3) if node_started else None,
        "node_started_to_connected_s": round(connected - node_started, 3) if node_started else None,
        "connected_to_headers_stored_s": round(headers - connected, 3) if headers else None,
        "headers_stored_to_last_block_s": round(done - headers, 3) if headers else None,
        "poll_lag_s": round(observed_done - done, 3),
    }


def bench_sync(args, workdir: Path, daemons: list[Daemon]) -> dict:
    params = REGTEST
    started = time.perf_counter()
    blocks, _ = build_blocks(params, args.blocks, args.txs_per_block)
    build_s = time.perf_counter() - started
    raws = [b.raw for b in blocks]
    tracker, tracker_endpoint = start_tracker("sync-tracker", workdir)
    daemons.append(tracker)
    source = start_miner("sync-a", tracker_endpoint, workdir / "sync-a", workdir, log_level=args.node_log_level)
    daemons.append(source)
    client = NodeClient(node_endpoints(source, workdir / "sync-a")["api"], timeout_s=CLIENT_TIMEOUT_S)
    try:
        for raw in raws:
            client.send("submit_block", block=raw)  # pipelined: answered in order
        refused = [r for r in (client.recv() for _ in raws) if not r["accepted"]]
        if refused:
            raise RuntimeError(f"{len(refused)} blocks refused by the source node: {refused[0].fields}")
        tip = client.request("get_tip")
        tip = (tip["height"], tip["hash"])
        replays, syncs = [], []
        for r in range(args.sync_rounds):
            replays.append(replay(params, raws, workdir))
            syncs.append(sync_once(args, workdir, tracker_endpoint, tip, f"sync-b{r}", daemons))
        replays.append(replay(params, raws, workdir))
    finally:
        client.close()
        stop_all(daemons)
    replay_bps = [len(raws) / s for s in replays]
    for i, sync in enumerate(syncs):
        around = (replay_bps[i] + replay_bps[i + 1]) / 2  # the replays right before and after this sync
        sync["replay_blocks_per_second"] = round(around, 1)
        sync["ratio"] = round(sync["blocks_per_second_from_connected"] / around, 3)
    network = statistics.median(s["blocks_per_second_from_connected"] for s in syncs)
    from_spawn = statistics.median(s["blocks_per_second_from_spawn"] for s in syncs)
    local = statistics.median(replay_bps)
    ratio = statistics.median(s["ratio"] for s in syncs)
    return {
        "blocks": len(raws),
        "txs_per_block": args.txs_per_block,
        "block_bytes_mean": round(statistics.mean(len(r) for r in raws)),
        "build_seconds": round(build_s, 2),
        "blocks_per_second": network,
        "blocks_per_second_from_spawn": from_spawn,
        "baseline_replay_blocks_per_second": round(local, 1),
        "replays_blocks_per_second": [round(x, 1) for x in replay_bps],
        "ratio": ratio,
        "ratio_from_spawn": round(from_spawn / local, 3),
        "goal_ratio": SYNC_GOAL_RATIO,
        "goal_met": ratio >= SYNC_GOAL_RATIO,
        "runs": syncs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="transactions per second pushed to node A")
    parser.add_argument("--seconds", type=float, default=8.0,
                        help="seconds of pushing to the nodes in all (the baseline gets as much again)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating subject/baseline segments")
    parser.add_argument("--drain-timeout", type=float, default=10.0,
                        help="seconds after a segment's last push before the missing are counted as lost")
    parser.add_argument("--blocks", type=int, default=300, help="blocks the syncing node fetches")
    parser.add_argument("--txs-per-block", type=int, default=4)
    parser.add_argument("--sync-rounds", type=int, default=2, help="fresh nodes synced, one after another")
    parser.add_argument("--sync-timeout", type=float, default=120.0)
    parser.add_argument("--only", choices=["propagation", "sync"], help="run one of the two benchmarks")
    parser.add_argument("--node-log-level", default="INFO", help="log level of the nodes (their logs are files)")
    parser.add_argument("--keep", metavar="DIR", help="keep logs and data directories in DIR")
    parser.add_argument("--profile", metavar="DIR",
                        help="run the measured nodes under cProfile, statistics in DIR/<node>.prof "
                             "(figures are then slower than without)")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.seconds <= 0 or args.rounds < 1 or args.blocks < 1 or args.sync_rounds < 1:
        parser.error("--rate, --seconds, --rounds, --blocks and --sync-rounds must be positive")

    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-node-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    daemons: list[Daemon] = []
    results: dict = {
        "parameters": {"rate_per_s": args.rate, "seconds": args.seconds, "rounds": args.rounds,
                       "blocks": args.blocks, "txs_per_block": args.txs_per_block,
                       "sync_rounds": args.sync_rounds, "node_log_level": args.node_log_level,
                       "network": REGTEST.name},
        "machine": {"cpus": os.cpu_count(), "loadavg_before": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(), "pyzmq": zmq.__version__,
                    "libzmq": zmq.zmq_version()},
    }
    started = time.monotonic()
    try:
        if args.only in (None, "propagation"):
            results["propagation"] = bench_propagation(args, workdir, daemons)
        if args.only in (None, "sync"):
            results["sync"] = bench_sync(args, workdir, daemons)
    finally:
        stop_all(daemons)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    results["seconds"] = round(time.monotonic() - started, 1)
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
