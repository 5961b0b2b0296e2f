"""The wallet that remembers: its file, its coin selection, and how it settles its payments with a node.

The file records every payment until it is confirmed deeply enough; writes are
atomic and keep mode 0600; version 1 files still load.  The node here is a
table of answers (:class:`ScriptedNode`), so every case of what a node may say
about a payment is checked without sockets; ``tests/test_cli.py`` runs
``zcoin send`` against real node processes.
"""

from __future__ import annotations

import json
import os
import stat

import pytest

from support.payments import dev_key, dev_outpoint, pay
from zcoin import wire
from zcoin.client import NodeError, NodeUnavailable
from zcoin.consensus.params import LOCAL
from zcoin.consensus.primitives import OutPoint, Transaction
from zcoin.payments import (
    PushOutcome,
    Settled,
    TxState,
    check_payments,
    push_new_payment,
    refresh_payments,
    settle_payments,
)
from zcoin.wallet import (
    CONFIRMED_DEPTH,
    InsufficientFunds,
    Payment,
    PaymentState,
    WalletError,
    build_payment,
    load_wallet,
    locked_wallet,
    new_wallet,
    rewrite_wallet,
    save_wallet,
)

PARAMS = LOCAL
NODE = "tcp://127.0.0.1:9101"
NOW = 1_700_000_000
PREMINE = PARAMS.dev_account_amount
BOB = PARAMS.dev_pubkey(1)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def premine_coins(account: int = 0) -> list[tuple[OutPoint, int]]:
    return [(dev_outpoint(PARAMS, account), PREMINE)]


def change_coin(tx: Transaction) -> tuple[OutPoint, int]:
    """The last output of ``tx`` (a payment's change) as a coin."""
    return OutPoint(tx.txid, len(tx.outputs) - 1), tx.outputs[-1].amount


def record(wallet, tx: Transaction, spent: int, conflict: str | None = None):
    return wallet.with_payment(Payment(tx, NOW, NODE, spent, conflict))


@pytest.fixture
def wallet():
    return new_wallet(PARAMS, 0)


@pytest.fixture
def path(tmp_path, wallet):
    path = tmp_path / "alice.json"
    save_wallet(wallet, path)
    return path


def a_payment(wallet, coins, amount: int = 5_000) -> Transaction:
    return build_payment(wallet, coins, BOB, amount)


# --- the file ----------------------------------------------------------------------------------


def test_every_write_is_mode_0600_whatever_the_umask_and_leaves_no_temporary_file(tmp_path, wallet):
    path = tmp_path / "w.json"
    old = os.umask(0)
    try:
        save_wallet(wallet, path)
        assert mode_of(path) == 0o600
        tx = a_payment(wallet, premine_coins())
        rewrite_wallet(record(wallet, tx, PREMINE), path)
        assert mode_of(path) == 0o600
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.json"]


def test_a_failed_rewrite_leaves_the_old_file_whole(path, wallet, monkeypatch):
    before = path.read_bytes()
    tx = a_payment(wallet, premine_coins())

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(WalletError, match="No space left on device"):
        rewrite_wallet(record(wallet, tx, PREMINE), path)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_new_wallet_never_replaces_a_file_without_force(path, wallet):
    other = new_wallet(PARAMS)
    with pytest.raises(WalletError, match="exists"):
        save_wallet(other, path)
    assert load_wallet(path) == wallet
    save_wallet(other, path, force=True)
    assert load_wallet(path) == other and mode_of(path) == 0o600


def test_without_hard_links_a_new_wallet_is_still_created_whole_and_never_replaces_a_file(tmp_path, wallet,
                                                                                         monkeypatch):
    def no_links(*args):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "w.json"
    save_wallet(wallet, path)
    assert load_wallet(path) == wallet and mode_of(path) == 0o600
    with pytest.raises(WalletError, match="exists"):
        save_wallet(new_wallet(PARAMS), path)
    assert load_wallet(path) == wallet
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.json"]


def test_a_version_1_file_loads_with_no_payments_and_is_rewritten_as_version_2(tmp_path, wallet):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"version": 1, "network": "local", "label": "dev 0",
                                "secret_key": wallet.secret_key.hex()}))
    old = load_wallet(path)
    assert old == wallet and old.payments == ()
    tx = a_payment(old, premine_coins())
    rewrite_wallet(record(old, tx, PREMINE), path)
    assert json.loads(path.read_text())["version"] == 2
    assert load_wallet(path).payments[0].tx == tx


def test_pending_and_conflicted_payments_round_trip_through_the_file(path, wallet):
    first = a_payment(wallet, premine_coins())
    second = pay([(dev_outpoint(PARAMS, 2), dev_key(2))], [PREMINE - 1_000], BOB)  # any transaction will do
    conflict = "ab" * 32
    recorded = record(record(wallet, first, PREMINE), second, PREMINE, conflict=conflict)
    rewrite_wallet(recorded, path)
    loaded = load_wallet(path)
    assert loaded == recorded
    assert [(p.txid, p.state, p.conflict) for p in loaded.payments] == [
        (first.txid_hex, PaymentState.PENDING, None), (second.txid_hex, PaymentState.CONFLICTED, conflict)]
    assert [p["state"] for p in json.loads(path.read_text())["payments"]] == ["pending", "conflicted"]


def test_a_payment_record_whose_transaction_does_not_match_its_txid_is_refused(path, wallet):
    tx = a_payment(wallet, premine_coins())
    rewrite_wallet(record(wallet, tx, PREMINE), path)
    document = json.loads(path.read_text())
    document["payments"][0]["txid"] = "00" * 32
    path.write_text(json.dumps(document))
    with pytest.raises(WalletError, match="not a zcoin wallet file"):
        load_wallet(path)


def test_a_second_command_waits_for_the_lock_then_gives_up_in_one_line(path):
    with locked_wallet(path):
        with pytest.raises(WalletError, match="in use by another zcoin command"):
            with locked_wallet(path, timeout_s=0.1):
                raise AssertionError("the lock was taken twice")
    with locked_wallet(path, timeout_s=0.1):
        assert path.exists()


# --- coin selection ----------------------------------------------------------------------------


def test_coin_selection_never_spends_what_a_pending_payment_spends_and_chains_on_its_change(wallet):
    first = a_payment(wallet, premine_coins())
    pending = record(wallet, first, PREMINE)
    assert pending.reserved() == {dev_outpoint(PARAMS, 0)}
    # The node lists the premine again (it does not know the first payment) and, say, its change.
    second = a_payment(pending, [*premine_coins(), change_coin(first)])
    assert [i.prev for i in second.inputs] == [change_coin(first)[0]]
    with pytest.raises(InsufficientFunds, match=f"{PREMINE} more is held by pending payments"):
        a_payment(pending, premine_coins())


def test_a_conflicted_payment_releases_its_coins(wallet):
    first = a_payment(wallet, premine_coins())
    conflicted = record(wallet, first, PREMINE).with_conflict(first.txid_hex, "cd" * 32)
    assert conflicted.reserved() == frozenset()
    assert [i.prev for i in a_payment(conflicted, premine_coins()).inputs] == [dev_outpoint(PARAMS, 0)]


# --- settling with a node ----------------------------------------------------------------------


def accepted(tx: Transaction) -> wire.Message:
    return wire.Message("tx_result", {"accepted": True, "txid": tx.txid_hex})


class ScriptedNode:
    """A node's api as a table of answers: what ``get_tx`` says per txid, what a push gets, coins and history.

    ``push`` maps a pushed transaction to a reply, or raises what the client would.
    """

    def __init__(self, states=None, *, push=accepted, coins=(), history=(), confirmed=()) -> None:
        self.states = {txid: dict(fields) for txid, fields in (states or {}).items()}
        self.push = push
        self.coins = [{"txid": op.txid, "index": op.index, "amount": amount, "height": 0, "confirmed": True}
                      for op, amount in coins]
        self.history = list(history)  # (txid, height, received, spent)
        self.confirmed = {tx.txid: tx for tx in confirmed}  # what a verbose get_tx returns
        self.pushed: list[Transaction] = []

    def request(self, msg_type: str, **fields) -> wire.Message:
        return getattr(self, f"on_{msg_type}")(**fields)

    def on_get_tx(self, txid: bytes, verbose: bool = False) -> wire.Message:
        fields = self.states.get(txid, {"state": "unknown"})
        if verbose and txid in self.confirmed:
            fields = {**fields, "tx": self.confirmed[txid].raw}
        return wire.Message("tx_status", fields)

    def on_push_tx(self, tx: bytes) -> wire.Message:
        parsed = Transaction.parse(tx)
        self.pushed.append(parsed)
        return self.push(parsed)

    def on_get_utxos(self, pubkey: bytes) -> wire.Message:
        return wire.Message("utxos", {"height": 10, "coins": self.coins})

    def on_get_history(self, pubkey: bytes) -> wire.Message:
        return wire.Message("history", {"height": 10, "items": [
            {"txid": txid, "height": height, "received": received, "spent": spent}
            for txid, height, received, spent in self.history]})


def confirmed(confirmations: int, height: int = 3) -> dict:
    return {"state": "confirmed", "height": height, "confirmations": confirmations}


def test_a_refused_push_removes_the_record(path, wallet):
    tx = a_payment(wallet, premine_coins())

    def refuse(tx):
        return wire.Message("tx_result", {"accepted": False, "txid": tx.txid_hex, "reason": "fee too low",
                                          "code": "min-relay-fee-not-met"})

    result = push_new_payment(ScriptedNode(push=refuse), wallet, str(path), Payment(tx, NOW, NODE, PREMINE))
    assert (result.outcome, result.code, result.reason) == (PushOutcome.REFUSED, "min-relay-fee-not-met",
                                                            "fee too low")
    assert load_wallet(path).payments == () == result.wallet.payments


@pytest.mark.parametrize("reason", ["syncing", "isolated"])
def test_a_node_that_serves_no_payments_now_is_a_refusal(path, wallet, reason):
    tx = a_payment(wallet, premine_coins())

    def not_now(tx):
        raise NodeError(reason, "try later")

    result = push_new_payment(ScriptedNode(push=not_now), wallet, str(path), Payment(tx, NOW, NODE, PREMINE))
    assert (result.outcome, result.code) == (PushOutcome.REFUSED, reason)
    assert load_wallet(path).payments == ()


def test_a_push_with_no_answer_keeps_the_payment_pending_and_its_coins_reserved(path, wallet):
    tx = a_payment(wallet, premine_coins())
    seen_in_file = []

    def no_answer(tx):
        seen_in_file.append([p.txid for p in load_wallet(path).payments])
        raise NodeUnavailable("no answer within 5s")

    result = push_new_payment(ScriptedNode(push=no_answer), wallet, str(path), Payment(tx, NOW, NODE, PREMINE))
    assert result.outcome is PushOutcome.UNKNOWN
    assert seen_in_file == [[tx.txid_hex]], "recorded before the push"
    assert load_wallet(path).payments == result.wallet.payments
    assert load_wallet(path).reserved() == {dev_outpoint(PARAMS, 0)}


def chain_of_payments(wallet, count: int) -> tuple[object, list[Transaction]]:
    """``count`` payments, each spending the change of the one before, recorded in order."""
    txs, coins = [], premine_coins()
    for _ in range(count):
        tx = a_payment(wallet, coins)
        wallet = record(wallet, tx, sum(v for _, v in coins))
        txs.append(tx)
        coins = [change_coin(tx)]
    return wallet, txs


def test_refresh_forgets_deep_payments_keeps_shallow_and_pooled_ones_and_marks_what_the_node_calls_conflicted(
        wallet):
    recorded, (deep, shallow, pooled, dropped) = chain_of_payments(wallet, 4)
    node = ScriptedNode({deep.txid: confirmed(CONFIRMED_DEPTH), shallow.txid: confirmed(CONFIRMED_DEPTH - 1),
                         pooled.txid: {"state": "mempool"},
                         dropped.txid: {"state": "conflicted", "conflict": "ef" * 32}})
    refreshed, settlements = refresh_payments(node, recorded)
    assert [s.settled for s in settlements] == [Settled.FORGOTTEN, Settled.KEPT, Settled.KEPT, Settled.CONFLICTED]
    assert [(p.txid, p.conflict) for p in refreshed.payments] == [
        (shallow.txid_hex, None), (pooled.txid_hex, None), (dropped.txid_hex, "ef" * 32)]
    assert node.pushed == []
    assert "conflicted by " + "ef" * 32 in settlements[-1].note


def test_refresh_re_pushes_payments_the_node_does_not_know_parents_first(wallet):
    recorded, txs = chain_of_payments(wallet, 3)
    node = ScriptedNode(coins=premine_coins())  # knows none of them; the premine unspent
    refreshed, settlements = refresh_payments(node, recorded)
    assert node.pushed == txs
    assert [s.settled for s in settlements] == [Settled.REPUSHED] * 3
    assert refreshed == recorded


def test_a_re_push_the_node_refuses_keeps_the_payment_pending_and_a_node_still_syncing_stops_the_send(wallet):
    recorded, (tx,) = chain_of_payments(wallet, 1)

    def conflict(tx):
        return wire.Message("tx_result", {"accepted": False, "txid": tx.txid_hex, "reason": "spent in the pool",
                                          "code": "txn-mempool-conflict"})

    refreshed, (settlement,) = refresh_payments(ScriptedNode(push=conflict), recorded)
    assert settlement.settled is Settled.NOT_REPUSHED and refreshed == recorded
    assert "spent in the pool" in settlement.note and "stays pending" in settlement.note

    def syncing(tx):
        raise NodeError("syncing", "")

    with pytest.raises(NodeError, match="syncing"):
        refresh_payments(ScriptedNode(push=syncing), recorded)


def test_an_unknown_payment_whose_coin_a_confirmed_transaction_spent_is_conflicted_with_its_children(path, wallet):
    recorded, (parent, child) = chain_of_payments(wallet, 2)
    rival = pay([(dev_outpoint(PARAMS, 0), dev_key(0))], [PREMINE - 2_000], PARAMS.dev_pubkey(3))
    node = ScriptedNode({rival.txid: confirmed(2, height=7)}, history=[(rival.txid, 7, 0, PREMINE)],
                        confirmed=[rival])
    views = check_payments(node, recorded)
    assert [(v.state, v.conflict) for v in views] == [(TxState.CONFLICTED, rival.txid_hex)] * 2
    refreshed, settlements = settle_payments(node, recorded, str(path))
    assert node.pushed == []
    assert [s.settled for s in settlements] == [Settled.CONFLICTED] * 2
    assert load_wallet(path) == refreshed and refreshed.reserved() == frozenset()
    assert [p.conflict for p in refreshed.payments] == [rival.txid_hex] * 2
