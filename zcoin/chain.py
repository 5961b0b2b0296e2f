"""The chain manager: which blocks a node has, and which chain it follows.

:class:`Chain` keeps the whole block index in memory (loaded from the store
at start) and decides, like Bitcoin Core's ``ActivateBestChain``, which chain
is active: the one with the most cumulative work whose every block has been
received and found valid; on equal work the first seen stays.  Reaching it
means disconnecting blocks down to the fork point with their undo data and
connecting the new branch, each step one SQL transaction in
:class:`~zcoin.storage.ChainStore`, so a crash at any point leaves a
consistent chain that the next start carries on from.  Blocks are checked
against the store's UTXO view, which is its memory cache over the disk
(flushed in batches; see :mod:`zcoin.storage`).

What the node knows of the block tree, and the walks over it, are the
:class:`~zcoin.blocktree.BlockTree`'s, which :class:`Chain` extends.

Blocks arrive in any order.  A block whose parent is unknown waits in the
:class:`OrphanPool` (bounded in count and bytes, oldest evicted) and the
caller is told which ancestor to fetch; once the parent connects, the orphans
follow.  Headers may come first (headers-first sync): :meth:`Chain.add_header`
indexes a checked header without its body, and :meth:`Chain.blocks_to_fetch`
lists the bodies the best header chain still lacks.  A header without its body
is kept in memory only, unless a stored block descends from it (every stored
block's parent is stored): writing each of a long sync's headers cost a tenth
of the sync, and after a restart peers send the missing headers again in a few
round trips.

A block's signatures are verified on the calling thread and one worker thread
(:class:`~zcoin.sigchecks.SignatureCheckQueue`, as Core's ``CCheckQueue``), except
those the node's mempool verified when it took their transactions
(:class:`~zcoin.sigchecks.SignatureCache`, as Core's signature cache).  A
sync reply's blocks are checked ahead (:meth:`Chain.batch`): their other rules
first, while a process of the chain's own verifies their signatures
(:class:`~zcoin.checksahead.ChecksAhead`).  Both stop when the chain's store is
closed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from loguru import logger

from zcoin.blocktree import BlockTree, IndexEntry
from zcoin.checksahead import ChecksAhead
from zcoin.consensus import errors as E
from zcoin.consensus.params import ChainParams
from zcoin.consensus.pow import check_pow
from zcoin.consensus.primitives import Block, BlockHeader
from zcoin.consensus.validation import check_block, check_header_context, connect_block, reorg_path
from zcoin.sigchecks import SignatureCache, SignatureCheckQueue
from zcoin.storage import HAVE_DATA, HEADER_ONLY, INVALID, ChainStore

MAX_ORPHAN_BLOCKS = 256
MAX_ORPHAN_BYTES = 32 * 1024 * 1024


class BlockInvalidAncestor(E.InvalidBlock):
    """The block descends from a block already found invalid."""

    code = "bad-prevblk"


class UnknownParent(LookupError):
    """A header whose parent is not in the index (fetch the ancestors first)."""


@dataclass(slots=True)
class ChainUpdate:
    """What one call changed: blocks connected and disconnected (in order), orphans, fetch hints."""

    connected: list[Block] = field(default_factory=list)
    disconnected: list[Block] = field(default_factory=list)
    orphaned: bool = False
    missing: bytes | None = None  # an ancestor to fetch so an orphan can connect
    known: bool = False
    invalid: list[tuple[bytes, E.ValidationError]] = field(default_factory=list)

    def merge(self, other: ChainUpdate) -> None:
        """Follow with the changes of ``other`` (a later call), keeping the net effect."""
        for block in other.disconnected:
            self.note_disconnected(block)
        for block in other.connected:
            self.note_connected(block)
        self.invalid.extend(other.invalid)

    # Net changes from the state before the call: a block connected then disconnected
    # again (a reorg that failed on an invalid block) is in neither list, so a mempool
    # following ``connected``/``disconnected`` never drops transactions for a block
    # that did not stay on the chain.

    def note_connected(self, block: Block) -> None:
        """Record that ``block`` was connected as the new tip."""
        if not self.connected and self.disconnected and self.disconnected[-1].hash == block.hash:
            self.disconnected.pop()  # back on a block of the starting chain
        else:
            self.connected.append(block)

    def note_disconnected(self, block: Block) -> None:
        """Record that the tip ``block`` was disconnected."""
        if self.connected and self.connected[-1].hash == block.hash:
            self.connected.pop()  # connected earlier in this call: never happened
        else:
            self.disconnected.append(block)

    @property
    def reorg_depth(self) -> int:
        """How many blocks left the active chain."""
        return len(self.disconnected)


class OrphanPool:
    """Blocks whose parent is unknown, bounded in count and bytes (the oldest go first)."""

    def __init__(self, max_blocks: int = MAX_ORPHAN_BLOCKS, max_bytes: int = MAX_ORPHAN_BYTES) -> None:
        self.max_blocks = max_blocks
        self.max_bytes = max_bytes
        self.blocks: OrderedDict[bytes, Block] = OrderedDict()
        self.by_parent: dict[bytes, set[bytes]] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.blocks)

    def __contains__(self, block_hash: bytes) -> bool:
        return block_hash in self.blocks

    def add(self, block: Block) -> None:
        """Keep ``block`` until its parent arrives, evicting the oldest over the limits."""
        if block.hash in self.blocks:
            return
        self.blocks[block.hash] = block
        self.by_parent.setdefault(block.header.prev_hash, set()).add(block.hash)
        self.bytes += block.size
        while len(self.blocks) > self.max_blocks or self.bytes > self.max_bytes:
            self._remove(next(iter(self.blocks)))

    def _remove(self, block_hash: bytes) -> Block:
        block = self.blocks.pop(block_hash)
        self.bytes -= block.size
        siblings = self.by_parent.get(block.header.prev_hash)
        if siblings is not None:
            siblings.discard(block_hash)
            if not siblings:
                del self.by_parent[block.header.prev_hash]
        return block

    def take_children(self, parent_hash: bytes) -> list[Block]:
        """Remove and return the orphans whose parent is ``parent_hash``."""
        return [self._remove(h) for h in sorted(self.by_parent.get(parent_hash, ()))]

    def missing_ancestor(self, block_hash: bytes) -> bytes:
        """The first ancestor of an orphan that is not in the pool (the one to fetch)."""
        missing = self.blocks[block_hash].header.prev_hash
        while missing in self.blocks:
            missing = self.blocks[missing].header.prev_hash
        return missing


class Chain(BlockTree):
    """A node's view of the block tree and its active chain (see the module docstring).

    What it knows, and the walks over it, are the :class:`~zcoin.blocktree.BlockTree`'s;
    here, adding headers and blocks, and following the best chain.
    """

    def __init__(self, store: ChainStore, params: ChainParams, *, orphans: OrphanPool | None = None) -> None:
        super().__init__(store, params)
        self.orphans = orphans if orphans is not None else OrphanPool()  # an empty pool is falsy
        self.signature_checks = SignatureCheckQueue()
        self.signature_cache = SignatureCache()  # the mempool's (the node gives it to its pool)
        self._verify_block = self.signature_cache.verifier(self.signature_checks)
        self.ahead = ChecksAhead(params, cache=self.signature_cache)
        store.call_on_close(self.signature_checks.close)  # whoever closes the store stops the workers
        store.call_on_close(self.ahead.close)
        self._load()

    def _load(self) -> None:
        """Read the block index and the active chain from the store; finish a reorg a crash cut short."""
        self._load_index()
        tip_work = self.tip.chain_work
        self._candidates: set[bytes] = {
            e.hash for e in self.index.values()
            if e.chain_work > tip_work and e.status == HAVE_DATA and not self.in_active_chain(e.hash)}
        if self._candidates:
            self._activate_best_chain()

    # --- reading (the rest is the tree's) ----------------------------------------

    def get_block(self, block_hash: bytes) -> Block | None:
        return self.store.get_block(block_hash)

    def has_block(self, block_hash: bytes) -> bool:
        """True if the block's body is stored (or it is waiting as an orphan)."""
        entry = self.index.get(block_hash)
        return (entry is not None and entry.status == HAVE_DATA) or block_hash in self.orphans

    # --- adding ------------------------------------------------------------------

    def _check_header(self, header: BlockHeader, parent: IndexEntry, now: int) -> None:
        if parent.status == INVALID:
            raise BlockInvalidAncestor(f"parent {parent.hash_hex} is invalid", block=header.hash_hex)
        check_header_context(header, self.header_context(parent), self.params, now)

    def add_header(self, header: BlockHeader, now: int) -> IndexEntry:
        """Index a header without its body (headers-first sync); raise on an invalid one."""
        entry = self.index.get(header.hash)
        if entry is not None:
            if entry.status == INVALID:
                raise BlockInvalidAncestor("known invalid", block=header.hash_hex)
            return entry
        parent = self.index.get(header.prev_hash)
        if parent is None:
            raise UnknownParent(header.prev_hash)
        if not check_pow(header, self.params.pow_limit):
            raise E.BlockBadPow(f"hash {header.hash_hex} above its target", block=header.hash_hex)
        self._check_header(header, parent, now)
        return self._new_entry(header, parent, HEADER_ONLY)  # in memory only: see the module docstring

    @contextmanager
    def batch(self, blocks: Sequence[Block] = ()) -> Iterator[None]:
        """Store what the body adds in one SQL transaction: one commit for many blocks.

        A syncing node connects each reply of up to 16 blocks so (a commit cost as much as the
        rest of storing an empty block).  A crash loses the batch, fetched again after the
        restart, never part of one; a failed write rolls it all back and the index is reloaded.

        ``blocks``, those the body will add (in order), are checked ahead: the run of them that
        extends the tip has every rule but the signatures checked at once, and its signatures are
        verified on the other core while the body stores the blocks (:class:`~zcoin.checksahead.ChecksAhead`).
        """
        try:
            with self.store.transaction():
                tip = self.tip
                self.ahead.check(blocks, tip.hash, tip.height, self.store, self._is_new)
                yield
        except Exception:
            self._load()  # what memory holds of the batch, the store has just rolled back
            raise
        finally:
            self.ahead.forget()

    def _is_new(self, block_hash: bytes) -> bool:
        """True if the block is not in the index, or only its header is."""
        entry = self.index.get(block_hash)
        return entry is None or entry.status == HEADER_ONLY

    def add_block(self, block: Block, now: int) -> ChainUpdate:
        """Take a block from anywhere: check it, store it, follow the best chain, connect waiting orphans.

        Raises an ``InvalidBlock`` subclass if ``block`` itself is invalid (its
        descendants among the orphans are dropped with it); invalid orphans met
        on the way are listed in ``update.invalid``.
        """
        try:
            update = self._add_one(block, now)
        except E.InvalidBlock as exc:
            entry = self.index.get(block.hash)
            if isinstance(exc, BlockInvalidAncestor) or (entry is not None and entry.status == INVALID):
                self._drop_orphan_descendants(block.hash)  # not for a mutated body: the real block may come
            raise
        if update.orphaned or update.known:
            return update
        waiting = self.orphans.take_children(block.hash)
        while waiting:
            orphan = waiting.pop(0)
            try:
                update.merge(self._add_one(orphan, now))
                waiting.extend(self.orphans.take_children(orphan.hash))
            except E.ValidationError as exc:
                update.invalid.append((orphan.hash, exc))
                self._drop_orphan_descendants(orphan.hash)
        return update

    def _store_headers_below(self, entry: IndexEntry) -> None:
        """Store the headers of ``entry``'s ancestors that only memory holds, so that every stored
        block's parent is stored too (a body that came ahead of its parents' bodies)."""
        missing = []
        parent = self.index[entry.prev_hash]
        while parent.status == HEADER_ONLY:
            missing.append(parent)
            parent = self.index[parent.prev_hash]
        for ancestor in reversed(missing):
            self.store.put_header(ancestor.header, ancestor.height, ancestor.chain_work)

    def _drop_orphan_descendants(self, block_hash: bytes) -> None:
        stack = [block_hash]
        while stack:
            stack.extend(b.hash for b in self.orphans.take_children(stack.pop()))

    def _add_one(self, block: Block, now: int) -> ChainUpdate:
        block_hash = block.hash
        entry = self.index.get(block_hash)
        if entry is not None and entry.status == INVALID:
            raise BlockInvalidAncestor("block is known to be invalid", block=block.hash_hex)
        if entry is not None and entry.status == HAVE_DATA or block_hash in self.orphans:
            return ChainUpdate(known=True)
        if not self.ahead.passed_check_block(block):
            check_block(block, self.params)
        parent = self.index.get(block.header.prev_hash)
        if parent is None:
            self.orphans.add(block)
            return ChainUpdate(orphaned=True, missing=self.orphans.missing_ancestor(block_hash))
        if entry is None or parent.status == INVALID:  # an indexed header passed these, its parent valid then
            self._check_header(block.header, parent, now)
        if entry is None:
            entry = self._new_entry(block.header, parent, HAVE_DATA)
        entry.status = HAVE_DATA
        try:
            with self.store.transaction():  # the block and what it connects: one commit, one fsync
                if entry.chain_work > self.tip.chain_work:
                    self._candidates.add(block_hash)
                update = self._activate_best_chain(just_received=block)
                if not self.in_active_chain(block_hash):  # connecting it stored it; else it waits, or is invalid
                    self._store_headers_below(entry)
                    self.store.put_block(block, entry.height, entry.chain_work, entry.status)
        except Exception:
            # The store rolled back (disk full, I/O error...): memory must not keep what it lost.
            self._load()
            raise
        for bad_hash, exc in update.invalid:
            if bad_hash == block_hash:
                raise exc
        return update

    # --- following the best chain ------------------------------------------------

    def _best_candidate(self) -> IndexEntry | None:
        tip_work = self.tip.chain_work
        for block_hash in list(self._candidates):
            if self.index[block_hash].chain_work <= tip_work or self.index[block_hash].status != HAVE_DATA:
                self._candidates.discard(block_hash)
        ranked = sorted((self.index[h] for h in self._candidates), key=lambda e: (-e.chain_work, e.seq))
        for entry in ranked:
            if self._path_has_data(entry):
                return entry
        return None

    def _path_has_data(self, entry: IndexEntry) -> bool:
        """True if every block from ``entry`` down to the active chain has its body and is not invalid."""
        while not self.in_active_chain(entry.hash):
            if entry.status != HAVE_DATA:
                return False
            entry = self.index[entry.prev_hash]
        return True

    def _activate_best_chain(self, just_received: Block | None = None) -> ChainUpdate:
        update = ChainUpdate()
        start = self.tip
        while True:
            best = self._best_candidate()
            if best is None:
                # A reorg that failed on an invalid block may end on a chain with only as
                # much work as the one we left: ties keep the first seen, so go back.
                if self.tip.hash == start.hash or self.tip.chain_work != start.chain_work \
                        or start.status != HAVE_DATA:
                    break
                best = start
            disconnect, connect = reorg_path(self.tip, best, self.index.__getitem__)
            for entry in disconnect:
                block = self.store.get_block(entry.hash)
                self.store.disconnect(block, entry.height)
                self.active.pop()
                self._candidates.add(entry.hash)
                update.note_disconnected(block)
            if disconnect:
                logger.debug("reorg", depth=len(disconnect), fork_height=self.height, to=best.hash_hex)
            for entry in connect:
                block = just_received if just_received is not None and just_received.hash == entry.hash \
                    else self.store.get_block(entry.hash)
                try:
                    diff = self.ahead.diff(block)  # if its rules were checked ahead and its signatures passed
                    if diff is None:
                        diff = connect_block(block, entry.height, self.store, self.params, self._verify_block)
                except E.InvalidBlock as exc:
                    self._mark_invalid(entry)
                    update.invalid.append((entry.hash, exc))
                    logger.warning("block invalid", block=entry.hash_hex, height=entry.height, reason=exc.reason)
                    break
                self.store.connect(block, entry.height, diff, entry.chain_work)
                self.active.append(entry.hash)
                self._candidates.discard(entry.hash)
                update.note_connected(block)
        return update

    def _mark_invalid(self, bad: IndexEntry) -> None:
        """Mark ``bad`` and every known descendant invalid (never connected again)."""
        bad.status = INVALID
        self.store.set_status(bad.hash, INVALID)
        self._candidates.discard(bad.hash)
        for entry in self.index.values():
            if entry.height > bad.height and entry.status != INVALID and self.ancestor(entry, bad.height) is bad:
                entry.status = INVALID
                self.store.set_status(entry.hash, INVALID)
                self._candidates.discard(entry.hash)
        if self.best_header.status == INVALID:
            self.best_header = max((e for e in self.index.values() if e.status != INVALID),
                                   key=lambda e: (e.chain_work, -e.seq))

