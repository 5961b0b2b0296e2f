"""The ZeroMQ driver of a miner: what ``zcoin miner`` runs around a :class:`NodeCore`.

One thread's ``zmq.Poller`` loop (sockets never cross threads) turns socket
traffic into the core's events and the core's actions into frames:

- ``api`` (ROUTER): requests from peers' DEALERs and from clients;
- ``gossip`` (PUB): the node's ``tx`` and ``block`` announcements;
- per peer, a DEALER on its api and a SUB on its gossip, so whatever arrives is
  known to come from that peer (penalties cannot be dodged by lying about a name);
- the membership agent's wake-up socket (its own thread talks to the trackers)
  and the mining pool's result pipe.

Each turn drains what is ready, runs the core's timers, then :meth:`NodeCore.flush`
writes accepted transactions and only then sends the replies acknowledging them.
Everything the node decides lives in the core; this module only moves frames
(framing by :class:`zcoin.sockets.Envelope`, options by :func:`zcoin.sockets.open_socket`).
"""

from __future__ import annotations

import gc
import ipaddress
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import zmq
from loguru import logger

from zcoin.config import NodeConfig
from zcoin.nodecore import NodeCore
from zcoin.sockets import Envelope, EnvelopeError, drain, last_endpoint, open_socket
from zcoin.tracker.agent import MembershipAgent
from zcoin.tracker.protocol import MemberInfo
from zcoin.wire import PEER_TOPICS

POLL_S = 0.1  # the longest a turn waits for input before timers run
PUB_LINGER_MS = 500  # announcements still queued at shutdown get this long to leave

__all__ = ["Node", "NodeConfig", "StartError", "SystemClock", "is_loopback_endpoint"]


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


class StartError(RuntimeError):
    """The node could not open its sockets (an endpoint in use or malformed), or a tracker refused its
    name for good: one line for the user."""


class SystemClock:
    """The real clocks, for the core."""

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


@dataclass(slots=True)
class _PeerLinks:
    info: MemberInfo
    dealer: zmq.Socket
    sub: zmq.Socket


class ZmqTransport:
    """The core's :class:`zcoin.nodecore.Transport` over ZeroMQ sockets, registered on one poller."""

    def __init__(self, context: zmq.Context, poller: zmq.Poller, api: zmq.Socket, pub: zmq.Socket) -> None:
        self.context = context
        self.poller = poller
        self.api = api
        self.pub = pub
        self.links: dict[str, _PeerLinks] = {}
        self.owner: dict[zmq.Socket, tuple[str, bool]] = {}  # socket -> (peer, is its DEALER)

    def connect(self, info: MemberInfo) -> None:
        sub = open_socket(self.context, zmq.SUB, subscribe=PEER_TOPICS)
        sub.connect(info.gossip)
        self.links[info.node_id] = _PeerLinks(info, self._dealer(info), sub)
        self._watch(sub, info.node_id, False)

    def _dealer(self, info: MemberInfo) -> zmq.Socket:
        dealer = open_socket(self.context, zmq.DEALER)
        dealer.connect(info.api)
        self._watch(dealer, info.node_id, True)
        return dealer

    def _watch(self, sock: zmq.Socket, name: str, is_dealer: bool) -> None:
        self.owner[sock] = (name, is_dealer)
        self.poller.register(sock, zmq.POLLIN)

    def _close(self, sock: zmq.Socket) -> None:
        if not sock.closed:
            self.poller.unregister(sock)
            self.owner.pop(sock, None)
            sock.close(linger=0)

    def disconnect(self, name: str) -> None:
        links = self.links.pop(name, None)
        if links is not None:
            self._close(links.dealer)
            self._close(links.sub)

    def reset(self, name: str) -> None:
        links = self.links.get(name)
        if links is not None:
            self._close(links.dealer)
            links.dealer = self._dealer(links.info)

    def send(self, name: str, request_id: int, payload: bytes) -> None:
        self.links[name].dealer.send_multipart(Envelope.request(request_id, payload))

    def publish(self, topic: bytes, payload: bytes) -> None:
        self.pub.send(Envelope.gossip(topic, payload))

    def reply(self, route, payload: bytes) -> None:
        self.api.send_multipart(Envelope.reply(route, payload))

    def close(self) -> None:
        for name in list(self.links):
            self.disconnect(name)


class Node:
    """A miner: a :class:`NodeCore` driven by ZeroMQ sockets.  :meth:`start`, then :meth:`run`."""

    def __init__(self, config: NodeConfig, *, context: zmq.Context | None = None) -> None:
        self.config = config
        self.name = config.name
        self.context = context or zmq.Context.instance()
        self.log = logger.bind(node=config.name)
        self.core: NodeCore | None = None
        self.transport: ZmqTransport | None = None
        self.agent: MembershipAgent | None = None
        self.pool = None  # zcoin.mining.MiningPool when mining
        self.notify: zmq.Socket | None = None
        self.api_endpoint = self.gossip_endpoint = ""
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        # The process's own node (``zcoin miner``) sets this: see :meth:`_freeze_long_lived`.
        self.freeze_gc = False
        self._gc_frozen_at_sync = False

    def start(self) -> None:
        """Open the store, bind the sockets, join the trackers, start the mining pool."""
        self.poller = zmq.Poller()
        api = open_socket(self.context, zmq.ROUTER)
        api.setsockopt(zmq.ROUTER_MANDATORY, 0)
        pub = open_socket(self.context, zmq.PUB, linger_ms=PUB_LINGER_MS, max_bytes=0)
        self.transport = ZmqTransport(self.context, self.poller, api, pub)
        self.core = NodeCore(self.config, self.transport, SystemClock(), epoch=secrets.randbits(62))
        try:
            self.core.open()
        except BaseException:  # a store it cannot open: nothing of the node stays open
            api.close(linger=0)
            pub.close(linger=0)
            raise
        try:
            api.bind(self.config.api)
            pub.bind(self.config.gossip)
        except zmq.ZMQError as exc:
            self.core.close()
            api.close(linger=0)
            pub.close(linger=0)
            raise StartError(f"cannot open sockets: {exc}") from None
        self.api_endpoint, self.gossip_endpoint = last_endpoint(api), last_endpoint(pub)
        self.core.endpoints = {"api": self.api_endpoint, "gossip": self.gossip_endpoint}
        self.core.admin_allowed = is_loopback_endpoint(self.api_endpoint)
        self.poller.register(api, zmq.POLLIN)
        if self.config.trackers:
            notify_endpoint = f"inproc://membership-{id(self)}"
            self.notify = open_socket(self.context, zmq.PULL, hwm=None)
            self.notify.bind(notify_endpoint)
            self.poller.register(self.notify, zmq.POLLIN)
            me = MemberInfo(self.name, self.gossip_endpoint, self.api_endpoint)
            try:
                self.agent = MembershipAgent(list(self.config.trackers), me, context=self.context,
                                             notify_endpoint=notify_endpoint,
                                             join_deadline_s=self.config.join_deadline_s,
                                             heartbeat_s=self.config.heartbeat_s)
            except ValueError as exc:  # an endpoint or name the tracker would refuse for ever
                self.close()
                raise StartError(str(exc)) from None
            self.core.membership = self.agent
            self.agent.start()
        if self.config.mine and self.config.mining.kind != "off" and self.config.payout is not None:
            from zcoin.mining import MiningPool

            self.pool = MiningPool(self.config.workers)
            self.pool.start()
            self.poller.register(self.pool.fileno(), zmq.POLLIN)
            self.core.miner = self.pool
        self._write_endpoints()
        chain = self.core.chain
        self.log.info("node started", api=self.api_endpoint, gossip=self.gossip_endpoint,
                      height=chain.height, tip=chain.tip.hash_hex, network=self.config.params.name)

    def _write_endpoints(self) -> None:
        """Leave the bound endpoints in ``node.json`` so tools can find an ephemeral port."""
        path = self.config.data_dir / "node.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"name": self.name, "api": self.api_endpoint, "gossip": self.gossip_endpoint,
                                   "pid": os.getpid(), "network": self.config.params.name}))
        tmp.replace(path)

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from any thread or a signal handler)."""
        self._stop.set()

    def run(self) -> None:
        """The event loop: until :meth:`stop`, serve sockets and timers.

        Closes the node however it ends; a tracker's final refusal of the name ends it with :class:`StartError`.
        """
        try:
            self._freeze_long_lived()
            while not self._stop.is_set():
                self.run_once(POLL_S)
                if not self._gc_frozen_at_sync and self.core.download.ever_synced:
                    self._gc_frozen_at_sync = True
                    self._freeze_long_lived()
        finally:
            self.close()

    def _freeze_long_lived(self) -> None:
        """Move what the process holds now (modules, the block index, the UTXO cache after a sync) out of
        the cycle collector's sight (``gc.freeze``, Instagram's recipe): its full collections then walk
        only what came since, instead of stalling the loop for tens of ms as the heap grows (the
        propagation benchmark's p99).  Frozen objects are still freed when no longer referenced."""
        if self.freeze_gc:
            gc.collect()
            gc.freeze()

    def run_once(self, timeout_s: float = POLL_S) -> None:
        """One turn: wait for input up to ``timeout_s``, hand it to the core, run its timers, flush."""
        refused = self.agent.refused if self.agent is not None else None
        if refused:  # never go on alone under a name that another member holds
            raise StartError(f"the tracker refused the name {self.name}: {refused}")
        core, transport = self.core, self.transport
        for sock in dict(self.poller.poll(int(timeout_s * 1000))):
            if sock is transport.api:
                drain(sock, self._on_api)
            elif sock is self.notify:
                drain(sock, lambda frames: None)
                core.on_members()
            elif self.pool is not None and sock == self.pool.fileno():
                core.on_mined(self.pool.poll_results())
            elif sock in transport.owner:
                name, is_dealer = transport.owner[sock]
                drain(sock, (lambda f, n=name: self._on_reply(n, f)) if is_dealer
                      else (lambda f, n=name: self._on_gossip(n, f)))
        if self.pool is not None:
            core.on_mined(self.pool.poll_results())  # also lets the pool replace a dead worker
        core.on_timer()
        core.flush()

    def _on_api(self, frames: list[bytes]) -> None:
        try:
            incoming = Envelope.incoming(frames)
        except EnvelopeError as exc:
            if frames:
                self.core.on_bad_request(frames[0], str(exc))
            return
        self.core.on_api(incoming.identity, incoming, incoming.payload)

    def _on_reply(self, name: str, frames: list[bytes]) -> None:
        self.core.on_reply(name, Envelope.reply_id(frames), frames[-1])

    def _on_gossip(self, name: str, frames: list[bytes]) -> None:
        try:
            topic, payload = Envelope.gossip_parts(frames)
        except EnvelopeError as exc:
            self.core.on_bad_gossip(name, str(exc))
            return
        self.core.on_gossip(name, topic, payload)

    def close(self) -> None:
        """Leave the trackers, stop the pool, close the core, then the sockets."""
        if self.agent is not None:
            self.agent.stop()
            self.agent = None
        if self.pool is not None:
            self.pool.stop()
            self.pool = None
            if self.core is not None:
                self.core.miner = None
        if self.core is not None:
            self.core.close()
        if self.transport is not None:
            self.transport.close()
            for sock in (self.transport.api, self.transport.pub):
                sock.close(linger=0)
        if self.notify is not None:
            self.notify.close(linger=0)
        self.log.info("node stopped")

    def start_in_thread(self, timeout_s: float = 10.0) -> threading.Thread:
        """Start and run the node in a thread of its own (for tests: several nodes in one process).

        The thread that starts a node owns its sockets and its SQLite connection, so both
        happen in the new thread; this returns once the node is started.
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
