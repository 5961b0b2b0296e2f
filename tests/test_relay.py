"""Relay that repairs itself, the orphan pool, conflicts, and a node that answers only when it can.

Node cores on the in-memory driver (a virtual network whose links lose what a test
says, and a virtual clock): every transaction reaches every connected node even
when all gossip between them is lost or a node restarts at the worst moment.
"""

from __future__ import annotations

import pytest

from support.payments import FEE, premine_spend, spend_output
from zcoin import wire
from zcoin.config import NodeConfig
from zcoin.consensus.builders import new_template, solve
from zcoin.consensus.params import REGTEST
from zcoin.memnet import VirtualNetwork

FAST = {"tip_interval_s": 0.5, "sync_grace_s": 0.5, "request_timeout_s": 1.0}


@pytest.fixture
def net():
    network = VirtualNetwork(seed=7)
    try:
        yield network
    finally:
        network.close()


def add(net, tmp_path, name: str):
    return net.add_node(NodeConfig(name=name, params=REGTEST, data_dir=tmp_path / name, mine=False, **FAST))


def push(net, name: str, tx) -> dict:
    return net.request(name, "push_tx", tx=tx.raw).fields


def lose_gossip(kind: str, payload: bytes) -> bool:
    return kind == "gossip"


def test_a_transaction_reaches_a_node_whose_gossip_is_all_lost(net, tmp_path):
    a, b = add(net, tmp_path, "a"), add(net, tmp_path, "b")
    net.link("a", "b").lose = lose_gossip
    net.link("b", "a").lose = lose_gossip
    net.run_until(lambda: a.synced and b.synced, 10, "both synced")
    txs = [premine_spend(i, to=i + 1) for i in range(3)]
    for tx in txs:
        assert push(net, "a", tx)["accepted"]
    net.run_until(lambda: all(tx.txid in b.mempool for tx in txs), 10, "b gets every tx without gossip")
    back = premine_spend(5, to=6)
    assert push(net, "b", back)["accepted"]
    net.run_until(lambda: back.txid in a.mempool, 10, "and a gets b's")
    assert net.links[("a", "b")].lost >= 3 and net.links[("b", "a")].lost >= 1


def test_a_restarted_node_and_its_peer_exchange_what_was_accepted_around_the_restart(net, tmp_path):
    """b restarts before its peers notice it left (they keep it as a peer): its numbers start again
    in a new epoch, which a sees in its next tip reply and fetches b's inventory at once."""
    a, b = add(net, tmp_path, "a"), add(net, tmp_path, "b")
    net.run_until(lambda: a.synced and b.synced and b.peers["a"].epoch is not None, 10, "both synced")
    kept = premine_spend(1, to=2)
    assert push(net, "b", kept)["accepted"]
    net.run_until(lambda: kept.txid in a.mempool, 10, "relayed before the restart")
    old_epoch = a.peers["b"].epoch
    net.link("a", "b").lose = lose_gossip  # the restarted b's subscription is not up yet: a's gossip is lost
    net.link("b", "a").lose = lose_gossip
    b = net.restart("b", unnoticed=True)
    during = premine_spend(3, to=4)
    assert push(net, "a", during)["accepted"]  # published while b is not listening
    net.run_until(lambda: b.synced, 10, "b synced again")
    after = premine_spend(6, to=7)
    assert push(net, "b", after)["accepted"]  # numbered from 1 again, in a new epoch
    pushed_at = net.clock.now
    net.run_until(lambda: after.txid in a.mempool, 10, "a fetches the restarted b's inventory")
    assert net.clock.now - pushed_at <= FAST["tip_interval_s"] + 0.1  # one tip round: the epoch, not a loss
    net.run_until(lambda: during.txid in b.mempool, 10, "b fetches a's")
    assert kept.txid in b.mempool  # taken back from its own store
    assert a.peers["b"].epoch != old_epoch and a.peers["b"] is not None


def test_a_child_that_comes_before_its_parent_waits_in_the_orphan_pool(net, tmp_path):
    a, b = add(net, tmp_path, "a"), add(net, tmp_path, "b")
    net.run_until(lambda: a.synced and b.synced, 10, "both synced")
    parent = premine_spend(2, to=2, outputs=2)
    child = spend_output(parent, 0, 2, to=3)
    dropped = []

    def lose_the_parent(kind: str, payload: bytes) -> bool:
        if kind == "gossip" and parent.raw in payload and not dropped:
            dropped.append(payload)
            return True
        return False

    net.link("a", "b").lose = lose_the_parent
    assert push(net, "a", parent)["accepted"] and push(net, "a", child)["accepted"]
    net.run_until(lambda: child.txid in b.relay.orphans, 1, "the child waits in b's orphan pool")
    # Its parent is asked of a at once (not a tip round later) and the child follows it in.
    net.run_until(lambda: parent.txid in b.mempool and child.txid in b.mempool, 0.2, "the parent fetched, the child in")
    assert dropped and len(b.relay.orphans) == 0


def test_the_orphan_pool_is_bounded_and_expires(net, tmp_path):
    from zcoin.relay import Orphan, OrphanPool

    pool = OrphanPool(max_count=3)
    txs = [premine_spend(i, to=i) for i in range(5)]
    for i, tx in enumerate(txs):
        pool.add(Orphan(tx, frozenset({bytes([i]) * 32}), "p", expires_at=10.0 + i))
    assert len(pool) == 3 and txs[0].txid not in pool and txs[4].txid in pool  # oldest dropped first
    assert [o.tx.txid for o in pool.waiting_for(bytes([3]) * 32)] == [txs[3].txid]
    assert pool.expire(13.5) == 2 and len(pool) == 1


def test_a_node_refuses_payments_while_syncing_or_isolated(net, tmp_path):
    a = add(net, tmp_path, "a")
    refused = net.request("a", "push_tx", tx=premine_spend(0, to=1).raw)
    assert refused.type == "error" and refused["reason"] == "syncing"
    assert net.request("a", "get_utxos", pubkey=REGTEST.dev_pubkey(0))["reason"] == "syncing"
    net.run_until(lambda: a.synced, 10, "a synced alone")
    assert push(net, "a", premine_spend(0, to=1))["accepted"]  # alone in the cluster: nobody to wait for
    add(net, tmp_path, "b")
    net.run_until(lambda: "b" in a.peers and a.peers["b"].answered, 10, "a has b as a peer")
    assert net.request("a", "admin", action="disconnect", peer="b")["detail"]
    refused = net.request("a", "push_tx", tx=premine_spend(1, to=2).raw)
    assert refused.type == "error" and refused["reason"] == "isolated"
    net.request("a", "admin", action="reconnect", peer="b")
    net.run_until(lambda: a.peers.get("b") is not None and a.peers["b"].answered, 10, "b back")
    assert push(net, "a", premine_spend(1, to=2))["accepted"]
    assert a.misbehaviour.score(b"client", net.clock.now) == 0  # refusals are not held against the client


def test_a_transaction_dropped_for_a_conflicting_block_is_reported_conflicted(net, tmp_path):
    a = add(net, tmp_path, "a")
    net.run_until(lambda: a.synced, 10, "a synced")
    mine = premine_spend(4, to=5)
    theirs = premine_spend(4, to=6, fee=3000)  # the same coin
    assert push(net, "a", mine)["accepted"]
    genesis = REGTEST.genesis
    block = solve(new_template(REGTEST, genesis.hash, 1, REGTEST.genesis_bits, genesis.header.time + 1,
                               REGTEST.dev_pubkey(9), [theirs], 3000))
    assert net.request("a", "submit_block", block=block.raw)["accepted"]
    status = net.request("a", "get_tx", txid=mine.txid)
    assert status["state"] == "conflicted" and status["conflict"] == theirs.txid_hex
    assert net.request("a", "get_tx", txid=theirs.txid)["state"] == "confirmed"


def test_a_block_of_relayed_payments_connects_at_a_peer_without_verifying_them_again(net, tmp_path):
    """b took the payments from a's gossip (verifying their signatures); the block of them reuses that."""
    a, b = add(net, tmp_path, "a"), add(net, tmp_path, "b")
    net.run_until(lambda: a.synced and b.synced, 10, "both synced")
    txs = [premine_spend(i, to=i + 1) for i in range(3)]
    for tx in txs:
        assert push(net, "a", tx)["accepted"]
    net.run_until(lambda: all(tx.txid in b.mempool for tx in txs), 10, "b takes them from a")
    assert len(b.chain.signature_cache) == len(txs)
    genesis = REGTEST.genesis
    block = solve(new_template(REGTEST, genesis.hash, 1, REGTEST.genesis_bits, genesis.header.time + 1,
                               REGTEST.dev_pubkey(9), txs, len(txs) * FEE))
    assert net.request("a", "submit_block", block=block.raw)["accepted"]
    net.run_until(lambda: b.chain.height == 1, 10, "b connects the block")
    assert b.chain.signature_cache.hits == len(txs) and len(b.mempool) == 0
    assert net.request("b", "status")["counters"]["signatures_cached"] == len(txs)


def test_gossip_carries_the_publishers_epoch_and_a_gap_fetches_its_inventory(net, tmp_path):
    a, b = add(net, tmp_path, "a"), add(net, tmp_path, "b")
    net.run_until(lambda: a.synced and b.synced, 10, "both synced")
    lost = []
    net.link("a", "b").lose = lambda kind, payload: kind == "gossip" and len(lost) < 2 and not lost.append(1)
    txs = [premine_spend(i, to=i) for i in range(3)]
    for tx in txs:
        assert push(net, "a", tx)["accepted"]
    # The third message arrives with a gap of two: b asks a's inventory at once, not a tip round later.
    net.run_until(lambda: all(tx.txid in b.mempool for tx in txs), 0.4, "b repairs the gap")
    assert b.peers["a"].epoch == a.epoch and b.peers["a"].last_seq == a.seq


def test_the_status_reply_counts_what_the_node_did(net, tmp_path):
    a = add(net, tmp_path, "a")
    net.run_until(lambda: a.synced, 10, "a synced")
    tx = premine_spend(0, to=1)
    assert push(net, "a", tx)["accepted"]
    assert not push(net, "a", premine_spend(0, to=2, fee=5000))["accepted"]  # the same coin again
    genesis = REGTEST.genesis
    block = solve(new_template(REGTEST, genesis.hash, 1, REGTEST.genesis_bits, genesis.header.time + 1,
                               REGTEST.dev_pubkey(9), [tx], 1000))
    assert net.request("a", "submit_block", block=block.raw)["accepted"]
    status = net.request("a", "status").fields
    assert status["counters"]["txs_accepted"] == 1 and status["counters"]["blocks_connected"] == 1
    assert status["rejected"] == [{"reason": "txn-mempool-conflict", "count": 1}]
    assert status["mempool_bytes"] == 0 and status["counters"]["reorgs"] == 0


def test_an_orphan_whose_parent_comes_in_a_block_is_taken_then(net, tmp_path):
    a, b = add(net, tmp_path, "a"), add(net, tmp_path, "b")
    net.run_until(lambda: a.synced and b.synced, 10, "both synced")
    parent = premine_spend(3, to=3, outputs=2)
    child = spend_output(parent, 0, 3, to=4)
    net.link("a", "b").lose = lambda kind, payload: kind in ("gossip", "reply") and parent.raw in payload
    assert push(net, "a", parent)["accepted"] and push(net, "a", child)["accepted"]
    net.run_until(lambda: child.txid in b.relay.orphans, 2, "the child waits in b's orphan pool")
    genesis = REGTEST.genesis
    block = solve(new_template(REGTEST, genesis.hash, 1, REGTEST.genesis_bits, genesis.header.time + 1,
                               REGTEST.dev_pubkey(9), [parent], 1000))
    assert net.request("b", "submit_block", block=block.raw)["accepted"]  # the parent, confirmed at b
    assert child.txid in b.mempool and child.txid not in b.relay.orphans


def test_only_the_node_that_took_a_payment_announces_it_to_peers_and_the_others_to_observers(net, tmp_path):
    """A full mesh hears each transaction once from the node a client gave it to: b and c do not
    send it on to each other or back (their numbers stay), they announce it under ``rtx`` only."""
    nodes = {name: add(net, tmp_path, name) for name in "abc"}
    net.run_until(lambda: all(n.synced for n in nodes.values()), 10, "all synced")
    tx = premine_spend(0, to=1)
    heard: list[tuple[str, str]] = []  # (publisher, subscriber) of every gossip message carrying tx

    def listen(pair):
        def lose(kind: str, payload: bytes) -> bool:
            if kind == "gossip" and tx.raw in payload:
                heard.append(pair)
            return False
        return lose

    for pair, link in list(net.links.items()):
        link.lose = listen(pair)
    published: dict[str, list[bytes]] = {name: [] for name in nodes}
    for name, core in nodes.items():
        def record(topic, payload, name=name, original=core.transport.publish):
            published[name].append(topic)
            original(topic, payload)
        core.transport.publish = record
    seqs = {name: core.seq for name, core in nodes.items()}
    assert push(net, "a", tx)["accepted"]
    net.run_until(lambda: all(tx.txid in n.mempool for n in nodes.values()), 5, "every node has it")
    net.run_for(3)  # tip rounds: no repair is needed, and nothing more is heard
    assert sorted(heard) == [("a", "b"), ("a", "c")]
    assert published == {"a": [b"tx"], "b": [b"rtx"], "c": [b"rtx"]}
    assert nodes["a"].seq == seqs["a"] + 1 and nodes["b"].seq == seqs["b"] and nodes["c"].seq == seqs["c"]
    assert all(n.counters.gossip_gaps == 0 for n in nodes.values())


def test_what_a_turn_accepts_goes_out_in_one_announcement_and_is_taken_from_it(net, tmp_path):
    """Transactions accepted in one turn go out together (``gossip_txs``); a peer takes every one
    of them, and one bad transaction in a batch is held against its sender like a lone one."""
    a, b = add(net, tmp_path, "a"), add(net, tmp_path, "b")
    net.run_until(lambda: a.synced and b.synced, 10, "both synced")
    sent: list[wire.Message] = []
    original = a.transport.publish
    a.transport.publish = lambda topic, payload: (sent.append(wire.decode(payload)), original(topic, payload))
    txs = [premine_spend(i, to=i + 1) for i in range(3)]
    for tx in txs:  # a client's pushes in one turn of a's loop (replies wait for the turn's end)
        a.on_api(b"client", lambda reply: None, wire.encode("push_tx", tx=tx.raw))
    assert sent == []  # nothing before the turn ends
    a.flush()
    assert [(m.type, m["txs"]) for m in sent] == [("gossip_txs", [tx.raw for tx in txs])]
    net.run_until(lambda: all(tx.txid in b.mempool for tx in txs), 2, "b takes the batch")

    forged = spend_output(txs[0], 0, 2, to=7)  # account 1's coin, signed by account 2
    assert forged.txid not in b.mempool
    good, score = premine_spend(4, to=5), b.score(b.peers["a"])
    b.on_gossip("a", wire.TOPIC_TX, wire.encode("gossip_txs", seq=a.seq + 1, epoch=a.epoch,
                                                txs=[good.raw, forged.raw]))
    assert good.txid in b.mempool and forged.txid not in b.mempool and b.score(b.peers["a"]) > score
