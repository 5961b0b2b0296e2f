"""A hostile peer: a cluster member that speaks the wire protocol with crafted messages.

It joins the cluster's trackers through :class:`zcoin.tracker.agent.MembershipAgent`
like a miner, so the honest nodes connect a SUB to its PUB and a DEALER to its
ROUTER.  It gossips whatever the test makes it send, well-formed or not, and
answers the honest nodes' requests only when the test reads them (from its
ROUTER, :attr:`HostilePeer.api`, directly or through
:meth:`HostilePeer.answer_requests`), always from the test's thread: sockets
never cross threads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import msgpack
import zmq

from zcoin import wire
from zcoin.consensus.primitives import Block, Transaction
from zcoin.sockets import Envelope
from zcoin.tracker.agent import MembershipAgent
from zcoin.tracker.protocol import MemberInfo

LOOPBACK_ANY = "tcp://127.0.0.1:*"
HEARTBEAT_S = 0.5


class HasTrackers(Protocol):
    """A cluster of either kind (in-process or real processes): what a hostile peer joins."""

    @property
    def tracker_endpoints(self) -> Sequence[str]: ...


class HostilePeer:
    """A member of ``cluster`` named ``name`` with its own PUB (gossip) and ROUTER (requests)."""

    def __init__(self, cluster: HasTrackers, name: str = "mallory") -> None:
        ctx = zmq.Context.instance()
        self.name = name
        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind(LOOPBACK_ANY)
        self.api = ctx.socket(zmq.ROUTER)
        self.api.setsockopt(zmq.LINGER, 0)
        self.api.bind(LOOPBACK_ANY)
        me = MemberInfo(name, self.pub.getsockopt_string(zmq.LAST_ENDPOINT),
                        self.api.getsockopt_string(zmq.LAST_ENDPOINT))
        self.agent = MembershipAgent(list(cluster.tracker_endpoints), me, context=ctx, heartbeat_s=HEARTBEAT_S)
        self.agent.start()
        self.seq = 0
        self.requests: list[str] = []  # types of the requests answer_requests saw, in order

    # -- gossip --

    def gossip(self, topic: bytes, payload: bytes) -> None:
        """Publish ``payload`` under ``topic``, framed as a node frames gossip (whatever the payload)."""
        self.pub.send(Envelope.gossip(topic, payload))

    def gossip_frames(self, *frames: bytes) -> None:
        """Publish raw frames (a well-formed gossip message is one frame)."""
        self.pub.send_multipart(list(frames))

    def next_seq(self) -> int:
        """The next gossip sequence number."""
        self.seq += 1
        return self.seq

    def gossip_block(self, block: Block | bytes) -> None:
        """Publish a ``gossip_block`` carrying ``block`` (or raw bytes claiming to be one)."""
        raw = block.raw if isinstance(block, Block) else block
        self.gossip(b"block", wire.encode("gossip_block", seq=self.next_seq(), block=raw))

    def gossip_tx(self, tx: Transaction | bytes) -> None:
        """Publish a ``gossip_tx`` carrying ``tx`` (or raw bytes claiming to be one)."""
        raw = tx.raw if isinstance(tx, Transaction) else tx
        self.gossip(b"tx", wire.encode("gossip_tx", seq=self.next_seq(), tx=raw))

    @staticmethod
    def envelope(msg_type: str, version: int = wire.PROTOCOL_VERSION, **fields) -> bytes:
        """A message map packed without the schema check (any version, any fields)."""
        return msgpack.packb({"v": version, "t": msg_type, **fields}, use_bin_type=True)

    # -- requests --

    def answer_requests(self, handler: Callable[[wire.Message], bytes | None]) -> int:
        """Read the requests waiting on the api; reply with ``handler(msg)`` unless it returns None.

        Returns how many requests were read (undecodable ones included, and never answered).
        """
        count = 0
        while True:
            try:
                identity, *rest = self.api.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return count
            count += 1
            try:
                msg = wire.decode(rest[-1])
            except wire.WireError:
                continue
            self.requests.append(msg.type)
            reply = handler(msg)
            if reply is not None:
                self.api.send_multipart([identity, *rest[:-1], reply])

    def close(self) -> None:
        """Leave the trackers and close both sockets."""
        self.agent.stop()
        self.pub.close(0)
        self.api.close(0)

    def __repr__(self) -> str:
        return f"HostilePeer({self.name})"
