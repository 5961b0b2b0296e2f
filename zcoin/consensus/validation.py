"""The rules: checking transactions and blocks, applying them to the UTXO set, fork choice.

Every check is a pure function that returns or raises one specific
:class:`~zcoin.consensus.errors.ValidationError`.  What a check needs of the
world is passed in: the UTXO set as a read-only :class:`UtxoView`, the chain
around a header as a :class:`HeaderContext`, and the current time as ``now``.

Checks come in the order Bitcoin Core runs them, cheapest and least contextual
first:

1. :func:`check_transaction` / :func:`check_block` - the object alone (sizes,
   amounts, proof of work, merkle root, coinbase placement);
2. :func:`check_header_context` - against its parent (expected bits, time window);
3. :func:`connect_block` - against the UTXO set (inputs unspent and mature,
   no double spend, coinbase amount, then the signatures), returning the undo
   data that :func:`disconnect_block` needs to restore the set exactly.

A block's signatures are checked last and all together, as
:class:`SignatureCheck` items handed to a :data:`SignatureVerifier` that the
caller chooses (Bitcoin Core's ``CCheckQueue``): the default verifies them one
after the other; the chain manager may spread them over threads.  Either way the
first failing check in block order is the one reported.

Fork choice (:func:`reorg_path`) picks the chain with the most cumulative work
and lists the blocks to disconnect and connect to reach it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from zcoin.consensus import errors as E
from zcoin.consensus.crypto import merkle_root_and_mutation, schnorr_verify
from zcoin.consensus.params import MAX_MONEY, ChainParams
from zcoin.consensus.pow import check_pow, next_work_required
from zcoin.consensus.primitives import (
    NULL_OUTPOINT,
    SIGNATURE_BYTES,
    Block,
    BlockHeader,
    OutPoint,
    Transaction,
    coinbase_height,
    sighash,
    sighash_digest_and_signatures,
)

# --- the UTXO set ----------------------------------------------------------------


class Coin(NamedTuple):
    """An unspent output with what the rules need about it (a named tuple, as an outpoint: built per output)."""

    amount: int
    pubkey: bytes
    height: int
    coinbase: bool


class UtxoView(Protocol):
    """Read access to a UTXO set."""

    def get_coin(self, outpoint: OutPoint) -> Coin | None: ...


@dataclass(frozen=True, slots=True)
class UtxoDiff:
    """What a block does to the UTXO set: outputs spent (with their coins: the undo data) and created."""

    spent: tuple[tuple[OutPoint, Coin], ...]
    created: tuple[tuple[OutPoint, Coin], ...]


class MemoryUtxoSet:
    """A UTXO set in a dict; what tests, replays and overlays use."""

    __slots__ = ("coins",)

    def __init__(self, coins: dict[OutPoint, Coin] | None = None) -> None:
        self.coins: dict[OutPoint, Coin] = dict(coins or {})

    def get_coin(self, outpoint: OutPoint) -> Coin | None:
        return self.coins.get(outpoint)

    def apply(self, diff: UtxoDiff) -> None:
        """Spend and create as ``diff`` says."""
        for outpoint, _ in diff.spent:
            del self.coins[outpoint]
        self.coins.update(diff.created)

    def revert(self, diff: UtxoDiff) -> None:
        """Undo :meth:`apply` of the same ``diff``."""
        for outpoint, _ in diff.created:
            del self.coins[outpoint]
        self.coins.update(diff.spent)


class UtxoOverlay:
    """A UTXO view: ``base`` with changes held in memory over it (``base`` is never modified).

    What a block being connected sees (the block's changes so far), and what a run of
    blocks checked ahead of being stored sees (the diffs of those before it).
    """

    __slots__ = ("base", "created", "spent")

    def __init__(self, base: UtxoView) -> None:
        self.base = base
        self.created: dict[OutPoint, Coin] = {}
        self.spent: set[OutPoint] = set()

    def get_coin(self, outpoint: OutPoint) -> Coin | None:
        if outpoint in self.spent:
            return None
        coin = self.created.get(outpoint)
        return coin if coin is not None else self.base.get_coin(outpoint)

    def apply(self, diff: UtxoDiff) -> None:
        """Spend and create as ``diff`` says."""
        for outpoint, _ in diff.spent:
            if self.created.pop(outpoint, None) is None:
                self.spent.add(outpoint)
        self.created.update(diff.created)


def tx_coins(tx: Transaction, height: int) -> list[tuple[OutPoint, Coin]]:
    """The coins transaction ``tx`` creates when confirmed at ``height``."""
    coinbase = tx.is_coinbase
    txid = tx.txid
    # Built as plain tuples of their classes: these fields need none of OutPoint's checks (a txid is a
    # hash, an index a small int), and a block builds a pair per output (a third of the cost).
    return [(_new_tuple(OutPoint, (txid, i)), _new_tuple(Coin, (o.amount, o.pubkey, height, coinbase)))
            for i, o in enumerate(tx.outputs)]


_new_tuple = tuple.__new__


def genesis_diff(params: ChainParams) -> UtxoDiff:
    """The UTXO set the genesis block starts (its premine is spendable at once)."""
    return UtxoDiff((), tuple(tx_coins(params.genesis.txs[0], 0)))


# --- transactions ----------------------------------------------------------------


def check_transaction(tx: Transaction, params: ChainParams) -> None:
    """Rules that need nothing but the transaction (Bitcoin's ``CheckTransaction``)."""
    if not tx.inputs:
        raise E.TxNoInputs(txid=tx.txid_hex)
    if not tx.outputs:
        raise E.TxNoOutputs(txid=tx.txid_hex)
    if tx.size > params.max_tx_bytes:
        raise E.TxTooLarge(f"{tx.size} bytes > {params.max_tx_bytes}", txid=tx.txid_hex, size=tx.size)
    total = 0
    for index, out in enumerate(tx.outputs):
        if not 0 < out.amount <= MAX_MONEY:
            raise E.TxAmountOutOfRange(f"output {index} amount {out.amount}", txid=tx.txid_hex, index=index)
        total += out.amount
        if total > MAX_MONEY:
            raise E.TxAmountOutOfRange(f"outputs total {total} > MAX_MONEY", txid=tx.txid_hex)
    if tx.is_coinbase:
        height = coinbase_height(tx)
        if height is None:
            raise E.TxBadCoinbase("coinbase data shorter than the height", txid=tx.txid_hex)
        return
    seen: set[OutPoint] = set()
    for index, txin in enumerate(tx.inputs):
        if txin.prev == NULL_OUTPOINT:
            raise E.TxUnexpectedCoinbase(f"input {index} spends the null outpoint", txid=tx.txid_hex)
        if txin.prev in seen:
            raise E.TxDuplicateInput(f"input {index} spends {txin.prev} again", txid=tx.txid_hex, index=index)
        seen.add(txin.prev)


def check_tx_inputs(tx: Transaction, view: UtxoView, spend_height: int, params: ChainParams, *,
                    verify_signatures: bool = True, verifier: SignatureVerifier | None = None) -> int:
    """Check a non-coinbase transaction's inputs against ``view``; return its fee.

    Every input must spend an existing coin, a mature one if it comes from a
    coinbase (the genesis premine is mature at once), and carry a valid BIP340
    signature by the coin's key; the inputs must cover the outputs.

    ``verify_signatures=False`` is for a transaction whose signatures were
    already verified: an outpoint names the same coin (amount and key) on every
    chain, since the txid commits to its outputs, so they cannot have changed.
    ``verifier`` verifies them (by default :func:`first_invalid_signature`).
    """
    coins, fee = _spent_coins(tx, view, spend_height, params)
    if verify_signatures:  # last: they cost far more than every other check together
        checks = signature_checks(tx, [coin.pubkey for coin in coins])
        failed = (verifier or first_invalid_signature)(checks)
        if failed is not None:
            raise checks[failed].error()
    return fee


def _spent_coins(tx: Transaction, view: UtxoView, spend_height: int,
                 params: ChainParams) -> tuple[list[Coin], int]:
    """Every rule of :func:`check_tx_inputs` but the signatures: the coins ``tx`` spends and its fee."""
    total_in = 0
    coins = []
    for index, txin in enumerate(tx.inputs):
        coin = view.get_coin(txin.prev)
        if coin is None:
            raise E.TxMissingInput(f"input {index} spends {txin.prev}", txid=tx.txid_hex, index=index,
                                   outpoint=str(txin.prev))
        if coin.coinbase and coin.height > 0 and spend_height - coin.height < params.coinbase_maturity:
            raise E.TxImmatureSpend(
                f"input {index} spends a coinbase of height {coin.height} at height {spend_height}",
                txid=tx.txid_hex, index=index)
        total_in += coin.amount
        if not 0 <= total_in <= MAX_MONEY:
            raise E.TxInputValueOutOfRange(f"inputs total {total_in}", txid=tx.txid_hex)
        coins.append(coin)
    total_out = sum(o.amount for o in tx.outputs)
    if total_in < total_out:
        raise E.TxInputsBelowOutputs(f"in {total_in} < out {total_out}", txid=tx.txid_hex)
    return coins, total_in - total_out


# --- signatures ------------------------------------------------------------------


class SignatureCheck(NamedTuple):
    """One input's signature to verify: the BIP340 arguments, and which input it is (for the error).

    A named tuple, as :class:`Coin`: a block makes one per input (a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``).
    """

    msg32: bytes
    pubkey: bytes
    signature: bytes
    tx: Transaction | None  # None where only the encoding is at hand (the chain's signature process)
    index: int

    def is_valid(self) -> bool:
        """True if the signature is a valid BIP340 signature of the input by the coin's key."""
        return len(self.signature) == SIGNATURE_BYTES and schnorr_verify(self.msg32, self.pubkey, self.signature)

    def error(self) -> E.TxBadSignature:
        """The error a failed check raises."""
        return E.TxBadSignature(f"input {self.index}", txid=self.tx.txid_hex, index=self.index)


SignatureVerifier = Callable[[Sequence[SignatureCheck]], int | None]
"""Verifies checks and returns the position of the first one that fails (in their order), or None."""


def signature_checks(tx: Transaction, pubkeys: Sequence[bytes]) -> list[SignatureCheck]:
    """The checks of ``tx``'s signatures, input by input; ``pubkeys`` are the keys of the coins its inputs spend."""
    return encoded_signature_checks(tx.raw, pubkeys, tx)


def encoded_signature_checks(raw: bytes, pubkeys: Sequence[bytes],
                             tx: Transaction | None = None) -> list[SignatureCheck]:
    """:func:`signature_checks` from a transaction's canonical encoding ``raw`` (``tx``: the transaction,
    if the caller has it, for the errors).  Raises ``ValueError`` unless there is a key per input."""
    digest, signatures = sighash_digest_and_signatures(raw)
    return [SignatureCheck(sighash(digest, index), pubkey, signature, tx, index)
            for index, (signature, pubkey) in enumerate(zip(signatures, pubkeys, strict=True))]


Spend = tuple[Transaction, list[bytes]]
"""A transaction of a block, and the keys of the coins its inputs spend: its signatures, to verify."""


def spend_checks(spends: Sequence[Spend]) -> list[SignatureCheck]:
    """The signature checks of ``spends`` (a block's, from :func:`connect_block_unsigned`), in order."""
    return [check for tx, pubkeys in spends for check in signature_checks(tx, pubkeys)]


def first_invalid_signature(checks: Sequence[SignatureCheck]) -> int | None:
    """The position of the first check that fails, or None: the sequential :data:`SignatureVerifier`."""
    for position, check in enumerate(checks):
        if not check.is_valid():
            return position
    return None


# --- blocks ----------------------------------------------------------------------


def check_block(block: Block, params: ChainParams) -> None:
    """Rules that need nothing but the block (Bitcoin's ``CheckBlock``)."""
    header = block.header
    if not check_pow(header, params.pow_limit):
        raise E.BlockBadPow(f"hash {header.hash_hex} above target of bits {header.bits:#010x}",
                            block=header.hash_hex)
    if not block.txs:
        raise E.BlockNoCoinbase("no transactions", block=header.hash_hex)
    if block.size > params.max_block_bytes:
        raise E.BlockTooLarge(f"{block.size} bytes > {params.max_block_bytes}", block=header.hash_hex)
    txids = block.txids
    root, mutated = merkle_root_and_mutation(txids)
    if root != header.merkle_root:
        raise E.BlockBadMerkleRoot(block=header.hash_hex)
    if mutated or len(set(txids)) != len(txids):
        raise E.BlockMutated(block=header.hash_hex)
    if not block.txs[0].is_coinbase:
        raise E.BlockNoCoinbase("first transaction is not a coinbase", block=header.hash_hex)
    for position, tx in enumerate(block.txs):
        if position and tx.is_coinbase:
            raise E.BlockMultipleCoinbase(f"transaction {position}", block=header.hash_hex)
        try:
            check_transaction(tx, params)
        except E.InvalidTx as exc:
            raise E.BlockBadTx(exc, txid=tx.txid_hex, block=header.hash_hex) from exc


@dataclass(frozen=True, slots=True)
class HeaderContext:
    """What the rules need of the chain below a new header."""

    prev_hash: bytes
    height: int  # of the new header
    expected_bits: int
    median_time_past: int  # of the previous ``median_time_span`` blocks


def median_time_past(times: Iterable[int]) -> int:
    """Median of the given block times (the last 11), as Bitcoin: the upper middle of an even count."""
    ordered = sorted(times)
    return ordered[len(ordered) // 2]


def retarget_window_start(params: ChainParams, height: int) -> int | None:
    """Height of the block whose time opens the window that sets the bits at ``height``, if it retargets.

    As in Bitcoin that is block ``height - interval``, except that the first
    window opens at block 1: a genesis block's time is fixed when the network is
    defined, possibly years before anyone mines, and measuring from it would make
    the first retarget a maximal (and wrong) drop in difficulty.
    """
    interval = params.retarget_interval
    if interval == 0 or height == 0 or height % interval:
        return None
    return max(height - interval, 1)


def next_bits(params: ChainParams, height: int, prev_bits: int, prev_time: int,
              window_first_time: int | None) -> int:
    """The bits a block at ``height`` must carry.

    At a retarget height ``window_first_time`` must be the time of block
    :func:`retarget_window_start`; the window from it to the previous block sets
    the new difficulty.  Elsewhere the previous bits carry on.
    """
    if retarget_window_start(params, height) is None:
        return prev_bits
    if window_first_time is None:
        raise ValueError("window_first_time is needed at a retarget height")
    return next_work_required(prev_bits, window_first_time, prev_time, timespan_s=params.retarget_timespan_s,
                              pow_limit=params.pow_limit, max_adjust=params.max_adjust)


def check_header_context(header: BlockHeader, ctx: HeaderContext, params: ChainParams, now: int) -> None:
    """Rules of a header against its parent (Bitcoin's ``ContextualCheckBlockHeader``)."""
    if header.prev_hash != ctx.prev_hash:
        raise E.BlockBadPrevHash(f"links to {header.prev_hash[::-1].hex()}", block=header.hash_hex)
    if header.version < 1:
        raise E.BlockBadVersion(f"version {header.version}", block=header.hash_hex)
    if header.bits != ctx.expected_bits:
        raise E.BlockBadBits(f"bits {header.bits:#010x}, expected {ctx.expected_bits:#010x}",
                             block=header.hash_hex, height=ctx.height)
    if header.time <= ctx.median_time_past:
        raise E.BlockTimeTooOld(f"time {header.time} <= median time past {ctx.median_time_past}",
                                block=header.hash_hex)
    if header.time > now + params.max_future_block_time_s:
        raise E.BlockTimeTooNew(f"time {header.time} > now {now} + {params.max_future_block_time_s}s",
                                block=header.hash_hex)


def connect_block(block: Block, height: int, view: UtxoView, params: ChainParams,
                  verify_signatures: SignatureVerifier = first_invalid_signature) -> UtxoDiff:
    """Check ``block`` against the UTXO set at its parent and return what it changes.

    The caller has run :func:`check_block` and :func:`check_header_context`.
    Raises on a missing, immature or badly signed input, a double spend inside
    the block, a wrong coinbase height, or a coinbase paying more than the
    subsidy plus fees.  ``view`` is not modified.

    The signatures are checked after every other rule, all at once, by
    ``verify_signatures``; the first one to fail in block order is reported.
    """
    diff, spends = connect_block_unsigned(block, height, view, params)
    checks = spend_checks(spends)
    failed = verify_signatures(checks)
    if failed is not None:
        check = checks[failed]
        exc = check.error()
        raise E.BlockBadTx(exc, txid=check.tx.txid_hex, block=block.hash_hex) from exc
    return diff


def connect_block_unsigned(block: Block, height: int, view: UtxoView,
                           params: ChainParams) -> tuple[UtxoDiff, list[Spend]]:
    """Every rule of :func:`connect_block` but the signatures: what ``block`` changes, and its spends.

    The block connects if, and only if, the signatures of every spend are then valid
    (:func:`signature_checks`): a caller that verifies them elsewhere (the chain's
    signature process) has the diff already.
    """
    overlay = UtxoOverlay(view)
    spent: list[tuple[OutPoint, Coin]] = []
    spends: list[Spend] = []
    fees = 0
    block_hex = block.hash_hex
    coinbase = block.txs[0]
    if coinbase_height(coinbase) != height:
        raise E.BlockBadCoinbaseHeight(f"coinbase says {coinbase_height(coinbase)}, block is at {height}",
                                       block=block_hex)
    overlay.created.update(tx_coins(coinbase, height))
    for tx in block.txs[1:]:
        for txin in tx.inputs:
            if txin.prev in overlay.spent:
                raise E.BlockDoubleSpend(f"{txin.prev} spent twice", block=block_hex, txid=tx.txid_hex)
        try:
            coins, fee = _spent_coins(tx, overlay, height, params)
        except E.InvalidTx as exc:
            raise E.BlockBadTx(exc, txid=tx.txid_hex, block=block_hex) from exc
        fees += fee
        spends.append((tx, [coin.pubkey for coin in coins]))
        for txin, coin in zip(tx.inputs, coins):
            if overlay.created.pop(txin.prev, None) is None:  # one created and spent here is never in the set
                spent.append((txin.prev, coin))
            overlay.spent.add(txin.prev)
        overlay.created.update(tx_coins(tx, height))
    reward = sum(o.amount for o in coinbase.outputs)
    allowed = params.subsidy(height) + fees
    if reward > allowed:
        raise E.BlockBadCoinbaseAmount(f"pays {reward} > subsidy + fees {allowed}", block=block_hex)
    return UtxoDiff(tuple(spent), tuple(overlay.created.items())), spends


def disconnect_block(diff: UtxoDiff) -> UtxoDiff:
    """The diff that undoes a connected block's ``diff`` (restore spent, remove created)."""
    return UtxoDiff(spent=diff.created, created=diff.spent)


# --- fork choice -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """What fork choice needs to know about a block: its place and the work up to it."""

    hash: bytes
    prev_hash: bytes
    height: int
    chain_work: int


def is_better_chain(candidate: ChainEntry, tip: ChainEntry) -> bool:
    """True if ``candidate`` has strictly more work: ties keep the first seen."""
    return candidate.chain_work > tip.chain_work


def find_fork_point(a: ChainEntry, b: ChainEntry, lookup: Callable[[bytes], ChainEntry]) -> ChainEntry:
    """The last block both chains share, walking parents with ``lookup``."""
    while a.height > b.height:
        a = lookup(a.prev_hash)
    while b.height > a.height:
        b = lookup(b.prev_hash)
    while a.hash != b.hash:
        a = lookup(a.prev_hash)
        b = lookup(b.prev_hash)
    return a


def reorg_path(tip: ChainEntry, new_tip: ChainEntry,
               lookup: Callable[[bytes], ChainEntry]) -> tuple[list[ChainEntry], list[ChainEntry]]:
    """Blocks to disconnect (tip first) and to connect (oldest first) to move from ``tip`` to ``new_tip``."""
    fork = find_fork_point(tip, new_tip, lookup)
    disconnect = []
    entry = tip
    while entry.hash != fork.hash:
        disconnect.append(entry)
        entry = lookup(entry.prev_hash)
    connect = []
    entry = new_tip
    while entry.hash != fork.hash:
        connect.append(entry)
        entry = lookup(entry.prev_hash)
    connect.reverse()
    return disconnect, connect

