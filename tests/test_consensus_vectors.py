"""Bitcoin's own data run through zcoin's consensus code.

Real headers, merkle trees, compact targets, retargets and BIP340 signatures
from ``../shared/vectors`` (one test case per vector, see ``conftest.py``), and
the genesis blocks of zcoin's own networks.
"""

from __future__ import annotations

import dataclasses

import pytest

from support.vectors import load_bip340, load_json
from zcoin.consensus.crypto import has_duplicate_tail
from zcoin.consensus.params import NETWORKS, ChainParams
from zcoin.consensus.pow import (
    MAX_TARGET,
    decode_compact,
    hash_meets_target,
    next_work_required,
    target_of,
)
from zcoin.consensus.primitives import Block
from zcoin.consensus.validation import check_block, genesis_diff, next_bits
from zcoin.core import (
    BlockHeader,
    bits_to_target,
    check_pow,
    merkle_root,
    schnorr_sign,
    schnorr_verify,
    target_to_bits,
)

MAINNET_POW_LIMIT = int("00000000" + "f" * 56, 16)
REGTEST_POW_LIMIT = int("7f" + "f" * 62, 16)
SIGN_BIT = 0x00800000


def internal(display_hex: str) -> bytes:
    """Internal byte order of a hash given in display hex."""
    return bytes.fromhex(display_hex)[::-1]


def test_vector_files_hold_every_expected_case(vectors_dir):
    assert {p.name for p in vectors_dir.iterdir()} >= {
        "README.md", "headers.json", "merkle.json", "compact_bits.json", "retarget.json", "bip340.csv"}
    headers = load_json("headers.json")
    compact = load_json("compact_bits.json")
    assert len(headers["headers"]) == 10
    assert len(headers["other_networks_genesis"]) == 2
    assert len(load_json("merkle.json")["blocks"]) == 7
    assert len(compact["set_compact_vectors"]) == 20
    assert len(compact["real_chain_bits"]) == 8
    assert len(compact["check_proof_of_work_rejections"]) == 5
    assert len(load_json("retarget.json")["vectors"]) == 4
    assert [int(row["index"]) for row in load_bip340()] == list(range(19))


# --- headers -------------------------------------------------------------------------


def test_real_header_round_trips_to_the_same_80_bytes(header_case):
    raw = bytes.fromhex(header_case["header_hex"])
    header = BlockHeader.parse(raw)
    assert header.serialize() == raw
    assert BlockHeader(header.version, header.prev_hash, header.merkle_root, header.time, header.bits,
                       header.nonce).serialize() == raw


def test_real_header_fields_decode_as_bitcoin_reads_them(header_case):
    header = BlockHeader.parse(bytes.fromhex(header_case["header_hex"]))
    fields = header_case["fields"]
    assert header.version == fields["version"]
    assert header.prev_hash == internal(fields["prev_block"])
    assert header.merkle_root == internal(fields["merkle_root"])
    assert header.time == fields["time"]
    assert header.bits == int(fields["bits"], 16)
    assert header.nonce == fields["nonce"]


def test_real_header_hashes_to_its_block_hash(header_case):
    header = BlockHeader.parse(bytes.fromhex(header_case["header_hex"]))
    assert header.hash_hex == header_case["block_hash"]
    assert header.hash == internal(header_case["block_hash"])
    rebuilt = BlockHeader(header.version, header.prev_hash, header.merkle_root, header.time, header.bits,
                          header.nonce)
    assert rebuilt.hash_hex == header_case["block_hash"]  # computed from fields, not from the parsed bytes


def test_real_header_passes_proof_of_work(header_case):
    header = BlockHeader.parse(bytes.fromhex(header_case["header_hex"]))
    pow_limit = REGTEST_POW_LIMIT if header_case.get("network") == "regtest" else MAINNET_POW_LIMIT
    assert bits_to_target(header.bits) == int(header_case["target_hex"], 16)
    assert check_pow(header)
    assert check_pow(header, pow_limit)


def test_real_header_with_another_nonce_fails_proof_of_work(header_case):
    header = BlockHeader.parse(bytes.fromhex(header_case["header_hex"]))
    if header.bits == 0x207FFFFF:  # regtest: every other hash wins, so look for a losing nonce
        nonce = next(n for n in range(64) if not check_pow(dataclasses.replace(header, nonce=n)))
    else:
        nonce = header.nonce ^ 1
    assert not check_pow(dataclasses.replace(header, nonce=nonce))


def test_real_chain_links_each_header_to_the_previous_hash():
    headers = [BlockHeader.parse(bytes.fromhex(h["header_hex"])) for h in load_json("headers.json")["headers"]]
    heights = [h["height"] for h in load_json("headers.json")["headers"]]
    linked = [(a, b) for a, b, ha, hb in zip(headers, headers[1:], heights, heights[1:]) if hb == ha + 1]
    assert linked, "the vectors hold at least one pair of consecutive heights"
    for parent, child in linked:
        assert child.prev_hash == parent.hash


# --- merkle roots ------------------------------------------------------------------


def test_merkle_root_of_real_block_matches_bitcoin(merkle_case):
    txids = [internal(t) for t in merkle_case["txids"]]
    assert len(txids) == merkle_case["tx_count"]
    root = merkle_root(txids)
    assert root[::-1].hex() == merkle_case["merkle_root"]
    header = BlockHeader.parse(bytes.fromhex(merkle_case["header_hex"]))
    assert header.merkle_root == root
    assert header.hash_hex == merkle_case["block_hash"]
    assert not has_duplicate_tail(txids)


def test_real_block_with_its_odd_tail_duplicated_keeps_its_root_but_is_flagged(merkle_case):
    txids = [internal(t) for t in merkle_case["txids"]]
    mutated = txids + txids[-1:]
    if len(txids) % 2 and len(txids) > 1:  # Bitcoin pairs the last txid of an odd level with itself
        assert merkle_root(mutated) == merkle_root(txids)
    else:
        assert merkle_root(mutated) != merkle_root(txids)
    assert has_duplicate_tail(mutated) == (len(txids) % 2 == 1)


def test_merkle_root_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        merkle_root([])


# --- compact bits ------------------------------------------------------------------


def test_set_compact_decodes_like_bitcoin(set_compact_case):
    bits = int(set_compact_case["compact"], 16)
    target, negative, overflow = decode_compact(bits)
    assert negative == set_compact_case["negative"]
    assert overflow == set_compact_case["overflow"]
    if set_compact_case["target_hex"] is not None:  # an overflow's value is unspecified
        assert target == int(set_compact_case["target_hex"], 16)
        assert bits_to_target(bits) == target


def test_get_compact_reencodes_like_bitcoin(set_compact_case):
    if set_compact_case["get_compact"] is None:
        assert set_compact_case["overflow"]
        assert target_of(int(set_compact_case["compact"], 16)) is None
        return
    target = int(set_compact_case["target_hex"], 16)
    expected = int(set_compact_case["get_compact"], 16)
    sign = SIGN_BIT if set_compact_case["negative"] else 0  # GetCompact(fNegative=true) sets the sign bit
    assert target_to_bits(target) | sign == expected


def test_negative_or_overflowing_or_zero_bits_give_no_usable_target(set_compact_case):
    bits = int(set_compact_case["compact"], 16)
    usable = target_of(bits)
    if set_compact_case["negative"] or set_compact_case["overflow"] or set_compact_case["target_hex"] == "0" * 64:
        assert usable is None
    else:
        assert usable == int(set_compact_case["target_hex"], 16)


@pytest.mark.parametrize(("bits", "overflow"), [
    (0x207FFF00, False), (0x2100FFFF, False), (0x21010000, True), (0x217FFFFF, True),
    (0x220000FF, False), (0x22000100, True), (0x23000001, True), (0x23000000, False), (0xFF000000, False),
], ids=lambda v: f"{v:#010x}" if not isinstance(v, bool) else str(v))
def test_compact_overflow_boundaries_follow_set_compact(bits, overflow):
    """Each exponent from 32 up allows one byte less of mantissa (the target must fit in 256 bits)."""
    target, negative, flagged = decode_compact(bits)
    assert flagged == overflow
    assert not negative
    assert (target_of(bits) is None) == (overflow or target == 0)


def test_get_compact_avoids_the_sign_bit(get_compact_case):
    target = int(get_compact_case["target_hex"], 16)
    bits = target_to_bits(target)
    assert bits == int(get_compact_case["get_compact"], 16)
    assert not bits & SIGN_BIT
    assert bits_to_target(bits) == target


def test_real_chain_bits_round_trip(real_bits_case):
    bits = int(real_bits_case["compact"], 16)
    target = int(real_bits_case["target_hex"], 16)
    assert decode_compact(bits) == (target, False, False)
    assert target_to_bits(target) == int(real_bits_case["get_compact"], 16) == bits


def test_target_to_bits_refuses_a_negative_target():
    with pytest.raises(ValueError):
        target_to_bits(-1)


def test_check_proof_of_work_rejection(pow_rejection_case):
    bits = int(pow_rejection_case["nBits"], 16)
    block_hash = internal(pow_rejection_case["hash_hex"])
    target = target_of(bits, MAINNET_POW_LIMIT)
    valid = target is not None and hash_meets_target(block_hash, target)
    assert valid == pow_rejection_case["expected_valid"]


def test_hash_exactly_at_target_passes_and_one_above_fails():
    target = bits_to_target(0x1D00FFFF)
    assert hash_meets_target(target.to_bytes(32, "little"), target)
    assert not hash_meets_target((target + 1).to_bytes(32, "little"), target)
    assert target_of(0x1D00FFFF, MAINNET_POW_LIMIT) == target
    assert target_of(0x1D01FFFF, MAINNET_POW_LIMIT) is None  # easier than the limit
    assert target_of(0x1D01FFFF) == bits_to_target(0x1D01FFFF)  # no limit given: only the encoding matters
    assert MAX_TARGET == (1 << 256) - 1


# --- retargeting -------------------------------------------------------------------


def bitcoin_mainnet_like_params() -> ChainParams:
    """Bitcoin's retarget numbers in a ChainParams (its genesis is not Bitcoin's and is not used)."""
    return ChainParams(name="bitcoin-retarget", pow_limit_bits=0x1D00FFFF, genesis_bits=0x1D00FFFF,
                       genesis_time=1231006505, genesis_nonce=0, target_spacing_s=600, retarget_interval=2016,
                       dev_accounts=0)


def test_retarget_matches_bitcoin(retarget_case):
    params = load_json("retarget.json")["params"]
    new_bits = next_work_required(
        int(retarget_case["pindexLast_nBits"], 16), retarget_case["nFirstBlockTime"],
        retarget_case["pindexLast_nTime"], timespan_s=params["nPowTargetTimespan"],
        pow_limit=int(params["powLimit"], 16))
    assert new_bits == int(retarget_case["expected_nBits"], 16)


def test_next_bits_on_a_bitcoin_window_boundary_matches_bitcoin(retarget_case):
    params = bitcoin_mainnet_like_params()
    height = retarget_case["pindexLast_nHeight"] + 1
    assert params.retarget_timespan_s == load_json("retarget.json")["params"]["nPowTargetTimespan"]
    assert height % params.retarget_interval == 0
    new_bits = next_bits(params, height, int(retarget_case["pindexLast_nBits"], 16),
                         retarget_case["pindexLast_nTime"], retarget_case["nFirstBlockTime"])
    assert new_bits == int(retarget_case["expected_nBits"], 16)


# --- BIP340 ------------------------------------------------------------------------


def test_bip340_signing_reproduces_the_signature(bip340_sign_case):
    signature = schnorr_sign(bytes.fromhex(bip340_sign_case["message"]),
                             bytes.fromhex(bip340_sign_case["secret key"]),
                             bytes.fromhex(bip340_sign_case["aux_rand"]))
    assert signature.hex().upper() == bip340_sign_case["signature"]


def test_bip340_verification_gives_the_expected_result(bip340_verify_case):
    expected = bip340_verify_case["verification result"] == "TRUE"
    result = schnorr_verify(bytes.fromhex(bip340_verify_case["message"]),
                            bytes.fromhex(bip340_verify_case["public key"]),
                            bytes.fromhex(bip340_verify_case["signature"]))
    assert result is expected


def test_bip340_message_not_32_bytes_is_refused_by_verify_and_sign(bip340_bad_message_case):
    message = bytes.fromhex(bip340_bad_message_case["message"])
    assert len(message) != 32
    with pytest.raises(ValueError):
        schnorr_verify(message, bytes.fromhex(bip340_bad_message_case["public key"]),
                       bytes.fromhex(bip340_bad_message_case["signature"]))
    with pytest.raises(ValueError):
        schnorr_sign(message, bytes.fromhex(bip340_bad_message_case["secret key"]),
                     bytes.fromhex(bip340_bad_message_case["aux_rand"]))


@pytest.mark.parametrize(("field", "length"), [("msg", 31), ("pubkey", 33), ("sig", 63), ("sig", 65)])
def test_schnorr_verify_refuses_wrong_argument_lengths(field, length):
    row = load_bip340()[1]
    args = {"msg": bytes.fromhex(row["message"]), "pubkey": bytes.fromhex(row["public key"]),
            "sig": bytes.fromhex(row["signature"])}
    assert schnorr_verify(args["msg"], args["pubkey"], args["sig"])
    args[field] = bytes(length)
    with pytest.raises(ValueError):
        schnorr_verify(args["msg"], args["pubkey"], args["sig"])


@pytest.mark.parametrize("seckey", [bytes(32), bytes.fromhex("FF" * 32), bytes(31)], ids=["zero", "above-n", "short"])
def test_schnorr_sign_refuses_an_invalid_secret_key(seckey):
    with pytest.raises(ValueError):
        schnorr_sign(bytes(32), seckey, bytes(32))


def test_schnorr_sign_without_aux_still_verifies():
    row = load_bip340()[1]
    message, seckey = bytes.fromhex(row["message"]), bytes.fromhex(row["secret key"])
    signature = schnorr_sign(message, seckey)
    assert schnorr_verify(message, bytes.fromhex(row["public key"]), signature)


# --- zcoin's own genesis blocks ------------------------------------------------------


@pytest.mark.parametrize("params", list(NETWORKS.values()), ids=list(NETWORKS))
def test_network_genesis_passes_its_proof_of_work_and_block_checks(params):
    genesis = params.genesis
    assert genesis.header.bits == params.genesis_bits
    assert genesis.header.nonce == params.genesis_nonce
    assert check_pow(genesis.header, params.pow_limit)
    check_block(genesis, params)
    assert Block.parse(genesis.raw) == genesis
    assert genesis.hash == params.genesis_hash


@pytest.mark.parametrize("params", list(NETWORKS.values()), ids=list(NETWORKS))
def test_network_genesis_premine_pays_each_development_account(params):
    diff = genesis_diff(params)
    assert diff.spent == ()
    paid = {coin.pubkey: coin.amount for _, coin in diff.created}
    if params.dev_accounts:
        assert paid == {params.dev_pubkey(i): params.dev_account_amount for i in range(params.dev_accounts)}
    else:
        assert sum(paid.values()) == params.initial_subsidy
    assert all(coin.height == 0 and coin.coinbase for _, coin in diff.created)
