"""Peers as the node core sees them: what each claims, what it has shown, what we asked of it.

Every outstanding request to a peer is one :class:`Request` record in its
:class:`RequestBook` (Bitcoin Core keeps one ``mapBlocksInFlight``); whatever else
is needed - "a headers request is pending", "these blocks are in flight" - is
derived from those records, never stored beside them.  A reply is matched to its
request by id AND type: a reply of the wrong type, or to no request, is an
outcome the node core holds against the peer.

Nothing here does I/O or reads a clock: times are arguments.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from zcoin.tracker.protocol import MemberInfo

# Misbehaviour points (zcoin.misbehaviour bans a peer at 100).
PENALTY_MALFORMED = 20  # undecodable, unsolicited or of the wrong type
PENALTY_INVALID_TX = 10
PENALTY_INVALID_BLOCK = 100

# What each request to a peer is answered with (an ``error`` reply may answer any of them).
REPLY_TYPES = {"get_tip": "tip", "get_headers": "headers", "get_blocks": "blocks", "get_mempool": "mempool",
               "get_txs": "txs"}


@dataclass(frozen=True, slots=True)
class Request:
    """One request sent to a peer and not yet answered."""

    id: int
    type: str
    sent_at: float
    asked: tuple[bytes, ...] = ()  # block hashes of a get_blocks, txids of a get_txs

    @property
    def reply_type(self) -> str:
        return REPLY_TYPES[self.type]


class Match(enum.Enum):
    """How a reply relates to what we asked."""

    ANSWER = "answer"  # the reply to an outstanding request, of the type it asked for
    WRONG_TYPE = "wrong-type"  # an outstanding request's id, another type: misbehaviour
    LATE = "late"  # a request we gave up on (stalled): ignored, not held against anyone
    UNSOLICITED = "unsolicited"  # no request of ours ever had this id: misbehaviour


class RequestBook:
    """The outstanding requests to one peer, oldest first."""

    def __init__(self) -> None:
        self._open: dict[int, Request] = {}
        self._last_id = 0

    def open(self, msg_type: str, now: float, asked: tuple[bytes, ...] = ()) -> Request:
        """Record a new request (with a fresh id) of ``msg_type``."""
        if msg_type not in REPLY_TYPES:
            raise ValueError(f"{msg_type} is not a request to a peer")
        self._last_id += 1
        request = Request(self._last_id, msg_type, now, tuple(asked))
        self._open[request.id] = request
        return request

    def match(self, request_id: int | None, reply_type: str) -> tuple[Match, Request | None]:
        """Take the request a reply answers; an ``error`` reply answers a request of any type."""
        request = self._open.get(request_id) if request_id is not None else None
        if request is None:
            late = request_id is not None and 0 < request_id <= self._last_id
            return (Match.LATE if late else Match.UNSOLICITED), None
        del self._open[request_id]
        if reply_type != "error" and reply_type != request.reply_type:
            return Match.WRONG_TYPE, request
        return Match.ANSWER, request

    def awaiting(self, msg_type: str) -> bool:
        return any(r.type == msg_type for r in self._open.values())

    def blocks_in_flight(self) -> set[bytes]:
        return {h for r in self._open.values() if r.type == "get_blocks" for h in r.asked}

    def oldest(self) -> Request | None:
        return next(iter(self._open.values()), None)

    def late(self, now: float, timeout_s: float) -> list[Request]:
        return [r for r in self._open.values() if now - r.sent_at > timeout_s]

    def clear(self) -> None:
        """Give up on every outstanding request (their ids stay "late", not "unsolicited")."""
        self._open.clear()

    def __len__(self) -> int:
        return len(self._open)


@dataclass(slots=True)
class Delivery:
    """What a peer has shown us and what it failed to deliver (block download's view of it)."""

    known_hash: bytes = b""  # the most-work header it sent or announced (Bitcoin's pindexBestKnownBlock)
    unbacked_tip: bytes = b""  # a claimed tip whose headers it did not send
    stalls: int = 0  # failures to deliver since it last delivered; while > 0 it cannot hold up mining
    retry_at: float = 0.0  # when what it failed to deliver is asked of it again (doubling back-off)
    unserved: set[bytes] = field(default_factory=set)  # blocks it was asked for and did not send
    unserved_work: int = 0  # the work it had shown when it failed to send them


@dataclass(slots=True)
class Peer:
    """Another miner this node is connected to (the transport holds its sockets)."""

    info: MemberInfo
    connected_at: float
    requests: RequestBook = field(default_factory=RequestBook)
    delivery: Delivery = field(default_factory=Delivery)
    # What it claims in its tip replies (``answered``: it has replied since we connected).
    height: int = -1
    tip_hash: bytes = b""
    work: int = -1
    answered: bool = False
    epoch: int | None = None  # its gossip epoch (a new one: it restarted, its numbers start again)
    last_seq: int | None = None  # the highest gossip number seen from it in this epoch (or its inventory's)
    reported_seq: int | None = None  # the number its last tip reply said it had published
    mempool_asked: bool = False  # its mempool was asked for once we were synced

    @property
    def name(self) -> str:
        return self.info.node_id
