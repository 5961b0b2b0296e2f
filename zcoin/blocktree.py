"""The block tree: every block a node knows of, in memory, and the active chain through it.

:class:`BlockTree` is the reading half of the chain manager (:class:`~zcoin.chain.Chain`
adds blocks to it and chooses the active chain): the block index, an :class:`IndexEntry`
per known block (loaded from the store at start, headers parsed on first use); the active
chain, a list of hashes by height; the best header known; and the walks the node asks of
them: ancestors, the context a new header must satisfy, block locators and the headers
after one, and the bodies missing on the way to a peer's tip.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

from zcoin.consensus.params import ChainParams
from zcoin.consensus.pow import block_work
from zcoin.consensus.primitives import BlockHeader
from zcoin.consensus.validation import HeaderContext, median_time_past, next_bits, retarget_window_start
from zcoin.storage import HEADER_ONLY, INVALID, ChainStore

MAX_LOCATOR_HASHES = 64
MAX_CACHED_GAPS = 64  # sync targets (peer tips) whose path from the active chain is kept


@dataclass(slots=True)
class IndexEntry:
    """A block known to the node: its place in the tree and what is known of it."""

    hash: bytes
    prev_hash: bytes
    height: int
    chain_work: int
    stored_header: BlockHeader | bytes  # as loaded from the store, the 80 bytes: parsed on first use
    status: int
    seq: int = 0  # arrival order: on equal work the first seen wins

    @property
    def header(self) -> BlockHeader:
        """The header (a node starting on a long chain parses only the few it reads)."""
        header = self.stored_header
        if type(header) is bytes:
            header = self.stored_header = BlockHeader.parse(header)
        return header

    @property
    def hash_hex(self) -> str:
        return self.hash[::-1].hex()



class BlockTree:
    """The block index and the active chain (see the module docstring)."""

    def __init__(self, store: ChainStore, params: ChainParams) -> None:
        self.store = store
        self.params = params

    def _load_index(self) -> None:
        """Read the block index and the active chain from the store."""
        store = self.store
        self._seq = itertools.count()
        self.index: dict[bytes, IndexEntry] = {}
        best, best_key = None, None
        for block_hash, prev_hash, height, work, status, header in store.load_index():
            entry = self.index[block_hash] = IndexEntry(block_hash, prev_hash, height, int.from_bytes(work, "big"),
                                                        header, status, next(self._seq))
            if status != INVALID and (best is None or entry.chain_work > best_key):  # first seen wins a tie
                best, best_key = entry, entry.chain_work
        self.best_header = best
        self._gaps: dict[bytes, deque[IndexEntry]] = {}
        entry = self.index[store.tip_hash()]
        self.active: list[bytes] = [b""] * (entry.height + 1)
        while True:
            self.active[entry.height] = entry.hash
            if entry.height == 0:
                break
            entry = self.index[entry.prev_hash]

    @property
    def tip(self) -> IndexEntry:
        """The last block of the active chain."""
        return self.index[self.active[-1]]

    @property
    def height(self) -> int:
        return len(self.active) - 1

    def in_active_chain(self, block_hash: bytes) -> bool:
        entry = self.index.get(block_hash)
        return entry is not None and entry.height < len(self.active) and self.active[entry.height] == block_hash

    def entry_at(self, height: int) -> IndexEntry | None:
        """The active chain's entry at ``height``."""
        return self.index[self.active[height]] if 0 <= height < len(self.active) else None


    def ancestor(self, entry: IndexEntry, height: int) -> IndexEntry:
        """The ancestor of ``entry`` at ``height`` (walks the active chain when it can)."""
        while entry.height > height:
            if self.in_active_chain(entry.hash):
                return self.index[self.active[height]]
            entry = self.index[entry.prev_hash]
        return entry

    def header_context(self, parent: IndexEntry) -> HeaderContext:
        """What the rules need to check a child of ``parent``."""
        times = []
        entry = parent
        for _ in range(self.params.median_time_span):
            times.append(entry.header.time)
            if entry.height == 0:
                break
            entry = self.index[entry.prev_hash]
        height = parent.height + 1
        window_start = retarget_window_start(self.params, height)
        window_first_time = None if window_start is None else self.ancestor(parent, window_start).header.time
        bits = next_bits(self.params, height, parent.header.bits, parent.header.time, window_first_time)
        return HeaderContext(parent.hash, height, bits, median_time_past(times))

    def next_block_context(self) -> HeaderContext:
        """The context a block on the current tip must satisfy (for block templates)."""
        return self.header_context(self.tip)

    def locator(self) -> list[bytes]:
        """Block locator of the active chain: dense near the tip, then exponentially sparse, then genesis."""
        hashes, step, height = [], 1, self.height
        while height > 0 and len(hashes) < MAX_LOCATOR_HASHES - 1:
            hashes.append(self.active[height])
            if len(hashes) >= 10:
                step *= 2
            height -= step
        hashes.append(self.active[0])
        return hashes

    def headers_after(self, locator: list[bytes], limit: int) -> list[BlockHeader]:
        """Up to ``limit`` active-chain headers after the first locator hash we share (genesis if none).

        The limit belongs to whoever asks (the wire protocol caps a headers reply)."""
        start = 0
        for block_hash in locator:
            if self.in_active_chain(block_hash):
                start = self.index[block_hash].height
                break
        end = min(len(self.active), start + 1 + max(limit, 0))
        return [self.index[h].header for h in self.active[start + 1:end]]

    def blocks_to_fetch(self, limit: int = 128, target: IndexEntry | None = None,
                        skip: Collection[bytes] = (), stop: Collection[bytes] = ()) -> list[bytes]:
        """Bodies missing on the way from the active chain to ``target``, oldest first.

        ``target`` defaults to the best known header; a node asks with what each peer has
        shown it, since only that peer is known to have those bodies.  Bodies that came out
        of order are passed over, hashes in ``skip`` too (asked of someone already); the walk
        ends at a missing body in ``stop`` (its source failed us) and at an invalid block.
        """
        missing: list[bytes] = []
        for entry in self._gap(target or self.best_header):
            if entry.status == INVALID or len(missing) >= limit:
                break
            if entry.status == HEADER_ONLY:
                if entry.hash in stop:
                    break
                if entry.hash not in skip:
                    missing.append(entry.hash)
        return missing

    def _gap(self, target: IndexEntry) -> deque[IndexEntry]:
        """The entries between the active chain and ``target``, oldest first.

        Sync asks for this every loop turn, so the path is kept per target and only trimmed
        (from the left, in constant time per block: a sync of 100k blocks starts with a path
        of 100k) as the active chain grows along it; a reorg elsewhere makes it walk again.
        """
        path = self._gaps.pop(target.hash, None)  # put back last: the least recently used goes first
        if path is not None:
            while path and self.in_active_chain(path[0].hash):
                path.popleft()
            if path and not self.in_active_chain(path[0].prev_hash) \
                    or not path and not self.in_active_chain(target.hash):
                path = None  # the active chain moved off the way to the target
        if path is None:
            path, entry = deque(), target
            while not self.in_active_chain(entry.hash):
                path.appendleft(entry)
                entry = self.index[entry.prev_hash]
            if len(self._gaps) >= MAX_CACHED_GAPS:
                del self._gaps[next(iter(self._gaps))]
        self._gaps[target.hash] = path
        return path

    def _new_entry(self, header: BlockHeader, parent: IndexEntry, status: int) -> IndexEntry:
        entry = IndexEntry(header.hash, header.prev_hash, parent.height + 1,
                           parent.chain_work + block_work(header.bits), header, status, next(self._seq))
        self.index[entry.hash] = entry
        if entry.chain_work > self.best_header.chain_work:
            self.best_header = entry
        return entry
