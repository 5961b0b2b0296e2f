"""The miner node's protocol logic, sans I/O: events in, actions out.

:class:`NodeCore` is what a miner *is*, apart from its sockets: the peers and the
requests outstanding to each, block download (:mod:`zcoin.download`), transaction
and block relay, the api handlers (:mod:`zcoin.nodeapi`) and the control of its
mining pool.  It is driven by events - a message from peer P (:meth:`on_reply`,
:meth:`on_gossip`), an api request (:meth:`on_api`), a change of members
(:meth:`on_members`), a timer (:meth:`on_timer`), mined blocks (:meth:`on_mined`)
- and acts only through the objects it is given: a :class:`Transport` (send to a
peer, publish, reply), a :class:`Clock`, the membership (members and join state)
and the mining pool.  The model is python-hyper's h11: the protocol never touches
a socket or reads the time, so any loop can drive it - the ZeroMQ driver
(:mod:`zcoin.node`, what ``zcoin miner`` runs) or the in-memory driver
(:mod:`zcoin.memnet`, many nodes over a virtual network and a virtual clock).

Every message type has one ``on_<type>`` handler; the three tables below say which
types are api requests, replies and gossip.  Correctness never rests on gossip
(PUB/SUB drops by design): tips are compared every ``tip_interval_s`` and a gap
in a peer's sequence numbers asks for its tip.  Accepted transactions are written
to the store before the reply that acknowledges them leaves (:meth:`flush`).
A peer or client sending invalid or malformed data collects points in the
misbehaviour book; past its ban score it is ignored for a while.
"""

from __future__ import annotations

import collections
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from loguru import logger

from zcoin import wire
from zcoin.wire import GOSSIP_TYPES, PEER_TOPICS, TOPIC_BLOCK, TOPIC_TX
from zcoin.chain import Chain
from zcoin.config import CATCHING_UP_LOG_S, MEMPOOL_SAVE_INTERVAL_S, NodeConfig
from zcoin.consensus import errors as E
from zcoin.consensus.crypto import sha256d
from zcoin.consensus.primitives import Block, Transaction
from zcoin.download import BlockDownload
from zcoin.mempool import Mempool, MempoolReject
from zcoin.misbehaviour import Misbehaviour
from zcoin.nodeapi import API_REQUESTS, Deferred, NodeApi, Refused
from zcoin.nodemining import MiningControl
from zcoin.peers import PENALTY_INVALID_BLOCK, PENALTY_MALFORMED, REPLY_TYPES, Match, Peer, Request
from zcoin.relay import TxRelay
from zcoin.storage import ChainStore
from zcoin.tracker.protocol import MemberInfo



class Transport(Protocol):
    """What the core asks of a driver: reach peers, publish, answer clients."""

    def connect(self, info: MemberInfo) -> None: ...  # open the links to a peer (its api and its gossip)
    def disconnect(self, name: str) -> None: ...
    def reset(self, name: str) -> None: ...  # drop whatever is queued for a silent peer, keep the links
    def send(self, name: str, request_id: int, payload: bytes) -> None: ...
    def publish(self, topic: bytes, payload: bytes) -> None: ...
    def reply(self, route: Any, payload: bytes) -> None: ...


class Clock(Protocol):
    def monotonic(self) -> float: ...  # seconds, for timers and bans
    def time(self) -> float: ...  # seconds since the epoch, for block times


class Membership(Protocol):
    state: str  # "joining", "member", "timeout" or "stopped"

    def members(self) -> dict[str, MemberInfo]: ...


@dataclass(slots=True)
class Counters:
    """What the node counts since it started (its status reply carries them; the explorer's
    /metrics exports them)."""

    txs_accepted: int = 0
    rejected: collections.Counter = field(default_factory=collections.Counter)  # rejection code -> count
    blocks_connected: int = 0
    reorgs: int = 0
    gossip_gaps: int = 0  # gaps in a peer's numbers, and messages found lost a tip round later
    request_stalls: int = 0  # peers that did not answer a request in time


def handler_table(types, *owners) -> dict[str, Callable]:
    """Map each message type to the ``on_<type>`` method of the first owner that has one."""
    table = {}
    for msg_type in types:
        handler = next((getattr(o, f"on_{msg_type}") for o in owners if hasattr(o, f"on_{msg_type}")), None)
        if handler is None:
            raise TypeError(f"no handler on_{msg_type}")
        table[msg_type] = handler
    return table


class NodeCore:
    """A miner node's logic (see the module docstring)."""

    def __init__(self, config: NodeConfig, transport: Transport, clock: Clock, *,
                 membership: Membership | None = None, miner: Any = None, admin_allowed: bool = True,
                 epoch: int = 0) -> None:
        self.config = config
        self.params = config.params
        self.name = config.name
        self.transport = transport
        self.clock = clock
        self.membership = membership
        self.miner = miner  # zcoin.mining.MiningPool, or None: not mining
        self.admin_allowed = admin_allowed
        self.log = logger.bind(node=config.name)
        self.store: ChainStore | None = None
        self.chain: Chain | None = None
        self.mempool = Mempool(self.params)
        self.peers: dict[str, Peer] = {}
        self.blocked: set[str] = set()  # peers disconnected by an admin request
        self.misbehaviour = Misbehaviour()  # peers by name, api clients by identity
        self.counters = Counters()
        self.download = BlockDownload(self)
        self.relay = TxRelay(self)
        self.api = NodeApi(self)
        self.endpoints: dict[str, str] = {}  # "api" and "gossip", as the driver bound them
        self.epoch = epoch  # drawn by the driver at each start: peers see a restart as a new epoch
        self.seq = 0
        self.mining = MiningControl(self)
        self.unsaved: list[tuple[bytes, bytes]] = []  # accepted transactions not yet on disk
        self._saved_at = 0.0
        self._catching_up_logged = float("-inf")
        self._outbox: list[tuple[Any, bytes]] = []  # api replies, sent once what they acknowledge is on disk
        self._api_table = handler_table(API_REQUESTS, self.api)
        self._reply_table = handler_table(REPLY_TYPES.values(), self, self.download, self.relay)
        self._gossip_table = handler_table({t for types in GOSSIP_TYPES.values() for t in types}, self, self.relay)

    @property
    def synced(self) -> bool:
        return self.download.synced

    def standing(self) -> str | None:
        """Why this node cannot stand behind an answer about coins now: ``syncing`` (not synced:
        before its first sync, or catching up on a peer with more work) or ``isolated`` (members
        exist, even ones we were told to disconnect from, and no peer answers); None when it can."""
        if not self.synced:
            return "syncing"
        if any(p.answered and not self.banned(p) for p in self.peers.values()):
            return None
        members = set(self.membership.members()) - {self.name} if self.membership is not None else ()
        return "isolated" if members else None

    # --- life cycle ----------------------------------------------------------------------

    def open(self) -> None:
        """Open the chain store and take back the transactions acknowledged before a stop or crash."""
        data_dir = Path(self.config.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.store = ChainStore(data_dir / "chain.sqlite", self.params)
        self.chain = Chain(self.store, self.params)
        self.mempool.signature_cache = self.chain.signature_cache  # blocks of pool transactions verify no signature twice
        gone = []
        for raw in self.store.load_mempool_txs():
            try:
                self.mempool.accept(Transaction.parse(raw), self.store, self.chain.height)
            except (E.ValidationError, MempoolReject):
                gone.append(sha256d(raw))
        self.store.forget_mempool_txs(gone)
        if len(self.mempool) or gone:
            self.log.info("mempool restored", txs=len(self.mempool), dropped=len(gone))

    def flush(self, *, everything: bool = False) -> None:
        """At the end of a turn: announce what it accepted, write it to disk, then send the replies.

        Before any reply goes out, every transaction the node holds is on disk (so
        whatever a reply acknowledges survives ``kill -9``).  Transactions that only
        came from peers wait for the next reply or at most ``MEMPOOL_SAVE_INTERVAL_S``:
        no one was told the node has them, its peers still do, and relay repair
        brings them back after a crash; so one commit (one fsync) covers many.
        """
        self.relay.flush_announcements()
        now = self.clock.monotonic()
        if self.unsaved and (everything or self._outbox or now - self._saved_at >= MEMPOOL_SAVE_INTERVAL_S):
            self.store.save_mempool_txs(self.unsaved)
            self.unsaved.clear()
            self._saved_at = now
        outbox, self._outbox = self._outbox, []
        for route, payload in outbox:
            self.transport.reply(route, payload)

    def close(self) -> None:
        """Save what is unsaved, drop the peers, close the store (the driver closes its sockets)."""
        if self.store is None:
            return
        try:
            self.flush(everything=True)
        except sqlite3.Error as exc:  # the store failed: the rest must still be shut down
            self.log.error("could not save the mempool", error=str(exc))
        for peer in list(self.peers.values()):
            self.drop_peer(peer, "shutdown")
        self.store.close()
        self.store = None

    # --- peers -----------------------------------------------------------------------------

    def on_members(self) -> None:
        """The membership changed: connect to new members, drop those that left."""
        members = self.membership.members() if self.membership is not None else {}
        for node_id, info in members.items():
            if node_id == self.name or node_id in self.blocked:
                continue
            peer = self.peers.get(node_id)
            if peer is not None and peer.info != info:
                self.drop_peer(peer, "endpoints changed")
                peer = None
            if peer is None:
                self.connect_peer(info)
        for node_id, peer in list(self.peers.items()):
            if node_id not in members:
                self.drop_peer(peer, "left the cluster")

    def connect_peer(self, info: MemberInfo) -> Peer:
        """Connect to a member and ask for its tip."""
        self.transport.connect(info)
        peer = self.peers[info.node_id] = Peer(info, self.clock.monotonic())
        self.log.info("peer connected", peer=info.node_id, api=info.api)
        self.request(peer, "get_tip")
        return peer

    def drop_peer(self, peer: Peer, why: str) -> None:
        self.transport.disconnect(peer.name)
        self.peers.pop(peer.name, None)
        self.log.info("peer disconnected", peer=peer.name, why=why)

    def request(self, peer: Peer, msg_type: str, **fields) -> Request:
        """Send a request to ``peer``, recorded until its reply comes or it is given up."""
        asked = fields.get("hashes") or fields.get("txids") or ()
        request = peer.requests.open(msg_type, self.clock.monotonic(), asked)
        self.transport.send(peer.name, request.id, wire.encode(msg_type, **fields))
        self.log.trace("request", peer=peer.name, request=msg_type, id=request.id)
        return request

    def penalise(self, peer: Peer, points: int, why: str) -> None:
        """Count misbehaviour against ``peer``; past the ban score it is ignored for a while."""
        score, banned = self.misbehaviour.penalise(peer.name, points, self.clock.monotonic())
        self.log.warning("peer misbehaved", peer=peer.name, points=points, score=score, why=why)
        if banned:
            self.log.warning("peer banned", peer=peer.name, seconds=self.misbehaviour.ban_duration_s)

    def banned(self, peer: Peer) -> bool:
        return self.misbehaviour.banned(peer.name, self.clock.monotonic())

    def score(self, peer: Peer) -> int:
        return self.misbehaviour.score(peer.name, self.clock.monotonic())

    # --- events from peers ------------------------------------------------------------------

    def on_reply(self, name: str, request_id: int | None, payload: bytes) -> None:
        """A reply from peer ``name`` carrying ``request_id`` (None: it carried none)."""
        peer = self.peers.get(name)
        if peer is None:
            return
        try:
            msg = wire.decode(payload)
        except wire.WireError as exc:
            match, request = peer.requests.match(request_id, "error")
            self.penalise(peer, PENALTY_MALFORMED, f"bad reply: {exc.reason}")
            if request is not None and request.type == "get_blocks":
                self.download.note_delivery(peer, request, set(), self.clock.monotonic())
            return
        match, request = peer.requests.match(request_id, msg.type)
        if match is Match.LATE:
            self.log.debug("late reply", peer=name, id=request_id)  # its request was given up
            return
        if match is Match.UNSOLICITED:
            self.penalise(peer, PENALTY_MALFORMED, "reply to no request")
            return
        self.log.trace("reply", peer=name, request=request.type, reply=msg.type)
        delivered: set[bytes] = set()
        if match is Match.WRONG_TYPE:
            self.penalise(peer, PENALTY_MALFORMED, f"{msg.type} in reply to {request.type}")
        elif msg.type == "error":
            self.log.info("peer refused a request", peer=name, request=request.type, reason=msg["reason"])
        else:
            delivered = self._reply_table[msg.type](peer, msg, request) or set()
        if request.type == "get_blocks":
            self.download.note_delivery(peer, request, delivered, self.clock.monotonic())
            # Ask for more at once, not at the end of the turn: the peer serves it while this turn
            # handles the replies already in (a sync that waited a round trip every turn idled 15%).
            self.download.fetch_blocks()

    def on_blocks(self, peer: Peer, msg: wire.Message, request: Request) -> set[bytes]:
        blocks = []
        for raw in msg["blocks"]:
            try:
                blocks.append(Block.parse(raw))
            except E.DecodeError as exc:
                self.penalise(peer, PENALTY_MALFORMED, f"undecodable block: {exc}")
        # One commit for the reply, the durable mempool's changes included: a crash loses all of it or none.
        with self.chain.batch(blocks):
            for block in blocks:
                self.accept_block(block, peer, relay=False)
        return {block.hash for block in blocks}

    def on_gossip(self, name: str, topic: bytes, payload: bytes) -> None:
        """A message on peer ``name``'s gossip, under ``topic``."""
        peer = self.peers.get(name)
        if peer is None or self.banned(peer):
            return
        try:
            msg = wire.decode(payload)
        except wire.WireError as exc:
            self.penalise(peer, PENALTY_MALFORMED, f"bad gossip: {exc.reason}")
            return
        if msg.type not in GOSSIP_TYPES.get(topic, ()):
            self.penalise(peer, PENALTY_MALFORMED, f"{msg.type} on topic {topic[:16]!r}")
            return
        self.relay.on_gossip_numbers(peer, msg.get("epoch", 0), msg["seq"])
        self._gossip_table[msg.type](peer, msg)

    def on_bad_gossip(self, name: str, why: str) -> None:
        """Frames on a peer's gossip that are not even an envelope."""
        peer = self.peers.get(name)
        if peer is not None and not self.banned(peer):
            self.penalise(peer, PENALTY_MALFORMED, why)

    def on_gossip_block(self, peer: Peer, msg: wire.Message) -> None:
        try:
            block = Block.parse(msg["block"])
        except E.DecodeError as exc:
            self.penalise(peer, PENALTY_MALFORMED, f"undecodable block: {exc}")
            return
        self.accept_block(block, peer, relay=True)
        self.download.peer_has(peer, self.chain.index.get(block.hash))

    # --- events from clients ----------------------------------------------------------------

    def on_api(self, identity: bytes, route: Any, payload: bytes) -> None:
        """A request on the api from ``identity``; the reply goes to ``route`` once it is safe to send."""
        now = self.clock.monotonic()
        if self.misbehaviour.banned(identity, now):
            return
        try:
            msg = wire.decode(payload)
            handler = self._api_table.get(msg.type)
            if handler is None:
                raise wire.WireError("unsupported", f"{msg.type} is not an api request")
            reply = handler(msg)
            if isinstance(reply, Deferred):
                reply.attach(route)  # the handler replies later, through reply_later
                return
        except Refused as exc:  # well formed, but not served: held against no one
            reply = wire.encode("error", reason=exc.reason, detail=exc.detail[:1024])
        except wire.WireError as exc:
            self.on_bad_request(identity, exc.reason)
            reply = wire.encode("error", reason=exc.reason, detail=exc.detail[:1024])
        except sqlite3.Error:
            raise  # the chain store failed (disk full, I/O error): stop, as Bitcoin's AbortNode does
        except Exception as exc:  # a handler bug must not take the node down
            self.log.exception("api handler failed")
            reply = wire.encode("error", reason="internal", detail=type(exc).__name__)
        self._outbox.append((route, reply))

    def reply_later(self, route: Any, payload: bytes) -> None:
        """Answer a request whose handler deferred its reply (sent at the next flush)."""
        self._outbox.append((route, payload))

    def on_bad_request(self, identity: bytes, why: str) -> None:
        score, _ = self.misbehaviour.penalise(identity, PENALTY_MALFORMED, self.clock.monotonic())
        self.log.warning("bad request", client=identity.hex(), score=score, why=why)

    # --- transactions and blocks ---------------------------------------------------------------

    def accept_block(self, block: Block, peer: Peer | None, relay: bool, strict: bool = False) -> None:
        """Add a block from a peer, our miner or a client; ``strict`` re-raises the rejection."""
        try:
            update = self.chain.add_block(block, int(self.clock.time()))
        except E.BlockTimeTooNew as exc:
            self.log.info("block from the future", block=block.hash_hex, reason=exc.reason)
            if strict:
                raise
            return
        except E.InvalidBlock as exc:
            self.log.warning("block rejected", block=block.hash_hex, peer=peer.name if peer else None,
                             reason=exc.reason)
            if peer is not None:
                self.penalise(peer, PENALTY_INVALID_BLOCK, f"invalid block: {exc.reason}")
            if strict:
                raise
            return
        if update.known:
            return
        if update.orphaned:
            self.log.info("orphan block", block=block.hash_hex, missing=update.missing[::-1].hex())
            if peer is not None:
                self.download.request_headers(peer)
            return
        for bad_hash, exc in update.invalid:
            self.log.warning("orphan rejected", block=bad_hash[::-1].hex(), reason=exc.reason)
        self._after_chain_update(update)
        if relay and update.connected and self.chain.tip.hash == block.hash:
            self.relay.flush_announcements()  # announcements keep their order
            self.publish(TOPIC_BLOCK, "gossip_block", block=block.raw)

    def _after_chain_update(self, update) -> None:
        if not update.connected and not update.disconnected:
            return
        dropped = self.mempool.update_for_chain(update.connected, update.disconnected, self.store,
                                                self.chain.height)
        gone = [tx.txid for block in update.connected for tx in block.txs[1:]] + [tx.txid for tx in dropped]
        self.store.forget_mempool_txs(gone)
        if self.unsaved:
            gone_set = set(gone)
            self.unsaved = [(txid, raw) for txid, raw in self.unsaved if txid not in gone_set]
        self.relay.note_dropped(update.connected, dropped)
        for block in update.connected:  # orphans whose parent a block confirmed can come in now
            for tx in block.txs[1:]:
                self.relay.on_accepted(tx)
        tip = self.chain.tip
        self.counters.blocks_connected += len(update.connected)
        if update.disconnected:
            self.counters.reorgs += 1
            self.log.warning("reorg", depth=len(update.disconnected), height=tip.height, tip=tip.hash_hex)
            # Transactions the reorg put back are announced again: peers that only saw
            # them in a block that lost need them to mine them.
            for block in update.disconnected:
                for tx in block.txs[1:]:
                    if tx.txid in self.mempool:
                        self.unsaved.append((tx.txid, tx.raw))
                        self.relay.announce(TOPIC_TX, tx.raw)
        # A line per block once synced; while catching up (a line per block would be a fifth of the
        # work of a long sync), one every CATCHING_UP_LOG_S with the progress.
        level = "INFO" if self.download.ever_synced else "DEBUG"
        for block in update.connected:
            self.log.log(level, "block connected", height=self.chain.index[block.hash].height, block=block.hash_hex,
                         txs=len(block.txs))
        now = self.clock.monotonic()
        if update.connected and not self.download.ever_synced and now >= self._catching_up_logged + CATCHING_UP_LOG_S:
            self._catching_up_logged = now
            self.log.info("catching up", height=tip.height, best_header=self.chain.best_header.height)

    def publish(self, topic: bytes, msg_type: str, **fields) -> None:
        """Announce on the gossip, numbering every message peers hear so that they can see gaps.

        A message under a topic peers do not subscribe to (``wire.PEER_TOPICS``) carries the
        current number without taking one: peers never see it, so it must not open a gap."""
        if topic in PEER_TOPICS:
            self.seq += 1
        self.transport.publish(topic, wire.encode(msg_type, seq=self.seq, epoch=self.epoch, **fields))

    # --- timers and mining ----------------------------------------------------------------------

    def on_timer(self) -> None:
        """Run what is due: tip rounds, stalls, the synced decision, fetches, the mempool, mining, the store's flush."""
        now = self.clock.monotonic()
        self.store.flush_if_due(now)
        self.download.on_timer(now)
        if self.synced:
            for peer in self.peers.values():
                if not peer.mempool_asked and peer.answered:
                    self.relay.ask_inventory(peer)
        self.relay.on_timer(now)
        if self.miner is not None:
            self.mining.on_timer(now)

    def on_mined(self, found: list) -> None:
        """Blocks the mining pool found (``zcoin.mining.Found``), for jobs current or past."""
        for block in self.mining.blocks_found(found):
            self.accept_block(block, None, relay=True)
            if self.chain.tip.hash == block.hash:
                self.mining.on_block_connected(block)
