"""The chain on disk: one SQLite file per node (stdlib ``sqlite3``, WAL), with a state cache in memory.

Tables:

- ``meta``: schema version, network name, genesis hash, and ``flushed_tip`` (the
  block whose state the ``utxo``, ``tx_index`` and ``address_index`` tables hold);
- ``blocks``: every block whose body the node has (hash, parent, height, cumulative
  work, status, the 80-byte header, the body) and its undo data once connected, and
  the headers of their ancestors whose bodies are still missing (other headers a sync
  indexes ahead of their bodies stay in the chain manager's memory);
- ``active``: height -> hash of the active chain (its last row is the tip);
- ``utxo``: the unspent outputs (indexed by key for wallets);
- ``tx_index``: txid -> height of every transaction on the active chain;
- ``address_index``: per key, every active-chain transaction that paid it or spent
  its coins (amounts received and spent), for wallet histories and explorers;
- ``mempool``: the transactions the node has acknowledged and not yet seen
  confirmed, in arrival order, so that a crash loses none of them.

As in Bitcoin Core (``CCoinsViewCache``, ``-dbcache``), a block is written at once and
the state it changes in batches.  Per block, two statements: its ``blocks`` row with
the body and the undo data (the coins it spent and created), and its ``active`` row; in
one SQL transaction per block, or per reply of blocks while syncing (``Chain.batch``).  In memory
(:class:`zcoin.statecache.StateCache`): the coins created and spent since the last flush (one created
and spent in between never reaches the disk), coins lately read, and the new
``tx_index`` and ``address_index`` rows.  Per flush, one SQL transaction: all that,
sorted by key, and ``flushed_tip``.  The cache is flushed when it holds
``max_cache_entries`` entries, every ``flush_every_blocks`` blocks, when the node's
timer finds ``FLUSH_INTERVAL_S`` passed (:meth:`ChainStore.flush_if_due`), on close,
and before a disconnect, which then takes its block out of the tables themselves:
reorgs are rare, and ``flushed_tip`` so never leaves the active chain.

Recovery, as Core's ``ReplayBlocks``: opening the store connects the active blocks
after ``flushed_tip`` to the cache again from their bodies and undo data (checked when
first connected: nothing is verified again), then flushes; a rolled-back SQL
transaction rebuilds the cache the same way, since it may hold what the disk lost.

The write-ahead log is copied back into the file (checkpointed) by a thread of the store's
own, on a second connection, so that the thread committing blocks does not stop for it.

What survives what: commits run with ``synchronous=NORMAL`` by default.  A process
killed at any instant (``kill -9``) keeps every committed block (the write-ahead log
is in the kernel's hands) and reopens on that tip.  A power loss may lose the last
commits, never the file's consistency: the node reopens on an earlier tip and peers
send the rest.  :meth:`ChainStore.save_mempool_txs` commits with ``FULL`` (fsynced
before the node acknowledges), so acknowledged transactions survive a power loss too.
``synchronous="FULL"`` fsyncs every block as well; ``"OFF"`` is for tests.

Every read answers for the tip, never for a stale disk: coins, histories and tx
heights through the cache, blocks and undo data from the tables.  A file has one
owner at a time (as Core's data directory lock says): another store opened on it
meanwhile would not see the first one's cache.

This module stores; it does not judge.  The rules are in ``zcoin.consensus`` and
the decisions about which chain to follow in ``zcoin.chain``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path

from zcoin.consensus.params import ChainParams
from zcoin.consensus.pow import block_work
from zcoin.consensus.primitives import Block, BlockHeader, OutPoint
from zcoin.consensus.validation import Coin, UtxoDiff, genesis_diff
from zcoin.statecache import StateCache, StoreError, address_rows, coin_rows, pack_undo, unpack_undo

# 2: the state tables may lag the tip (``flushed_tip``); 3: no tip in ``meta`` (``active`` says it, and one
# write less per block); 4: ``blocks`` is a rowid table (see ``_BLOCKS``).  Older stores are upgraded when opened.
SCHEMA_VERSION = 4

# Block status, in the order a block moves through them.
HEADER_ONLY = 1  # header checked, body not yet received (stored only below a stored block)
HAVE_DATA = 2  # body stored, not (yet) connected or no longer connected
INVALID = 9  # failed a rule; never connected again

# The cache's bounds.  An entry (a coin or an index row) costs some 190 bytes of Python objects
# (measured), so the default holds about 40 MB; the block bound keeps the replay at the next start
# short (bodies and undo data, no signatures), the time bound keeps an idle node's tables recent.
MAX_CACHE_ENTRIES = 200_000
FLUSH_EVERY_BLOCKS = 2_000
FLUSH_INTERVAL_S = 600.0
DEFAULT_SYNCHRONOUS = "NORMAL"  # survives kill -9; see the module docstring
# A checkpoint copies the write-ahead log into the file and fsyncs both.  Run by the committing
# thread, as SQLite does after a commit that leaves the log longer than a bound, they took an eighth of
# a long replay's wall time; so a thread of the store's own checkpoints once commits have changed so
# many rows (some thousand pages of log for blocks, a second or two of acknowledgements at 1000 tx/s;
# SQLite releases the GIL meanwhile), and the committing connection's own bound is only a backstop.
WAL_CHECKPOINT_PAGES = 10_000
CHECKPOINT_EVERY_ROWS = 2_000

# quick_check reads the whole file (seconds on a large chain), so it runs only on a store left open
# by a crash, where a half-written page is likeliest; damage is then reported at open rather than as a
# failed write later.  This many problems are named in the error.
QUICK_CHECK_ERRORS = 3

# A rowid table, its rows appended in arrival order, with an index on the hash: as a WITHOUT ROWID table
# keyed by the (random) hash, whose b-tree holds the bodies themselves, a block's insert cost twice as
# much (SQLite advises WITHOUT ROWID only for rows under a twentieth of a page).
_BLOCKS = """(
    hash BLOB PRIMARY KEY,
    prev_hash BLOB NOT NULL,
    height INTEGER NOT NULL,
    chain_work BLOB NOT NULL,
    status INTEGER NOT NULL,
    header BLOB NOT NULL,
    body BLOB,
    undo BLOB
)"""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS blocks {_BLOCKS};
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
DROP INDEX IF EXISTS address_index_by_height;
CREATE TABLE IF NOT EXISTS mempool (seq INTEGER PRIMARY KEY AUTOINCREMENT, txid BLOB UNIQUE NOT NULL, raw BLOB NOT NULL);
"""


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


def _work_bytes(work: int) -> bytes:
    return work.to_bytes(32, "big")


class ChainStore:
    """A node's SQLite chain file and its state cache (see the module docstring)."""

    def __init__(self, path: str | Path, params: ChainParams, *, synchronous: str = DEFAULT_SYNCHRONOUS,
                 max_cache_entries: int = MAX_CACHE_ENTRIES, flush_every_blocks: int = FLUSH_EVERY_BLOCKS) -> None:
        self.path = Path(path)
        self.params = params
        self.synchronous = synchronous.upper()
        self.max_cache_entries = max_cache_entries
        self.flush_every_blocks = flush_every_blocks
        self.flushed_at: float | None = None  # the node clock's time of the last timed flush
        self.cache: StateCache | None = None  # set once the store is open
        self._on_close: list[Callable[[], None]] = []
        self._checkpointer = _Checkpointer(self.path, self.synchronous)
        self._checkpoint_at_changes = CHECKPOINT_EVERY_ROWS  # of ``db.total_changes``
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
            self.db.execute(f"PRAGMA synchronous={self.synchronous}")
            self.db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            self.db.executescript(_SCHEMA)
            self._check_or_init_meta()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise StoreError(f"{self.path}: not a usable zcoin store ({exc})") from None
        except StoreError:
            self.db.close()
            raise
        try:  # a damaged page met here is the chain's, reported as the chain manager's loading would
            self._replay_blocks(flush=True)
        except BaseException:
            self._checkpointer.close()
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
        if int(version) not in (1, 2, 3, SCHEMA_VERSION):
            raise StoreError(f"{self.path}: schema version {int(version)}, this zcoin reads {SCHEMA_VERSION}")
        network = self._meta("network")
        if network is None:
            raise StoreError(f"{self.path}: store without a network name (damaged?)")
        if network != self.params.name.encode():
            raise StoreError(f"{self.path}: store of network {network.decode(errors='replace')!r}, "
                             f"not {self.params.name!r}")
        if self._meta("genesis") != self.params.genesis_hash:
            raise StoreError(f"{self.path}: genesis block differs from network {self.params.name!r}")
        if int(version) < SCHEMA_VERSION:
            with self.transaction():
                if int(version) == 1:  # its tables were written with every block: they are the tip's
                    self.db.execute("INSERT OR REPLACE INTO meta VALUES ('flushed_tip', ?)", (self._meta("tip"),))
                self.db.execute("DELETE FROM meta WHERE key = 'tip'")
                # The blocks into a rowid table: a few seconds for 100k blocks, once, and free space about
                # the blocks' size (no ORDER BY: it would sort the bodies through temporary files too).
                try:
                    self.db.execute(f"CREATE TABLE blocks_v4 {_BLOCKS}")
                    self.db.execute("INSERT INTO blocks_v4 SELECT hash, prev_hash, height, chain_work, status, "
                                    "header, body, undo FROM blocks")
                    self.db.execute("DROP TABLE blocks")
                    self.db.execute("ALTER TABLE blocks_v4 RENAME TO blocks")
                except sqlite3.Error as exc:
                    raise StoreError(f"{self.path}: upgrading the store to schema {SCHEMA_VERSION} failed ({exc}); "
                                     "it needs free disk space about the size of the store, and is left as it "
                                     "was") from None
                self.db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                                (str(SCHEMA_VERSION).encode(),))
        if self._meta("address_index") is None:
            self._build_address_index()

    def _build_address_index(self) -> None:
        """Index a store written before the address index existed, from its blocks and undo data."""
        with self.transaction():
            self.db.execute("DELETE FROM address_index")
            for height, body, undo in self.db.execute(
                    "SELECT a.height, b.body, b.undo FROM active a JOIN blocks b ON a.hash = b.hash ORDER BY a.height"
            ).fetchall():
                self.db.executemany("INSERT OR REPLACE INTO address_index VALUES (?, ?, ?, ?, ?, ?)",
                                    address_rows(Block.parse(body), height, unpack_undo(undo)))
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('address_index', ?)", (b"1",))

    def _init_genesis(self) -> None:
        genesis = self.params.genesis
        diff = genesis_diff(self.params)
        with self.transaction():
            self.db.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("schema_version", str(SCHEMA_VERSION).encode()),
                ("network", self.params.name.encode()),
                ("genesis", genesis.hash),
                ("flushed_tip", genesis.hash),
                ("address_index", b"1"),
            ])
            self.db.execute("INSERT INTO blocks VALUES (?, ?, 0, ?, ?, ?, ?, ?)", (
                genesis.hash, genesis.header.prev_hash, _work_bytes(block_work(genesis.header.bits)),
                HAVE_DATA, genesis.header.serialize(), genesis.raw, pack_undo(diff)))
            self.db.execute("INSERT INTO active VALUES (0, ?)", (genesis.hash,))
            state = StateCache(self.db, genesis.header.prev_hash, self.max_cache_entries, self.flush_every_blocks)
            state.apply(genesis, 0, diff)  # its coins and index rows, as any block's, written at once
            state.flush()

    def _replay_blocks(self, *, flush: bool) -> None:
        """Rebuild the cache: from ``flushed_tip``, connect the active blocks again (Core's ``ReplayBlocks``).

        Their bodies and undo data say all; nothing is verified again.  ``flush``: write the
        result (at open; not after a rollback, where the disk may be failing).
        """
        best = self._meta("flushed_tip")
        row = self.db.execute("SELECT height FROM blocks WHERE hash = ?", (best,)).fetchone()
        if row is None or self.hash_at(row[0]) != best:
            raise StoreError(f"{self.path}: the block of the last flush is not on the active chain (damaged?)")
        self.cache = StateCache(self.db, best, self.max_cache_entries, self.flush_every_blocks)
        for height, body, undo in self.db.execute(
                "SELECT a.height, b.body, b.undo FROM active a JOIN blocks b ON a.hash = b.hash WHERE a.height > ? "
                "ORDER BY a.height", (row[0],)).fetchall():
            self.cache.apply(Block.parse(body), height, unpack_undo(undo))
            if flush and self.cache.full:
                self.flush()
        if flush:
            self.flush()

    def call_on_close(self, callback: Callable[[], None]) -> None:
        """Have :meth:`close` call ``callback`` first (to stop what lives as long as the store, as threads)."""
        self._on_close.append(callback)

    def close(self) -> None:
        """Flush the cache and close the file (a checkpoint folds the WAL back in)."""
        for callback in self._on_close:
            callback()
        try:
            self.flush()
        except sqlite3.Error:  # nothing is lost: the next open replays the blocks after the last flush
            pass
        self._checkpointer.close()
        try:
            self.db.close()
        except sqlite3.Error:
            pass

    def _committed(self) -> None:
        if self.db.total_changes >= self._checkpoint_at_changes:
            self._checkpoint_at_changes = self.db.total_changes + CHECKPOINT_EVERY_ROWS
            self._checkpointer.poke()

    def transaction(self, *, durable: bool = False):
        """A context manager running its body as one SQL transaction (``durable``: fsynced at commit)."""
        return _Transaction(self, durable)

    # --- the cache -------------------------------------------------------------

    def flush(self) -> None:
        """Write what the cache holds to the tables now (one SQL transaction) and empty it."""
        if not self.cache.blocks:
            self.cache.clean.clear()  # only what the disk said: nothing to write
            return
        with self.transaction():
            self.cache.flush()

    def flush_if_due(self, now: float) -> bool:
        """Flush if ``FLUSH_INTERVAL_S`` passed since the last timed flush (``now``: the node's monotonic clock)."""
        if self.flushed_at is None:
            self.flushed_at = now
        if now - self.flushed_at < FLUSH_INTERVAL_S:
            return False
        self.flushed_at = now
        self.flush()
        return True

    # --- block index -----------------------------------------------------------

    def load_index(self) -> list[tuple[bytes, bytes, int, bytes, int, bytes]]:
        """Every known block, parents before children, as stored: ``(hash, prev_hash, height, chain_work
        (32 bytes, big-endian), status, header (80 bytes))`` (a long chain loads fastest as plain rows)."""
        rows = self.db.execute("SELECT hash, prev_hash, height, chain_work, status, header FROM blocks").fetchall()
        rows.sort(key=itemgetter(2))  # here rather than ORDER BY: SQLite would sort through a temporary b-tree
        return rows

    def put_header(self, header: BlockHeader, height: int, chain_work: int) -> None:
        """Add a header without its body to the index (ignored if known): the parent of a stored block."""
        self.db.execute("INSERT OR IGNORE INTO blocks (hash, prev_hash, height, chain_work, status, header) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (header.hash, header.prev_hash, height, _work_bytes(chain_work), HEADER_ONLY,
                         header.serialize()))

    def put_block(self, block: Block, height: int, chain_work: int, status: int = HAVE_DATA) -> None:
        """Store a block that is not connected (yet): its body and index entry (an invalid one stays invalid).

        A block connected as it arrives needs no call: :meth:`connect` writes it.
        """
        header = block.header
        self.db.execute("INSERT INTO blocks (hash, prev_hash, height, chain_work, status, header, body) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (hash) DO UPDATE "
                        "SET body = excluded.body, status = excluded.status WHERE status != ?",
                        (header.hash, header.prev_hash, height, _work_bytes(chain_work), status,
                         header.serialize(), block.raw, INVALID))

    def set_status(self, block_hash: bytes, status: int) -> None:
        """Change a block's status (marking it invalid, for one)."""
        self.db.execute("UPDATE blocks SET status = ? WHERE hash = ?", (status, block_hash))

    def get_block(self, block_hash: bytes) -> Block | None:
        """The stored block with this hash, or None."""
        raw = self.get_block_raw(block_hash)
        return Block.parse(raw) if raw is not None else None

    def get_block_raw(self, block_hash: bytes) -> bytes | None:
        """The stored encoding of the block with this hash, or None."""
        row = self.db.execute("SELECT body FROM blocks WHERE hash = ?", (block_hash,)).fetchone()
        return row[0] if row else None

    # --- the active chain --------------------------------------------------------

    def tip_hash(self) -> bytes:
        """Hash of the last connected block (the cache's block: it is always the tip's state)."""
        return self.cache.best

    def hash_at(self, height: int) -> bytes | None:
        """Hash of the active chain's block at ``height``."""
        row = self.db.execute("SELECT hash FROM active WHERE height = ?", (height,)).fetchone()
        return row[0] if row else None

    def connect(self, block: Block, height: int, diff: UtxoDiff, chain_work: int) -> None:
        """Make ``block`` (child of the tip) the new tip, applying ``diff``, in one transaction.

        The block is stored with its undo data (a row stored before, maybe a header alone, is completed).
        """
        header = block.header
        if self.tip_hash() != header.prev_hash:
            raise StoreError("connect: block does not extend the tip")
        with self.transaction():
            self.db.execute("INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                            "ON CONFLICT (hash) DO UPDATE SET body = excluded.body, status = excluded.status, "
                            "undo = excluded.undo",
                            (header.hash, header.prev_hash, height, _work_bytes(chain_work), HAVE_DATA,
                             header.serialize(), block.raw, pack_undo(diff)))
            self.db.execute("INSERT OR REPLACE INTO active VALUES (?, ?)", (height, block.hash))
            self.cache.apply(block, height, diff)
            if self.cache.full:
                self.flush()

    def disconnect(self, block: Block, height: int) -> UtxoDiff:
        """Undo the tip ``block`` with its stored undo data, in one transaction; return the diff undone.

        The cache is flushed first and the block taken out of the tables themselves:
        disconnects are rare, and ``flushed_tip`` then never leaves the active chain.
        """
        if self.tip_hash() != block.hash:
            raise StoreError("disconnect: block is not the tip")
        diff = self.get_undo(block.hash)
        if diff is None:
            raise StoreError(f"disconnect: no undo data for {block.hash_hex}")
        with self.transaction():
            self.cache.flush()  # the tables now hold the tip's state, which the undo data takes back
            self.db.executemany("DELETE FROM utxo WHERE txid = ? AND idx = ?",
                                [(op.txid, op.index) for op, _ in diff.created])
            self.db.executemany("INSERT INTO utxo VALUES (?, ?, ?, ?, ?, ?)", coin_rows(diff.spent))
            self.db.executemany("DELETE FROM tx_index WHERE txid = ?", [(tx.txid,) for tx in block.txs])
            self.db.executemany("DELETE FROM address_index WHERE pubkey = ? AND height = ? AND pos = ?",
                                [row[:3] for row in address_rows(block, height, diff)])
            self.db.execute("DELETE FROM active WHERE height = ?", (height,))
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'flushed_tip'", (block.header.prev_hash,))
            self.cache.best = block.header.prev_hash
        return diff

    # --- queries -------------------------------------------------------------------

    def get_coin(self, outpoint: OutPoint) -> Coin | None:
        """The unspent output at ``outpoint`` on the active chain (a ``UtxoView``)."""
        return self.cache.get_coin(outpoint)

    def coins_of(self, pubkey: bytes) -> list[tuple[OutPoint, Coin]]:
        """Unspent outputs paying ``pubkey``, oldest first (the cache's part is a scan of its new coins)."""
        cache = self.cache
        rows = self.db.execute("SELECT txid, idx, amount, height, coinbase FROM utxo WHERE pubkey = ?",
                               (pubkey,)).fetchall()
        coins = [(op, coin) for op, coin in cache.fresh.items() if coin.pubkey == pubkey]
        coins.extend((op, Coin(a, pubkey, h, bool(cb))) for t, i, a, h, cb in rows
                     if (op := OutPoint(t, i)) not in cache.spent and op not in cache.fresh)
        return sorted(coins, key=lambda item: (item[1].height, item[0].txid, item[0].index))

    def utxo_snapshot(self) -> dict[OutPoint, Coin]:
        """The whole UTXO set (for checks and tests)."""
        rows = self.db.execute("SELECT txid, idx, amount, pubkey, height, coinbase FROM utxo").fetchall()
        coins = {OutPoint(t, i): Coin(a, p, h, bool(cb)) for t, i, a, p, h, cb in rows}
        for outpoint in self.cache.spent:
            del coins[outpoint]
        coins.update(self.cache.fresh)
        return coins

    def history_of(self, pubkey: bytes) -> list[tuple[bytes, int, int, int]]:
        """``(txid, height, received, spent)`` of every active-chain transaction touching ``pubkey``, in chain order."""
        rows = self.db.execute("SELECT height, pos, txid, received, spent FROM address_index WHERE pubkey = ?",
                               (pubkey,)).fetchall()
        rows.extend(row[1:] for row in self.cache.history if row[0] == pubkey)
        return [(txid, height, received, spent) for height, _, txid, received, spent in sorted(rows)]

    def tx_height(self, txid: bytes) -> int | None:
        """Height of the active-chain block holding ``txid``, or None."""
        height = self.cache.tx_heights.get(txid)
        if height is None:
            row = self.db.execute("SELECT height FROM tx_index WHERE txid = ?", (txid,)).fetchone()
            height = row[0] if row else None
        return height

    def get_undo(self, block_hash: bytes) -> UtxoDiff | None:
        """What connecting ``block_hash`` did to the UTXO set (None while it is not connected)."""
        row = self.db.execute("SELECT undo FROM blocks WHERE hash = ?", (block_hash,)).fetchone()
        return unpack_undo(row[0]) if row and row[0] is not None else None

    # --- acknowledged transactions -----------------------------------------------------

    def save_mempool_txs(self, txs: list[tuple[bytes, bytes]]) -> None:
        """Remember ``(txid, raw)`` pairs durably, in one transaction (before they are acknowledged)."""
        if txs:
            with self.transaction(durable=True):
                self.db.executemany("INSERT OR IGNORE INTO mempool (txid, raw) VALUES (?, ?)", txs)

    def forget_mempool_txs(self, txids: list[bytes]) -> None:
        """Drop transactions that were confirmed or left the pool."""
        if txids:
            with self.transaction():
                self.db.executemany("DELETE FROM mempool WHERE txid = ?", [(t,) for t in txids])

    def load_mempool_txs(self) -> list[bytes]:
        """The remembered transactions, oldest first."""
        return [row[0] for row in self.db.execute("SELECT raw FROM mempool ORDER BY seq")]


class _Checkpointer:
    """Copies a store's write-ahead log into its file on a thread and connection of its own.

    SQLite's PASSIVE checkpoint never waits for the writer nor holds it up: it copies what is
    committed, and the writer starts the log over once all of it is copied.  Woken by
    :meth:`poke`; started on first use, stopped (and its connection closed) by :meth:`close`.
    """

    def __init__(self, path: Path, synchronous: str) -> None:
        self.path = path
        self.synchronous = synchronous  # the store's: its checkpoints fsync as the store's commits do
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        if self._stopping:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
            db.execute(f"PRAGMA synchronous={self.synchronous}")
        except sqlite3.Error:  # the committing connection's own checkpoints still bound the log
            return
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    return
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:  # the committing connection's own checkpoints still bound the log
                    pass
        finally:
            db.close()

    def close(self) -> None:
        """Stop the thread for good (the store's connection checkpoints as it closes)."""
        self._stopping = True
        if self._thread is not None:
            self._wake.set()
            self._thread.join()
            self._thread = None


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on an exception; nests as a no-op.

    After a rollback the store's cache is rebuilt: it may hold changes the disk just lost.
    A durable transaction commits with ``synchronous=FULL`` (SQLite allows the switch only
    outside a transaction, hence around it).
    """

    def __init__(self, store: ChainStore, durable: bool) -> None:
        self.store = store
        self.db = store.db
        self.sync = "FULL" if durable and store.synchronous == "NORMAL" else None
        self.outer = False

    def __enter__(self) -> None:
        if not self.db.in_transaction:
            if self.sync:
                self.db.execute(f"PRAGMA synchronous={self.sync}")
            self.db.execute("BEGIN IMMEDIATE")
            self.outer = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.outer:
            return
        committed = False
        try:
            if exc_type is None:
                self.db.execute("COMMIT")
                committed = True
                self.store._committed()
        finally:
            if not committed:
                if self.db.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
                    self.db.execute("ROLLBACK")
                if self.store.cache is not None:
                    self.store._replay_blocks(flush=False)
            if self.sync:
                self.db.execute(f"PRAGMA synchronous={self.store.synchronous}")
