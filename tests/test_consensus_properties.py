"""Properties of the consensus core, checked on generated inputs (hypothesis).

- Decoders never fail with anything but ``DecodeError``, on random bytes, on
  random msgpack documents and on valid encodings with a byte changed; what they
  accept re-encodes to exactly the input.
- Validators never fail with anything but their own error tree.
- Valid transactions, headers and blocks round-trip exactly.
- A transaction's sighash digest, worked out from its encoding, is the SHA-256 of
  the same transaction with every signature empty.
- Connecting random valid blocks and disconnecting them again restores the exact
  UTXO set, and what connecting yields equals a from-scratch computation.
"""

from __future__ import annotations

import hashlib

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.chain import Builder
from support.payments import dev_key, dev_outpoint, dev_pubkey
from zcoin.consensus import errors as E
from zcoin.consensus.builders import sign_transaction
from zcoin.consensus.params import REGTEST
from zcoin.consensus.pow import decode_compact, target_to_bits
from zcoin.consensus.primitives import (
    COINBASE_DATA_MAX_BYTES,
    Block,
    BlockHeader,
    OutPoint,
    Transaction,
    TxIn,
    TxOut,
    sighash_digest_and_signatures,
)
from zcoin.consensus.validation import (
    Coin,
    HeaderContext,
    MemoryUtxoSet,
    check_block,
    check_header_context,
    check_transaction,
    check_tx_inputs,
    disconnect_block,
)

FUZZ = settings(max_examples=300, deadline=None)
CHAIN = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

hashes = st.binary(min_size=32, max_size=32)
uint32 = st.integers(0, 2**32 - 1)
tx_inputs = st.builds(lambda txid, index, sig: TxIn(OutPoint(txid, index), sig),
                      hashes, uint32, st.binary(max_size=COINBASE_DATA_MAX_BYTES))
tx_outputs = st.builds(TxOut, st.integers(0, 2**64 - 1), hashes)
transactions = st.builds(lambda version, inputs, outputs: Transaction(version, tuple(inputs), tuple(outputs)),
                         uint32, st.lists(tx_inputs, max_size=4), st.lists(tx_outputs, max_size=4))
headers = st.builds(BlockHeader, st.integers(-(2**31), 2**31 - 1), hashes, hashes, uint32, uint32, uint32)
blocks = st.builds(lambda header, txs: Block(header, tuple(txs)), headers, st.lists(transactions, max_size=4))
msgpack_documents = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.binary(max_size=40)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=24,
)


def parses_canonically_or_refuses(parse, raw: bytes) -> None:
    """``parse(raw)`` either raises ``DecodeError`` or gives an object encoding back to ``raw``."""
    try:
        obj = parse(raw)
    except E.DecodeError:
        return
    encoded = obj.serialize()
    assert encoded == raw


# --- decoders --------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=400))
def test_decoders_on_random_bytes_raise_only_decode_error(raw):
    for parse in (Transaction.parse, Block.parse, BlockHeader.parse):
        parses_canonically_or_refuses(parse, raw)


@FUZZ
@given(msgpack_documents)
def test_decoders_on_random_msgpack_documents_raise_only_decode_error(document):
    raw = msgpack.packb(document, use_bin_type=True)
    for parse in (Transaction.parse, Block.parse):
        parses_canonically_or_refuses(parse, raw)


@FUZZ
@given(blocks, st.data())
def test_decoders_on_valid_encodings_with_one_byte_changed_raise_only_decode_error(block, data):
    for raw, parse in [(block.raw, Block.parse)] + [(tx.raw, Transaction.parse) for tx in block.txs]:
        position = data.draw(st.integers(0, len(raw)), label="position")
        edit = data.draw(st.sampled_from(["replace", "insert", "delete"]), label="edit")
        byte = data.draw(st.integers(0, 255), label="byte").to_bytes(1, "big")
        if edit == "replace" and position < len(raw):
            mutated = raw[:position] + byte + raw[position + 1:]
        elif edit == "insert":
            mutated = raw[:position] + byte + raw[position:]
        else:
            mutated = raw[:position] + raw[position + 1:]
        parses_canonically_or_refuses(parse, mutated)


@FUZZ
@given(transactions)
def test_transaction_round_trips_exactly(tx):
    again = Transaction.parse(tx.raw)
    assert again == tx
    assert again.raw == tx.raw
    assert again.txid == tx.txid


@FUZZ
@given(transactions)
def test_the_sighash_digest_is_the_hash_of_the_transaction_with_every_signature_empty(tx):
    blanked = Transaction(tx.version, tuple(TxIn(txin.prev, b"") for txin in tx.inputs), tx.outputs)
    digest, signatures = sighash_digest_and_signatures(tx.raw)
    assert digest == tx.sighash_digest() == hashlib.sha256(blanked.raw).digest()
    assert signatures == [txin.signature for txin in tx.inputs]


@FUZZ
@given(headers)
def test_header_round_trips_exactly(header):
    raw = header.serialize()
    assert len(raw) == 80
    again = BlockHeader.parse(raw)
    assert again == header
    assert again.hash == header.hash


@settings(max_examples=100, deadline=None)
@given(blocks)
def test_block_round_trips_exactly(block):
    again = Block.parse(block.raw)
    assert again == block
    assert again.raw == block.raw
    assert again.txids == block.txids


# --- compact targets ----------------------------------------------------------------


@FUZZ
@given(uint32)
def test_compact_overflow_means_the_target_does_not_fit_in_256_bits(bits):
    exponent, mantissa = bits >> 24, bits & 0x007FFFFF
    full = mantissa << (8 * (exponent - 3)) if exponent > 3 else mantissa >> (8 * (3 - exponent))
    target, negative, overflow = decode_compact(bits)
    assert overflow == (full >= 2**256)
    assert negative == (full != 0 and bool(bits & 0x00800000))
    if not overflow:
        assert target == full


@FUZZ
@given(st.integers(0, 2**256 - 1))
def test_target_to_bits_keeps_the_top_bytes_and_never_sets_the_sign_bit(target):
    bits = target_to_bits(target)
    decoded, negative, overflow = decode_compact(bits)
    assert not negative and not overflow
    assert decoded <= target
    assert target - decoded < max(1, target >> 15)  # at least 16 significant bits kept (Bitcoin's precision)
    assert target_to_bits(decoded) == bits


# --- validators -------------------------------------------------------------------


@FUZZ
@given(transactions)
def test_transaction_checks_raise_only_transaction_errors(tx):
    chain_view = MemoryUtxoSet({op: Coin(1, bytes(32), 0, False) for op in
                                [txin.prev for txin in tx.inputs[:1]]})
    for check in (lambda: check_transaction(tx, REGTEST), lambda: check_tx_inputs(tx, chain_view, 5, REGTEST)):
        try:
            check()
        except E.InvalidTx:
            pass


@FUZZ
@given(blocks, headers, st.integers(0, 2**32))
def test_block_checks_raise_only_block_errors(block, parent, now):
    ctx = HeaderContext(parent.hash, 1, parent.bits, parent.time)
    for check in (lambda: check_block(block, REGTEST), lambda: check_header_context(block.header, ctx, REGTEST, now)):
        try:
            check()
        except E.InvalidBlock:
            pass


# --- connecting and disconnecting ----------------------------------------------------


def draw_block_transactions(data: st.DataObject, spendable: dict[OutPoint, tuple[int, int]]) -> list[Transaction]:
    """Random valid transactions over ``spendable`` (outpoint -> (amount, dev account)), updated in place."""
    txs = []
    for _ in range(data.draw(st.integers(0, 5), label="transactions")):
        if not spendable:
            break
        outpoints = sorted(spendable, key=lambda op: (op.txid, op.index))
        spent = data.draw(st.lists(st.sampled_from(outpoints), min_size=1, max_size=3, unique=True), label="inputs")
        total_in = sum(spendable[op][0] for op in spent)
        count = data.draw(st.integers(1, min(4, total_in)), label="outputs")
        fee = data.draw(st.integers(0, min(total_in - count, 10**6)), label="fee")
        total_out = total_in - fee
        cuts = [] if count == 1 else sorted(data.draw(
            st.lists(st.integers(1, total_out - 1), min_size=count - 1, max_size=count - 1, unique=True),
            label="splits"))
        bounds = [0, *cuts, total_out]
        amounts = [b - a for a, b in zip(bounds, bounds[1:])]
        payees = data.draw(st.lists(st.integers(0, REGTEST.dev_accounts - 1), min_size=count, max_size=count),
                           label="payees")
        tx = sign_transaction([(op, dev_key(spendable[op][1])) for op in spent],
                              [TxOut(a, dev_pubkey(p)) for a, p in zip(amounts, payees)],
                              aux32=bytes(32))  # deterministic txids: hypothesis replays the same draws
        for op in spent:
            del spendable[op]
        spendable.update({OutPoint(tx.txid, i): (a, p) for i, (a, p) in enumerate(zip(amounts, payees))})
        txs.append(tx)
    return txs


def utxo_from_scratch(before: dict[OutPoint, Coin], block: Block, height: int) -> dict[OutPoint, Coin]:
    """The UTXO set after ``block``, computed plainly from its transactions."""
    coins = dict(before)
    for tx in block.txs:
        if not tx.is_coinbase:
            for txin in tx.inputs:
                del coins[txin.prev]
        for index, out in enumerate(tx.outputs):
            coins[OutPoint(tx.txid, index)] = Coin(out.amount, out.pubkey, height, tx.is_coinbase)
    return coins


@CHAIN
@given(st.data())
def test_connecting_then_disconnecting_random_blocks_restores_the_utxo_set(data):
    chain = Builder()
    spendable = {dev_outpoint(REGTEST, i): (REGTEST.dev_account_amount, i) for i in range(REGTEST.dev_accounts)}
    snapshots = [chain.coins()]
    for _ in range(data.draw(st.integers(1, 3), label="blocks")):
        before = chain.coins()
        block = chain.mine(draw_block_transactions(data, spendable))
        assert Block.parse(block.raw) == block
        assert chain.coins() == utxo_from_scratch(before, block, chain.height)
        diff, after = chain.diffs[-1], chain.coins()
        assert all(before[op] == coin for op, coin in diff.spent)  # the undo data is the coins spent
        assert all(after[op] == coin for op, coin in diff.created)
        snapshots.append(after)

    # Undo with revert(diff) and with apply(disconnect_block(diff)); both must retrace every snapshot.
    reverted = MemoryUtxoSet(chain.coins())
    disconnected = MemoryUtxoSet(chain.coins())
    for diff, snapshot in zip(reversed(chain.diffs[1:]), reversed(snapshots[:-1])):
        reverted.revert(diff)
        disconnected.apply(disconnect_block(diff))
        assert reverted.coins == snapshot
        assert disconnected.coins == snapshot
    assert reverted.coins == snapshots[0] == dict(chain.diffs[0].created)
