"""Signed transactions for tests: the development accounts' premine, and payments from any coin.

Every network's genesis block pays each development account ``i`` one
premine output, at index ``i`` of the genesis coinbase
(:func:`dev_outpoint`), spendable with ``dev_secret_key(i)``.  :func:`pay` is
the one way to sign a payment here; :func:`premine_spend` and
:func:`spend_output` are the common payments of one account's coin back to an
account, less a fee.

Signatures use fresh randomness (BIP340 ``aux_rand``), as a wallet's do: two
payments with the same inputs and outputs are two different transactions.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from zcoin.consensus.builders import sign_transaction
from zcoin.consensus.crypto import schnorr_pubkey, schnorr_sign
from zcoin.consensus.params import REGTEST, ChainParams, dev_secret_key
from zcoin.consensus.primitives import OutPoint, Transaction, TxIn, TxOut
from zcoin.consensus.validation import SignatureCheck

FEE = 1_000  # base units: what premine_spend and spend_output leave to the miner by default


def dev_outpoint(params: ChainParams, index: int) -> OutPoint:
    """The genesis premine output of development account ``index`` on ``params``."""
    return OutPoint(params.genesis.txs[0].txid, index)


def dev_key(index: int) -> bytes:
    """Secret key of development account ``index``."""
    return dev_secret_key(index)


def dev_pubkey(index: int) -> bytes:
    """x-only public key of development account ``index`` (the same on every network)."""
    return schnorr_pubkey(dev_secret_key(index))


def pay(spends: Sequence[tuple[OutPoint, bytes]], amounts: Iterable[int],
        payees: bytes | Iterable[bytes] | None = None) -> Transaction:
    """A transaction spending each ``(outpoint, secret key)`` of ``spends`` into outputs of ``amounts``, signed.

    The outputs pay ``payees``: one key for all, one key per amount, or by
    default the first spender's own key.
    """
    amounts = list(amounts)
    if payees is None:
        payees = schnorr_pubkey(spends[0][1])
    keys = [payees] * len(amounts) if isinstance(payees, bytes) else list(payees)
    return sign_transaction(list(spends), [TxOut(a, k) for a, k in zip(amounts, keys, strict=True)])


def _split(total: int, outputs: int) -> list[int]:
    """``total`` in ``outputs`` equal-ish amounts (the last one takes the remainder)."""
    amounts = [total // outputs] * (outputs - 1)
    return [*amounts, total - sum(amounts)]


def premine_spend(account: int, *, to: int | None = None, fee: int = FEE, outputs: int = 2,
                  params: ChainParams = REGTEST) -> Transaction:
    """Development account ``account`` spends its whole premine, less ``fee``, into ``outputs`` outputs.

    The outputs pay development account ``to`` (by default ``account`` itself).
    """
    total = params.dev_account_amount - fee
    payee = params.dev_pubkey(account if to is None else to)
    return pay([(dev_outpoint(params, account), dev_key(account))], _split(total, outputs), payee)


def spend_output(tx: Transaction, index: int, account: int, *, to: int | None = None, fee: int = FEE,
                 outputs: int = 1, params: ChainParams = REGTEST) -> Transaction:
    """Output ``index`` of ``tx``, owned by development ``account``, spent less ``fee`` into ``outputs`` outputs.

    The outputs pay development account ``to`` (by default ``account`` itself).
    """
    total = tx.outputs[index].amount - fee
    payee = params.dev_pubkey(account if to is None else to)
    return pay([(OutPoint(tx.txid, index), dev_key(account))], _split(total, outputs), payee)


def respend_both(funding: Sequence[Transaction], *, fee: int = FEE) -> list[Transaction]:
    """Per development account ``i``'s ``funding[i]`` (two outputs), one spending both into two: two signatures."""
    txs = []
    for account, tx in enumerate(funding):
        total = tx.outputs[0].amount + tx.outputs[1].amount - fee
        txs.append(pay([(OutPoint(tx.txid, 0), dev_key(account)), (OutPoint(tx.txid, 1), dev_key(account))],
                       [total // 2, total - total // 2]))
    return txs


def with_bad_signature(tx: Transaction, index: int, signature: bytes | None = None) -> Transaction:
    """``tx`` with input ``index``'s signature damaged (its last bit flipped), or replaced by ``signature``."""
    inputs = list(tx.inputs)
    if signature is None:
        signature = inputs[index].signature
        signature = signature[:-1] + bytes([signature[-1] ^ 1])
    inputs[index] = TxIn(inputs[index].prev, signature)
    return Transaction(tx.version, tuple(inputs), tx.outputs)


def random_spends(rng: random.Random, count: int, bad: set[int]) -> list[tuple[Transaction, list[bytes]]]:
    """``count`` spends: transactions of one to three inputs, of random keys and outpoints, each with the
    keys of the coins it spends.  In those at the positions in ``bad`` one input fails: its signature
    is zero, damaged or a byte short, or its coin's key is another."""
    spends = []
    for position in range(count):
        keys = [rng.randbytes(32) for _ in range(rng.randint(1, 3))]
        tx = pay([(OutPoint(rng.randbytes(32), rng.randrange(4)), key) for key in keys], [rng.randrange(1, 10**6)])
        pubkeys = [schnorr_pubkey(key) for key in keys]
        if position in bad:
            index = rng.randrange(len(keys))
            signature = tx.inputs[index].signature
            damage = rng.choice(["zero", "damaged", "short", "other key"])
            if damage == "other key":
                pubkeys[index] = schnorr_pubkey(rng.randbytes(32))
            else:
                tx = with_bad_signature(tx, index, {"zero": bytes(64), "damaged": signature[:32] + rng.randbytes(32),
                                                    "short": signature[:63]}[damage])
        spends.append((tx, pubkeys))
    return spends


def random_checks(rng: random.Random, count: int, bad: set[int]) -> list[SignatureCheck]:
    """``count`` signature checks of random keys and messages; those at the positions in ``bad`` fail
    (a zero signature, a damaged one, or one a byte short)."""
    tx = premine_spend(0)
    checks = []
    for position in range(count):
        key, msg32 = rng.randbytes(32), rng.randbytes(32)
        signature = schnorr_sign(msg32, key, bytes(32))
        if position in bad:
            signature = rng.choice([bytes(64), signature[:32] + rng.randbytes(32), signature[:63]])
        checks.append(SignatureCheck(msg32, schnorr_pubkey(key), signature, tx, position))
    return checks
