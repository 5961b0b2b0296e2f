"""Tracker outage: the trackers only introduce miners; their loss stops neither relaying nor mining.

Miners are configured with two trackers.  Real mining on the ``local``
network by two of them (``--workers 1``); the others relay only, to keep the
machine's two cores for what is measured.  The trackers grant a lease of
:data:`LEASE_S` (miners heartbeat three times a lease), so that a miner finds a
dead tracker out within seconds.
"""

from __future__ import annotations

import pytest

from framework import MinerNode, logged, premine_coin, spend_coin, sync_blocks, wait_connected
from framework import cluster  # noqa: F401  (a fixture: tests take it by name)
from support.waiting import wait_until


LEASE_S = 2.0


def relayed_and_mined(sender: MinerNode, nodes: list[MinerNode], account: int) -> None:
    """A transaction pushed to ``sender`` reaches every node and is mined: confirmed on every node, all of them
    on one tip above the height it was pushed at."""
    start = max(n.height for n in nodes)
    tx = spend_coin(premine_coin(sender.params, account), sender.params, to_account=(account + 1) % 10)
    assert sender.push_tx(tx)["accepted"]
    wait_until(lambda: all(n.tx_state(tx.txid)[0] == "confirmed" for n in nodes), 60,
               f"tx from {sender.name} relayed and confirmed on every node")
    sync_blocks(nodes, min_height=start + 1, timeout=60)


@pytest.mark.slow
def test_tracker_outage_stops_neither_relay_nor_mining_and_a_restarted_tracker_relists_every_miner(cluster):
    config = cluster.tmp_path / "tracker.toml"
    config.write_text(f"[tracker]\nlease_s = {LEASE_S}\n")
    first, second = [cluster.add_tracker(name, extra=("--config", str(config))) for name in ("tracker1", "tracker2")]
    nodes = [cluster.add_miner(name, mine=mine, wait=False)
             for name, mine in (("alpha", True), ("bravo", True), ("charlie", False))]
    nodes = [n.wait_started() for n in nodes]
    wait_connected(nodes)
    everyone = {"alpha", "bravo", "charlie"}
    wait_until(lambda: first.members() == everyone and second.members() == everyone, 20, "both trackers list all")

    # The first tracker dies: relaying and mining go on.
    first.kill()
    relayed_and_mined(nodes[2], nodes, account=0)
    # A new miner joins through the second tracker (the first one, also configured, is down).
    delta = cluster.add_miner("delta", mine=False)
    nodes.append(delta)
    wait_connected(nodes)
    sync_blocks(nodes)
    assert second.members() == everyone | {"delta"}

    # With no tracker at all, the miners keep the mesh they know: relaying and mining still go on.
    second.kill()
    lost = rf"joining tracker again[^\n]*tracker={second.endpoint}"
    wait_until(lambda: all(logged(n, lost) for n in nodes), 30, "every miner to see its lease on tracker2 run out")
    relayed_and_mined(delta, nodes, account=1)
    assert all(n.status()["peers"] == 3 for n in nodes)

    # The first tracker restarted (same endpoints, empty memory) lists every miner again as they rejoin.
    first.restart()
    wait_until(lambda: first.members() == everyone | {"delta"}, 40, "the restarted tracker to relist every miner")
    relayed_and_mined(nodes[0], nodes, account=2)
    assert all(n.running() for n in nodes)
