"""The explorer's view of the cluster: node links with failover, status polls, gossip, the block tree, events.

Everything runs in the one asyncio loop of the explorer, on ``zmq.asyncio`` sockets:

- :class:`NodeLink` asks one node's api over a small pool of DEALER sockets.  A
  node answers a client's requests in order, so a socket carries one exchange at
  a time (several requests may be pipelined in it); the pool lets a slow lookup
  and the status poll run side by side.  A request with no reply within
  :data:`REQUEST_TIMEOUT_S` closes its socket - the zguide's Lazy Pirate: a
  socket that lost a reply is never reused, so a late reply is never taken for
  the next one - and the node is marked down.
- :class:`Cluster` polls every node's ``status`` about once a second (at once
  when the node's gossip announces a block): that cache answers ``/api/cluster``,
  ``/metrics`` and the tip endpoints without asking anyone.  It follows each
  node's tip in the :class:`BlockTree` (fetching the headers it missed) and tells
  a tip that extends the old one from a reorg.  It subscribes to every node's
  gossip: a ``gossip_block`` is a ``block`` event credited to the first node that
  announced it, a ``gossip_tx`` a ``tx`` event.  Reads go to the first node that
  is up (``--node`` order, then the tracker's members), failing over to the next.
- :class:`Gossip` holds a SUB on every node's gossip.

The tree of recent blocks and the hub that fans events out to ``/api/events``
streams are in :mod:`zcoin.explorer.events`.

The gossip path is the hot one (1000 tx/s over four nodes is some 4000 frames a
second): a ``tx`` frame costs one msgpack unpack and one double SHA-256 when
someone is watching, nothing but a count otherwise; a socket is read in batches,
at most every :data:`GOSSIP_BATCH_S` and :data:`~zcoin.sockets.MAX_DRAIN_PER_WAKE`
frames at a time, so the loop wakes per batch, not per frame, and serves HTTP in
between.  Malformed gossip is dropped with a rate-limited log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import Counter
from dataclasses import dataclass, field

import msgpack
import zmq
import zmq.asyncio
from loguru import logger

from zcoin import wire
from zcoin.client import BadEndpoint, NodeError, NodeUnavailable
from zcoin.consensus.crypto import sha256d
from zcoin.consensus.errors import DecodeError
from zcoin.consensus.params import ChainParams, network
from zcoin.consensus.primitives import BlockHeader, Transaction, coinbase_height
from zcoin.explorer.events import TREE_HEIGHTS_SHOWN, BlockTree, EventHub, TreeBlock
from zcoin.payments import UNSERVED
from zcoin.sockets import Envelope, drain, open_socket
from zcoin.tracker.lookup import request_members
from zcoin.tracker.protocol import MemberInfo, TrackerUnavailable
from zcoin.wire import PEER_TOPICS, TOPIC_BLOCK, TOPIC_TX

POLL_INTERVAL_S = 1.0
REQUEST_TIMEOUT_S = 1.5  # a request slower than this goes to the next node
POLLS_MISSED_WHEN_DOWN = 2  # a node is shown down after this many status polls in a row go unanswered
SOCKETS_PER_NODE = 4
TRACKER_INTERVAL_S = 5.0
TRACKER_TIMEOUT_S = 2.0
SEEN_TXIDS = 50_000  # txids remembered (twice over) to announce each transaction once
DROP_LOG_INTERVAL_S = 10.0
GOSSIP_BATCH_S = 0.01  # a gossip socket is read at most every 10 ms: events wait that long at most
STATUS_REQUEST = wire.encode("status")


class NoNodeAnswers(ConnectionError):
    """No node served a read: all down, or all refused (``code``: ``unavailable``, ``syncing``, ``isolated``)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def display(block_hash: bytes) -> str:
    """A hash or txid in display order (byte-reversed hex, as Bitcoin shows them)."""
    return block_hash[::-1].hex()


def check_endpoint(context: zmq.Context, endpoint: str) -> None:
    """Raise :class:`BadEndpoint` unless ZeroMQ can connect to ``endpoint``."""
    sock = context.socket(zmq.DEALER)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        raise BadEndpoint(f"not an endpoint: {endpoint!r} ({zmq.strerror(exc.errno)})") from None
    finally:
        sock.close(linger=0)


# --- one node -------------------------------------------------------------------------------


class NodeLink:
    """Requests to one node's api over up to :data:`SOCKETS_PER_NODE` DEALERs, one exchange at a time each."""

    def __init__(self, context: zmq.asyncio.Context, endpoint: str) -> None:
        check_endpoint(context, endpoint)
        self.context = context
        self.endpoint = endpoint
        self._idle: list[zmq.asyncio.Socket] = []
        self._slots = asyncio.Semaphore(SOCKETS_PER_NODE)

    async def request(self, frames: list[bytes]) -> list[wire.Message]:
        """Send the encoded requests, pipelined, and return their replies in order (``error`` replies too).

        Raises :class:`NodeUnavailable` when a reply does not come within :data:`REQUEST_TIMEOUT_S`
        or does not decode; the socket is then closed, never reused.
        """
        async with self._slots:
            if self._idle:
                sock = self._idle.pop()
            else:
                sock = open_socket(self.context, zmq.DEALER)
                sock.connect(self.endpoint)
            try:
                for frame in frames:
                    await sock.send(frame)
                replies = []
                for _ in frames:
                    if not await sock.poll(REQUEST_TIMEOUT_S * 1000, zmq.POLLIN):
                        raise NodeUnavailable(f"no answer from {self.endpoint} within {REQUEST_TIMEOUT_S:g}s")
                    replies.append(wire.decode(await sock.recv()))
            except wire.WireError as exc:
                sock.close(linger=0)
                raise NodeUnavailable(f"{self.endpoint} sent a bad reply: {exc}") from None
            except BaseException:  # a timeout, or the task cancelled mid-exchange: the socket may owe a reply
                sock.close(linger=0)
                raise
            self._idle.append(sock)
            return replies

    def close(self) -> None:
        for sock in self._idle:
            sock.close(linger=0)
        self._idle.clear()


@dataclass(eq=False, slots=True)
class Node:
    """One node as the explorer sees it: its link, last status, tip and gossip subscription."""

    endpoint: str
    link: NodeLink
    from_tracker: bool
    name: str = ""  # its status names it; until then, its endpoint
    status: dict | None = None  # the last status reply
    up: bool = False
    last_seen: float | None = None  # wall time of its last answer
    error: str = ""
    missed: int = 0  # status polls unanswered in a row
    tip: tuple[bytes, int] | None = None  # (hash, height) as last followed
    gossip: str = ""
    sub: zmq.asyncio.Socket | None = None
    gossip_task: asyncio.Task | None = None
    watch_task: asyncio.Task | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # set by a block announcement: poll now

    def __post_init__(self) -> None:
        self.name = self.name or self.endpoint


# --- gossip -------------------------------------------------------------------------------


class Gossip:
    """A SUB on every node's gossip: blocks go to the cluster's tree, transactions to the event hub.

    This is the hot path (see the module docstring); every frame is handled synchronously inside
    a batch, and nothing a node publishes can stop the reading.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.counts: Counter[str] = Counter()  # frames by topic, and "dropped"
        self._seen_txids: tuple[set[bytes], set[bytes]] = (set(), set())
        self._next_drop_log = 0.0

    async def subscribe(self, node: Node, endpoint: str) -> None:
        """(Re)subscribe to ``node``'s gossip at ``endpoint`` (what its status says)."""
        await self.unsubscribe(node)
        node.gossip = endpoint
        if not endpoint:
            return
        sub = open_socket(self.cluster.context, zmq.SUB, subscribe=PEER_TOPICS)
        try:
            sub.connect(endpoint)
        except zmq.ZMQError as exc:
            sub.close(linger=0)
            logger.warning("cannot subscribe to gossip", node=node.name, gossip=endpoint, error=str(exc))
            return
        node.sub = sub
        node.gossip_task = asyncio.create_task(self._read(node, sub))

    async def unsubscribe(self, node: Node) -> None:
        if node.gossip_task is not None:
            node.gossip_task.cancel()
            await asyncio.gather(node.gossip_task, return_exceptions=True)
            node.gossip_task = None
        if node.sub is not None:
            node.sub.close(linger=0)
            node.sub = None

    async def _read(self, node: Node, sub: zmq.asyncio.Socket) -> None:
        """Wait for gossip, drain what is ready synchronously (a bounded batch), then rest a moment: frames
        gather meanwhile, so a wake-up of the loop serves a batch rather than a frame, and HTTP gets in."""
        reader = zmq.Socket.shadow(sub.underlying)
        handle = functools.partial(self._on_frames, node)
        while True:
            await sub.poll(flags=zmq.POLLIN)
            drain(reader, handle)
            await asyncio.sleep(GOSSIP_BATCH_S)

    def _on_frames(self, node: Node, frames: list[bytes]) -> None:
        try:
            topic, payload = Envelope.gossip_parts(frames)
            if topic == TOPIC_TX:
                self._on_tx(node, payload)
            elif topic == TOPIC_BLOCK:
                self._on_block(node, payload)
            else:
                self._drop(node, f"topic {topic!r}: not subscribed")
        except Exception as exc:  # whatever a node sends, the explorer goes on
            self._drop(node, f"{type(exc).__name__}: {exc}")

    def _on_tx(self, node: Node, payload: bytes) -> None:
        """One transaction (``gossip_tx``) or several (``gossip_txs``) a node accepted first hand."""
        hub = self.cluster.hub
        try:
            body = msgpack.unpackb(payload)
            raws = body["txs"] if "txs" in body else [body.get("tx")]
        except Exception:  # msgpack raises many types on hostile bytes
            raws = None
        if type(raws) is not list or not all(type(raw) is bytes for raw in raws):
            self._drop(node, "gossip_tx without a transaction")
            return
        self.counts["tx"] += len(raws)
        if not hub.subscriptions:
            return  # nobody watches: nothing to compute
        for raw in raws:
            txid = sha256d(raw)
            recent, older = self._seen_txids
            if txid in recent or txid in older:
                continue
            recent.add(txid)
            if len(recent) >= SEEN_TXIDS:
                self._seen_txids = (set(), recent)
            hub.publish_tx({"txid": display(txid), "node": node.name})

    def _on_block(self, node: Node, payload: bytes) -> None:
        """A block becomes the announcer's tip: credit it to the first announcer, and poll that node now."""
        self.counts["block"] += 1
        try:
            msg = wire.decode(payload)
            if msg.type != "gossip_block":
                raise DecodeError(f"{msg.type} under the block topic")
            header, txs = unpack_block(msg["block"])
        except (wire.WireError, DecodeError) as exc:
            self._drop(node, str(exc))
            return
        node.wake.set()
        tree = self.cluster.tree
        if header.hash in tree.blocks:
            return
        coinbase = Transaction.parse(txs[0])
        parent = tree.blocks.get(header.prev_hash)
        height = parent.height + 1 if parent is not None else coinbase_height(coinbase)
        if height is None:
            self._drop(node, "a block whose height cannot be told")
            return
        # The miner announced it before anyone could relay it, but relays may be read first (a socket
        # each): a coinbase paying a node's payout key names the miner for sure.
        self.cluster.learn(header, height, len(txs), self.cluster.miner_of(coinbase) or node.name)

    def _drop(self, node: Node, why: str) -> None:
        self.counts["dropped"] += 1
        now = time.monotonic()
        if now >= self._next_drop_log:
            self._next_drop_log = now + DROP_LOG_INTERVAL_S
            logger.warning("malformed gossip dropped", node=node.name, reason=why[:200], dropped=self.counts["dropped"])


# --- the cluster ----------------------------------------------------------------------------


class Cluster:
    """Every node the explorer knows, what it last said, and the blocks and events it announced."""

    def __init__(self, nodes: list[str], trackers: list[str]) -> None:
        self.context = zmq.asyncio.Context()
        self.nodes: list[Node] = []
        self.trackers = list(trackers)
        self.members: list[MemberInfo] | None = [] if trackers else None
        self.params: ChainParams | None = None  # the network of the first node that answered
        self.tree = BlockTree()
        self.hub = EventHub()
        self.gossip = Gossip(self)
        self._tracker_task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        try:
            for endpoint in trackers:
                check_endpoint(self.context, endpoint)
            for endpoint in dict.fromkeys(nodes):
                self.nodes.append(Node(endpoint, NodeLink(self.context, endpoint), from_tracker=False))
        except BadEndpoint:
            self.context.destroy(linger=0)
            raise

    def start(self) -> None:
        """Start polling every node (and the trackers)."""
        for node in self.nodes:
            node.watch_task = asyncio.create_task(self._watch(node))
        if self.trackers:
            self._tracker_task = asyncio.create_task(self._watch_trackers())

    async def close(self) -> None:
        """Stop every task and close every socket."""
        if self._tracker_task is not None:
            self._tracker_task.cancel()
            await asyncio.gather(self._tracker_task, return_exceptions=True)
        await asyncio.gather(*(self._forget(node) for node in self.nodes))
        self.context.destroy(linger=0)

    # -- reads --

    def primary_status(self) -> dict:
        """The last status of the first node that is up: the tip the explorer reports."""
        node = next((n for n in self.nodes if n.up and n.status is not None), None)
        if node is None:
            raise self._unavailable()
        return node.status

    async def ask(self, *frames: bytes, on: Node | None = None) -> tuple[Node, list[wire.Message]]:
        """The replies to ``frames`` from one node: ``on``, or the first up node that serves them.

        A node that does not answer is marked down and the next one asked; so is one that refuses
        as ``syncing`` or ``isolated``.  Raises :class:`NoNodeAnswers` when none serves them, and
        :class:`NodeError` for any other ``error`` reply.
        """
        candidates = [on] if on is not None else [n for n in self.nodes if n.up]
        refusals = []
        for node in candidates:
            try:
                replies = await node.link.request(list(frames))
            except NodeUnavailable as exc:
                self._mark_down(node, str(exc))
                node.wake.set()  # its poll finds out when it is back
                continue
            error = next((r for r in replies if r.type == "error"), None)
            if error is None:
                return node, replies
            if error["reason"] not in UNSERVED:
                raise NodeError(error["reason"], error.get("detail", ""))
            refusals.append((node, error))
        if refusals:
            reason = "; ".join(f"{n.name}: {e['reason']} {e.get('detail', '')}".strip() for n, e in refusals)
            raise NoNodeAnswers(refusals[0][1]["reason"], f"no node can serve this now ({reason})")
        raise self._unavailable()

    def _unavailable(self) -> NoNodeAnswers:
        why = "; ".join(f"{n.name}: {n.error or 'not answered yet'}" for n in self.nodes) or "no nodes known"
        return NoNodeAnswers("unavailable", f"no node answers ({why})")

    # -- status polls and tips --

    async def _watch(self, node: Node) -> None:
        """Poll ``node``'s status about once a second, and at once when its gossip announces a block."""
        while True:
            node.wake.clear()
            await self._poll(node)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(node.wake.wait(), POLL_INTERVAL_S)

    async def _poll(self, node: Node) -> None:
        try:
            (reply,) = await node.link.request([STATUS_REQUEST])
            if reply.type != "status_reply":
                raise NodeUnavailable(f"{node.endpoint} answered status with {reply.type}")
            status = reply.fields
            tip = bytes.fromhex(status["tip"])[::-1]
        except (NodeUnavailable, ValueError) as exc:
            node.missed += 1
            if node.missed >= POLLS_MISSED_WHEN_DOWN or node.status is None:  # one slow answer under load is not down
                self._mark_down(node, str(exc))
            return
        node.missed = 0
        node.status, node.name, node.last_seen, node.error = status, status["node"], time.time(), ""
        if self.params is None:
            try:
                self.params = network(status["network"])
            except ValueError as exc:
                logger.warning("node on an unknown network", node=node.name, error=str(exc))
        if not node.up:
            node.up = True
            logger.info("node up", node=node.name, api=node.endpoint)
            self.hub.publish("node", {"node": node.name, "up": True})
        if status["gossip"] != node.gossip:
            await self.gossip.subscribe(node, status["gossip"])
        try:
            await self._follow_tip(node, tip, status["height"])
        except (NodeUnavailable, NoNodeAnswers, NodeError, DecodeError, ValueError) as exc:
            logger.info("could not follow the tip", node=node.name, error=str(exc))

    def _mark_down(self, node: Node, error: str) -> None:
        node.error = error
        if node.up:
            node.up = False
            logger.warning("node down", node=node.name, api=node.endpoint, error=error)
            self.hub.publish("node", {"node": node.name, "up": False})

    async def _follow_tip(self, node: Node, tip: bytes, height: int) -> None:
        """Record ``node``'s tip: a ``tip`` event, and a ``reorg`` event when it does not extend the old one."""
        old = node.tip
        if old is not None and old[0] == tip:
            return
        if tip not in self.tree.blocks:
            await self._fetch_chain(node, tip, height)
        node.tip = (tip, height)
        self.hub.publish("tip", {"node": node.name, "height": height, "hash": display(tip)})
        if old is None:
            return
        ancestor = self.tree.ancestor_at(tip, old[1])
        if ancestor is None:  # the tree does not reach back (a long jump): the node knows
            _, (reply,) = await self.ask(wire.encode("get_header", hash=old[0]), on=node)
            ancestor = old[0] if reply.get("active") else b""
        if ancestor != old[0]:
            fork = self.tree.common_ancestor(old[0], tip)
            logger.warning("reorg", node=node.name, old_tip=display(old[0]), new_tip=display(tip),
                           fork_height=fork.height if fork else None)
            self.hub.publish("reorg", {"node": node.name, "old_tip": display(old[0]), "new_tip": display(tip),
                                       "fork_height": fork.height if fork else None,
                                       "depth": old[1] - fork.height if fork else None})

    async def _fetch_chain(self, node: Node, tip: bytes, height: int) -> None:
        """Put ``node``'s chain up to ``tip`` in the tree: the headers after the last block we share with it,
        or, when its chain left the tree further back (or the tree is empty), after a block near its tip."""
        headers, base = await self._headers_after(node, self.tree.locator()) if self.tree.blocks else ([], None)
        if base is None or tip not in {h.hash for h in headers}:
            start = max(0, height - TREE_HEIGHTS_SHOWN)
            _, (reply,) = await self.ask(wire.encode("get_block", height=start), on=node)
            if reply.get("block") is None:
                return
            header, txs = unpack_block(reply["block"])
            self.learn(header, start, len(txs), None)
            headers, base = await self._headers_after(node, {header.hash: start})
            if base is None:
                return
        fresh = [(header, base + 1 + i) for i, header in enumerate(headers)
                 if base + 1 + i > height - TREE_HEIGHTS_SHOWN and header.hash not in self.tree.blocks]
        fresh = fresh[-wire.MAX_BLOCKS_PER_REQUEST:]
        if fresh:  # the bodies, for their transaction counts
            _, (reply,) = await self.ask(wire.encode("get_blocks", hashes=[h.hash for h, _ in fresh]), on=node)
            counts = {hdr.hash: len(txs) for hdr, txs in map(unpack_block, reply["blocks"])}
            for header, at in fresh:
                if header.hash in counts:
                    self.learn(header, at, counts[header.hash], None)

    async def _headers_after(self, node: Node, known: dict[bytes, int]) -> tuple[list[BlockHeader], int | None]:
        """``node``'s active-chain headers after the first of ``known`` it has, and that block's height
        (None when it shares none of them)."""
        _, (reply,) = await self.ask(wire.encode("get_headers", locator=list(known)), on=node)
        headers = [BlockHeader.parse(raw) for raw in reply["headers"]]
        return headers, known.get(headers[0].prev_hash) if headers else None

    def miner_of(self, coinbase: Transaction) -> str | None:
        """The node whose payout key the coinbase pays first, if a node's status says so."""
        paid = coinbase.outputs[0].pubkey.hex() if coinbase.outputs else ""
        return next((n.name for n in self.nodes if n.status is not None and n.status.get("payout") == paid), None)

    def learn(self, header: BlockHeader, height: int, tx_count: int, by: str | None) -> None:
        """A block new to the tree: kept, and announced as a ``block`` event; ``by``: the node whose gossip
        announced it first (None for a block fetched, whose announcement the explorer did not see)."""
        block = TreeBlock(header.hash, height, header.prev_hash, by, time.time(), header.time, tx_count)
        if self.tree.add(block):
            self.hub.publish("block", {"hash": display(block.hash), "height": height, "prev": display(block.prev),
                                       "node": by, "time": block.time, "tx_count": tx_count})

    # -- the trackers' members --

    async def _watch_trackers(self) -> None:
        """Ask the trackers for their members every few seconds; new members' nodes are watched too."""
        loop = asyncio.get_running_loop()
        ask = functools.partial(request_members, self.trackers, timeout_s=TRACKER_TIMEOUT_S)
        while True:
            try:
                self.members = await loop.run_in_executor(None, ask)
            except TrackerUnavailable as exc:
                logger.warning("trackers unavailable", error=str(exc))
            else:
                self._update_members(self.members)
            await asyncio.sleep(TRACKER_INTERVAL_S)

    def _update_members(self, members: list[MemberInfo]) -> None:
        known = {n.endpoint for n in self.nodes} | {n.name for n in self.nodes}
        for member in members:
            if member.api in known or member.node_id in known:
                continue
            try:
                node = Node(member.api, NodeLink(self.context, member.api), from_tracker=True, name=member.node_id)
            except BadEndpoint as exc:
                logger.warning("member with a bad api endpoint", node=member.node_id, error=str(exc))
                continue
            self.nodes.append(node)
            node.watch_task = asyncio.create_task(self._watch(node))
        current = {m.api for m in members}
        for node in [n for n in self.nodes if n.from_tracker and not n.up and n.endpoint not in current]:
            self.nodes.remove(node)  # it left the cluster
            task = asyncio.create_task(self._forget(node))
            self._background.add(task)  # (the loop keeps only weak references to tasks)
            task.add_done_callback(self._background.discard)

    async def _forget(self, node: Node) -> None:
        """Stop watching ``node`` and close its sockets (once its tasks have ended)."""
        if node.watch_task is not None:
            node.watch_task.cancel()
            await asyncio.gather(node.watch_task, return_exceptions=True)
        await self.gossip.unsubscribe(node)
        node.link.close()


def unpack_block(raw: bytes) -> tuple[BlockHeader, list[bytes]]:
    """The header and the encoded transactions of an encoded block, without parsing every transaction
    (the explorer shows blocks its nodes have checked)."""
    try:
        header_raw, txs = msgpack.unpackb(raw)
        if type(txs) is not list or not txs or not all(type(tx) is bytes for tx in txs):
            raise ValueError("transactions must be a non-empty list of byte strings")
        return BlockHeader.parse(header_raw), txs
    except (ValueError, TypeError, DecodeError) as exc:
        raise DecodeError(f"not a block: {exc}") from None
    except Exception as exc:  # msgpack raises many types on hostile bytes
        raise DecodeError(f"not a block: malformed ({type(exc).__name__})") from None
