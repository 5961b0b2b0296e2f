"""The wire envelope: one msgpack map per ZeroMQ frame, checked against a schema.

Every message zcoin sends between processes is a single msgpack map holding the
protocol version (``v``), the message type (``t``) and the fields of that type.
This module is the only place that packs and unpacks those frames (the
jupyter_client ``Session`` idea): handlers receive a checked :class:`Message`
and never touch raw bytes.

Checks happen in a fixed order so hostile input costs little: the size limit
before decoding, then msgpack decoding with its own container limits, then the
version, the type and every field of the type's schema.  Any failure raises
:class:`WireError`, whose ``reason`` is a short code fit for a log line or a
reply to the sender.

Modules declare their message types with :func:`register` at import time, e.g.::

    register("join", node=Str(64), gossip=Str(256), api=Str(256))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

PROTOCOL_VERSION = 2  # 2: miners' requests carry a request id in the ZeroMQ envelope
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # Bitcoin's cap on one P2P message


class WireError(ValueError):
    """A frame that is not a valid message; ``reason`` names what was wrong."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# --- field kinds -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Str:
    """A UTF-8 string of at most ``max_len`` characters."""

    max_len: int = 256

    def check(self, value: Any) -> None:
        if type(value) is not str:
            raise TypeError("expected a string")
        if len(value) > self.max_len:
            raise ValueError(f"longer than {self.max_len}")


@dataclass(frozen=True, slots=True)
class Int:
    """An integer in ``[lo, hi]`` (booleans are not integers here)."""

    lo: int = 0
    hi: int = 2**64 - 1

    def check(self, value: Any) -> None:
        if type(value) is not int:
            raise TypeError("expected an integer")
        if not self.lo <= value <= self.hi:
            raise ValueError(f"out of range [{self.lo}, {self.hi}]")


@dataclass(frozen=True, slots=True)
class Float:
    """A finite float or integer (ages, rates)."""

    def check(self, value: Any) -> None:
        if type(value) not in (int, float) or value != value or value in (float("inf"), float("-inf")):
            raise TypeError("expected a finite number")


@dataclass(frozen=True, slots=True)
class Bytes:
    """A byte string of at most ``max_len`` bytes, or exactly ``size`` bytes when given."""

    max_len: int = MAX_MESSAGE_BYTES
    size: int | None = None

    def check(self, value: Any) -> None:
        if type(value) is not bytes:
            raise TypeError("expected bytes")
        if self.size is not None and len(value) != self.size:
            raise ValueError(f"expected {self.size} bytes")
        if len(value) > self.max_len:
            raise ValueError(f"longer than {self.max_len} bytes")


@dataclass(frozen=True, slots=True)
class Bool:
    """True or False."""

    def check(self, value: Any) -> None:
        if type(value) is not bool:
            raise TypeError("expected a boolean")


@dataclass(frozen=True, slots=True)
class List:
    """A list of at most ``max_len`` items, each of kind ``of``."""

    of: Any
    max_len: int = 10_000

    def check(self, value: Any) -> None:
        if type(value) is not list:
            raise TypeError("expected a list")
        if len(value) > self.max_len:
            raise ValueError(f"more than {self.max_len} items")
        for item in value:
            self.of.check(item)


@dataclass(frozen=True, slots=True)
class Map:
    """A nested map with its own fields (unknown keys are refused)."""

    fields: dict[str, Any]
    optional: frozenset[str] = frozenset()

    def check(self, value: Any) -> None:
        if type(value) is not dict:
            raise TypeError("expected a map")
        _check_fields(value, self.fields, self.optional)


@dataclass(frozen=True, slots=True)
class Opt:
    """Marks a field as optional (absent or None)."""

    kind: Any


def _check_fields(values: dict, fields: dict[str, Any], optional: frozenset[str]) -> None:
    for key in values:
        if key not in fields:
            raise ValueError(f"unknown field {key!r}")
    for key, kind in fields.items():
        if key not in values or values[key] is None:
            if key in optional:
                continue
            raise ValueError(f"missing field {key!r}")
        try:
            kind.check(values[key])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"field {key!r}: {exc}") from None


# --- message types ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Schema:
    fields: dict[str, Any]
    optional: frozenset[str]


_SCHEMAS: dict[str, Schema] = {}


def register(msg_type: str, **fields: Any) -> None:
    """Declare a message type and the kinds of its fields (wrap optional ones in :class:`Opt`)."""
    optional = frozenset(k for k, v in fields.items() if isinstance(v, Opt))
    plain = {k: (v.kind if isinstance(v, Opt) else v) for k, v in fields.items()}
    existing = _SCHEMAS.get(msg_type)
    schema = Schema(plain, optional)
    if existing is not None and existing != schema:
        raise ValueError(f"message type {msg_type!r} registered twice with different fields")
    _SCHEMAS[msg_type] = schema


def registered_types() -> frozenset[str]:
    """The message types known to this process."""
    return frozenset(_SCHEMAS)


@dataclass(frozen=True, slots=True)
class Message:
    """A checked message: its type and its fields."""

    type: str
    fields: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.fields.get(key)
        return default if value is None else value


def encode(msg_type: str, **fields: Any) -> bytes:
    """Pack a message of a registered type; the fields are checked like incoming ones."""
    schema = _SCHEMAS.get(msg_type)
    if schema is None:
        raise WireError("unknown-type", msg_type)
    fields = {k: v for k, v in fields.items() if v is not None}
    try:
        _check_fields(fields, schema.fields, schema.optional)
    except ValueError as exc:
        raise WireError("bad-field", f"{msg_type}: {exc}") from None
    frame = msgpack.packb({"v": PROTOCOL_VERSION, "t": msg_type, **fields}, use_bin_type=True)
    if len(frame) > MAX_MESSAGE_BYTES:
        raise WireError("oversized", f"{len(frame)} bytes")
    return frame


def decode(frame: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Unpack and check one frame; raise :class:`WireError` on anything wrong."""
    if len(frame) > max_bytes:
        raise WireError("oversized", f"{len(frame)} > {max_bytes} bytes")
    try:
        obj = msgpack.unpackb(
            frame,
            raw=False,
            strict_map_key=True,
        )
    except Exception as exc:  # msgpack raises many types on hostile input
        raise WireError("malformed", type(exc).__name__) from None
    if type(obj) is not dict:
        raise WireError("malformed", "not a map")
    version = obj.pop("v", None)
    if type(version) is not int:
        raise WireError("malformed", "no protocol version")
    if version != PROTOCOL_VERSION:
        raise WireError("bad-version", f"version {version}, expected {PROTOCOL_VERSION}")
    msg_type = obj.pop("t", None)
    if type(msg_type) is not str:
        raise WireError("malformed", "no message type")
    schema = _SCHEMAS.get(msg_type)
    if schema is None:
        raise WireError("unknown-type", msg_type[:64])
    try:
        _check_fields(obj, schema.fields, schema.optional)
    except ValueError as exc:
        raise WireError("bad-field", f"{msg_type}: {exc}") from None
    return Message(msg_type, obj)


# Replies shared by every service.
register("error", reason=Str(64), detail=Opt(Str(1024)))

# --- the miners' protocol: api requests and replies, gossip announcements --------------
# (The tracker's messages are declared in zcoin.tracker.protocol, shared by both of its ends.)

MAX_HEADERS_PER_REPLY = 2000  # Bitcoin's cap on one ``headers`` message
MAX_BLOCKS_PER_REQUEST = 16
MAX_TXS_PER_REQUEST = 500
MAX_MEMPOOL_IDS = 50_000
MAX_HISTORY_ITEMS = 50_000
MAX_GENERATE_PER_REQUEST = 100  # `zcoin generate` asks block by block, for progress and Ctrl-C
MAX_AMOUNT = 2**63 - 1


HASH = Bytes(size=32)
register("status")
register("status_reply", node=Str(64), network=Str(32), height=Int(), tip=Str(64), work=Str(80),
              peers=Int(), mempool=Int(), hashrate=Float(), worker_hashrates=List(Float(), max_len=1024),
              synced=Bool(), mining=Bool(), mining_mode=Opt(Str(32)),
              best_header=Int(), orphans=Int(), api=Str(256), gossip=Str(256),
              peer_list=List(Map({"node": Str(64), "height": Int(lo=-1), "score": Int(lo=-10**9, hi=10**9),
                                  "banned": Bool()}), max_len=10_000),
              mempool_bytes=Opt(Int()), payout=Opt(Str(64)),  # the key its coinbases pay (hex), if it mines
              counters=Opt(Map({"txs_accepted": Int(), "blocks_connected": Int(), "reorgs": Int(), "bans": Int(),
                                "gossip_gaps": Int(), "request_stalls": Int(), "signatures_cached": Int()},
                               optional=frozenset({"signatures_cached"}))),
              rejected=Opt(List(Map({"reason": Str(64), "count": Int()}), max_len=64)))
register("push_tx", tx=Bytes(1_000_000))
register("tx_result", accepted=Bool(), txid=Str(64), reason=Opt(Str(512)), code=Opt(Str(64)))
register("get_tip")
# epoch and seq: the publisher's gossip epoch (drawn at each start) and the number of its last message.
register("tip", node=Str(64), height=Int(), hash=HASH, work=Bytes(size=32), epoch=Opt(Int()), seq=Opt(Int()))
register("get_headers", locator=List(HASH, max_len=64))
register("headers", headers=List(Bytes(size=80), max_len=MAX_HEADERS_PER_REPLY))
register("get_blocks", hashes=List(HASH, max_len=MAX_BLOCKS_PER_REQUEST))
register("blocks", blocks=List(Bytes(), max_len=MAX_BLOCKS_PER_REQUEST))
PREVOUT = Map({"amount": Int(hi=MAX_AMOUNT), "pubkey": Bytes(size=32)})
# ``prevouts``: with the coins every transaction spends (as ``get_tx`` verbose gives them for one).
register("get_block", hash=Opt(HASH), height=Opt(Int()), prevouts=Opt(Bool()))
# ``active``: on the active chain (confirmations = tip_height - height + 1); ``fees``: from its undo data;
# ``prevouts``: per transaction in order, the coins its inputs spend (empty for the coinbase).
register("block", block=Opt(Bytes()), height=Opt(Int()), active=Opt(Bool()), tip_height=Opt(Int()),
         fees=Opt(Int(lo=0, hi=MAX_AMOUNT)), prevouts=Opt(List(List(PREVOUT, max_len=100_000), max_len=100_000)))
register("get_header", hash=Opt(HASH), height=Opt(Int()))  # a block's 80 bytes, without its body
register("header", header=Opt(Bytes(size=80)), height=Opt(Int()), active=Opt(Bool()), tip_height=Opt(Int()))
register("get_mempool")
register("mempool", txids=List(HASH, max_len=MAX_MEMPOOL_IDS), epoch=Opt(Int()), seq=Opt(Int()))
register("get_txs", txids=List(HASH, max_len=MAX_TXS_PER_REQUEST))
register("txs", txs=List(Bytes(), max_len=MAX_TXS_PER_REQUEST))
register("get_utxos", pubkey=Bytes(size=32))
register("utxos", height=Int(), coins=List(Map({"txid": HASH, "index": Int(), "amount": Int(),
                                                     "height": Int(), "confirmed": Bool()}), max_len=100_000))
register("submit_block", block=Bytes())
register("block_result", accepted=Bool(), hash=Str(64), height=Opt(Int()), reason=Opt(Str(512)),
              code=Opt(Str(64)))
register("get_tx", txid=HASH, verbose=Opt(Bool()))  # verbose: with the raw tx and its prevouts
# state: "mempool", "confirmed" (height, block, its header time, confirmations), "conflicted" (by ``conflict``: a confirmed
# transaction spent the same coins) or "unknown"; when asked verbose, with the raw
# transaction and, per input in order, the coin it spends (absent when any is unknown, and for a coinbase).
register("tx_status", state=Str(16), height=Opt(Int()), conflict=Opt(Str(64)), block=Opt(HASH), confirmations=Opt(Int()),
         block_time=Opt(Int()), tx=Opt(Bytes(1_000_000)), prevouts=Opt(List(PREVOUT, max_len=100_000)))
register("get_mempool_info")
# histogram: fee-rate buckets (base units per byte, lower bound inclusive), highest first.
register("mempool_info", count=Int(), bytes=Int(), fees=Int(), min_fee_rate=Float(), max_bytes=Int(),
         histogram=List(Map({"min_rate": Int(), "count": Int(), "bytes": Int()}), max_len=64))
register("get_history", pubkey=Bytes(size=32))
# Every transaction that paid or spent ``pubkey``'s coins, confirmed (oldest first) then pending (height -1).
register("history", height=Int(), items=List(Map({"txid": HASH, "height": Int(lo=-1), "received": Int(),
                                                  "spent": Int()}), max_len=MAX_HISTORY_ITEMS))
register("generate", blocks=Int(lo=1, hi=MAX_GENERATE_PER_REQUEST), payout=Opt(Bytes(size=32)))
register("generated", hashes=List(Str(64), max_len=MAX_GENERATE_PER_REQUEST), height=Int())
register("admin", action=Str(32), peer=Str(64))
register("ok", detail=Opt(Str(256)))
# Gossip topics: the start of every announcement's frame (``zcoin.sockets.Envelope.gossip``).  ``tx``: a transaction the node took first
# hand (from a client, or back from a block a reorg undid), numbered; ``rtx``: one it took from a
# peer's gossip or fetch, carrying the node's current number without taking a new one.  Members
# subscribe to PEER_TOPICS only: the membership is a full mesh, so every member hears each
# transaction from the member that took it, and a second copy from every other member (the cost
# of most of a relay's CPU) would be waste; an observer of the node's mempool subscribes to both
# (as to Bitcoin Core's ``zmqpubrawtx``).  ZeroMQ filters topics at the publisher, so nothing is
# sent for ``rtx`` to a member.  A topic is a prefix match: ``rtx`` does not start with ``tx``.
TOPIC_TX = b"tx"
TOPIC_BLOCK = b"block"
TOPIC_RELAYED_TX = b"rtx"
PEER_TOPICS = (TOPIC_TX, TOPIC_BLOCK)
GOSSIP_TYPES = {TOPIC_TX: ("gossip_tx", "gossip_txs"), TOPIC_BLOCK: ("gossip_block",),
                TOPIC_RELAYED_TX: ("gossip_tx", "gossip_txs")}
# A publisher announces the transactions it accepted in one turn of its loop together (at most
# MAX_TXS_PER_GOSSIP, or about MAX_GOSSIP_BATCH_BYTES), one of them as ``gossip_tx``, several as
# ``gossip_txs``: a node that falls behind under load then pays a send and a receive per batch
# rather than per transaction, and one that keeps up announces each at once.
MAX_TXS_PER_GOSSIP = 64
MAX_GOSSIP_BATCH_BYTES = 1_000_000
register("gossip_tx", seq=Int(), tx=Bytes(1_000_000), epoch=Opt(Int()))
register("gossip_txs", seq=Int(), txs=List(Bytes(1_000_000), max_len=MAX_TXS_PER_GOSSIP), epoch=Opt(Int()))
register("gossip_block", seq=Int(), block=Bytes(), epoch=Opt(Int()))
