"""The store's state cache: reads answer for the tip, flushes come when they should, and old stores upgrade.

The crash side (a kill between block connects and the flush) is in ``test_storage.py``,
beside the other kill tests and their fork server.
"""

from __future__ import annotations

import sqlite3

import pytest

from support.chain import MINER_PUBKEY, NOW, PARAMS, Builder, add_all
from support.payments import premine_spend, spend_output
from zcoin.chain import Chain
from zcoin.consensus.primitives import Block, OutPoint
from zcoin.storage import FLUSH_INTERVAL_S, ChainStore

KEYS = [PARAMS.dev_pubkey(i) for i in range(PARAMS.dev_accounts)] + [MINER_PUBKEY]


def _open(path, **cache) -> tuple[ChainStore, Chain]:
    store = ChainStore(path, PARAMS, synchronous="OFF", **cache)
    return store, Chain(store, PARAMS)


def _meta(store: ChainStore, key: str) -> bytes | None:
    row = store.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def _transfers(builder: Builder, blocks: int, first_account: int) -> None:
    """``blocks`` blocks spending premines and, from the second on, an output of the block before."""
    previous = None
    for n in range(blocks):
        account = (first_account + n) % 8
        txs = [premine_spend(account)]
        if previous is not None:
            txs.append(spend_output(previous, 0, (account - 1) % 8, to=account, outputs=2))
        builder.mine(txs)
        previous = txs[0]


def _reorg_chains() -> tuple[Builder, Builder]:
    """A main chain of 6 blocks of transfers and a heavier branch from height 3 spending other coins."""
    main = Builder()
    _transfers(main, 6, 0)
    side = main.fork(3, b"side")
    _transfers(side, 4, 4)
    return main, side


def _reads(store: ChainStore, blocks: list[Block]) -> dict:
    """Everything the node's api reads from the store, about every coin, key, transaction and block."""
    outpoints = [OutPoint(tx.txid, i) for block in [PARAMS.genesis, *blocks] for tx in block.txs
                 for i in range(len(tx.outputs))]
    return {
        "tip": store.tip_hash(),
        "utxo": store.utxo_snapshot(),
        "coins": {op: store.get_coin(op) for op in outpoints},
        "coins_of": {key: store.coins_of(key) for key in KEYS},
        "history": {key: store.history_of(key) for key in KEYS},
        "tx_heights": {tx.txid: store.tx_height(tx.txid) for block in blocks for tx in block.txs},
        "undo": {block.hash: store.get_undo(block.hash) for block in blocks},
    }


@pytest.mark.parametrize("cache", [{}, {"flush_every_blocks": 2}, {"max_cache_entries": 25}])
def test_reads_answer_as_a_store_that_writes_every_block_through(tmp_path, cache):
    main, side = _reorg_chains()
    every_block = [*main.blocks[1:], *side.blocks[4:]]
    cached, cached_chain = _open(tmp_path / "cached.sqlite", **cache)
    through, through_chain = _open(tmp_path / "through.sqlite", max_cache_entries=0)
    for block in every_block:
        cached_chain.add_block(block, NOW)
        through_chain.add_block(block, NOW)
        assert _reads(cached, every_block) == _reads(through, every_block), block.hash_hex
        assert _meta(through, "flushed_tip") == through.tip_hash()  # the reference writes every block through
    assert cached_chain.tip.hash == side.tip.hash
    if not cache:  # the reorg flushed, and the side blocks after it are in the cache only
        assert _meta(cached, "flushed_tip") == side.blocks[3].hash != cached.tip_hash()
    cached.close()
    through.close()


def test_reads_of_coins_on_disk_fill_the_cache_only_up_to_its_bound(tmp_path):
    store, chain = _open(tmp_path / "chain.sqlite", max_cache_entries=4)
    outpoints = [OutPoint(PARAMS.genesis.txs[0].txid, i) for i in range(PARAMS.dev_accounts)]
    for _ in range(3):
        assert all(store.get_coin(op) is not None for op in outpoints)
        assert len(store.cache.clean) <= 4
    store.close()


def test_cache_is_flushed_every_n_blocks_when_full_on_the_timer_and_on_close(tmp_path):
    builder = Builder()
    _transfers(builder, 7, 0)
    blocks = builder.blocks[1:]
    path = tmp_path / "chain.sqlite"

    store, chain = _open(path, flush_every_blocks=3)
    add_all(chain, blocks)
    assert _meta(store, "flushed_tip") == blocks[5].hash  # after blocks 3 and 6
    store.close()
    store, chain = _open(path)
    assert _meta(store, "flushed_tip") == store.tip_hash() == blocks[6].hash  # the close flushed block 7
    store.close()

    store, chain = _open(tmp_path / "small.sqlite", max_cache_entries=5)
    add_all(chain, blocks[:1])  # 8 entries: 3 coins created and 1 spent, 2 tx heights, 2 history rows
    assert _meta(store, "flushed_tip") == blocks[0].hash
    store.close()

    store, chain = _open(tmp_path / "timed.sqlite")
    assert not store.flush_if_due(100.0)  # the first call starts the clock
    add_all(chain, blocks[:2])
    assert not store.flush_if_due(100.0 + FLUSH_INTERVAL_S / 2)
    assert _meta(store, "flushed_tip") == PARAMS.genesis_hash
    assert store.flush_if_due(100.0 + FLUSH_INTERVAL_S)
    assert _meta(store, "flushed_tip") == blocks[1].hash
    store.close()


def test_disconnect_flushes_and_takes_the_block_out_of_the_tables(tmp_path):
    builder = Builder()
    _transfers(builder, 4, 0)
    store, chain = _open(tmp_path / "chain.sqlite")
    add_all(chain, builder.blocks)
    tip = builder.blocks[4]
    assert _meta(store, "flushed_tip") == PARAMS.genesis_hash

    store.disconnect(tip, 4)
    assert _meta(store, "flushed_tip") == store.tip_hash() == builder.blocks[3].hash
    rows = store.db.execute("SELECT txid, idx, amount, pubkey, height, coinbase FROM utxo").fetchall()
    assert {OutPoint(t, i) for t, i, *_ in rows} == set(store.utxo_snapshot()) == set(builder.fork(3, b"").coins())
    assert all(store.tx_height(tx.txid) is None for tx in tip.txs)
    assert store.db.execute("SELECT COUNT(*) FROM address_index WHERE height = 4").fetchone() == (0,)
    store.close()


def _blocks_table_sql(db) -> str:
    return db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'blocks'").fetchone()[0]


@pytest.mark.parametrize("version", [1, 2, 3])
def test_store_of_an_older_schema_version_is_upgraded(tmp_path, version):
    """Version 1 wrote its tables with every block (they are its tip's state) and had no
    ``flushed_tip``; versions 1 and 2 kept the tip in ``meta`` too, which 3 reads from ``active``;
    up to 3, ``blocks`` was a WITHOUT ROWID table, which 4 copies into a rowid table."""
    path = tmp_path / "chain.sqlite"
    builder = Builder()
    _transfers(builder, 3, 0)
    store, chain = _open(path)
    add_all(chain, builder.blocks)
    reads = _reads(store, builder.blocks[1:])
    index = store.load_index()
    store.close()  # flushed: the tables are the tip's
    db = sqlite3.connect(path)
    old_blocks = _blocks_table_sql(db).replace("CREATE TABLE blocks", "CREATE TABLE blocks_old") + " WITHOUT ROWID"
    db.execute(old_blocks)
    db.execute("INSERT INTO blocks_old SELECT * FROM blocks")
    db.execute("DROP TABLE blocks")
    db.execute("ALTER TABLE blocks_old RENAME TO blocks")
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version).encode(),))
    if version < 3:
        db.execute("INSERT INTO meta VALUES ('tip', ?)", (builder.tip.hash,))
    if version == 1:
        db.execute("DELETE FROM meta WHERE key = 'flushed_tip'")
    db.commit()
    assert "WITHOUT ROWID" in _blocks_table_sql(db)
    db.close()

    store, chain = _open(path)
    assert _meta(store, "schema_version") == b"4"
    assert "WITHOUT ROWID" not in _blocks_table_sql(store.db)
    assert _meta(store, "flushed_tip") == builder.tip.hash
    assert _meta(store, "tip") is None
    assert store.load_index() == index
    assert chain.tip.hash == builder.tip.hash
    assert _reads(store, builder.blocks[1:]) == reads
    store.close()


def test_acknowledged_transactions_are_committed_with_an_fsync_and_blocks_without(tmp_path):
    store = ChainStore(tmp_path / "chain.sqlite", PARAMS)
    chain = Chain(store, PARAMS)
    statements: list[str] = []
    store.db.set_trace_callback(statements.append)
    tx = premine_spend(0)
    store.save_mempool_txs([(tx.txid, tx.raw)])
    assert statements[0] == "PRAGMA synchronous=FULL" and statements[-1] == "PRAGMA synchronous=NORMAL"
    assert statements[-2] == "COMMIT"

    statements.clear()
    builder = Builder()
    builder.mine([tx])
    add_all(chain, builder.blocks)
    assert not any(s.startswith("PRAGMA") for s in statements)
    assert store.db.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
    store.close()


def test_a_thread_of_the_store_checkpoints_the_write_ahead_log_and_stops_with_it(tmp_path):
    import threading

    from support.waiting import wait_until
    from zcoin.storage import CHECKPOINT_EVERY_ROWS

    path = tmp_path / "chain.sqlite"
    store, chain = _open(path)
    store.db.execute("PRAGMA wal_autocheckpoint=0")  # the committing connection never checkpoints itself
    initial = path.stat().st_size
    builder = Builder()
    builder.mine_empty(CHECKPOINT_EVERY_ROWS // 2 + 1)
    add_all(chain, builder.blocks)  # a commit per block, of two rows
    # Only a checkpoint writes the database file itself; the commits went to the log.
    wait_until(lambda: path.stat().st_size > initial, 10, "the blocks checkpointed into the file")
    assert [t for t in threading.enumerate() if t.name == "wal-checkpoint"]
    store.close()
    assert not [t for t in threading.enumerate() if t.name == "wal-checkpoint"]
    store, chain = _open(path)
    assert chain.tip.hash == builder.tip.hash
    store.close()
