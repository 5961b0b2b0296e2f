"""The mempool: valid transactions waiting for a block.

Policy, as a user of a Bitcoin node expects it:

- a transaction is accepted if it is valid against the chain's UTXO set plus
  the outputs of transactions already in the pool (chains of unconfirmed
  spends are fine);
- on a conflict the first seen wins: a transaction spending an output that a
  pool transaction already spends is refused, and the refusal names that txid;
- the pool is bounded in bytes; when full, the lowest fee rate goes first
  (with its descendants), and a newcomer paying less than that is refused;
- block templates take the highest fee rates first, parents always before
  their children, up to the block size;
- when blocks connect, their transactions and anything conflicting with them
  leave the pool; when blocks disconnect (a reorg), their transactions come
  back, checked again against the new chain.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import attrgetter

from zcoin.consensus import errors as E
from zcoin.consensus.params import ChainParams
from zcoin.consensus.primitives import Block, OutPoint, Transaction
from zcoin.consensus.validation import (Coin, SignatureCheck, UtxoView, check_transaction, check_tx_inputs,
                                        first_invalid_signature, tx_coins)
from zcoin.sigchecks import SignatureCache

DEFAULT_MAX_MEMPOOL_BYTES = 64 * 1024 * 1024
MIN_RELAY_FEE_PER_BYTE = 0  # a local network lets free transactions through
# Bitcoin's miner gives up filling a block after this many transactions in a row did
# not fit while it was this close to full (it would otherwise scan the whole pool).
MAX_CONSECUTIVE_FAILURES = 1000
BANDS_PER_DOUBLING = 16  # fee-rate bands (a template sorts the best whole bands), each 3-6% of the rate wide
ZERO_FEE_BAND = sys.maxsize  # free transactions: after every band of a paying one
BEST_PART_MARGIN = 1000  # entries' worth of bytes taken beyond two blocks (children waiting for parents)
NEARLY_FULL_BYTES = 1000


class MempoolReject(E.Rejection):
    """A transaction the pool will not take though it may be valid (policy)."""

    code = "mempool-reject"


class TxAlreadyKnown(MempoolReject):
    code = "txn-already-known"


class TxConflict(MempoolReject):
    """The transaction spends an output that a pool transaction already spends (first seen wins)."""

    code = "txn-mempool-conflict"


class TxAlreadyConfirmed(MempoolReject):
    code = "txn-already-in-chain"


class MempoolFull(MempoolReject):
    code = "mempool-full"


class FeeTooLow(MempoolReject):
    code = "min-relay-fee-not-met"


@dataclass(slots=True)
class MempoolEntry:
    """A pool transaction with what ordering and eviction need."""

    tx: Transaction
    fee: int
    size: int
    seq: int
    parents: set[bytes] = field(default_factory=set)  # in-pool txids it spends from
    children: set[bytes] = field(default_factory=set)
    neg_fee_rate: float = field(init=False, repr=False, compare=False)  # template sort key, computed once
    txid: bytes = field(init=False, repr=False, compare=False)
    band: int = field(init=False, repr=False, compare=False)  # of the fee rate: lower is better

    def __post_init__(self) -> None:
        self.neg_fee_rate = -self.fee / self.size
        self.txid = self.tx.txid
        self.band = _band(self.neg_fee_rate)

    @property
    def fee_rate(self) -> float:
        return self.fee / self.size

    @property
    def sort_key(self) -> tuple[float, int]:
        """Ascending order = best first: higher fee rate, then earlier arrival."""
        return (self.neg_fee_rate, self.seq)


class MempoolView:
    """The chain's UTXO set as the pool sees it: pool outputs added, pool spends removed."""

    __slots__ = ("pool", "chain_view", "height")

    def __init__(self, pool: Mempool, chain_view: UtxoView, height: int) -> None:
        self.pool = pool
        self.chain_view = chain_view
        self.height = height

    def get_coin(self, outpoint: OutPoint) -> Coin | None:
        if outpoint in self.pool.spends:
            return None
        entry = self.pool.entries.get(outpoint.txid)
        if entry is not None:
            if outpoint.index >= len(entry.tx.outputs):
                return None
            out = entry.tx.outputs[outpoint.index]
            return Coin(out.amount, out.pubkey, self.height, False)
        return self.chain_view.get_coin(outpoint)


class Mempool:
    """Transactions waiting for a block (see the module docstring)."""

    def __init__(self, params: ChainParams, *, max_bytes: int = DEFAULT_MAX_MEMPOOL_BYTES,
                 signature_cache: SignatureCache | None = None) -> None:
        self.params = params
        self.max_bytes = max_bytes
        self.signature_cache = signature_cache  # told the signatures of what the pool takes (the chain's)
        self.entries: dict[bytes, MempoolEntry] = {}
        self.spends: dict[OutPoint, bytes] = {}  # outpoint -> txid of the pool tx spending it
        self.bytes = 0
        self.fees = 0  # sum of every pool transaction's fee (what a template could collect)
        self._seq = itertools.count()
        # Template order, kept across calls: entries best first, inserted ones merged in
        # lazily (``_pending``), removed ones skipped until they are half of it.
        self._order: list[MempoolEntry] | None = None
        self._pending: list[MempoolEntry] = []
        self._stale = 0
        self._min_size = float("inf")  # smallest entry since the pool was last emptied (a lower bound)
        # The entries by fee-rate band (each in arrival order), and each band's bytes: a template
        # sorts only the best bands instead of reading every entry of a large pool.
        self._bands: dict[int, dict[bytes, MempoolEntry]] = {}
        self._band_bytes: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, txid: bytes) -> bool:
        return txid in self.entries

    def get(self, txid: bytes) -> Transaction | None:
        entry = self.entries.get(txid)
        return entry.tx if entry else None

    def txs(self) -> list[Transaction]:
        """Every pool transaction, parents before children (arrival order)."""
        return [e.tx for e in sorted(self.entries.values(), key=lambda e: e.seq)]

    # --- accepting -----------------------------------------------------------

    def accept(self, tx: Transaction, chain_view: UtxoView, tip_height: int,
               is_confirmed=lambda txid: False, *, signatures_verified: bool = False) -> int:
        """Validate ``tx`` against the chain plus the pool and keep it; return its fee.

        Raises an ``InvalidTx`` subclass for a broken rule, or a
        ``MempoolReject`` subclass (already known, conflict naming the txid that
        was first, pool full) for policy.  ``signatures_verified`` skips the
        signature checks of a transaction that passed them before (after a reorg).
        """
        txid = tx.txid
        if txid in self.entries:
            raise TxAlreadyKnown(f"{tx.txid_hex} is already in the mempool", txid=tx.txid_hex)
        check_transaction(tx, self.params)
        if tx.is_coinbase:
            raise E.TxUnexpectedCoinbase("a coinbase is only valid in a block", txid=tx.txid_hex)
        for txin in tx.inputs:
            other = self.spends.get(txin.prev)
            if other is not None:
                raise TxConflict(f"spends {txin.prev}, already spent by {other[::-1].hex()}",
                                 txid=tx.txid_hex, conflict=other[::-1].hex())
        view = MempoolView(self, chain_view, tip_height + 1)
        verified: list[SignatureCheck] = []

        def verify(checks: list[SignatureCheck]) -> int | None:
            failed = first_invalid_signature(checks)
            if failed is None:
                verified.extend(checks)
            return failed

        try:
            fee = check_tx_inputs(tx, view, tip_height + 1, self.params,
                                  verify_signatures=not signatures_verified, verifier=verify)
        except E.TxMissingInput:
            if is_confirmed(txid):
                raise TxAlreadyConfirmed(f"{tx.txid_hex} is already in a block", txid=tx.txid_hex) from None
            raise
        if fee < MIN_RELAY_FEE_PER_BYTE * tx.size:
            raise FeeTooLow(f"fee {fee} below {MIN_RELAY_FEE_PER_BYTE}/byte", txid=tx.txid_hex)
        entry = MempoolEntry(tx, fee, tx.size, next(self._seq))
        self._make_room(entry)
        self._insert(entry)
        if self.signature_cache is not None:  # only once taken: a refused transaction leaves nothing
            self.signature_cache.add(verified)
        return fee

    def _insert(self, entry: MempoolEntry) -> None:
        txid = entry.tx.txid
        for txin in entry.tx.inputs:
            self.spends[txin.prev] = txid
            parent = self.entries.get(txin.prev.txid)
            if parent is not None:
                entry.parents.add(parent.tx.txid)
                parent.children.add(txid)
        self.entries[txid] = entry  # arrival order: equal fee rates stay first come, first served
        self._bands.setdefault(entry.band, {})[txid] = entry
        self._band_bytes[entry.band] = self._band_bytes.get(entry.band, 0) + entry.size
        self.bytes += entry.size
        self.fees += entry.fee
        self._min_size = min(self._min_size, entry.size)
        if self._order is not None:
            self._pending.append(entry)

    def _make_room(self, newcomer: MempoolEntry) -> None:
        if newcomer.size > self.max_bytes:
            raise MempoolFull("transaction larger than the pool", txid=newcomer.tx.txid_hex)
        ancestors = None
        while self.bytes + newcomer.size > self.max_bytes:
            worst = self._worst()
            if worst.sort_key < newcomer.sort_key:
                raise MempoolFull(f"pool full and fee rate {newcomer.fee_rate:.3f}/byte is the lowest",
                                  txid=newcomer.tx.txid_hex)
            if ancestors is None:
                ancestors = self._ancestors(newcomer.tx)
            if worst.tx.txid in ancestors:  # evicting it would leave the newcomer spending nothing
                raise MempoolFull(f"pool full and its lowest fee rate is an ancestor, {worst.tx.txid_hex}",
                                  txid=newcomer.tx.txid_hex, ancestor=worst.tx.txid_hex)
            self.remove(worst.tx.txid, with_descendants=True)

    def _worst(self) -> MempoolEntry:
        """The entry eviction takes first: the lowest fee rate, the latest arrival among equals."""
        order = self._sorted()  # kept sorted anyway for templates: no scan of the pool per eviction
        while True:
            entry = order[-1]
            if self.entries.get(entry.tx.txid) is entry:
                return entry
            order.pop()  # removed, lingering at the end
            self._stale = max(0, self._stale - 1)

    def _ancestors(self, tx: Transaction) -> set[bytes]:
        """Txids of the pool transactions ``tx`` spends from, directly or not."""
        found: set[bytes] = set()
        stack = [txin.prev.txid for txin in tx.inputs if txin.prev.txid in self.entries]
        while stack:
            txid = stack.pop()
            if txid not in found:
                found.add(txid)
                stack.extend(self.entries[txid].parents)
        return found

    # --- removing ------------------------------------------------------------

    def remove(self, txid: bytes, *, with_descendants: bool = True) -> list[Transaction]:
        """Remove a transaction (and, by default, everything spending from it); return what left."""
        removed = []
        stack = [txid]
        while stack:
            entry = self.entries.pop(stack.pop(), None)
            if entry is None:
                continue
            removed.append(entry.tx)
            band = self._bands[entry.band]
            del band[entry.txid]
            if band:
                self._band_bytes[entry.band] -= entry.size
            else:
                del self._bands[entry.band], self._band_bytes[entry.band]
            self.bytes -= entry.size
            self.fees -= entry.fee
            for txin in entry.tx.inputs:
                if self.spends.get(txin.prev) == entry.tx.txid:
                    del self.spends[txin.prev]
            for parent in entry.parents:
                if parent in self.entries:
                    self.entries[parent].children.discard(entry.tx.txid)
            if with_descendants:
                stack.extend(entry.children)
            else:
                for child in entry.children:
                    if child in self.entries:
                        self.entries[child].parents.discard(entry.tx.txid)
        self._stale += len(removed)
        if self._order is not None and self._stale > len(self._order) // 2:
            self._order = None
        return removed

    def remove_for_block(self, block: Block) -> list[Transaction]:
        """Drop a connected block's transactions (kept children become roots) and conflicts with them."""
        removed = []
        for tx in block.txs[1:]:
            if tx.txid in self.entries:
                removed += self.remove(tx.txid, with_descendants=False)
            for txin in tx.inputs:
                other = self.spends.get(txin.prev)
                if other is not None and other != tx.txid:
                    removed += self.remove(other, with_descendants=True)
        return removed

    def update_for_chain(self, connected: Iterable[Block], disconnected: Iterable[Block], chain_view: UtxoView,
                         tip_height: int) -> list[Transaction]:
        """Follow the chain after blocks connected and/or disconnected; return transactions dropped.

        After a reorg, the disconnected blocks' transactions and the pool are
        checked again against the new tip (a coinbase spend may be immature
        again, a parent may be gone); whatever is no longer valid is dropped.
        Their signatures are not verified again: all of them passed when they
        entered the pool or a block, and an outpoint names the same coin on
        every chain (Bitcoin's removeForReorg likewise re-checks no scripts).
        """
        connected = list(connected)
        disconnected = list(disconnected)
        dropped = []
        for block in connected:
            dropped += self.remove_for_block(block)
        if not disconnected:
            return dropped
        in_new_chain = {tx.txid for block in connected for tx in block.txs}
        returning = [tx for block in reversed(disconnected) for tx in block.txs[1:] if tx.txid not in in_new_chain]
        waiting = self.txs()
        self.entries.clear()
        self.spends.clear()
        self._bands.clear()
        self._band_bytes.clear()
        self.bytes = 0
        self.fees = 0
        self._order = None
        self._min_size = float("inf")
        for tx in returning + waiting:
            try:
                self.accept(tx, chain_view, tip_height, signatures_verified=True)
            except (E.ValidationError, MempoolReject):
                dropped.append(tx)
        return dropped

    # --- block templates -----------------------------------------------------

    def _sorted(self) -> list[MempoolEntry]:
        """Entries best first (highest fee rate, then arrival); removed ones may linger: skip them."""
        if self._order is None or len(self._pending) > max(64, len(self._order) // 200):
            # A stable sort of the arrival-ordered entries: the fee rate alone is the key.
            self._order = sorted(self.entries.values(), key=_rate_key)
            self._stale = 0
        else:
            for entry in self._pending:  # the newest arrival goes after equal rates
                bisect.insort_right(self._order, entry, key=_rate_key)
        self._pending = []
        return self._order

    def select_for_block(self, max_bytes: int) -> tuple[list[Transaction], int]:
        """Transactions for a block of at most ``max_bytes``: best fee rate first, parents first; and their fees.

        A block takes a few thousand of a pool's transactions, so without a kept
        order (:meth:`_sorted`, which eviction also keeps) only the pool's best part
        is sorted: its best fee-rate bands, about two blocks' worth.  That part is a
        prefix of the full order, so the selection is the same as over the full order
        unless it runs out, and then the full order is used.
        """
        if self._order is None:
            best = self._best_part(max_bytes)
            if best is not None:
                chosen = self._select(best, max_bytes, partial=True)
                if chosen is not None:
                    return chosen
        return self._select(self._sorted(), max_bytes, partial=False)

    def _best_part(self, max_bytes: int) -> list[MempoolEntry] | None:
        """The best whole fee-rate bands, sorted, about two blocks of ``max_bytes``.

        None if that would be most of the pool (a few bands hold it all): the full order is then
        built and kept, and later calls merge arrivals into it instead of sorting again.
        """
        wanted = 2 * max_bytes + BEST_PART_MARGIN * self.bytes // max(1, len(self.entries))
        if 2 * wanted > self.bytes:
            return None
        bands, taken = [], 0
        for band in sorted(self._band_bytes):
            bands.append(band)
            taken += self._band_bytes[band]
            if taken >= wanted:
                break
        if 2 * taken > self.bytes:
            return None
        best: list[MempoolEntry] = []
        for band in bands:
            best += sorted(self._bands[band].values(), key=_rate_key)  # a band is in arrival order: a stable sort
        return best

    def _select(self, order: list[MempoolEntry], max_bytes: int,
                partial: bool) -> tuple[list[Transaction], int] | None:
        """The selection over ``order``; None if ``order`` is only the best ``partial`` part and ran out."""
        entries = self.entries
        min_size = self._min_size
        chosen: list[Transaction] = []
        chosen_ids: set[bytes] = set()  # those chosen with parents or children: what the checks below need
        fees = 0
        room = max_bytes
        ready: list[tuple[float, int, bytes]] = []  # heap: children whose parents are all chosen, best first
        failures = 0
        if room < min_size:
            return chosen, fees
        # A large pool's entries are scattered in memory, and each one read costs a cache miss or
        # two: in a best part (all of it in the pool) a plain entry is neither looked up nor its txid read.
        for entry in _merged(order, ready, entries, drain=not partial):
            if not partial and entries.get(entry.txid) is not entry:
                continue  # removed since the order was kept
            parents = entry.parents
            if parents and (entry.txid in chosen_ids or not parents <= chosen_ids):
                continue  # a child comes (back) through ``ready`` once its parents are in, so it may come twice
            if entry.size > room:
                failures += 1
                if failures > MAX_CONSECUTIVE_FAILURES and room < NEARLY_FULL_BYTES:
                    break
                continue
            failures = 0
            chosen.append(entry.tx)
            fees += entry.fee
            room -= entry.size
            if parents or entry.children:
                chosen_ids.add(entry.txid)
                for child in entry.children:
                    waiting = entries[child]
                    if waiting.parents <= chosen_ids:
                        heapq.heappush(ready, (waiting.neg_fee_rate, waiting.seq, child))
            if room < min_size:
                break
        else:
            if partial:
                return None  # the rest of the pool could come next: take the full order
        return chosen, fees

    # --- queries -------------------------------------------------------------

    def spendable_coins(self, pubkey: bytes, chain_coins: list[tuple[OutPoint, Coin]],
                        tip_height: int) -> list[tuple[OutPoint, Coin]]:
        """Coins of ``pubkey`` a wallet may spend now: confirmed ones not spent by the pool, plus pool change."""
        coins = [(op, c) for op, c in chain_coins
                 if op not in self.spends
                 and not (c.coinbase and c.height > 0 and tip_height + 1 - c.height < self.params.coinbase_maturity)]
        for entry in sorted(self.entries.values(), key=lambda e: e.seq):
            for op, coin in tx_coins(entry.tx, tip_height + 1):
                if coin.pubkey == pubkey and op not in self.spends:
                    coins.append((op, Coin(coin.amount, coin.pubkey, coin.height, False)))
        return coins


_rate_key = attrgetter("neg_fee_rate")  # highest fee rate first (C-level: the sort of 100k entries is hot)


def _band(neg_fee_rate: float) -> int:
    """The fee-rate band of ``-neg_fee_rate``: a higher rate is never in a higher band."""
    if not neg_fee_rate:
        return ZERO_FEE_BAND
    mantissa, exponent = math.frexp(-neg_fee_rate)  # exactly rate = mantissa * 2**exponent, 0.5 <= mantissa < 1
    return -(exponent * BANDS_PER_DOUBLING + int((mantissa - 0.5) * 2 * BANDS_PER_DOUBLING))


def _merged(order: list[MempoolEntry], ready: list[tuple[float, int, bytes]], entries: dict[bytes, MempoolEntry],
            drain: bool) -> Iterator[MempoolEntry]:
    """``order``'s entries with ``ready``'s (a heap the caller pushes to meanwhile) merged in, best first.

    Once ``order`` runs out, ``ready`` is drained only if ``drain``.
    """
    for entry in order:
        if ready:  # the head goes first if its key, (fee rate, seq), is lower: compared without a tuple made
            rate = entry.neg_fee_rate
            while ready and (ready[0][0] < rate or ready[0][0] == rate and ready[0][1] < entry.seq):
                yield entries[heapq.heappop(ready)[2]]
        yield entry
    while drain and ready:
        yield entries[heapq.heappop(ready)[2]]
