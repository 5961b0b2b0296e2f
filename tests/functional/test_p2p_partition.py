"""Partition and heal: two halves mine apart, then agree on one chain and lose no transaction.

On ``regtest``: one miner of each half mines on demand (``--mining
on-demand``, blocks made with ``zcoin generate``'s request), the other relays
only.  The second half mines one block more than the first, so its chain has
the most work; the test checks from the final chain that it won, and the
promises for the loser.
"""

from __future__ import annotations

from framework import (assert_confirmed_once_everywhere, disconnect, logged, premine_coin, reconnect, spend_coin,
                       sync_blocks, sync_mempools, wait_connected)
from framework import cluster  # noqa: F401  (a fixture: tests take it by name)
from support.waiting import wait_until

BLOCKS_APART = (2, 3)  # blocks each half mines apart: the second half's chain wins


def test_halves_mining_apart_heal_to_one_tip_and_the_losing_half_transactions_come_back(cluster):
    cluster.add_tracker()
    nodes = [cluster.add_miner(name, network_name="regtest", mine=mine, extra=("--mining", "on-demand"), wait=False)
             for name, mine in (("alpha", True), ("bravo", False), ("charlie", True), ("delta", False))]
    alpha, bravo, charlie, delta = [n.wait_started() for n in nodes]
    halves = ([alpha, bravo], [charlie, delta])
    wait_connected(nodes)
    split_height, _ = sync_blocks(nodes)

    for here in halves[0]:
        for there in halves[1]:
            disconnect(here, there)
    wait_until(lambda: all(n.status()["peers"] == 1 for n in nodes), 10, "two halves")

    # Each half confirms transactions of its own (pushed to its relay-only node) and mines ahead.
    params = alpha.params
    txs = {0: [spend_coin(premine_coin(params, a), params, to_account=9) for a in (0, 1)],
           1: [spend_coin(premine_coin(params, a), params, to_account=9) for a in (2, 3)]}
    for side, (_, relay) in enumerate(halves):
        for tx in txs[side]:
            assert relay.push_tx(tx)["accepted"]
    for side, (miner, _) in enumerate(halves):
        assert sync_mempools(halves[side]) == {tx.txid for tx in txs[side]}
        miner.generate(BLOCKS_APART[side])
    for side, half in enumerate(halves):
        wait_until(lambda half=half, side=side: all(n.tx_state(tx.txid)[0] == "confirmed"
                                                    for n in half for tx in txs[side]), 60,
                   f"half {side} confirming its transactions")
    tips = [sync_blocks(half, min_height=split_height + BLOCKS_APART[side], timeout=60)[1]
            for side, half in enumerate(halves)]
    assert tips[0] != tips[1]
    # Nothing crossed the cut.
    for side, half in enumerate(halves):
        for tx in txs[1 - side]:
            assert all(n.tx_state(tx.txid)[0] == "unknown" for n in half), f"{tx.txid_hex} crossed the partition"

    for here in halves[0]:
        for there in halves[1]:
            reconnect(here, there)
    sync_blocks(nodes, timeout=20)
    on_final_chain = []
    for tip in tips:
        found = alpha.block_by_hash(tip)
        on_final_chain.append(found is not None and alpha.block_at(found[1]).hash == tip)
    assert on_final_chain == [False, True], f"the longer half's chain alone should survive: {on_final_chain}"
    loser = on_final_chain.index(False)
    # The losing half reorganised, and its transactions are back in play everywhere, then mined again.
    assert all(logged(n, "reorg") for n in halves[loser]), "the losing half did not log a reorg"
    wait_until(lambda: all(n.tx_state(tx.txid)[0] == "mempool" for n in nodes for tx in txs[loser]),
               20, "the losing half's transactions back in every mempool")
    halves[loser][0].generate()
    assert_confirmed_once_everywhere(nodes, [tx.txid for side in txs.values() for tx in side], timeout=60)
