"""Hostile peers: malformed frames, wrong versions, invalid blocks and transactions, lying replies.

Honest nodes run on ``regtest`` with ``--no-mine``: their tips move only when
the test submits a block, so "keeps its tip" is exact, and the regtest target
lets the test build invalid blocks whose proof of work is nevertheless
valid, so that each one breaks exactly the rule it is named after.

Every attacker is a separate member of the cluster (a node bans a peer on its
first invalid block and then ignores it, so one attacker cannot test two
rules).  Attackers repeat their message until penalised: a subscriber misses
what is published before its subscription is up (slow joiner).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import pytest
import zmq

from framework import MinerNode, peer_entry, premine_coin, spend_coin, sync_blocks, wait_connected
from framework import cluster  # noqa: F401  (a fixture: tests take it by name)
from support.chain import with_header
from support.cluster import make_block
from support.hostile import HostilePeer
from support.payments import dev_key, dev_outpoint, pay
from support.waiting import wait_until
from zcoin import wire
from zcoin.client import NodeClient
from zcoin.consensus.params import LOCAL, REGTEST
from zcoin.consensus.pow import bits_to_target, block_work, hash_meets_target
from zcoin.consensus.primitives import Block, BlockHeader

OVER_WIRE_LIMIT = wire.MAX_MESSAGE_BYTES + 1024
UNDER_WIRE_LIMIT = wire.MAX_MESSAGE_BYTES - 1024


def bad_pow(block: Block) -> Block:
    """Bitcoin mainnet's first target: this hash is far above it."""
    header = dataclasses.replace(block.header, bits=0x1D00FFFF)
    assert not hash_meets_target(header.hash, bits_to_target(header.bits))
    return Block(header, block.txs)


def invalid_blocks(honest: MinerNode) -> dict[str, Block]:
    """One block per broken rule, each on the honest tip and otherwise valid."""
    client = honest.client
    spend = premine_coin(REGTEST, 0)
    return {
        "bad-pow": bad_pow(make_block(client, tag=b"evil-pow")),
        "bad-merkle": with_header(make_block(client, tag=b"evil-merkle"), merkle_root=bytes(32)),
        "wrong-bits": with_header(make_block(client, tag=b"evil-bits"), bits=0x207FFFFE),
        "bad-coinbase-amount": make_block(client, fees=1, tag=b"evil-coinbase"),  # claims a fee nobody paid
        "double-spend": make_block(client, txs=[spend_coin(spend, REGTEST, 1, fee=1000),
                                                spend_coin(spend, REGTEST, 2, fee=2000)],
                                   fees=3000, tag=b"evil-double"),
    }


def forged_tx():
    """Development account 2's premine, signed with account 3's key."""
    return pay([(dev_outpoint(REGTEST, 2), dev_key(3))], [1000], REGTEST.dev_pubkey(3))


class Liar:
    """Answers tip requests with a chain of more work, and header requests with headers that fail PoW."""

    def __init__(self, honest: MinerNode) -> None:
        height, tip = honest.tip()
        parent = honest.block_at(height)
        fake = BlockHeader(1, tip, bytes(32), parent.header.time + 1, 0x1D00FFFF, 0)  # bits far too hard
        assert not hash_meets_target(fake.hash, bits_to_target(fake.bits))
        self.header = fake
        self.height = height + 1

    def __call__(self, msg: wire.Message) -> bytes | None:
        if msg.type == "get_tip":
            return wire.encode("tip", node="liar", height=self.height, hash=self.header.hash,
                               work=(1 << 200).to_bytes(32, "big"))
        if msg.type == "get_headers":
            return wire.encode("headers", headers=[self.header.serialize()])
        return None


def test_hostile_peers_are_penalised_while_honest_nodes_stay_up_on_their_tips(cluster):
    cluster.add_tracker()
    alpha, bravo = honest = cluster.add_miners(["alpha", "bravo"], network_name="regtest", mine=False)
    wait_connected(honest)
    for i in range(3):
        assert alpha.submit_block(make_block(alpha.client, tag=b"honest%d" % i))["accepted"]
    tip_before = sync_blocks(honest, min_height=3)

    blocks = invalid_blocks(alpha)
    forged = forged_tx()
    liar = Liar(alpha)
    junk = os.urandom(UNDER_WIRE_LIMIT)
    valid = make_block(alpha.client, tag=b"valid-but-badly-wrapped")  # would move the tips if taken
    attacks = {  # attacker -> one round of its misbehaviour
        "garbage": lambda p: (p.gossip(b"block", os.urandom(64)), p.gossip(b"tx", b"\xc1"),
                              p.gossip_frames(b"block", b"a", b"b", b"c")),
        "wrong-version": lambda p: p.gossip(b"block", p.envelope("gossip_block", version=wire.PROTOCOL_VERSION + 1,
                                                                         seq=p.next_seq(), block=valid.raw)),
        "wrong-topic": lambda p: p.gossip(b"tx", wire.encode("gossip_block", seq=p.next_seq(), block=valid.raw)),
        "near-limit-junk": lambda p: p.gossip(b"block", junk),  # read whole, then found malformed
        "forged-tx": lambda p: p.gossip_tx(forged),
        "undecodable-tx": lambda p: p.gossip_tx(b"\x93\x01\x02"),
        "liar": lambda p: p.answer_requests(liar),
        **{name: (lambda p, b=block: p.gossip_block(b)) for name, block in blocks.items()},
    }
    # Rules broken once ban at once; malformed frames and bad transactions ban after a few.
    peers = {name: cluster.hostile_peer(name) for name in attacks}
    wait_until(lambda: all(set(peers) <= set(n.peers()) for n in honest), 20, "honest nodes connect to attackers")

    pending = list(attacks)

    def all_banned() -> bool:
        lists = [n.peers() for n in honest]
        pending[:] = [name for name in attacks if not all(pl[name]["banned"] for pl in lists)]
        for name in pending:
            attacks[name](peers[name])
        return not pending

    try:
        wait_until(all_banned, 40, "every attacker banned by both honest nodes", interval=0.2)
    except AssertionError:
        raise AssertionError(f"not banned: {pending}: {[n.peers() for n in honest]}") from None

    # The honest nodes are up, on the tip they had, and trust each other.
    assert all(n.running() for n in honest)
    assert [n.tip() for n in honest] == [tip_before, tip_before]
    assert peer_entry(alpha, "bravo")["score"] == 0 and peer_entry(bravo, "alpha")["score"] == 0
    for name, entry in alpha.peers().items():
        if name in attacks:
            assert entry["score"] >= 100, (name, entry)
    # Honest traffic still flows both ways: a block from alpha reaches bravo, a transaction from bravo reaches alpha.
    block = make_block(alpha.client, tag=b"after")
    assert alpha.submit_block(block)["accepted"]
    assert sync_blocks(honest, min_height=tip_before[0] + 1) == (tip_before[0] + 1, block.hash)
    tx = spend_coin(premine_coin(REGTEST, 5), REGTEST, 6)
    assert bravo.push_tx(tx)["accepted"]
    wait_until(lambda: tx.txid in alpha.mempool(), 10, "bravo's transaction relayed to alpha")
    # While banned, an attacker's valid block is ignored: it does not move the tips.
    sneaky = make_block(alpha.client, tag=b"sneaky")
    for _ in range(5):
        peers["bad-pow"].gossip_block(sneaky)
    assert alpha.submit_block(make_block(alpha.client, tag=b"last"))["accepted"]
    height, tip = sync_blocks(honest, min_height=tip_before[0] + 2)
    assert height == tip_before[0] + 2 and alpha.block_by_hash(sneaky.hash) is None


def test_client_sending_malformed_requests_is_ignored_while_other_clients_are_served(cluster):
    cluster.add_tracker()
    (node,) = cluster.add_miners(["alpha"], network_name="regtest", mine=False)
    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    cluster.closables.append(raw)
    raw.connect(node.api)
    malformed = [os.urandom(100), HostilePeer.envelope("status", version=99), HostilePeer.envelope("no-such-type"),
                 HostilePeer.envelope("get_block", height="ten"), b""]
    for frame in malformed * 2:
        raw.send(frame)
    # Each one costs the client points; past the ban score it is not answered any more, even for a good request.
    raw.send(wire.encode("status"))
    replies = []
    while raw.poll(2000):
        replies.append(wire.decode(raw.recv()))
    assert replies and all(r.type == "error" for r in replies), replies
    assert len(replies) < len(malformed) * 2
    # A frame over the wire limit (under libzmq's backstop): refused with an "oversized" error
    # before decoding, and the same client is still served afterwards.
    big = zmq.Context.instance().socket(zmq.DEALER)
    big.setsockopt(zmq.LINGER, 0)
    cluster.closables.append(big)
    big.connect(node.api)
    big.send(bytes(OVER_WIRE_LIMIT))
    big.send(wire.encode("status"))
    assert big.poll(5000) and wire.decode(big.recv()).type == "error"
    assert big.poll(5000) and wire.decode(big.recv()).type == "status_reply"
    # Everyone else is still served.
    with NodeClient(node.api, timeout_s=5) as other:
        assert other.request("status")["height"] == 0
    assert node.running() and node.height == 0
    assert "bad request" in node.log()


def test_peer_gossiping_frames_over_the_size_limit_is_penalised(cluster):
    cluster.add_tracker()
    honest = cluster.add_miners(["alpha", "bravo"], network_name="regtest", mine=False)
    wait_connected(honest)
    tip_before = sync_blocks(honest)
    bulky = cluster.hostile_peer("bulky")
    wait_until(lambda: all("bulky" in n.peers() for n in honest), 20, "honest nodes connect to bulky")

    def penalised() -> bool:
        bulky.gossip(b"block", bytes(OVER_WIRE_LIMIT))
        return all(n.peers()["bulky"]["score"] > 0 for n in honest)

    try:
        wait_until(penalised, 10, "both honest nodes penalise bulky", interval=0.5)
    finally:
        assert all(n.running() for n in honest) and [n.tip() for n in honest] == [tip_before, tip_before]


# Nonces ground once (about 25 million hashes) for the headers of withheld_headers(): valid proof of work on the
# local network, so the test need not spend half a minute grinding.
WITHHELD_NONCES = (5110976, 485015, 7321134, 2477530, 1021134, 9257386)


def withheld_headers() -> list[BlockHeader]:
    """Six valid ``local`` headers on the genesis block, of blocks whose bodies nobody will ever serve."""
    headers, prev = [], LOCAL.genesis.hash
    for i, nonce in enumerate(WITHHELD_NONCES, 1):
        header = BlockHeader(1, prev, hashlib.sha256(b"withheld %d" % i).digest(), LOCAL.genesis_time + 60 * i,
                             LOCAL.genesis_bits, nonce)
        assert hash_meets_target(header.hash, bits_to_target(header.bits))
        headers.append(header)
        prev = header.hash
    return headers


@pytest.mark.slow
def test_peer_announcing_headers_it_never_serves_does_not_stop_honest_miners(cluster):
    cluster.add_tracker()
    headers = withheld_headers()
    claimed_work = (block_work(LOCAL.genesis_bits) * (len(headers) + 1)).to_bytes(32, "big")
    withholder = cluster.hostile_peer("withholder")

    def withhold(msg: wire.Message) -> bytes | None:
        if msg.type == "get_tip":
            return wire.encode("tip", node="withholder", height=len(headers), hash=headers[-1].hash,
                               work=claimed_work)
        if msg.type == "get_headers":
            return wire.encode("headers", headers=[h.serialize() for h in headers])
        return None  # get_blocks: never answered

    honest = [cluster.add_miner(name, wait=False) for name in ("alpha", "bravo")]
    honest = [n.wait_started() for n in honest]

    def headers_taken() -> bool:
        withholder.answer_requests(withhold)
        return all(n.status()["best_header"] == len(headers) for n in honest)

    wait_until(headers_taken, 20, "honest nodes to take the withheld headers")
    start = max(n.height for n in honest)
    assert start < len(headers), "the honest chain overtook the withheld headers before they arrived"

    def mining_goes_on() -> bool:
        withholder.answer_requests(withhold)
        return max(n.height for n in honest) >= start + 3

    wait_until(mining_goes_on, 30, "honest miners to find three more blocks")
    # The stall is held against the withholder, not against the honest peer that mines.
    for node, other in ((honest[0], "bravo"), (honest[1], "alpha")):
        assert peer_entry(node, "withholder")["score"] > 0, node.peers()
        assert peer_entry(node, other)["score"] == 0, node.peers()
    sync_blocks(honest)
