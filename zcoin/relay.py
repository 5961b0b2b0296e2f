"""Transactions in and out: acceptance, relay that repairs itself (zguide's Clone pattern), orphans, conflicts.

A part of :class:`zcoin.nodecore.NodeCore`: every transaction a client pushes or a
peer sends enters the mempool here, is written to the store before the reply that
acknowledges it (the core's flush), and is announced on the gossip.  Gossip (PUB/SUB) is the fast path and
loses messages by design: before a subscription is live, at a high-water mark,
around a restart.  So every publisher numbers its messages within an *epoch* (a
random number drawn at each start: a restart is a new epoch, not a silent reset
of the numbers), and every tip reply and mempool inventory carries the
publisher's epoch and current number.  A node fetches a peer's inventory (txids,
then the transactions it lacks) when

- it first has the peer as a synced node, and whenever the peer shows a new epoch;
- a gap appears in the peer's gossip numbers;
- a tip reply says the peer had published messages that, one tip round later,
  have still not arrived (lost, not in flight).

So a transaction accepted by any miner reaches every connected miner even if
every gossip message about it is lost.  Only the miner that took a transaction
first hand (from a client) announces it to its peers (topic ``tx``, numbered):
the membership is a full mesh, so every member hears it from that miner, and
copies from every other member would be three receptions per transaction in a
cluster of four, most of a relay's CPU.  What a miner takes from a peer is
announced under ``rtx``, which members do not subscribe to, for observers of its
mempool.  What one turn of the node's loop accepted goes out at the turn's end
in one message per topic (``gossip_txs``; ``gossip_tx`` for one): a node that
keeps up announces each transaction at once, one that falls behind under load
pays a send (and its peers a receive) per batch.  A transaction whose parent has not
arrived waits in a bounded, expiring orphan pool (as Bitcoin's) while its parent
is asked of the peer that sent it, and is tried again when the parent comes.
Transactions dropped because a block spent the same coins are remembered (a
bounded map) so that ``get_tx`` can say "conflicted by" instead of "unknown".
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zcoin import wire
from zcoin.consensus import errors as E
from zcoin.consensus.crypto import sha256d
from zcoin.consensus.primitives import Block, Transaction
from zcoin.mempool import MempoolReject, TxAlreadyKnown, TxConflict
from zcoin.peers import PENALTY_INVALID_TX, PENALTY_MALFORMED, Peer, Request
from zcoin.wire import TOPIC_RELAYED_TX, TOPIC_TX

if TYPE_CHECKING:
    from zcoin.nodecore import NodeCore

MAX_ORPHANS = 100  # Bitcoin's DEFAULT_MAX_ORPHAN_TRANSACTIONS
MAX_ORPHAN_BYTES = 1_000_000
ORPHAN_EXPIRY_S = 20 * 60  # Bitcoin's ORPHAN_TX_EXPIRE_TIME
MAX_CONFLICTS_REMEMBERED = 10_000
MAX_PARENTS_ASKED = 16  # missing parents asked of a peer per orphan


class TxOutcome(enum.Enum):
    """What became of a transaction a peer sent."""

    ACCEPTED = "accepted"
    KNOWN = "known"  # already held, or a conflict with one held (first seen wins)
    POLICY = "policy"  # refused by mempool policy, not by the rules
    MISSING = "missing"  # its parent has not arrived (or a coin is immature): a race, not misbehaviour
    INVALID = "invalid"  # broke a rule: held against the sender

    @property
    def accepted(self) -> bool:
        return self is TxOutcome.ACCEPTED


@dataclass(slots=True)
class Orphan:
    tx: Transaction
    missing: frozenset[bytes]  # parent txids not in the pool or the chain when it came
    peer: str
    expires_at: float


class OrphanPool:
    """Transactions waiting for a parent, bounded in count and bytes, oldest dropped first."""

    def __init__(self, max_count: int = MAX_ORPHANS, max_bytes: int = MAX_ORPHAN_BYTES) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.orphans: OrderedDict[bytes, Orphan] = OrderedDict()
        self.bytes = 0

    def __contains__(self, txid: bytes) -> bool:
        return txid in self.orphans

    def __len__(self) -> int:
        return len(self.orphans)

    def add(self, orphan: Orphan) -> None:
        if orphan.tx.txid in self.orphans or orphan.tx.size > self.max_bytes:
            return
        self.orphans[orphan.tx.txid] = orphan
        self.bytes += orphan.tx.size
        while len(self.orphans) > self.max_count or self.bytes > self.max_bytes:
            self.remove(next(iter(self.orphans)))

    def remove(self, txid: bytes) -> Orphan | None:
        orphan = self.orphans.pop(txid, None)
        if orphan is not None:
            self.bytes -= orphan.tx.size
        return orphan

    def waiting_for(self, parent: bytes) -> list[Orphan]:
        return [o for o in self.orphans.values() if parent in o.missing]

    def expire(self, now: float) -> int:
        old = [txid for txid, o in self.orphans.items() if o.expires_at <= now]
        for txid in old:
            self.remove(txid)
        return len(old)


class TxRelay:
    """The core's transaction relay (see the module docstring)."""

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self.orphans = OrphanPool()
        self.conflicts: OrderedDict[bytes, bytes] = OrderedDict()  # dropped txid -> txid of the confirmed spender
        self.unannounced: dict[bytes, list[bytes]] = {}  # topic -> raw transactions accepted this turn
        self._unannounced_bytes = 0

    # --- announcements -------------------------------------------------------------------------

    def announce(self, topic: bytes, raw: bytes) -> None:
        """Announce a transaction under ``topic`` at the end of this turn (with the others of the turn)."""
        batch = self.unannounced.setdefault(topic, [])
        batch.append(raw)
        self._unannounced_bytes += len(raw)
        if len(batch) >= wire.MAX_TXS_PER_GOSSIP or self._unannounced_bytes >= wire.MAX_GOSSIP_BATCH_BYTES:
            self.flush_announcements()

    def flush_announcements(self) -> None:
        """Publish what this turn accepted: one ``gossip_tx``, or several in one ``gossip_txs``, per topic."""
        batches, self.unannounced, self._unannounced_bytes = self.unannounced, {}, 0
        for topic, raws in batches.items():
            if len(raws) == 1:
                self.core.publish(topic, "gossip_tx", tx=raws[0])
            else:
                self.core.publish(topic, "gossip_txs", txs=raws)

    # --- transactions in ------------------------------------------------------------------------

    def accept_tx(self, tx: Transaction, *, topic: bytes = TOPIC_TX) -> int:
        """Validate ``tx`` against chain and mempool, keep it and announce it under ``topic``
        (``tx``: first hand, to peers; ``rtx``: from a peer, to observers); raise on rejection."""
        try:
            fee = self.core.mempool.accept(tx, self.core.store, self.core.chain.height,
                                           is_confirmed=lambda txid: self.core.store.tx_height(txid) is not None)
        except (E.ValidationError, MempoolReject) as exc:
            self.core.counters.rejected[exc.code] += 1
            raise
        self.core.counters.txs_accepted += 1
        self.core.log.debug("tx accepted", txid=tx.txid_hex, fee=fee)
        self.core.unsaved.append((tx.txid, tx.raw))
        self.announce(topic, tx.raw)
        self.on_accepted(tx)
        return fee

    def accept_tx_from_peer(self, raw: bytes, peer: Peer) -> TxOutcome:
        """Take a transaction a peer sent; one whose parent has not come waits in the orphan pool."""
        try:
            tx = Transaction.parse(raw)
        except E.DecodeError as exc:
            self.core.penalise(peer, PENALTY_MALFORMED, f"undecodable tx: {exc}")
            return TxOutcome.INVALID
        try:
            self.accept_tx(tx, topic=TOPIC_RELAYED_TX)
        except (TxAlreadyKnown, TxConflict):
            return TxOutcome.KNOWN
        except MempoolReject:
            return TxOutcome.POLICY
        except (E.TxMissingInput, E.TxImmatureSpend):
            self.keep_orphan(tx, peer)
            return TxOutcome.MISSING  # a race with a block or a parent, not misbehaviour
        except E.InvalidTx as exc:
            self.core.penalise(peer, PENALTY_INVALID_TX, f"invalid tx {tx.txid_hex}: {exc.reason}")
            return TxOutcome.INVALID
        return TxOutcome.ACCEPTED

    def on_mempool(self, peer: Peer, msg: wire.Message, request: Request) -> None:
        self.on_inventory(peer, msg["txids"], msg.get("epoch"), msg.get("seq"))

    def on_txs(self, peer: Peer, msg: wire.Message, request: Request) -> None:
        # A child before its parent waits in the orphan pool until the parent is in.
        for raw in msg["txs"]:
            self.accept_tx_from_peer(raw, peer)

    def on_gossip_tx(self, peer: Peer, msg: wire.Message) -> None:
        self._on_announced(msg["tx"], peer)

    def on_gossip_txs(self, peer: Peer, msg: wire.Message) -> None:
        for raw in msg["txs"]:
            if self.core.banned(peer):
                return
            self._on_announced(raw, peer)

    def _on_announced(self, raw: bytes, peer: Peer) -> None:
        if sha256d(raw) in self.core.mempool:  # the txid hashes the canonical bytes: a copy we hold
            return
        self.accept_tx_from_peer(raw, peer)

    # --- what peers show of their gossip --------------------------------------------------

    def on_gossip_numbers(self, peer: Peer, epoch: int, seq: int) -> None:
        """Check a gossip message's numbers: a new epoch or a gap fetches the peer's inventory."""
        if epoch != peer.epoch:
            self._new_epoch(peer, epoch, seq)
        elif peer.last_seq is not None and seq > peer.last_seq + 1:
            self.core.log.info("gossip gap", peer=peer.name, missed=seq - peer.last_seq - 1)
            self.core.counters.gossip_gaps += 1
            self.ask_inventory(peer)
            if not peer.requests.awaiting("get_tip"):
                self.core.request(peer, "get_tip")
        peer.last_seq = seq if peer.last_seq is None else max(peer.last_seq, seq)

    def on_tip_numbers(self, peer: Peer, epoch: int | None, seq: int | None) -> None:
        """A tip reply's numbers: messages the peer had published a round ago and we never saw are lost."""
        if epoch is None or seq is None:
            return
        if epoch != peer.epoch:
            self._new_epoch(peer, epoch, None)
        elif peer.reported_seq is not None and (peer.last_seq or 0) < peer.reported_seq:
            self.core.log.info("gossip lost", peer=peer.name, seen=peer.last_seq, published=peer.reported_seq)
            self.core.counters.gossip_gaps += 1
            peer.last_seq = peer.reported_seq  # what is missing comes with the inventory
            self.ask_inventory(peer)
        peer.reported_seq = seq

    def _new_epoch(self, peer: Peer, epoch: int, seq: int | None) -> None:
        if peer.epoch is not None:
            self.core.log.info("peer restarted", peer=peer.name, epoch=epoch)
        peer.epoch = epoch
        peer.last_seq = None
        peer.reported_seq = None
        peer.mempool_asked = False  # asked again (now, if we are synced; else once we are)
        if self.core.synced:
            self.ask_inventory(peer)

    def ask_inventory(self, peer: Peer) -> None:
        """Ask ``peer`` for its mempool's txids (then for the transactions we lack)."""
        if not self.core.banned(peer) and not peer.requests.awaiting("get_mempool"):
            peer.mempool_asked = True
            self.core.request(peer, "get_mempool")

    def on_inventory(self, peer: Peer, txids: list[bytes], epoch: int | None, seq: int | None) -> None:
        if epoch is not None and epoch == peer.epoch and seq is not None:
            peer.last_seq = seq if peer.last_seq is None else max(peer.last_seq, seq)  # Clone: the snapshot's number
        pool = self.core.mempool
        missing = [txid for txid in txids if txid not in pool and txid not in self.orphans]
        for i in range(0, len(missing), wire.MAX_TXS_PER_REQUEST):
            self.core.request(peer, "get_txs", txids=missing[i:i + wire.MAX_TXS_PER_REQUEST])

    # --- orphans -----------------------------------------------------------------------------

    def keep_orphan(self, tx: Transaction, peer: Peer) -> None:
        """Hold ``tx`` until its missing parents come, and ask ``peer`` for them."""
        core = self.core
        missing = frozenset(i.prev.txid for i in tx.inputs
                            if i.prev.txid not in core.mempool and core.store.tx_height(i.prev.txid) is None)
        if not missing or tx.txid in self.orphans:
            return
        self.orphans.add(Orphan(tx, missing, peer.name, core.clock.monotonic() + ORPHAN_EXPIRY_S))
        ask = [txid for txid in missing if txid not in self.orphans][:MAX_PARENTS_ASKED]
        if ask and not core.banned(peer):
            core.request(peer, "get_txs", txids=ask)

    def on_accepted(self, tx: Transaction) -> None:
        """A transaction entered the pool or a block: orphans waiting for it are tried again (their
        own acceptance brings their children in turn)."""
        for orphan in self.orphans.waiting_for(tx.txid):
            self.orphans.remove(orphan.tx.txid)
            peer = self.core.peers.get(orphan.peer)
            if peer is not None:
                self.accept_tx_from_peer(orphan.tx.raw, peer)

    def on_timer(self, now: float) -> None:
        self.orphans.expire(now)

    # --- conflicts ---------------------------------------------------------------------------

    def note_dropped(self, connected: list[Block], dropped: list[Transaction]) -> None:
        """Remember which confirmed transaction each dropped one conflicted with (a child: its parent's)."""
        spender = {i.prev: tx.txid for block in connected for tx in block.txs[1:] for i in tx.inputs}
        confirmed = {tx.txid for block in connected for tx in block.txs}
        for tx in dropped:
            if tx.txid in confirmed:
                continue
            conflict = next((spender[i.prev] for i in tx.inputs if i.prev in spender), None) \
                or next((self.conflicts[i.prev.txid] for i in tx.inputs if i.prev.txid in self.conflicts), None)
            if conflict is not None:
                self.conflicts[tx.txid] = conflict
                self.conflicts.move_to_end(tx.txid)
                if len(self.conflicts) > MAX_CONFLICTS_REMEMBERED:
                    self.conflicts.popitem(last=False)

    def conflict_of(self, txid: bytes) -> bytes | None:
        return self.conflicts.get(txid)
