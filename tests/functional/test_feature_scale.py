"""Scale: eight miners on one machine converge on one chain, and a ninth joining late syncs it.

Real mining on the ``local`` network by two of the eight (``--workers 1``);
the others validate and relay only, so that nine node processes and two
workers share two cores without starving.
"""

from __future__ import annotations

import pytest

from framework import active_chain, premine_coin, spend_coin, sync_blocks, sync_mempools, wait_connected
from framework import cluster  # noqa: F401  (a fixture: tests take it by name)
from support.waiting import wait_until

MINING = ["miner1", "miner2"]
RELAYING = [f"relay{i}" for i in range(3, 9)]


@pytest.mark.slow
def test_eight_miners_converge_on_one_chain_and_a_ninth_joining_late_syncs_it(cluster):
    cluster.add_tracker()
    nodes = [cluster.add_miner(name, mine=name in MINING, wait=False) for name in MINING + RELAYING]
    nodes = [n.wait_started() for n in nodes]
    wait_connected(nodes, timeout=60)  # a full mesh: each node has the seven others as peers
    height, _ = sync_blocks(nodes, min_height=2, timeout=90)

    # A transaction pushed to one relay reaches all eight mempools (or a block) before being confirmed everywhere.
    tx = spend_coin(premine_coin(nodes[0].params, 0), nodes[0].params, to_account=1)
    assert nodes[-1].push_tx(tx)["accepted"]
    wait_until(lambda: all(n.tx_state(tx.txid)[0] in ("mempool", "confirmed") for n in nodes), 20,
               "the transaction relayed to every node")
    wait_until(lambda: all(n.tx_state(tx.txid)[0] == "confirmed" for n in nodes), 60, "the transaction confirmed")

    late = cluster.add_miner("late", mine=False)
    nodes.append(late)
    wait_connected(nodes, timeout=60)
    target = max(n.height for n in nodes[:-1])
    tip_height, tip = sync_blocks(nodes, min_height=target, timeout=60)
    wait_until(lambda: late.status()["synced"], 30, "the late node to call itself synced")
    # It holds the same chain block for block, and knows the transaction.
    assert [b.hash for b in active_chain(late, up_to=tip_height)] == \
        [b.hash for b in active_chain(nodes[0], up_to=tip_height)]
    assert late.tx_state(tx.txid)[0] == "confirmed"
    # Mempools agree too (a transaction pushed to the late node is relayed to the eight).
    later = spend_coin(premine_coin(late.params, 1), late.params, to_account=2)
    assert late.push_tx(later)["accepted"]
    wait_until(lambda: all(n.tx_state(later.txid)[0] in ("mempool", "confirmed") for n in nodes), 20,
               "the late node's transaction relayed to all")
    sync_mempools(nodes, timeout=30)
