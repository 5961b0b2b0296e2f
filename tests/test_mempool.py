"""The mempool against a real chain store: conflicts, chains of spends, eviction, templates, blocks."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.chain import NOW, PARAMS, block_on, open_chain
from support.payments import dev_key, dev_outpoint, pay, premine_spend, spend_output
from zcoin.consensus import errors as E
from zcoin.consensus.primitives import OutPoint, Transaction, TxIn, TxOut
from zcoin.consensus.validation import Coin
from zcoin.mempool import (Mempool, MempoolEntry, MempoolFull, MempoolReject, TxAlreadyConfirmed, TxAlreadyKnown,
                           TxConflict, _band)


class Node:
    """A store, its chain and a mempool following it: the parts of a miner these tests need."""

    def __init__(self, path, max_bytes: int | None = None) -> None:
        self.store, self.chain = open_chain(path)
        self.mempool = Mempool(PARAMS) if max_bytes is None else Mempool(PARAMS, max_bytes=max_bytes)

    def accept(self, tx: Transaction) -> int:
        return self.mempool.accept(tx, self.store, self.chain.height, is_confirmed=self.is_confirmed)

    def is_confirmed(self, txid: bytes) -> bool:
        return self.store.tx_height(txid) is not None

    def mine(self, txs: list[Transaction] | None = None, fees: int | None = None):
        """Connect a block over ``txs`` (by default the pool's template) and update the pool."""
        if txs is None:
            txs, fees = self.mempool.select_for_block(PARAMS.max_block_bytes - 1_000)
        block = block_on(self.chain, txs, fees or 0)
        update = self.chain.add_block(block, NOW)
        assert update.connected == [block]
        dropped = self.mempool.update_for_chain(update.connected, update.disconnected, self.store,
                                                self.chain.height)
        return block, dropped

    def assert_pool_consistent(self) -> None:
        """Every pool input spends a chain coin or a pool output, and nothing twice."""
        pool = self.mempool
        spent = set()
        for txid, entry in pool.entries.items():
            for txin in entry.tx.inputs:
                assert txin.prev not in spent
                spent.add(txin.prev)
                parent = pool.entries.get(txin.prev.txid)
                if parent is not None:
                    assert txin.prev.index < len(parent.tx.outputs)
                    assert txin.prev.txid in entry.parents and txid in parent.children
                else:
                    assert self.store.get_coin(txin.prev) is not None, f"{entry.tx.txid_hex} spends a missing coin"
        assert pool.bytes == sum(e.size for e in pool.entries.values())
        assert pool.fees == sum(e.fee for e in pool.entries.values())
        assert set(pool.spends) == spent

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def node(tmp_path):
    node = Node(tmp_path / "chain.sqlite")
    yield node
    node.close()


def _full_node(tmp_path, txs: list[Transaction]) -> Node:
    """A node whose pool is exactly full with ``txs``."""
    node = Node(tmp_path / "chain.sqlite", max_bytes=sum(tx.size for tx in txs))
    for tx in txs:
        node.accept(tx)
    assert node.mempool.bytes == node.mempool.max_bytes
    return node


# --- accepting ---------------------------------------------------------------------------


def test_conflicting_transaction_is_refused_and_names_the_first_seen(node):
    first = premine_spend(0, fee=1_000)
    second = premine_spend(0, fee=50_000)  # pays more: first seen still wins
    assert node.accept(first) == 1_000
    with pytest.raises(TxConflict) as caught:
        node.accept(second)
    assert caught.value.data["conflict"] == first.txid_hex
    assert caught.value.data["txid"] == second.txid_hex
    assert first.txid_hex in str(caught.value)
    assert first.txid in node.mempool and second.txid not in node.mempool
    node.assert_pool_consistent()


def test_chained_unconfirmed_spends_are_accepted(node):
    parent = premine_spend(0, outputs=2)
    child = spend_output(parent, 1, 0, outputs=2)
    grandchild = spend_output(child, 0, 0, to=4)
    for tx in (parent, child, grandchild):
        node.accept(tx)
    entries = node.mempool.entries
    assert entries[child.txid].parents == {parent.txid}
    assert entries[parent.txid].children == {child.txid}
    assert entries[grandchild.txid].parents == {child.txid}
    assert [tx.txid for tx in node.mempool.txs()] == [parent.txid, child.txid, grandchild.txid]
    node.assert_pool_consistent()
    block, _ = node.mine()
    assert [tx.txid for tx in block.txs[1:]] == [parent.txid, child.txid, grandchild.txid]
    assert len(node.mempool) == 0


def test_spend_of_an_unknown_output_is_refused(node):
    orphan = pay([(OutPoint(bytes(32), 0), dev_key(0))], [1_000])
    with pytest.raises(E.TxMissingInput):
        node.accept(orphan)
    parent = premine_spend(0)
    node.accept(parent)
    past_the_end = pay([(OutPoint(parent.txid, len(parent.outputs)), dev_key(0))], [1_000])
    with pytest.raises(E.TxMissingInput):
        node.accept(past_the_end)
    assert set(node.mempool.entries) == {parent.txid}


def test_known_and_confirmed_transactions_are_refused(node):
    tx = premine_spend(0)
    node.accept(tx)
    with pytest.raises(TxAlreadyKnown):
        node.accept(tx)
    node.mine()
    with pytest.raises(TxAlreadyConfirmed):
        node.accept(tx)


def test_transaction_with_a_bad_signature_is_refused(node):
    good = premine_spend(0)
    forged = pay([(dev_outpoint(PARAMS, 0), dev_key(1))], [o.amount for o in good.outputs], PARAMS.dev_pubkey(1))
    with pytest.raises(E.TxBadSignature):
        node.accept(forged)
    assert len(node.mempool) == 0


# --- a full pool -------------------------------------------------------------------------


def test_full_pool_evicts_the_lowest_fee_rate_with_its_descendants(tmp_path):
    low = premine_spend(0, fee=100)
    low_child = spend_output(low, 0, 0, fee=90_000)  # pays well, but goes with its parent
    mid = premine_spend(1, fee=5_000)
    high = premine_spend(2, fee=6_000)
    node = _full_node(tmp_path, [low, low_child, mid, high])
    newcomer = premine_spend(3, fee=20_000)

    node.accept(newcomer)
    pool = node.mempool
    assert low.txid not in pool and low_child.txid not in pool
    assert {mid.txid, high.txid, newcomer.txid} <= set(pool.entries)
    assert pool.bytes <= pool.max_bytes
    node.assert_pool_consistent()
    node.close()


def test_full_pool_refuses_a_newcomer_with_the_lowest_fee_rate(tmp_path):
    node = _full_node(tmp_path, [premine_spend(0, fee=5_000), premine_spend(1, fee=6_000)])
    before = dict(node.mempool.entries)
    cheap = premine_spend(2, fee=10)
    with pytest.raises(MempoolFull) as caught:
        node.accept(cheap)
    assert caught.value.data["txid"] == cheap.txid_hex
    assert node.mempool.entries == before
    node.close()


def test_full_pool_never_evicts_a_newcomers_own_parent(tmp_path):
    parent = premine_spend(0, fee=10)  # the lowest fee rate in the pool
    other = premine_spend(1, fee=5_000)
    node = _full_node(tmp_path, [parent, other])
    child = spend_output(parent, 0, 0, fee=500_000)

    with pytest.raises(MempoolFull):
        node.accept(child)
    assert child.txid not in node.mempool
    assert parent.txid in node.mempool and other.txid in node.mempool
    node.assert_pool_consistent()
    node.mine()  # the template is still a valid block
    node.close()


# --- block templates ---------------------------------------------------------------------


def _template_pool(node: Node) -> dict[str, Transaction]:
    txs = {
        "a": premine_spend(0, fee=1_000),
        "b": premine_spend(1, fee=9_000),
        "c": premine_spend(2, fee=5_000),
        "parent": premine_spend(3, fee=100),
    }
    txs["child"] = spend_output(txs["parent"], 0, 3, fee=50_000)  # the best rate of all
    for tx in txs.values():
        node.accept(tx)
    return txs


def test_template_takes_highest_fee_rate_first_and_parents_before_children(node):
    txs = _template_pool(node)
    chosen, fees = node.mempool.select_for_block(PARAMS.max_block_bytes)
    names = {tx.txid: name for name, tx in txs.items()}
    order = [names[tx.txid] for tx in chosen]
    assert order == ["b", "c", "a", "parent", "child"]
    assert fees == 1_000 + 9_000 + 5_000 + 100 + 50_000
    block, _ = node.mine(chosen, fees)  # a valid block: the chain accepts it
    assert len(node.mempool) == 0 and block.txs[1:] == tuple(chosen)


def test_template_respects_max_bytes(node):
    txs = _template_pool(node)
    limit = txs["b"].size + txs["c"].size + txs["a"].size - 1
    chosen, fees = node.mempool.select_for_block(limit)
    assert [tx.txid for tx in chosen] == [txs["b"].txid, txs["c"].txid]
    assert sum(tx.size for tx in chosen) <= limit
    assert fees == 14_000
    assert node.mempool.select_for_block(0) == ([], 0)


def test_template_cache_follows_pool_changes(node):
    txs = _template_pool(node)
    first, _ = node.mempool.select_for_block(PARAMS.max_block_bytes)
    better = premine_spend(4, fee=99_000)
    node.accept(better)
    again, _ = node.mempool.select_for_block(PARAMS.max_block_bytes)
    assert again[0].txid == better.txid and again[1:] == first
    node.mempool.remove(txs["parent"].txid)
    after, _ = node.mempool.select_for_block(PARAMS.max_block_bytes)
    assert txs["parent"].txid not in {t.txid for t in after} and txs["child"].txid not in {t.txid for t in after}


def test_equal_fee_rates_are_taken_in_arrival_order_also_after_the_order_was_cached(node):
    first = premine_spend(0, fee=700)
    second = premine_spend(1, fee=700)
    assert first.size == second.size
    node.accept(first)
    assert node.mempool.select_for_block(PARAMS.max_block_bytes)[0] == [first]
    node.accept(second)  # merged into the cached order
    assert node.mempool.select_for_block(first.size)[0] == [first]
    assert node.mempool.select_for_block(PARAMS.max_block_bytes)[0] == [first, second]


# --- following the chain -----------------------------------------------------------------


def test_connected_block_removes_mined_and_conflicting_transactions(node):
    mined = premine_spend(0)
    mined_child = spend_output(mined, 0, 0)
    doomed = premine_spend(1, fee=1_000)
    doomed_child = spend_output(doomed, 1, 1)
    unrelated = premine_spend(2)
    for tx in (mined, mined_child, doomed, doomed_child, unrelated):
        node.accept(tx)
    rival = premine_spend(1, fee=4_000)  # never in our pool; a miner elsewhere chose it

    block, dropped = node.mine([mined, rival], 1_000 + 4_000)
    assert set(node.mempool.entries) == {mined_child.txid, unrelated.txid}
    assert node.mempool.entries[mined_child.txid].parents == set()  # its parent is confirmed now
    assert {tx.txid for tx in dropped} == {mined.txid, doomed.txid, doomed_child.txid}
    node.assert_pool_consistent()
    next_block, _ = node.mine()
    assert {tx.txid for tx in next_block.txs[1:]} == {mined_child.txid, unrelated.txid}


def test_spendable_coins_leave_out_pool_spends_and_include_pool_change(node):
    me = PARAMS.dev_pubkey(0)
    payment = pay([(dev_outpoint(PARAMS, 0), dev_key(0))], [10_000, PARAMS.dev_account_amount - 10_000 - 1_000],
                  [PARAMS.dev_pubkey(1), me])
    node.accept(payment)
    coins = node.mempool.spendable_coins(me, node.store.coins_of(me), node.chain.height)
    assert coins == [(OutPoint(payment.txid, 1), Coin(payment.outputs[1].amount, me, node.chain.height + 1, False))]

    second = pay([(OutPoint(payment.txid, 1), dev_key(0))], [20_000, payment.outputs[1].amount - 20_000 - 1_000],
                 [PARAMS.dev_pubkey(2), me])
    node.accept(second)  # back-to-back sends chain their change
    coins = node.mempool.spendable_coins(me, node.store.coins_of(me), node.chain.height)
    assert [op for op, _ in coins] == [OutPoint(second.txid, 1)]
    untouched = dev_outpoint(PARAMS, 5)
    assert node.mempool.spendable_coins(PARAMS.dev_pubkey(5), node.store.coins_of(PARAMS.dev_pubkey(5)),
                                        node.chain.height) == [(untouched, node.store.get_coin(untouched))]


def test_spendable_coins_leave_out_immature_coinbase_outputs(node):
    miner = PARAMS.dev_pubkey(8)
    block = block_on(node.chain, [], 0, payout=miner)
    node.chain.add_block(block, NOW)
    coinbase_coin = OutPoint(block.txs[0].txid, 0)

    def spendable():
        return [op for op, _ in node.mempool.spendable_coins(miner, node.store.coins_of(miner), node.chain.height)]

    assert coinbase_coin in [op for op, _ in node.store.coins_of(miner)]
    spend = pay([(coinbase_coin, dev_key(8))], [PARAMS.subsidy(1) - 1_000])
    while node.chain.height + 1 - 1 < PARAMS.coinbase_maturity - 1:
        node.mine([], 0)
    assert spendable() == [dev_outpoint(PARAMS, 8)]  # a block on this tip could not spend it yet
    with pytest.raises(E.TxImmatureSpend):
        node.accept(spend)
    node.mine([], 0)
    assert spendable() == [dev_outpoint(PARAMS, 8), coinbase_coin]
    node.accept(spend)  # the pool agrees it is mature now


# --- the template order cache against a from-scratch greedy choice -------------------------


def _template_universe() -> list[Transaction]:
    """Parents, children and grandchildren of six accounts, plus a rival spend; fees chosen to tie and differ."""
    txs = []
    fees = [(700, 5_000, 300), (700, 100, 90_000), (700, 2_500, 2_500), (10, 10, 60_000),
            (40_000, 2_500, 1_000), (700, 3_000, 300)]
    for account, (fee_parent, fee_child, fee_grandchild) in enumerate(fees):
        parent = premine_spend(account, fee=fee_parent, outputs=2)
        child = spend_output(parent, 0, account, fee=fee_child, outputs=2)
        grandchild = spend_output(child, 1, account, fee=fee_grandchild)
        txs += [parent, child, grandchild]
    txs.append(premine_spend(0, fee=80_000))  # conflicts with account 0's parent
    return txs


TEMPLATE_UNIVERSE = _template_universe()


def _greedy_template(pool: Mempool, max_bytes: int) -> list[bytes]:
    """The best eligible (parents chosen, fits) transaction, again and again: what the cached order must give."""
    chosen: list[bytes] = []
    room = max_bytes
    while True:
        eligible = [e for txid, e in pool.entries.items()
                    if txid not in chosen and e.parents <= set(chosen) and e.size <= room]
        if not eligible:
            return chosen
        best = min(eligible, key=lambda e: e.sort_key)
        chosen.append(best.tx.txid)
        room -= best.size


@pytest.fixture(scope="module")
def genesis_store(tmp_path_factory):
    store, _ = open_chain(tmp_path_factory.mktemp("template") / "chain.sqlite")
    yield store
    store.close()


operations = st.lists(st.one_of(
    st.tuples(st.just("accept"), st.integers(0, len(TEMPLATE_UNIVERSE) - 1)),
    st.tuples(st.just("remove"), st.integers(0, len(TEMPLATE_UNIVERSE) - 1)),
    st.tuples(st.just("select"), st.integers(0, 3_000)),
    st.tuples(st.just("worst"), st.just(0)),
), max_size=40)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_template_and_eviction_order_after_any_pool_changes_equal_a_fresh_choice(genesis_store, ops):
    pool = Mempool(PARAMS)
    for op, arg in ops:
        if op == "accept":
            try:
                pool.accept(TEMPLATE_UNIVERSE[arg], genesis_store, 0)
            except (E.ValidationError, MempoolReject):
                pass
        elif op == "remove":
            pool.remove(TEMPLATE_UNIVERSE[arg].txid)
        elif op == "worst":  # what a full pool evicts first, read from the cached order
            if pool.entries:
                assert pool._worst() is max(pool.entries.values(), key=lambda e: e.sort_key)
        else:
            chosen, fees = pool.select_for_block(arg)
            assert [tx.txid for tx in chosen] == _greedy_template(pool, arg)
            assert fees == sum(pool.entries[tx.txid].fee for tx in chosen)
        _assert_bands_hold_the_pool(pool)
    chosen, _ = pool.select_for_block(PARAMS.max_block_bytes)
    assert [tx.txid for tx in chosen] == _greedy_template(pool, PARAMS.max_block_bytes)


def _assert_bands_hold_the_pool(pool: Mempool) -> None:
    """The fee-rate bands a template reads hold every entry once, each band in arrival order, with its bytes."""
    expected: dict[int, list[MempoolEntry]] = {}
    for entry in pool.entries.values():
        expected.setdefault(entry.band, []).append(entry)
    assert {band: list(entries.values()) for band, entries in pool._bands.items()} == expected
    assert pool._band_bytes == {band: sum(e.size for e in entries) for band, entries in expected.items()}


@given(st.floats(0, 1e9, allow_nan=False), st.floats(0, 1e9, allow_nan=False))
def test_a_higher_fee_rate_is_never_in_a_worse_band(rate, other):
    low, high = sorted((rate, other))
    assert _band(-high) <= _band(-low)


# --- the best part of a large pool: the same template as the full order ----------------------


def test_a_large_pool_at_one_fee_rate_keeps_its_full_order_for_templates():
    """When the best bands are most of the pool, sorting them is no saving: the full order is built and kept."""
    pool = _large_pool(4000, seed=5, children=0.0, fixed_fee=1_000)
    assert len(pool._bands) == 1
    assert pool._best_part(20_000) is None
    chosen, fees = pool.select_for_block(20_000)
    assert pool._order is not None
    assert [tx.txid for tx in chosen] == [tx.txid for tx in pool.txs()][:len(chosen)]  # first come, first served
    assert (chosen, fees) == pool._select(sorted(pool.entries.values(), key=lambda e: e.sort_key), 20_000,
                                          partial=False)


def _large_pool(count: int, seed: int, children: float, child_fee_boost: int = 1, fixed_fee: int | None = None) -> Mempool:
    """``count`` unverified transfers inserted directly (as bench/bench_chain.py does), the fraction ``children``
    of them spending a recent one; each child pays ``child_fee_boost`` times a plain fee."""
    rng = random.Random(seed)
    pool = Mempool(PARAMS, max_bytes=1 << 40)
    recent: list[Transaction] = []
    for n in range(count):
        parent = recent[rng.randrange(len(recent))] if recent and rng.random() < children else None
        prev = OutPoint(parent.txid, n) if parent else OutPoint(rng.randbytes(32), 0)
        tx = Transaction(1, (TxIn(prev, bytes(64)),), (TxOut(rng.randrange(10**6, 10**9), PARAMS.dev_pubkey(0)),))
        fee = fixed_fee or rng.randrange(100, 100_000) * (child_fee_boost if parent else 1)
        pool._insert(MempoolEntry(tx, fee, tx.size, next(pool._seq)))
        recent = (recent + [tx])[-50:]
    return pool


@pytest.mark.parametrize("children, boost, runs_out", [(0.1, 1, False), (0.6, 1000, True)],
                         ids=["plain", "children-outbid-parents"])
def test_a_template_from_the_best_part_of_a_large_pool_equals_the_one_from_the_full_order(children, boost, runs_out):
    """With children outbidding every parent, the best part is mostly children waiting for parents outside it:
    it runs out and the full order (then kept) decides.  Either way the template is the full order's."""
    pool = _large_pool(4000, seed=3, children=children, child_fee_boost=boost)
    rng = random.Random(4)
    for max_bytes in (60_000, 2_000, 20_000, 2_000):
        pool._order = None
        best = pool._best_part(max_bytes)
        assert best is not None and len(best) < len(pool)  # the large-pool path is the one tested
        chosen, fees = pool.select_for_block(max_bytes)
        full = pool._select(sorted(pool.entries.values(), key=lambda e: e.sort_key), max_bytes, partial=False)
        assert (chosen, fees) == full and chosen
        assert (pool._order is not None) == runs_out
        # A block takes the template, some others leave with their descendants: the bands follow.
        for tx in chosen:
            pool.remove(tx.txid, with_descendants=False)
        for txid in rng.sample(sorted(pool.entries), 200):
            pool.remove(txid)
        _assert_bands_hold_the_pool(pool)
