"""Helpers for node tests: waiting on conditions, in-process clusters, making blocks from outside.

Nodes here are real :class:`zcoin.node.Node` objects, each in a thread of its
own with its own sockets and SQLite file, talking over real ZeroMQ sockets on
ephemeral loopback ports, joined through a real tracker.  Tests drive them only
through their api socket (as a client or a peer would), never by reaching
into their state from another thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from zcoin.client import NodeClient
from zcoin.consensus.builders import new_template, sign_transaction, solve
from zcoin.consensus.params import REGTEST, ChainParams, dev_secret_key
from zcoin.consensus.primitives import Block, OutPoint, Transaction, TxOut
from zcoin.node import Node, NodeConfig
from zcoin.tracker import TrackerServer

POLL_S = 0.02


def wait_until(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition",
               interval: float = POLL_S) -> object:
    """Poll ``predicate`` every ``interval`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Cluster:
    """A tracker and in-process nodes on regtest, with a client per node."""

    def __init__(self, tmp_path: Path, params: ChainParams = REGTEST) -> None:
        self.tmp_path = tmp_path
        self.params = params
        self.tracker = TrackerServer("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", lease_s=3.0).start()
        self.nodes: dict[str, Node] = {}
        self.clients: dict[str, NodeClient] = {}

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
        return self.clients[name].request("status").fields

    def tip(self, name: str) -> tuple[int, bytes]:
        reply = self.clients[name].request("get_tip")
        return reply["height"], reply["hash"]

    def wait_connected(self, timeout: float = 15.0) -> None:
        expected = len(self.nodes) - 1
        wait_until(lambda: all(self.status(n)["peers"] == expected for n in self.nodes), timeout,
                   f"every node to have {expected} peers")

    def wait_same_tip(self, names=None, timeout: float = 20.0) -> tuple[int, bytes]:
        names = list(names or self.nodes)
        wait_until(lambda: len({self.tip(n) for n in names}) == 1, timeout, f"one tip on {names}")
        return self.tip(names[0])

    def mempool(self, name: str) -> set[bytes]:
        return set(self.clients[name].request("get_mempool")["txids"])

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
        for node in self.nodes.values():
            node.stop()
        for node in self.nodes.values():
            thread = getattr(node, "thread", None)
            if thread is not None:
                thread.join(10)
        self.tracker.stop()


def make_block(client: NodeClient, params: ChainParams = REGTEST, txs: list[Transaction] = (), fees: int = 0,
               payout: bytes | None = None, tag: bytes = b"") -> Block:
    """A valid regtest block on the node's current tip (regtest never retargets)."""
    tip = client.request("get_tip")
    parent = Block.parse(client.request("get_block", hash=tip["hash"])["block"])
    template = new_template(params, tip["hash"], tip["height"] + 1, params.genesis_bits,
                            parent.header.time + 1, payout or params.dev_pubkey(9), list(txs), fees)
    template.extra_nonce = tag
    return solve(template)


def submit(client: NodeClient, block: Block) -> dict:
    reply = client.request("submit_block", block=block.raw).fields
    assert reply["accepted"], reply
    return reply


def premine_spend(index: int, params: ChainParams = REGTEST, amount: int | None = None, fee: int = 1000,
                  to: int | None = None) -> Transaction:
    """A transaction spending development account ``index``'s premine output."""
    genesis_tx = params.genesis.txs[0]
    value = genesis_tx.outputs[index].amount
    pay = amount if amount is not None else value - fee
    outputs = [TxOut(pay, params.dev_pubkey(to if to is not None else index))]
    if value - pay - fee > 0:
        outputs.append(TxOut(value - pay - fee, params.dev_pubkey(index)))
    return sign_transaction([(OutPoint(genesis_tx.txid, index), dev_secret_key(index))], outputs)
