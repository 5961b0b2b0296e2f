"""Block download: headers first, bodies from whoever has shown them, stalls, back-off, "synced".

A part of the node core (as Bitcoin Core's block download is a part of its
``PeerManager``): it asks peers for tips, headers and bodies, judges what they
deliver, and decides whether the node is synced.  It does no I/O: requests go out
through the core, which owns the peers and the transport, and every time is the
core's clock.

- Every ``tip_interval_s`` each peer is asked for its tip.  A tip with more work
  that we do not know is followed headers-first (a block locator, up to
  ``MAX_HEADERS_PER_REPLY`` headers a reply, asked again while replies come full).
- Bodies are fetched per peer from the chain *it* has shown (the best header it
  sent or announced, Bitcoin's ``pindexBestKnownBlock``), never from our best
  header, which may be a chain only a withholding peer claims.
- A peer that stalls (no reply in ``request_timeout_s``) or sends none of the
  blocks asked for is penalised; those blocks are asked of it again only after a
  doubling back-off or once it shows more work, and until it delivers it cannot
  hold up mining.  A claimed tip whose headers never come is not chased again
  until the back-off ends.
- Synced: nothing any trusted peer can send would give us more work.  Before its
  first sync a node also waits for every member to be connected and to answer
  (each peer gets ``sync_grace_s``) and for headers of heavier tips; once synced,
  only bodies it can fetch count (Bitcoin's IBD latch): a claim costs nothing.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from zcoin import wire
from zcoin.blocktree import IndexEntry
from zcoin.chain import UnknownParent
from zcoin.config import RETRY_AFTER_STALL_MAX_S
from zcoin.consensus import errors as E
from zcoin.consensus.primitives import BlockHeader
from zcoin.peers import Peer, Request
from zcoin.storage import INVALID

if TYPE_CHECKING:
    from zcoin.nodecore import NodeCore

MAX_BLOCKS_IN_FLIGHT_PER_PEER = 32
MAX_HEADERS_PER_REPLY = wire.MAX_HEADERS_PER_REPLY
LOCATOR_AFTER_FULL_REPLY = 63  # hashes of our locator sent after the last header of a full reply
PENALTY_STALL = 20  # no reply in time, or none of the blocks asked for: a slow peer may do it too
PENALTY_INVALID_HEADER = 100
PENALTY_DISCONNECTED_HEADERS = 20


class BlockDownload:
    """The node core's block download (see the module docstring)."""

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self.config = core.config
        self.synced = False
        self.ever_synced = False
        self._next_tip_round = 0.0

    @property
    def chain(self):
        return self.core.chain

    # --- timers ------------------------------------------------------------------------

    def on_timer(self, now: float) -> None:
        """Tip rounds, stalls, back-offs ending, the synced decision, and body requests."""
        core = self.core
        if now >= self._next_tip_round:
            self._next_tip_round = now + self.config.tip_interval_s
            for peer in list(core.peers.values()):
                if not core.banned(peer) and not peer.requests.awaiting("get_tip"):
                    core.request(peer, "get_tip")
        for peer in list(core.peers.values()):
            self._check_stalls(peer, now)
            delivery = peer.delivery
            if (delivery.unserved or delivery.unbacked_tip) and now >= delivery.retry_at:
                delivery.unserved.clear()  # a slow but honest peer (the only source, maybe) gets another turn
                delivery.unbacked_tip = b""
        self._update_synced(now)
        self.fetch_blocks()

    def _check_stalls(self, peer: Peer, now: float) -> None:
        oldest = peer.requests.oldest()
        if oldest is None or now - oldest.sent_at <= self.config.request_timeout_s:
            return
        # A silent peer: forget what we asked (another peer is asked instead) and have the
        # transport drop whatever is still queued for it.  Only what it failed to answer in
        # time is held against it.
        late = peer.requests.late(now, self.config.request_timeout_s)
        self.core.counters.request_stalls += 1
        blocks = [h for r in late if r.type == "get_blocks" for h in r.asked]
        headers = any(r.type == "get_headers" for r in late)
        if headers and peer.tip_hash not in self.chain.index:
            peer.delivery.unbacked_tip = peer.tip_hash
        if blocks:
            self._mark_unserved(peer, blocks)
        if blocks or headers:
            self._failed_to_deliver(peer, now)
            self.core.penalise(peer, PENALTY_STALL,
                               f"stalled on {len(blocks)} blocks" if blocks else "stalled on headers")
        else:
            self.core.log.info("peer stalled", peer=peer.name, waiting_for=oldest.type)
        peer.requests.clear()
        self.core.transport.reset(peer.name)

    def _update_synced(self, now: float) -> None:
        core = self.core
        was = self.synced
        peers = [p for p in core.peers.values() if not core.banned(p)]
        behind = any(self._blocks_from(p, 1) for p in peers if p.answered and not p.delivery.stalls)
        if not self.ever_synced and not behind:
            membership = core.membership
            members = set(membership.members()) - {core.name} - core.blocked if membership is not None else set()
            behind = (membership is not None and membership.state == "joining" and not core.peers) \
                or bool(members - set(core.peers)) \
                or any(not p.answered and now - p.connected_at < self.config.sync_grace_s for p in peers) \
                or any(self._fetching_headers_for_more_work(p) for p in peers)
        self.synced = not behind
        if self.synced != was:
            # A peer's new block makes us briefly "behind" on every block: only the first catch-up is news.
            level = "INFO" if self.synced and not self.ever_synced else "DEBUG"
            core.log.log(level, "synced" if self.synced else "behind a peer", height=self.chain.height,
                         tip=self.chain.tip.hash_hex)
            self.ever_synced |= self.synced

    # --- bodies --------------------------------------------------------------------------

    def fetch_blocks(self) -> None:
        """Ask each peer for bodies we lack on the way to what it has shown us, oldest first, none twice.

        Like Bitcoin's FindNextBlocksToDownload: only the peer that announced a chain is known
        to have it, so a peer's share comes from its own chain.
        """
        core = self.core
        in_flight = {p.name: p.requests.blocks_in_flight() for p in core.peers.values()}
        taken = set().union(*in_flight.values())
        for peer in sorted(core.peers.values(), key=lambda p: len(in_flight[p.name])):
            room = min(MAX_BLOCKS_IN_FLIGHT_PER_PEER - len(in_flight[peer.name]), wire.MAX_BLOCKS_PER_REQUEST)
            if room <= 0 or core.banned(peer):
                continue
            batch = self._blocks_from(peer, room, skip=taken)
            if batch:
                taken.update(batch)
                core.request(peer, "get_blocks", hashes=batch)

    def _blocks_from(self, peer: Peer, limit: int, skip: Collection[bytes] = ()) -> list[bytes]:
        """Bodies on the chain the peer has shown us that would give us more work, oldest first.

        The walk stops at a block the peer failed to send: without it, later ones cannot connect.
        """
        known = self.chain.index.get(peer.delivery.known_hash)
        if known is None or known.chain_work <= self.chain.tip.chain_work:
            return []
        return self.chain.blocks_to_fetch(limit, target=known, skip=skip, stop=peer.delivery.unserved)

    def note_delivery(self, peer: Peer, request: Request, delivered: set[bytes], now: float) -> None:
        """Judge a get_blocks reply: a peer that sent none of the blocks asked for does not have
        them, whatever it claimed.  (A reply may stop short to stay under the size limit, but it
        always carries one block.)"""
        if delivered.intersection(request.asked):
            peer.delivery.stalls = 0  # it delivers: it may hold up mining again, as a source we wait for
            return
        if any(self.chain.has_block(h) or h not in self.chain.index for h in request.asked):
            return  # another peer was quicker: nothing to hold against this one
        self._mark_unserved(peer, list(request.asked))
        self._failed_to_deliver(peer, now)
        self.core.penalise(peer, PENALTY_STALL, f"sent none of the {len(request.asked)} blocks asked for")

    def _mark_unserved(self, peer: Peer, hashes: list[bytes]) -> None:
        peer.delivery.unserved.update(hashes)
        known = self.chain.index.get(peer.delivery.known_hash)
        peer.delivery.unserved_work = known.chain_work if known is not None else 0

    def _failed_to_deliver(self, peer: Peer, now: float) -> None:
        delivery = peer.delivery
        delivery.stalls += 1
        delay = self.config.retry_after_stall_s * 2 ** min(delivery.stalls - 1, 16)
        delivery.retry_at = now + min(delay, RETRY_AFTER_STALL_MAX_S)

    def peer_has(self, peer: Peer, entry: IndexEntry | None) -> None:
        """Note a header the peer sent or a block it announced (not an invalid one)."""
        if entry is None or entry.status == INVALID:
            return
        delivery = peer.delivery
        known = self.chain.index.get(delivery.known_hash)
        if known is None or entry.chain_work > known.chain_work:
            delivery.known_hash = entry.hash
            peer.height = max(peer.height, entry.height)
        if delivery.unserved and entry.chain_work > delivery.unserved_work:
            # It has shown more work since: what it could not send then may have come.  (Only
            # more work, which costs proof of work, lets it be asked again before its back-off
            # ends: flipping between tips we know would otherwise have us wait on it again.)
            delivery.unserved.clear()

    # --- tips and headers ------------------------------------------------------------------

    def _fetching_headers_for_more_work(self, peer: Peer) -> bool:
        return peer.requests.awaiting("get_headers") and not peer.delivery.stalls \
            and peer.work > self.chain.tip.chain_work and peer.tip_hash not in self.chain.index

    def request_headers(self, peer: Peer) -> None:
        """Ask ``peer`` for headers after our locator, unless such a request is already out."""
        if not peer.requests.awaiting("get_headers") and not self.core.banned(peer):
            self.core.request(peer, "get_headers", locator=self.chain.locator())

    def on_tip(self, peer: Peer, msg: wire.Message, request: Request) -> None:
        if msg["hash"] != peer.tip_hash:
            peer.delivery.unbacked_tip = b""
        peer.height, peer.tip_hash = msg["height"], msg["hash"]
        peer.work = int.from_bytes(msg["work"], "big")
        peer.answered = True
        self.core.relay.on_tip_numbers(peer, msg.get("epoch"), msg.get("seq"))
        entry = self.chain.index.get(peer.tip_hash)
        if entry is not None:
            self.peer_has(peer, entry)
        elif peer.work > self.chain.tip.chain_work and peer.tip_hash != peer.delivery.unbacked_tip:
            self.request_headers(peer)

    def on_headers(self, peer: Peer, msg: wire.Message, request: Request) -> None:
        raw_headers = msg["headers"]
        now = self.core.clock.monotonic()
        with self.core.store.transaction():  # one commit for the whole reply, not one per header
            last, too_new = self._add_headers(peer, raw_headers, int(self.core.clock.time()))
        self.peer_has(peer, last)
        if len(raw_headers) < MAX_HEADERS_PER_REPLY and peer.tip_hash not in self.chain.index and not too_new:
            peer.delivery.unbacked_tip = peer.tip_hash  # all it sent, and not the tip it claimed: stop asking
            self._failed_to_deliver(peer, now)
        if raw_headers:
            self.core.log.info("sync progress", peer=peer.name, headers=len(raw_headers), height=self.chain.height,
                               best_header=self.chain.best_header.height)
        if len(raw_headers) == MAX_HEADERS_PER_REPLY and last is not None:
            self.core.request(peer, "get_headers",
                              locator=[last.hash] + self.chain.locator()[:LOCATOR_AFTER_FULL_REPLY])
        self.fetch_blocks()

    def _add_headers(self, peer: Peer, raw_headers: list[bytes], now: int) -> tuple[IndexEntry | None, bool]:
        """Index the headers in order up to the first bad one; return the last one indexed, and
        whether one was stopped for a time ahead of our clock (no fault of the peer's)."""
        last = None
        for raw in raw_headers:
            try:
                last = self.chain.add_header(BlockHeader.parse(raw), now)
            except UnknownParent:
                self.core.penalise(peer, PENALTY_DISCONNECTED_HEADERS, "headers do not connect")
                break
            except E.BlockTimeTooNew as exc:  # a clock ahead of ours, not misbehaviour: try again later
                self.core.log.info("header from the future", peer=peer.name, reason=exc.reason)
                return last, True
            except E.ValidationError as exc:
                self.core.penalise(peer, PENALTY_INVALID_HEADER, f"invalid header: {exc.reason}")
                break
        return last, False
