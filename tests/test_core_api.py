"""The public names of DESIGN.md section 6, checked on Bitcoin's genesis block."""

from zcoin.core import BlockHeader, bits_to_target, check_pow, merkle_root, target_to_bits

GENESIS_HEADER = bytes.fromhex(
    "0100000000000000000000000000000000000000000000000000000000000000000000003ba3edfd7a7b12b27ac72c3e"
    "67768f617fc81bc3888a51323a9fb8aa4b1e5e4a29ab5f49ffff001d1dac2b7c"
)


def test_bitcoin_genesis_header_parses_hashes_and_passes_pow():
    header = BlockHeader.parse(GENESIS_HEADER)
    assert header.serialize() == GENESIS_HEADER
    assert header.hash_hex == "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f"
    assert header.hash == bytes.fromhex(header.hash_hex)[::-1]
    assert check_pow(header)
    assert target_to_bits(bits_to_target(header.bits)) == 0x1D00FFFF


def test_single_transaction_merkle_root_is_the_txid():
    txid = bytes.fromhex("4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b")[::-1]
    assert merkle_root([txid]) == txid
