"""Double spend: conflicting transactions pushed at the same moment to two miners; one wins everywhere.

Real mining on the ``local`` network by the two miners that take the
pushes (``--workers 1``), so either spend may be mined first; a third node
only relays and watches.
"""

from __future__ import annotations

from framework import active_chain, confirmed_txids, premine_coin, spend_coin, sync_blocks, wait_connected
from framework import cluster  # noqa: F401  (a fixture: tests take it by name)
from support.waiting import wait_until

ACCOUNTS = (0, 1, 2, 3)
ACCEPTED_OR_CONFLICT = {"txn-mempool-conflict", "bad-txns-inputs-missingorspent"}


def test_conflicting_spends_pushed_at_once_to_two_miners_end_with_exactly_one_confirmed(cluster):
    cluster.add_tracker()
    nodes = [cluster.add_miner(name, mine=mine, wait=False)
             for name, mine in (("alpha", True), ("bravo", True), ("watcher", False))]
    alpha, bravo, watcher = [n.wait_started() for n in nodes]
    wait_connected(nodes)
    sync_blocks(nodes)
    params = alpha.params

    # One pair per account: the same premine output paid to two different accounts.
    pairs = [(spend_coin(premine_coin(params, a), params, to_account=8, fee=300),
              spend_coin(premine_coin(params, a), params, to_account=9, fee=500)) for a in ACCOUNTS]
    for first, second in pairs:  # all requests in flight before any reply is read
        alpha.client.send("push_tx", tx=first.raw)
        bravo.client.send("push_tx", tx=second.raw)
    replies = [(alpha.client.recv().fields, bravo.client.recv().fields) for _ in pairs]
    for (first, second), (to_alpha, to_bravo) in zip(pairs, replies):
        assert to_alpha["accepted"] or to_bravo["accepted"], (to_alpha, to_bravo)
        for reply in (to_alpha, to_bravo):
            assert reply["accepted"] or reply["code"] in ACCEPTED_OR_CONFLICT, reply

    # Each pair ends with one spend confirmed on every node and the other gone from every node (reported
    # "conflicted" by the nodes that held it when the block came, "unknown" by the others).
    def settled() -> bool:
        for pair in pairs:
            states = [{n.tx_state(tx.txid)[0] for n in nodes} for tx in pair]
            if states.count({"confirmed"}) != 1:
                return False
            loser = states[1] if states[0] == {"confirmed"} else states[0]
            if not loser <= {"conflicted", "unknown"}:
                return False
        return True

    wait_until(settled, 60, "one spend of each pair confirmed everywhere, the other gone everywhere")
    # ... and it stays that way while more blocks are mined: the loser is never confirmed.
    height, _ = sync_blocks(nodes, min_height=max(n.height for n in nodes) + 2, timeout=60)
    where = confirmed_txids(active_chain(watcher, up_to=height))
    for first, second in pairs:
        heights = [where.get(first.txid, []), where.get(second.txid, [])]
        assert sorted(len(h) for h in heights) == [0, 1], f"pair {first.txid_hex}/{second.txid_hex}: {heights}"
        assert not ({first.txid, second.txid} & set().union(*(n.mempool() for n in nodes)))
    assert settled()
