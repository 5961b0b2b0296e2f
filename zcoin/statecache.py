"""The store's state cache, and the rows it and the store write (see ``zcoin.storage``).

:class:`StateCache` holds what the blocks connected since the last flush did to the
UTXO set and the indexes, as Core's ``CCoinsViewCache``; the store joins it with its
tables on every read and writes it out in batches.  Here too: the encodings of undo
data and of ``utxo`` and ``address_index`` rows, which the store uses as well, and
:class:`StoreError`, which both raise (``zcoin.storage`` exports it).
"""

from __future__ import annotations

import sqlite3

import msgpack

from zcoin.consensus.primitives import Block, OutPoint
from zcoin.consensus.validation import Coin, UtxoDiff


class StoreError(Exception):
    """A store that cannot be opened or used (wrong network, wrong schema, corrupt)."""


def pack_undo(diff: UtxoDiff) -> bytes:
    """A connected block's undo data: the coins its ``diff`` spent and created, as msgpack.

    A coin's row is ``[txid, index, amount, pubkey, height, coinbase]``: its outpoint and
    its coin, two named tuples, joined (msgpack packs a tuple as the array a list makes).
    """
    return msgpack.packb([[op + c for op, c in diff.spent], [op + c for op, c in diff.created]],
                         use_bin_type=True)


def unpack_undo(raw: bytes) -> UtxoDiff:
    """The diff that :func:`pack_undo` packed."""
    spent, created = msgpack.unpackb(raw, raw=False)

    def items(rows):
        return tuple((OutPoint(t, i), Coin(a, p, h, cb)) for t, i, a, p, h, cb in rows)

    return UtxoDiff(items(spent), items(created))


def coin_rows(items) -> list[tuple]:
    """``utxo`` rows of ``(outpoint, coin)`` pairs, in key order (neighbouring b-tree pages)."""
    return sorted((op.txid, op.index, c.amount, c.pubkey, c.height, int(c.coinbase)) for op, c in items)


def address_rows(block: Block, height: int, diff: UtxoDiff) -> list[tuple]:
    """``address_index`` rows of a connected block: per (key, transaction), what it received and spent.

    Computed from the block itself (a coin created and spent in the same block is in no diff).
    """
    coins = {(op.txid, op.index): (coin.pubkey, coin.amount) for op, coin in diff.spent}
    totals: dict[tuple[bytes, int], list] = {}  # (key, position in the block) -> [txid, received, spent]
    for pos, tx in enumerate(block.txs):
        txid = tx.txid
        for index, out in enumerate(tx.outputs):
            coins[txid, index] = (out.pubkey, out.amount)
            totals.setdefault((out.pubkey, pos), [txid, 0, 0])[1] += out.amount
        if pos:  # the first is the coinbase, which spends nothing
            for txin in tx.inputs:
                pubkey, amount = coins[txin.prev.txid, txin.prev.index]
                totals.setdefault((pubkey, pos), [txid, 0, 0])[2] += amount
    return [(pubkey, height, pos, txid, received, spent) for (pubkey, pos), (txid, received, spent) in totals.items()]


class StateCache:
    """What the blocks connected since the last flush did, held in memory over the tables.

    Coins, as Core's ``CCoinsViewCache``: ``fresh`` ones were created since the flush and
    are not on disk, so spending one just forgets it; ``spent`` ones are on disk and are
    deleted at the flush; ``clean`` keeps what the disk answered (a block reads each coin it
    spends twice, and a mempool reads it first).  Indexes: the height of every transaction
    connected, and the address-index rows.  The store's reads join all this with the
    tables; :meth:`flush` writes it, and ``best`` as ``flushed_tip``, in the caller's SQL
    transaction.
    """

    def __init__(self, db: sqlite3.Connection, best: bytes, max_entries: int, max_blocks: int) -> None:
        self.db = db
        self.best = best  # the block whose state this is
        self.max_entries = max_entries
        self.max_blocks = max_blocks
        self.blocks = 0  # blocks applied since the last flush
        self.fresh: dict[OutPoint, Coin] = {}
        self.spent: set[OutPoint] = set()
        self.clean: dict[OutPoint, Coin | None] = {}
        self.tx_heights: dict[bytes, int] = {}
        self.history: list[tuple] = []  # address_index rows

    @property
    def full(self) -> bool:
        """Time to flush: too many entries, or too many blocks to replay after a crash."""
        entries = len(self.fresh) + len(self.spent) + len(self.clean) + len(self.tx_heights) + len(self.history)
        return entries > self.max_entries or self.blocks >= self.max_blocks

    def get_coin(self, outpoint: OutPoint) -> Coin | None:
        """The unspent coin at ``outpoint``, or None (a ``UtxoView``)."""
        coin = self.fresh.get(outpoint)
        if coin is not None or outpoint in self.spent:
            return coin
        try:
            return self.clean[outpoint]
        except KeyError:
            if len(self.clean) >= self.max_entries:  # reads alone fill it too; what they kept costs no write
                self.clean.clear()
            row = self.db.execute("SELECT amount, pubkey, height, coinbase FROM utxo WHERE txid = ? AND idx = ?",
                                  (outpoint.txid, outpoint.index)).fetchone()
            coin = self.clean[outpoint] = Coin(row[0], row[1], row[2], bool(row[3])) if row else None
            return coin

    def apply(self, block: Block, height: int, diff: UtxoDiff) -> None:
        """Connect ``block``, whose coins changed as ``diff`` says, on top of ``best``."""
        for outpoint, _ in diff.spent:
            if self.fresh.pop(outpoint, None) is None:
                if self.get_coin(outpoint) is None:
                    raise StoreError(f"spends {outpoint}, which is not in the UTXO set")
                del self.clean[outpoint]
                self.spent.add(outpoint)
        for outpoint, coin in diff.created:
            if self.fresh.setdefault(outpoint, coin) is not coin:
                raise StoreError(f"creates {outpoint}, which is unspent already")
        for tx in block.txs:
            self.tx_heights[tx.txid] = height
        self.history.extend(address_rows(block, height, diff))
        self.best = block.hash
        self.blocks += 1

    def flush(self) -> None:
        """Write it all (in the caller's SQL transaction) and empty the cache."""
        db = self.db
        db.executemany("DELETE FROM utxo WHERE txid = ? AND idx = ?", sorted((op.txid, op.index) for op in self.spent))
        db.executemany("INSERT OR REPLACE INTO utxo VALUES (?, ?, ?, ?, ?, ?)", coin_rows(self.fresh.items()))
        db.executemany("INSERT OR REPLACE INTO tx_index VALUES (?, ?)", sorted(self.tx_heights.items()))
        db.executemany("INSERT OR REPLACE INTO address_index VALUES (?, ?, ?, ?, ?, ?)", sorted(self.history))
        db.execute("UPDATE meta SET value = ? WHERE key = 'flushed_tip'", (self.best,))
        self.fresh, self.spent, self.clean, self.tx_heights, self.history = {}, set(), {}, {}, []
        self.blocks = 0
