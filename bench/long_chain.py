#!/usr/bin/env python3
"""A long regtest chain: how fast a node restarts on it and syncs it, and what memory it holds.

The chain (``--blocks``, default 100,000) is built once and cached under this
directory, in ``bench/.cache/long_chain-v<FORMAT>-<blocks>/``:

- ``blocks.bin``: every block's encoding, each after its length (4 bytes, little
  endian): enough to rebuild the rest without mining again;
- ``data/chain.sqlite``: a ready node data directory, the blocks connected through
  ``Chain.add_block`` and the store closed cleanly (no write-ahead log left);
- ``meta.json``: the format version, block count, network, genesis and tip hashes
  and the store's ``SCHEMA_VERSION``.

Blocks are cheap: coinbase-only, except every ``TRANSFER_EVERY``-th block, which
carries ``TRANSFERS_PER_BLOCK`` signed one-input two-output transfers of the
development accounts' coins (so the chain also has spends, signatures and a
growing UTXO set); block times step one second from genesis.  A cache of another
format version is deleted, one whose meta does not match is built again, and one
whose store was written by another storage schema gets a new store from
``blocks.bin``.

Then, in one run, with real processes (``python -m zcoin.cli miner --network
regtest --no-mine`` and ``zcoin tracker``, ``nodebench_util``) on ephemeral
loopback ports, and every file in one scratch directory under the cache (the same
file system for the nodes and the replays):

- ``start_to_serving_s``: a node started on a copy of the cached data directory,
  timed from just before the process is spawned until its api has answered a
  ``status`` request (its ephemeral endpoint is read from ``node.json``, polled
  every 10 ms; the request itself then waits on the socket).  The median of
  ``--start-rounds`` starts, alternating with the baseline of the same run: the
  same start on an empty data directory (interpreter, imports, a new store,
  sockets), so ``start_ratio_to_empty`` is what the long chain adds.  The node's own
  log splits the time at its "node started" line, and the store's open and the
  index load are also timed in this process (``open_in_process_s``).
- ``sync_ratio``: a node on an empty data directory syncs the whole chain from one
  peer, a node started on the cached copy; blocks/s are taken from its own JSON log,
  from its "peer connected" line to its "synced" line (its first sync ended, at the last height)
  (as ``bench_node.py``'s sync).  Divided by the baseline: the same raw blocks parsed
  and connected with ``Chain.add_block``, 16 to an SQL transaction as the syncing node
  connects a reply, into a fresh ``ChainStore`` (the node's settings) in this process,
  right before and right after the sync (their mean).
  ``--replay-blocks K`` replays only the first K blocks (the JSON then says so).
- ``rss_mb``: resident memory (``VmRSS`` in ``/proc``) of the synced node, of the node
  started on the cached chain (once serving, and after serving the sync), and of the
  node on an empty data directory (the baseline); peaks (``VmHWM``) beside them.

Usage::

    .venv/bin/python bench/long_chain.py [--blocks 100000] [--start-rounds 3] [--replay-blocks K]
                                         [--cache-dir DIR] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # run from a checkout without installing
sys.path.insert(0, str(BENCH_DIR))  # nodebench_util, when imported from elsewhere

from nodebench_util import (Daemon, connect_as_sync, node_endpoints, start_miner, start_tracker,  # noqa: E402
                            stop_all, wait_until)

from zcoin import storage  # noqa: E402
from zcoin.chain import Chain  # noqa: E402
from zcoin.client import NodeClient  # noqa: E402
from zcoin.consensus.builders import new_template, sign_transaction, solve  # noqa: E402
from zcoin.consensus.params import REGTEST, ChainParams, dev_secret_key  # noqa: E402
from zcoin.consensus.primitives import Block, OutPoint, TxOut  # noqa: E402
from zcoin.storage import ChainStore  # noqa: E402

FORMAT_VERSION = 1  # of the cache: the block recipe below and the files; another version is rebuilt
DEFAULT_BLOCKS = 100_000
DEFAULT_CACHE_DIR = BENCH_DIR / ".cache"
TRANSFER_EVERY = 100  # every 100th block carries transfers; the others only their coinbase
TRANSFERS_PER_BLOCK = 4
FEE = 1_000
START_ROUNDS = 3
START_GOAL_S = 2.0
SYNC_GOAL_RATIO = 0.8
START_TIMEOUT_S = 60.0
CLIENT_TIMEOUT_S = 30.0
SYNC_POLL_S = 0.25  # the figure comes from the node's log; polling only says when to read it
PROGRESS_EVERY = 10_000  # blocks between progress lines on stderr


def _progress(message: str) -> None:
    print(f"long_chain: {message}", file=sys.stderr, flush=True)


# --- the chain and its cache ---------------------------------------------------------------


def generate_blocks(params: ChainParams, blocks: int):
    """Yield ``blocks`` valid regtest blocks on genesis (the recipe of the module docstring)."""
    if params.retarget_interval:
        raise ValueError("the recipe keeps the genesis bits: a network without retargeting only")
    keys = [dev_secret_key(i) for i in range(params.dev_accounts)]
    coins = deque((OutPoint(params.genesis.txs[0].txid, account), params.dev_account_amount, account)
                  for account in range(params.dev_accounts))  # oldest first
    payout = params.dev_pubkey(params.dev_accounts - 1)
    parent = params.genesis.hash
    for height in range(1, blocks + 1):
        txs = []
        if height % TRANSFER_EVERY == 0:
            for _ in range(TRANSFERS_PER_BLOCK):
                outpoint, amount, account = coins.popleft()
                pubkey, half = params.dev_pubkey(account), (amount - FEE) // 2
                tx = sign_transaction([(outpoint, keys[account])],
                                      [TxOut(half, pubkey), TxOut(amount - FEE - half, pubkey)], aux32=bytes(32))
                txs.append(tx)
                coins.extend((OutPoint(tx.txid, i), out.amount, account) for i, out in enumerate(tx.outputs))
        template = new_template(params, parent, height, params.genesis_bits, params.genesis_time + height,
                                payout, txs, FEE * len(txs))
        block = solve(template, max_tries=1 << 16)
        if block is None:
            raise RuntimeError(f"no nonce found for block {height}")
        parent = block.hash
        yield block


def write_blocks(path: Path, raws) -> None:
    with path.open("wb") as out:
        for raw in raws:
            out.write(struct.pack("<I", len(raw)))
            out.write(raw)


def read_blocks(path: Path) -> list[bytes]:
    """The raw blocks of a ``blocks.bin`` file, in height order."""
    data = path.read_bytes()
    raws, offset = [], 0
    while offset < len(data):
        (size,) = struct.unpack_from("<I", data, offset)
        raws.append(data[offset + 4:offset + 4 + size])
        offset += 4 + size
    return raws


def store_blocks(params: ChainParams, blocks, data_dir: Path) -> str:
    """Connect ``blocks`` (an iterable of ``Block``) into a new node data directory; return the tip's hex hash."""
    data_dir.mkdir(parents=True)
    store = ChainStore(data_dir / "chain.sqlite", params)
    try:
        chain = Chain(store, params)
        now = int(time.time())
        for block in blocks:
            chain.add_block(block, now)
            if chain.height % PROGRESS_EVERY == 0:
                _progress(f"stored {chain.height} blocks")
        tip = chain.tip.hash_hex
    finally:
        store.close()
    if Path(f"{data_dir / 'chain.sqlite'}-wal").exists():
        raise RuntimeError("the cached store kept a write-ahead log after a clean close")
    return tip


def _schema_version() -> int | None:
    return getattr(storage, "SCHEMA_VERSION", None)


def cached_chain(params: ChainParams, blocks: int, cache_dir: Path) -> tuple[Path, dict]:
    """The cache entry for ``blocks`` blocks (built or brought up to date first) and what was done to it."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    name = f"long_chain-v{FORMAT_VERSION}-{blocks}"
    for stale in cache_dir.glob("long_chain-v*-*"):  # other format versions can never be read again
        if not stale.name.startswith(f"long_chain-v{FORMAT_VERSION}-"):
            shutil.rmtree(stale, ignore_errors=True)
    entry = cache_dir / name
    expected = {"format": FORMAT_VERSION, "blocks": blocks, "network": params.name,
                "genesis": params.genesis.hash_hex}
    try:
        meta = json.loads((entry / "meta.json").read_text())
    except (OSError, ValueError):
        meta = {}
    same_chain = {k: meta.get(k) for k in expected} == expected and (entry / "blocks.bin").exists()
    if same_chain and (entry / "data" / "chain.sqlite").exists() and meta.get("schema_version") == _schema_version():
        return entry, {"action": "reused", "seconds": 0.0}

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f"{name}.tmp-", dir=cache_dir))  # renamed into place when complete
    try:
        if same_chain:
            action = "store rebuilt from blocks.bin (another storage schema)"
            _progress(f"{action}: {entry}")
            tip = store_blocks(params, (Block.parse(raw) for raw in read_blocks(entry / "blocks.bin")), work / "data")
            shutil.rmtree(entry / "data", ignore_errors=True)
            (work / "data").replace(entry / "data")
        else:
            action = "built"
            _progress(f"building {blocks} blocks into {entry} (once)")
            raws = []

            def kept(source):
                for block in source:
                    raws.append(block.raw)
                    yield block

            tip = store_blocks(params, kept(generate_blocks(params, blocks)), work / "data")
            write_blocks(work / "blocks.bin", raws)
            shutil.rmtree(entry, ignore_errors=True)
            work.replace(entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {**expected, "tip": tip, "schema_version": _schema_version(),
            "built_seconds": round(time.perf_counter() - started, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (entry / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")  # last: without it the entry is rebuilt
    return entry, {"action": action, "seconds": meta["built_seconds"]}


# --- measuring ------------------------------------------------------------------------


def memory_mb(pid: int) -> dict:
    """``VmRSS`` (resident now) and ``VmHWM`` (resident at its peak) of a live process, in MB."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss": fields.get("VmRSS"), "peak": fields.get("VmHWM")}


def _records(path: Path, messages: tuple[str, ...], last: str | None = None) -> dict[str, dict]:
    """The first record of each of ``messages`` in a ``--log-json`` log, and the last one of ``last``.

    Lines are screened as text first: a synced node's log has a line per block.
    """
    wanted = {m: f'"message": "{m}"' for m in messages}
    found: dict[str, dict] = {}
    last_line = None
    with path.open(errors="replace") as log:
        for line in log:
            if last and f'"message": "{last}"' in line:
                last_line = line
                continue
            for message, needle in wanted.items():
                if message not in found and needle in line:
                    found[message] = json.loads(line)
    if last_line is not None:
        found[last] = json.loads(last_line)
    return found


def time_start(label: str, tracker: str, data_dir: Path, workdir: Path, daemons: list[Daemon]) -> tuple[Daemon, dict]:
    """Start a node on ``data_dir`` and time it until its api answers ``status``; it is left running."""
    (data_dir / "node.json").unlink(missing_ok=True)  # a copy's stale endpoints must not be read
    started = time.monotonic()
    daemon = start_miner(label, tracker, data_dir, workdir, log_json=True)
    daemons.append(daemon)
    endpoints = node_endpoints(daemon, data_dir, timeout_s=START_TIMEOUT_S)
    with NodeClient(endpoints["api"], timeout_s=CLIENT_TIMEOUT_S) as client:
        status = client.request("status")
    serving_s = time.monotonic() - started
    memory = memory_mb(daemon.proc.pid)
    daemon.wait_for_log(r'"message": "node started"')
    node_started = _records(daemon.log_path, ("node started",))["node started"]["time"]
    return daemon, {
        "start_to_serving_s": round(serving_s, 3),
        "spawn_to_node_started_s": round(node_started - daemon.started_at, 3),
        "height": status["height"],
        "rss_mb": memory["rss"],
    }


def measure_starts(cached_data: Path, workdir: Path, rounds: int, daemons: list[Daemon]) -> dict:
    """``rounds`` starts on the cached chain's copy, alternating with starts on an empty data directory."""
    tracker, endpoint = start_tracker("lc-start-tracker", workdir)
    daemons.append(tracker)
    cached, empty = [], []
    try:
        for r in range(rounds):
            order = [("cached", cached_data), ("empty", workdir / f"empty-{r}")]
            for kind, data_dir in order if r % 2 == 0 else order[::-1]:
                daemon, run = time_start(f"lc-{kind}-{r}", endpoint, data_dir, workdir, daemons)
                daemon.stop()
                daemons.remove(daemon)
                (cached if kind == "cached" else empty).append(run)
    finally:
        stop_all(daemons)
    return {"cached": cached, "empty": empty}


def open_in_process(params: ChainParams, data_dir: Path) -> dict:
    """Seconds to open the store and load the chain index in this process (what a node does first)."""
    started = time.perf_counter()
    store = ChainStore(data_dir / "chain.sqlite", params)
    opened = time.perf_counter()
    try:
        chain = Chain(store, params)
        loaded = time.perf_counter()
        height = chain.height
    finally:
        store.close()
    return {"store_open_s": round(opened - started, 3), "index_load_s": round(loaded - opened, 3), "height": height}


def replay_seconds(params: ChainParams, raws: list[bytes], workdir: Path) -> float:
    """Seconds to parse and connect ``raws`` into a fresh store (the node's settings) in ``workdir``."""
    directory = Path(tempfile.mkdtemp(prefix="replay-", dir=workdir))
    try:
        store = ChainStore(directory / "chain.sqlite", params)
        try:
            chain = Chain(store, params)
            now = int(time.time())
            started = time.perf_counter()
            connect_as_sync(chain, (Block.parse(raw) for raw in raws), now)
            elapsed = time.perf_counter() - started
            if chain.height != len(raws):
                raise RuntimeError(f"replay ended at height {chain.height}, not {len(raws)}")
        finally:
            store.close()
        return elapsed
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def sync_fresh_node(tracker: str, tip: tuple[int, str], workdir: Path, timeout_s: float,
                    daemons: list[Daemon]) -> dict:
    """A node on an empty data directory syncs to ``tip``; timings from its own log, its memory at the end."""
    height, tip_hex = tip
    tip_hash = bytes.fromhex(tip_hex)[::-1]  # internal byte order, as the api answers
    data_dir = workdir / "synced"
    daemon = start_miner("lc-sync", tracker, data_dir, workdir, log_json=True)
    daemons.append(daemon)
    try:
        endpoints = node_endpoints(daemon, data_dir, timeout_s=START_TIMEOUT_S)
        with NodeClient(endpoints["api"], timeout_s=CLIENT_TIMEOUT_S) as client:
            def synced():
                reply = client.request("get_tip")
                return reply["height"] == height and reply["hash"] == tip_hash

            wait_until(synced, timeout_s, f"the fresh node to reach height {height}", SYNC_POLL_S)
        observed_done = time.time()
        memory = memory_mb(daemon.proc.pid)
    finally:
        daemon.stop()
        daemons.remove(daemon)
    records = _records(daemon.log_path, ("node started", "peer connected", "sync progress", "synced"))
    done = records.get("synced")  # logged once, when its first sync ends (blocks are logged only after that)
    if "peer connected" not in records or done is None or done.get("height") != height:
        raise RuntimeError("the synced node's log lacks its 'peer connected' or 'synced' line at the chain's height")
    connected, done_at = records["peer connected"]["time"], done["time"]
    node_started = records.get("node started", {}).get("time")
    headers = records.get("sync progress", {}).get("time")
    return {
        "blocks_per_second_from_connected": round(height / (done_at - connected), 1),
        "blocks_per_second_from_spawn": round(height / (done_at - daemon.started_at), 1),
        "seconds_from_connected": round(done_at - connected, 2),
        "seconds_from_spawn": round(done_at - daemon.started_at, 2),
        "spawn_to_node_started_s": round(node_started - daemon.started_at, 3) if node_started else None,
        "connected_to_first_headers_s": round(headers - connected, 3) if headers else None,
        "poll_lag_s": round(observed_done - done_at, 3),
        "log_mb": round(daemon.log_path.stat().st_size / 2**20, 1),
        "memory_mb": memory,
    }


def _median(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 3)


def long_chain(blocks: int = DEFAULT_BLOCKS, cache_dir: Path = DEFAULT_CACHE_DIR, *, start_rounds: int = START_ROUNDS,
               replay_blocks: int | None = None, sync_timeout_s: float | None = None,
               keep: Path | None = None) -> dict:
    """Build or reuse the cached chain, then measure start, sync and memory (see the module docstring)."""
    params = REGTEST
    cache_dir = Path(cache_dir)
    began = time.monotonic()
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    entry, cache = cached_chain(params, blocks, cache_dir)
    meta = json.loads((entry / "meta.json").read_text())
    raws = read_blocks(entry / "blocks.bin")
    replayed = raws[:replay_blocks] if replay_blocks else raws
    if keep:
        workdir = Path(keep)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="run-", dir=cache_dir))  # the cache's file system, for all
    daemons: list[Daemon] = []
    try:
        copied = time.perf_counter()
        source_data = workdir / "cached-copy"
        shutil.copytree(entry / "data", source_data)
        copy_s = time.perf_counter() - copied
        in_process = open_in_process(params, source_data)
        _progress(f"timing {start_rounds} starts on the cached chain and on an empty data directory")
        starts = measure_starts(source_data, workdir, start_rounds, daemons)

        _progress("starting the source node and replaying the blocks locally (baseline)")
        tracker, endpoint = start_tracker("lc-sync-tracker", workdir)
        daemons.append(tracker)
        source, source_start = time_start("lc-source", endpoint, source_data, workdir, daemons)
        if source_start["height"] != blocks:
            raise RuntimeError(f"the node on the cached chain is at height {source_start['height']}, not {blocks}")
        source_serving_memory = memory_mb(source.proc.pid)
        replays = [replay_seconds(params, replayed, workdir)]
        _progress(f"a fresh node syncs {blocks} blocks from the source")
        timeout = sync_timeout_s or 120.0 + blocks / 50
        sync = sync_fresh_node(endpoint, (blocks, meta["tip"]), workdir, timeout, daemons)
        source_after_memory = memory_mb(source.proc.pid)
        _progress("replaying the blocks locally again (baseline)")
        replays.append(replay_seconds(params, replayed, workdir))
    finally:
        stop_all(daemons)
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)

    replay_bps = [len(replayed) / s for s in replays]
    baseline_bps = statistics.mean(replay_bps)
    sync_ratio = round(sync["blocks_per_second_from_connected"] / baseline_bps, 3)
    cached_runs, empty_runs = starts["cached"], starts["empty"]
    start_s, empty_s = _median(cached_runs, "start_to_serving_s"), _median(empty_runs, "start_to_serving_s")
    transfer_blocks = blocks // TRANSFER_EVERY
    return {
        "blocks": blocks,
        "start_to_serving_s": start_s,
        "sync_ratio": sync_ratio,
        "rss_mb": {
            "synced_node": sync["memory_mb"]["rss"],
            "cached_chain_node": source_serving_memory["rss"],
            "cached_chain_node_after_serving_sync": source_after_memory["rss"],
            "empty_node": _median(empty_runs, "rss_mb"),
            "synced_node_peak": sync["memory_mb"]["peak"],
            "cached_chain_node_peak": source_after_memory["peak"],
        },
        "goals": {"start_to_serving_s": START_GOAL_S, "sync_ratio": SYNC_GOAL_RATIO,
                  "start_met": start_s < START_GOAL_S, "sync_met": sync_ratio >= SYNC_GOAL_RATIO},
        "start": {
            "rounds": len(cached_runs),
            "baseline_empty_start_to_serving_s": empty_s,
            "start_ratio_to_empty": round(start_s / empty_s, 2),
            "cached_spawn_to_node_started_s": _median(cached_runs, "spawn_to_node_started_s"),
            "empty_spawn_to_node_started_s": _median(empty_runs, "spawn_to_node_started_s"),
            "source_start_to_serving_s": source_start["start_to_serving_s"],
            "open_in_process_s": in_process,
            "cached_runs": cached_runs,
            "empty_runs": empty_runs,
        },
        "sync": {
            "blocks_per_second": sync["blocks_per_second_from_connected"],
            "baseline_replay_blocks_per_second": round(baseline_bps, 1),
            "replays_blocks_per_second": [round(x, 1) for x in replay_bps],
            "replay_seconds": [round(s, 2) for s in replays],
            "replayed_blocks": len(replayed),
            "replay_slice": None if len(replayed) == blocks else f"the first {len(replayed)} of {blocks} blocks",
            "sync_ratio_from_spawn": round(sync["blocks_per_second_from_spawn"] / baseline_bps, 3),
            **{k: v for k, v in sync.items() if k not in ("blocks_per_second_from_connected", "memory_mb")},
        },
        "chain": {
            "recipe": f"coinbase-only blocks; every {TRANSFER_EVERY}th carries {TRANSFERS_PER_BLOCK} transfers",
            "transfers": transfer_blocks * TRANSFERS_PER_BLOCK,
            "block_bytes_mean": round(statistics.mean(len(r) for r in raws)),
            "store_mb": round((entry / "data" / "chain.sqlite").stat().st_size / 2**20, 1),
            "network": params.name,
            "cache_dir": str(entry),
            "cache": cache["action"],
            "build_seconds": cache["seconds"],
            "copy_seconds": round(copy_s, 2),
        },
        "machine": {"cpus": os.cpu_count(), "loadavg_before": loadavg_before,
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version()},
        "seconds": round(time.monotonic() - began, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=DEFAULT_BLOCKS, help="length of the cached chain")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                        help="where the chain is cached (default: bench/.cache)")
    parser.add_argument("--start-rounds", type=int, default=START_ROUNDS,
                        help="starts timed on the cached chain (and as many on an empty data directory)")
    parser.add_argument("--replay-blocks", type=int, help="replay only the first K blocks for the baseline")
    parser.add_argument("--sync-timeout", type=float, help="seconds the fresh node may take (default 120 + blocks/50)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep logs and data directories in DIR")
    args = parser.parse_args(argv)
    if args.blocks < 1 or args.start_rounds < 1 or (args.replay_blocks is not None and args.replay_blocks < 1):
        parser.error("--blocks, --start-rounds and --replay-blocks must be positive")
    result = long_chain(args.blocks, args.cache_dir, start_rounds=args.start_rounds,
                        replay_blocks=args.replay_blocks, sync_timeout_s=args.sync_timeout, keep=args.keep)
    json.dump({"long_chain": result}, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
