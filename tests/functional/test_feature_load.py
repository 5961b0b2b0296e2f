"""Load: three mining miners take a steady stream of transactions and confirm each exactly once.

Real mining on the ``local`` network (``--workers 1``): block production is not
under the test's control here, which is the point - transactions arrive while
blocks are found, relayed and raced by three miners.
"""

from __future__ import annotations

import pytest

from framework import TxPusher, assert_confirmed_once_everywhere, fund_load, sync_blocks, wait_connected
from framework import cluster  # noqa: F401  (a fixture: tests take it by name)
from support.waiting import wait_until

LOAD_SECONDS = 3.0  # at least; the load goes on until two blocks are found
RATE_PER_NODE = 25.0
COIN_MARGIN = 3  # coins for three times LOAD_SECONDS: blocks come every second or two, not on time


@pytest.mark.slow
def test_every_transaction_accepted_under_load_is_confirmed_exactly_once_on_one_chain(cluster):
    cluster.add_tracker()
    nodes = cluster.add_miners(["alpha", "bravo", "charlie"])
    wait_connected(nodes)
    coins = fund_load(nodes, accounts=[0, 1, 2], outputs=int(RATE_PER_NODE * LOAD_SECONDS * COIN_MARGIN))
    start_height, _ = sync_blocks(nodes)

    pusher = TxPusher(nodes, coins, rate_per_node=RATE_PER_NODE)
    cluster.closables.append(pusher)
    pusher.start()
    wait_until(lambda: all(len(pusher.logs[n.name].accepted) >= RATE_PER_NODE * LOAD_SECONDS for n in nodes)
               and min(n.height for n in nodes) >= start_height + 2, 60,
               f"{RATE_PER_NODE * LOAD_SECONDS:.0f} transactions accepted by each node and two blocks found")
    pusher.stop()

    accepted = pusher.accepted()
    summary = pusher.summary()
    # Every push got an answer, and nothing was refused: the coins are independent and valid.
    assert all(s["unanswered"] == 0 and s["rejected"] == 0 for s in summary.values()), summary
    chain = assert_confirmed_once_everywhere(nodes, accepted, timeout=90)
    # Transactions were confirmed by more than one block, i.e. mined while the load went on.
    heights = {h for h, block in enumerate(chain) if any(tx.txid in accepted for tx in block.txs[1:])}
    assert len(heights) >= 2, f"all load transactions in one block: {sorted(heights)}"
    # Nothing left behind: every mempool is empty once the load is confirmed.
    wait_until(lambda: all(not n.mempool() for n in nodes), 30, "empty mempools")
