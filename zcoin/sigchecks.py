"""Signature checks off the chain manager's path, and the signature cache, as Bitcoin Core's.

A block's signatures cost more than all its other rules, and libsecp256k1 needs no
interpreter: two ways to spend the second core on them.

- :class:`SignatureCheckQueue` (as Core's ``CCheckQueue``), for a block on its own (from
  the gossip, the node's miner): the block's checks split between the calling thread and
  a worker thread.  coincurve releases the GIL while it verifies, so both threads verify
  at once; the caller waits for the worker's half, which frees the GIL for it.  The caller
  learns which check failed first in block order.
- For a sync reply of many blocks, a process of its own: see ``zcoin.checksahead``.

And, as Core's signature cache: :class:`SignatureCache` remembers the signatures of the
transactions the mempool took, so a block made of them (from a peer's miner or the
node's own) verifies only those it brings that the pool never saw.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import OrderedDict
from collections.abc import Sequence

from zcoin.consensus.validation import SignatureCheck, SignatureVerifier, first_invalid_signature

# A verify costs some 60 us, a hand-off to the worker and back some 20 us.  Measured on 2 cores with
# the second one idle, splitting gains x1.5 at 2 signatures, x1.3 at 3, x1.6 at 4, x1.85 at 8; with
# the second core busy it gains nothing, so only blocks with a few verifies per thread are split.
PARALLEL_MIN_SIGNATURES = 4

# Signatures the cache remembers (128 bytes of key each, ~20 MB in all): a pool's worth at the
# default 64 MB of transactions is ~340k, but a block takes a few thousand of the newest ones.
SIGNATURE_CACHE_ENTRIES = 100_000


class SignatureCache:
    """Signatures verified valid when the mempool took their transactions (Core's ``CSignatureCache``).

    An entry is the check's message, key and signature, exactly: BIP340 verification is a
    function of these three, so a check found here needs no verify.  A transaction's
    message commits to all of it (its outputs and every outpoint), and an outpoint names
    the same coin on every chain, so a block carrying a pool transaction asks for the
    very entries the pool made.  A block uses each entry once, so a hit removes it; the
    oldest entries go first when the cache is full.
    """

    def __init__(self, max_entries: int = SIGNATURE_CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        # Insertion order, the oldest first.  Not a dict: taking a dict's first key scans the slots
        # its earlier deletions left (22 us an eviction at 100k entries, against 1.5).
        self._entries: OrderedDict[bytes, None] = OrderedDict()
        self.hits = 0  # checks a block did not verify (the status reply counts them)

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, checks: Sequence[SignatureCheck]) -> None:
        """Remember ``checks``, which were verified valid."""
        entries = self._entries
        for check in checks:
            entries[check.msg32 + check.pubkey + check.signature] = None
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    def unseen(self, checks: Sequence[SignatureCheck]) -> list[int]:
        """The positions in ``checks`` of those not remembered; the remembered ones are used up."""
        entries = self._entries
        unseen = []
        for position, check in enumerate(checks):
            try:
                del entries[check.msg32 + check.pubkey + check.signature]
            except KeyError:
                unseen.append(position)
        self.hits += len(checks) - len(unseen)
        return unseen

    def verifier(self, verify: SignatureVerifier) -> SignatureVerifier:
        """``verify``, for the checks not remembered (a :data:`SignatureVerifier` of the same answers)."""

        def verify_unseen(checks: Sequence[SignatureCheck]) -> int | None:
            if not self._entries:
                return verify(checks)
            unseen = self.unseen(checks)
            if not unseen:
                return None
            if len(unseen) == len(checks):
                return verify(checks)
            failed = verify([checks[position] for position in unseen])  # a remembered one is valid: the
            return None if failed is None else unseen[failed]  # first failure is the first among the rest

        return verify_unseen


class SignatureCheckQueue:
    """Verifies a block's signatures on the calling thread and one worker thread (Core's ``CCheckQueue``).

    A :data:`~zcoin.consensus.validation.SignatureVerifier`.  libsecp256k1 runs without
    the GIL (coincurve's calls release it), so two threads verify a block's checks almost
    twice as fast when the machine has a core to spare.  Below ``min_parallel`` checks
    the hand-off costs more than it saves and the caller verifies them alone.  The
    worker is started on first use and stopped by :meth:`close`; one caller at a time.
    """

    def __init__(self, min_parallel: int = PARALLEL_MIN_SIGNATURES) -> None:
        self.min_parallel = min_parallel
        self._jobs: queue.SimpleQueue[tuple[int, Sequence[SignatureCheck]] | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[tuple[int, int | None | BaseException]] = queue.SimpleQueue()
        self._tickets = itertools.count()
        self._worker: threading.Thread | None = None

    def __call__(self, checks: Sequence[SignatureCheck]) -> int | None:
        """The position of the first failing check in ``checks``, or None."""
        if len(checks) < self.min_parallel:
            return first_invalid_signature(checks)
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="signature-checks", daemon=True)
            self._worker.start()
        half = len(checks) // 2
        ticket = next(self._tickets)
        self._jobs.put((ticket, checks[half:]))
        try:
            failed = first_invalid_signature(checks[:half])
        finally:
            # Always wait for the worker's answer; one left over by an interrupted call is skipped.
            while (answer := self._results.get())[0] != ticket:
                pass
        theirs = answer[1]
        if failed is not None:
            return failed
        if isinstance(theirs, BaseException):
            raise theirs
        return None if theirs is None else half + theirs

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            ticket, checks = job
            try:
                self._results.put((ticket, first_invalid_signature(checks)))
            except BaseException as exc:  # raised in the caller's thread: the worker carries on
                self._results.put((ticket, exc))

    def close(self) -> None:
        """Stop the worker thread, if it runs (a later call starts it again)."""
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join()
            self._worker = None
