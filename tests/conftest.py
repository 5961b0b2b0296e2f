"""Shared helpers for the consensus tests: Bitcoin's vectors and a small regtest chain.

The vectors live next to the repository, in ``../shared/vectors`` (see its
README).  Tests that take one vector at a time ask for a fixture named after
the case list (``header_case``, ``bip340_sign_case``, ...); the
``pytest_generate_tests`` hook below turns each entry into its own test case
with a readable id.  A missing or empty vector file fails the collection rather
than silently producing no tests.

:class:`RegtestChain` builds real, fully checked blocks on the regtest network
(Bitcoin regtest's ``0x207fffff``: about every other hash wins) with the
consensus builders, so a test can make an otherwise valid object and break one
rule of it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from chainutil import block_fees
from zcoin.consensus.builders import BlockTemplate, new_template, sign_transaction, solve
from zcoin.consensus.crypto import merkle_root, schnorr_pubkey
from zcoin.consensus.params import REGTEST, ChainParams, dev_secret_key
from zcoin.consensus.pow import bits_to_target, hash_meets_target
from zcoin.consensus.primitives import Block, BlockHeader, OutPoint, Transaction, TxOut
from zcoin.consensus.validation import (
    Coin,
    HeaderContext,
    MemoryUtxoSet,
    UtxoDiff,
    check_block,
    check_header_context,
    connect_block,
    genesis_diff,
    median_time_past,
    next_bits,
    retarget_window_start,
)

VECTORS_DIR = Path(__file__).parents[2] / "shared" / "vectors"
MINER_KEY = hashlib.sha256(b"zcoin test miner").digest()
MINER_PUBKEY = schnorr_pubkey(MINER_KEY)


# --- vectors ---------------------------------------------------------------------


@cache
def load_json(name: str) -> dict[str, Any]:
    """One JSON vector file, parsed."""
    path = VECTORS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"vector file {path} is missing (expected ../shared/vectors)")
    return json.loads(path.read_text())


@cache
def load_bip340() -> list[dict[str, str]]:
    """The rows of BIP340's test-vectors.csv."""
    with (VECTORS_DIR / "bip340.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")[:60]


def _bip340_rows(predicate) -> list[tuple[str, dict[str, str]]]:
    return [(f"bip340-{row['index']}", row) for row in load_bip340() if predicate(row)]


def _message_is_32_bytes(row: dict[str, str]) -> bool:
    return len(row["message"]) == 64


def vector_cases() -> dict[str, list[tuple[str, Any]]]:
    """Every parametrized vector fixture: name -> [(id, case), ...]."""
    headers = load_json("headers.json")
    compact = load_json("compact_bits.json")
    retarget = load_json("retarget.json")
    return {
        "header_case": [(f"mainnet-{h['height']}", h) for h in headers["headers"]]
        + [(f"{h['network']}-genesis", h) for h in headers["other_networks_genesis"]],
        "merkle_case": [(_slug(b["name"]), b) for b in load_json("merkle.json")["blocks"]],
        "set_compact_case": [(c["compact"], c) for c in compact["set_compact_vectors"]],
        "get_compact_case": [(c["get_compact"], c) for c in compact["get_compact_vectors"]],
        "real_bits_case": [(c["compact"], c) for c in compact["real_chain_bits"]],
        "pow_rejection_case": [(c["test"], c) for c in compact["check_proof_of_work_rejections"]],
        "retarget_case": [(c["test"], c) for c in retarget["vectors"]],
        "bip340_sign_case": _bip340_rows(lambda r: r["secret key"] and _message_is_32_bytes(r)),
        "bip340_verify_case": _bip340_rows(_message_is_32_bytes),
        "bip340_bad_message_case": _bip340_rows(lambda r: not _message_is_32_bytes(r)),
    }


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize tests asking for a vector fixture, one test case per vector."""
    wanted = [name for name in metafunc.fixturenames if name.endswith("_case")]
    if not wanted:
        return
    cases = vector_cases()
    for name in wanted:
        if name not in cases:
            continue
        entries = cases[name]
        if not entries:
            raise ValueError(f"no vectors for {name}: is {VECTORS_DIR} complete?")
        metafunc.parametrize(name, [case for _, case in entries], ids=[case_id for case_id, _ in entries])


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The directory of Bitcoin's test vectors."""
    return VECTORS_DIR


# --- a small regtest chain --------------------------------------------------------


def dev_outpoint(params: ChainParams, index: int) -> OutPoint:
    """The genesis premine output of development account ``index``."""
    return OutPoint(params.genesis.txs[0].txid, index)


def dev_key(index: int) -> bytes:
    """Secret key of development account ``index``."""
    return dev_secret_key(index)


def dev_pubkey(index: int) -> bytes:
    """x-only public key of development account ``index``."""
    return REGTEST.dev_pubkey(index)


def pay(outpoint: OutPoint, key: bytes, amounts: list[int], to: list[bytes] | None = None) -> Transaction:
    """A signed transaction spending ``outpoint`` into outputs of ``amounts`` (to the miner unless ``to``)."""
    payees = to if to is not None else [MINER_PUBKEY] * len(amounts)
    outputs = [TxOut(a, p) for a, p in zip(amounts, payees, strict=True)]
    return sign_transaction([(outpoint, key)], outputs, aux32=bytes(32))  # deterministic, so reproducible


def grind(header: BlockHeader, *, winning: bool = True) -> BlockHeader:
    """``header`` with the first nonce whose hash meets (or, ``winning=False``, misses) its target."""
    target = bits_to_target(header.bits)
    for nonce in range(1 << 20):
        candidate = dataclasses.replace(header, nonce=nonce)
        if hash_meets_target(candidate.hash, target) == winning:
            return candidate
    raise AssertionError("no nonce found: is the target that of regtest?")


def with_header(block: Block, **changes: Any) -> Block:
    """``block`` with header fields changed and the nonce ground again so its PoW holds."""
    return Block(grind(dataclasses.replace(block.header, **changes)), block.txs)


def with_txs(block: Block, txs: list[Transaction]) -> Block:
    """``block`` carrying ``txs`` instead, its merkle root recomputed and nonce ground again."""
    return Block(grind(dataclasses.replace(block.header, merkle_root=merkle_root([t.txid for t in txs]))),
                 tuple(txs))


class RegtestChain:
    """A chain on ``params`` kept in memory: blocks, their times and the UTXO set at the tip."""

    def __init__(self, params: ChainParams = REGTEST) -> None:
        self.params = params
        self.blocks: list[Block] = [params.genesis]
        self.utxo = MemoryUtxoSet()
        self.utxo.apply(genesis_diff(params))
        self.diffs: list[UtxoDiff] = [genesis_diff(params)]

    @property
    def height(self) -> int:
        """Height of the tip."""
        return len(self.blocks) - 1

    @property
    def tip(self) -> Block:
        """The last block."""
        return self.blocks[-1]

    @property
    def now(self) -> int:
        """A wall-clock time for the checks: a minute after the tip."""
        return self.tip.header.time + 60

    def context(self) -> HeaderContext:
        """What :func:`check_header_context` needs for the next block."""
        height = self.height + 1
        start = retarget_window_start(self.params, height)
        bits = next_bits(self.params, height, self.tip.header.bits, self.tip.header.time,
                         None if start is None else self.blocks[start].header.time)
        times = [b.header.time for b in self.blocks[-self.params.median_time_span:]]
        return HeaderContext(self.tip.hash, height, bits, median_time_past(times))

    def template(self, txs: list[Transaction] | None = None, *, fees: int | None = None,
                 time: int | None = None) -> BlockTemplate:
        """A template for the next block paying the miner the subsidy plus the fees of ``txs``."""
        txs = list(txs or [])
        if fees is None:
            fees = block_fees(txs, self.utxo)
        ctx = self.context()
        return new_template(self.params, self.tip.hash, ctx.height, ctx.expected_bits,
                            time if time is not None else self.tip.header.time + self.params.target_spacing_s,
                            MINER_PUBKEY, txs, fees)

    def make_block(self, txs: list[Transaction] | None = None, **kwargs: Any) -> Block:
        """A solved next block over ``txs`` (not validated, not connected)."""
        block = solve(self.template(txs, **kwargs), max_tries=1 << 20)
        assert block is not None
        return block

    def validate(self, block: Block, *, now: int | None = None) -> UtxoDiff:
        """Every rule for ``block`` as the next block at wall-clock ``now`` (default :attr:`now`).

        Returns the UTXO diff it makes; nothing is applied.
        """
        check_block(block, self.params)
        ctx = self.context()
        check_header_context(block.header, ctx, self.params, self.now if now is None else now)
        return connect_block(block, ctx.height, self.utxo, self.params)

    def add(self, block: Block, *, now: int | None = None) -> Block:
        """Validate ``block`` and connect it."""
        diff = self.validate(block, now=now)
        self.utxo.apply(diff)
        self.diffs.append(diff)
        self.blocks.append(block)
        return block

    def mine(self, txs: list[Transaction] | None = None, *, now: int | None = None, **kwargs: Any) -> Block:
        """Make, validate and connect the next block over ``txs`` (``kwargs`` as for :meth:`template`)."""
        return self.add(self.make_block(txs, **kwargs), now=now)

    def coins(self) -> dict[OutPoint, Coin]:
        """A copy of the UTXO set."""
        return dict(self.utxo.coins)


@pytest.fixture
def mem_chain() -> RegtestChain:
    """A fresh regtest chain in memory, at genesis; the development accounts' premine is spendable."""
    return RegtestChain()


# --- test outcome, for fixtures that show logs of failed tests -------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
