"""Benchmarks of the consensus core, each next to a baseline measured in the same run.

Every function runs for a fixed wall-clock budget (``seconds``) and returns a
dict of plain numbers, ready for ``json.dumps`` (``bench/bench_consensus.py``,
and ``zcoin bench`` later).  Subject and baseline are measured in alternating
rounds over the same inputs, so a machine that speeds up or slows down during
the run affects both alike; each rate is the median over rounds and each ratio
the median of same-round ratios to the baseline.  Nothing here asserts a speed:
goals are reported next to ratios.

- :func:`bench_verify`: signed 1-input 2-output transactions checked against a
  UTXO view (``check_transaction`` + ``check_tx_inputs``) against raw
  libsecp256k1 BIP340 verifies through coincurve with the key pre-parsed.
- :func:`bench_header_hash`: ``hash_header(raw80)`` and
  ``BlockHeader.parse(raw80).hash`` against a plain hashlib double SHA-256 loop.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import coincurve

from zcoin.consensus.builders import sign_transaction
from zcoin.consensus.params import REGTEST, ChainParams, dev_secret_key
from zcoin.consensus.primitives import BlockHeader, OutPoint, Transaction, TxOut, hash_header, sighash
from zcoin.consensus.validation import Coin, MemoryUtxoSet, check_transaction, check_tx_inputs

DEFAULT_SECONDS = 2.0
ROUNDS = 20  # alternations of subject and baseline within the budget
BATCH = 50  # items handled between two looks at the clock
VERIFY_GOAL_RATIO = 0.5
HASH_GOAL_RATIO = 0.9

Runner = Callable[[Sequence[Any]], object]


def _measure(runners: dict[str, tuple[Runner, Sequence[Any]]], seconds: float) -> dict[str, list[float]]:
    """Items per second of each runner in each round, the runners alternating within ``seconds`` in total.

    A runner handles one batch of its inputs per call; batches cycle through the
    inputs.  Reporting the median over rounds, and ratios of the same round, keeps
    a machine whose load changes during the run from favouring one side.
    """
    slot = seconds / (ROUNDS * len(runners))
    batched = {name: [items[i:i + BATCH] for i in range(0, len(items), BATCH)]
               for name, (_, items) in runners.items()}
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for name, (run, _) in runners.items():  # warm-up: caches, lazy imports
        run(batched[name][0])
    for _ in range(ROUNDS):
        for name, (run, _) in runners.items():
            batches = batched[name]
            count = index = 0
            start = now = time.perf_counter()
            deadline = start + slot
            while now < deadline:
                batch = batches[index]
                run(batch)
                count += len(batch)
                index = (index + 1) % len(batches)
                now = time.perf_counter()
            rates[name].append(count / (now - start))
    return rates


def _summary(rates: dict[str, list[float]], baseline: str = "baseline") -> tuple[dict[str, float], dict[str, float]]:
    """Median rate of each runner, and median over rounds of its rate relative to the baseline's."""
    medians = {name: statistics.median(values) for name, values in rates.items()}
    ratios = {name: statistics.median(r / b for r, b in zip(values, rates[baseline]))
              for name, values in rates.items() if name != baseline}
    return medians, ratios


def _signed_transfers(count: int) -> tuple[list[Transaction], MemoryUtxoSet]:
    """``count`` distinct signed 1-input 2-output transactions and a UTXO set holding their coins."""
    keys = [dev_secret_key(i) for i in range(16)]
    pubkeys = [coincurve.PrivateKey(k).public_key_xonly.format() for k in keys]
    coins: dict[OutPoint, Coin] = {}
    txs = []
    for i in range(count):
        owner = i % len(keys)
        outpoint = OutPoint(hashlib.sha256(b"bench coin %d" % i).digest(), i % 3)
        amount = 10_000_000 + i
        coins[outpoint] = Coin(amount, pubkeys[owner], 1, False)
        outputs = [TxOut(amount // 3, pubkeys[(owner + 1) % len(keys)]),
                   TxOut(amount - amount // 3 - 1_000, pubkeys[owner])]
        txs.append(sign_transaction([(outpoint, keys[owner])], outputs, aux32=bytes(32)))
    return txs, MemoryUtxoSet(coins)


def bench_verify(seconds: float = DEFAULT_SECONDS, *, transactions: int = 2000,
                 params: ChainParams = REGTEST) -> dict[str, Any]:
    """Transactions validated per second against raw coincurve Schnorr verifies per second."""
    txs, view = _signed_transfers(transactions)
    height = 2  # the coins are confirmed at height 1 and are not coinbases: no maturity applies
    verifies = []
    for tx in txs:
        coin = view.get_coin(tx.inputs[0].prev)
        verifies.append((coincurve.PublicKeyXOnly(coin.pubkey), tx.inputs[0].signature,
                         sighash(tx.sighash_digest(), 0)))
    raws = [tx.raw for tx in txs]

    def validate(batch: Sequence[Transaction]) -> None:
        for tx in batch:
            check_transaction(tx, params)
            check_tx_inputs(tx, view, height, params)

    def parse_and_validate(batch: Sequence[bytes]) -> None:
        for raw in batch:
            tx = Transaction.parse(raw)
            check_transaction(tx, params)
            check_tx_inputs(tx, view, height, params)

    def baseline(batch: Sequence[tuple[coincurve.PublicKeyXOnly, bytes, bytes]]) -> None:
        for key, signature, message in batch:
            key.verify(signature, message)

    if not all(key.verify(sig, msg) for key, sig, msg in verifies):
        raise RuntimeError("benchmark transactions carry invalid signatures")
    validate(txs)  # every transaction is valid (raises otherwise), so the figures measure the success path
    rates, ratios = _summary(_measure({"validate": (validate, txs), "parse_and_validate": (parse_and_validate, raws),
                                       "baseline": (baseline, verifies)}, seconds))
    return {
        "benchmark": "verify",
        "seconds": seconds,
        "transactions": len(txs),
        "tx_per_second": round(rates["validate"], 1),
        "parse_and_check_tx_per_second": round(rates["parse_and_validate"], 1),
        "baseline_verifies_per_second": round(rates["baseline"], 1),
        "ratio": round(ratios["validate"], 3),
        "parse_and_check_ratio": round(ratios["parse_and_validate"], 3),
        "goal_ratio": VERIFY_GOAL_RATIO,
    }


def _sample_headers(count: int) -> list[bytes]:
    """``count`` distinct 80-byte headers (any 80 bytes are a header)."""
    return [hashlib.sha512(b"bench header %d" % i).digest() + bytes(16) for i in range(count)]


def bench_header_hash(seconds: float = DEFAULT_SECONDS, *, headers: int = 1000) -> dict[str, Any]:
    """Header hashes per second through the consensus code against a plain hashlib loop."""
    raws = _sample_headers(headers)

    def consensus_hash(batch: Sequence[bytes]) -> None:
        for raw in batch:
            hash_header(raw)

    def parse_and_hash(batch: Sequence[bytes]) -> None:
        for raw in batch:
            BlockHeader.parse(raw).hash

    def baseline(batch: Sequence[bytes]) -> None:
        for raw in batch:
            hashlib.sha256(hashlib.sha256(raw).digest()).digest()

    if any(hash_header(r) != BlockHeader.parse(r).hash for r in raws):
        raise RuntimeError("hash_header and BlockHeader.hash disagree")
    rates, ratios = _summary(_measure({"hash_header": (consensus_hash, raws), "parse_hash": (parse_and_hash, raws),
                                       "baseline": (baseline, raws)}, seconds))
    return {
        "benchmark": "header_hash",
        "seconds": seconds,
        "headers": len(raws),
        "hash_header_per_second": round(rates["hash_header"], 1),
        "parse_hash_per_second": round(rates["parse_hash"], 1),
        "baseline_hashes_per_second": round(rates["baseline"], 1),
        "ratio": round(ratios["hash_header"], 3),
        "parse_hash_ratio": round(ratios["parse_hash"], 3),
        "goal_ratio": HASH_GOAL_RATIO,
    }


BENCHMARKS: dict[str, Callable[..., dict[str, Any]]] = {
    "verify": bench_verify,
    "header_hash": bench_header_hash,
}
