"""Payments that are never lost: recorded before they are pushed, settled against a node before the next one.

A wallet that pushes a payment and hears nothing cannot tell whether the node
took it.  Paying again from other coins may pay twice; paying again from the
same coins makes two payments that conflict.  So, as Bitcoin Core's wallet
keeps its own transactions and rebroadcasts the unconfirmed ones
(``ResendWalletTransactions``), zcoin's wallet file records every payment until
it is :data:`~zcoin.wallet.CONFIRMED_DEPTH` blocks deep, and this module keeps
that record true:

- :func:`push_new_payment` records the signed payment as pending in the wallet
  file *before* pushing it.  The node's answer is a :class:`PushOutcome`:
  acknowledged (it stays pending until confirmed deeply enough), refused (the
  node never had it: the record is removed) or unknown (no answer: it stays
  pending, its coins reserved).
- :func:`check_payments` asks the node what became of each recorded payment
  (:class:`PaymentView`) without changing anything: in the mempool, confirmed,
  conflicted (a confirmed transaction spent the same coins: the node says so,
  the wallet's confirmed history shows it, or the payment spends the change of
  a conflicted one), or unknown to the node.
- :func:`refresh_payments` (:func:`settle_payments` saves it) acts on that
  before every new payment: deep enough → forgotten; conflicted → marked, its
  coins released; unknown → pushed again, oldest first, so a payment reaches the
  node before the ones spending its change.
- :func:`pay` then builds the new payment from the coins the node lists, less
  those the pending payments spend, and hands it to :func:`push_new_payment`.

Only the wallet's own key spends its coins, so every transaction that
conflicts with one of its payments is in the history of its own address.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum

from zcoin.client import NodeClient, NodeError, NodeUnavailable
from zcoin.consensus.primitives import OutPoint, Transaction
from zcoin.wallet import CONFIRMED_DEPTH, Payment, PaymentState, Wallet, build_payment, rewrite_wallet

UNSERVED = frozenset({"syncing", "isolated"})  # refusals that say "not now, not here", never "not this payment"
ALREADY_THERE = frozenset({"txn-already-known", "txn-already-in-chain"})  # a re-push the node had already


class TxState(StrEnum):
    """Where a node says a transaction is (the ``state`` of its ``tx_status`` reply)."""

    MEMPOOL = "mempool"
    CONFIRMED = "confirmed"
    CONFLICTED = "conflicted"  # dropped: a confirmed transaction spent the same coins
    UNKNOWN = "unknown"


class PushOutcome(StrEnum):
    """What a push of a new payment came to."""

    ACKNOWLEDGED = "acknowledged"  # the node took it: it stays pending until confirmed deeply enough
    REFUSED = "refused"  # the node said no: it never existed, its record is gone
    UNKNOWN = "unknown"  # no answer: it stays pending and is re-pushed, never rebuilt from the same coins


class Settled(StrEnum):
    """What :func:`refresh_payments` did with one recorded payment."""

    KEPT = "kept"
    FORGOTTEN = "forgotten"  # confirmed deeply enough
    CONFLICTED = "conflicted"  # newly marked
    REPUSHED = "re-pushed"
    NOT_REPUSHED = "not re-pushed"  # the node refused it again; it stays pending


@dataclass(frozen=True, slots=True)
class PaymentView:
    """One recorded payment and what the node says of it."""

    payment: Payment
    state: TxState
    height: int | None = None
    confirmations: int | None = None
    conflict: str | None = None  # display txid of the confirmed transaction that spent the same coins


@dataclass(frozen=True, slots=True)
class Settlement:
    """One payment :func:`refresh_payments` looked at, what it did, and why when that needs saying."""

    view: PaymentView
    settled: Settled
    detail: str = ""

    @property
    def note(self) -> str | None:
        """The line a user is told about it, if any."""
        txid = self.view.payment.txid
        if self.settled is Settled.REPUSHED:
            return f"re-pushed pending payment {txid}"
        if self.settled is Settled.CONFLICTED:
            return f"payment {txid} is conflicted by {self.view.conflict}: it can never confirm; its coins are released"
        if self.settled is Settled.NOT_REPUSHED:
            return (f"pending payment {txid} was not re-pushed ({self.detail}); it stays pending and its coins "
                    "stay reserved")
        return None


def check_payments(client: NodeClient, wallet: Wallet) -> list[PaymentView]:
    """What became of each of ``wallet``'s recorded payments, oldest first; changes nothing."""
    views = []
    for payment in wallet.payments:
        if payment.state is PaymentState.CONFLICTED:
            views.append(PaymentView(payment, TxState.CONFLICTED, conflict=payment.conflict))
            continue
        reply = client.request("get_tx", txid=payment.tx.txid)
        try:
            state = TxState(reply["state"])
        except ValueError:
            raise NodeError("bad-reply", f"unknown transaction state {reply['state']!r}") from None
        if state is TxState.CONFLICTED and not reply.get("conflict"):
            state = TxState.UNKNOWN  # dropped for a reason it does not name: look for the conflict ourselves
        views.append(PaymentView(payment, state, reply.get("height"), reply.get("confirmations"),
                                 reply.get("conflict")))
    unknown = [v.payment for v in views if v.state is TxState.UNKNOWN]
    found = _confirmed_conflicts(client, wallet, unknown) if unknown else {}
    conflicted: dict[bytes, str] = {}  # txid -> what it conflicts with, for payments spending its change
    for n, view in enumerate(views):
        if view.state is TxState.UNKNOWN:
            inherited = next((conflicted[i.txid] for i in view.payment.inputs if i.txid in conflicted), None)
            conflict = inherited or found.get(view.payment.txid)
            if conflict is not None:
                views[n] = view = dataclasses.replace(view, state=TxState.CONFLICTED, conflict=conflict)
        if view.state is TxState.CONFLICTED:
            conflicted[view.payment.tx.txid] = view.conflict
    return views


def _confirmed_conflicts(client: NodeClient, wallet: Wallet, payments: list[Payment]) -> dict[str, str]:
    """For each of ``payments`` one of whose coins a confirmed transaction spent: that transaction's txid.

    Coins the node still lists as unspent, and the change of ``payments``
    themselves (the parent's fate decides), need no search; the others are looked
    for in the confirmed transactions that spent the wallet's coins, newest first.
    """
    parents = {p.tx.txid for p in payments}
    wanted = {op: p.txid for p in payments for op in p.inputs if op.txid not in parents}
    try:
        coins = client.request("get_utxos", pubkey=wallet.pubkey)["coins"]
    except NodeError:  # a node that serves no coins now (syncing): search for every coin
        coins = []
    unspent = {OutPoint(c["txid"], c["index"]) for c in coins}
    wanted = {op: txid for op, txid in wanted.items() if op not in unspent}
    found: dict[str, str] = {}
    if not wanted:
        return found
    items = client.request("get_history", pubkey=wallet.pubkey)["items"]
    spenders = sorted((i for i in items if i["height"] >= 0 and i["spent"] > 0), key=lambda i: i["height"],
                      reverse=True)
    for item in spenders:
        reply = client.request("get_tx", txid=item["txid"], verbose=True)
        if reply["state"] != TxState.CONFIRMED or reply.get("tx") is None:
            continue
        spender = Transaction.parse(reply["tx"])
        for txin in spender.inputs:
            txid = wanted.pop(txin.prev, None)
            if txid is not None:
                found.setdefault(txid, spender.txid_hex)
        if not wanted:
            break
    return found


def refresh_payments(client: NodeClient, wallet: Wallet,
                     depth: int = CONFIRMED_DEPTH) -> tuple[Wallet, list[Settlement]]:
    """Settle ``wallet``'s recorded payments against the node (see the module docstring); the caller saves.

    Raises ``NodeError`` when the node refuses a re-push because it serves no
    payments now (``syncing``, ``isolated``): nothing new may be built on it.
    """
    settlements = []
    for view in check_payments(client, wallet):
        payment = view.payment
        if payment.state is PaymentState.CONFLICTED:
            settlements.append(Settlement(view, Settled.KEPT))
        elif view.state is TxState.CONFIRMED and (view.confirmations or 0) >= depth:
            wallet = wallet.without_payment(payment.txid)
            settlements.append(Settlement(view, Settled.FORGOTTEN))
        elif view.state is TxState.CONFLICTED:
            wallet = wallet.with_conflict(payment.txid, view.conflict)
            settlements.append(Settlement(view, Settled.CONFLICTED))
        elif view.state is TxState.UNKNOWN:
            settlements.append(_repush(client, view))
        else:
            settlements.append(Settlement(view, Settled.KEPT))
    return wallet, settlements


def settle_payments(client: NodeClient, wallet: Wallet, path: str) -> tuple[Wallet, list[Settlement]]:
    """:func:`refresh_payments`, and the wallet file at ``path`` rewritten if anything changed."""
    refreshed, settlements = refresh_payments(client, wallet)
    if refreshed != wallet:
        rewrite_wallet(refreshed, path)
    return refreshed, settlements


def _repush(client: NodeClient, view: PaymentView) -> Settlement:
    reply = client.request("push_tx", tx=view.payment.tx.raw)
    code = reply.get("code", "")
    if code in UNSERVED:
        raise NodeError(code, reply.get("reason", ""))
    if reply["accepted"] or code in ALREADY_THERE:
        return Settlement(view, Settled.REPUSHED)
    return Settlement(view, Settled.NOT_REPUSHED, reply.get("reason") or code or "no reason given")


@dataclass(frozen=True, slots=True)
class PushResult:
    """A new payment's :class:`PushOutcome`, the wallet as recorded after it, and the node's reason for a refusal."""

    outcome: PushOutcome
    payment: Payment
    wallet: Wallet
    code: str = ""
    reason: str = ""

    @property
    def fee(self) -> int:
        return self.payment.spent - sum(o.amount for o in self.payment.tx.outputs)


def pay(client: NodeClient, wallet: Wallet, path: str, to_pubkey: bytes, amount: int, *, fee: int | None,
        fee_per_byte: int, node: str, now: int) -> PushResult:
    """Build a payment from the coins the node lists (less those pending payments spend) and push it.

    Run :func:`settle_payments` first, so that the node knows the pending
    payments whose change may be spent.  ``WalletError`` (insufficient funds)
    when the coins do not cover it; nothing is recorded then.
    """
    reply = client.request("get_utxos", pubkey=wallet.pubkey)
    coins = [(OutPoint(c["txid"], c["index"]), c["amount"]) for c in reply["coins"]]
    tx = build_payment(wallet, coins, to_pubkey, amount, fee=fee, fee_per_byte=fee_per_byte)
    spent = {i.prev for i in tx.inputs}
    return push_new_payment(client, wallet, path, Payment(tx, now, node, sum(v for op, v in coins if op in spent)))


def push_new_payment(client: NodeClient, wallet: Wallet, path: str, payment: Payment) -> PushResult:
    """Record ``payment`` as pending in the wallet file at ``path``, then push it; a refusal removes the record."""
    wallet = wallet.with_payment(payment)
    rewrite_wallet(wallet, path)
    try:
        reply = client.request("push_tx", tx=payment.tx.raw)
    except NodeUnavailable:
        return PushResult(PushOutcome.UNKNOWN, payment, wallet)
    except NodeError as exc:  # an error reply: the node did not take it (``syncing``, ``isolated``, ...)
        code, reason = exc.reason, exc.detail
    else:
        if reply["accepted"]:
            return PushResult(PushOutcome.ACKNOWLEDGED, payment, wallet)
        code, reason = reply.get("code", ""), reply.get("reason", "")
    wallet = wallet.without_payment(payment.txid)
    rewrite_wallet(wallet, path)
    return PushResult(PushOutcome.REFUSED, payment, wallet, code, reason)
