"""A miner: the full node that relays, validates, syncs, stores and mines.

One :class:`Node` is one process's worth of state, driven by one thread's
``zmq.Poller`` loop (sockets never cross threads):

- ``api`` (ROUTER): requests from peers' DEALERs and from clients - tips,
  headers, blocks, mempool, transaction pushes, balances, status, admin;
- ``gossip`` (PUB): the node's announcements, ``tx`` and ``block`` topics,
  every message numbered so subscribers see gaps;
- per peer, a SUB on its gossip and a DEALER on its api, so whatever arrives
  is known to come from that peer (penalties cannot be dodged by lying about
  a name);
- the membership agent's wake-up socket (its own thread talks to the trackers)
  and the mining pool's result pipe.

Correctness never rests on PUB/SUB, which drops messages by design: every
``TIP_INTERVAL_S`` each peer is asked for its tip, and a node behind a peer
with more work syncs headers-first (GETHEADERS with a block locator, up to 2000
headers a reply) and then fetches bodies in batches, each from a peer whose
announced chain holds them, re-assigning a batch whose peer stalls.  A peer that
stalls or sends none of what it announced is penalised, asked for those blocks
again only after a doubling back-off or once it shows more work, and cannot hold
up mining until it delivers; claims of work without headers stop only a node
that was never synced.  A gossiped block with an unknown parent, or a gap in a
peer's sequence numbers, triggers the same.

A new node joins, syncs the chain, fetches its peers' mempools, and only then
mines.  A peer sending invalid or malformed data collects a penalty; past
``BAN_SCORE`` it is ignored for ``BAN_DURATION_S``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sqlite3
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import zmq
from loguru import logger

from zcoin import wire
from zcoin.chain import Chain, IndexEntry, UnknownParent
from zcoin.consensus import errors as E
from zcoin.consensus.crypto import sha256d
from zcoin.consensus.params import ChainParams
from zcoin.consensus.primitives import Block, BlockHeader, Transaction
from zcoin.mempool import Mempool, MempoolReject, TxAlreadyKnown, TxConflict
from zcoin.storage import INVALID, ChainStore
from zcoin.tracker import MemberInfo, MembershipAgent
from zcoin.wire import MAX_BLOCKS_PER_REQUEST, MAX_HEADERS_PER_REPLY, MAX_MEMPOOL_IDS, MAX_TXS_PER_REQUEST

TIP_INTERVAL_S = 2.0  # how often peers compare tips
REQUEST_TIMEOUT_S = 5.0  # a peer's reply later than this counts as a stall
REQUEST_ID_BYTES = 8
MAX_BLOCKS_IN_FLIGHT_PER_PEER = 32
MAX_REPLY_BYTES = 3 * 1024 * 1024  # under wire.MAX_MESSAGE_BYTES with room for the envelope
MAX_DRAIN_PER_WAKE = 500  # messages read from one socket before the others get a turn
GOSSIP_HWM = 100_000  # PUB/SUB queues sized for bursts instead of the silent-drop default of 1000
BAN_SCORE = 100
BAN_DURATION_S = 60.0
PENALTY_MALFORMED = 20
PENALTY_INVALID_TX = 10
PENALTY_INVALID_BLOCK = 100
PENALTY_STALL = 20  # no reply in time, or none of the blocks asked for: a slow peer may do it too
RETRY_AFTER_STALL_S = 10.0  # first wait before asking a peer again for what it failed to send; doubles
RETRY_AFTER_STALL_MAX_S = 300.0
RETEMPLATE_INTERVAL_S = 1.0  # at most this often a richer mempool restarts the mining job
SYNC_GRACE_S = 3.0  # a node with peers waits this long for their tips before it calls itself synced

# libzmq's own limit is only a backstop: frames up to it reach wire.decode, which refuses
# anything over wire.MAX_MESSAGE_BYTES and penalises the sender; libzmq would drop silently.
MAX_SOCKET_MESSAGE_BYTES = 2 * wire.MAX_MESSAGE_BYTES

TOPIC_TX = b"tx"
TOPIC_BLOCK = b"block"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything a node needs to start (the CLI fills it from flags and the config file)."""

    name: str
    params: ChainParams
    data_dir: Path
    api: str = "tcp://127.0.0.1:*"
    gossip: str = "tcp://127.0.0.1:*"
    trackers: tuple[str, ...] = ()
    mine: bool = True
    workers: int | None = None
    payout: bytes | None = None  # x-only key the coinbase pays; None: no mining
    join_deadline_s: float = 30.0
    heartbeat_s: float = 2.0
    tip_interval_s: float = TIP_INTERVAL_S
    sync_grace_s: float = SYNC_GRACE_S
    request_timeout_s: float = REQUEST_TIMEOUT_S
    retry_after_stall_s: float = RETRY_AFTER_STALL_S


@dataclass(slots=True)
class Peer:
    """Another miner this node is connected to."""

    info: MemberInfo
    dealer: zmq.Socket
    sub: zmq.Socket
    last_seq: int | None = None
    height: int = -1
    tip_hash: bytes = b""
    work: int = -1  # height, tip_hash and work are what it claims; ``known_hash`` is what it has shown
    answered: bool = False  # has answered a tip request since we connected
    connected_at: float = field(default_factory=time.monotonic)
    known_hash: bytes = b""  # the most-work header it sent or announced (Bitcoin's pindexBestKnownBlock)
    unbacked_tip: bytes = b""  # a claimed tip whose headers it did not send
    stalls: int = 0  # failures to deliver since it last delivered; while > 0 it cannot hold up mining
    retry_at: float = 0.0  # when what it failed to deliver is asked of it again (doubling back-off)
    pending: dict = field(default_factory=dict)  # request id -> (type, time sent, hashes asked), oldest first
    last_request_id: int = 0
    inflight: set = field(default_factory=set)  # hashes of blocks asked of this peer
    unserved: set = field(default_factory=set)  # blocks it announced, was asked for and did not send
    unserved_work: int = 0  # the work it had shown when it failed to send them
    score: int = 0
    banned_until: float = 0.0
    fetching_headers: bool = False

    @property
    def name(self) -> str:
        return self.info.node_id


def is_loopback_endpoint(endpoint: str) -> bool:
    """True for inproc/ipc endpoints and tcp endpoints on 127.0.0.0/8 or ::1."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("inproc", "ipc"):
        return True
    host = urlsplit(f"//{rest}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Node:
    """A miner node (see the module docstring).  Start it with :meth:`start`, drive it with :meth:`run`."""

    def __init__(self, config: NodeConfig, *, context: zmq.Context | None = None) -> None:
        self.config = config
        self.params = config.params
        self.name = config.name
        self.log = logger.bind(node=config.name)
        self.context = context or zmq.Context.instance()
        self.store: ChainStore | None = None
        self.chain: Chain | None = None
        self.mempool = Mempool(self.params)
        self.peers: dict[str, Peer] = {}
        self.blocked: set[str] = set()  # peers disconnected by an admin request
        self.sock_owner: dict[zmq.Socket, Peer] = {}
        self.client_scores: dict[bytes, int] = {}
        self.seq = 0
        self.started_at = 0.0
        self.synced = False
        self._ever_synced = False
        self.mempool_synced: set[str] = set()
        self.agent: MembershipAgent | None = None
        self.pool = None  # zcoin.mining.MiningPool when mining
        self.job_id = 0
        self.templates: dict[int, object] = {}
        self.job_tip = b""
        self.job_fees = -1
        self.last_template_at = 0.0
        self._next_tip_round = 0.0
        self._unsaved: list[tuple[bytes, bytes]] = []  # accepted transactions not yet on disk
        self._outbox: list[list[bytes]] = []  # api replies, sent once what they acknowledge is on disk
        self._stop = threading.Event()

    # --- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        """Open the store, bind the sockets, join the trackers, start the mining pool."""
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = ChainStore(self.config.data_dir / "chain.sqlite", self.params)
        self.chain = Chain(self.store, self.params)
        self._restore_mempool()
        self.api = self.context.socket(zmq.ROUTER)
        self.api.setsockopt(zmq.LINGER, 0)
        self.api.setsockopt(zmq.MAXMSGSIZE, MAX_SOCKET_MESSAGE_BYTES)
        self.api.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.api.setsockopt(zmq.SNDHWM, GOSSIP_HWM)
        self.api.setsockopt(zmq.RCVHWM, GOSSIP_HWM)
        self.api.bind(self.config.api)
        self.api_endpoint = self.api.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub = self.context.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 500)
        self.pub.setsockopt(zmq.SNDHWM, GOSSIP_HWM)
        self.pub.bind(self.config.gossip)
        self.gossip_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.admin_allowed = is_loopback_endpoint(self.api_endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.api, zmq.POLLIN)
        self.notify = None
        if self.config.trackers:
            notify_endpoint = f"inproc://membership-{id(self)}"
            self.notify = self.context.socket(zmq.PULL)
            self.notify.setsockopt(zmq.LINGER, 0)
            self.notify.bind(notify_endpoint)
            self.poller.register(self.notify, zmq.POLLIN)
            me = MemberInfo(self.name, self.gossip_endpoint, self.api_endpoint)
            self.agent = MembershipAgent(list(self.config.trackers), me, context=self.context,
                                         notify_endpoint=notify_endpoint,
                                         join_deadline_s=self.config.join_deadline_s,
                                         heartbeat_s=self.config.heartbeat_s)
            self.agent.start()
        if self.config.mine and self.config.payout is not None:
            from zcoin.mining import MiningPool

            self.pool = MiningPool(self.config.workers)
            self.pool.start()
            self.poller.register(self.pool.fileno(), zmq.POLLIN)
        self.started_at = time.monotonic()
        self._write_endpoints()
        self.log.info("node started", api=self.api_endpoint, gossip=self.gossip_endpoint,
                      height=self.chain.height, tip=self.chain.tip.hash_hex, network=self.params.name)

    def _restore_mempool(self) -> None:
        """Take back the transactions acknowledged before a stop or a crash (those still valid)."""
        gone = []
        for raw in self.store.load_mempool_txs():
            try:
                tx = Transaction.parse(raw)
                self.mempool.accept(tx, self.store, self.chain.height)
            except (E.ValidationError, MempoolReject):
                gone.append(sha256d(raw))
        self.store.forget_mempool_txs(gone)
        if len(self.mempool) or gone:
            self.log.info("mempool restored", txs=len(self.mempool), dropped=len(gone))

    def _flush(self) -> None:
        """Write accepted transactions to disk, then send the replies that acknowledge them."""
        if self._unsaved:
            self.store.save_mempool_txs(self._unsaved)
            self._unsaved.clear()
        for frames in self._outbox:
            self.api.send_multipart(frames)
        self._outbox.clear()

    def _write_endpoints(self) -> None:
        """Leave the bound endpoints in ``node.json`` so tools can find an ephemeral port."""
        path = self.config.data_dir / "node.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"name": self.name, "api": self.api_endpoint, "gossip": self.gossip_endpoint,
                                   "pid": os.getpid(), "network": self.params.name}))
        tmp.replace(path)

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from any thread or a signal handler)."""
        self._stop.set()

    def close(self) -> None:
        """Leave the trackers, stop the pool, close sockets and the store."""
        if self.store is not None and getattr(self, "api", None) is not None:
            try:
                self._flush()
            except sqlite3.Error as exc:  # the store failed: the rest must still be shut down
                self.log.error("could not save the mempool", error=str(exc))
        if self.agent is not None:
            self.agent.stop()
            self.agent = None
        if self.pool is not None:
            self.pool.stop()
            self.pool = None
        for peer in list(self.peers.values()):
            self._drop_peer(peer, "shutdown")
        for sock in (getattr(self, "api", None), getattr(self, "pub", None), self.notify):
            if sock is not None:
                sock.close(linger=0)
        if self.store is not None:
            self.store.close()
            self.store = None
        self.log.info("node stopped")

    def start_in_thread(self, timeout_s: float = 10.0) -> threading.Thread:
        """Start and run the node in a thread of its own (for tests: several nodes in one process).

        The thread that starts a node owns its sockets and its SQLite connection,
        so both happen in the new thread; this returns once the node is started.
        """
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                self.start()
            except BaseException as exc:  # reported to the caller below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self.run()

        thread = threading.Thread(target=main, name=f"node-{self.name}", daemon=True)
        thread.start()
        if not ready.wait(timeout_s):
            raise RuntimeError(f"node {self.name} did not start within {timeout_s}s")
        if failure:
            thread.join()
            raise failure[0]
        self.thread = thread
        return thread

    def run(self) -> None:
        """The event loop: until :meth:`stop`, serve sockets and timers."""
        try:
            while not self._stop.is_set():
                self.run_once(timeout_s=0.1)
        finally:
            self.close()

    def run_once(self, timeout_s: float = 0.1) -> None:
        """One turn of the loop: wait for input up to ``timeout_s``, handle it, run due timers."""
        events = dict(self.poller.poll(int(timeout_s * 1000)))
        now = time.monotonic()
        for sock in list(events):
            if sock is self.api:
                self._drain(self.api, self._on_api)
            elif sock is self.notify:
                self._drain(self.notify, lambda frames: None)
                self._sync_members()
            elif self.pool is not None and sock == self.pool.fileno():
                self._on_mined()
            else:
                peer = self.sock_owner.get(sock)
                if peer is None:
                    continue
                if sock is peer.sub:
                    self._drain(sock, lambda frames, p=peer: self._on_gossip(p, frames))
                elif sock is peer.dealer:
                    self._drain(sock, lambda frames, p=peer: self._on_reply(p, frames))
        self._timers(now)
        self._flush()

    def _drain(self, sock: zmq.Socket, handler) -> None:
        for _ in range(MAX_DRAIN_PER_WAKE):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:
                return  # socket closed under us (peer dropped while draining)
            handler(frames)
            if sock.closed:
                return

    # --- membership and peers ------------------------------------------------------

    def _sync_members(self) -> None:
        members = self.agent.members() if self.agent else {}
        for node_id, info in members.items():
            if node_id == self.name or node_id in self.blocked:
                continue
            peer = self.peers.get(node_id)
            if peer is not None and (peer.info.api != info.api or peer.info.gossip != info.gossip):
                self._drop_peer(peer, "endpoints changed")
                peer = None
            if peer is None:
                self.connect_peer(info)
        for node_id, peer in list(self.peers.items()):
            if node_id not in members:
                self._drop_peer(peer, "left the cluster")

    def connect_peer(self, info: MemberInfo) -> Peer:
        """Open a DEALER to the peer's api and a SUB to its gossip, and ask for its tip."""
        dealer = self._open_dealer(info.api)
        sub = self.context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.MAXMSGSIZE, MAX_SOCKET_MESSAGE_BYTES)
        sub.setsockopt(zmq.RCVHWM, GOSSIP_HWM)
        sub.setsockopt(zmq.SUBSCRIBE, TOPIC_TX)
        sub.setsockopt(zmq.SUBSCRIBE, TOPIC_BLOCK)
        sub.connect(info.gossip)
        peer = Peer(info, dealer, sub)
        self.peers[info.node_id] = peer
        for sock in (dealer, sub):
            self.sock_owner[sock] = peer
            self.poller.register(sock, zmq.POLLIN)
        self.log.info("peer connected", peer=info.node_id, api=info.api)
        self._request(peer, "get_tip")
        return peer

    def _open_dealer(self, endpoint: str) -> zmq.Socket:
        dealer = self.context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.MAXMSGSIZE, MAX_SOCKET_MESSAGE_BYTES)
        dealer.setsockopt(zmq.SNDHWM, GOSSIP_HWM)
        dealer.setsockopt(zmq.RCVHWM, GOSSIP_HWM)
        dealer.connect(endpoint)
        return dealer

    def _drop_peer(self, peer: Peer, why: str) -> None:
        for sock in (peer.dealer, peer.sub):
            if not sock.closed:
                self.poller.unregister(sock)
                self.sock_owner.pop(sock, None)
                sock.close(linger=0)
        self.peers.pop(peer.name, None)
        self.mempool_synced.discard(peer.name)
        self.log.info("peer disconnected", peer=peer.name, why=why)

    def _request(self, peer: Peer, msg_type: str, **fields) -> None:
        # The request id travels as the routing envelope (one frame before the message)
        # and comes back on the reply, so a reply is matched to its request, not its turn.
        peer.last_request_id += 1
        request_id = peer.last_request_id
        peer.dealer.send_multipart([request_id.to_bytes(REQUEST_ID_BYTES, "big"), wire.encode(msg_type, **fields)])
        self.log.trace("request", peer=peer.name, request=msg_type, id=request_id)
        peer.pending[request_id] = (msg_type, time.monotonic(), fields.get("hashes"))

    @staticmethod
    def _awaiting(peer: Peer, msg_type: str) -> bool:
        return any(kind == msg_type for kind, _, _ in peer.pending.values())

    def penalise(self, peer: Peer, points: int, why: str) -> None:
        """Count misbehaviour against ``peer``; past ``BAN_SCORE`` ignore it for a while."""
        peer.score += points
        self.log.warning("peer misbehaved", peer=peer.name, points=points, score=peer.score, why=why)
        if peer.score >= BAN_SCORE and peer.banned_until < time.monotonic():
            peer.banned_until = time.monotonic() + BAN_DURATION_S
            self.log.warning("peer banned", peer=peer.name, seconds=BAN_DURATION_S)

    def _banned(self, peer: Peer) -> bool:
        if peer.banned_until and peer.banned_until < time.monotonic():
            peer.banned_until = 0.0
            peer.score = 0
        return bool(peer.banned_until)

    # --- timers ----------------------------------------------------------------------

    def _timers(self, now: float) -> None:
        if now >= self._next_tip_round:
            self._next_tip_round = now + self.config.tip_interval_s
            for peer in list(self.peers.values()):
                if not self._banned(peer) and not self._awaiting(peer, "get_tip"):
                    self._request(peer, "get_tip")
        for peer in list(self.peers.values()):
            self._check_stalls(peer, now)
            if (peer.unserved or peer.unbacked_tip) and now >= peer.retry_at:
                peer.unserved.clear()  # a slow but honest peer (the only source, maybe) gets another turn
                peer.unbacked_tip = b""
        self._update_synced(now)
        self._fetch_blocks()
        if self.pool is not None:
            self._on_mined()  # also lets the pool replace a dead worker
            self._maybe_new_job(now)

    def _check_stalls(self, peer: Peer, now: float) -> None:
        oldest = next(iter(peer.pending.values()), None)
        if oldest is None or now - oldest[1] <= self.config.request_timeout_s:
            return
        # A silent peer: forget what we asked (another peer is asked instead) and replace
        # the DEALER, dropping whatever is still queued for it.  Only what it failed to
        # answer in time is held against it.
        late = [(kind, asked) for kind, sent, asked in peer.pending.values()
                if now - sent > self.config.request_timeout_s]
        blocks = [h for kind, asked in late if kind == "get_blocks" for h in asked]
        headers = any(kind == "get_headers" for kind, _ in late)
        if headers and peer.tip_hash not in self.chain.index:
            peer.unbacked_tip = peer.tip_hash
        if blocks:
            self._mark_unserved(peer, blocks)
        if blocks or headers:
            self._failed_to_deliver(peer, now)
            self.penalise(peer, PENALTY_STALL, f"stalled on {len(blocks)} blocks" if blocks else "stalled on headers")
        else:
            self.log.info("peer stalled", peer=peer.name, waiting_for=oldest[0])
        peer.pending.clear()
        peer.inflight.clear()
        peer.fetching_headers = False
        peer.dealer.close(linger=0)
        self.poller.unregister(peer.dealer)
        self.sock_owner.pop(peer.dealer, None)
        peer.dealer = self._open_dealer(peer.info.api)
        self.sock_owner[peer.dealer] = peer
        self.poller.register(peer.dealer, zmq.POLLIN)

    def _update_synced(self, now: float) -> None:
        """Synced: nothing any trusted peer can send would give us more work.

        Before its first sync a node also waits for every member to be connected and to answer
        its tip (each peer gets ``sync_grace_s``), and for headers of heavier tips.  Once synced,
        only bodies it can fetch count: a claim costs nothing, headers cost proof of work.  A
        peer that failed to deliver does not count until it delivers again.
        """
        was = self.synced
        peers = [p for p in self.peers.values() if not self._banned(p)]
        behind = any(self._blocks_from(p, 1) for p in peers if p.answered and not p.stalls)
        if not self._ever_synced and not behind:
            members = set(self.agent.members()) - {self.name} - self.blocked if self.agent is not None else set()
            behind = (self.agent is not None and self.agent.state == "joining" and not self.peers) \
                or bool(members - set(self.peers)) \
                or any(not p.answered and now - p.connected_at < self.config.sync_grace_s for p in peers) \
                or any(self._fetching_headers_for_more_work(p) for p in peers)
        self.synced = not behind
        if self.synced != was:
            # A peer's new block makes us briefly "behind" on every block: only the
            # first catch-up is news.
            level = "INFO" if self.synced and not self._ever_synced else "DEBUG"
            self.log.log(level, "synced" if self.synced else "behind a peer", height=self.chain.height,
                         tip=self.chain.tip.hash_hex)
            self._ever_synced |= self.synced
        if self.synced:
            for peer in self.peers.values():
                if peer.name not in self.mempool_synced and peer.answered and not self._banned(peer):
                    self.mempool_synced.add(peer.name)
                    self._request(peer, "get_mempool")

    # --- sync ----------------------------------------------------------------------

    def _fetch_blocks(self) -> None:
        """Ask each peer for bodies we lack on the way to what it has shown us, oldest first, none twice.

        Like Bitcoin's FindNextBlocksToDownload: only the peer that announced a chain is known
        to have it, so a peer's share comes from its own chain, never from our best header
        (which may be a chain only a withholding peer claims).
        """
        inflight = {h for p in self.peers.values() for h in p.inflight}
        for peer in sorted(self.peers.values(), key=lambda p: len(p.inflight)):
            room = min(MAX_BLOCKS_IN_FLIGHT_PER_PEER - len(peer.inflight), MAX_BLOCKS_PER_REQUEST)
            if room <= 0 or self._banned(peer):
                continue
            batch = self._blocks_from(peer, room, skip=inflight)
            if batch:
                inflight.update(batch)
                peer.inflight.update(batch)
                self._request(peer, "get_blocks", hashes=batch)

    def _blocks_from(self, peer: Peer, limit: int, skip: Collection[bytes] = ()) -> list[bytes]:
        """Bodies on the chain the peer has shown us that would give us more work, oldest first.

        The walk stops at a block the peer failed to send: without it, later ones cannot connect.
        """
        known = self.chain.index.get(peer.known_hash)
        if known is None or known.chain_work <= self.chain.tip.chain_work:
            return []
        return self.chain.blocks_to_fetch(limit, target=known, skip=skip, stop=peer.unserved)

    def _fetching_headers_for_more_work(self, peer: Peer) -> bool:
        return peer.fetching_headers and not peer.stalls and peer.work > self.chain.tip.chain_work \
            and peer.tip_hash not in self.chain.index

    def _request_headers(self, peer: Peer) -> None:
        if not peer.fetching_headers and not self._banned(peer):
            peer.fetching_headers = True
            self._request(peer, "get_headers", locator=self.chain.locator())

    def _on_reply(self, peer: Peer, frames: list[bytes]) -> None:
        request_id = int.from_bytes(frames[0], "big") if len(frames) == 2 and len(frames[0]) == REQUEST_ID_BYTES \
            else 0
        if request_id not in peer.pending:
            if 0 < request_id <= peer.last_request_id:
                self.log.debug("late reply", peer=peer.name, id=request_id)  # its request was given up
            else:
                self.penalise(peer, PENALTY_MALFORMED, "reply to no request")
            return
        expected, _, asked = peer.pending.pop(request_id)
        for block_hash in asked or ():
            peer.inflight.discard(block_hash)  # delivered now, or to be asked of another peer
        delivered = self._handle_reply(peer, expected, frames)
        if asked:
            self._note_unserved(peer, asked, delivered or set())

    def _handle_reply(self, peer: Peer, expected: str | None, frames: list[bytes]) -> set[bytes] | None:
        """Dispatch a reply; for blocks, return the hashes it carried."""
        try:
            msg = wire.decode(frames[-1])
        except wire.WireError as exc:
            self.penalise(peer, PENALTY_MALFORMED, f"bad reply: {exc.reason}")
            return
        self.log.trace("reply", peer=peer.name, request=expected, reply=msg.type)
        if msg.type == "error":
            self.log.info("peer refused a request", peer=peer.name, request=expected, reason=msg["reason"])
            if expected == "get_headers":
                peer.fetching_headers = False
            return
        handler = {"tip": self._on_tip, "headers": self._on_headers, "blocks": self._on_blocks,
                   "mempool": self._on_mempool, "txs": self._on_txs}.get(msg.type)
        if handler is None:
            self.penalise(peer, PENALTY_MALFORMED, f"unexpected reply {msg.type}")
            return
        return handler(peer, msg)

    def _note_unserved(self, peer: Peer, asked: list[bytes], delivered: set[bytes]) -> None:
        """A peer that sent none of the blocks asked for does not have them, whatever it claimed.

        (A reply may stop short to stay under the size limit, but it always carries one block.)
        """
        if delivered.intersection(asked):
            peer.stalls = 0  # it delivers: it may hold up mining again, as a source we wait for
            return
        if any(self.chain.has_block(h) or h not in self.chain.index for h in asked):
            return  # another peer was quicker: nothing to hold against this one
        self._mark_unserved(peer, asked)
        self._failed_to_deliver(peer, time.monotonic())
        self.penalise(peer, PENALTY_STALL, f"sent none of the {len(asked)} blocks asked for")

    def _mark_unserved(self, peer: Peer, hashes: list[bytes]) -> None:
        peer.unserved.update(hashes)
        known = self.chain.index.get(peer.known_hash)
        peer.unserved_work = known.chain_work if known is not None else 0

    def _failed_to_deliver(self, peer: Peer, now: float) -> None:
        peer.stalls += 1
        delay = min(self.config.retry_after_stall_s * 2 ** min(peer.stalls - 1, 16), RETRY_AFTER_STALL_MAX_S)
        peer.retry_at = now + delay

    def _peer_has(self, peer: Peer, entry: IndexEntry | None) -> None:
        """Note a header the peer sent or a block it announced (not an invalid one)."""
        if entry is None or entry.status == INVALID:
            return
        known = self.chain.index.get(peer.known_hash)
        if known is None or entry.chain_work > known.chain_work:
            peer.known_hash = entry.hash
            peer.height = max(peer.height, entry.height)
        if peer.unserved and entry.chain_work > peer.unserved_work:
            # It has shown more work since: what it could not send then may have come.  (Only
            # more work, which costs proof of work, lets it be asked again before its back-off
            # ends: flipping between tips we know would otherwise have us wait on it again.)
            peer.unserved.clear()

    def _on_tip(self, peer: Peer, msg: wire.Message) -> None:
        if msg["hash"] != peer.tip_hash:
            peer.unbacked_tip = b""
        peer.height, peer.tip_hash = msg["height"], msg["hash"]
        peer.work = int.from_bytes(msg["work"], "big")
        peer.answered = True
        entry = self.chain.index.get(peer.tip_hash)
        if entry is not None:
            self._peer_has(peer, entry)
        elif peer.work > self.chain.tip.chain_work and peer.tip_hash != peer.unbacked_tip:
            self._request_headers(peer)

    def _on_headers(self, peer: Peer, msg: wire.Message) -> None:
        peer.fetching_headers = False
        raw_headers = msg["headers"]
        now = int(time.time())
        with self.store.transaction():  # one commit for the whole reply, not one per header
            last, too_new = self._add_headers(peer, raw_headers, now)
        self._peer_has(peer, last)
        if len(raw_headers) < MAX_HEADERS_PER_REPLY and peer.tip_hash not in self.chain.index and not too_new:
            peer.unbacked_tip = peer.tip_hash  # all it sent, and not the tip it claimed: stop asking
            self._failed_to_deliver(peer, time.monotonic())
        if raw_headers:
            self.log.info("sync progress", peer=peer.name, headers=len(raw_headers), height=self.chain.height,
                          best_header=self.chain.best_header.height)
        if len(raw_headers) == MAX_HEADERS_PER_REPLY and last is not None:
            peer.fetching_headers = True
            self._request(peer, "get_headers", locator=[last.hash] + self.chain.locator()[:63])
        self._fetch_blocks()

    def _add_headers(self, peer: Peer, raw_headers: list[bytes], now: int) -> tuple[IndexEntry | None, bool]:
        """Index the headers in order up to the first bad one; return the last one indexed, and
        whether one was stopped for a time ahead of our clock (no fault of the peer's)."""
        last = None
        for raw in raw_headers:
            try:
                header = BlockHeader.parse(raw)
                last = self.chain.add_header(header, now)
            except UnknownParent:
                self.penalise(peer, PENALTY_MALFORMED, "headers do not connect")
                break
            except E.BlockTimeTooNew as exc:  # a clock ahead of ours, not misbehaviour: try again later
                self.log.info("header from the future", peer=peer.name, reason=exc.reason)
                return last, True
            except E.ValidationError as exc:
                self.penalise(peer, PENALTY_INVALID_BLOCK, f"invalid header: {exc.reason}")
                break
        return last, False

    def _on_blocks(self, peer: Peer, msg: wire.Message) -> set[bytes]:
        delivered = set()
        for raw in msg["blocks"]:
            try:
                block = Block.parse(raw)
            except E.DecodeError as exc:
                self.penalise(peer, PENALTY_MALFORMED, f"undecodable block: {exc}")
                continue
            delivered.add(block.hash)
            self._accept_block(block, peer, relay=False)
        return delivered

    def _on_mempool(self, peer: Peer, msg: wire.Message) -> None:
        missing = [txid for txid in msg["txids"] if txid not in self.mempool]
        for i in range(0, len(missing), MAX_TXS_PER_REQUEST):
            self._request(peer, "get_txs", txids=missing[i:i + MAX_TXS_PER_REQUEST])

    def _on_txs(self, peer: Peer, msg: wire.Message) -> None:
        # Pool transactions may depend on each other: retry those whose parent came later in the batch.
        pending = list(msg["txs"])
        for _ in range(3):
            retry = []
            for raw in pending:
                if self._accept_tx_from_peer(raw, peer, relay=False) == "missing":
                    retry.append(raw)
            if not retry or len(retry) == len(pending):
                break
            pending = retry

    # --- gossip ----------------------------------------------------------------------

    def publish(self, topic: bytes, msg_type: str, **fields) -> None:
        """Announce on the gossip PUB, numbering every message so subscribers can see gaps."""
        self.seq += 1
        self.pub.send_multipart([topic, wire.encode(msg_type, seq=self.seq, **fields)])

    def _on_gossip(self, peer: Peer, frames: list[bytes]) -> None:
        if self._banned(peer):
            return
        if len(frames) != 2:
            self.penalise(peer, PENALTY_MALFORMED, f"gossip with {len(frames)} frames")
            return
        topic, payload = frames
        try:
            msg = wire.decode(payload)
        except wire.WireError as exc:
            self.penalise(peer, PENALTY_MALFORMED, f"bad gossip: {exc.reason}")
            return
        expected_type = {TOPIC_TX: "gossip_tx", TOPIC_BLOCK: "gossip_block"}.get(topic)
        if msg.type != expected_type:
            self.penalise(peer, PENALTY_MALFORMED, f"{msg.type} on topic {topic[:16]!r}")
            return
        seq = msg["seq"]
        if peer.last_seq is not None and seq > peer.last_seq + 1:
            self.log.info("gossip gap", peer=peer.name, missed=seq - peer.last_seq - 1)
            if not self._awaiting(peer, "get_tip"):
                self._request(peer, "get_tip")
        peer.last_seq = seq
        if msg.type == "gossip_tx":
            if sha256d(msg["tx"]) in self.mempool:  # the txid hashes the canonical bytes: a copy we hold
                return
            self._accept_tx_from_peer(msg["tx"], peer, relay=True)
        else:
            try:
                block = Block.parse(msg["block"])
            except E.DecodeError as exc:
                self.penalise(peer, PENALTY_MALFORMED, f"undecodable block: {exc}")
                return
            self._accept_block(block, peer, relay=True)
            self._peer_has(peer, self.chain.index.get(block.hash))

    def _accept_tx_from_peer(self, raw: bytes, peer: Peer, relay: bool) -> str:
        try:
            tx = Transaction.parse(raw)
        except E.DecodeError as exc:
            self.penalise(peer, PENALTY_MALFORMED, f"undecodable tx: {exc}")
            return "bad"
        try:
            self.accept_tx(tx, relay=relay)
        except (TxAlreadyKnown, TxConflict):
            return "known"
        except MempoolReject:
            return "policy"
        except (E.TxMissingInput, E.TxImmatureSpend):
            return "missing"  # a race with a block or a parent, not misbehaviour
        except E.InvalidTx as exc:
            self.penalise(peer, PENALTY_INVALID_TX, f"invalid tx {tx.txid_hex}: {exc.reason}")
            return "bad"
        return "accepted"

    # --- transactions and blocks -----------------------------------------------------

    def accept_tx(self, tx: Transaction, *, relay: bool = True) -> int:
        """Validate ``tx`` against chain and mempool, keep it and relay it; raise on rejection."""
        fee = self.mempool.accept(tx, self.store, self.chain.height,
                                  is_confirmed=lambda txid: self.store.tx_height(txid) is not None)
        self.log.debug("tx accepted", txid=tx.txid_hex, fee=fee)
        self._unsaved.append((tx.txid, tx.raw))
        if relay:
            self.publish(TOPIC_TX, "gossip_tx", tx=tx.raw)
        return fee

    def _accept_block(self, block: Block, peer: Peer | None, relay: bool, strict: bool = False) -> None:
        """Add a block from a peer, our miner or a client; ``strict`` re-raises the rejection."""
        try:
            update = self.chain.add_block(block, int(time.time()))
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
                self._request_headers(peer)
            return
        for bad_hash, exc in update.invalid:
            self.log.warning("orphan rejected", block=bad_hash[::-1].hex(), reason=exc.reason)
        self._after_chain_update(update)
        if relay and update.connected and self.chain.tip.hash == block.hash:
            self.publish(TOPIC_BLOCK, "gossip_block", block=block.raw)

    def _after_chain_update(self, update) -> None:
        if not update.connected and not update.disconnected:
            return
        dropped = self.mempool.update_for_chain(update.connected, update.disconnected, self.store,
                                                self.chain.height)
        self.store.forget_mempool_txs([tx.txid for block in update.connected for tx in block.txs[1:]]
                                      + [tx.txid for tx in dropped])
        tip = self.chain.tip
        if update.disconnected:
            self.log.warning("reorg", depth=len(update.disconnected), height=tip.height, tip=tip.hash_hex)
            # Transactions the reorg put back are announced again: peers that only saw
            # them in a block that lost need them to mine them.
            for block in update.disconnected:
                for tx in block.txs[1:]:
                    if tx.txid in self.mempool:
                        self._unsaved.append((tx.txid, tx.raw))
                        self.publish(TOPIC_TX, "gossip_tx", tx=tx.raw)
        for block in update.connected:
            self.log.info("block connected", height=self.chain.index[block.hash].height, block=block.hash_hex,
                          txs=len(block.txs))

    def _on_mined(self) -> None:
        for found in self.pool.poll_results():
            template = self.templates.get(found.job_id)
            if template is None or found.job_id != self.job_id:
                continue
            from zcoin.mining import block_from_found

            block = block_from_found(template, found)
            self.log.info("block found", height=template.height, block=block.hash_hex, worker=found.worker)
            self._accept_block(block, None, relay=True)

    def _maybe_new_job(self, now: float) -> None:
        from zcoin.mining import build_template, job_from_template

        if not self.synced:
            if self.job_tip:
                self.pool.cancel()
                self.job_tip = b""
            return
        tip = self.chain.tip.hash
        fees_changed = now - self.last_template_at >= RETEMPLATE_INTERVAL_S and \
            self.mempool.fees > self.job_fees
        if tip == self.job_tip and not fees_changed and not self.pool.job_exhausted:
            return
        # Every job gets its own extra nonce, so even a template identical in all else
        # (an exhausted search) has a new merkle root and fresh nonces to try.
        template = build_template(self.chain, self.mempool, self.config.payout, int(time.time()),
                                  extra_nonce=(self.job_id + 1).to_bytes(8, "little"))
        self.job_id += 1
        self.templates = {self.job_id: template}
        self.pool.submit(job_from_template(template, self.job_id, self.params.max_future_block_time_s))
        self.job_tip = tip
        self.job_fees = self.mempool.fees
        self.last_template_at = now
        self.log.debug("mining job", job=self.job_id, height=template.height, txs=len(template.txs))

    # --- the api socket --------------------------------------------------------------

    def _on_api(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            return
        identity, envelope, payload = frames[0], frames[1:-1], frames[-1]
        # REQ clients send an empty delimiter, peers' DEALERs a request id; both come back on the reply.
        if len(envelope) > 1 or (envelope and len(envelope[0]) not in (0, REQUEST_ID_BYTES)):
            self._score_client(identity, PENALTY_MALFORMED, "bad envelope")
            return
        if self.client_scores.get(identity, 0) >= BAN_SCORE:
            return
        try:
            msg = wire.decode(payload)
            reply = self._handle_api(msg, identity)
        except wire.WireError as exc:
            self._score_client(identity, PENALTY_MALFORMED, exc.reason)
            reply = wire.encode("error", reason=exc.reason, detail=exc.detail[:1024])
        except sqlite3.Error:
            raise  # the chain store failed (disk full, I/O error): stop, as Bitcoin's AbortNode does
        except Exception as exc:  # a handler bug must not take the node down
            self.log.exception("api handler failed")
            reply = wire.encode("error", reason="internal", detail=type(exc).__name__)
        self._outbox.append([identity, *envelope, reply])

    def _score_client(self, identity: bytes, points: int, why: str) -> None:
        score = self.client_scores.get(identity, 0) + points
        if len(self.client_scores) > 10_000:
            self.client_scores.clear()
        self.client_scores[identity] = score
        self.log.warning("bad request", client=identity.hex(), score=score, why=why)

    def _handle_api(self, msg: wire.Message, identity: bytes) -> bytes:
        handler = getattr(self, f"_api_{msg.type}", None)
        if handler is None:
            raise wire.WireError("unsupported", f"{msg.type} is not an api request")
        return handler(msg, identity)

    def _api_status(self, msg, identity) -> bytes:
        return wire.encode("status_reply", **self.status())

    def status(self) -> dict:
        """What ``zcoin status`` shows."""
        tip = self.chain.tip
        rates = self.pool.hashrates() if self.pool is not None else {"total": 0.0, "workers": []}
        return {
            "node": self.name, "network": self.params.name, "height": tip.height, "tip": tip.hash_hex,
            "work": hex(tip.chain_work), "peers": len(self.peers), "mempool": len(self.mempool),
            "hashrate": float(rates["total"]), "worker_hashrates": [float(r) for r in rates["workers"]],
            "synced": self.synced, "mining": self.pool is not None,
            "best_header": self.chain.best_header.height, "orphans": len(self.chain.orphans),
            "api": self.api_endpoint, "gossip": self.gossip_endpoint,
            "peer_list": [{"node": p.name, "height": p.height, "score": p.score, "banned": self._banned(p)}
                          for p in self.peers.values()],
        }

    def _api_push_tx(self, msg, identity) -> bytes:
        try:
            tx = Transaction.parse(msg["tx"])
        except E.DecodeError as exc:
            return wire.encode("tx_result", accepted=False, txid="", reason=str(exc)[:512], code=exc.code)
        try:
            self.accept_tx(tx)
        except (E.ValidationError, MempoolReject) as exc:
            self.log.info("tx rejected", txid=tx.txid_hex, reason=exc.reason)
            return wire.encode("tx_result", accepted=False, txid=tx.txid_hex, reason=exc.reason[:512], code=exc.code)
        return wire.encode("tx_result", accepted=True, txid=tx.txid_hex)

    def _api_submit_block(self, msg, identity) -> bytes:
        """Take a block from a client (Bitcoin's ``submitblock``): checked, connected and relayed like a mined one."""
        try:
            block = Block.parse(msg["block"])
        except E.DecodeError as exc:
            return wire.encode("block_result", accepted=False, hash="", reason=str(exc)[:512], code=exc.code)
        try:
            self._accept_block(block, None, relay=True, strict=True)
        except E.ValidationError as exc:
            return wire.encode("block_result", accepted=False, hash=block.hash_hex, reason=exc.reason[:512],
                               code=exc.code)
        entry = self.chain.index.get(block.hash)
        return wire.encode("block_result", accepted=True, hash=block.hash_hex,
                           height=entry.height if entry is not None else None)

    def _api_get_tip(self, msg, identity) -> bytes:
        tip = self.chain.tip
        return wire.encode("tip", node=self.name, height=tip.height, hash=tip.hash,
                           work=tip.chain_work.to_bytes(32, "big"))

    def _api_get_headers(self, msg, identity) -> bytes:
        headers = self.chain.headers_after(msg["locator"])
        return wire.encode("headers", headers=[h.serialize() for h in headers])

    def _api_get_blocks(self, msg, identity) -> bytes:
        blocks, size = [], 0
        for block_hash in msg["hashes"]:
            entry = self.chain.index.get(block_hash)
            raw = self.store.get_block_raw(block_hash) if entry is not None else None
            if raw is None:
                continue
            if blocks and size + len(raw) > MAX_REPLY_BYTES:
                break
            blocks.append(raw)
            size += len(raw)
        return wire.encode("blocks", blocks=blocks)

    def _api_get_block(self, msg, identity) -> bytes:
        block_hash = msg.get("hash")
        if block_hash is None and msg.get("height") is not None:
            entry = self.chain.entry_at(msg["height"])
            block_hash = entry.hash if entry else None
        entry = self.chain.index.get(block_hash) if block_hash else None
        raw = self.store.get_block_raw(block_hash) if entry is not None else None
        return wire.encode("block", block=raw, height=entry.height if raw is not None else None)

    def _api_get_mempool(self, msg, identity) -> bytes:
        return wire.encode("mempool", txids=[tx.txid for tx in self.mempool.txs()[:MAX_MEMPOOL_IDS]])

    def _api_get_txs(self, msg, identity) -> bytes:
        txs, size = [], 0
        for txid in msg["txids"]:
            tx = self.mempool.get(txid)
            if tx is None:
                continue
            if size + tx.size > MAX_REPLY_BYTES:
                break
            txs.append(tx.raw)
            size += tx.size
        return wire.encode("txs", txs=txs)

    def _api_get_utxos(self, msg, identity) -> bytes:
        pubkey = msg["pubkey"]
        height = self.chain.height
        coins = self.mempool.spendable_coins(pubkey, self.store.coins_of(pubkey), height)
        return wire.encode("utxos", height=height, coins=[
            {"txid": op.txid, "index": op.index, "amount": c.amount, "height": c.height,
             "confirmed": c.height <= height} for op, c in coins[:100_000]])

    def _api_get_tx(self, msg, identity) -> bytes:
        txid = msg["txid"]
        if txid in self.mempool:
            return wire.encode("tx_status", state="mempool")
        height = self.store.tx_height(txid)
        if height is not None:
            return wire.encode("tx_status", state="confirmed", height=height)
        return wire.encode("tx_status", state="unknown")

    def _api_admin(self, msg, identity) -> bytes:
        if not self.admin_allowed:
            raise wire.WireError("forbidden", "admin requests are served on a loopback api only")
        action, name = msg["action"], msg["peer"]
        if action == "disconnect":
            self.blocked.add(name)
            peer = self.peers.get(name)
            if peer is not None:
                self._drop_peer(peer, "admin request")
            return wire.encode("ok", detail=f"disconnected from {name}")
        if action == "reconnect":
            self.blocked.discard(name)
            self._sync_members()
            return wire.encode("ok", detail=f"reconnecting to {name}" if name in self.peers else f"{name} unknown")
        raise wire.WireError("bad-field", f"unknown admin action {action!r}")
