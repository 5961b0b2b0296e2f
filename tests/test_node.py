"""Miner nodes over real sockets: relay, block propagation, sync, split and heal, hostile peers.

Each node runs in its own thread with its own sockets and SQLite file and joins a
real tracker; the tests talk to nodes only through their api, like a client or a
peer (download, stalls and back-off are tested without sockets, on the in-memory
driver, in ``test_download.py``).  Blocks are made outside (regtest target) and handed to one node with
``submit_block``; the other nodes must get them over the network.
"""

from __future__ import annotations

import time

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.cluster import Cluster, cluster, make_block, submit  # noqa: F401  (cluster: a fixture)
from support.hostile import HostilePeer
from support.payments import premine_spend
from support.waiting import wait_until
from zcoin import wire
from zcoin.consensus.builders import sign_transaction
from zcoin.consensus.params import REGTEST, dev_secret_key
from zcoin.consensus.primitives import Block, BlockHeader, OutPoint, TxOut
from zcoin.node import is_loopback_endpoint
from zcoin.peers import PENALTY_MALFORMED


def test_pushed_transaction_reaches_every_mempool_and_a_rejected_one_reaches_nobody(cluster):
    for name in "abc":
        cluster.add_node(name)
    cluster.wait_connected()
    tx = premine_spend(0, to=1)
    reply = cluster.clients["a"].request("push_tx", tx=tx.raw)
    assert reply["accepted"] and reply["txid"] == tx.txid_hex
    wait_until(lambda: all(tx.txid in cluster.mempool(n) for n in "abc"), what="tx in every mempool")

    # Signed by the wrong key: refused with the rule's reason, and relayed to nobody.
    genesis_tx = REGTEST.genesis.txs[0]
    forged = sign_transaction([(OutPoint(genesis_tx.txid, 2), dev_secret_key(3))],
                              [TxOut(1000, REGTEST.dev_pubkey(3))])
    reply = cluster.clients["b"].request("push_tx", tx=forged.raw)
    assert not reply["accepted"] and reply["code"] == "bad-txns-signature"
    # A later valid tx pushed to b reaches a and c; the forged one, pushed before it, never did.
    marker = premine_spend(4, to=5)
    assert cluster.clients["b"].request("push_tx", tx=marker.raw)["accepted"]
    wait_until(lambda: all(marker.txid in cluster.mempool(n) for n in "ac"), what="marker tx relayed")
    assert all(forged.txid not in cluster.mempool(n) for n in "abc")

    # A conflicting spend of the same output is refused, naming the first transaction.
    double = premine_spend(0, to=2, fee=2000)
    reply = cluster.clients["c"].request("push_tx", tx=double.raw)
    assert not reply["accepted"] and reply["code"] == "txn-mempool-conflict" and tx.txid_hex in reply["reason"]


def test_block_submitted_on_one_node_is_connected_on_the_others_and_clears_mempools(cluster):
    for name in "abc":
        cluster.add_node(name)
    cluster.wait_connected()
    tx = premine_spend(1, to=2)
    assert cluster.clients["a"].request("push_tx", tx=tx.raw)["accepted"]
    wait_until(lambda: all(tx.txid in cluster.mempool(n) for n in "abc"), what="tx relayed")
    block = make_block(cluster.clients["a"], txs=[tx], fees=1000)
    submit(cluster.clients["a"], block)
    height, tip = cluster.wait_same_tip()
    assert (height, tip) == (1, block.hash)
    wait_until(lambda: all(not cluster.mempool(n) for n in "abc"), what="mined tx gone from every mempool")
    status = cluster.clients["c"].request("get_tx", txid=tx.txid)
    assert status["state"] == "confirmed" and status["height"] == 1


def test_late_joiner_syncs_the_whole_chain_and_the_mempool(cluster):
    a = cluster.clients[cluster.add_node("a").name]
    for i in range(200):
        submit(a, make_block(a, tag=b"%d" % i))
    waiting = premine_spend(6, to=7)
    assert a.request("push_tx", tx=waiting.raw)["accepted"]
    cluster.add_node("d")
    height, tip = cluster.wait_same_tip(timeout=60)
    assert height == 200
    wait_until(lambda: waiting.txid in cluster.mempool("d"), what="late joiner fetched the mempool")
    assert cluster.status("d")["synced"]


def test_split_then_heal_ends_on_most_work_and_returns_losing_transactions(cluster):
    for name in "abcd":
        cluster.add_node(name)
    cluster.wait_connected()
    start_height, _ = cluster.wait_same_tip()
    sides = ({"a", "b"}, {"c", "d"})
    for here in sides[0]:
        for there in sides[1]:
            assert cluster.clients[here].request("admin", action="disconnect", peer=there).type == "ok"
            assert cluster.clients[there].request("admin", action="disconnect", peer=here).type == "ok"
    wait_until(lambda: all(cluster.status(n)["peers"] == 1 for n in "abcd"), what="two halves")

    # The {a, b} side confirms a transaction in 2 blocks; the {c, d} side makes 4 empty ones.
    tx = premine_spend(3, to=4)
    assert cluster.clients["a"].request("push_tx", tx=tx.raw)["accepted"]
    wait_until(lambda: tx.txid in cluster.mempool("b"), what="tx on the a/b side")
    submit(cluster.clients["a"], make_block(cluster.clients["a"], txs=[tx], fees=1000, tag=b"ab0"))
    submit(cluster.clients["a"], make_block(cluster.clients["a"], tag=b"ab1"))
    for i in range(4):
        submit(cluster.clients["c"], make_block(cluster.clients["c"], tag=b"cd%d" % i))
    _, ab_tip = cluster.wait_same_tip("ab")
    cd_height, cd_tip = cluster.wait_same_tip("cd")
    assert ab_tip != cd_tip and cd_height == start_height + 4
    assert tx.txid not in cluster.mempool("c")

    for here in sides[0]:
        for there in sides[1]:
            cluster.clients[here].request("admin", action="reconnect", peer=there)
            cluster.clients[there].request("admin", action="reconnect", peer=here)
    height, tip = cluster.wait_same_tip(timeout=30)
    assert (height, tip) == (cd_height, cd_tip)
    # The transaction confirmed only on the losing side is back in mempools (and relayed to the winners).
    wait_until(lambda: all(tx.txid in cluster.mempool(n) for n in "abcd"), what="losing side's tx back")


def _peer_entry(cluster: Cluster, node: str, peer: str) -> dict | None:
    return next((p for p in cluster.status(node)["peer_list"] if p["node"] == peer), None)


def _with_bad_merkle(block: Block) -> Block:
    h = block.header
    header = BlockHeader(h.version, h.prev_hash, bytes(32), h.time, h.bits, h.nonce)
    return Block(header, block.txs)


def _with_bad_pow(block: Block) -> Block:
    h = block.header
    header = BlockHeader(h.version, h.prev_hash, h.merkle_root, h.time, 0x1D00FFFF, h.nonce)
    assert int.from_bytes(header.hash, "little") > 0xFFFF << 208  # far above Bitcoin mainnet's first target
    return Block(header, block.txs)


@pytest.mark.parametrize("breakage", ["bad-pow", "bad-merkle", "double-spend"])
def test_peer_sending_an_invalid_block_is_penalised_and_tips_do_not_move(cluster, breakage):
    for name in "ab":
        cluster.add_node(name)
    cluster.wait_connected()
    submit(cluster.clients["a"], make_block(cluster.clients["a"], tag=b"honest"))
    tip_before = cluster.wait_same_tip()
    mallory = HostilePeer(cluster)
    try:
        wait_until(lambda: all(_peer_entry(cluster, n, "mallory") for n in "ab"), what="nodes connect to mallory")
        if breakage == "bad-pow":
            bad = _with_bad_pow(make_block(cluster.clients["a"], tag=b"evil"))
        elif breakage == "bad-merkle":
            bad = _with_bad_merkle(make_block(cluster.clients["a"], tag=b"evil"))
        else:
            spend = premine_spend(0, to=1)
            again = premine_spend(0, to=2, fee=5000)
            bad = make_block(cluster.clients["a"], txs=[spend, again], fees=6000, tag=b"evil")

        def penalised() -> bool:
            mallory.gossip_block(bad)  # repeated: the SUB may not be subscribed yet (slow joiner)
            return all((_peer_entry(cluster, n, "mallory") or {}).get("score", 0) > 0 for n in "ab")

        wait_until(penalised, what="both nodes penalise mallory")
        assert cluster.tip("a") == tip_before and cluster.tip("b") == tip_before
        assert all(_peer_entry(cluster, n, "mallory")["banned"] for n in "ab")
        # Honest traffic still flows.
        submit(cluster.clients["a"], make_block(cluster.clients["a"], tag=b"after"))
        assert cluster.wait_same_tip()[0] == tip_before[0] + 1
    finally:
        mallory.close()


def test_replies_are_matched_to_requests_by_id_and_a_reply_to_nothing_is_penalised(cluster):
    cluster.add_node("a")
    mallory = HostilePeer(cluster)
    try:
        wait_until(lambda: _peer_entry(cluster, "a", "mallory"), what="a connects to mallory")

        waiting: list[list[bytes]] = []  # requests read but not taken yet, in arrival order

        def take(kind: str) -> list[bytes]:
            """The oldest request of that kind from a (the others wait for their turn)."""
            deadline = time.monotonic() + 5
            while True:
                for frames in waiting:
                    if wire.decode(frames[-1]).type == kind:
                        waiting.remove(frames)
                        return frames
                if time.monotonic() > deadline:
                    raise AssertionError(f"no {kind} request from a")
                if mallory.api.poll(100):
                    waiting.append(mallory.api.recv_multipart())

        def tip(height: int) -> bytes:  # less work than a's genesis: a does not fetch from mallory
            return wire.encode("tip", node="mallory", height=height, hash=bytes(range(32)), work=bytes(32))

        identity, request_id, _ = take("get_tip")
        mallory.api.send_multipart([identity, request_id, tip(1)])
        mempool_request = take("get_mempool")  # a is synced with mallory, so it asks for its pool
        tip_request = take("get_tip")
        assert mempool_request[1] != tip_request[1] and len(request_id) == 8
        # Answered in reverse order, each reply still lands on its own request.
        wanted = bytes([7]) * 32
        mallory.api.send_multipart([*tip_request[:2], tip(7)])
        mallory.api.send_multipart([*mempool_request[:2], wire.encode("mempool", txids=[wanted])])
        assert wire.decode(take("get_txs")[-1])["txids"] == [wanted]
        wait_until(lambda: _peer_entry(cluster, "a", "mallory")["height"] == 7, what="a takes mallory's tip")
        assert _peer_entry(cluster, "a", "mallory")["score"] == 0
        # A reply with a request id a never sent, or with none, is held against the sender and ignored.
        mallory.api.send_multipart([identity, (10**9).to_bytes(8, "big"), tip(9)])
        mallory.api.send_multipart([identity, tip(9)])
        wait_until(lambda: _peer_entry(cluster, "a", "mallory")["score"] >= 2 * PENALTY_MALFORMED,
                   what="a penalises both unsolicited replies")
        assert _peer_entry(cluster, "a", "mallory")["height"] == 7
    finally:
        mallory.close()


@pytest.fixture(scope="module")
def lone_node(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("fuzz"))
    c.add_node("solo")
    mallory = HostilePeer(c, "fuzzer")
    wait_until(lambda: _peer_entry(c, "solo", "fuzzer"), what="solo connects to the fuzzer")
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(c.nodes["solo"].api_endpoint)
    try:
        yield c, mallory, raw
    finally:
        raw.close(0)
        mallory.close()
        c.close()


frames = st.one_of(
    st.binary(max_size=512),
    st.builds(lambda d: msgpack.packb(d), st.dictionaries(st.sampled_from(["v", "t", "tx", "seq", "block", "hash"]),
                                                         st.one_of(st.integers(-5, 2**40), st.binary(max_size=64),
                                                                   st.text(max_size=20),
                                                                   st.sampled_from(sorted(wire.registered_types()))),
                                                         max_size=5)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=frames, topic=st.sampled_from([b"tx", b"block", b"junk"]), extra=st.lists(st.binary(max_size=8),
                                                                                      max_size=2))
def test_random_frames_on_api_and_gossip_never_stop_the_node_serving_status(lone_node, payload, topic, extra):
    cluster, mallory, raw = lone_node
    raw.send_multipart([*extra, payload])
    mallory.gossip(topic, payload)
    assert cluster.status("solo")["height"] == 0


def test_admin_requests_are_served_on_loopback_endpoints_only():
    assert is_loopback_endpoint("tcp://127.0.0.1:9101")
    assert is_loopback_endpoint("tcp://127.3.2.1:*")
    assert is_loopback_endpoint("tcp://[::1]:9101")
    assert is_loopback_endpoint("ipc:///tmp/x")
    assert not is_loopback_endpoint("tcp://0.0.0.0:9101")
    assert not is_loopback_endpoint("tcp://192.0.2.7:9101")


def test_a_node_whose_store_cannot_open_leaves_no_socket_open(tmp_path):
    from zcoin.config import NodeConfig
    from zcoin.node import Node
    from zcoin.storage import StoreError

    (tmp_path / "chain.sqlite").write_bytes(b"not a database, " * 64)
    node = Node(NodeConfig(name="broken", params=REGTEST, data_dir=tmp_path, mine=False,
                           api="tcp://127.0.0.1:*", gossip="tcp://127.0.0.1:*"), context=zmq.Context())
    with pytest.raises(StoreError, match="not a usable zcoin store"):
        node.start()
    assert node.transport.api.closed and node.transport.pub.closed
    node.context.term()  # returns only once every socket of the context is closed
