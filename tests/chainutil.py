"""Helpers for the storage, chain and mempool tests: real blocks, real stores, replays.

:class:`Builder` makes fully valid regtest blocks in memory (its own UTXO set,
checked with the pure consensus code), so a test can grow a main chain, fork it
at any height, and hand the blocks to a :class:`~zcoin.chain.Chain` in any order.
:func:`replay_active_chain` recomputes the UTXO set of a store's active chain
from genesis with :class:`MemoryUtxoSet` and :func:`connect_block`; it is the
reference every on-disk UTXO set is compared with.

A plain module (not a conftest): the tests import it by name.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from zcoin.chain import Chain, OrphanPool
from zcoin.consensus.builders import new_template, sign_transaction, solve
from zcoin.consensus.params import REGTEST, ChainParams, dev_secret_key
from zcoin.consensus.primitives import Block, OutPoint, Transaction, TxOut
from zcoin.consensus.validation import (
    Coin,
    MemoryUtxoSet,
    UtxoDiff,
    UtxoView,
    check_block,
    connect_block,
    genesis_diff,
    median_time_past,
)
from zcoin.storage import ChainStore

PARAMS = REGTEST
DEV_KEYS = {PARAMS.dev_pubkey(i): dev_secret_key(i) for i in range(PARAMS.dev_accounts)}
MINER_PUBKEY = PARAMS.dev_pubkey(9)  # coinbases pay account 9 (immature anyway, so never spent here)
NOW = PARAMS.genesis_time + 10_000_000  # a wall clock far enough ahead of every block time used here
FEE = 1_000


def block_fees(txs: list[Transaction], view: UtxoView, *, missing_ok: bool = False) -> int:
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


def dev_outpoint(index: int, params: ChainParams = PARAMS) -> OutPoint:
    """The genesis premine output of development account ``index``."""
    return OutPoint(params.genesis.txs[0].txid, index)


def pay(spends: list[tuple[OutPoint, int]] | tuple[OutPoint, int], amounts: Iterable[int],
        to: Iterable[bytes] | bytes | None = None) -> Transaction:
    """A signed transaction spending ``spends`` (outpoint, dev account index) into ``amounts``.

    Outputs go to ``to`` (one key for all, or one per amount; by default back to
    the first spender's account).
    """
    if isinstance(spends, tuple):
        spends = [spends]
    signed = [(op, dev_secret_key(account)) for op, account in spends]
    amounts = list(amounts)
    if to is None:
        to = PARAMS.dev_pubkey(spends[0][1])
    payees = [to] * len(amounts) if isinstance(to, bytes) else list(to)
    return sign_transaction(signed, [TxOut(a, p) for a, p in zip(amounts, payees, strict=True)])


def premine_spend(account: int, fee: int = FEE, outputs: int = 2, to: bytes | None = None) -> Transaction:
    """Account ``account`` spends its whole premine into ``outputs`` equal-ish outputs minus ``fee``."""
    total = PARAMS.dev_account_amount - fee
    amounts = [total // outputs] * (outputs - 1)
    amounts.append(total - sum(amounts))
    return pay((dev_outpoint(account), account), amounts, to)


def spend_output(tx: Transaction, index: int, account: int, fee: int = FEE, outputs: int = 1,
                 to: bytes | None = None) -> Transaction:
    """Spend output ``index`` of ``tx`` (owned by dev ``account``) minus ``fee``."""
    total = tx.outputs[index].amount - fee
    amounts = [total // outputs] * (outputs - 1)
    amounts.append(total - sum(amounts))
    return pay((OutPoint(tx.txid, index), account), amounts, to)


class Builder:
    """A chain of valid regtest blocks kept in memory; forkable at any height.

    Every block it makes is checked with ``check_block`` and ``connect_block``
    against its own UTXO set, so what it hands to a ``Chain`` is valid unless a
    test breaks it on purpose (``unchecked=True``).
    """

    def __init__(self, params: ChainParams = PARAMS, tag: bytes = b"") -> None:
        self.params = params
        self.tag = tag  # extra nonce in every coinbase: two builders never make the same block
        self.blocks: list[Block] = [params.genesis]
        self.utxo = MemoryUtxoSet()
        self.diffs: list[UtxoDiff] = [genesis_diff(params)]
        self.utxo.apply(self.diffs[0])

    @property
    def height(self) -> int:
        return len(self.blocks) - 1

    @property
    def tip(self) -> Block:
        return self.blocks[-1]

    def fork(self, height: int, tag: bytes) -> Builder:
        """A new builder sharing this chain up to ``height`` whose blocks carry ``tag``."""
        other = Builder(self.params, tag)
        other.blocks = self.blocks[:height + 1]
        other.diffs = self.diffs[:height + 1]
        other.utxo = MemoryUtxoSet(self.utxo.coins)
        for diff in reversed(self.diffs[height + 1:]):
            other.utxo.revert(diff)
        return other

    def fees(self, txs: Iterable[Transaction]) -> int:
        """Inputs minus outputs of ``txs`` in order, coins read from the tip or earlier ``txs``."""
        return block_fees(list(txs), self.utxo, missing_ok=True)

    def make_block(self, txs: Iterable[Transaction] = (), *, fees: int | None = None) -> Block:
        """A solved child of the tip over ``txs`` (not appended)."""
        txs = list(txs)
        parent = self.tip
        height = self.height + 1
        mtp = median_time_past(b.header.time for b in self.blocks[-self.params.median_time_span:])
        time = max(mtp + 1, parent.header.time + 1)
        template = new_template(self.params, parent.hash, height, self.params.genesis_bits, time, MINER_PUBKEY,
                                txs, self.fees(txs) if fees is None else fees)
        template.extra_nonce = self.tag
        block = solve(template, max_tries=1 << 16)
        assert block is not None, "regtest target: a nonce should have been found"
        return block

    def append(self, block: Block, *, unchecked: bool = False) -> Block:
        """Add ``block`` on the tip; unless ``unchecked``, it must pass every rule."""
        height = self.height + 1
        if unchecked:
            created = [(OutPoint(tx.txid, i), Coin(o.amount, o.pubkey, height, tx.is_coinbase))
                       for tx in block.txs for i, o in enumerate(tx.outputs)]
            diff = UtxoDiff((), tuple(created))
        else:
            check_block(block, self.params)
            diff = connect_block(block, height, self.utxo, self.params)
        self.utxo.apply(diff)
        self.diffs.append(diff)
        self.blocks.append(block)
        return block

    def mine(self, txs: Iterable[Transaction] = (), *, unchecked: bool = False) -> Block:
        """Make and append the next block over ``txs``."""
        return self.append(self.make_block(txs), unchecked=unchecked)

    def mine_empty(self, count: int) -> list[Block]:
        """Append ``count`` coinbase-only blocks."""
        return [self.mine() for _ in range(count)]

    def coins(self) -> dict[OutPoint, Coin]:
        return dict(self.utxo.coins)


# --- stores and chains ---------------------------------------------------------------


def open_chain(path: str | Path, params: ChainParams = PARAMS, *, orphans: OrphanPool | None = None,
               synchronous: str = "FULL") -> tuple[ChainStore, Chain]:
    """A store at ``path`` and the chain manager over it."""
    store = ChainStore(path, params, synchronous=synchronous)
    return store, Chain(store, params, orphans=orphans)


def add_all(chain: Chain, blocks: Iterable[Block]) -> None:
    """Hand every block to ``chain`` (genesis skipped)."""
    for block in blocks:
        if block.hash != chain.params.genesis_hash:
            chain.add_block(block, NOW)


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


def block_on(chain: Chain, txs: Iterable[Transaction], fees: int, *, payout: bytes = MINER_PUBKEY) -> Block:
    """A solved block over ``txs`` on ``chain``'s tip, its coinbase claiming the subsidy plus ``fees``."""
    tip = chain.tip
    ctx = chain.header_context(tip)
    template = new_template(chain.params, tip.hash, ctx.height, ctx.expected_bits,
                            max(ctx.median_time_past + 1, tip.header.time + 1), payout, list(txs), fees)
    block = solve(template, max_tries=1 << 16)
    assert block is not None
    return block
