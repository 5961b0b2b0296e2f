"""Real regtest blocks made in memory, and the stores and chains the tests hand them to.

:class:`Builder` grows a chain of fully valid blocks with the consensus
builders (regtest's ``0x207fffff`` target: about every other hash wins) and
checks each with the pure rules against its own UTXO set, so a test can grow a
main chain, fork it at any height, break one rule of an otherwise valid block,
and hand the blocks to a :class:`~zcoin.chain.Chain` in any order.
:func:`grind`, :func:`with_header` and :func:`with_txs` change a solved block
and make its proof of work valid (or not) again.

:func:`replay_active_chain` recomputes the UTXO set of a store's active chain
from genesis with :class:`MemoryUtxoSet` and :func:`connect_block`; it is the
reference every on-disk UTXO set is compared with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from collections.abc import Iterable
from pathlib import Path

from zcoin.chain import Chain, OrphanPool
from zcoin.consensus.builders import BlockTemplate, new_template, solve
from zcoin.consensus.crypto import merkle_root, schnorr_pubkey
from zcoin.consensus.params import REGTEST, ChainParams
from zcoin.consensus.pow import bits_to_target, hash_meets_target
from zcoin.consensus.primitives import Block, BlockHeader, OutPoint, Transaction
from zcoin.consensus.validation import (
    Coin,
    HeaderContext,
    MemoryUtxoSet,
    UtxoDiff,
    UtxoView,
    check_block,
    check_header_context,
    connect_block,
    genesis_diff,
    median_time_past,
    next_bits,
    retarget_window_start,
)
from zcoin.storage import ChainStore

PARAMS = REGTEST
NOW = PARAMS.genesis_time + 10_000_000  # a wall clock far enough ahead of every block time the tests use
MINER_KEY = hashlib.sha256(b"zcoin test miner").digest()  # not a development account: its coins are the miner's
MINER_PUBKEY = schnorr_pubkey(MINER_KEY)
SOLVE_TRIES = 1 << 20


def block_fees(txs: Iterable[Transaction], view: UtxoView, *, missing_ok: bool = False) -> int:
    """Inputs minus outputs of ``txs``, reading coins from ``view`` or from earlier ``txs``.

    ``missing_ok`` counts a coin found nowhere as 0 (for blocks meant to be invalid).
    """
    created: dict[OutPoint, int] = {}
    fees = 0
    for tx in txs:
        total_in = 0
        for txin in tx.inputs:
            if txin.prev in created:
                total_in += created.pop(txin.prev)
            else:
                coin = view.get_coin(txin.prev)
                if coin is None and not missing_ok:
                    raise KeyError(f"no coin {txin.prev}")
                total_in += coin.amount if coin else 0
        fees += total_in - sum(o.amount for o in tx.outputs)
        created.update({OutPoint(tx.txid, i): o.amount for i, o in enumerate(tx.outputs)})
    return fees


class Builder:
    """A chain on ``params`` kept in memory: blocks, their UTXO diffs and the UTXO set at the tip.

    Every block it appends is checked with every rule (``check_block``, the
    header's context, ``connect_block``) unless a test breaks one on purpose
    (``unchecked=True``).  Coinbases pay :data:`MINER_PUBKEY` and carry ``tag``
    as their extra nonce, so two builders never make the same block.
    """

    def __init__(self, params: ChainParams = PARAMS, tag: bytes = b"") -> None:
        self.params = params
        self.tag = tag
        self.blocks: list[Block] = [params.genesis]
        self.diffs: list[UtxoDiff] = [genesis_diff(params)]
        self.utxo = MemoryUtxoSet()
        self.utxo.apply(self.diffs[0])

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

    def fork(self, height: int, tag: bytes) -> Builder:
        """A new builder sharing this chain up to ``height`` whose blocks carry ``tag``."""
        other = Builder(self.params, tag)
        other.blocks = self.blocks[:height + 1]
        other.diffs = self.diffs[:height + 1]
        other.utxo = MemoryUtxoSet(self.utxo.coins)
        for diff in reversed(self.diffs[height + 1:]):
            other.utxo.revert(diff)
        return other

    def context(self) -> HeaderContext:
        """What :func:`check_header_context` needs for the next block."""
        height = self.height + 1
        start = retarget_window_start(self.params, height)
        bits = next_bits(self.params, height, self.tip.header.bits, self.tip.header.time,
                         None if start is None else self.blocks[start].header.time)
        times = [b.header.time for b in self.blocks[-self.params.median_time_span:]]
        return HeaderContext(self.tip.hash, height, bits, median_time_past(times))

    def fees(self, txs: Iterable[Transaction]) -> int:
        """Inputs minus outputs of ``txs`` in order, coins read from the tip or earlier ``txs`` (missing: 0)."""
        return block_fees(txs, self.utxo, missing_ok=True)

    def template(self, txs: Iterable[Transaction] = (), *, fees: int | None = None,
                 time: int | None = None) -> BlockTemplate:
        """A template for the next block paying the miner the subsidy plus ``fees`` (default: those of ``txs``).

        Its time is by default one target spacing after the tip (never at or below the median time past).
        """
        txs = list(txs)
        ctx = self.context()
        if time is None:
            time = max(ctx.median_time_past + 1, self.tip.header.time + self.params.target_spacing_s)
        template = new_template(self.params, self.tip.hash, ctx.height, ctx.expected_bits, time, MINER_PUBKEY,
                                txs, self.fees(txs) if fees is None else fees)
        template.extra_nonce = self.tag
        return template

    def make_block(self, txs: Iterable[Transaction] = (), *, fees: int | None = None,
                   time: int | None = None) -> Block:
        """A solved next block over ``txs`` (not validated, not appended)."""
        block = solve(self.template(txs, fees=fees, time=time), max_tries=SOLVE_TRIES)
        assert block is not None, "no nonce found: is the target that of regtest?"
        return block

    def validate(self, block: Block, *, now: int | None = None) -> UtxoDiff:
        """Every rule for ``block`` as the next block at wall-clock ``now`` (default :attr:`now`).

        Returns the UTXO diff it makes; nothing is applied.
        """
        check_block(block, self.params)
        ctx = self.context()
        check_header_context(block.header, ctx, self.params, self.now if now is None else now)
        return connect_block(block, ctx.height, self.utxo, self.params)

    def append(self, block: Block, *, now: int | None = None, unchecked: bool = False) -> Block:
        """Add ``block`` on the tip; unless ``unchecked``, it must pass every rule (see :meth:`validate`)."""
        if unchecked:
            height = self.height + 1
            created = [(OutPoint(tx.txid, i), Coin(o.amount, o.pubkey, height, tx.is_coinbase))
                       for tx in block.txs for i, o in enumerate(tx.outputs)]
            diff = UtxoDiff((), tuple(created))
        else:
            diff = self.validate(block, now=now)
        self.utxo.apply(diff)
        self.diffs.append(diff)
        self.blocks.append(block)
        return block

    def mine(self, txs: Iterable[Transaction] = (), *, fees: int | None = None, time: int | None = None,
             now: int | None = None, unchecked: bool = False) -> Block:
        """Make and append the next block over ``txs``."""
        return self.append(self.make_block(txs, fees=fees, time=time), now=now, unchecked=unchecked)

    def mine_empty(self, count: int) -> list[Block]:
        """Append ``count`` coinbase-only blocks."""
        return [self.mine() for _ in range(count)]

    def coins(self) -> dict[OutPoint, Coin]:
        """A copy of the UTXO set."""
        return dict(self.utxo.coins)


# --- changing a solved block -------------------------------------------------------------


def grind(header: BlockHeader, *, winning: bool = True) -> BlockHeader:
    """``header`` with the first nonce whose hash meets (or, ``winning=False``, misses) its target."""
    target = bits_to_target(header.bits)
    for nonce in range(SOLVE_TRIES):
        candidate = dataclasses.replace(header, nonce=nonce)
        if hash_meets_target(candidate.hash, target) == winning:
            return candidate
    raise AssertionError("no nonce found: is the target that of regtest?")


def with_header(block: Block, **changes: object) -> Block:
    """``block`` with header fields changed and its nonce ground again."""
    return Block(grind(dataclasses.replace(block.header, **changes)), block.txs)


def with_txs(block: Block, txs: list[Transaction]) -> Block:
    """``block`` carrying ``txs`` instead, its merkle root recomputed and nonce ground again."""
    return Block(grind(dataclasses.replace(block.header, merkle_root=merkle_root([t.txid for t in txs]))),
                 tuple(txs))


# --- stores and chains ---------------------------------------------------------------------


def open_chain(path: str | Path, params: ChainParams = PARAMS, *, orphans: OrphanPool | None = None,
               synchronous: str = "FULL") -> tuple[ChainStore, Chain]:
    """A store at ``path`` and the chain manager over it."""
    store = ChainStore(path, params, synchronous=synchronous)
    return store, Chain(store, params, orphans=orphans)


def write_crashed_store(path: Path, blocks: list[Block], params: ChainParams = PARAMS) -> None:
    """A store at ``path`` holding ``blocks``, its files as ``kill -9`` leaves them.

    The blocks are written through a store at a scratch path beside ``path``: all but the last
    are checkpointed into its main file, the last stays in its write-ahead log, and both files
    are copied while it is still open (a clean close folds the log in and deletes it).
    """
    scratch = path.with_name(f"{path.name}.writer")
    store, chain = open_chain(scratch, params)
    add_all(chain, blocks[:-1])
    store.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    add_all(chain, blocks[-1:])
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{scratch}{suffix}", f"{path}{suffix}")
    store.close()


def garble_middle(path: Path) -> None:
    """Overwrite the middle half of the file at ``path`` with a fixed byte (pages torn by a failing disk)."""
    data = bytearray(path.read_bytes())
    start, end = len(data) // 4, 3 * len(data) // 4
    data[start:end] = b"\x5a" * (end - start)
    path.write_bytes(bytes(data))


def add_all(chain: Chain, blocks: Iterable[Block]) -> None:
    """Hand every block to ``chain`` (genesis skipped)."""
    for block in blocks:
        if block.hash != chain.params.genesis_hash:
            chain.add_block(block, NOW)


def block_on(chain: Chain, txs: Iterable[Transaction], fees: int, *, payout: bytes = MINER_PUBKEY) -> Block:
    """A solved block over ``txs`` on ``chain``'s tip, its coinbase claiming the subsidy plus ``fees``."""
    tip = chain.tip
    ctx = chain.header_context(tip)
    template = new_template(chain.params, tip.hash, ctx.height, ctx.expected_bits,
                            max(ctx.median_time_past + 1, tip.header.time + 1), payout, list(txs), fees)
    block = solve(template, max_tries=SOLVE_TRIES)
    assert block is not None
    return block


def active_hashes(store: ChainStore) -> list[bytes]:
    """The active chain as the store records it, genesis first."""
    hashes = []
    while (block_hash := store.hash_at(len(hashes))) is not None:
        hashes.append(block_hash)
    return hashes


def replay_active_chain(store: ChainStore, params: ChainParams = PARAMS,
                        start: tuple[int, MemoryUtxoSet] | None = None) -> tuple[list[bytes], MemoryUtxoSet]:
    """The store's active chain and its UTXO set recomputed with the pure rules.

    ``start`` = (height, UTXO set after that height) resumes an earlier replay of
    the same chain instead of starting at genesis (the caller checks the prefix).
    """
    hashes = active_hashes(store)
    assert hashes and hashes[0] == params.genesis_hash
    if start is None:
        utxo = MemoryUtxoSet()
        utxo.apply(genesis_diff(params))
        first = 1
    else:
        first, utxo = start[0] + 1, MemoryUtxoSet(start[1].coins)
    for height in range(first, len(hashes)):
        block = store.get_block(hashes[height])
        assert block is not None, f"active block at height {height} has no body"
        assert block.header.prev_hash == hashes[height - 1], f"active chain breaks at height {height}"
        check_block(block, params)
        utxo.apply(connect_block(block, height, utxo, params))
    return hashes, utxo


def assert_store_consistent(store: ChainStore, params: ChainParams = PARAMS) -> list[bytes]:
    """The tip, the active table, the UTXO set and the tx index agree with a replay; return the chain."""
    hashes, utxo = replay_active_chain(store, params)
    assert store.tip_hash() == hashes[-1]
    assert store.utxo_snapshot() == utxo.coins
    txids = {tx.txid: h for h, block_hash in enumerate(hashes) for tx in store.get_block(block_hash).txs}
    (indexed,) = store.db.execute("SELECT COUNT(*) FROM tx_index").fetchone()
    assert indexed == len(txids)
    assert all(store.tx_height(txid) == h for txid, h in txids.items())
    return hashes
