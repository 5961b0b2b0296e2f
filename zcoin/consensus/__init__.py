"""The consensus core: the rules of the zcoin chain as pure code.

Nothing here opens a socket or a file, starts a thread or reads the clock; the
current time is an argument.  Every other part of zcoin depends on this
package, and it depends on none of them (a test reads the imports to keep it so).

- ``primitives``: headers, transactions, blocks and their canonical encoding;
- ``crypto``: double SHA-256, merkle roots, tagged hashes, BIP340 signatures;
- ``pow``: compact targets, proof of work, chain work, retargeting;
- ``params``: the networks (``local``, ``test``, ``regtest``);
- ``validation``: the rules, UTXO application with undo data, fork choice;
- ``errors``: one exception class per rule, under ``InvalidTx`` / ``InvalidBlock``.
"""

from zcoin.consensus.crypto import merkle_root, schnorr_pubkey, schnorr_sign, schnorr_verify, sha256d, tagged_hash
from zcoin.consensus.errors import DecodeError, InvalidBlock, InvalidTx, ValidationError
from zcoin.consensus.params import COIN, LOCAL, MAX_MONEY, NETWORKS, REGTEST, TEST, ChainParams, dev_secret_key, network
from zcoin.consensus.pow import bits_to_target, block_work, check_pow, decode_compact, target_to_bits
from zcoin.consensus.primitives import (
    NULL_OUTPOINT,
    Block,
    BlockHeader,
    OutPoint,
    Transaction,
    TxIn,
    TxOut,
    make_coinbase,
    sighash,
)
from zcoin.consensus.validation import (
    ChainEntry,
    Coin,
    HeaderContext,
    MemoryUtxoSet,
    UtxoDiff,
    UtxoView,
    check_block,
    check_header_context,
    check_transaction,
    check_tx_inputs,
    connect_block,
    disconnect_block,
    genesis_diff,
    median_time_past,
    next_bits,
    reorg_path,
)

__all__ = [
    "COIN", "LOCAL", "MAX_MONEY", "NETWORKS", "NULL_OUTPOINT", "REGTEST", "TEST",
    "Block", "BlockHeader", "ChainEntry", "ChainParams", "Coin", "DecodeError", "HeaderContext",
    "InvalidBlock", "InvalidTx", "MemoryUtxoSet", "OutPoint", "Transaction", "TxIn", "TxOut",
    "UtxoDiff", "UtxoView", "ValidationError",
    "bits_to_target", "block_work", "check_block", "check_header_context", "check_pow",
    "check_transaction", "check_tx_inputs", "connect_block", "decode_compact", "dev_secret_key",
    "disconnect_block", "genesis_diff", "make_coinbase", "median_time_past", "merkle_root", "network",
    "next_bits", "reorg_path", "schnorr_pubkey", "schnorr_sign", "schnorr_verify", "sha256d", "sighash",
    "tagged_hash", "target_to_bits",
]
