"""Crash: a miner killed with SIGKILL under load restarts consistent, catches up and loses nothing.

Real mining on the ``local`` network (``--workers 1``), so the kill lands
while the victim validates, relays, writes blocks and runs its mining pool.
"""

from __future__ import annotations

import pytest

from framework import (TxPusher, active_chain, assert_confirmed_once_everywhere, fund_load, pid_alive,
                       sqlite_integrity, sync_blocks, wait_connected)
from framework import cluster  # noqa: F401  (a fixture: tests take it by name)
from support.waiting import wait_until

RATE_PER_NODE = 20.0


@pytest.mark.slow
def test_miner_killed_under_load_restarts_consistent_catches_up_and_loses_no_accepted_transaction(cluster):
    cluster.add_tracker()
    nodes = cluster.add_miners(["alpha", "bravo", "victim"])
    alpha, bravo, victim = nodes
    wait_connected(nodes)
    # Coins for some 20 s of the survivors' pushes while the victim is down and catching up.
    coins = fund_load(nodes, accounts=[0, 1, 2], outputs=400)
    start_height, _ = sync_blocks(nodes)

    pusher = TxPusher(nodes, coins, rate_per_node=RATE_PER_NODE)
    cluster.closables.append(pusher)
    pusher.start()
    wait_until(lambda: len(pusher.logs["victim"].accepted) >= 40 and victim.height >= start_height + 1, 60,
               "the victim accepting load and connecting blocks")
    status = victim.status()
    workers = victim.worker_pids()
    assert status["mining"] and workers, f"the victim should be mining with a worker: {status}, {workers}"

    victim.kill()
    accepted_by_victim = pusher.accepted("victim")
    # Its mining workers notice their parent is gone and exit; none is left spinning.
    wait_until(lambda: not any(pid_alive(pid) for pid in workers), 15, "the victim's workers to exit")
    # The others go on relaying, accepting and mining without it.
    survivors = [alpha, bravo]
    accepted_before = {n.name: len(pusher.logs[n.name].accepted) for n in survivors}
    wait_until(lambda: all(len(pusher.logs[n.name].accepted) > accepted_before[n.name] + 20 for n in survivors),
               30, "survivors accepting load")
    sync_blocks(survivors, min_height=status["height"] + 1, timeout=60)
    assert sqlite_integrity(victim.data_dir / "chain.sqlite") == "ok"

    victim.restart()
    # The store opens on a chain at least as long as the one it reported before the kill, with that tip stored.
    assert victim.start_height >= status["height"], (victim.start_line, status["height"])
    tip_before = bytes.fromhex(status["tip"])[::-1]
    stored = victim.block_by_hash(tip_before)
    assert stored is not None and stored[1] == status["height"]
    active_chain(victim)  # every block of its chain is there and links to its parent
    # Every transaction it had acknowledged is still known to it: written down before the reply went out.
    forgotten = [t[::-1].hex() for t in accepted_by_victim if victim.tx_state(t)[0] == "unknown"]
    assert not forgotten, f"the restarted victim lost {len(forgotten)} accepted transactions: {forgotten[:5]}"
    # It catches up and takes load again.
    sync_blocks(nodes, timeout=60)
    wait_until(lambda: victim.status()["synced"], 30, "the victim to call itself synced")
    accepted_after = len(pusher.logs["victim"].accepted)
    wait_until(lambda: len(pusher.logs["victim"].accepted) > accepted_after + 20, 30, "the victim accepting again")
    pusher.stop()

    summary = pusher.summary()
    assert all(s["rejected"] == 0 for s in summary.values()), summary
    # Nothing any node accepted is lost, including what the victim accepted just before it died.
    assert_confirmed_once_everywhere(nodes, pusher.accepted(), timeout=90)
