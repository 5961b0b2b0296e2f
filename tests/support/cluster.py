"""An in-process cluster for node tests, and blocks made from outside a node.

Nodes here are real :class:`zcoin.node.Node` objects, each in a thread of its
own with its own sockets and SQLite file, talking over real ZeroMQ sockets on
ephemeral loopback ports, joined through a real tracker.  Tests drive them only
through their api socket (as a client or a peer would), never by reaching
into their state from another thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from zcoin.client import NodeClient
from zcoin.consensus.builders import new_template, solve
from zcoin.consensus.params import REGTEST, ChainParams
from zcoin.consensus.primitives import Block, Transaction
from zcoin.node import Node, NodeConfig
from zcoin.tracker.server import TrackerServer

from .chain import MINER_PUBKEY
from .waiting import wait_until


class Cluster:
    """A tracker and in-process nodes on regtest, with a client per node."""

    def __init__(self, tmp_path: Path, params: ChainParams = REGTEST) -> None:
        self.tmp_path = tmp_path
        self.params = params
        self.tracker = TrackerServer("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", lease_s=3.0).start()
        self.nodes: dict[str, Node] = {}
        self.clients: dict[str, NodeClient] = {}

    @property
    def tracker_endpoints(self) -> list[str]:
        """Where members join (what a :class:`~support.hostile.HostilePeer` needs)."""
        return [self.tracker.endpoint]

    def add_node(self, name: str, **config) -> Node:
        config.setdefault("mine", False)
        config.setdefault("heartbeat_s", 0.5)
        config.setdefault("tip_interval_s", 0.5)
        config.setdefault("sync_grace_s", 0.5)
        node = Node(NodeConfig(name=name, params=self.params, data_dir=self.tmp_path / name,
                               trackers=(self.tracker.endpoint,), **config))
        node.start_in_thread()
        self.nodes[name] = node
        self.clients[name] = NodeClient(node.api_endpoint, timeout_s=10.0)
        return node

    def restart_node(self, name: str, **config) -> Node:
        """Stop a node (cleanly) and start it again on the same data dir."""
        node = self.nodes.pop(name)
        self.clients.pop(name).close()
        node.stop()
        node.thread.join(10)
        return self.add_node(name, **config)

    def status(self, name: str) -> dict:
        """The ``status`` reply of node ``name``."""
        return self.clients[name].request("status").fields

    def tip(self, name: str) -> tuple[int, bytes]:
        """Height and hash of node ``name``'s tip."""
        reply = self.clients[name].request("get_tip")
        return reply["height"], reply["hash"]

    def wait_connected(self, timeout: float = 15.0) -> None:
        """Wait until every node is connected to every other and synced (before that, it refuses payments)."""
        expected = len(self.nodes) - 1
        wait_until(lambda: all((s := self.status(n))["peers"] == expected and s["synced"] for n in self.nodes),
                   timeout, f"every node to have {expected} peers and be synced")

    def wait_same_tip(self, names=None, timeout: float = 20.0) -> tuple[int, bytes]:
        """Wait until nodes ``names`` (default: all) are on one tip; return it."""
        names = list(names or self.nodes)
        wait_until(lambda: len({self.tip(n) for n in names}) == 1, timeout, f"one tip on {names}")
        return self.tip(names[0])

    def mempool(self, name: str) -> set[bytes]:
        """The txids in node ``name``'s mempool."""
        return set(self.clients[name].request("get_mempool")["txids"])

    def close(self) -> None:
        """Stop every node and the tracker."""
        for client in self.clients.values():
            client.close()
        for node in self.nodes.values():
            node.stop()
        for node in self.nodes.values():
            thread = getattr(node, "thread", None)
            if thread is not None:
                thread.join(10)
        self.tracker.stop()


def make_block(client: NodeClient, params: ChainParams = REGTEST, txs: Iterable[Transaction] = (), fees: int = 0,
               payout: bytes = MINER_PUBKEY, tag: bytes = b"") -> Block:
    """A solved block over ``txs`` on the node's current tip, claiming ``fees`` (regtest never retargets)."""
    tip = client.request("get_tip")
    parent = Block.parse(client.request("get_block", hash=tip["hash"])["block"])
    template = new_template(params, tip["hash"], tip["height"] + 1, params.genesis_bits,
                            parent.header.time + 1, payout, list(txs), fees)
    template.extra_nonce = tag
    return solve(template)


def submit(client: NodeClient, block: Block) -> dict:
    """Hand ``block`` to the node with ``submit_block``; it must be accepted."""
    reply = client.request("submit_block", block=block.raw).fields
    assert reply["accepted"], reply
    return reply


@pytest.fixture
def cluster(tmp_path):
    """An in-process :class:`Cluster` for one test, closed after it (test modules import it by name)."""
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()
