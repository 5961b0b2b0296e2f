"""The SQLite chain store: reopening, refusing foreign files, atomic connects, and kill -9."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.chain import (
    NOW,
    PARAMS,
    Builder,
    active_hashes,
    add_all,
    assert_store_consistent,
    garble_middle,
    open_chain,
    replay_active_chain,
    write_crashed_store,
)
from support.payments import dev_outpoint, premine_spend, spend_output
from support.waiting import wait_until
from zcoin.chain import Chain
from zcoin.consensus.params import LOCAL
from zcoin.consensus.pow import block_work
from zcoin.consensus.primitives import OutPoint
from zcoin.consensus.validation import Coin, UtxoDiff, connect_block
from zcoin.storage import ChainStore, StoreError

CRASH_WRITER = Path(__file__).with_name("crash_writer.py")
CRASH_KILLS = 20
HELD_BLOCKS = 5  # blocks a holding crash writer connects before it waits for the kill
CHILD_START_DEADLINE_S = 15.0


def _chain_with_transactions(blocks: int = 6) -> Builder:
    """A regtest chain whose blocks carry spends of the premine and of earlier outputs."""
    builder = Builder()
    previous = None
    for height in range(1, blocks + 1):
        txs = [premine_spend(height % 8)]
        if previous is not None:
            txs.append(spend_output(previous, 0, (height - 1) % 8, outputs=2))
        builder.mine(txs)
        previous = txs[0]
    return builder


# --- reopening ------------------------------------------------------------------------


def test_reopened_store_has_the_same_tip_utxo_set_and_index(tmp_path):
    path = tmp_path / "chain.sqlite"
    builder = _chain_with_transactions()
    store, chain = open_chain(path)
    add_all(chain, builder.blocks)
    tip, height, utxo = store.tip_hash(), chain.height, store.utxo_snapshot()
    index = {row[0]: (row[2], int.from_bytes(row[3], "big"), row[4]) for row in store.load_index()}
    store.close()

    store, chain = open_chain(path)
    assert store.tip_hash() == tip == builder.tip.hash
    assert chain.height == height == builder.height
    assert store.utxo_snapshot() == utxo == builder.coins()
    assert {row[0]: (row[2], int.from_bytes(row[3], "big"), row[4]) for row in store.load_index()} == index
    assert chain.tip.chain_work == index[tip][1]
    spent_premine = dev_outpoint(PARAMS, 1)
    assert store.get_coin(spent_premine) is None
    assert store.get_block(builder.blocks[3].hash) == builder.blocks[3]
    assert store.tx_height(builder.blocks[3].txs[1].txid) == 3
    assert_store_consistent(store)
    store.close()


def test_new_store_starts_at_genesis_with_the_premine(tmp_path):
    store, chain = open_chain(tmp_path / "chain.sqlite")
    assert chain.height == 0
    assert store.tip_hash() == PARAMS.genesis_hash
    premine = store.utxo_snapshot()
    assert len(premine) == PARAMS.dev_accounts
    assert store.coins_of(PARAMS.dev_pubkey(2)) == [(dev_outpoint(PARAMS, 2), Coin(PARAMS.dev_account_amount,
                                                                           PARAMS.dev_pubkey(2), 0, True))]
    store.close()


def test_store_of_another_network_is_refused(tmp_path):
    path = tmp_path / "chain.sqlite"
    ChainStore(path, PARAMS).close()
    with pytest.raises(StoreError, match=r"network 'regtest', not 'local'"):
        ChainStore(path, LOCAL)
    store = ChainStore(path, PARAMS)  # the refusal did not damage the file
    assert store.tip_hash() == PARAMS.genesis_hash
    store.close()


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "chain.sqlite"
    path.write_bytes(random.Random(7).randbytes(8192))
    with pytest.raises(StoreError, match="not a usable zcoin store"):
        ChainStore(path, PARAMS)


def test_sqlite_file_of_another_program_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "other.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (body TEXT)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a zcoin store"):
        ChainStore(path, PARAMS)
    db = sqlite3.connect(path)
    assert {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {"notes"}
    db.close()


def test_store_without_a_network_name_is_refused(tmp_path):
    path = tmp_path / "chain.sqlite"
    ChainStore(path, PARAMS).close()
    db = sqlite3.connect(path)
    db.execute("DELETE FROM meta WHERE key = 'network'")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="without a network name"):
        ChainStore(path, PARAMS)


def test_store_of_another_schema_version_is_refused(tmp_path):
    path = tmp_path / "chain.sqlite"
    ChainStore(path, PARAMS).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (b"99",))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        ChainStore(path, PARAMS)


@pytest.mark.parametrize("where", ["under a regular file", "a directory"])
def test_store_path_that_cannot_be_opened_is_a_store_error(tmp_path, where):
    if where == "a directory":
        path = tmp_path / "chain.sqlite"
        path.mkdir()
    else:
        (tmp_path / "file").write_text("")
        path = tmp_path / "file" / "chain.sqlite"
    with pytest.raises(StoreError, match=r"chain\.sqlite: cannot open the store \(unable to open database file\)"):
        ChainStore(path, PARAMS)


def test_store_left_open_by_a_crash_reopens_on_its_last_block(tmp_path):
    builder = Builder()
    builder.mine_empty(40)
    path = tmp_path / "chain.sqlite"
    write_crashed_store(path, builder.blocks)
    assert Path(f"{path}-wal").stat().st_size > 0  # as a crash leaves it: the last block only in the log
    store = ChainStore(path, PARAMS)
    assert store.tip_hash() == builder.tip.hash
    assert_store_consistent(store)
    store.close()


def test_store_left_open_by_a_crash_with_garbled_pages_is_reported_damaged(tmp_path):
    builder = Builder()
    builder.mine_empty(40)
    path = tmp_path / "chain.sqlite"
    write_crashed_store(path, builder.blocks)
    garble_middle(path)
    with pytest.raises(StoreError) as refused:
        ChainStore(path, PARAMS)
    message = str(refused.value)
    assert message.startswith(f"{path}: the store is damaged (quick_check: ")
    assert message.endswith("); restore it or delete it to resync") and "\n" not in message


# --- connect and disconnect are atomic ------------------------------------------------


def test_disconnect_restores_the_utxo_set_exactly(tmp_path):
    builder = _chain_with_transactions(3)
    store, chain = open_chain(tmp_path / "chain.sqlite")
    add_all(chain, builder.blocks[:3])
    before = store.utxo_snapshot()
    block = builder.blocks[3]
    chain.add_block(block, NOW)
    assert store.utxo_snapshot() != before

    diff = store.disconnect(block, 3)
    assert store.utxo_snapshot() == before
    assert store.tip_hash() == builder.blocks[2].hash
    assert store.hash_at(3) is None
    assert all(store.tx_height(tx.txid) is None for tx in block.txs)
    assert diff == builder.diffs[3]
    store.close()


def test_connect_of_a_block_not_on_the_tip_changes_nothing(tmp_path):
    builder = _chain_with_transactions(2)
    store, chain = open_chain(tmp_path / "chain.sqlite")
    add_all(chain, builder.blocks[:2])
    before = store.utxo_snapshot()
    with pytest.raises(StoreError, match="does not extend the tip"):
        store.connect(builder.blocks[1], 1, builder.diffs[1], chain.tip.chain_work)
    with pytest.raises(StoreError, match="not the tip"):
        store.disconnect(builder.blocks[0], 0)
    assert store.tip_hash() == builder.blocks[1].hash
    assert store.utxo_snapshot() == before
    store.close()


def test_failed_connect_rolls_back_every_table_and_the_cache(tmp_path):
    builder = _chain_with_transactions(2)
    store, chain = open_chain(tmp_path / "chain.sqlite")
    add_all(chain, builder.blocks[:2])
    block = builder.blocks[2]
    work = chain.tip.chain_work + block_work(block.header.bits)
    store.put_block(block, 2, work)
    good = connect_block(block, 2, store, PARAMS)
    missing = (OutPoint(bytes(32), 7), Coin(1, PARAMS.dev_pubkey(0), 1, False))
    # The good spends are applied first; the coin that is in no UTXO set then stops the connect.
    broken = UtxoDiff(good.spent + (missing,), good.created)
    before = store.utxo_snapshot()

    with pytest.raises(StoreError, match="not in the UTXO set"):
        store.connect(block, 2, broken, work)
    assert store.utxo_snapshot() == before
    assert all(store.get_coin(op) == coin for op, coin in good.spent)
    assert store.tip_hash() == builder.blocks[1].hash
    assert store.hash_at(2) is None
    assert all(store.tx_height(tx.txid) is None for tx in block.txs)
    assert store.db.execute("SELECT undo FROM blocks WHERE hash = ?", (block.hash,)).fetchone()[0] is None

    store.connect(block, 2, good, work)  # the store is still usable
    store.flush()  # the helper counts the tx_index table itself
    assert_store_consistent(store)
    store.close()


def test_restart_finishes_a_reorg_cut_short_by_a_crash(tmp_path):
    path = tmp_path / "chain.sqlite"
    main = _chain_with_transactions(4)
    side = main.fork(1, b"side")
    side.mine([premine_spend(7)])
    side.mine_empty(3)  # height 5: more work than the main tip at 4
    store, chain = open_chain(path)
    add_all(chain, main.blocks)
    add_all(chain, side.blocks[:5])  # up to equal work: stored, not connected
    assert chain.tip.hash == main.tip.hash
    # What the chain manager had done when the process died: the better block stored,
    # the main branch disconnected down to the fork, nothing of the side connected yet.
    store.put_block(side.tip, 5, chain.index[side.blocks[4].hash].chain_work + block_work(side.tip.header.bits))
    for height in range(4, 1, -1):
        store.disconnect(main.blocks[height], height)
    store.close()

    store, chain = open_chain(path)
    assert chain.tip.hash == side.tip.hash
    assert store.utxo_snapshot() == side.coins()
    store.flush()  # the helper counts the tx_index table itself
    assert_store_consistent(store)
    store.close()


# --- kill -9 --------------------------------------------------------------------------


class _ForkServer:
    """``crash_writer.py --fork-server``: crash writers started by fork, one command and one answer a line."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(CRASH_WRITER), "--fork-server"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def ask(self, command: str) -> str:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, f"the fork server ended ({self.proc.wait()}) on {command!r}"
        return answer

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        finally:
            self.proc.kill()
            self.proc.stdout.close()


class _Child:
    """One crash writer, forked by the server, its output lines in a file (so waits have deadlines)."""

    def __init__(self, server: _ForkServer, path: Path, output: Path, hold_after: int | None = None) -> None:
        self.server = server
        self.output = output
        command = f"start {path} {output}" + ("" if hold_after is None else f" {hold_after}")
        self.pid = int(server.ask(command).split()[1])
        self.read = 0  # output lines already handed out
        self.returncode: int | None = None

    def lines(self) -> list[str]:
        text = self.output.read_text() if self.output.exists() else ""
        if "Traceback" in text:
            raise AssertionError(f"the child failed:\n{text}")
        return text.splitlines(keepends=True)[:text.count("\n")]  # whole lines only

    def wait_for_line(self, prefix: str, deadline_s: float) -> str:
        """The first output line starting with ``prefix``; fail at the deadline or if the child fails first."""
        def printed() -> str | None:
            lines = self.lines()
            found = next((i for i in range(self.read, len(lines)) if lines[i].startswith(prefix)), None)
            if found is None:
                return None
            self.read = found + 1
            return lines[found]

        # Polled every millisecond: the kill's random moment is measured from this line.
        return wait_until(printed, deadline_s, f"the child to print {prefix!r}", interval=0.001)

    def kill(self) -> list[str]:
        """SIGKILL the child; return the output lines not read yet."""
        os.kill(self.pid, signal.SIGKILL)
        self.returncode = int(self.server.ask(f"reap {self.pid}").split()[1])
        return self.lines()[self.read:]


def test_store_survives_sigkill_at_random_moments(tmp_path):
    path = tmp_path / "chain.sqlite"
    rng = random.Random(20251125)
    heights = [0]
    server = _ForkServer()
    try:
        for kill in range(1, CRASH_KILLS + 1):
            child = _Child(server, path, tmp_path / f"writer{kill}.out")
            try:
                started = int(child.wait_for_line("started ", CHILD_START_DEADLINE_S).split()[1])
                time.sleep(rng.uniform(0.0, 0.15))  # the random moment of the kill is the point of the test
            finally:
                rest = child.kill()
            assert child.returncode == -signal.SIGKILL
            assert started >= heights[-1]
            acknowledged = max((int(line.split()[1]) for line in rest if line.startswith("connected ")),
                               default=started)

            store = ChainStore(path, PARAMS)
            hashes, utxo = replay_active_chain(store)
            height = len(hashes) - 1
            assert store.tip_hash() == hashes[-1]
            assert store.utxo_snapshot() == utxo.coins, f"UTXO set differs from the replay after kill {kill}"
            assert height >= acknowledged, "an acknowledged block was lost"
            assert height >= heights[-1], "the tip went backwards across a kill"
            chain = Chain(store, PARAMS)  # the chain manager loads it (and may connect a stored block)
            assert chain.height >= height
            heights.append(chain.height)
            store.close()
    finally:
        server.close()

    assert heights[-1] > heights[1], f"the child made no progress across {CRASH_KILLS} kills: {heights}"
    store = ChainStore(path, PARAMS)
    assert_store_consistent(store)
    assert len(active_hashes(store)) == heights[-1] + 1
    store.close()


def _tables(path: Path) -> dict:
    """The rows that make a store's state, read from its file: tip, UTXO set, indexes, active undo data."""
    db = sqlite3.connect(path)
    try:
        return {
            "meta": dict(db.execute("SELECT key, value FROM meta WHERE key = 'flushed_tip'")),
            "active": db.execute("SELECT height, hash FROM active ORDER BY height").fetchall(),
            "utxo": db.execute("SELECT * FROM utxo ORDER BY txid, idx").fetchall(),
            "tx_index": db.execute("SELECT * FROM tx_index ORDER BY txid").fetchall(),
            "address_index": db.execute("SELECT * FROM address_index ORDER BY pubkey, height, pos").fetchall(),
            "undo": db.execute("SELECT a.height, b.undo FROM active a JOIN blocks b ON a.hash = b.hash "
                               "ORDER BY a.height").fetchall(),
        }
    finally:
        db.close()


def test_kill_between_block_connects_and_the_cache_flush_reopens_as_a_store_that_never_crashed(tmp_path):
    path = tmp_path / "chain.sqlite"
    server = _ForkServer()
    try:
        child = _Child(server, path, tmp_path / "writer.out", hold_after=HELD_BLOCKS)
        try:
            child.wait_for_line("holding ", CHILD_START_DEADLINE_S)
        finally:
            rest = child.kill()
    finally:
        server.close()
    acknowledged = [bytes.fromhex(line.split()[2])[::-1] for line in child.lines() if line.startswith("connected ")]
    assert child.returncode == -signal.SIGKILL and len(acknowledged) == HELD_BLOCKS, rest
    # Killed with every block committed and none of their state flushed: the tables are still genesis's.
    crashed = _tables(path)  # (reading folds the write-ahead log into the file; its content stays the same)
    assert crashed["meta"] == {"flushed_tip": PARAMS.genesis_hash}
    assert crashed["active"][-1] == (HELD_BLOCKS, acknowledged[-1])

    store = ChainStore(path, PARAMS)  # replays the blocks after the last flush
    blocks = [store.get_block(block_hash) for block_hash in active_hashes(store)[1:]]
    assert [block.hash for block in blocks] == acknowledged
    reference, chain = open_chain(tmp_path / "reference.sqlite")
    add_all(chain, blocks)
    keys = {out.pubkey for block in blocks for tx in block.txs for out in tx.outputs}
    assert store.tip_hash() == reference.tip_hash() == acknowledged[-1]
    assert store.utxo_snapshot() == reference.utxo_snapshot()
    assert all(store.tx_height(tx.txid) == reference.tx_height(tx.txid) for block in blocks for tx in block.txs)
    assert all(store.history_of(key) == reference.history_of(key) for key in keys)
    assert all(store.get_undo(block.hash) == reference.get_undo(block.hash) for block in blocks)
    store.close()
    reference.close()
    assert _tables(path) == _tables(tmp_path / "reference.sqlite")


def _all_history(store: ChainStore) -> list[tuple]:
    return store.db.execute("SELECT * FROM address_index ORDER BY pubkey, height, pos").fetchall()


def test_address_index_is_kept_per_block_in_chain_order_undone_on_disconnect_and_rebuilt_for_old_stores(tmp_path):
    path = tmp_path / "chain.sqlite"
    store, chain = open_chain(path)
    builder = Builder()
    parent = premine_spend(0, to=1, outputs=2)
    child = spend_output(parent, 0, 1, to=2)  # spends a coin made in the same block
    block = builder.mine([parent, child])
    add_all(chain, builder.blocks)
    history = store.history_of(PARAMS.dev_pubkey(1))
    assert [(txid, height) for txid, height, _, _ in history] == [(PARAMS.genesis.txs[0].txid, 0),
                                                                   (parent.txid, 1), (child.txid, 1)]
    assert history[1][2] == sum(o.amount for o in parent.outputs) and history[2][3] == parent.outputs[0].amount
    assert [h[:2] for h in store.history_of(PARAMS.dev_pubkey(2))][-1] == (child.txid, 1)

    store.flush()
    before = _all_history(store)
    store.db.execute("DELETE FROM address_index")  # a store written before the index existed
    store.db.execute("DELETE FROM meta WHERE key = 'address_index'")
    store.close()
    store, chain = open_chain(path)
    assert _all_history(store) == before

    # Disconnecting the block takes its rows away, in the same SQL transaction.
    store.disconnect(block, 1)
    assert [h[1] for h in store.history_of(PARAMS.dev_pubkey(1))] == [0]
    store.close()


def test_undo_data_is_a_msgpack_pair_of_coin_rows_as_stores_already_hold_it():
    """The encoding is on disk in every store: rows of [txid, index, amount, pubkey, height, coinbase]."""
    import msgpack

    from zcoin.statecache import pack_undo, unpack_undo

    spent = ((OutPoint(bytes(range(32)), 1), Coin(5_000, bytes(32), 7, True)),)
    created = ((OutPoint(bytes(32), 0), Coin(4_000, bytes(range(32)), 9, False)),
               (OutPoint(bytes(32), 1), Coin(1, bytes(range(32)), 9, False)))
    diff = UtxoDiff(spent, created)
    rows = [[[op.txid, op.index, c.amount, c.pubkey, c.height, c.coinbase] for op, c in items]
            for items in (spent, created)]
    assert pack_undo(diff) == msgpack.packb(rows, use_bin_type=True)
    assert unpack_undo(pack_undo(diff)) == diff
