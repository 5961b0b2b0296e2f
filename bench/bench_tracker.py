"""Tracker benchmark: join handshakes per second and LIST latency, next to raw pyzmq.

Run: ``.venv/bin/python bench/bench_tracker.py [--members 200] [--samples 2000]``.
Prints one JSON object.

* ``joins_per_second``: JOIN→LIST→ACK→WELCOME handshakes per second for ``--members``
  simulated members joining one after another over a REQ socket (the LIST reply
  grows as they join, as in a real cluster).
* ``list_latency_p50_ms`` / ``p99``: GET_LIST round trips once all members joined.
* The baseline, measured in the same run, is a bare REQ/REP echo server in a thread
  that answers each request with a precomputed msgpack frame of exactly the size the
  tracker answered (no decoding, no checks, no state).  ``*_ratio`` = tracker / baseline
  for latencies and tracker / baseline for rates (1.0 = as fast as raw pyzmq).

Tracker and baseline server both run in a thread of this process, so both share the
GIL with the client in the same way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import zmq

from zcoin import wire
from zcoin.tracker.server import TrackerServer


def percentile(samples: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``samples`` by nearest rank."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def request(sock: zmq.Socket, frame: bytes) -> bytes:
    sock.send(frame)
    if not sock.poll(5000):
        raise RuntimeError("no reply within 5 s")
    return sock.recv()


def run_tracker_pass(ctx: zmq.Context, members: int, samples: int) -> dict:
    """Join ``members`` nodes, then time GET_LIST; return timings and the exchanged frames."""
    server = TrackerServer("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", lease_s=3600.0, ack_timeout_s=3600.0,
                           context=ctx).start()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    try:
        exchanges: list[tuple[bytes, int]] = []  # (request, reply size) in order, for the baseline
        started = time.perf_counter()
        for i in range(members):
            node = f"bench-{i:04d}"
            join = wire.encode("join", node=node, gossip=f"tcp://127.0.0.1:{20000 + i}",
                               api=f"tcp://127.0.0.1:{30000 + i}")
            listing = request(sock, join)
            token = wire.decode(listing)["token"]
            ack = wire.encode("ack", node=node, token=token)
            welcome = request(sock, ack)
            if wire.decode(welcome).type != "welcome":
                raise RuntimeError("join failed")
            exchanges += [(join, len(listing)), (ack, len(welcome))]
        join_elapsed = time.perf_counter() - started

        get_list = wire.encode("get_list")
        reply = request(sock, get_list)
        if len(wire.decode(reply)["members"]) != members:
            raise RuntimeError("not every member is listed")
        latencies = []
        for _ in range(samples):
            t0 = time.perf_counter()
            request(sock, get_list)
            latencies.append(time.perf_counter() - t0)
        return {"join_elapsed": join_elapsed, "latencies": latencies, "exchanges": exchanges,
                "get_list": get_list, "list_reply_bytes": len(reply)}
    finally:
        sock.close(linger=0)
        server.stop()


def sized_msgpack(size: int) -> bytes:
    """A msgpack frame (a bin object) of exactly ``size`` bytes."""
    for header in (2, 3, 5):  # bin8, bin16, bin32 header sizes
        frame = wire.msgpack.packb(b"\x00" * max(0, size - header), use_bin_type=True)
        if len(frame) == size:
            return frame
    return wire.msgpack.packb(b"\x00" * max(0, size - 2), use_bin_type=True)


def run_baseline_pass(ctx: zmq.Context, exchanges: list[tuple[bytes, int]], get_list: bytes,
                      list_reply_bytes: int, samples: int) -> dict:
    """The same request sequence against a bare REP that answers precomputed same-size frames."""
    replies = [sized_msgpack(size) for _, size in exchanges] + [sized_msgpack(list_reply_bytes)] * (samples + 1)
    ready, endpoint = threading.Event(), []

    def serve() -> None:
        rep = ctx.socket(zmq.REP)
        rep.bind("tcp://127.0.0.1:*")
        endpoint.append(rep.getsockopt(zmq.LAST_ENDPOINT).decode())
        ready.set()
        try:
            for reply in replies:
                rep.recv()
                rep.send(reply)
        finally:
            rep.close(linger=1000)  # linger 0 could discard the last reply before it is sent

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ready.wait(5)
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint[0])
    try:
        started = time.perf_counter()
        for frame, _ in exchanges:
            request(sock, frame)
        join_elapsed = time.perf_counter() - started
        request(sock, get_list)
        latencies = []
        for _ in range(samples):
            t0 = time.perf_counter()
            request(sock, get_list)
            latencies.append(time.perf_counter() - t0)
    finally:
        sock.close(linger=0)
        thread.join(5)
    return {"join_elapsed": join_elapsed, "latencies": latencies}


def main() -> None:
    """Run the tracker and the baseline ``--rounds`` times each and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--samples", type=int, default=2000, help="GET_LIST round trips timed per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each; the median is reported")
    args = parser.parse_args()

    from loguru import logger
    logger.remove()  # the tracker's log lines would only disturb the timing

    ctx = zmq.Context()
    joins, base_joins, latencies, base_latencies = [], [], [], []
    list_reply_bytes = 0
    try:
        for _ in range(args.rounds):
            tracker = run_tracker_pass(ctx, args.members, args.samples)
            baseline = run_baseline_pass(ctx, tracker["exchanges"], tracker["get_list"],
                                         tracker["list_reply_bytes"], args.samples)
            joins.append(args.members / tracker["join_elapsed"])
            base_joins.append(args.members / baseline["join_elapsed"])
            latencies += tracker["latencies"]
            base_latencies += baseline["latencies"]
            list_reply_bytes = tracker["list_reply_bytes"]
    finally:
        ctx.term()

    joins_per_s = statistics.median(joins)
    base_joins_per_s = statistics.median(base_joins)
    p50, p99 = percentile(latencies, 0.50) * 1e3, percentile(latencies, 0.99) * 1e3
    b50, b99 = percentile(base_latencies, 0.50) * 1e3, percentile(base_latencies, 0.99) * 1e3
    print(json.dumps({
        "members": args.members,
        "rounds": args.rounds,
        "list_reply_bytes": list_reply_bytes,
        "joins_per_second": round(joins_per_s, 1),
        "baseline_joins_per_second": round(base_joins_per_s, 1),
        "joins_ratio": round(joins_per_s / base_joins_per_s, 3),
        "list_latency_p50_ms": round(p50, 4),
        "list_latency_p99_ms": round(p99, 4),
        "baseline_latency_p50_ms": round(b50, 4),
        "baseline_latency_p99_ms": round(b99, 4),
        "list_p50_ratio": round(p50 / b50, 3),
        "list_p99_ratio": round(p99 / b99, 3),
    }))


if __name__ == "__main__":
    main()
