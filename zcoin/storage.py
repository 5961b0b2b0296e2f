"""The chain on disk: one SQLite file per node (stdlib ``sqlite3``, WAL).

Tables:

- ``meta``: schema version, network name, genesis hash and the tip;
- ``blocks``: the block index (hash, parent, height, cumulative work, status,
  the 80-byte header) with the body and undo data once known;
- ``active``: height -> hash of the active chain;
- ``utxo``: the unspent outputs of the active chain (indexed by key for wallets);
- ``tx_index``: txid -> height of every transaction on the active chain;
- ``address_index``: per key, every active-chain transaction that paid it or spent
  its coins (amounts received and spent), for wallet histories and explorers;
- ``mempool``: the transactions the node has acknowledged and not yet seen
  confirmed, in arrival order, so that a crash loses none of them.

Connecting or disconnecting a block is one SQL transaction that moves the tip,
the UTXO set, the undo data and the indexes together, and the database runs
with ``synchronous=FULL``: a node killed at any instant (``kill -9``) reopens
on a block boundary with a UTXO set that matches its tip.

This module stores; it does not judge.  The rules are in ``zcoin.consensus`` and
the decisions about which chain to follow in ``zcoin.chain``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import msgpack

from zcoin.consensus.params import ChainParams
from zcoin.consensus.pow import block_work
from zcoin.consensus.primitives import Block, BlockHeader, OutPoint
from zcoin.consensus.validation import Coin, UtxoDiff, genesis_diff

SCHEMA_VERSION = 1

# Block status, in the order a block moves through them.
HEADER_ONLY = 1  # header checked, body not yet received
HAVE_DATA = 2  # body stored, not (yet) connected or no longer connected
INVALID = 9  # failed a rule; never connected again

# quick_check reads the whole file (seconds on a large chain), so it runs only on a store left open
# by a crash, where a half-written page is likeliest; damage is then reported at open rather than as a
# failed write later.  This many problems are named in the error.
QUICK_CHECK_ERRORS = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    hash BLOB PRIMARY KEY,
    prev_hash BLOB NOT NULL,
    height INTEGER NOT NULL,
    chain_work BLOB NOT NULL,
    status INTEGER NOT NULL,
    header BLOB NOT NULL,
    body BLOB,
    undo BLOB
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS active (height INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS utxo (
    txid BLOB NOT NULL,
    idx INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    pubkey BLOB NOT NULL,
    height INTEGER NOT NULL,
    coinbase INTEGER NOT NULL,
    PRIMARY KEY (txid, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS utxo_by_pubkey ON utxo (pubkey);
CREATE TABLE IF NOT EXISTS tx_index (txid BLOB PRIMARY KEY, height INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS address_index (
    pubkey BLOB NOT NULL,
    height INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    txid BLOB NOT NULL,
    received INTEGER NOT NULL,
    spent INTEGER NOT NULL,
    PRIMARY KEY (pubkey, height, pos)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS address_index_by_height ON address_index (height);
CREATE TABLE IF NOT EXISTS mempool (seq INTEGER PRIMARY KEY AUTOINCREMENT, txid BLOB UNIQUE NOT NULL, raw BLOB NOT NULL);
"""


class StoreError(Exception):
    """A store that cannot be opened or used (wrong network, wrong schema, corrupt)."""


def _wal_has_content(path: Path) -> bool:
    """Whether the store at ``path`` was left open: its write-ahead log exists and is not empty.

    SQLite deletes the log when the last connection closes cleanly and leaves it after a crash,
    ``kill -9`` or power loss (or while another connection is open).  This signal is chosen over a
    flag in ``meta`` set on open and cleared on close because SQLite keeps it for us: it costs no
    write on open or close, and a second connection closing cannot clear it for a first one still open.
    """
    try:
        return Path(f"{path}-wal").stat().st_size > 0
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class IndexRow:
    """One row of the block index as stored."""

    hash: bytes
    prev_hash: bytes
    height: int
    chain_work: int
    status: int
    header: BlockHeader


def _work_bytes(work: int) -> bytes:
    return work.to_bytes(32, "big")


def _pack_diff(diff: UtxoDiff) -> bytes:
    def rows(items):
        return [[op.txid, op.index, c.amount, c.pubkey, c.height, c.coinbase] for op, c in items]

    return msgpack.packb([rows(diff.spent), rows(diff.created)], use_bin_type=True)


def _unpack_diff(raw: bytes) -> UtxoDiff:
    spent, created = msgpack.unpackb(raw, raw=False)

    def items(rows):
        return tuple((OutPoint(t, i), Coin(a, p, h, cb)) for t, i, a, p, h, cb in rows)

    return UtxoDiff(items(spent), items(created))


class ChainStore:
    """A node's SQLite chain file (see the module docstring)."""

    def __init__(self, path: str | Path, params: ChainParams, *, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.params = params
        unclean = _wal_has_content(self.path)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        except sqlite3.Error as exc:  # no such directory, a directory in the way, no permission
            raise StoreError(f"{self.path}: cannot open the store ({exc})") from None
        try:
            if unclean:
                self._check_pages()
            tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "meta" not in tables:
                raise StoreError(f"{self.path}: an SQLite file of something else, not a zcoin store")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={synchronous}")
            self.db.executescript(_SCHEMA)
            self._check_or_init_meta()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise StoreError(f"{self.path}: not a usable zcoin store ({exc})") from None
        except StoreError:
            self.db.close()
            raise

    # --- opening -------------------------------------------------------------

    def _check_pages(self) -> None:
        """``PRAGMA quick_check`` (every page, the b-trees, the records), raising ``StoreError`` on damage."""
        try:
            report = [row[0] for row in self.db.execute(f"PRAGMA quick_check({QUICK_CHECK_ERRORS})")]
        except sqlite3.DatabaseError as exc:  # too damaged to be walked at all
            report = [str(exc)]
        if report != ["ok"]:  # one problem a line, under a "*** in database main ***" heading
            problems = [line for text in report for line in text.splitlines() if not line.startswith("***")]
            raise StoreError(f"{self.path}: the store is damaged (quick_check: {'; '.join(problems)}); "
                             "restore it or delete it to resync")

    def _meta(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _check_or_init_meta(self) -> None:
        version = self._meta("schema_version")
        if version is None:
            self._init_genesis()
            return
        if int(version) != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {int(version)}, this zcoin reads {SCHEMA_VERSION}")
        network = self._meta("network")
        if network is None:
            raise StoreError(f"{self.path}: store without a network name (damaged?)")
        if network != self.params.name.encode():
            raise StoreError(f"{self.path}: store of network {network.decode(errors='replace')!r}, "
                             f"not {self.params.name!r}")
        if self._meta("genesis") != self.params.genesis_hash:
            raise StoreError(f"{self.path}: genesis block differs from network {self.params.name!r}")
        if self._meta("address_index") is None:
            self._build_address_index()

    def _build_address_index(self) -> None:
        """Index a store written before the address index existed, from its blocks and undo data."""
        with self.transaction():
            self.db.execute("DELETE FROM address_index")
            for height, body, undo in self.db.execute(
                    "SELECT a.height, b.body, b.undo FROM active a JOIN blocks b ON a.hash = b.hash ORDER BY a.height"
            ).fetchall():
                self._index_addresses(Block.parse(body), height, _unpack_diff(undo))
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('address_index', ?)", (b"1",))

    def _init_genesis(self) -> None:
        genesis = self.params.genesis
        diff = genesis_diff(self.params)
        with self.transaction():
            self.db.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("schema_version", str(SCHEMA_VERSION).encode()),
                ("network", self.params.name.encode()),
                ("genesis", genesis.hash),
                ("tip", genesis.hash),
                ("address_index", b"1"),
            ])
            self.db.execute("INSERT INTO blocks VALUES (?, ?, 0, ?, ?, ?, ?, ?)", (
                genesis.hash, genesis.header.prev_hash, _work_bytes(block_work(genesis.header.bits)),
                HAVE_DATA, genesis.header.serialize(), genesis.raw, _pack_diff(diff)))
            self._apply_diff(diff, 0, genesis)
            self.db.execute("INSERT INTO active VALUES (0, ?)", (genesis.hash,))

    def close(self) -> None:
        """Close the file (a checkpoint folds the WAL back in)."""
        try:
            self.db.close()
        except sqlite3.Error:
            pass

    def transaction(self):
        """A context manager running its body as one SQL transaction."""
        return _Transaction(self.db)

    # --- block index -----------------------------------------------------------

    def load_index(self) -> list[IndexRow]:
        """Every known block, parents before children."""
        rows = self.db.execute(
            "SELECT hash, prev_hash, height, chain_work, status, header FROM blocks ORDER BY height").fetchall()
        return [IndexRow(h, p, height, int.from_bytes(w, "big"), s, BlockHeader.parse(hdr))
                for h, p, height, w, s, hdr in rows]

    def put_header(self, header: BlockHeader, height: int, chain_work: int, status: int = HEADER_ONLY) -> None:
        """Add a header to the index (ignored if known)."""
        self.db.execute("INSERT OR IGNORE INTO blocks (hash, prev_hash, height, chain_work, status, header) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (header.hash, header.prev_hash, height, _work_bytes(chain_work), status, header.serialize()))

    def put_block(self, block: Block, height: int, chain_work: int) -> None:
        """Store a block's body (adding its index entry if needed)."""
        with self.transaction():
            self.put_header(block.header, height, chain_work, HAVE_DATA)
            self.db.execute("UPDATE blocks SET body = ?, status = ? WHERE hash = ? AND status != ?",
                            (block.raw, HAVE_DATA, block.hash, INVALID))

    def set_status(self, block_hash: bytes, status: int) -> None:
        """Change a block's status (marking it invalid, for one)."""
        self.db.execute("UPDATE blocks SET status = ? WHERE hash = ?", (status, block_hash))

    def get_block(self, block_hash: bytes) -> Block | None:
        """The stored block with this hash, or None."""
        row = self.db.execute("SELECT body FROM blocks WHERE hash = ?", (block_hash,)).fetchone()
        return Block.parse(row[0]) if row and row[0] is not None else None

    def get_block_raw(self, block_hash: bytes) -> bytes | None:
        """The stored encoding of the block with this hash, or None."""
        row = self.db.execute("SELECT body FROM blocks WHERE hash = ?", (block_hash,)).fetchone()
        return row[0] if row else None

    # --- the active chain --------------------------------------------------------

    def tip_hash(self) -> bytes:
        """Hash of the last connected block."""
        return self._meta("tip")

    def hash_at(self, height: int) -> bytes | None:
        """Hash of the active chain's block at ``height``."""
        row = self.db.execute("SELECT hash FROM active WHERE height = ?", (height,)).fetchone()
        return row[0] if row else None

    def connect(self, block: Block, height: int, diff: UtxoDiff) -> None:
        """Make ``block`` (child of the tip) the new tip, applying ``diff``, in one transaction."""
        with self.transaction():
            if self.tip_hash() != block.header.prev_hash:
                raise StoreError("connect: block does not extend the tip")
            self.db.execute("UPDATE blocks SET undo = ? WHERE hash = ?", (_pack_diff(diff), block.hash))
            self._apply_diff(diff, height, block)
            self.db.execute("INSERT OR REPLACE INTO active VALUES (?, ?)", (height, block.hash))
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'tip'", (block.hash,))

    def disconnect(self, block: Block, height: int) -> UtxoDiff:
        """Undo the tip ``block`` with its stored undo data, in one transaction; return the diff undone."""
        with self.transaction():
            if self.tip_hash() != block.hash:
                raise StoreError("disconnect: block is not the tip")
            row = self.db.execute("SELECT undo FROM blocks WHERE hash = ?", (block.hash,)).fetchone()
            if not row or row[0] is None:
                raise StoreError(f"disconnect: no undo data for {block.hash_hex}")
            diff = _unpack_diff(row[0])
            self.db.executemany("DELETE FROM utxo WHERE txid = ? AND idx = ?",
                                [(op.txid, op.index) for op, _ in diff.created])
            self._insert_coins(diff.spent)
            self.db.executemany("DELETE FROM tx_index WHERE txid = ?", [(tx.txid,) for tx in block.txs])
            self.db.execute("DELETE FROM address_index WHERE height = ?", (height,))
            self.db.execute("DELETE FROM active WHERE height = ?", (height,))
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'tip'", (block.header.prev_hash,))
        return diff

    def _apply_diff(self, diff: UtxoDiff, height: int, block: Block) -> None:
        self.db.executemany("DELETE FROM utxo WHERE txid = ? AND idx = ?",
                            [(op.txid, op.index) for op, _ in diff.spent])
        self._insert_coins(diff.created)
        self.db.executemany("INSERT OR REPLACE INTO tx_index VALUES (?, ?)", [(tx.txid, height) for tx in block.txs])
        self._index_addresses(block, height, diff)

    def _index_addresses(self, block: Block, height: int, diff: UtxoDiff) -> None:
        """Per (key, transaction): what the block's transactions paid the key and spent of its coins.

        Computed from the block itself (a coin created and spent in the same block is in no diff).
        """
        coins = {op: (coin.pubkey, coin.amount) for op, coin in diff.spent}
        totals: dict[tuple[bytes, int], list] = {}  # (key, position in the block) -> [txid, received, spent]
        for pos, tx in enumerate(block.txs):
            for index, out in enumerate(tx.outputs):
                coins[OutPoint(tx.txid, index)] = (out.pubkey, out.amount)
                totals.setdefault((out.pubkey, pos), [tx.txid, 0, 0])[1] += out.amount
            if not tx.is_coinbase:
                for txin in tx.inputs:
                    pubkey, amount = coins[txin.prev]
                    totals.setdefault((pubkey, pos), [tx.txid, 0, 0])[2] += amount
        self.db.executemany("INSERT OR REPLACE INTO address_index VALUES (?, ?, ?, ?, ?, ?)",
                            [(pubkey, height, pos, txid, received, spent)
                             for (pubkey, pos), (txid, received, spent) in totals.items()])

    def _insert_coins(self, items) -> None:
        self.db.executemany("INSERT INTO utxo VALUES (?, ?, ?, ?, ?, ?)",
                            [(op.txid, op.index, c.amount, c.pubkey, c.height, int(c.coinbase)) for op, c in items])

    # --- queries -------------------------------------------------------------------

    def get_coin(self, outpoint: OutPoint) -> Coin | None:
        """The unspent output at ``outpoint`` on the active chain (a ``UtxoView``)."""
        row = self.db.execute("SELECT amount, pubkey, height, coinbase FROM utxo WHERE txid = ? AND idx = ?",
                              (outpoint.txid, outpoint.index)).fetchone()
        return Coin(row[0], row[1], row[2], bool(row[3])) if row else None

    def coins_of(self, pubkey: bytes) -> list[tuple[OutPoint, Coin]]:
        """Unspent outputs paying ``pubkey``, oldest first."""
        rows = self.db.execute("SELECT txid, idx, amount, height, coinbase FROM utxo WHERE pubkey = ? "
                               "ORDER BY height, txid, idx", (pubkey,)).fetchall()
        return [(OutPoint(t, i), Coin(a, pubkey, h, bool(cb))) for t, i, a, h, cb in rows]

    def utxo_snapshot(self) -> dict[OutPoint, Coin]:
        """The whole UTXO set (for checks and tests)."""
        rows = self.db.execute("SELECT txid, idx, amount, pubkey, height, coinbase FROM utxo").fetchall()
        return {OutPoint(t, i): Coin(a, p, h, bool(cb)) for t, i, a, p, h, cb in rows}

    # --- acknowledged transactions -----------------------------------------------------

    def save_mempool_txs(self, txs: list[tuple[bytes, bytes]]) -> None:
        """Remember ``(txid, raw)`` pairs durably, in one transaction (before they are acknowledged)."""
        if txs:
            with self.transaction():
                self.db.executemany("INSERT OR IGNORE INTO mempool (txid, raw) VALUES (?, ?)", txs)

    def forget_mempool_txs(self, txids: list[bytes]) -> None:
        """Drop transactions that were confirmed or left the pool."""
        if txids:
            with self.transaction():
                self.db.executemany("DELETE FROM mempool WHERE txid = ?", [(t,) for t in txids])

    def load_mempool_txs(self) -> list[bytes]:
        """The remembered transactions, oldest first."""
        return [row[0] for row in self.db.execute("SELECT raw FROM mempool ORDER BY seq")]

    def history_of(self, pubkey: bytes) -> list[tuple[bytes, int, int, int]]:
        """``(txid, height, received, spent)`` of every active-chain transaction touching ``pubkey``, in chain order."""
        return self.db.execute("SELECT txid, height, received, spent FROM address_index WHERE pubkey = ? "
                               "ORDER BY height, pos", (pubkey,)).fetchall()

    def get_undo(self, block_hash: bytes) -> UtxoDiff | None:
        """What connecting ``block_hash`` did to the UTXO set (None while it is not connected)."""
        row = self.db.execute("SELECT undo FROM blocks WHERE hash = ?", (block_hash,)).fetchone()
        return _unpack_diff(row[0]) if row and row[0] is not None else None

    def tx_height(self, txid: bytes) -> int | None:
        """Height of the active-chain block holding ``txid``, or None."""
        row = self.db.execute("SELECT height FROM tx_index WHERE txid = ?", (txid,)).fetchone()
        return row[0] if row else None


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on an exception; nests as a no-op."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.outer = False

    def __enter__(self) -> None:
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
            self.outer = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.outer:
            return
        if exc_type is None:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
            self.db.execute("ROLLBACK")
