#!/usr/bin/env python3
"""Benchmark the durable chain and the mempool, and print one JSON object.

- ``replay``: N blocks of signed 1-input 2-output transactions are built once,
  then connected into a fresh SQLite store through ``Chain.add_block`` (every
  rule checked, 16 blocks to an SQL transaction as a syncing node connects a
  reply, checked ahead with their signatures verified by the chain's signature
  process, the UTXO set and indexes in the store's cache), the clock stopped after
  the cache's final flush; blocks/s
  and tx/s are reported next to the raw libsecp256k1 BIP340 verify rate
  (coincurve, keys pre-parsed) of the same transactions' signatures, measured
  in the same run, with the ratio tx/s / verifies/s (1.0 would mean storage and
  every other rule cost nothing next to the signature).  Run with
  ``synchronous=NORMAL`` (the node's setting, first, ``--repeats`` times, their median
  ratio as ``replay.ratio_tx_to_verifies``: survives ``kill -9``) and ``FULL`` (one fsync
  per commit: survives power loss too) to show what durability costs, and once
  more with ``NORMAL`` and a commit per block (a block from the gossip).  The
  rules alone (``check_block`` and ``connect_block`` over a dict) are timed too:
  ``ratio_tx_to_rules_only`` is what the chain manager and the store leave of them.
- ``template``: ``Mempool.select_for_block`` over a 100k-transaction pool, the
  first call (cold: no order kept yet, so the pool's best fee-rate bands, kept
  as entries arrive, are sorted) and a warm call, next to
  baselines of the same run: sorting 100k (fee rate, seq) keys and one bare
  Python pass over the entries.  The pool is filled through ``Mempool._insert``
  with pre-built entries: ``accept`` would verify 100k signatures first.
  Also timed: admitting a better-paying newcomer to the full pool (the worst
  entry is evicted), next to the same bare pass over the entries.

- ``block_from_pool``: a block of ``--pool-block`` transfers from the gossip, connected by a
  node holding them all in its mempool (their signatures in the chain's signature cache),
  next to the same block connected by a node that never saw them, alternating.

- ``long_chain``: a node started on a 100k-block regtest chain (built once, cached in
  ``bench/.cache/``) until its api serves, a fresh node syncing that chain from it
  next to a local replay of the same blocks, and both nodes' resident memory
  (``bench/long_chain.py``; ``--long-chain 0`` skips it).

Usage::

    .venv/bin/python bench/bench_chain.py [--blocks N] [--txs-per-block K] [--pool N] [--repeats R] [--long-chain BLOCKS]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import coincurve

sys.path.insert(0, str(Path(__file__).resolve().parent))  # long_chain, beside this script
from long_chain import DEFAULT_BLOCKS as LONG_CHAIN_BLOCKS, long_chain  # noqa: E402
from nodebench_util import SYNC_BATCH, connect_as_sync  # noqa: E402

from zcoin.chain import Chain
from zcoin.consensus.builders import new_template, sign_transaction, solve
from zcoin.consensus.params import REGTEST, ChainParams, dev_secret_key
from zcoin.consensus.primitives import Block, OutPoint, Transaction, TxIn, TxOut, sighash
from zcoin.consensus.validation import MemoryUtxoSet, check_block, connect_block, genesis_diff, median_time_past
from zcoin.mempool import Mempool, MempoolEntry
from zcoin.storage import DEFAULT_SYNCHRONOUS, FLUSH_EVERY_BLOCKS, MAX_CACHE_ENTRIES, ChainStore

TEMPLATE_GOAL_MS = 50.0
FEE = 1_000
OUTPUTS_PER_SPLIT = 2000  # one split transaction stays under max_tx_bytes (about 76 kB)


def build_blocks(params: ChainParams, blocks: int, txs_per_block: int) -> tuple[list[Block], list[tuple]]:
    """``blocks`` valid regtest blocks of ``txs_per_block`` transfers each, and each signature's verify inputs."""
    coins = deque()  # (outpoint, amount, account, pubkey), oldest first
    for account in range(params.dev_accounts):
        coins.append((OutPoint(params.genesis.txs[0].txid, account), params.dev_account_amount, account,
                      params.dev_pubkey(account)))
    keys = [dev_secret_key(i) for i in range(params.dev_accounts)]
    chain = [params.genesis]
    verifies = []
    for height in range(1, blocks + 1):
        txs = []
        for _ in range(txs_per_block):
            outpoint, amount, account, pubkey = coins.popleft()
            half = (amount - FEE) // 2
            tx = sign_transaction([(outpoint, keys[account])],
                                  [TxOut(half, pubkey), TxOut(amount - FEE - half, pubkey)], aux32=bytes(32))
            txs.append(tx)
            verifies.append((coincurve.PublicKeyXOnly(pubkey), tx.inputs[0].signature,
                             sighash(tx.sighash_digest(), 0)))
            coins.extend((OutPoint(tx.txid, i), out.amount, account, pubkey) for i, out in enumerate(tx.outputs))
        parent = chain[-1]
        mtp = median_time_past(b.header.time for b in chain[-params.median_time_span:])
        template = new_template(params, parent.hash, height, params.genesis_bits,
                                max(mtp + 1, parent.header.time + 1), params.dev_pubkey(9), txs, FEE * len(txs))
        chain.append(solve(template, max_tries=1 << 16))
    return chain[1:], verifies


def presign(params: ChainParams, count: int, *, fee: int = FEE) -> tuple[Block, list[Transaction]]:
    """A block on genesis splitting development funds into ``count`` outputs, and one spend of each
    (``fee`` each), the accounts interleaved."""
    accounts = math.ceil(count / OUTPUTS_PER_SPLIT)
    if accounts > params.dev_accounts:
        raise SystemExit(f"at most {params.dev_accounts * OUTPUTS_PER_SPLIT} transactions (lower --rate or --seconds)")
    genesis = params.genesis
    splits, spends = [], []
    for account in range(accounts):
        key, pubkey = dev_secret_key(account), params.dev_pubkey(account)
        outputs = min(OUTPUTS_PER_SPLIT, count - account * OUTPUTS_PER_SPLIT)
        each = (params.dev_account_amount - fee) // outputs
        split = sign_transaction([(OutPoint(genesis.txs[0].txid, account), key)], [TxOut(each, pubkey)] * outputs)
        splits.append(split)
        to = params.dev_pubkey((account + 1) % params.dev_accounts)
        spends.extend(sign_transaction([(OutPoint(split.txid, i), key)], [TxOut(each - fee, to)])
                      for i in range(outputs))
    fees = sum(params.dev_account_amount - sum(o.amount for o in s.outputs) for s in splits)
    template = new_template(params, genesis.hash, 1, params.genesis_bits, genesis.header.time + 1,
                            params.dev_pubkey(9), splits, fees)
    # Interleave the accounts so that consecutive pushes spend different split transactions.
    order = sorted(range(len(spends)), key=lambda i: (i % OUTPUTS_PER_SPLIT, i // OUTPUTS_PER_SPLIT))
    return solve(template), [spends[i] for i in order]


def bench_block_from_pool(params: ChainParams, count: int, repeats: int = 3) -> dict:
    """A block of ``count`` transfers from the gossip (a commit of its own, signatures on two threads),
    connected by a node that has them all in its mempool (their signatures remembered), next to the
    same block connected by a node that has never seen them; both on fresh stores, alternating."""
    first, transfers = presign(params, count)
    block = solve(new_template(params, first.hash, 2, params.genesis_bits, first.header.time + 1,
                               params.dev_pubkey(9), transfers, FEE * len(transfers)), max_tries=1 << 16)
    now = block.header.time + 60
    times: dict[str, list[float]] = {"unseen": [], "from_pool": []}
    skipped = []
    for repeat in range(repeats):
        for label in (("unseen", "from_pool") if repeat % 2 == 0 else ("from_pool", "unseen")):
            with tempfile.TemporaryDirectory() as directory:
                store = ChainStore(Path(directory) / "chain.sqlite", params)
                chain = Chain(store, params)
                chain.add_block(first, now)
                if label == "from_pool":
                    pool = Mempool(params, signature_cache=chain.signature_cache)
                    for tx in block.txs[1:]:
                        pool.accept(tx, store, chain.height)
                start = time.perf_counter()
                chain.add_block(block, now)
                times[label].append(time.perf_counter() - start)
                assert chain.height == 2
                if label == "from_pool":
                    skipped.append(chain.signature_cache.hits)
                store.close()
    unseen, from_pool = (statistics.median(times[k]) * 1000 for k in ("unseen", "from_pool"))
    return {"transactions": count, "repeats": repeats, "unseen_ms": round(unseen, 2),
            "from_pool_ms": round(from_pool, 2), "signatures_skipped": min(skipped),
            "ratio_from_pool_to_unseen": round(from_pool / unseen, 3)}


def bench_replay(params: ChainParams, blocks: list[Block], synchronous: str, batched: bool) -> dict:
    """Connect ``blocks`` into a fresh store through ``Chain.add_block``, then flush its cache.

    ``batched``: 16 blocks to an SQL transaction, as a syncing node connects a reply, their
    signatures verified by the chain's signature process, started (once in a node's life, and
    reported as ``signature_process_start_s``) before the clock starts;
    else a commit per block, as for a block from the gossip or the node's own miner.
    """
    now = blocks[-1].header.time + 60
    with tempfile.TemporaryDirectory() as directory:
        store = ChainStore(Path(directory) / "chain.sqlite", params, synchronous=synchronous)
        chain = Chain(store, params)
        process_start = time.perf_counter()
        if batched and not chain.ahead.process.start(wait=True):
            raise RuntimeError("the chain's signature process did not start")
        process_start = time.perf_counter() - process_start
        start = time.perf_counter()
        if batched:
            connect_as_sync(chain, blocks, now)
        else:
            for block in blocks:
                chain.add_block(block, now)
        store.flush()  # what the cache holds is written too
        elapsed = time.perf_counter() - start
        assert chain.height == len(blocks)
        store.close()
    txs = sum(len(b.txs) - 1 for b in blocks)
    return {"synchronous": synchronous, "node_setting": synchronous == DEFAULT_SYNCHRONOUS,
            "blocks_per_commit": SYNC_BATCH if batched else 1,
            "signature_process": batched, "signature_process_start_s": round(process_start, 3) if batched else None,
            "seconds": round(elapsed, 3), "blocks_per_second": round(len(blocks) / elapsed, 1),
            "tx_per_second": round(txs / elapsed, 1)}


def rules_only_rate(params: ChainParams, blocks: list[Block]) -> float:
    """Transactions per second of the rules alone over ``blocks``: ``check_block`` and
    ``connect_block`` against a UTXO set in a dict (no chain manager, no store)."""
    utxo = MemoryUtxoSet()
    utxo.apply(genesis_diff(params))
    start = time.perf_counter()
    for height, block in enumerate(blocks, 1):
        check_block(block, params)
        utxo.apply(connect_block(block, height, utxo, params))
    return sum(len(b.txs) - 1 for b in blocks) / (time.perf_counter() - start)


def verify_rate(verifies: list[tuple], rounds: int = 2) -> float:
    """Raw coincurve BIP340 verifies per second over ``verifies`` (best of ``rounds``)."""
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for key, signature, message in verifies:
            if not key.verify(signature, message):
                raise RuntimeError("benchmark signature does not verify")
        best = max(best, len(verifies) / (time.perf_counter() - start))
    return best


def _transfer(rng: random.Random, prev: OutPoint, pubkey: bytes) -> Transaction:
    amount = rng.randrange(10**6, 10**12)
    signature = bytes(range(64))  # never checked: ``_insert`` trusts its caller
    return Transaction(1, (TxIn(prev, signature),), (TxOut(amount // 2, pubkey), TxOut(amount - amount // 2, pubkey)))


def add_entries(pool: Mempool, count: int, rng: random.Random, parents: list[Transaction]) -> None:
    """Insert ``count`` transfers (about 10% spending an earlier pool transaction) without verifying them."""
    pubkey = REGTEST.dev_pubkey(0)
    for _ in range(count):
        parent = None
        while parents and rng.random() < 0.1:
            candidate = parents.pop(rng.randrange(len(parents)))
            if candidate.txid in pool.entries:
                parent = candidate
                break
        prev = OutPoint(parent.txid, rng.randrange(2)) if parent else OutPoint(rng.randbytes(32), rng.randrange(4))
        if prev in pool.spends:
            prev = OutPoint(rng.randbytes(32), 0)
        tx = _transfer(rng, prev, pubkey)
        pool._insert(MempoolEntry(tx, rng.randrange(100, 100_000), tx.size, next(pool._seq)))
        parents.append(tx)


def bench_template(params: ChainParams, pool_size: int, repeats: int = 5, arrivals: int = 200) -> dict:
    """``select_for_block`` on a ``pool_size`` pool, in milliseconds.

    ``cold``: no order kept yet (first call: the best fee-rate bands are sorted); ``warm``: called again
    unchanged; ``after_block``: after the chosen transactions left (a block
    connected) and ``arrivals`` new ones came in, the usual case for a miner.
    """
    rng = random.Random(1)
    pool = Mempool(params, max_bytes=1 << 40)
    parents: list[Transaction] = []
    add_entries(pool, pool_size, rng, parents)
    max_bytes = params.max_block_bytes - 1_000
    cold, warm, after_block, selected = [], [], [], []
    for _ in range(repeats):
        pool._order = None  # the cache as a fresh pool has it
        start = time.perf_counter()
        chosen, _ = pool.select_for_block(max_bytes)
        cold.append(time.perf_counter() - start)
        start = time.perf_counter()
        again, _ = pool.select_for_block(max_bytes)
        warm.append(time.perf_counter() - start)
        assert again == chosen
        for tx in chosen:
            pool.remove(tx.txid, with_descendants=False)
        add_entries(pool, arrivals, rng, parents)
        start = time.perf_counter()
        chosen, _ = pool.select_for_block(max_bytes)
        after_block.append(time.perf_counter() - start)
        selected.append(len(chosen))
        add_entries(pool, pool_size - len(pool), rng, parents)  # back to the full size
    # A full pool: each newcomer with a better fee rate evicts the worst entry (``_make_room``).
    pool.max_bytes = pool.bytes
    pool.select_for_block(max_bytes)  # the order as a mining node keeps it
    admit_times = []
    for _ in range(arrivals):
        tx = _transfer(rng, OutPoint(rng.randbytes(32), 0), REGTEST.dev_pubkey(0))
        entry = MempoolEntry(tx, 200_000, tx.size, next(pool._seq))
        start = time.perf_counter()
        pool._make_room(entry)
        pool._insert(entry)
        admit_times.append(time.perf_counter() - start)
    entries = list(pool.entries.values())
    keys = [(e.fee / e.size, e.seq) for e in entries]
    sort_times, scan_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        sorted(keys)
        sort_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        total = 0
        for entry in entries:
            total += entry.size
        scan_times.append(time.perf_counter() - start)
    cold_ms, warm_ms, after_ms = (statistics.median(t) * 1000 for t in (cold, warm, after_block))
    sort_ms = statistics.median(sort_times) * 1000
    scan_ms = statistics.median(scan_times) * 1000
    admit_ms = statistics.median(admit_times) * 1000
    return {
        "pool_transactions": len(pool),
        "pool_children": sum(1 for e in entries if e.parents),
        "filled_via": "Mempool._insert of pre-built MempoolEntry objects (signatures not verified); "
                      "accept() would verify 100k signatures",
        "max_bytes": max_bytes,
        "selected_transactions": statistics.median(selected),
        "cold_ms": round(cold_ms, 2),
        "warm_ms": round(warm_ms, 2),
        "after_block_ms": round(after_ms, 2),
        "after_block_arrivals": arrivals,
        "goal_ms": TEMPLATE_GOAL_MS,
        "baseline_sort_100k_keys_ms": round(sort_ms, 2),
        "baseline_scan_100k_entries_ms": round(scan_ms, 2),
        "cold_ratio_to_sort": round(cold_ms / sort_ms, 2),
        "warm_ratio_to_scan": round(warm_ms / scan_ms, 2),
        "full_pool_admit_with_eviction_ms": round(admit_ms, 4),
        "full_pool_admit_ratio_to_scan": round(admit_ms / scan_ms, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=300)
    parser.add_argument("--txs-per-block", type=int, default=8)
    parser.add_argument("--pool", type=int, default=100_000)
    parser.add_argument("--pool-block", type=int, default=2_000, metavar="TXS",
                        help="transfers in the block connected with and without them in the mempool")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of the node's own replay (batched, synchronous=NORMAL); the headline "
                             "ratio is their median")
    parser.add_argument("--long-chain", type=int, default=LONG_CHAIN_BLOCKS, metavar="BLOCKS",
                        help="length of the long chain started and synced (bench/long_chain.py; cached "
                             "in bench/.cache/ once built); 0 skips it")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    params = REGTEST

    start = time.perf_counter()
    blocks, verifies = build_blocks(params, args.blocks, args.txs_per_block)
    build_s = time.perf_counter() - start
    replays = []
    for mode, batched in [(DEFAULT_SYNCHRONOUS, True)] * args.repeats + [("FULL", True), (DEFAULT_SYNCHRONOUS, False)]:
        # The baseline right before and after each run, so that a machine busy with
        # something else for a while weighs on both figures alike.
        before = verify_rate(verifies)
        replay = bench_replay(params, blocks, mode, batched)
        verifies_per_second = (before + verify_rate(verifies)) / 2
        replay["baseline_verifies_per_second"] = round(verifies_per_second, 1)
        replay["ratio_tx_to_verifies"] = round(replay["tx_per_second"] / verifies_per_second, 3)
        # What the store and the chain manager cost, apart from the rules themselves.
        rules_per_second = rules_only_rate(params, blocks)
        replay["rules_only_tx_per_second"] = round(rules_per_second, 1)
        replay["ratio_tx_to_rules_only"] = round(replay["tx_per_second"] / rules_per_second, 3)
        replays.append(replay)
    results = {
        "replay": {
            "blocks": len(blocks),
            "transactions": sum(len(b.txs) - 1 for b in blocks),
            "txs_per_block": args.txs_per_block,
            "build_seconds": round(build_s, 3),
            "cache": {"max_entries": MAX_CACHE_ENTRIES, "flush_every_blocks": FLUSH_EVERY_BLOCKS},
            # The median of the node's own replays (the first ``--repeats`` runs).
            "ratio_tx_to_verifies": statistics.median(r["ratio_tx_to_verifies"] for r in replays[:args.repeats]),
            "node_setting_ratios": [r["ratio_tx_to_verifies"] for r in replays[:args.repeats]],
            "runs": replays,
        },
        "template": bench_template(params, args.pool),
        "block_from_pool": bench_block_from_pool(params, args.pool_block),
        "python": platform.python_version(),
    }
    if args.long_chain:
        results["long_chain"] = long_chain(args.long_chain)
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
