"""Wallets: key files, addresses with a checksum, and building payments.

A wallet file holds one secret key as JSON, written with mode 0600 and never
overwritten unless asked.  ``zcoin wallet new --dev N`` writes the Nth
premined development account of the local networks (its key is public by
design, like Hardhat's accounts).

The file also remembers every payment the wallet made and has not yet seen
:data:`CONFIRMED_DEPTH` blocks deep (:class:`Payment`: the signed transaction,
when, to which node, and whether a confirmed transaction spent the same coins),
as Bitcoin Core's wallet keeps its own transactions until they are confirmed.
A payment is recorded *before* it is pushed, so a push with no answer, a crash
or a Ctrl-C never loses it; :func:`build_payment` never spends an input of a
pending payment, so an unknown outcome is never paid again from the same coins.
Every write goes to a temporary file in the same directory (mode 0600), is
synced, and replaces the old file in one ``rename``: a crash leaves the old
file or the new one, never half of either.  Version 1 files (no payments)
still load; :func:`locked_wallet` keeps two commands from updating one file at
once.

An address is the 32-byte x-only public key in bech32m (BIP350) with a
network prefix - ``zcl1...`` on ``local``, ``zct1...`` on ``test``,
``zcrt1...`` on ``regtest`` - so a mistyped character or an address of another
network is refused before anything is sent.

:func:`build_payment` chooses coins (oldest first), pays the recipient, returns
the change to the sender and sets the fee from a fee rate, then signs.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from zcoin.consensus.builders import sign_transaction
from zcoin.consensus.crypto import schnorr_pubkey
from zcoin.consensus.params import ChainParams, dev_secret_key
from zcoin.consensus.primitives import OutPoint, Transaction, TxOut

WALLET_VERSION = 2  # 2: the file records the wallet's unconfirmed payments
READABLE_VERSIONS = (1, 2)
CONFIRMED_DEPTH = 6  # confirmations after which a payment is final and leaves the file (Bitcoin's custom)
LOCK_TIMEOUT_S = 30.0  # how long a command waits for another one using the same wallet file
LOCK_POLL_S = 0.05
DEFAULT_FEE_PER_BYTE = 1  # base units per encoded byte
ADDRESS_PREFIX = {"local": "zcl", "test": "zct", "regtest": "zcrt"}

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32M_CONST = 0x2BC830A3
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


class WalletError(ValueError):
    """A wallet file, address or payment that cannot be used; the message says why in one line."""


# --- addresses (bech32m, BIP350) --------------------------------------------------


def _polymod(values: list[int]) -> int:
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            if (top >> i) & 1:
                checksum ^= _GENERATOR[i]
    return checksum


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: bytes | list[int], from_bits: int, to_bits: int, pad: bool) -> list[int] | None:
    acc, bits, out = 0, 0, []
    maxv = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & maxv)
    elif bits >= from_bits or ((acc << (to_bits - bits)) & maxv):
        return None
    return out


def encode_address(pubkey: bytes, params: ChainParams) -> str:
    """The address of an x-only public key on ``params``' network."""
    if len(pubkey) != 32:
        raise WalletError("a public key is 32 bytes")
    hrp = ADDRESS_PREFIX.get(params.name, "zc" + params.name)
    data = _convert_bits(pubkey, 8, 5, True)
    polymod = _polymod(_hrp_expand(hrp) + data + [0] * 6) ^ _BECH32M_CONST
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in data + checksum)


def decode_address(address: str, params: ChainParams) -> bytes:
    """The public key an address pays; ``WalletError`` if it is mistyped or of another network."""
    if not address or address.lower() != address and address.upper() != address:
        raise WalletError(f"bad address {address!r}: mixed case")
    address = address.lower()
    pos = address.rfind("1")
    if pos < 1 or pos + 7 > len(address) or len(address) > 120:
        raise WalletError(f"bad address {address!r}: not a zcoin address")
    hrp, rest = address[:pos], address[pos + 1:]
    if any(c not in _CHARSET for c in rest):
        raise WalletError(f"bad address {address!r}: invalid character")
    data = [_CHARSET.index(c) for c in rest]
    if _polymod(_hrp_expand(hrp) + data) != _BECH32M_CONST:
        raise WalletError(f"bad address {address!r}: checksum mismatch (a mistyped character?)")
    expected = ADDRESS_PREFIX.get(params.name, "zc" + params.name)
    if hrp != expected:
        raise WalletError(f"address {address!r} is for another network (prefix {hrp!r}, "
                          f"{params.name} uses {expected!r})")
    decoded = _convert_bits(data[:-6], 5, 8, False)
    if decoded is None or len(decoded) != 32:
        raise WalletError(f"bad address {address!r}: wrong length")
    return bytes(decoded)


# --- key files ---------------------------------------------------------------------


class PaymentState(StrEnum):
    """What the wallet knows of one of its payments."""

    PENDING = "pending"  # acknowledged or outcome unknown, not yet confirmed deeply enough
    CONFLICTED = "conflicted"  # a confirmed transaction spent the same coins: it can never confirm


@dataclass(frozen=True, slots=True)
class Payment:
    """A payment the wallet made and has not yet seen :data:`CONFIRMED_DEPTH` blocks deep."""

    tx: Transaction
    time: int  # Unix seconds, when it was made
    node: str  # the api endpoint it was first pushed to
    spent: int  # the wallet's coins it spends, in base units (its fee needs them)
    conflict: str | None = None  # display txid of the confirmed transaction that spent the same coins

    @property
    def txid(self) -> str:
        """The txid in display order."""
        return self.tx.txid_hex

    @property
    def state(self) -> PaymentState:
        return PaymentState.PENDING if self.conflict is None else PaymentState.CONFLICTED

    @property
    def inputs(self) -> tuple[OutPoint, ...]:
        return tuple(i.prev for i in self.tx.inputs)


@dataclass(frozen=True, slots=True)
class Wallet:
    """One key and the payments it made that are not yet final: what the file holds."""

    secret_key: bytes
    network: str
    label: str = ""
    payments: tuple[Payment, ...] = ()  # oldest first: a payment may spend the change of an earlier one

    @property
    def pubkey(self) -> bytes:
        return schnorr_pubkey(self.secret_key)

    def address(self, params: ChainParams) -> str:
        return encode_address(self.pubkey, params)

    def reserved(self) -> frozenset[OutPoint]:
        """The coins pending payments spend: never spent again while they may still confirm."""
        return frozenset(op for p in self.payments if p.state is PaymentState.PENDING for op in p.inputs)

    def payment(self, txid: str) -> Payment | None:
        """The recorded payment with display txid ``txid``."""
        return next((p for p in self.payments if p.txid == txid), None)

    def with_payment(self, payment: Payment) -> Wallet:
        """This wallet with ``payment`` recorded as the newest."""
        if self.payment(payment.txid) is not None:
            raise WalletError(f"payment {payment.txid} is recorded already")
        return dataclasses.replace(self, payments=(*self.payments, payment))

    def without_payment(self, txid: str) -> Wallet:
        """This wallet with payment ``txid`` forgotten (confirmed deeply enough, or refused)."""
        return dataclasses.replace(self, payments=tuple(p for p in self.payments if p.txid != txid))

    def with_conflict(self, txid: str, conflict: str) -> Wallet:
        """Payment ``txid`` marked conflicted by the confirmed transaction ``conflict``; its coins are released."""
        return dataclasses.replace(self, payments=tuple(
            dataclasses.replace(p, conflict=conflict) if p.txid == txid else p for p in self.payments))


def new_wallet(params: ChainParams, dev_index: int | None = None) -> Wallet:
    """A fresh random key, or development account ``dev_index``."""
    if dev_index is None:
        return Wallet(secrets.token_bytes(32), params.name)
    if not 0 <= dev_index < max(params.dev_accounts, 1) or params.dev_accounts == 0:
        raise WalletError(f"network {params.name!r} has {params.dev_accounts} development accounts "
                          f"(0..{params.dev_accounts - 1})")
    return Wallet(dev_secret_key(dev_index), params.name, label=f"dev {dev_index}")


def _payment_document(payment: Payment) -> dict:
    document = {"txid": payment.txid, "tx": payment.tx.raw.hex(), "time": payment.time, "node": payment.node,
                "spent": payment.spent, "state": payment.state.value}
    if payment.conflict is not None:
        document["conflict"] = payment.conflict
    return document


def _payment_from(document: dict) -> Payment:
    tx = Transaction.parse(bytes.fromhex(document["tx"]))
    if tx.txid_hex != document["txid"]:
        raise ValueError(f"payment {document['txid']}: its transaction has txid {tx.txid_hex}")
    state = PaymentState(document["state"])
    conflict = document.get("conflict")
    if (state is PaymentState.CONFLICTED) != (conflict is not None):
        raise ValueError(f"payment {tx.txid_hex}: state {state.value} with conflict {conflict!r}")
    return Payment(tx, int(document["time"]), str(document["node"]), int(document["spent"]),
                   None if conflict is None else str(conflict))


def save_wallet(wallet: Wallet, path: str | Path, *, force: bool = False) -> None:
    """Write a new wallet file with mode 0600; refuse to replace an existing file unless ``force``."""
    _write(wallet, Path(path), replace=force)


def rewrite_wallet(wallet: Wallet, path: str | Path) -> None:
    """Replace the wallet file at ``path`` with ``wallet`` (its payments changed), atomically."""
    _write(wallet, Path(path), replace=True)


def _write(wallet: Wallet, path: Path, *, replace: bool) -> None:
    """Temporary file (0600) in the same directory, fsync, rename over ``path`` (or link: only if absent), fsync
    the directory: a crash at any instant leaves the old file or the new one, and the rename survives it."""
    body = json.dumps({"version": WALLET_VERSION, "network": wallet.network, "label": wallet.label,
                       "secret_key": wallet.secret_key.hex(),
                       "payments": [_payment_document(p) for p in wallet.payments]}, indent=2) + "\n"
    directory = path.parent
    try:
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    except OSError as exc:
        raise WalletError(f"{path}: cannot write wallet: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fd, 0o600)
            fh.write(body)
            fh.flush()
            os.fsync(fd)
        if replace:
            os.replace(temporary, path)
        else:
            _create_from(temporary, path)
        _fsync_directory(directory)
    except FileExistsError:
        os.unlink(temporary)
        raise WalletError(f"{path} exists; use --force to replace it (the old key is lost)") from None
    except OSError as exc:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise WalletError(f"{path}: cannot write wallet: {exc.strerror or exc}") from None


def _create_from(temporary: str, path: Path) -> None:
    """Give the written ``temporary`` the name ``path`` only if no file has it (``FileExistsError`` otherwise)."""
    try:
        os.link(temporary, path)  # atomic and exclusive: never overwrites a key
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: claim the name, then rename over the empty claim
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.replace(temporary, path)
    else:
        os.unlink(temporary)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_wallet(path: str | Path) -> Wallet:
    """Read a wallet file (version 1 or 2); ``WalletError`` names what is wrong with it."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
        if document.get("version") not in READABLE_VERSIONS:
            raise WalletError(f"{path}: unknown wallet version {document.get('version')!r}")
        secret = bytes.fromhex(document["secret_key"])
        if len(secret) != 32:
            raise ValueError("secret key must be 32 bytes")
        payments = tuple(_payment_from(p) for p in document.get("payments", []))
        wallet = Wallet(secret, str(document["network"]), str(document.get("label", "")), payments)
        wallet.pubkey  # noqa: B018 - refuses a key outside the curve order now rather than later
        return wallet
    except FileNotFoundError:
        raise WalletError(f"{path}: no such wallet file (create one with `zcoin wallet new`)") from None
    except OSError as exc:
        raise WalletError(f"{path}: cannot read wallet: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # DecodeError is a ValueError
        if isinstance(exc, WalletError):
            raise
        raise WalletError(f"{path}: not a zcoin wallet file ({exc})") from None


@contextmanager
def locked_wallet(path: str | Path, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold ``<path>.lock`` (flock) while a command reads, pays from and rewrites the wallet file.

    Two ``zcoin send`` at once would otherwise choose the same coins and each
    rewrite the file without the other's payment.  The lock is a file of its own
    because every rewrite replaces the wallet file itself.
    """
    path = Path(path)
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise WalletError(f"{lock_path}: cannot lock the wallet: {exc.strerror}") from None
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WalletError(f"{path} is in use by another zcoin command (waited {timeout_s:g}s "
                                      f"for {lock_path})") from None
                time.sleep(LOCK_POLL_S)
        yield
    finally:
        os.close(fd)  # releases the lock


# --- payments ----------------------------------------------------------------------


class InsufficientFunds(WalletError):
    """The spendable coins do not cover amount plus fee."""


def build_payment(wallet: Wallet, coins: list[tuple[OutPoint, int]], to_pubkey: bytes, amount: int, *,
                  fee: int | None = None, fee_per_byte: int = DEFAULT_FEE_PER_BYTE) -> Transaction:
    """A signed transaction paying ``amount`` to ``to_pubkey`` from ``coins`` (outpoint, amount), change back.

    With ``fee`` None the fee is ``fee_per_byte`` times the signed size.  Coins that
    the wallet's pending payments spend are never chosen (:meth:`Wallet.reserved`);
    their change, once the node lists it among ``coins``, is.
    """
    if amount <= 0:
        raise WalletError("the amount must be a positive number of base units")
    reserved = wallet.reserved()
    held = sum(value for outpoint, value in coins if outpoint in reserved)
    coins = [(outpoint, value) for outpoint, value in coins if outpoint not in reserved]
    available = sum(value for _, value in coins)
    chosen: list[tuple[OutPoint, int]] = []
    total = 0
    needed_fee = fee if fee is not None else 0
    for outpoint, value in coins:
        chosen.append((outpoint, value))
        total += value
        if total < amount + needed_fee:
            continue
        tx = _sign(wallet, chosen, to_pubkey, amount, total, needed_fee)
        if fee is not None:
            return tx
        needed_fee = fee_per_byte * (tx.size + 8)  # room for the fee's own digits
        if total >= amount + needed_fee:
            return _sign(wallet, chosen, to_pubkey, amount, total, needed_fee)
    raise InsufficientFunds(f"insufficient funds: {available} spendable, {amount} + fee "
                            f"{needed_fee if needed_fee else fee_per_byte * 100} needed"
                            + (f" ({held} more is held by pending payments)" if held else ""))


def _sign(wallet: Wallet, chosen: list[tuple[OutPoint, int]], to_pubkey: bytes, amount: int, total: int,
          fee: int) -> Transaction:
    outputs = [TxOut(amount, to_pubkey)]
    change = total - amount - fee
    if change > 0:
        outputs.append(TxOut(change, wallet.pubkey))
    return sign_transaction([(op, wallet.secret_key) for op, _ in chosen], outputs)
