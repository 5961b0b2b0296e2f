"""The objects of the chain and their one canonical encoding.

A **header** is Bitcoin's 80 bytes (version, previous hash, merkle root, time,
bits, nonce; little-endian), hashed with double SHA-256.

A **transaction** spends outputs (``OutPoint`` = txid and index) and creates new
ones, each paying an integer amount to a 32-byte x-only public key.  Every input
carries a BIP340 signature over :func:`sighash`, a tagged hash of the
transaction with all signatures blanked and the input's index.  The coinbase is
the one transaction with a single input spending :data:`NULL_OUTPOINT`; its
"signature" field holds the block height (4 bytes little-endian) and up to 96
bytes of extra nonce, so that every coinbase txid is unique.

Encoding is msgpack, and there is exactly one encoding of each object:
``[version, [[prev_txid, prev_index, signature], ...], [[amount, pubkey], ...]]``
for a transaction and ``[header80, [tx_bytes, ...]]`` for a block (each
transaction embedded as its own encoded bytes, so txids hash exactly the bytes
that travel).  Decoding is strict: truncated input, trailing bytes, wrong types,
out-of-range numbers and any encoding other than the canonical one raise
:class:`DecodeError`.  The txid is the double SHA-256 of the encoding.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack

from zcoin.consensus.crypto import sha256d, tagged_hash
from zcoin.consensus.errors import DecodeError

HEADER_BYTES = 80
HASH_BYTES = 32
PUBKEY_BYTES = 32
SIGNATURE_BYTES = 64
UINT32_MAX = 0xFFFF_FFFF
MAX_DECODE_BYTES = 4 * 1024 * 1024  # no object we accept is larger than one wire message
COINBASE_DATA_MIN_BYTES = 4  # the height
COINBASE_DATA_MAX_BYTES = 100
SIGHASH_TAG = "zcoin/sighash"

_HEADER = struct.Struct("<i32s32sIII")
_sha256 = hashlib.sha256
NULL_HASH = bytes(32)


def _check_hash(name: str, value: Any) -> None:
    if type(value) is not bytes or len(value) != HASH_BYTES:
        raise ValueError(f"{name} must be {HASH_BYTES} bytes")


def _check_uint32(name: str, value: Any) -> None:
    if type(value) is not int or not 0 <= value <= UINT32_MAX:
        raise ValueError(f"{name} must be an integer in [0, 2**32)")


# --- header ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """Bitcoin's 80-byte block header."""

    version: int
    prev_hash: bytes
    merkle_root: bytes
    time: int
    bits: int
    nonce: int
    _hash: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.version) is not int or not -(2**31) <= self.version < 2**31:
            raise ValueError("version must be a signed 32-bit integer")
        _check_hash("prev_hash", self.prev_hash)
        _check_hash("merkle_root", self.merkle_root)
        _check_uint32("time", self.time)
        _check_uint32("bits", self.bits)
        _check_uint32("nonce", self.nonce)

    @classmethod
    def parse(cls, raw: bytes) -> BlockHeader:
        """The header of exactly 80 serialized bytes; anything else raises ``DecodeError``."""
        if type(raw) is not bytes or len(raw) != HEADER_BYTES:
            raise DecodeError(f"a header is exactly {HEADER_BYTES} bytes")
        header = cls(*_HEADER.unpack(raw))
        object.__setattr__(header, "_hash", sha256d(raw))
        return header

    def serialize(self) -> bytes:
        """The 80 bytes Bitcoin hashes."""
        return _HEADER.pack(self.version, self.prev_hash, self.merkle_root, self.time, self.bits, self.nonce)

    @property
    def hash(self) -> bytes:
        """Double SHA-256 of the serialization, internal byte order."""
        if not self._hash:
            object.__setattr__(self, "_hash", sha256d(self.serialize()))
        return self._hash

    @property
    def hash_hex(self) -> str:
        """The hash in Bitcoin's display order (byte-reversed hex)."""
        return self.hash[::-1].hex()


def hash_header(raw80: bytes) -> bytes:
    """Hash of serialized header bytes, without building a :class:`BlockHeader`."""
    if len(raw80) != HEADER_BYTES:
        raise ValueError(f"a header is exactly {HEADER_BYTES} bytes")
    return _sha256(_sha256(raw80).digest()).digest()  # sha256d inlined: one call less on a hot path


# --- transactions ----------------------------------------------------------------


class _OutPointFields(NamedTuple):
    txid: bytes
    index: int


class OutPoint(_OutPointFields):
    """A reference to output ``index`` of transaction ``txid``.

    A named tuple rather than a dataclass: outpoints are the keys of every UTXO set and
    mempool index, and a tuple's hash and equality run in C (a frozen dataclass's in
    Python: a third of a block's rule checks went to hashing outpoints).
    """

    __slots__ = ()

    def __new__(cls, txid: bytes, index: int) -> OutPoint:
        # The checks of _check_hash and _check_uint32 inline: a block makes an outpoint per input and output.
        if type(txid) is not bytes or len(txid) != HASH_BYTES:
            _check_hash("txid", txid)
        if type(index) is not int or not 0 <= index <= UINT32_MAX:
            _check_uint32("index", index)
        return tuple.__new__(cls, (txid, index))

    def __str__(self) -> str:
        return f"{self.txid[::-1].hex()}:{self.index}"


NULL_OUTPOINT = OutPoint(NULL_HASH, UINT32_MAX)


@dataclass(frozen=True, slots=True)
class TxIn:
    """An input: the output it spends and its signature (coinbase data for a coinbase)."""

    prev: OutPoint
    signature: bytes = b""

    def __post_init__(self) -> None:
        if type(self.signature) is not bytes or len(self.signature) > COINBASE_DATA_MAX_BYTES:
            raise ValueError(f"signature must be at most {COINBASE_DATA_MAX_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class TxOut:
    """An output: ``amount`` base units payable to the x-only key ``pubkey``."""

    amount: int
    pubkey: bytes

    def __post_init__(self) -> None:
        if type(self.amount) is not int or not 0 <= self.amount < 2**64:
            raise ValueError("amount must be an integer in [0, 2**64)")
        if type(self.pubkey) is not bytes or len(self.pubkey) != PUBKEY_BYTES:
            raise ValueError(f"pubkey must be {PUBKEY_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class Transaction:
    """A transaction; ``raw`` is its canonical encoding and ``txid`` the hash of it."""

    version: int
    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    _raw: bytes = field(default=b"", init=False, repr=False, compare=False)
    _txid: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_uint32("version", self.version)
        if type(self.inputs) is not tuple or not all(type(i) is TxIn for i in self.inputs):
            raise ValueError("inputs must be a tuple of TxIn")
        if type(self.outputs) is not tuple or not all(type(o) is TxOut for o in self.outputs):
            raise ValueError("outputs must be a tuple of TxOut")

    def _as_list(self) -> list:
        return [
            self.version,
            [[i.prev.txid, i.prev.index, i.signature] for i in self.inputs],
            [[o.amount, o.pubkey] for o in self.outputs],
        ]

    @property
    def raw(self) -> bytes:
        """The canonical encoding."""
        if not self._raw:
            object.__setattr__(self, "_raw", msgpack.packb(self._as_list(), use_bin_type=True))
        return self._raw

    def serialize(self) -> bytes:
        """The canonical encoding (same as :attr:`raw`)."""
        return self.raw

    @property
    def txid(self) -> bytes:
        """Double SHA-256 of the encoding, internal byte order."""
        if not self._txid:
            object.__setattr__(self, "_txid", sha256d(self.raw))
        return self._txid

    @property
    def txid_hex(self) -> str:
        """The txid in display order."""
        return self.txid[::-1].hex()

    @property
    def is_coinbase(self) -> bool:
        """True for the coinbase shape: one input spending the null outpoint."""
        if len(self.inputs) != 1:
            return False
        prev = self.inputs[0].prev
        return prev.index == UINT32_MAX and prev.txid == NULL_HASH  # == NULL_OUTPOINT, without building tuples

    @property
    def size(self) -> int:
        """Encoded size in bytes."""
        return len(self.raw)

    def sighash_digest(self) -> bytes:
        """SHA-256 of the encoding with every signature blanked (shared by all inputs)."""
        return sighash_digest_and_signatures(self.raw)[0]

    @classmethod
    def parse(cls, raw: bytes) -> Transaction:
        """Decode a canonical encoding; anything else raises ``DecodeError``."""
        obj = _unpack(raw)
        try:
            version, raw_inputs, raw_outputs = obj
            if type(raw_inputs) is not list or type(raw_outputs) is not list:
                raise ValueError("inputs and outputs must be lists")
            inputs = []
            for item in raw_inputs:
                txid, index, signature = item
                inputs.append(TxIn(OutPoint(txid, index), signature))
            outputs = []
            for item in raw_outputs:
                amount, pubkey = item
                outputs.append(TxOut(amount, pubkey))
            tx = cls(version, tuple(inputs), tuple(outputs))
        except (TypeError, ValueError) as exc:
            raise DecodeError(f"not a transaction: {exc}") from None
        if tx.raw != raw:
            raise DecodeError("not the canonical encoding of a transaction")
        return tx


def sighash_digest_and_signatures(raw: bytes) -> tuple[bytes, list[bytes]]:
    """From a transaction's canonical encoding: its :meth:`~Transaction.sighash_digest`, and its
    inputs' signatures in order.

    The one definition of the digest: the encoding with every signature blanked, as the
    transaction itself would encode with empty signatures.  It needs no :class:`Transaction`,
    so the chain's signature process, sent encodings, builds none.
    """
    version, inputs, outputs = _unpack(raw)
    blanked = [version, [[txid, index, b""] for txid, index, _ in inputs], outputs]
    return hashlib.sha256(msgpack.packb(blanked, use_bin_type=True)).digest(), [signature for _, _, signature in inputs]


def sighash(digest: bytes, index: int) -> bytes:
    """The 32-byte message input ``index`` signs, from :meth:`Transaction.sighash_digest`."""
    return tagged_hash(SIGHASH_TAG, digest + index.to_bytes(4, "little"))


def coinbase_data(height: int, extra_nonce: bytes = b"") -> bytes:
    """The coinbase input's data: the height (4 bytes LE) then the extra nonce."""
    _check_uint32("height", height)
    data = height.to_bytes(4, "little") + extra_nonce
    if len(data) > COINBASE_DATA_MAX_BYTES:
        raise ValueError("extra nonce too long")
    return data


def make_coinbase(height: int, outputs: tuple[TxOut, ...], extra_nonce: bytes = b"") -> Transaction:
    """A coinbase transaction for ``height`` paying ``outputs``."""
    return Transaction(1, (TxIn(NULL_OUTPOINT, coinbase_data(height, extra_nonce)),), outputs)


def coinbase_height(tx: Transaction) -> int | None:
    """The height a coinbase commits to, or None if its data is too short."""
    data = tx.inputs[0].signature
    if len(data) < COINBASE_DATA_MIN_BYTES:
        return None
    return int.from_bytes(data[:4], "little")


# --- blocks ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Block:
    """A header and its transactions, the coinbase first."""

    header: BlockHeader
    txs: tuple[Transaction, ...]
    _raw: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.header) is not BlockHeader:
            raise ValueError("header must be a BlockHeader")
        if type(self.txs) is not tuple or not all(type(t) is Transaction for t in self.txs):
            raise ValueError("txs must be a tuple of Transaction")

    @property
    def hash(self) -> bytes:
        """The header hash, internal byte order."""
        return self.header.hash

    @property
    def hash_hex(self) -> str:
        """The header hash in display order."""
        return self.header.hash_hex

    @property
    def raw(self) -> bytes:
        """The canonical encoding."""
        if not self._raw:
            packed = msgpack.packb([self.header.serialize(), [tx.raw for tx in self.txs]], use_bin_type=True)
            object.__setattr__(self, "_raw", packed)
        return self._raw

    def serialize(self) -> bytes:
        """The canonical encoding (same as :attr:`raw`)."""
        return self.raw

    @property
    def size(self) -> int:
        """Encoded size in bytes."""
        return len(self.raw)

    @property
    def txids(self) -> list[bytes]:
        """The txids in block order."""
        return [tx.txid for tx in self.txs]

    @classmethod
    def parse(cls, raw: bytes) -> Block:
        """Decode a canonical encoding; anything else raises ``DecodeError``."""
        obj = _unpack(raw)
        try:
            raw_header, raw_txs = obj
            if type(raw_txs) is not list or not all(type(t) is bytes for t in raw_txs):
                raise ValueError("transactions must be a list of byte strings")
        except (TypeError, ValueError) as exc:
            raise DecodeError(f"not a block: {exc}") from None
        block = cls(BlockHeader.parse(raw_header), tuple(Transaction.parse(t) for t in raw_txs))
        if block.raw != raw:
            raise DecodeError("not the canonical encoding of a block")
        return block


def _unpack(raw: bytes) -> Any:
    if type(raw) is not bytes:
        raise DecodeError("expected bytes")
    if len(raw) > MAX_DECODE_BYTES:
        raise DecodeError(f"larger than {MAX_DECODE_BYTES} bytes")
    try:
        return msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises many exception types on hostile bytes
        raise DecodeError(f"malformed msgpack ({type(exc).__name__})") from None
