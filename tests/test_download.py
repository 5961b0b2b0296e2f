"""Block download, stalls, back-off and the synced decision, on the in-memory driver.

Node cores run over :class:`zcoin.memnet.VirtualNetwork`: no sockets, a virtual
clock, deterministic.  A :class:`ScriptedPeer` ("mallory") answers the way each
test needs: serving a chain only it has, stalling, withholding, lying about its
tip, or answering a request with the wrong type of reply.
"""

from __future__ import annotations

import pytest

from support.chain import Builder, add_all, open_chain
from zcoin import wire
from zcoin.config import NodeConfig
from zcoin.consensus.builders import new_template, solve
from zcoin.consensus.params import REGTEST
from zcoin.consensus.pow import block_work
from zcoin.consensus.primitives import Block
from zcoin.memnet import VirtualNetwork
from zcoin.peers import PENALTY_MALFORMED
from zcoin.wire import TOPIC_BLOCK

FAST = {"tip_interval_s": 0.5, "sync_grace_s": 0.5, "request_timeout_s": 1.0}


@pytest.fixture
def net():
    network = VirtualNetwork()
    try:
        yield network
    finally:
        network.close()


def add(net: VirtualNetwork, tmp_path, name: str, **config):
    return net.add_node(NodeConfig(name=name, params=REGTEST, data_dir=tmp_path / name, mine=False,
                                   **{**FAST, **config}))


def peer_score(core, name: str) -> int:
    peer = core.peers.get(name)
    return core.score(peer) if peer is not None else 0


def tip_reply(block: Block, height: int) -> bytes:
    return wire.encode("tip", node="mallory", height=height, hash=block.hash,
                       work=(block_work(block.header.bits) * (height + 1)).to_bytes(32, "big"))


class ChainScript:
    """Mallory's answers: its tip (``tips`` in turn), headers up to block ``headers`` (2), bodies unless ``stall``."""

    def __init__(self, chain: Builder) -> None:
        self.chain = chain
        self.tips: list[Block] | None = None  # None: block 2
        self.stall = True
        self.headers = 2
        self.tip_replies = 0
        self.asked_for_blocks: list[list[bytes]] = []

    def __call__(self, sender: str, msg: wire.Message) -> bytes | None:
        blocks = self.chain.blocks
        if msg.type == "get_tip":
            tips = self.tips or [blocks[2]]
            tip = tips[self.tip_replies % len(tips)]
            self.tip_replies += 1
            return tip_reply(tip, blocks.index(tip))
        if msg.type == "get_headers":
            return wire.encode("headers", headers=[b.header.serialize() for b in blocks[1:self.headers + 1]])
        if msg.type == "get_blocks":
            self.asked_for_blocks.append(msg["hashes"])
            if self.stall:
                return None
            by_hash = {b.hash: b.raw for b in blocks}
            return wire.encode("blocks", blocks=[by_hash[h] for h in msg["hashes"]])
        if msg.type == "get_mempool":
            return wire.encode("mempool", txids=[])
        return None


def serving(net, tmp_path, blocks: int, **config):
    """Node a, a chain of ``blocks`` blocks only mallory has, and mallory serving it."""
    a = add(net, tmp_path, "a", **config)
    theirs = Builder()
    theirs.mine_empty(blocks)
    script = ChainScript(theirs)
    mallory = net.add_scripted("mallory", script)
    return a, theirs, script, mallory


def stalled_once(net, a, script: ChainScript) -> None:
    """Mallory stalls on the first blocks a asks for, until a holds it against mallory."""
    net.run_until(lambda: peer_score(a, "mallory") > 0, what="a holds the stall against mallory")
    assert all(batch == [b.hash for b in script.chain.blocks[1:3]] for batch in script.asked_for_blocks)
    net.run_until(lambda: a.synced, what="a stops waiting for what mallory withholds")
    assert a.chain.height == 0 and a.chain.best_header.height == 2


def test_a_syncing_node_asks_for_more_blocks_as_each_reply_is_handled_not_a_turn_later(net, tmp_path):
    """While a reply is handled the next one is on its way: the room a reply frees is asked for
    at once (a sync that asked only at its next timer turn sat idle for a round trip each time)."""
    a, theirs, script, mallory = serving(net, tmp_path, 80)
    script.stall, script.tips, script.headers = False, [theirs.tip], 80
    net.link("a", "mallory").latency_s = 0.003
    net.link("mallory", "a").latency_s = 0.004
    asked_at: list[float] = []

    def timed(sender, msg):
        if msg.type == "get_blocks":
            asked_at.append(net.clock.now)
        return script(sender, msg)

    mallory.answer = timed
    net.run_until(lambda: a.chain.height == 80, what="a synced mallory's 80 blocks")
    assert len(asked_at) >= 5  # 16 blocks a request
    round_trip = 0.003 + 0.004  # mallory answers at once
    for later in asked_at[2:]:  # the first two go out together; each later one follows a reply's arrival
        assert any(abs(later - earlier - round_trip) < 1e-9 for earlier in asked_at), (later, asked_at)


def test_blocks_a_peer_stalled_on_are_asked_of_it_again_only_once_it_shows_more_work(net, tmp_path):
    """Mallory is the only source of its chain and stalls once: the node stops waiting (it is
    synced with what it can get, and holds the stall against mallory).  Naming other tips it
    already knows does not get mallory asked again; a block with more work does."""
    a, theirs, script, mallory = serving(net, tmp_path, 3)
    stalled_once(net, a, script)
    asked_before = len(script.asked_for_blocks)

    script.tips = [theirs.blocks[1], theirs.blocks[2]]  # flipping between tips a knows
    flips_from = script.tip_replies
    net.run_until(lambda: script.tip_replies >= flips_from + 4, what="four more tip rounds")
    assert len(script.asked_for_blocks) == asked_before and a.synced

    script.stall = False  # block 3 is more work (its proof of work is real): a asks again and gets it all
    mallory.gossip(TOPIC_BLOCK, "gossip_block", block=theirs.blocks[3].raw)
    net.run_until(lambda: a.chain.height == 3, what="a fetches mallory's chain once it showed more work")
    assert a.chain.tip.hash == theirs.tip.hash


def test_a_peer_that_stalled_is_asked_again_after_a_back_off_even_without_new_work(net, tmp_path):
    """An honest but slow peer, the only source of a chain it no longer extends, is not given up on."""
    a, theirs, script, _ = serving(net, tmp_path, 2, retry_after_stall_s=1.0)
    stalled_once(net, a, script)
    stalled_at = net.clock.now
    script.stall = False
    net.run_until(lambda: a.chain.height == 2, what="a asks mallory again after the back-off and takes its chain")
    assert net.clock.now - stalled_at >= 1.0 - 0.5  # not before the back-off (less what had run of it)
    assert a.chain.tip.hash == theirs.tip.hash
    assert peer_score(a, "mallory") > 0  # the stall still counted


def test_back_off_doubles_with_every_failure_to_deliver(net, tmp_path):
    a, theirs, script, _ = serving(net, tmp_path, 2, retry_after_stall_s=1.0)
    stalled_once(net, a, script)
    asks = []
    for _ in range(3):
        count = len(script.asked_for_blocks)
        net.run_until(lambda: len(script.asked_for_blocks) > count, what="mallory asked again")
        asks.append(net.clock.now)
    gaps = [later - earlier for earlier, later in zip(asks, asks[1:])]
    assert gaps[1] > 1.5 * gaps[0], gaps  # 1 s, 2 s, 4 s... plus the time each stall takes to show


def test_headers_from_a_withholder_do_not_outlive_a_restart_nor_hold_it_up(net, tmp_path):
    """Headers without bodies live in memory only: after a restart, with nobody claiming that
    chain, the node has forgotten them and calls itself synced (and would mine) on its own tip."""
    a, theirs, script, _ = serving(net, tmp_path, 2)
    stalled_once(net, a, script)
    assert a.chain.best_header.height == 2 and a.chain.height == 0
    net.remove("mallory")
    a = net.restart("a")
    net.run_until(lambda: a.synced, what="the restarted node synced on its own tip")
    assert a.chain.best_header.height == 0 and a.chain.height == 0


def test_headers_ahead_of_our_clock_are_taken_later_without_holding_it_against_the_peer(net, tmp_path):
    a, theirs, script, _ = serving(net, tmp_path, 1)
    ahead = int(net.clock.time()) + 3 * 3600  # past the two hours a block may be ahead of our clock
    theirs.blocks.append(solve(new_template(REGTEST, theirs.tip.hash, 2, REGTEST.genesis_bits, ahead,
                                            REGTEST.dev_pubkey(9))))
    script.stall = False
    net.run_until(lambda: a.chain.height == 1 and len(net.members["mallory"].asked("get_headers")) >= 3,
                  what="a takes block 1 and keeps asking for the header it found too new")
    assert a.chain.best_header.height == 1
    assert peer_score(a, "mallory") == 0


def test_a_claim_of_more_work_without_headers_neither_stops_a_synced_node_nor_is_asked_twice(net, tmp_path):
    a = add(net, tmp_path, "a")
    net.run_until(lambda: a.synced, what="a synced on its own chain")
    modest = wire.encode("tip", node="mallory", height=0, hash=bytes(range(32)), work=bytes(32))
    claim = wire.encode("tip", node="mallory", height=10**6, hash=bytes(range(32)), work=(2**200).to_bytes(32, "big"))
    replies = {"get_tip": modest, "get_mempool": wire.encode("mempool", txids=[])}
    mallory = net.add_scripted("mallory", lambda sender, msg: replies.get(msg.type))
    net.run_until(lambda: len(mallory.asked("get_tip")) >= 2 and a.synced, what="a synced with mallory as a peer")

    replies["get_tip"] = claim
    was_synced = []
    net.run_until(lambda: was_synced.append(a.synced) or peer_score(a, "mallory") > 0,
                  what="a penalises mallory for never sending headers")
    assert len(mallory.asked("get_headers")) == 1
    tips_from = len(mallory.asked("get_tip"))
    net.run_until(lambda: was_synced.append(a.synced) or len(mallory.asked("get_tip")) >= tips_from + 4,
                  what="four more tip rounds")
    assert len(mallory.asked("get_headers")) == 1  # the same unbacked claim is not chased again
    assert all(was_synced), "a costless claim made a synced node stop (it would stop mining)"


def test_a_reply_of_the_wrong_type_is_penalised_and_leaves_no_request_pending(net, tmp_path):
    """Mallory claims more work and answers get_headers with a tip: the reply is held against it,
    the headers request is closed (not left pending forever), and a node before its first sync
    does not wait on mallory for ever."""
    theirs = Builder()
    theirs.mine_empty(2)

    def answer(sender: str, msg: wire.Message) -> bytes | None:
        if msg.type in ("get_tip", "get_headers"):  # a tip, whatever was asked
            return tip_reply(theirs.tip, 2)
        return wire.encode("mempool", txids=[]) if msg.type == "get_mempool" else None

    mallory = net.add_scripted("mallory", answer)
    a = add(net, tmp_path, "a", request_timeout_s=60.0)  # no stall timeout comes to the rescue here
    net.run_until(lambda: mallory.asked("get_headers"), 5, "a asks mallory for headers")
    net.run_until(lambda: peer_score(a, "mallory") >= PENALTY_MALFORMED, 5, "the wrong reply penalised")
    # The request it answered is closed, so the claim is asked about again (a request left
    # pending would not be sent again before it timed out, and a would wait on it).
    net.run_until(lambda: len(mallory.asked("get_headers")) >= 2, 5, "headers asked of mallory again")
    net.run_until(lambda: a.synced, 10, "a synced despite mallory")
    assert a.chain.height == 0


def test_a_chain_longer_than_one_headers_reply_syncs_to_a_new_node(net, tmp_path):
    blocks = wire.MAX_HEADERS_PER_REPLY + 40
    builder = Builder()
    builder.mine_empty(blocks)
    (tmp_path / "a").mkdir()
    store, chain = open_chain(tmp_path / "a" / "chain.sqlite", synchronous="OFF")
    add_all(chain, builder.blocks)  # a's store, written before a starts
    store.close()
    a = add(net, tmp_path, "a")
    assert (a.chain.height, a.chain.tip.hash) == (blocks, builder.tip.hash)
    b = add(net, tmp_path, "b")
    net.run_until(lambda: b.chain.tip.hash == builder.tip.hash, 600, "b synced past one headers reply")
    assert b.chain.best_header.height == blocks


def test_blocks_reach_a_node_whose_gossip_is_all_lost(net, tmp_path):
    """Correctness never rests on gossip: with every announcement from a to b lost, b still gets
    a's blocks through the tip rounds."""
    a = add(net, tmp_path, "a")
    b = add(net, tmp_path, "b")
    net.link("a", "b").lose = lambda kind, payload: kind == "gossip"
    net.run_until(lambda: a.synced and b.synced, what="both synced")
    builder = Builder()
    builder.mine_empty(3)
    for block in builder.blocks[1:]:
        reply = net.request("a", "submit_block", block=block.raw)
        assert reply["accepted"], reply.fields
    net.run_until(lambda: b.chain.tip.hash == builder.tip.hash, what="b catches up without gossip")
    assert net.links[("a", "b")].lost >= 3  # the three announcements really were lost
