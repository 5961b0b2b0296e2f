"""A block's signatures checked together: sequentially by default, or split over two threads by the chain.

Whatever the verifier, the first bad signature in block order is the one reported,
with its transaction and input, and a good block gives the same UTXO diff.
"""

from __future__ import annotations

import random
import threading

import pytest

from support.chain import NOW, PARAMS, Builder, open_chain
from support.payments import dev_key, pay, premine_spend, random_checks, with_bad_signature
from zcoin.sigchecks import SignatureCheckQueue
from zcoin.consensus import errors as E
from zcoin.consensus.primitives import Block, OutPoint, Transaction
from zcoin.consensus.validation import SignatureCheck, check_block, connect_block, first_invalid_signature

ACCOUNTS = 10


def _worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "signature-checks"]


@pytest.fixture(scope="module")
def funded() -> tuple[Builder, list[Transaction]]:
    """A chain whose block 1 splits every development account's premine in two outputs."""
    builder = Builder()
    funding = [premine_spend(account) for account in range(ACCOUNTS)]
    builder.mine(funding)
    return builder, funding


def _two_input_spends(funding: list[Transaction]) -> list[Transaction]:
    """One transaction per funding transaction, spending both its outputs: two signatures each."""
    return [pay([(OutPoint(tx.txid, 0), dev_key(account)), (OutPoint(tx.txid, 1), dev_key(account))],
                [tx.outputs[0].amount + tx.outputs[1].amount - 1_000])
            for account, tx in enumerate(funding)]


def _block(builder: Builder, txs: list[Transaction]) -> Block:
    block = builder.make_block(txs)
    check_block(block, PARAMS)
    return block


def _outcome(block: Block, builder: Builder, verifier) -> object:
    """The diff ``connect_block`` returns, or ``(txid, index)`` of the bad signature it names."""
    try:
        return connect_block(block, builder.height + 1, builder.utxo, PARAMS, verifier)
    except E.BlockBadTx as exc:
        assert type(exc.tx_error) is E.TxBadSignature
        assert exc.data["txid"] == exc.tx_error.data["txid"]
        return exc.tx_error.data["txid"], exc.tx_error.data["index"]


@pytest.mark.parametrize("bad", [(0, 0), (0, 1), (4, 1), (5, 0), (9, 1)])
def test_a_bad_signature_anywhere_is_named_by_both_verifiers(funded, bad):
    builder, funding = funded
    txs = _two_input_spends(funding)
    position, index = bad
    txs[position] = with_bad_signature(txs[position], index)
    block = _block(builder, txs)
    queue = SignatureCheckQueue(min_parallel=1)
    try:
        for verifier in (first_invalid_signature, queue):
            assert _outcome(block, builder, verifier) == (txs[position].txid_hex, index)
    finally:
        queue.close()


def test_of_two_bad_signatures_the_first_in_block_order_is_named(funded):
    builder, funding = funded
    txs = _two_input_spends(funding)
    txs[8] = with_bad_signature(txs[8], 0)  # in the worker's half
    txs[2] = with_bad_signature(txs[2], 1)  # in the caller's half
    block = _block(builder, txs)
    queue = SignatureCheckQueue(min_parallel=1)
    try:
        assert _outcome(block, builder, queue) == (txs[2].txid_hex, 1)
        assert _outcome(block, builder, first_invalid_signature) == (txs[2].txid_hex, 1)
    finally:
        queue.close()


def test_random_blocks_get_the_same_outcome_from_both_verifiers(funded):
    builder, funding = funded
    rng = random.Random(17)
    queue = SignatureCheckQueue(min_parallel=1)
    try:
        for _ in range(6):
            txs = _two_input_spends(funding)[:rng.randrange(1, ACCOUNTS + 1)]
            for _ in range(rng.choice([0, 0, 1, 2])):
                position = rng.randrange(len(txs))
                txs[position] = with_bad_signature(txs[position], rng.randrange(2))
            block = _block(builder, txs)
            assert _outcome(block, builder, queue) == _outcome(block, builder, first_invalid_signature)
    finally:
        queue.close()


def test_the_queue_returns_what_the_sequential_verifier_returns_on_random_checks():
    rng = random.Random(5)
    queue = SignatureCheckQueue(min_parallel=1)
    try:
        for _ in range(40):
            count = rng.randrange(0, 12)
            bad = {rng.randrange(count) for _ in range(rng.choice([0, 0, 1, 2, 3]))} if count else set()
            checks = random_checks(rng, count, bad)
            assert queue(checks) == first_invalid_signature(checks) == (min(bad) if bad else None)
    finally:
        queue.close()


def test_an_error_in_the_worker_is_raised_in_the_caller_and_the_queue_goes_on():
    rng = random.Random(9)
    checks = random_checks(rng, 6, set())
    broken = [*checks[:5], SignatureCheck(checks[5].msg32, b"short key", checks[5].signature, checks[5].tx, 5)]
    queue = SignatureCheckQueue(min_parallel=1)
    try:
        with pytest.raises(ValueError):
            queue(broken)
        assert queue(checks) is None
    finally:
        queue.close()


def test_the_worker_starts_on_a_large_block_only_and_stops_with_the_store(funded, tmp_path):
    builder, funding = funded
    before = len(_worker_threads())
    store, chain = open_chain(tmp_path / "chain.sqlite")
    chain.add_block(builder.blocks[1], NOW)  # ten signatures
    assert len(_worker_threads()) == before + 1
    store.close()
    assert len(_worker_threads()) == before

    small = SignatureCheckQueue(min_parallel=4)
    assert small(random_checks(random.Random(1), 3, {2})) == 2
    assert small._worker is None


def test_the_chain_refuses_a_block_with_a_bad_signature_and_names_it(funded, tmp_path):
    builder, funding = funded
    txs = _two_input_spends(funding)
    txs[7] = with_bad_signature(txs[7], 1)
    block = _block(builder, txs)
    store, chain = open_chain(tmp_path / "chain.sqlite")
    try:
        chain.add_block(builder.blocks[1], NOW)
        with pytest.raises(E.BlockBadTx) as excinfo:
            chain.add_block(block, NOW)
        assert type(excinfo.value.tx_error) is E.TxBadSignature
        assert excinfo.value.tx_error.data == {"txid": txs[7].txid_hex, "index": 1}
        assert chain.height == 1
    finally:
        store.close()

