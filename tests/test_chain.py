"""The chain manager on real SQLite stores: fork choice, reorgs, invalid branches, orphans, headers-first."""

from __future__ import annotations

import random
import sqlite3
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.chain import NOW, PARAMS, Builder, add_all, assert_store_consistent, open_chain
from support.payments import dev_key, dev_outpoint, pay, premine_spend, spend_output
from zcoin.blocktree import MAX_LOCATOR_HASHES
from zcoin.chain import BlockInvalidAncestor, Chain, OrphanPool, UnknownParent
from zcoin.consensus import errors as E
from zcoin.consensus.pow import bits_to_target, block_work, hash_meets_target
from zcoin.consensus.primitives import Block, OutPoint, Transaction
from zcoin.mempool import Mempool
from zcoin.storage import HAVE_DATA, HEADER_ONLY, INVALID

HEADERS_CAP = 2000  # Bitcoin's cap on one headers reply (DESIGN.md section 2)


def _follow(mempool: Mempool, store, chain, update) -> None:
    mempool.update_for_chain(update.connected, update.disconnected, store, chain.height)


def _assert_flushed_consistent(store) -> None:
    """``assert_store_consistent``, which counts the tx_index table itself: the cache is flushed first."""
    store.flush()
    assert_store_consistent(store)


# --- reorganisation ---------------------------------------------------------------------


@dataclass
class ReorgScenario:
    """Main chain A1..A3 and a heavier branch B2..B4 forking at A1, with the transactions that matter."""

    main: Builder
    side: Builder
    shared: Transaction  # in A2 and in B2: confirmed on both chains
    only_main: Transaction  # in A3 only, still valid on the side chain
    child_of_a1: Transaction  # in A2 only, spends A1's output: still valid on the side chain
    conflicted: Transaction  # in A3; B2 spends the same coin differently
    conflicting: Transaction  # in B2


def _reorg_scenario() -> ReorgScenario:
    main = Builder()
    a1_tx = premine_spend(0)
    main.mine([a1_tx])
    side = main.fork(1, b"side")
    shared = premine_spend(1)
    child_of_a1 = spend_output(a1_tx, 0, 0, outputs=2)
    main.mine([shared, child_of_a1])
    only_main = premine_spend(2)
    conflicted = premine_spend(3, fee=1_000)
    main.mine([only_main, conflicted])
    conflicting = premine_spend(3, fee=2_000)
    side.mine([shared, conflicting])
    side.mine_empty(2)
    return ReorgScenario(main, side, shared, only_main, child_of_a1, conflicted, conflicting)


@pytest.mark.parametrize("delivery", ["in_order", "as_branch"])
def test_reorg_returns_transactions_to_mempool(tmp_path, delivery):
    s = _reorg_scenario()
    store, chain = open_chain(tmp_path / "chain.sqlite")
    mempool = Mempool(PARAMS)
    for block in s.main.blocks[1:]:
        for tx in block.txs[1:]:
            mempool.accept(tx, store, chain.height)
        _follow(mempool, store, chain, chain.add_block(block, NOW))
    assert len(mempool) == 0 and chain.tip.hash == s.main.tip.hash

    b2, b3, b4 = s.side.blocks[2:]
    if delivery == "in_order":
        assert chain.add_block(b2, NOW).connected == []  # less work
        assert chain.add_block(b3, NOW).connected == []  # equal work: the first seen stays
        assert chain.tip.hash == s.main.tip.hash
        update = chain.add_block(b4, NOW)
    else:
        first = chain.add_block(b4, NOW)
        assert first.orphaned and first.missing == b3.hash
        assert chain.add_block(b3, NOW).missing == b2.hash
        update = chain.add_block(b2, NOW)
        assert len(chain.orphans) == 0

    assert [b.hash for b in update.disconnected] == [s.main.blocks[3].hash, s.main.blocks[2].hash]
    assert [b.hash for b in update.connected] == [b2.hash, b3.hash, b4.hash]
    assert update.reorg_depth == 2
    assert chain.tip.hash == b4.hash and chain.height == 4
    assert store.utxo_snapshot() == s.side.coins()
    _assert_flushed_consistent(store)

    dropped = mempool.update_for_chain(update.connected, update.disconnected, store, chain.height)
    assert s.only_main.txid in mempool
    assert s.child_of_a1.txid in mempool
    assert s.shared.txid not in mempool  # confirmed in B2
    assert s.conflicted.txid not in mempool  # B2 spends the same coin
    assert s.conflicted.txid in {tx.txid for tx in dropped}
    assert len(mempool) == 2
    store.close()


def test_equal_work_keeps_the_first_seen_tip(tmp_path):
    main = Builder()
    main.mine_empty(2)
    side = main.fork(0, b"side")
    side.mine([premine_spend(0)])
    side.mine_empty(1)

    store_a, chain_a = open_chain(tmp_path / "a.sqlite")
    add_all(chain_a, main.blocks + side.blocks)
    store_b, chain_b = open_chain(tmp_path / "b.sqlite")
    add_all(chain_b, side.blocks + main.blocks)

    assert chain_a.tip.hash == main.tip.hash
    assert chain_b.tip.hash == side.tip.hash
    assert chain_a.tip.chain_work == chain_b.tip.chain_work
    assert store_a.utxo_snapshot() == main.coins()
    assert store_b.utxo_snapshot() == side.coins()
    store_a.close()
    store_b.close()
    store_a, chain_a = open_chain(tmp_path / "a.sqlite")  # a restart does not flip the tie
    assert chain_a.tip.hash == main.tip.hash
    store_a.close()


def _double_spend_block(builder: Builder, account: int) -> Block:
    """A block on ``builder`` spending premine ``account`` again: fine alone, invalid on this chain."""
    again = premine_spend(account, fee=7_777)
    return builder.make_block([again], fees=7_777)


def test_invalid_block_in_a_heavier_branch_is_marked_and_its_descendants_refused(tmp_path):
    main = Builder()
    main.mine([premine_spend(1)])
    main.mine_empty(1)
    side = main.fork(0, b"side")
    side.mine([premine_spend(5)])
    side.mine_empty(1)
    bad = side.append(_double_spend_block(side, 5), unchecked=True)  # height 3: more work than main's 2
    child = side.mine(unchecked=True)

    store, chain = open_chain(tmp_path / "chain.sqlite")
    add_all(chain, main.blocks)
    add_all(chain, side.blocks[1:3])
    assert chain.tip.hash == main.tip.hash

    with pytest.raises(E.BlockBadTx) as caught:
        chain.add_block(bad, NOW)
    assert isinstance(caught.value.tx_error, E.TxMissingInput)
    assert chain.index[bad.hash].status == INVALID
    # Back on the first seen of the two equal-work valid chains.
    assert chain.tip.hash == main.tip.hash
    assert store.utxo_snapshot() == main.coins()
    _assert_flushed_consistent(store)

    with pytest.raises(BlockInvalidAncestor):
        chain.add_block(child, NOW)
    with pytest.raises(BlockInvalidAncestor):
        chain.add_header(child.header, NOW)
    with pytest.raises(BlockInvalidAncestor):
        chain.add_block(bad, NOW)
    assert child.hash not in chain.index and len(chain.orphans) == 0
    assert chain.tip.hash == main.tip.hash
    store.close()

    store, chain = open_chain(tmp_path / "chain.sqlite")
    assert chain.index[bad.hash].status == INVALID  # remembered across a restart
    assert chain.tip.hash == main.tip.hash
    with pytest.raises(BlockInvalidAncestor):
        chain.add_block(child, NOW)
    store.close()


def test_orphans_waiting_on_an_invalid_block_are_dropped_with_it(tmp_path):
    main = Builder()
    main.mine_empty(2)
    side = main.fork(0, b"side")
    side.mine([premine_spend(5)])
    side.mine_empty(1)
    bad = side.append(_double_spend_block(side, 5), unchecked=True)
    child = side.mine(unchecked=True)
    grandchild = side.mine(unchecked=True)
    store, chain = open_chain(tmp_path / "chain.sqlite")
    add_all(chain, main.blocks)
    assert chain.add_block(child, NOW).missing == bad.hash
    assert chain.add_block(grandchild, NOW).missing == bad.hash
    add_all(chain, side.blocks[1:3])

    with pytest.raises(E.BlockBadTx):
        chain.add_block(bad, NOW)
    assert len(chain.orphans) == 0
    assert chain.tip.hash == main.tip.hash
    store.close()


def test_node_stays_on_the_best_valid_part_of_a_branch_with_an_invalid_block(tmp_path):
    main = Builder()
    main.mine_empty(2)
    side = main.fork(0, b"side")
    side.mine([premine_spend(5)])
    side.mine_empty(2)  # height 3: more work than main, and valid
    bad = side.append(_double_spend_block(side, 5), unchecked=True)
    store, chain = open_chain(tmp_path / "chain.sqlite")
    add_all(chain, main.blocks)
    add_all(chain, side.blocks[1:4])
    assert chain.tip.hash == side.blocks[3].hash

    with pytest.raises(E.InvalidBlock):
        chain.add_block(bad, NOW)
    assert chain.tip.hash == side.blocks[3].hash
    assert store.utxo_snapshot() == _coins_at(side, 3)
    _assert_flushed_consistent(store)
    store.close()


def _coins_at(builder: Builder, height: int) -> dict:
    return builder.fork(height, b"").coins()


def test_failed_reorg_found_while_connecting_leaves_chain_and_mempool_as_they_were(tmp_path):
    main = Builder()
    main.mine([premine_spend(1)])
    main.mine_empty(1)
    side = main.fork(0, b"side")
    waiting = premine_spend(4, fee=1_000)  # in the pool; the side branch spends the same coin
    side.mine([premine_spend(4, fee=3_000), premine_spend(5)])
    side.mine_empty(1)
    side.append(_double_spend_block(side, 5), unchecked=True)
    side.mine(unchecked=True)

    store, chain = open_chain(tmp_path / "chain.sqlite")
    mempool = Mempool(PARAMS)
    add_all(chain, main.blocks)
    mempool.accept(waiting, store, chain.height)
    # Headers first, then the bodies from the top: the branch becomes complete with its first block.
    for block in side.blocks[1:]:
        chain.add_header(block.header, NOW)
    for block in side.blocks[:1:-1]:
        assert chain.add_block(block, NOW).connected == []
    update = chain.add_block(side.blocks[1], NOW)

    assert [h for h, _ in update.invalid] == [side.blocks[3].hash]
    assert chain.tip.hash == main.tip.hash
    assert update.connected == [] and update.disconnected == []
    _follow(mempool, store, chain, update)
    assert waiting.txid in mempool
    assert store.utxo_snapshot() == main.coins()
    _assert_flushed_consistent(store)
    store.close()


# --- orphans ------------------------------------------------------------------------------


def test_orphan_reports_its_first_unknown_ancestor(tmp_path):
    builder = Builder()
    builder.mine([premine_spend(0)])
    builder.mine_empty(4)
    b = builder.blocks
    store, chain = open_chain(tmp_path / "chain.sqlite")

    assert chain.add_block(b[5], NOW).missing == b[4].hash
    assert chain.add_block(b[3], NOW).missing == b[2].hash
    update = chain.add_block(b[4], NOW)
    assert update.orphaned and update.missing == b[2].hash
    assert chain.add_block(b[4], NOW).known
    assert chain.has_block(b[4].hash) and not chain.has_block(b[2].hash)
    assert chain.add_block(b[1], NOW).connected == [b[1]]
    assert len(chain.orphans) == 3
    update = chain.add_block(b[2], NOW)
    assert [blk.hash for blk in update.connected] == [blk.hash for blk in b[2:]]
    assert len(chain.orphans) == 0
    assert chain.tip.hash == b[5].hash
    store.close()


def test_orphan_pool_bound_evicts_the_oldest(tmp_path):
    builder = Builder()
    builder.mine_empty(5)
    b = builder.blocks
    pool = OrphanPool(max_blocks=3)
    store, chain = open_chain(tmp_path / "chain.sqlite", orphans=pool)
    assert chain.orphans is pool
    for block in (b[5], b[4], b[3], b[2]):
        assert chain.add_block(block, NOW).orphaned
    assert len(pool) == 3 and b[5].hash not in pool  # the oldest went
    update = chain.add_block(b[1], NOW)
    assert [blk.hash for blk in update.connected] == [blk.hash for blk in b[1:5]]
    assert chain.tip.hash == b[4].hash
    assert chain.add_block(b[5], NOW).connected == [b[5]]
    store.close()


def test_orphan_pool_byte_bound_evicts_the_oldest():
    builder = Builder()
    builder.mine([premine_spend(0)])
    builder.mine([premine_spend(1)])
    builder.mine([premine_spend(2)])
    blocks = builder.blocks[1:]
    pool = OrphanPool(max_blocks=100, max_bytes=blocks[1].size + blocks[2].size)
    for block in blocks:
        pool.add(block)
    assert list(pool.blocks) == [blocks[1].hash, blocks[2].hash]
    assert pool.bytes == blocks[1].size + blocks[2].size
    assert pool.take_children(blocks[1].hash) == [blocks[2]]
    assert pool.bytes == blocks[1].size and len(pool) == 1


def _orphan_scenario() -> tuple[list[Block], Builder]:
    main = Builder()
    main.mine([premine_spend(0)])
    main.mine([premine_spend(1), premine_spend(2)])
    main.mine_empty(1)
    side = main.fork(3, b"side")
    side.mine([premine_spend(6, fee=5_000)])
    side.mine_empty(1)  # height 5: a branch that may win for a while, depending on the order
    tx = premine_spend(6)
    main.mine([tx])
    main.mine([spend_output(tx, 1, 6)])
    main.mine_empty(2)  # height 8
    return main.blocks[1:] + side.blocks[4:], main


ORPHAN_BLOCKS, ORPHAN_MAIN = _orphan_scenario()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.permutations(ORPHAN_BLOCKS))
def test_blocks_in_any_order_end_in_the_same_tip_and_utxo_set(order):
    with tempfile.TemporaryDirectory() as directory:
        store, chain = open_chain(Path(directory) / "chain.sqlite", synchronous="OFF")
        for block in order:
            chain.add_block(block, NOW)
        assert chain.tip.hash == ORPHAN_MAIN.tip.hash
        assert store.utxo_snapshot() == ORPHAN_MAIN.coins()
        assert len(chain.orphans) == 0
        _assert_flushed_consistent(store)
        store.close()


# --- headers first --------------------------------------------------------------------------


def _chain_of(blocks: int, with_txs: bool = True) -> Builder:
    builder = Builder()
    for height in range(1, blocks + 1):
        builder.mine([premine_spend(height % 8)] if with_txs and height <= 8 else [])
    return builder


def test_headers_first_lists_missing_bodies_in_order_and_connects_them(tmp_path):
    builder = _chain_of(20)
    store, chain = open_chain(tmp_path / "chain.sqlite")
    for block in builder.blocks[1:]:
        assert chain.add_header(block.header, NOW).status == HEADER_ONLY
    wanted = [b.hash for b in builder.blocks[1:]]
    assert chain.height == 0
    assert chain.best_header.hash == builder.tip.hash
    assert chain.blocks_to_fetch() == wanted
    assert chain.blocks_to_fetch(limit=5) == wanted[:5]

    for block in builder.blocks[1:]:
        assert chain.add_block(block, NOW).connected == [block]
    assert chain.tip.hash == builder.tip.hash
    assert chain.blocks_to_fetch() == []
    assert store.utxo_snapshot() == builder.coins()
    store.close()

    store, chain = open_chain(tmp_path / "chain.sqlite")  # headers and bodies were stored
    assert chain.tip.hash == builder.tip.hash and chain.blocks_to_fetch() == []
    store.close()


def test_blocks_to_fetch_still_lists_the_gap_when_later_bodies_came_first(tmp_path):
    builder = _chain_of(10)
    store, chain = open_chain(tmp_path / "chain.sqlite")
    for block in builder.blocks[1:]:
        chain.add_header(block.header, NOW)
    for block in builder.blocks[6:]:
        chain.add_block(block, NOW)
    assert chain.height == 0
    assert chain.blocks_to_fetch() == [b.hash for b in builder.blocks[1:6]]
    assert all(chain.index[b.hash].status == HAVE_DATA for b in builder.blocks[6:])

    order = builder.blocks[1:6]
    random.Random(3).shuffle(order)
    for block in order:
        chain.add_block(block, NOW)
    assert chain.tip.hash == builder.tip.hash
    assert chain.blocks_to_fetch() == []
    assert store.utxo_snapshot() == builder.coins()
    store.close()


def test_a_body_stored_ahead_of_its_parents_bodies_survives_a_restart_with_their_headers(tmp_path):
    """Headers without bodies live in memory, but a stored block's ancestors are stored with it
    (as headers): the index loads after a restart and the gap fills as before."""
    builder = _chain_of(10)
    path = tmp_path / "chain.sqlite"
    store, chain = open_chain(path)
    for block in builder.blocks[1:]:
        chain.add_header(block.header, NOW)
    for block in builder.blocks[6:8]:
        chain.add_block(block, NOW)  # ahead of the bodies of 1..5: stored, not connected
    store.close()

    store, chain = open_chain(path)
    assert chain.height == 0
    assert [chain.index[b.hash].status for b in builder.blocks[1:8]] == [HEADER_ONLY] * 5 + [HAVE_DATA] * 2
    assert builder.blocks[8].hash not in chain.index  # a header with no stored descendant is not kept
    assert chain.blocks_to_fetch(target=chain.index[builder.blocks[7].hash]) == [b.hash for b in builder.blocks[1:6]]
    for block in builder.blocks[1:6]:
        chain.add_block(block, NOW)
    assert chain.tip.hash == builder.blocks[7].hash
    store.close()


def test_a_header_stored_alone_gets_its_body_and_undo_data_when_its_block_connects(tmp_path):
    """A store of schema version 2 holds every header a sync indexed; connecting such a block completes its row."""
    builder = _chain_of(3)
    path = tmp_path / "chain.sqlite"
    store, chain = open_chain(path)
    add_all(chain, builder.blocks[:3])
    tip = builder.blocks[3]
    store.put_header(tip.header, 3, chain.tip.chain_work + block_work(tip.header.bits))
    store.close()

    store, chain = open_chain(path)
    assert chain.index[tip.hash].status == HEADER_ONLY
    assert chain.add_block(tip, NOW).connected == [tip]
    store.close()
    store, chain = open_chain(path)  # the body is there for the replay of the blocks after the last flush
    assert chain.tip.hash == tip.hash and chain.index[tip.hash].status == HAVE_DATA
    assert store.get_block(tip.hash) == tip and store.get_undo(tip.hash) is not None
    store.close()


def test_a_batch_of_blocks_is_one_commit_and_a_failure_in_it_rolls_all_of_it_back(tmp_path):
    builder = _chain_of(12, with_txs=True)
    store, chain = open_chain(tmp_path / "chain.sqlite")
    add_all(chain, builder.blocks[:3])
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    with chain.batch():
        for block in builder.blocks[3:8]:
            assert chain.add_block(block, NOW).connected == [block]
    assert statements.count("COMMIT") == 1 and chain.height == 7

    with pytest.raises(RuntimeError, match="disk gone"):
        with chain.batch():
            for block in builder.blocks[8:11]:
                chain.add_block(block, NOW)
            raise RuntimeError("disk gone")  # as a write failing after three blocks
    assert chain.height == 7 and chain.tip.hash == builder.blocks[7].hash
    assert all(b.hash not in chain.index for b in builder.blocks[8:11])
    assert store.get_block(builder.blocks[8].hash) is None
    add_all(chain, builder.blocks[8:])
    assert chain.tip.hash == builder.tip.hash
    store.flush()
    assert store.utxo_snapshot() == builder.coins()
    assert_store_consistent(store)
    store.close()


def test_blocks_to_fetch_toward_a_chosen_tip_skips_what_it_is_told_and_follows_reorgs(tmp_path):
    # A node asks per peer: the best header (a chain only one peer claims) must not hide
    # another peer's branch, and hashes a peer failed to send are left out.
    ours = _chain_of(12)
    theirs = ours.fork(4, b"theirs")
    theirs.mine_empty(12)  # height 16: the best header
    store, chain = open_chain(tmp_path / "chain.sqlite")
    add_all(chain, ours.blocks[:7])  # active chain to height 6
    for block in ours.blocks[7:]:
        chain.add_header(block.header, NOW)
    for block in theirs.blocks[5:]:
        chain.add_header(block.header, NOW)
    assert chain.best_header.hash == theirs.tip.hash
    assert chain.blocks_to_fetch() == [b.hash for b in theirs.blocks[5:]]
    ours_tip = chain.index[ours.tip.hash]
    assert chain.blocks_to_fetch(target=ours_tip) == [b.hash for b in ours.blocks[7:]]
    assert chain.blocks_to_fetch(3, target=ours_tip, skip={ours.blocks[8].hash}) == \
        [ours.blocks[7].hash, ours.blocks[9].hash, ours.blocks[10].hash]
    assert chain.blocks_to_fetch(target=ours_tip, stop={ours.blocks[9].hash}) == \
        [ours.blocks[7].hash, ours.blocks[8].hash]  # nothing past a body its source failed to send

    # The remembered path shrinks as the active chain grows along it...
    add_all(chain, ours.blocks[7:10])
    assert chain.blocks_to_fetch(target=ours_tip) == [b.hash for b in ours.blocks[10:]]
    # ...and is walked again when the active chain leaves it: their branch from the fork.
    theirs_tip = chain.index[theirs.tip.hash]
    assert chain.blocks_to_fetch(target=theirs_tip) == [b.hash for b in theirs.blocks[5:]]
    add_all(chain, theirs.blocks[5:])
    assert chain.tip.hash == theirs.tip.hash
    assert chain.blocks_to_fetch(target=theirs_tip) == []
    assert chain.blocks_to_fetch(target=ours_tip) == [b.hash for b in ours.blocks[10:]]
    assert chain.index[ours.blocks[5].hash].status == HAVE_DATA  # disconnected, kept, not wanted again
    store.close()


def test_a_store_failure_during_a_connect_leaves_memory_as_the_rolled_back_store(tmp_path, monkeypatch):
    # Disk full or an I/O error in the middle of a reorg: the SQL transaction rolls back the
    # body and every connect, and the chain in memory must say the same as the store.
    ours = _chain_of(8)
    theirs = ours.fork(4, b"theirs")
    theirs.mine_empty(5)  # height 9: more work, a reorg of four blocks
    store, chain = open_chain(tmp_path / "chain.sqlite")
    add_all(chain, ours.blocks)
    add_all(chain, theirs.blocks[5:-1])
    before = (chain.tip.hash, store.utxo_snapshot())
    connects = []

    def failing_connect(*args):
        connects.append(args)
        if len(connects) == 3:
            raise sqlite3.OperationalError("database or disk is full")
        return real_connect(*args)

    real_connect = store.connect
    monkeypatch.setattr(store, "connect", failing_connect)
    with pytest.raises(sqlite3.OperationalError):
        chain.add_block(theirs.tip, NOW)
    assert len(connects) == 3  # two blocks of theirs were connected in memory before the failure
    assert (chain.tip.hash, store.utxo_snapshot()) == before
    assert theirs.tip.hash not in chain.index  # its body and header were rolled back too
    fresh = Chain(store, PARAMS)
    assert chain.active == fresh.active
    assert {h: e.status for h, e in chain.index.items()} == {h: e.status for h, e in fresh.index.items()}

    monkeypatch.setattr(store, "connect", real_connect)  # the disk has room again
    assert chain.add_block(theirs.tip, NOW).reorg_depth == 4
    assert chain.tip.hash == theirs.tip.hash and store.utxo_snapshot() == theirs.coins()
    store.close()


def test_add_header_refuses_unknown_parent_and_bad_proof_of_work(tmp_path):
    builder = _chain_of(2, with_txs=False)
    store, chain = open_chain(tmp_path / "chain.sqlite")
    with pytest.raises(UnknownParent):
        chain.add_header(builder.blocks[2].header, NOW)
    header = builder.blocks[1].header
    target = bits_to_target(header.bits)
    losing = next(h for n in range(1 << 16) if not hash_meets_target((h := replace(header, nonce=n)).hash, target))
    with pytest.raises(E.BlockBadPow):
        chain.add_header(losing, NOW)
    assert losing.hash not in chain.index
    store.close()


def test_locator_and_headers_after_find_the_fork_point(tmp_path):
    ours = _chain_of(40)
    theirs = ours.fork(25, b"theirs")
    theirs.mine_empty(9)  # height 34, less work than ours; the locator's 10 dense hashes reach the fork
    store_a, chain_a = open_chain(tmp_path / "a.sqlite")
    add_all(chain_a, ours.blocks)
    store_b, chain_b = open_chain(tmp_path / "b.sqlite")
    add_all(chain_b, theirs.blocks)

    locator = chain_b.locator()
    assert locator[0] == theirs.tip.hash and locator[-1] == PARAMS.genesis_hash
    assert locator[:10] == [b.hash for b in reversed(theirs.blocks[-10:])]
    headers = chain_a.headers_after(locator, HEADERS_CAP)
    assert [h.hash for h in headers] == [b.hash for b in ours.blocks[26:]]
    assert headers[0].prev_hash == ours.blocks[25].hash  # the fork point
    assert chain_b.in_active_chain(headers[0].prev_hash)
    assert [h.hash for h in chain_b.headers_after(chain_a.locator(), HEADERS_CAP)] == [b.hash for b in theirs.blocks[26:]]

    for header in headers:
        chain_b.add_header(header, NOW)
    assert chain_b.blocks_to_fetch() == [b.hash for b in ours.blocks[26:]]
    for block_hash in chain_b.blocks_to_fetch():
        chain_b.add_block(chain_a.get_block(block_hash), NOW)
    assert chain_b.tip.hash == ours.tip.hash
    assert store_b.utxo_snapshot() == store_a.utxo_snapshot()
    assert chain_b.headers_after(chain_a.locator(), HEADERS_CAP) == []
    store_a.close()
    store_b.close()


@pytest.fixture(scope="module")
def long_chain(tmp_path_factory):
    """A store whose active chain is longer than one headers reply."""
    builder = Builder()
    builder.mine_empty(HEADERS_CAP + 10)
    store, chain = open_chain(tmp_path_factory.mktemp("long") / "chain.sqlite", synchronous="OFF")
    add_all(chain, builder.blocks)
    yield builder, chain
    store.close()


def test_headers_after_returns_at_most_the_askers_limit(long_chain):
    builder, chain = long_chain
    assert chain.height == HEADERS_CAP + 10
    from_genesis = chain.headers_after([PARAMS.genesis_hash], HEADERS_CAP)
    assert len(from_genesis) == HEADERS_CAP
    assert from_genesis[0].hash == builder.blocks[1].hash
    assert len(chain.headers_after([bytes(32)], HEADERS_CAP)) == HEADERS_CAP  # nothing shared: from genesis
    assert len(chain.headers_after([PARAMS.genesis_hash], 10**6)) == HEADERS_CAP + 10  # the whole chain
    assert [h.hash for h in chain.headers_after([builder.blocks[2005].hash], HEADERS_CAP)] == \
        [b.hash for b in builder.blocks[2006:]]
    assert len(chain.headers_after([PARAMS.genesis_hash], 7)) == 7


def test_locator_of_a_long_chain_is_short_and_exponentially_sparse(long_chain):
    builder, chain = long_chain
    locator = chain.locator()
    assert len(locator) <= MAX_LOCATOR_HASHES
    assert len(locator) < 30
    heights = [chain.index[h].height for h in locator]
    assert heights[0] == chain.height and heights[-1] == 0
    assert heights == sorted(heights, reverse=True)
    gaps = [a - b for a, b in zip(heights, heights[1:-1])]
    assert gaps[:9] == [1] * 9
    assert all(later >= earlier for earlier, later in zip(gaps, gaps[1:]))


def test_known_block_is_reported_known_and_changes_nothing(tmp_path):
    builder = _chain_of(2)
    store, chain = open_chain(tmp_path / "chain.sqlite")
    add_all(chain, builder.blocks)
    update = chain.add_block(builder.blocks[1], NOW)
    assert update.known and update.connected == [] and update.disconnected == []
    assert chain.tip.hash == builder.tip.hash
    store.close()


def test_block_spending_a_missing_coin_is_refused_and_the_tip_stays(tmp_path):
    builder = _chain_of(2)
    store, chain = open_chain(tmp_path / "chain.sqlite")
    add_all(chain, builder.blocks)
    ghost = pay([(OutPoint(bytes(32), 0), dev_key(0))], [1_000])
    bad = builder.make_block([ghost], fees=0)
    with pytest.raises(E.BlockBadTx):
        chain.add_block(bad, NOW)
    assert chain.tip.hash == builder.tip.hash
    assert chain.index[bad.hash].status == INVALID
    assert store.get_coin(dev_outpoint(PARAMS, 0)) is not None
    store.close()


def test_headers_after_starts_at_the_last_shared_locator_hash_below_the_fork(tmp_path):
    ours = _chain_of(40, with_txs=False)
    theirs = ours.fork(25, b"theirs")
    theirs.mine_empty(10)  # height 35: the locator holds heights 35..26, 24, 20, ... but not 25
    store_a, chain_a = open_chain(tmp_path / "a.sqlite")
    add_all(chain_a, ours.blocks)
    store_b, chain_b = open_chain(tmp_path / "b.sqlite")
    add_all(chain_b, theirs.blocks)

    locator = chain_b.locator()
    assert ours.blocks[25].hash not in locator
    headers = chain_a.headers_after(locator, HEADERS_CAP)
    assert [h.hash for h in headers] == [b.hash for b in ours.blocks[25:]]
    for header in headers:
        chain_b.add_header(header, NOW)  # the shared one is already known: no harm
    assert chain_b.blocks_to_fetch() == [b.hash for b in ours.blocks[26:]]
    store_a.close()
    store_b.close()
