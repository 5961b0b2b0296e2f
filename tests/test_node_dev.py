"""The developer's verbs on a node: generate, mining modes, lookups, the address index.

Nodes run in-process on real sockets (tests/support/cluster.py) with a real
mining pool where a test mines; the regtest target makes proof of work instant.
The CLI on top of these is tested with real processes in
``tests/functional/test_feature_dev_network.py``.
"""

from __future__ import annotations

import pytest

from support.cluster import Cluster, cluster, make_block, submit  # noqa: F401  (cluster: a fixture)
from support.payments import premine_spend
from support.waiting import wait_until
from zcoin.client import NodeError
from zcoin.config import MiningMode
from zcoin.consensus.params import REGTEST
from zcoin.consensus.builders import new_template, solve
from zcoin.consensus.primitives import Block, Transaction

ON_DEMAND = MiningMode("on-demand")


def miner(cluster: Cluster, name: str, mode: MiningMode = ON_DEMAND, **config):
    return cluster.add_node(name, mine=True, mining=mode, workers=1, payout=REGTEST.dev_pubkey(8), **config)


def test_generate_mines_exactly_the_blocks_asked_for_and_pays_who_it_is_told(cluster):
    miner(cluster, "a")
    cluster.add_node("b")
    cluster.wait_connected()
    assert cluster.status("a")["mining_mode"] == "on-demand" and cluster.status("b")["mining_mode"] == "off"
    payout = REGTEST.dev_pubkey(7)
    reply = cluster.clients["a"].request("generate", blocks=3, payout=payout)
    assert reply["height"] == 3 and len(reply["hashes"]) == 3
    assert cluster.tip("a") == (3, bytes.fromhex(reply["hashes"][-1])[::-1])
    assert cluster.wait_same_tip()[0] == 3
    for height, block_hash in enumerate(reply["hashes"], start=1):
        block = cluster.clients["b"].request("get_block", height=height)
        assert block["active"] and block["height"] == height and block["fees"] == 0
        parsed = Block.parse(block["block"])
        assert parsed.hash_hex == block_hash and parsed.txs[0].outputs[0].pubkey == payout
    # An on-demand miner mines nothing unasked.
    assert cluster.status("a")["height"] == 3


def test_generate_is_refused_by_a_node_without_a_pool_and_counts_against_no_one(cluster):
    cluster.add_node("b")
    for _ in range(6):  # more refusals than a ban takes: a refusal is not misbehaviour
        with pytest.raises(NodeError) as refused:
            cluster.clients["b"].request("generate", blocks=1)
        assert refused.value.reason == "not-mining"
    assert cluster.status("b")["height"] == 0


def test_interval_miner_mines_about_one_block_a_slot_and_rests_between(cluster):
    miner(cluster, "a", MiningMode("interval", 1.0))
    wait_until(lambda: cluster.status("a")["height"] >= 3, 20, "three interval blocks")
    reached_3 = cluster.status("a")["height"]
    assert cluster.status("a")["mining_mode"] == "interval:1"
    # Regtest proof of work takes no time: a continuous miner would be hundreds of blocks ahead.
    wait_until(lambda: cluster.status("a")["height"] >= reached_3 + 2, 10, "two more slots")
    assert cluster.status("a")["height"] <= reached_3 + 4


def test_lookups_follow_a_payment_from_the_mempool_into_a_block(cluster):
    miner(cluster, "a")
    cluster.wait_connected()
    client = cluster.clients["a"]
    tx = premine_spend(2, to=3, fee=1500)
    assert client.request("push_tx", tx=tx.raw)["accepted"]
    pending = client.request("get_tx", txid=tx.txid, verbose=True)
    assert pending["state"] == "mempool" and Transaction.parse(pending["tx"]).txid == tx.txid
    assert pending["prevouts"] == [{"amount": REGTEST.dev_account_amount, "pubkey": REGTEST.dev_pubkey(2)}]
    info = client.request("get_mempool_info")
    assert info["count"] == 1 and info["fees"] == 1500 and sum(b["count"] for b in info["histogram"]) == 1
    history = client.request("get_history", pubkey=REGTEST.dev_pubkey(3))["items"]
    paid = REGTEST.dev_account_amount - 1500  # all of it, in two outputs
    assert history[-1]["height"] == -1 and history[-1]["received"] == paid and history[-1]["spent"] == 0

    block_hash = client.request("generate", blocks=1)["hashes"][0]
    assert "tx" not in client.request("get_tx", txid=tx.txid).fields  # only asked verbose
    confirmed = client.request("get_tx", txid=tx.txid, verbose=True)
    assert confirmed["state"] == "confirmed" and confirmed["height"] == 1 and confirmed["confirmations"] == 1
    assert confirmed["block"].hex() == bytes.fromhex(block_hash)[::-1].hex()
    by_height = client.request("get_block", height=1, prevouts=True)
    block = Block.parse(by_height["block"])
    assert by_height["fees"] == 1500 and [t.txid for t in block.txs] == [block.txs[0].txid, tx.txid]
    assert by_height["prevouts"] == [[], pending["prevouts"]]  # the coinbase spends no coin
    assert "prevouts" not in client.request("get_block", height=1).fields  # only when asked
    header = client.request("get_header", hash=confirmed["block"])
    assert header["header"] == block.header.serialize() and header["height"] == 1 and header["active"]
    assert confirmed["block_time"] == block.header.time
    assert client.request("get_header", height=1)["header"] == header["header"]
    assert client.request("get_header", height=7).get("header") is None
    client.request("generate", blocks=1)
    assert client.request("get_tx", txid=tx.txid)["confirmations"] == 2
    spender = client.request("get_history", pubkey=REGTEST.dev_pubkey(2))["items"]
    genesis_row, payment_row = spender[0], spender[-1]
    assert genesis_row["height"] == 0 and genesis_row["received"] == REGTEST.dev_account_amount
    assert payment_row["txid"] == tx.txid and payment_row["height"] == 1
    assert payment_row["spent"] == REGTEST.dev_account_amount and payment_row["received"] == 0
    assert client.request("get_tx", txid=bytes(32))["state"] == "unknown"
    assert client.request("get_block", hash=bytes(32)).get("block") is None


def test_the_address_index_follows_a_reorg(cluster):
    cluster.add_node("a")
    client = cluster.clients["a"]
    tx = premine_spend(4, to=5)
    first = make_block(client, txs=[tx], fees=1000, tag=b"short")
    submit(client, first)
    assert [i["height"] for i in client.request("get_history", pubkey=REGTEST.dev_pubkey(5))["items"]] == [0, 1]
    # A heavier branch without the payment: it goes back to the mempool, pending.
    genesis = REGTEST.genesis
    parent = genesis
    for height in (1, 2):
        block = solve(new_template(REGTEST, parent.hash, height, REGTEST.genesis_bits, parent.header.time + 1,
                                   REGTEST.dev_pubkey(9), [], 0))
        client.request("submit_block", block=block.raw)
        parent = block
    assert cluster.tip("a") == (2, parent.hash)
    items = client.request("get_history", pubkey=REGTEST.dev_pubkey(5))["items"]
    assert [(i["txid"], i["height"]) for i in items][-1] == (tx.txid, -1)
    assert [i["height"] for i in items] == [0, -1]
