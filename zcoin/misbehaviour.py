"""The misbehaviour book: points against whoever sends bad data, and bans that expire.

Bitcoin Core's ``Misbehaving`` in one small class shared by the node (peers by
name, api clients by ZeroMQ identity) and the tracker (clients by identity).
Each offence adds points to its sender; at ``ban_score`` the sender is banned
for ``ban_duration_s`` and, once the ban ends, starts again from zero.  The
current time is always an argument, so the book is as testable as the rules.
The number of senders remembered is capped: a flood of fresh identities cannot
make it grow without end (the oldest entries go first).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

BAN_SCORE = 100
BAN_DURATION_S = 60.0
MAX_SENDERS = 10_000


@dataclass(slots=True)
class Standing:
    """One sender's record: points held against it, and the end of its ban (0: not banned)."""

    score: int = 0
    banned_until: float = 0.0


class Misbehaviour:
    """Scores and expiring bans per sender (see the module docstring)."""

    def __init__(self, *, ban_score: int = BAN_SCORE, ban_duration_s: float = BAN_DURATION_S,
                 max_senders: int = MAX_SENDERS) -> None:
        self.ban_score = ban_score
        self.ban_duration_s = ban_duration_s
        self.max_senders = max_senders
        self._book: dict[Hashable, Standing] = {}
        self.bans = 0  # bans imposed since start (a counter for status and metrics)

    def penalise(self, sender: Hashable, points: int, now: float) -> tuple[int, bool]:
        """Add ``points`` against ``sender``; return its score and whether this offence banned it."""
        standing = self._standing(sender, now)
        standing.score += points
        if standing.score >= self.ban_score and not standing.banned_until:
            standing.banned_until = now + self.ban_duration_s
            self.bans += 1
            return standing.score, True
        return standing.score, False

    def banned(self, sender: Hashable, now: float) -> bool:
        """Whether ``sender`` is banned at ``now`` (an ended ban is cleared, with its score)."""
        standing = self._book.get(sender)
        if standing is None or not standing.banned_until:
            return False
        if standing.banned_until <= now:
            del self._book[sender]
            return False
        return True

    def score(self, sender: Hashable, now: float) -> int:
        """Points currently held against ``sender``."""
        self.banned(sender, now)
        standing = self._book.get(sender)
        return standing.score if standing is not None else 0

    def forget(self, sender: Hashable) -> None:
        """Drop what is known of ``sender`` (a peer that left the cluster)."""
        self._book.pop(sender, None)

    def _standing(self, sender: Hashable, now: float) -> Standing:
        self.banned(sender, now)  # clears an ended ban first
        standing = self._book.get(sender)
        if standing is None:
            if len(self._book) >= self.max_senders:
                del self._book[next(iter(self._book))]
            standing = self._book[sender] = Standing()
        return standing
