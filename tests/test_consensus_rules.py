"""One test per consensus rule: an otherwise valid object that breaks just that rule.

Objects are made with the consensus builders on the regtest network (about
every other hash wins), so every block here is a real block that passes all
the other rules; the test then asserts the specific error class of
``zcoin.consensus.errors`` (``BlockBadTx`` and its ``.tx_error`` when a block
is refused for one of its transactions).
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
from pathlib import Path

import msgpack
import pytest

from support.chain import MINER_KEY, MINER_PUBKEY, Builder, grind, with_header, with_txs
from support.payments import dev_key, dev_outpoint, dev_pubkey, pay
from zcoin.consensus import errors as E
from zcoin.consensus.builders import sign_transaction, solve
from zcoin.consensus.crypto import merkle_root, schnorr_pubkey
from zcoin.consensus.params import COIN, LOCAL, MAX_MONEY, REGTEST, ChainParams
from zcoin.consensus.pow import bits_to_target, check_pow, target_to_bits
from zcoin.consensus.primitives import (
    NULL_OUTPOINT,
    Block,
    BlockHeader,
    OutPoint,
    Transaction,
    TxIn,
    TxOut,
    make_coinbase,
)
from zcoin.consensus.validation import (
    ChainEntry,
    Coin,
    MemoryUtxoSet,
    check_block,
    check_header_context,
    check_transaction,
    check_tx_inputs,
    connect_block,
    find_fork_point,
    is_better_chain,
    median_time_past,
    next_bits,
    reorg_path,
    retarget_window_start,
)

CONSENSUS_DIR = Path(__file__).parents[1] / "zcoin" / "consensus"
OTHER_PUBKEY = schnorr_pubkey(hashlib.sha256(b"zcoin test payee").digest())


def spend_dev(index: int, amounts: list[int]) -> Transaction:
    """Development account ``index`` pays its regtest premine to the miner in ``amounts``."""
    return pay([(dev_outpoint(REGTEST, index), dev_key(index))], amounts, MINER_PUBKEY)


def assert_block_refused_for_tx(excinfo: pytest.ExceptionInfo, tx_error: type[E.InvalidTx]) -> None:
    assert type(excinfo.value) is E.BlockBadTx
    assert type(excinfo.value.tx_error) is tx_error


def outputs_filling(limit: int) -> int:
    """How many outputs of 1000 units make a one-input transaction as large as possible within ``limit``."""
    def size(n: int) -> int:
        return Transaction(1, (TxIn(dev_outpoint(REGTEST, 0), bytes(64)),), (TxOut(1000, MINER_PUBKEY),) * n).size

    n = 16 + (limit - size(16)) // (size(17) - size(16))
    assert size(n) <= limit < size(n + 1)
    return n


# --- transactions alone (check_transaction) --------------------------------------


def test_valid_payment_passes_every_transaction_check(mem_chain):
    tx = spend_dev(0, [COIN, 2 * COIN])
    check_transaction(tx, REGTEST)
    assert check_tx_inputs(tx, mem_chain.utxo, 1, REGTEST) == REGTEST.dev_account_amount - 3 * COIN


def test_transaction_without_inputs_is_refused():
    tx = Transaction(1, (), (TxOut(COIN, MINER_PUBKEY),))
    with pytest.raises(E.TxNoInputs):
        check_transaction(tx, REGTEST)


def test_transaction_without_outputs_is_refused():
    tx = sign_transaction([(dev_outpoint(REGTEST, 0), dev_key(0))], [])
    with pytest.raises(E.TxNoOutputs):
        check_transaction(tx, REGTEST)


def test_transaction_one_output_over_the_size_limit_is_refused():
    n = outputs_filling(REGTEST.max_tx_bytes)
    largest = sign_transaction([(dev_outpoint(REGTEST, 0), dev_key(0))], [TxOut(1000, MINER_PUBKEY)] * n)
    too_large = sign_transaction([(dev_outpoint(REGTEST, 0), dev_key(0))], [TxOut(1000, MINER_PUBKEY)] * (n + 1))
    assert largest.size <= REGTEST.max_tx_bytes < too_large.size
    check_transaction(largest, REGTEST)
    with pytest.raises(E.TxTooLarge) as excinfo:
        check_transaction(too_large, REGTEST)
    assert excinfo.value.data["size"] == too_large.size


@pytest.mark.parametrize("amounts", [[0], [COIN, 0], [MAX_MONEY + 1], [MAX_MONEY // 2 + 1, MAX_MONEY // 2 + 1],
                                     [MAX_MONEY, 1]],
                         ids=["zero", "zero-second", "above-max-money", "sum-above-max-money", "sum-overflow"])
def test_output_amount_out_of_range_is_refused(amounts):
    with pytest.raises(E.TxAmountOutOfRange):
        check_transaction(spend_dev(0, amounts), REGTEST)


def test_single_output_of_exactly_max_money_is_in_range():
    check_transaction(spend_dev(0, [MAX_MONEY]), REGTEST)


def test_transaction_spending_one_output_twice_is_refused():
    outpoint = dev_outpoint(REGTEST, 0)
    tx = sign_transaction([(outpoint, dev_key(0)), (outpoint, dev_key(0))], [TxOut(COIN, MINER_PUBKEY)])
    with pytest.raises(E.TxDuplicateInput):
        check_transaction(tx, REGTEST)


@pytest.mark.parametrize("data", [b"", b"\x01\x00\x00"], ids=["empty", "three-bytes"])
def test_coinbase_without_its_height_is_refused(data):
    coinbase = Transaction(1, (TxIn(NULL_OUTPOINT, data),), (TxOut(COIN, MINER_PUBKEY),))
    assert coinbase.is_coinbase
    with pytest.raises(E.TxBadCoinbase):
        check_transaction(coinbase, REGTEST)


def test_coinbase_with_its_height_is_well_formed():
    check_transaction(make_coinbase(7, (TxOut(COIN, MINER_PUBKEY),)), REGTEST)


def test_null_outpoint_among_other_inputs_is_refused():
    tx = sign_transaction([(dev_outpoint(REGTEST, 0), dev_key(0)), (NULL_OUTPOINT, dev_key(0))],
                          [TxOut(COIN, MINER_PUBKEY)])
    assert not tx.is_coinbase
    with pytest.raises(E.TxUnexpectedCoinbase):
        check_transaction(tx, REGTEST)


# --- transactions against the UTXO set (check_tx_inputs) --------------------------


@pytest.mark.parametrize("outpoint", [OutPoint(bytes(range(32)), 0), OutPoint(REGTEST.genesis.txs[0].txid, 10)],
                         ids=["unknown-txid", "index-past-the-outputs"])
def test_spending_an_output_that_does_not_exist_is_refused(mem_chain, outpoint):
    tx = sign_transaction([(outpoint, dev_key(0))], [TxOut(COIN, MINER_PUBKEY)])
    with pytest.raises(E.TxMissingInput) as excinfo:
        check_tx_inputs(tx, mem_chain.utxo, 1, REGTEST)
    assert excinfo.value.data["outpoint"] == str(outpoint)


def test_genesis_premine_is_spendable_at_once(mem_chain):
    block = mem_chain.mine([spend_dev(3, [COIN])])
    assert mem_chain.height == 1
    assert dev_outpoint(REGTEST, 3) not in mem_chain.utxo.coins
    assert mem_chain.utxo.get_coin(OutPoint(block.txs[1].txid, 0)) == Coin(COIN, MINER_PUBKEY, 1, False)


def test_coinbase_spent_one_block_before_maturity_is_refused(mem_chain):
    coinbase = mem_chain.mine().txs[0]  # at height 1
    while mem_chain.height < REGTEST.coinbase_maturity - 1:
        mem_chain.mine()
    assert (mem_chain.height + 1) - 1 == REGTEST.coinbase_maturity - 1  # the next block is one short of maturity
    spend = pay([(OutPoint(coinbase.txid, 0), MINER_KEY)], [COIN])
    with pytest.raises(E.TxImmatureSpend):
        check_tx_inputs(spend, mem_chain.utxo, mem_chain.height + 1, REGTEST)
    with pytest.raises(E.BlockBadTx) as excinfo:
        mem_chain.validate(mem_chain.make_block([spend]))
    assert_block_refused_for_tx(excinfo, E.TxImmatureSpend)


def test_mature_coinbase_is_spendable(mem_chain):
    coinbase = mem_chain.mine().txs[0]  # at height 1
    while mem_chain.height < REGTEST.coinbase_maturity:
        mem_chain.mine()
    assert (mem_chain.height + 1) - 1 == REGTEST.coinbase_maturity  # the next block is exactly `maturity` later
    spend = pay([(OutPoint(coinbase.txid, 0), MINER_KEY)], [COIN])
    mem_chain.mine([spend])
    assert mem_chain.utxo.get_coin(OutPoint(spend.txid, 0)) is not None


def test_coinbase_of_the_same_block_is_immature(mem_chain):
    coinbase = make_coinbase(1, (TxOut(REGTEST.subsidy(1), MINER_PUBKEY),))
    spend = pay([(OutPoint(coinbase.txid, 0), MINER_KEY)], [REGTEST.subsidy(1)])
    block = with_txs(mem_chain.make_block(), [coinbase, spend])
    check_block(block, REGTEST)
    with pytest.raises(E.BlockBadTx) as excinfo:
        mem_chain.validate(block)
    assert_block_refused_for_tx(excinfo, E.TxImmatureSpend)


def test_outputs_above_inputs_are_refused(mem_chain):
    tx = spend_dev(0, [REGTEST.dev_account_amount, 1])
    with pytest.raises(E.TxInputsBelowOutputs):
        check_tx_inputs(tx, mem_chain.utxo, 1, REGTEST)


def test_outputs_equal_to_inputs_pay_no_fee(mem_chain):
    assert check_tx_inputs(spend_dev(0, [REGTEST.dev_account_amount]), mem_chain.utxo, 1, REGTEST) == 0


def test_inputs_adding_up_past_max_money_are_refused():
    key = dev_key(0)
    outpoints = [OutPoint(bytes([i]) * 32, 0) for i in (1, 2)]
    view = MemoryUtxoSet({op: Coin(MAX_MONEY, dev_pubkey(0), 5, False) for op in outpoints})
    tx = sign_transaction([(op, key) for op in outpoints], [TxOut(COIN, MINER_PUBKEY)])
    check_transaction(tx, REGTEST)
    with pytest.raises(E.TxInputValueOutOfRange):
        check_tx_inputs(tx, view, 6, REGTEST)


def test_signature_by_another_key_is_refused(mem_chain):
    tx = sign_transaction([(dev_outpoint(REGTEST, 0), dev_key(1))], [TxOut(COIN, MINER_PUBKEY)])
    with pytest.raises(E.TxBadSignature):
        check_tx_inputs(tx, mem_chain.utxo, 1, REGTEST)


def test_output_changed_after_signing_is_refused(mem_chain):
    tx = spend_dev(0, [COIN])
    check_tx_inputs(tx, mem_chain.utxo, 1, REGTEST)
    tampered = Transaction(tx.version, tx.inputs, (TxOut(COIN, OTHER_PUBKEY),))
    with pytest.raises(E.TxBadSignature):
        check_tx_inputs(tampered, mem_chain.utxo, 1, REGTEST)
    raised = Transaction(tx.version, tx.inputs, (TxOut(COIN + 1, MINER_PUBKEY),))
    with pytest.raises(E.TxBadSignature):
        check_tx_inputs(raised, mem_chain.utxo, 1, REGTEST)


def test_signature_is_bound_to_its_input_index():
    """Two coins of one key: input 0's signature copied onto input 1 must not verify (nor swapped)."""
    key = dev_key(0)
    outpoints = [OutPoint(bytes([i]) * 32, 0) for i in (1, 2)]
    view = MemoryUtxoSet({op: Coin(COIN, dev_pubkey(0), 5, False) for op in outpoints})
    tx = sign_transaction([(op, key) for op in outpoints], [TxOut(COIN, MINER_PUBKEY)], aux32=bytes(32))
    assert check_tx_inputs(tx, view, 6, REGTEST) == COIN
    first, second = tx.inputs
    copied = Transaction(tx.version, (first, TxIn(second.prev, first.signature)), tx.outputs)
    with pytest.raises(E.TxBadSignature) as excinfo:
        check_tx_inputs(copied, view, 6, REGTEST)
    assert excinfo.value.data["index"] == 1
    swapped = Transaction(tx.version, (TxIn(first.prev, second.signature), TxIn(second.prev, first.signature)),
                          tx.outputs)
    with pytest.raises(E.TxBadSignature) as excinfo:
        check_tx_inputs(swapped, view, 6, REGTEST)
    assert excinfo.value.data["index"] == 0


def test_signature_is_bound_to_every_input_of_the_transaction(mem_chain):
    """Dropping another input after signing changes what every input signed."""
    tx = sign_transaction([(dev_outpoint(REGTEST, 0), dev_key(0)), (dev_outpoint(REGTEST, 1), dev_key(1))],
                          [TxOut(COIN, MINER_PUBKEY)])
    check_tx_inputs(tx, mem_chain.utxo, 1, REGTEST)
    alone = Transaction(tx.version, tx.inputs[:1], tx.outputs)
    with pytest.raises(E.TxBadSignature):
        check_tx_inputs(alone, mem_chain.utxo, 1, REGTEST)


def test_inputs_of_a_transaction_verified_before_are_checked_without_its_signatures(mem_chain):
    """What a reorg asks of the pool: every rule but the signatures, which cannot have changed."""
    tx = spend_dev(0, [COIN])
    forged = Transaction(tx.version, (TxIn(tx.inputs[0].prev, bytes(64)),), tx.outputs)
    with pytest.raises(E.TxBadSignature):
        check_tx_inputs(forged, mem_chain.utxo, 1, REGTEST)
    fee = REGTEST.dev_account_amount - COIN
    assert check_tx_inputs(forged, mem_chain.utxo, 1, REGTEST, verify_signatures=False) == fee
    overspend = spend_dev(0, [REGTEST.dev_account_amount + 1])
    with pytest.raises(E.TxInputsBelowOutputs):
        check_tx_inputs(overspend, mem_chain.utxo, 1, REGTEST, verify_signatures=False)
    missing = Transaction(tx.version, (TxIn(OutPoint(bytes(32), 7), tx.inputs[0].signature),), tx.outputs)
    with pytest.raises(E.TxMissingInput):
        check_tx_inputs(missing, mem_chain.utxo, 1, REGTEST, verify_signatures=False)


@pytest.mark.parametrize("length", [0, 63, 65, 100])
def test_signature_of_wrong_length_is_refused(mem_chain, length):
    tx = spend_dev(0, [COIN])
    signature = (tx.inputs[0].signature * 2)[:length]
    bad = Transaction(tx.version, (TxIn(tx.inputs[0].prev, signature),), tx.outputs)
    with pytest.raises(E.TxBadSignature):
        check_tx_inputs(bad, mem_chain.utxo, 1, REGTEST)


# --- blocks alone (check_block) ----------------------------------------------------


def test_valid_block_passes_every_check(mem_chain):
    block = mem_chain.make_block([spend_dev(0, [COIN]), spend_dev(1, [COIN, COIN])])
    diff = mem_chain.validate(block)
    assert len(diff.spent) == 2
    assert Block.parse(block.raw) == block


def test_block_hash_above_its_target_is_refused(mem_chain):
    block = mem_chain.make_block()
    losing = Block(grind(block.header, winning=False), block.txs)
    assert not check_pow(losing.header)
    with pytest.raises(E.BlockBadPow):
        check_block(losing, REGTEST)


@pytest.mark.parametrize("bits", [0x20FFFFFF, 0x04923456, 0xFF7FFFFF, 0x2100FFFF, 0x00000000],
                         ids=["negative", "negative-small", "overflow", "above-pow-limit", "zero"])
def test_block_with_unusable_bits_is_refused(mem_chain, bits):
    block = mem_chain.make_block()
    bad = Block(dataclasses.replace(block.header, bits=bits), block.txs)
    with pytest.raises(E.BlockBadPow):
        check_block(bad, REGTEST)


def test_block_whose_merkle_root_does_not_match_is_refused(mem_chain):
    block = mem_chain.make_block([spend_dev(0, [COIN])])
    bad = with_header(block, merkle_root=merkle_root(list(reversed(block.txids))))
    with pytest.raises(E.BlockBadMerkleRoot):
        check_block(bad, REGTEST)


@pytest.mark.parametrize("spenders", [2, 5], ids=["odd-leaf-level", "odd-inner-level"])
def test_mutated_block_with_a_duplicated_tail_is_refused_and_the_honest_one_kept(mem_chain, spenders):
    """CVE-2012-2459: repeating the tail of an odd level keeps the merkle root (and the block hash)."""
    honest = mem_chain.make_block([spend_dev(i, [COIN]) for i in range(spenders)])
    count = len(honest.txs)
    level_width = 1 if count % 2 else 2  # 3 txs: odd at the leaves; 6 txs: odd one level up (3 pairs)
    mutated = Block(honest.header, honest.txs + honest.txs[count - level_width:])
    assert merkle_root(mutated.txids) == honest.header.merkle_root
    assert mutated.hash == honest.hash
    with pytest.raises(E.BlockMutated):
        check_block(mutated, REGTEST)
    mem_chain.append(honest)
    assert mem_chain.tip.hash == honest.hash


def test_block_repeating_a_transaction_elsewhere_is_refused(mem_chain):
    a, b = spend_dev(0, [COIN]), spend_dev(1, [COIN])
    block = mem_chain.make_block([a, b])
    repeated = with_txs(block, [block.txs[0], a, a, b])
    with pytest.raises(E.BlockMutated):
        check_block(repeated, REGTEST)


def test_block_over_the_size_limit_is_refused(mem_chain):
    fan = spend_dev(0, [1000 * COIN] * 12)
    n = outputs_filling(REGTEST.max_tx_bytes)
    txs = [fan]
    while sum(tx.size for tx in txs) <= REGTEST.max_block_bytes:
        index = len(txs) - 1
        txs.append(pay([(OutPoint(fan.txid, index), MINER_KEY)], [1000] * n))
    block = mem_chain.make_block(txs)
    assert all(tx.size <= REGTEST.max_tx_bytes for tx in txs)
    assert block.size > REGTEST.max_block_bytes
    with pytest.raises(E.BlockTooLarge):
        check_block(block, REGTEST)
    roomier = dataclasses.replace(REGTEST, max_block_bytes=block.size)
    check_block(block, roomier)  # the same block is valid in every other respect
    connect_block(block, 1, mem_chain.utxo, roomier)


def test_empty_block_is_refused(mem_chain):
    block = mem_chain.make_block()
    empty = Block(block.header, ())
    with pytest.raises(E.BlockNoCoinbase):
        check_block(empty, REGTEST)


def test_block_whose_first_transaction_is_not_a_coinbase_is_refused(mem_chain):
    block = mem_chain.make_block([spend_dev(0, [COIN])])
    reordered = with_txs(block, [block.txs[1], block.txs[0]])
    with pytest.raises(E.BlockNoCoinbase):
        check_block(reordered, REGTEST)
    without_coinbase = with_txs(block, [block.txs[1]])
    with pytest.raises(E.BlockNoCoinbase):
        check_block(without_coinbase, REGTEST)


def test_block_with_a_second_coinbase_is_refused(mem_chain):
    block = mem_chain.make_block()
    second = make_coinbase(1, (TxOut(COIN, MINER_PUBKEY),), extra_nonce=b"second")
    with pytest.raises(E.BlockMultipleCoinbase):
        check_block(with_txs(block, [block.txs[0], second]), REGTEST)


@pytest.mark.parametrize("breaker", ["no-outputs", "zero-amount", "duplicate-input", "null-input", "oversize"])
def test_block_with_a_transaction_breaking_a_rule_is_refused_naming_that_rule(mem_chain, breaker):
    outpoint, key = dev_outpoint(REGTEST, 0), dev_key(0)
    bad, error = {
        "no-outputs": (lambda: sign_transaction([(outpoint, key)], []), E.TxNoOutputs),
        "zero-amount": (lambda: spend_dev(0, [0]), E.TxAmountOutOfRange),
        "duplicate-input": (lambda: sign_transaction([(outpoint, key)] * 2, [TxOut(COIN, MINER_PUBKEY)]),
                            E.TxDuplicateInput),
        "null-input": (lambda: sign_transaction([(outpoint, key), (NULL_OUTPOINT, key)],
                                                [TxOut(COIN, MINER_PUBKEY)]), E.TxUnexpectedCoinbase),
        "oversize": (lambda: spend_dev(0, [1000] * (outputs_filling(REGTEST.max_tx_bytes) + 1)), E.TxTooLarge),
    }[breaker]
    block = mem_chain.make_block([bad()], fees=0)
    with pytest.raises(E.BlockBadTx) as excinfo:
        check_block(block, REGTEST)
    assert_block_refused_for_tx(excinfo, error)
    assert excinfo.value.data["txid"] == block.txs[1].txid_hex


def test_block_whose_coinbase_lacks_the_height_is_refused(mem_chain):
    block = mem_chain.make_block()
    short = Transaction(1, (TxIn(NULL_OUTPOINT, b"\x01"),), block.txs[0].outputs)
    with pytest.raises(E.BlockBadTx) as excinfo:
        check_block(with_txs(block, [short]), REGTEST)
    assert_block_refused_for_tx(excinfo, E.TxBadCoinbase)


# --- headers against their parent (check_header_context) ---------------------------


def test_block_not_linking_to_the_tip_is_refused(mem_chain):
    mem_chain.mine()
    block = mem_chain.make_block()
    elsewhere = with_header(block, prev_hash=REGTEST.genesis_hash)
    check_block(elsewhere, REGTEST)
    with pytest.raises(E.BlockBadPrevHash):
        check_header_context(elsewhere.header, mem_chain.context(), REGTEST, mem_chain.now)


@pytest.mark.parametrize("version", [0, -1, -(2**31)])
def test_block_with_a_version_below_one_is_refused(mem_chain, version):
    block = with_header(mem_chain.make_block(), version=version)
    check_block(block, REGTEST)
    with pytest.raises(E.BlockBadVersion):
        check_header_context(block.header, mem_chain.context(), REGTEST, mem_chain.now)


def test_block_with_bits_other_than_expected_is_refused(mem_chain):
    block = with_header(mem_chain.make_block(), bits=0x2000FFFF)  # valid and harder, but not what the mem_chain asks
    check_block(block, REGTEST)
    with pytest.raises(E.BlockBadBits) as excinfo:
        check_header_context(block.header, mem_chain.context(), REGTEST, mem_chain.now)
    assert excinfo.value.data["height"] == 1


def test_block_timed_at_the_median_time_past_is_refused_and_one_second_later_accepted(mem_chain):
    for _ in range(4):
        mem_chain.mine()
    ctx = mem_chain.context()
    times = [b.header.time for b in mem_chain.blocks]
    assert ctx.median_time_past == median_time_past(times) < mem_chain.tip.header.time
    with pytest.raises(E.BlockTimeTooOld):
        mem_chain.validate(mem_chain.make_block(time=ctx.median_time_past))
    mem_chain.append(mem_chain.make_block(time=ctx.median_time_past + 1))  # before its parent, as Bitcoin allows


def test_block_timed_too_far_in_the_future_is_refused(mem_chain):
    now = mem_chain.now
    latest = now + REGTEST.max_future_block_time_s
    check_header_context(mem_chain.make_block(time=latest).header, mem_chain.context(), REGTEST, now)
    with pytest.raises(E.BlockTimeTooNew):
        check_header_context(mem_chain.make_block(time=latest + 1).header, mem_chain.context(), REGTEST, now)


def test_median_time_past_uses_only_the_last_eleven_blocks(mem_chain):
    for _ in range(14):
        mem_chain.mine()
    times = [b.header.time for b in mem_chain.blocks[-11:]]
    assert mem_chain.context().median_time_past == sorted(times)[5]
    assert median_time_past([5, 1, 9]) == 5


# --- blocks against the UTXO set (connect_block) ----------------------------------


def test_coinbase_committing_to_another_height_is_refused(mem_chain):
    template = mem_chain.template()
    template.height += 1
    template.reward = REGTEST.subsidy(mem_chain.height + 1)
    block = solve(template)
    check_block(block, REGTEST)
    with pytest.raises(E.BlockBadCoinbaseHeight):
        connect_block(block, mem_chain.height + 1, mem_chain.utxo, REGTEST)


def test_coinbase_paying_more_than_subsidy_plus_fees_is_refused(mem_chain):
    txs = [spend_dev(0, [REGTEST.dev_account_amount - 700]), spend_dev(1, [REGTEST.dev_account_amount - 300])]
    exact = mem_chain.template(txs)
    assert exact.reward == REGTEST.subsidy(1) + 1000
    greedy = mem_chain.template(txs)
    greedy.reward += 1
    with pytest.raises(E.BlockBadCoinbaseAmount):
        mem_chain.validate(solve(greedy))
    mem_chain.append(solve(exact))
    assert mem_chain.utxo.get_coin(OutPoint(mem_chain.tip.txs[0].txid, 0)).amount == REGTEST.subsidy(1) + 1000


def test_coinbase_paying_less_than_allowed_is_accepted(mem_chain):
    mem_chain.mine([spend_dev(0, [COIN])], fees=0)
    assert mem_chain.tip.txs[0].outputs[0].amount == REGTEST.subsidy(1)


def test_two_transactions_of_one_block_spending_one_output_are_refused(mem_chain):
    first, second = spend_dev(0, [COIN]), spend_dev(0, [2 * COIN])
    assert first.txid != second.txid
    block = mem_chain.make_block([first, second], fees=0)
    check_block(block, REGTEST)
    with pytest.raises(E.BlockDoubleSpend):
        connect_block(block, 1, mem_chain.utxo, REGTEST)


def test_spending_an_output_already_spent_on_the_chain_is_refused(mem_chain):
    mem_chain.mine([spend_dev(0, [COIN])])
    again = spend_dev(0, [2 * COIN])
    with pytest.raises(E.BlockBadTx) as excinfo:
        mem_chain.validate(mem_chain.make_block([again], fees=0))
    assert_block_refused_for_tx(excinfo, E.TxMissingInput)


def test_block_refused_for_a_bad_signature_names_the_rule(mem_chain):
    tx = sign_transaction([(dev_outpoint(REGTEST, 0), dev_key(1))], [TxOut(COIN, MINER_PUBKEY)])
    with pytest.raises(E.BlockBadTx) as excinfo:
        mem_chain.validate(mem_chain.make_block([tx], fees=0))
    assert_block_refused_for_tx(excinfo, E.TxBadSignature)
    assert excinfo.value.reason.startswith("bad-blk-tx: ")
    assert "bad-txns-signature" in excinfo.value.reason


def test_output_created_and_spent_in_the_same_block_never_enters_the_set(mem_chain):
    parent = spend_dev(0, [COIN, 2 * COIN])
    child = pay([(OutPoint(parent.txid, 1), MINER_KEY)], [COIN])
    before = mem_chain.coins()
    diff = mem_chain.validate(mem_chain.make_block([parent, child]))
    created = dict(diff.created)
    assert OutPoint(parent.txid, 1) not in created
    assert OutPoint(parent.txid, 0) in created and OutPoint(child.txid, 0) in created
    assert dict(diff.spent) == {dev_outpoint(REGTEST, 0): before[dev_outpoint(REGTEST, 0)]}
    assert mem_chain.coins() == before  # connect_block does not touch the view


def test_transaction_spending_a_later_transaction_of_the_block_is_refused(mem_chain):
    parent = spend_dev(0, [COIN, 2 * COIN])
    child = pay([(OutPoint(parent.txid, 1), MINER_KEY)], [COIN])
    block = mem_chain.make_block([child, parent], fees=0)
    check_block(block, REGTEST)
    with pytest.raises(E.BlockBadTx) as excinfo:
        connect_block(block, 1, mem_chain.utxo, REGTEST)
    assert_block_refused_for_tx(excinfo, E.TxMissingInput)


# --- difficulty (next_bits on the local network) -----------------------------------


INTERVAL = LOCAL.retarget_interval
TIMESPAN = LOCAL.retarget_timespan_s
T0 = LOCAL.genesis_time


def retarget_local(elapsed_s: int, prev_bits: int = LOCAL.genesis_bits) -> int:
    return next_bits(LOCAL, INTERVAL * 3, prev_bits, T0 + elapsed_s, T0)


def test_window_mined_too_fast_makes_the_target_smaller():
    new = retarget_local(TIMESPAN // 2)
    assert bits_to_target(new) < bits_to_target(LOCAL.genesis_bits)
    assert new == target_to_bits(bits_to_target(LOCAL.genesis_bits) // 2)


def test_window_mined_too_slowly_makes_the_target_larger():
    new = retarget_local(TIMESPAN * 2)
    assert bits_to_target(new) > bits_to_target(LOCAL.genesis_bits)
    assert new == target_to_bits(bits_to_target(LOCAL.genesis_bits) * 2)


def test_window_on_time_keeps_the_target():
    assert retarget_local(TIMESPAN) == LOCAL.genesis_bits


@pytest.mark.parametrize(("elapsed", "factor"), [(0, 1 / 4), (1, 1 / 4), (-50, 1 / 4), (TIMESPAN * 100, 4)],
                         ids=["instant", "one-second", "backwards-clock", "very-slow"])
def test_retarget_is_clamped_to_max_adjust(elapsed, factor):
    target = bits_to_target(LOCAL.genesis_bits)
    expected = target // LOCAL.max_adjust if factor < 1 else target * LOCAL.max_adjust
    assert retarget_local(elapsed) == target_to_bits(expected)


def test_retarget_never_passes_the_pow_limit():
    near_limit = target_to_bits(LOCAL.pow_limit // 2)
    assert retarget_local(TIMESPAN * 4, near_limit) == target_to_bits(LOCAL.pow_limit) == LOCAL.pow_limit_bits


@pytest.mark.parametrize("height", [1, INTERVAL - 1, INTERVAL + 1, 2 * INTERVAL - 1])
def test_bits_are_unchanged_off_the_window_boundary(height):
    assert next_bits(LOCAL, height, LOCAL.genesis_bits, T0 + 1, None) == LOCAL.genesis_bits
    assert next_bits(LOCAL, height, 0x1D00FFFF, T0 + 10**6, T0) == 0x1D00FFFF


def test_retarget_height_without_window_start_is_an_error():
    with pytest.raises(ValueError):
        next_bits(LOCAL, INTERVAL, LOCAL.genesis_bits, T0, None)


def test_regtest_never_retargets():
    assert next_bits(REGTEST, 2016, REGTEST.genesis_bits, T0 + 1, T0) == REGTEST.genesis_bits


def retarget_test_params() -> ChainParams:
    """Regtest's easy target but a retarget every 4 blocks (its genesis nonce found here)."""
    for nonce in range(256):
        params = ChainParams(name="retarget-test", pow_limit_bits=0x207FFFFF, genesis_bits=0x207FFFFF,
                             genesis_time=T0, genesis_nonce=nonce, target_spacing_s=5, retarget_interval=4,
                             coinbase_maturity=10, dev_accounts=1)
        if check_pow(params.genesis.header, params.pow_limit):
            return params
    raise AssertionError("no genesis nonce")


def test_first_retarget_window_opens_at_block_one_not_at_genesis():
    assert retarget_window_start(LOCAL, INTERVAL) == 1
    assert retarget_window_start(LOCAL, 3 * INTERVAL) == 2 * INTERVAL
    assert [retarget_window_start(LOCAL, h) for h in (0, 1, INTERVAL - 1, INTERVAL + 1)] == [None] * 4
    assert retarget_window_start(REGTEST, 2016) is None


def test_block_after_a_fast_window_must_carry_the_harder_bits():
    """The first window is measured from block 1, so a genesis fixed long ago does not make it look slow."""
    params = retarget_test_params()
    chain = Builder(params)
    chain.mine(time=params.genesis_time + 10**6, now=params.genesis_time + 10**6)
    for _ in range(params.retarget_interval - 2):
        chain.mine(time=chain.tip.header.time + 1)
    expected = chain.context().expected_bits
    assert bits_to_target(expected) < bits_to_target(params.genesis_bits)
    assert expected == target_to_bits(bits_to_target(params.genesis_bits) * (params.retarget_timespan_s // 4)
                                      // params.retarget_timespan_s)
    block = chain.make_block()
    assert block.header.bits == expected
    stale = with_header(block, bits=params.genesis_bits)
    with pytest.raises(E.BlockBadBits):
        chain.validate(stale)
    chain.append(block)


# --- fork choice -------------------------------------------------------------------


def entry(name: str, parent: ChainEntry | None, work: int = 10) -> ChainEntry:
    digest = hashlib.sha256(name.encode()).digest()
    if parent is None:
        return ChainEntry(digest, bytes(32), 0, work)
    return ChainEntry(digest, parent.hash, parent.height + 1, parent.chain_work + work)


@pytest.fixture
def tree():
    """g - a1 - a2 - a3; from a1 a longer branch b2 - b3 - b4; off g, c1: one block outweighing both."""
    g = entry("g", None)
    a1 = entry("a1", g)
    a2 = entry("a2", a1)
    a3 = entry("a3", a2)
    b2 = entry("b2", a1)
    b3 = entry("b3", b2)
    b4 = entry("b4", b3)
    c1 = entry("c1", g, work=100)
    named = {"g": g, "a1": a1, "a2": a2, "a3": a3, "b2": b2, "b3": b3, "b4": b4, "c1": c1}
    return {e.hash: e for e in named.values()}, named


def test_reorg_disconnects_to_the_fork_point_and_connects_the_new_branch(tree):
    nodes, n = tree
    assert find_fork_point(n["a3"], n["b4"], nodes.__getitem__) == n["a1"]
    disconnect, connect = reorg_path(n["a3"], n["b4"], nodes.__getitem__)
    assert disconnect == [n["a3"], n["a2"]]
    assert connect == [n["b2"], n["b3"], n["b4"]]


def test_reorg_along_the_same_chain_only_connects(tree):
    nodes, n = tree
    assert reorg_path(n["a1"], n["a3"], nodes.__getitem__) == ([], [n["a2"], n["a3"]])
    assert reorg_path(n["a3"], n["a1"], nodes.__getitem__) == ([n["a3"], n["a2"]], [])
    assert reorg_path(n["a2"], n["a2"], nodes.__getitem__) == ([], [])


def test_reorg_to_a_branch_from_genesis_disconnects_everything_else(tree):
    nodes, n = tree
    assert find_fork_point(n["b4"], n["c1"], nodes.__getitem__) == n["g"]
    assert reorg_path(n["b4"], n["c1"], nodes.__getitem__) == ([n["b4"], n["b3"], n["b2"], n["a1"]], [n["c1"]])


def test_chain_with_more_work_wins_even_when_shorter(tree):
    _, n = tree
    assert n["c1"].height < n["b4"].height and n["c1"].chain_work > n["b4"].chain_work
    assert is_better_chain(n["c1"], n["b4"])
    assert not is_better_chain(n["b4"], n["c1"])
    assert is_better_chain(n["b4"], n["a3"])


def test_equal_work_keeps_the_first_seen_tip(tree):
    _, n = tree
    rival = entry("a3-rival", n["a2"])
    assert rival.chain_work == n["a3"].chain_work
    assert not is_better_chain(rival, n["a3"])
    assert not is_better_chain(n["a3"], rival)


# --- decoding ----------------------------------------------------------------------


def sample_tx() -> Transaction:
    return spend_dev(0, [COIN, 2 * COIN])


def tx_fields(tx: Transaction) -> list:
    return [tx.version, [[i.prev.txid, i.prev.index, i.signature] for i in tx.inputs],
            [[o.amount, o.pubkey] for o in tx.outputs]]


def packed(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def tx_decode_cases() -> dict[str, bytes]:
    tx = sample_tx()
    raw = tx.raw
    fields = tx_fields(tx)
    pubkey = tx.outputs[0].pubkey

    def altered(path, value):
        copy = msgpack.unpackb(packed(fields), raw=False)
        target = copy
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        return packed(copy)

    assert raw.startswith(b"\x93\x01")
    assert b"\xce" + COIN.to_bytes(4, "big") in raw and b"\xc4\x20" + pubkey in raw
    return {
        "empty": b"",
        "truncated": raw[:-1],
        "truncated-to-one-byte": raw[:1],
        "trailing-byte": raw + b"\x00",
        "two-transactions": raw + raw,
        "non-canonical-version-uint8": b"\x93\xcc\x01" + raw[2:],
        "non-canonical-amount-uint64": raw.replace(b"\xce" + COIN.to_bytes(4, "big"),
                                                   b"\xcf" + COIN.to_bytes(8, "big"), 1),
        "non-canonical-bin16-pubkey": raw.replace(b"\xc4\x20" + pubkey, b"\xc5\x00\x20" + pubkey, 1),
        "non-canonical-array16": b"\xdc\x00\x03" + raw[1:],
        "str-instead-of-bin-pubkey": altered([2, 0, 1], "k" * 32),
        "str-instead-of-bin-txid": altered([1, 0, 0], "t" * 32),
        "bool-instead-of-int-version": altered([0], True),
        "bool-instead-of-int-index": altered([1, 0, 1], False),
        "bool-instead-of-int-amount": altered([2, 0, 0], True),
        "float-amount": altered([2, 0, 0], 1.0),
        "nil-signature": altered([1, 0, 2], None),
        "negative-version": altered([0], -1),
        "index-above-uint32": altered([1, 0, 1], 2**32),
        "negative-amount": altered([2, 0, 0], -1),
        "short-txid": altered([1, 0, 0], bytes(31)),
        "long-pubkey": altered([2, 0, 1], bytes(33)),
        "signature-over-100-bytes": altered([1, 0, 2], bytes(101)),
        "input-with-two-fields": altered([1, 0], [tx.inputs[0].prev.txid, 0]),
        "output-with-three-fields": altered([2, 0], [COIN, pubkey, 0]),
        "inputs-not-a-list": altered([1], {"a": 1}),
        "map-instead-of-list": packed({"version": 1, "inputs": [], "outputs": []}),
        "four-fields": packed(fields + [0]),
        "integer": packed(7),
        "ext-type": packed(msgpack.ExtType(1, raw)),
        "invalid-utf8-str": b"\x93\x01\x91\x93\xa2\xff\xfe\x00\xc4\x00\x90",
        "deep-nesting": b"\x91" * 100_000 + b"\xc0",
        "reserved-byte": b"\xc1",
        "declared-length-beyond-input": b"\xdd\xff\xff\xff\xff",
        "timestamp-ext": packed(msgpack.Timestamp(1, 0)),
        "map-with-list-key": b"\x81\x90\x00",
    }


@pytest.mark.parametrize("case", list(tx_decode_cases()))
def test_transaction_that_is_not_a_canonical_encoding_is_refused(case):
    with pytest.raises(E.DecodeError):
        Transaction.parse(tx_decode_cases()[case])


def test_largest_uint64_amount_decodes_and_is_left_to_the_amount_rule():
    raw = b"\x93\x01\x91\x93\xc4\x20" + bytes(32) + b"\x00\xc4\x00\x91\x92\xcf" + b"\xff" * 8 + b"\xc4\x20" + bytes(32)
    tx = Transaction.parse(raw)
    assert tx.outputs[0].amount == 2**64 - 1 and tx.raw == raw
    with pytest.raises(E.TxAmountOutOfRange):
        check_transaction(tx, REGTEST)


def test_canonical_transaction_round_trips():
    tx = sample_tx()
    again = Transaction.parse(tx.raw)
    assert again == tx and again.raw == tx.raw and again.txid == tx.txid
    assert Transaction.parse(packed(tx_fields(tx))) == tx


def block_decode_cases(mem_chain: Builder) -> dict[str, bytes]:
    block = mem_chain.make_block([sample_tx()])
    raw = block.raw
    header, txs = block.header.serialize(), [tx.raw for tx in block.txs]
    tx_raw = txs[1]
    assert raw.startswith(b"\x92\xc4\x50" + header)
    return {
        "truncated": raw[:-1],
        "trailing-byte": raw + b"\xc0",
        "header-79-bytes": packed([header[:79], txs]),
        "header-81-bytes": packed([header + b"\x00", txs]),
        "header-as-str": packed([header.hex(), txs]),
        "header-as-list": packed([list(header), txs]),
        "transactions-not-a-list": packed([header, txs[0]]),
        "transaction-as-fields-not-bytes": packed([header, [txs[0], tx_fields(block.txs[1])]]),
        "transaction-as-str": packed([header, [txs[0], "x"]]),
        "transaction-with-trailing-byte": packed([header, [txs[0], tx_raw + b"\x00"]]),
        "transaction-non-canonical": packed([header, [txs[0], b"\x93\xcc\x01" + tx_raw[2:]]]),
        "non-canonical-bin32-header": b"\x92\xc6\x00\x00\x00\x50" + raw[len(b"\x92\xc4\x50"):],
        "three-fields": packed([header, txs, []]),
        "map": packed({"header": header, "txs": txs}),
        "bytes-only": header,
    }


@pytest.mark.parametrize("case", list(block_decode_cases(Builder())))
def test_block_that_is_not_a_canonical_encoding_is_refused(mem_chain, case):
    with pytest.raises(E.DecodeError):
        Block.parse(block_decode_cases(mem_chain)[case])


def test_canonical_block_round_trips(mem_chain):
    block = mem_chain.make_block([sample_tx()])
    again = Block.parse(block.raw)
    assert again == block and again.raw == block.raw and again.hash == block.hash


@pytest.mark.parametrize("raw", [b"", bytes(79), bytes(81), bytearray(80), "0" * 80, None],
                         ids=["empty", "79-bytes", "81-bytes", "bytearray", "str", "none"])
def test_header_that_is_not_80_bytes_is_refused(raw):
    with pytest.raises(E.DecodeError):
        BlockHeader.parse(raw)


# --- errors carry their data ---------------------------------------------------------


def test_errors_carry_a_reject_code_and_their_data(mem_chain):
    tx = sign_transaction([(OutPoint(bytes(range(32)), 3), dev_key(0))], [TxOut(COIN, MINER_PUBKEY)])
    with pytest.raises(E.TxMissingInput) as excinfo:
        check_tx_inputs(tx, mem_chain.utxo, 1, REGTEST)
    error = excinfo.value
    assert isinstance(error, E.InvalidTx) and isinstance(error, E.ValidationError)
    assert error.code == "bad-txns-inputs-missingorspent"
    assert error.reason.startswith("bad-txns-inputs-missingorspent: ")
    assert error.data == {"txid": tx.txid_hex, "index": 0, "outpoint": str(OutPoint(bytes(range(32)), 3))}
    assert issubclass(E.BlockBadTx, E.InvalidBlock) and issubclass(E.DecodeError, E.ValidationError)


def test_every_error_the_consensus_code_raises_is_tested_here():
    raised: set[str] = set()
    for module in CONSENSUS_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if hasattr(E, name) and name != "ValidationError":
                    raised.add(name)
    tested = {node.attr for node in ast.walk(ast.parse(Path(__file__).read_text()))
              if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "E"}
    assert {"BlockBadTx", "TxMissingInput", "DecodeError"} <= raised
    assert raised - tested == set()


def test_median_time_past_takes_the_upper_middle_of_an_even_count_like_bitcoin():
    from zcoin.consensus.validation import median_time_past

    assert median_time_past([40, 10, 30, 20]) == 30
    assert median_time_past([5, 1, 3]) == 3
    assert median_time_past(range(100, 111)) == 105
