"""No acknowledged payment is ever lost (issue 14): one wallet pays through a cluster while faults happen.

The issue found five ways to lose a payment by using the cluster as a user
does: three miners, trackers, and payments from ONE wallet file sent with
``zcoin send`` round-robin to the miners while something goes wrong.  Each
test here does the same with real processes on ``regtest`` - one ``zcoin send``
per payment, a receiver wallet of its own - and checks the promises of
``zcoin send``'s exit status (:func:`assert_no_payment_lost`):

- exit 0 (acknowledged): the payment ends confirmed on every miner;
- exit 3 (outcome unknown): confirmed at most once, and never beside a second
  payment of the same coins;
- exit 1 (refused, or no payment made): it never confirms;
- the receiver's balance (``zcoin wallet balance --json`` from one miner, the
  same coins from the others' api) is exactly the sum of the payments the chain
  confirmed, and every confirmed payment to it is one the user was told about
  (exit 0 or 3) with the amount the user asked.

The cases: a miner ``kill -9``'d and restarted within its lease relays what it
acknowledges while payments reach its peers during its restart (cases 2 and
3), and restarted with every tracker down, on a chain the others have left
behind, it refuses (case 1); a miner frozen with SIGSTOP between the coin
lookup and the push, the user retrying through another miner, the frozen one
waking and mining the first payment (case 4); a 2|1 partition whose isolated
side refuses, the minority's longer chain winning at the heal (case 5); and a
new miner that meets a restarted tracker while the miners that know the chain
are frozen: the tracker lists them from its state file, so the new miner knows
it has not synced and refuses (case 1 again).

Miners mine ``on-demand`` (the request ``zcoin generate`` sends) where the
test decides when blocks come, and one miner mines ``interval:0.5`` where the
chain must move during the faults.  Wallet files are written as ``zcoin wallet
new`` writes them; every payment is a ``zcoin send`` process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass

from framework import (FunctionalCluster, MinerNode, assert_confirmed_once_everywhere, confirmed_txids,
                       disconnect, reconnect, sync_blocks, sync_mempools, wait_connected)
from framework import cluster  # noqa: F401  (a fixture: tests take it by name)
from support.waiting import TIMEOUT_FACTOR, wait_until
from zcoin.client import NodeError
from zcoin.consensus.params import network
from zcoin.consensus.primitives import Block, OutPoint, Transaction
from zcoin.wallet import encode_address, load_wallet, new_wallet, save_wallet

NETWORK = "regtest"
ON_DEMAND = ("--mining", "on-demand")
EVERY_HALF_SECOND = ("--mining", "interval:0.5")
SEND_TIMEOUT_S = 2.0 * TIMEOUT_FACTOR  # `zcoin send --timeout`: per request to the node
FIRST_AMOUNT = 10_000  # each payment pays one more base unit than the last, so amounts name payments
RELAY_TIMEOUT_S = 10.0
SETTLE_TIMEOUT_S = 30.0
MAX_PAYMENTS_PER_PHASE = 12  # a bound on every "pay until ..." loop

# `zcoin send` in a process whose miner freezes (SIGSTOP) at the one instant that makes the outcome unknown:
# after the node answered the coin lookup, just before the new payment is recorded and pushed.  Everything
# else is the real command; the tests cannot otherwise land a signal in that window of a few milliseconds.
SEND_FREEZING_THE_NODE = """\
import os, signal, sys
import zcoin.payments
from zcoin.cli import main

frozen_pid = int(sys.argv[1])
record_and_push = zcoin.payments.push_new_payment

def freeze_then_record_and_push(*args, **kwargs):
    os.kill(frozen_pid, signal.SIGSTOP)
    return record_and_push(*args, **kwargs)

zcoin.payments.push_new_payment = freeze_then_record_and_push
sys.argv = ["zcoin", *sys.argv[2:]]
main()
"""


def internal(txid: str) -> bytes:
    """A display txid (as ``zcoin send`` prints it) in the byte order of the api."""
    return bytes.fromhex(txid)[::-1]


@dataclass(frozen=True, slots=True)
class Send:
    """One ``zcoin send`` and what it told the user."""

    node: str
    amount: int
    returncode: int  # 0 acknowledged, 1 refused (or no payment made), 3 outcome unknown
    stderr: str
    txid: str | None = None  # printed with exit 0 and 3
    tx: Transaction | None = None  # the signed payment, as the wallet file recorded it

    def __str__(self) -> str:
        return f"send {self.amount} via {self.node}: exit {self.returncode} {self.txid or ''} {self.stderr.strip()}"


class User:
    """A person with one wallet file paying one receiver, one ``zcoin send`` per payment."""

    def __init__(self, cluster: FunctionalCluster) -> None:
        self.cluster = cluster
        params = network(NETWORK)
        self.wallet = cluster.tmp_path / "alice.json"  # the files `zcoin wallet new [--dev 0]` writes
        save_wallet(new_wallet(params, 0), self.wallet)
        self.receiver_wallet = cluster.tmp_path / "bob.json"
        save_wallet(new_wallet(params), self.receiver_wallet)
        self.receiver_pubkey = load_wallet(self.receiver_wallet).pubkey
        self.receiver = encode_address(self.receiver_pubkey, params)
        self.sends: list[Send] = []

    def _send_args(self, node: MinerNode, amount: int) -> list[str]:
        return ["send", "--node", node.api, "--wallet", str(self.wallet), "--to", self.receiver,
                "--amount", str(amount), "--json", "--timeout", f"{SEND_TIMEOUT_S:g}"]

    def pay(self, node: MinerNode) -> Send:
        """``zcoin send`` through ``node``."""
        amount = FIRST_AMOUNT + len(self.sends)
        return self._record(node, amount, self.cluster.cli(*self._send_args(node, amount)))

    def pay_while_freezing(self, node: MinerNode) -> Send:
        """``zcoin send`` through ``node``, which freezes between answering the coin lookup and the push."""
        amount = FIRST_AMOUNT + len(self.sends)
        command = [sys.executable, "-c", SEND_FREEZING_THE_NODE, str(node.proc.pid), *self._send_args(node, amount)]
        return self._record(node, amount, subprocess.run(command, capture_output=True, text=True, timeout=30,
                                                         stdin=subprocess.DEVNULL))

    def _record(self, node: MinerNode, amount: int, result: subprocess.CompletedProcess) -> Send:
        assert result.returncode in (0, 1, 3) and "Traceback" not in result.stderr, \
            f"zcoin send via {node.name} failed: exit {result.returncode}\n{result.stderr}"
        txid = tx = None
        if result.returncode in (0, 3):
            txid = json.loads(result.stdout)["txid"]
            payment = load_wallet(self.wallet).payment(txid)
            assert payment is not None, f"payment {txid} (exit {result.returncode}) is not in the wallet file"
            tx = payment.tx
        send = Send(node.name, amount, result.returncode, result.stderr, txid, tx)
        self.sends.append(send)
        return send

    def pay_until_acknowledged_by(self, target: MinerNode, nodes: list[MinerNode]) -> Send:
        """Pay round-robin through ``nodes`` (``target`` first) until ``target`` acknowledges a payment."""
        for n in range(MAX_PAYMENTS_PER_PHASE):
            node = nodes[n % len(nodes)]
            send = self.pay(node)
            if node is target and send.returncode == 0:
                return send
        raise AssertionError(f"{target.name} acknowledged none of {MAX_PAYMENTS_PER_PHASE} payments:\n"
                             + "\n".join(map(str, self.sends[-MAX_PAYMENTS_PER_PHASE:])))

    def receiver_balance(self, node: MinerNode) -> dict | None:
        """``zcoin wallet balance --json`` of the receiver, asked of ``node`` (None when it refuses now)."""
        result = self.cluster.cli("wallet", "balance", "--wallet", str(self.receiver_wallet), "--node", node.api,
                                  "--json", "--timeout", f"{SEND_TIMEOUT_S:g}")
        return json.loads(result.stdout) if result.returncode == 0 else None


def wait_known_everywhere(nodes: list[MinerNode], send: Send) -> None:
    """The payment reaches every node of ``nodes`` (pool or chain) with no other send to help it along."""
    txid = internal(send.txid)
    wait_until(lambda: all(n.tx_state(txid)[0] in ("mempool", "confirmed") for n in nodes), RELAY_TIMEOUT_S,
               f"payment {send.txid} acknowledged by {send.node} relayed to {[n.name for n in nodes]}")


def confirm_everything(miner: MinerNode, nodes: list[MinerNode]) -> None:
    """Relay settles (one pool everywhere), ``miner`` mines one block over it, and every pool empties."""
    sync_mempools(nodes)
    miner.generate()
    sync_blocks(nodes)
    wait_until(lambda: not any(n.mempool() for n in nodes), SETTLE_TIMEOUT_S, "every mempool empty")


def wait_mined_out(nodes: list[MinerNode]) -> None:
    """With a miner mining on its own: wait until the nodes share a tip and every pool is empty."""

    def one_tip_and_empty_pools() -> bool:
        return not any(n.mempool() for n in nodes) and len({n.tip() for n in nodes}) == 1

    wait_until(one_tip_and_empty_pools, SETTLE_TIMEOUT_S, "one tip and empty pools everywhere")


def payments_to(pubkey: bytes, chain: list[Block]) -> dict[str, int]:
    """Display txid -> amount paid to ``pubkey``, for every confirmed transaction paying it."""
    paid = {}
    for block in chain:
        for tx in block.txs[1:]:
            amount = sum(o.amount for o in tx.outputs if o.pubkey == pubkey)
            if amount:
                paid[tx.txid_hex] = amount
    return paid


def assert_no_acknowledged_payment_conflicted(user: User, nodes: list[MinerNode]) -> None:
    """No node dropped an acknowledged payment because a confirmed transaction spent its coins: lost for good."""
    conflicted = {(s.txid, n.name): reply["conflict"] for s in user.sends if s.returncode == 0 for n in nodes
                  if (reply := n.rpc("get_tx", txid=internal(s.txid)))["state"] == "conflicted"}
    assert not conflicted, f"acknowledged payments dropped for a confirmed conflict, (txid, node): by: {conflicted}"


def assert_no_payment_lost(user: User, nodes: list[MinerNode]) -> None:
    """The issue's promises for every send ``user`` made, on the chain every node agrees on (module docstring)."""
    acknowledged = [s for s in user.sends if s.returncode == 0]
    unknown = [s for s in user.sends if s.returncode == 3]
    assert acknowledged, "no payment was acknowledged: the scenario did not run"
    assert_no_acknowledged_payment_conflicted(user, nodes)
    chain = assert_confirmed_once_everywhere(nodes, [internal(s.txid) for s in acknowledged], SETTLE_TIMEOUT_S)

    told = {s.txid: s for s in user.sends if s.txid is not None}
    paid = payments_to(user.receiver_pubkey, chain)
    stray = sorted(set(paid) - set(told))
    assert not stray, f"confirmed payments the user was told were refused (or never told of): {stray}"
    wrong = {txid: (amount, told[txid].amount) for txid, amount in paid.items() if amount != told[txid].amount}
    assert not wrong, f"confirmed amounts differ from what the user asked (paid, asked): {wrong}"

    spender = {i.prev: tx.txid_hex for block in chain for tx in block.txs[1:] for i in tx.inputs}
    where = confirmed_txids(chain)
    for send in unknown:
        assert len(where.get(send.tx.txid, [])) <= 1, f"{send} confirmed more than once"
        rivals = {spender[i.prev] for i in send.tx.inputs if i.prev in spender} - {send.txid}
        assert not rivals, f"{send}: its coins were paid again by {rivals}"

    expected = sum(paid.values())
    first = nodes[0]
    balance = wait_until(lambda: user.receiver_balance(first), SETTLE_TIMEOUT_S,
                         f"the receiver's balance from {first.name}")
    assert (balance["confirmed"], balance["pending"]) == (expected, 0), \
        f"{first.name}: receiver balance {balance}, the chain confirmed {expected} in {len(paid)} payments"
    for node in nodes[1:]:  # the same coins from every other node (its api: quicker than a command each)
        coins = wait_until(lambda node=node: coins_of(node, user.receiver_pubkey), SETTLE_TIMEOUT_S,
                           f"the receiver's coins from {node.name}")
        assert sum(c["amount"] for c in coins) == expected and all(c["confirmed"] for c in coins), \
            f"{node.name}: receiver coins {coins}, the chain confirmed {expected} in {len(paid)} payments"


def coins_of(node: MinerNode, pubkey: bytes) -> list[dict] | None:
    """The coins ``node`` lists for ``pubkey`` (None while it refuses to answer for coins)."""
    try:
        return node.rpc("get_utxos", pubkey=pubkey)["coins"]
    except NodeError:
        return None


def outpoints(send: Send) -> set[OutPoint]:
    """The coins a payment spends."""
    return {i.prev for i in send.tx.inputs}


# --- the cases --------------------------------------------------------------------------------------


def test_a_restarted_miner_refuses_a_stale_view_and_relays_what_it_acknowledges_once_synced(cluster):
    """Cases 1-3: kill -9 and restart a miner while paying round-robin, within its lease and with the trackers down."""
    first_tracker, second_tracker = cluster.add_tracker("tracker1"), cluster.add_tracker("tracker2")
    common = {"network_name": NETWORK, "wait": False}
    alpha = cluster.add_miner("alpha", extra=ON_DEMAND, **common)
    bravo = cluster.add_miner("bravo", extra=EVERY_HALF_SECOND, **common)  # the chain moves during the faults
    charlie = cluster.add_miner("charlie", extra=ON_DEMAND, **common)
    miners = [m.wait_started() for m in (alpha, bravo, charlie)]
    wait_connected(miners)
    user = User(cluster)
    for miner in miners:
        user.pay(miner)

    # Cases 2 and 3: alpha dies and comes back within its lease (its peers never see it leave) while
    # payments go on; what it acknowledges once synced reaches its peers with no later send to carry it.
    alpha.kill()
    user.pay(bravo)
    alpha.restart()
    first = user.pay_until_acknowledged_by(alpha, miners)
    wait_known_everywhere([bravo, charlie], first)

    # Case 1: with every tracker down, alpha restarts on the chain it had (bravo mines on meanwhile, and
    # the wallet forgets payments 6 blocks deep): it refuses rather than answer for coins from it.
    first_tracker.kill()
    second_tracker.kill()
    alpha.kill()
    user.pay(charlie)
    user.pay(bravo)
    alpha.restart()
    stale = user.pay(alpha)
    assert stale.returncode == 1 and "syncing" in stale.stderr, stale
    assert alpha.status()["height"] < bravo.status()["height"], "alpha was not behind: the case did not happen"

    # A tracker comes back (the other stays dead) with the members it had: the miners are whole again,
    # alpha serves again and relays what it takes.
    first_tracker.restart()
    wait_connected(miners)
    again = user.pay_until_acknowledged_by(alpha, miners)
    wait_known_everywhere([bravo, charlie], again)

    wait_mined_out(miners)
    assert_no_payment_lost(user, miners)


def test_a_push_the_frozen_miner_never_answered_is_re_pushed_not_paid_again_when_the_user_retries(cluster):
    """Case 4: SIGSTOP a miner during a send (exit 3), retry through another (exit 0), SIGCONT, it mines."""
    cluster.add_tracker()
    miners = cluster.add_miners(["alpha", "bravo", "charlie"], network_name=NETWORK, extra=ON_DEMAND)
    alpha, bravo, charlie = miners
    wait_connected(miners)
    user = User(cluster)
    assert user.pay(bravo).returncode == 0
    try:
        unknown = user.pay_while_freezing(alpha)
        assert unknown.returncode == 3 and "outcome unknown" in unknown.stderr, unknown
        retry = user.pay(bravo)
        assert retry.returncode == 0, retry
        assert f"re-pushed pending payment {unknown.txid}" in retry.stderr, retry
        assert not outpoints(retry) & outpoints(unknown), "the retry spends the coins of the unknown payment"
    finally:
        alpha.proc.proc.send_signal(signal.SIGCONT)

    # The frozen miner wakes with the push still queued, and mines the payment it never answered for.
    wait_until(lambda: alpha.tx_state(internal(unknown.txid))[0] == "mempool", RELAY_TIMEOUT_S,
               "the woken miner holding the payment it never answered for")
    (mined,) = alpha.generate()
    block, _ = alpha.block_by_hash(mined)
    assert internal(unknown.txid) in {tx.txid for tx in block.txs}, "the woken miner did not mine it"
    confirm_everything(charlie, miners)
    assert_no_payment_lost(user, miners)


def test_payments_through_both_sides_of_a_partition_the_isolated_side_refuses_and_none_is_lost(cluster):
    """Case 5: a 2|1 partition; the minority refuses (exit 1) and mines the longer chain; heal; nothing lost."""
    cluster.add_tracker()
    miners = cluster.add_miners(["alpha", "bravo", "charlie"], network_name=NETWORK, extra=ON_DEMAND)
    alpha, bravo, charlie = miners
    wait_connected(miners)
    user = User(cluster)
    assert user.pay(charlie).returncode == 0

    disconnect(charlie, alpha)
    disconnect(charlie, bravo)
    for node in miners:
        send = user.pay(node)
        if node is charlie:
            assert send.returncode == 1 and "isolated" in send.stderr, send
        else:
            assert send.returncode == 0, send
    # Each side mines; the minority's chain is the longer one, so the majority's confirmed payments
    # are undone at the heal and must come back and be confirmed again.
    alpha.generate()
    charlie.generate(2)

    reconnect(charlie, alpha)
    reconnect(charlie, bravo)
    wait_connected(miners)
    sync_blocks(miners)
    for node in (charlie, alpha):
        send = user.pay(node)
        assert send.returncode == 0, send
    confirm_everything(bravo, miners)
    assert_no_payment_lost(user, miners)


def test_a_new_miner_meeting_a_restarted_tracker_while_the_chain_is_frozen_refuses_until_synced(cluster):
    """Case 1 with a new miner: the tracker dies and comes back while every miner that knows the chain is
    frozen (SIGSTOP); a new miner joins it, hears of the frozen members from the tracker's state file and
    refuses the payment (its height-0 view would spend coins already spent), then serves once they wake."""
    config = cluster.tmp_path / "tracker.toml"
    config.write_text("[tracker]\nlease_s = 20.0\n")  # the new miner must meet the frozen members listed
    tracker = cluster.add_tracker(extra=("--config", str(config)))
    miners = cluster.add_miners(["alpha", "bravo"], network_name=NETWORK, extra=ON_DEMAND)
    alpha, bravo = miners
    wait_connected(miners)
    user = User(cluster)
    assert user.pay(alpha).returncode == 0
    confirm_everything(bravo, miners)
    assert user.pay(bravo).returncode == 0

    frozen = [alpha, bravo]
    for miner in frozen:
        miner.proc.proc.send_signal(signal.SIGSTOP)
    try:
        tracker.restart()
        delta = cluster.add_miner("delta", network_name=NETWORK, extra=ON_DEMAND)
        refused = user.pay(delta)
        assert refused.returncode == 1 and "syncing" in refused.stderr, refused
        assert delta.status()["height"] == 0 and not delta.status()["synced"]
    finally:
        for miner in frozen:
            miner.proc.proc.send_signal(signal.SIGCONT)

    nodes = [alpha, bravo, delta]
    wait_connected(nodes)
    sync_blocks(nodes)
    served = user.pay_until_acknowledged_by(delta, nodes)
    wait_known_everywhere([alpha, bravo], served)
    confirm_everything(alpha, nodes)
    assert_no_payment_lost(user, nodes)
