"""Wallets: key files, addresses with a checksum, and building payments.

A wallet file holds one secret key as JSON, written with mode 0600 and never
overwritten unless asked.  ``zcoin wallet new --dev N`` writes the Nth
premined development account of the local networks (its key is public by
design, like Hardhat's accounts).

An address is the 32-byte x-only public key in bech32m (BIP350) with a
network prefix - ``zcl1...`` on ``local``, ``zct1...`` on ``test``,
``zcrt1...`` on ``regtest`` - so a mistyped character or an address of another
network is refused before anything is sent.

:func:`build_payment` chooses coins (oldest first), pays the recipient, returns
the change to the sender and sets the fee from a fee rate, then signs.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from zcoin.consensus.builders import sign_transaction
from zcoin.consensus.crypto import schnorr_pubkey
from zcoin.consensus.params import ChainParams, dev_secret_key
from zcoin.consensus.primitives import OutPoint, Transaction, TxOut

WALLET_VERSION = 1
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


@dataclass(frozen=True, slots=True)
class Wallet:
    """One key: what the file holds."""

    secret_key: bytes
    network: str
    label: str = ""

    @property
    def pubkey(self) -> bytes:
        return schnorr_pubkey(self.secret_key)

    def address(self, params: ChainParams) -> str:
        return encode_address(self.pubkey, params)


def new_wallet(params: ChainParams, dev_index: int | None = None) -> Wallet:
    """A fresh random key, or development account ``dev_index``."""
    if dev_index is None:
        return Wallet(secrets.token_bytes(32), params.name)
    if not 0 <= dev_index < max(params.dev_accounts, 1) or params.dev_accounts == 0:
        raise WalletError(f"network {params.name!r} has {params.dev_accounts} development accounts "
                          f"(0..{params.dev_accounts - 1})")
    return Wallet(dev_secret_key(dev_index), params.name, label=f"dev {dev_index}")


def save_wallet(wallet: Wallet, path: str | Path, *, force: bool = False) -> None:
    """Write the key file with mode 0600; refuse to replace an existing file unless ``force``."""
    path = Path(path)
    body = json.dumps({"version": WALLET_VERSION, "network": wallet.network, "label": wallet.label,
                       "secret_key": wallet.secret_key.hex()}, indent=2) + "\n"
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise WalletError(f"{path} exists; use --force to replace it (the old key is lost)") from None
    except OSError as exc:
        raise WalletError(f"{path}: cannot write wallet: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fd, 0o600)
        fh.write(body)


def load_wallet(path: str | Path) -> Wallet:
    """Read a key file; ``WalletError`` names what is wrong with it."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
        if document.get("version") != WALLET_VERSION:
            raise WalletError(f"{path}: unknown wallet version {document.get('version')!r}")
        secret = bytes.fromhex(document["secret_key"])
        if len(secret) != 32:
            raise ValueError("secret key must be 32 bytes")
        wallet = Wallet(secret, str(document["network"]), str(document.get("label", "")))
        wallet.pubkey  # noqa: B018 - refuses a key outside the curve order now rather than later
        return wallet
    except FileNotFoundError:
        raise WalletError(f"{path}: no such wallet file (create one with `zcoin wallet new`)") from None
    except OSError as exc:
        raise WalletError(f"{path}: cannot read wallet: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, WalletError):
            raise
        raise WalletError(f"{path}: not a zcoin wallet file ({exc})") from None


# --- payments ----------------------------------------------------------------------


class InsufficientFunds(WalletError):
    """The spendable coins do not cover amount plus fee."""


def build_payment(wallet: Wallet, coins: list[tuple[OutPoint, int]], to_pubkey: bytes, amount: int, *,
                  fee: int | None = None, fee_per_byte: int = DEFAULT_FEE_PER_BYTE) -> Transaction:
    """A signed transaction paying ``amount`` to ``to_pubkey`` from ``coins`` (outpoint, amount), change back.

    With ``fee`` None the fee is ``fee_per_byte`` times the signed size.
    """
    if amount <= 0:
        raise WalletError("the amount must be a positive number of base units")
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
                            f"{needed_fee if needed_fee else fee_per_byte * 100} needed")


def _sign(wallet: Wallet, chosen: list[tuple[OutPoint, int]], to_pubkey: bytes, amount: int, total: int,
          fee: int) -> Transaction:
    outputs = [TxOut(amount, to_pubkey)]
    change = total - amount - fee
    if change > 0:
        outputs.append(TxOut(change, wallet.pubkey))
    return sign_transaction([(op, wallet.secret_key) for op, _ in chosen], outputs)
