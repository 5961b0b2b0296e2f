"""The in-memory driver: many node cores in one process, a virtual network, a virtual clock.

No sockets and no real seconds: every message a core sends is a delivery on one
queue ordered by virtual time, and :meth:`VirtualNetwork.run_until` advances the
clock from one delivery or timer turn to the next, so a minute of protocol runs in
milliseconds and the same run gives the same result every time.  Each link (from
one node to another, per direction) has a :class:`Link` with a latency and a loss
hook; tests of download, stalls and relay set them to lose or delay what they
like.  The membership is the network itself: every node on it is a member.

Nodes are real :class:`zcoin.nodecore.NodeCore` objects with real SQLite stores
(the chain store is not the network); :class:`ScriptedPeer` is a member driven by
a test's own function (a withholder, a liar, a slow peer).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zcoin import wire
from zcoin.config import NodeConfig
from zcoin.nodecore import NodeCore
from zcoin.tracker.protocol import MemberInfo

TICK_S = 0.1  # timer turns of every node, as the ZeroMQ driver's poll timeout
EPOCH_S = 1_790_000_000.0  # what time() reads at virtual second 0 (after every genesis)


class VirtualClock:
    """A clock that moves only when the network says so."""

    def __init__(self, start_s: float = 0.0, epoch_s: float = EPOCH_S) -> None:
        self.now = start_s
        self.epoch_s = epoch_s

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.epoch_s + self.now


@dataclass(slots=True)
class Link:
    """One direction between two members: every message waits ``latency_s`` and is lost when
    ``lose(kind, payload)`` says so (kind: "request", "reply" or "gossip")."""

    latency_s: float = 0.0
    loss: float = 0.0  # probability of losing any message, drawn from the network's seeded random
    lose: Callable[[str, bytes], bool] | None = None
    delivered: int = 0
    lost: int = 0


@dataclass(order=True, slots=True)
class _Delivery:
    at: float
    order: int
    action: Callable[[], None] = field(compare=False)


class _MemoryTransport:
    """A core's transport on the virtual network (reset drops what is queued for a peer)."""

    def __init__(self, network: VirtualNetwork, name: str) -> None:
        self.network = network
        self.name = name
        self.generation: dict[str, int] = {}  # peer -> generation of the link to its api

    def connect(self, info: MemberInfo) -> None:
        self.generation[info.node_id] = self.generation.get(info.node_id, 0) + 1
        self.network.subscribe(self.name, info.node_id)

    def disconnect(self, name: str) -> None:
        self.generation[name] = self.generation.get(name, 0) + 1
        self.network.unsubscribe(self.name, name)

    def reset(self, name: str) -> None:
        self.generation[name] = self.generation.get(name, 0) + 1

    def current(self, peer: str, generation: int) -> bool:
        return self.generation.get(peer) == generation and self.network.subscribed(self.name, peer)

    def send(self, name: str, request_id: int, payload: bytes) -> None:
        route = (self.name, request_id, self.generation.get(name, 0))
        self.network.deliver(self.name, name, "request", payload,
                             lambda target: target.on_request(self.name, route, payload))

    def publish(self, topic: bytes, payload: bytes) -> None:
        if not topic.startswith(wire.PEER_TOPICS):  # what members do not subscribe to (as a SUB filters)
            return
        for subscriber in self.network.subscribers(self.name):
            self.network.deliver(self.name, subscriber, "gossip", payload,
                                 lambda target: target.on_gossip(self.name, topic, payload))

    def reply(self, route: Any, payload: bytes) -> None:
        if callable(route):  # a client of the network (VirtualNetwork.request)
            route(payload)
            return
        client, request_id, generation = route
        self.network.deliver(self.name, client, "reply", payload,
                             lambda target: target.on_reply_from(self.name, request_id, generation, payload))


class MemoryNode:
    """A node core on the virtual network."""

    def __init__(self, network: VirtualNetwork, config: NodeConfig) -> None:
        self.network = network
        self.config = config
        self.name = config.name
        self.transport = _MemoryTransport(network, config.name)
        self.core = NodeCore(config, self.transport, network.clock, membership=network.membership_of(config.name),
                             epoch=network.random.getrandbits(62))
        self.core.endpoints = {"api": f"mem://{self.name}/api", "gossip": f"mem://{self.name}/gossip"}
        self.core.open()

    def on_request(self, sender: str, route: Any, payload: bytes) -> None:
        self.core.on_api(sender.encode(), route, payload)

    def on_reply_from(self, peer: str, request_id: int, generation: int, payload: bytes) -> None:
        if self.transport.current(peer, generation):
            self.core.on_reply(peer, request_id, payload)

    def on_gossip(self, peer: str, topic: bytes, payload: bytes) -> None:
        self.core.on_gossip(peer, topic, payload)

    def turn(self) -> None:
        self.core.on_timer()
        self.core.flush()

    def close(self) -> None:
        self.core.close()


class ScriptedPeer:
    """A member whose answers a test writes: ``answer(peer name, message) -> reply payload or None``."""

    def __init__(self, network: VirtualNetwork, name: str,
                 answer: Callable[[str, wire.Message], bytes | None]) -> None:
        self.network = network
        self.name = name
        self.answer = answer
        self.seq = 0
        self.requests: list[tuple[str, wire.Message]] = []

    def on_request(self, sender: str, route: Any, payload: bytes) -> None:
        msg = wire.decode(payload)
        self.requests.append((sender, msg))
        reply = self.answer(sender, msg)
        if reply is not None:
            client, request_id, generation = route
            self.network.deliver(self.name, client, "reply", reply,
                                 lambda target: target.on_reply_from(self.name, request_id, generation, reply))

    def asked(self, msg_type: str) -> list[wire.Message]:
        return [msg for _, msg in self.requests if msg.type == msg_type]

    def gossip(self, topic: bytes, msg_type: str, **fields) -> None:
        self.seq += 1
        payload = wire.encode(msg_type, seq=self.seq, **fields)
        for subscriber in self.network.subscribers(self.name):
            self.network.deliver(self.name, subscriber, "gossip", payload,
                                 lambda target: target.on_gossip(self.name, topic, payload))

    def on_reply_from(self, *args) -> None:  # it sends no requests
        pass

    def on_gossip(self, *args) -> None:
        pass

    def turn(self) -> None:
        pass

    def close(self) -> None:
        pass


class _NetworkMembership:
    """Every member of the network but the node itself."""

    state = "member"

    def __init__(self, network: VirtualNetwork, name: str) -> None:
        self.network = network
        self.name = name

    def members(self) -> dict[str, MemberInfo]:
        return {n: self.network.info(n) for n in self.network.members if n != self.name}


class VirtualNetwork:
    """Members, links between them, one delivery queue and one clock (see the module docstring)."""

    def __init__(self, seed: int = 0) -> None:
        self.clock = VirtualClock()
        self.random = random.Random(seed)
        self.members: dict[str, MemoryNode | ScriptedPeer] = {}
        self.links: dict[tuple[str, str], Link] = {}
        self._subscriptions: dict[str, set[str]] = {}  # publisher -> subscribers
        self._queue: list[_Delivery] = []
        self._order = itertools.count()
        self._next_turn = 0.0

    # -- members --

    def add_node(self, config: NodeConfig) -> NodeCore:
        """Start a node core on the network; every member learns of it at its next turn."""
        node = MemoryNode(self, config)
        self._join(node)
        return node.core

    def add_scripted(self, name: str, answer: Callable[[str, wire.Message], bytes | None]) -> ScriptedPeer:
        peer = ScriptedPeer(self, name, answer)
        self._join(peer)
        return peer

    def _join(self, member: MemoryNode | ScriptedPeer) -> None:
        self.members[member.name] = member
        for other in self.members.values():
            if isinstance(other, MemoryNode):
                other.core.on_members()

    def remove(self, name: str) -> None:
        """Stop a member (its core closes its store); the others drop it."""
        member = self.members.pop(name)
        member.close()
        self._subscriptions.pop(name, None)
        for subscribers in self._subscriptions.values():
            subscribers.discard(name)
        for other in self.members.values():
            if isinstance(other, MemoryNode):
                other.core.on_members()

    def restart(self, name: str, *, unnoticed: bool = False) -> NodeCore:
        """Stop a node and start it again on the same store.

        ``unnoticed``: its peers never see it leave (as when a killed miner is back before its
        tracker lease runs out): they keep it as a peer and only its new epoch tells them.
        """
        if not unnoticed:
            config = self.members[name].config
            self.remove(name)
            return self.add_node(config)
        old = self.members[name]
        old.close()
        for publisher, subscribers in self._subscriptions.items():
            subscribers.discard(name)  # its own subscriptions die with it; those to it live on
        node = MemoryNode(self, old.config)
        self.members[name] = node
        node.core.on_members()
        return node.core

    def core(self, name: str) -> NodeCore:
        return self.members[name].core

    def info(self, name: str) -> MemberInfo:
        return MemberInfo(name, f"mem://{name}/gossip", f"mem://{name}/api")

    def membership_of(self, name: str) -> _NetworkMembership:
        return _NetworkMembership(self, name)

    # -- links and deliveries --

    def link(self, sender: str, receiver: str) -> Link:
        return self.links.setdefault((sender, receiver), Link())

    def subscribe(self, subscriber: str, publisher: str) -> None:
        self._subscriptions.setdefault(publisher, set()).add(subscriber)

    def unsubscribe(self, subscriber: str, publisher: str) -> None:
        self._subscriptions.get(publisher, set()).discard(subscriber)

    def subscribed(self, subscriber: str, publisher: str) -> bool:
        return subscriber in self._subscriptions.get(publisher, ())

    def subscribers(self, publisher: str) -> list[str]:
        return sorted(self._subscriptions.get(publisher, ()))

    def deliver(self, sender: str, receiver: str, kind: str, payload: bytes,
                action: Callable[[MemoryNode | ScriptedPeer], None]) -> None:
        """Queue ``action`` for ``receiver`` after the link's latency, unless the link loses it."""
        link = self.link(sender, receiver)
        if (link.loss and self.random.random() < link.loss) or (link.lose is not None and link.lose(kind, payload)):
            link.lost += 1
            return
        link.delivered += 1

        def arrive() -> None:
            target = self.members.get(receiver)
            if target is not None:
                action(target)

        heapq.heappush(self._queue, _Delivery(self.clock.now + link.latency_s, next(self._order), arrive))

    # -- running --

    def request(self, name: str, msg_type: str, **fields) -> wire.Message:
        """Ask node ``name``'s api directly, as a client on its machine would; the reply comes at once."""
        replies: list[bytes] = []
        core = self.core(name)
        core.on_api(b"client", replies.append, wire.encode(msg_type, **fields))
        core.flush()
        return wire.decode(replies[0])

    def step(self) -> None:
        """Advance to the next delivery or timer turn and run everything due then."""
        next_at = min(self._queue[0].at, self._next_turn) if self._queue else self._next_turn
        self.clock.now = max(self.clock.now, next_at)
        while self._queue and self._queue[0].at <= self.clock.now:
            heapq.heappop(self._queue).action()
        if self.clock.now >= self._next_turn:
            self._next_turn = self.clock.now + TICK_S
            for member in list(self.members.values()):
                member.turn()
        else:
            for member in list(self.members.values()):
                if isinstance(member, MemoryNode):
                    member.core.flush()

    def run_until(self, condition: Callable[[], object], timeout_s: float = 60.0, what: str = "condition") -> object:
        """Step until ``condition()`` is truthy; fail after ``timeout_s`` virtual seconds."""
        deadline = self.clock.now + timeout_s
        while True:
            value = condition()
            if value:
                return value
            if self.clock.now > deadline:
                raise AssertionError(f"timed out after {timeout_s} virtual seconds waiting for {what}")
            self.step()

    def run_for(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.step()

    def close(self) -> None:
        for name in list(self.members):
            self.remove(name)
