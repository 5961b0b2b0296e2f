"""Making valid objects: signing transactions and assembling blocks.

These are the mutable helpers the rules call for ("a block template, a
transaction being signed"): wallets, miners, tests and benchmarks build through
them so that what they make is exactly what the rules check.  Still pure: the
time is an argument and nonce grinding is bounded by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zcoin.consensus.crypto import merkle_root, schnorr_sign, sha256d
from zcoin.consensus.params import ChainParams
from zcoin.consensus.pow import bits_to_target, hash_meets_target
from zcoin.consensus.primitives import Block, BlockHeader, OutPoint, Transaction, TxIn, TxOut, make_coinbase, sighash


def sign_transaction(spends: list[tuple[OutPoint, bytes]], outputs: list[TxOut], *, version: int = 1,
                     aux32: bytes = b"") -> Transaction:
    """A transaction spending each ``(outpoint, secret key)`` of ``spends`` into ``outputs``, signed."""
    unsigned = Transaction(version, tuple(TxIn(op) for op, _ in spends), tuple(outputs))
    digest = unsigned.sighash_digest()
    inputs = tuple(TxIn(op, schnorr_sign(sighash(digest, i), key, aux32)) for i, (op, key) in enumerate(spends))
    return Transaction(version, inputs, tuple(outputs))


@dataclass(slots=True)
class BlockTemplate:
    """A block being assembled on ``prev_hash``: the coinbase is made from ``payout`` and the fees."""

    prev_hash: bytes
    height: int
    bits: int
    time: int
    payout: bytes  # x-only key the coinbase pays
    reward: int  # subsidy + fees
    txs: list[Transaction] = field(default_factory=list)
    extra_nonce: bytes = b""
    version: int = 1

    def coinbase(self) -> Transaction:
        """The coinbase for the current extra nonce."""
        return make_coinbase(self.height, (TxOut(self.reward, self.payout),), self.extra_nonce)

    def header(self, nonce: int = 0) -> BlockHeader:
        """The header for ``nonce`` over the current coinbase and transactions."""
        txids = [self.coinbase().txid] + [tx.txid for tx in self.txs]
        return BlockHeader(self.version, self.prev_hash, merkle_root(txids), self.time, self.bits, nonce)

    def block(self, nonce: int) -> Block:
        """The full block for ``nonce``."""
        return Block(self.header(nonce), (self.coinbase(), *self.txs))


def new_template(params: ChainParams, prev_hash: bytes, height: int, bits: int, time: int, payout: bytes,
                 txs: list[Transaction] | None = None, fees: int = 0) -> BlockTemplate:
    """A template at ``height`` whose coinbase claims the subsidy plus ``fees``."""
    return BlockTemplate(prev_hash, height, bits, time, payout, params.subsidy(height) + fees, list(txs or []))


def solve(template: BlockTemplate, max_tries: int = 1 << 32) -> Block | None:
    """Grind nonces (no midstate: this is for tests and easy targets) until the block meets its target."""
    header = template.header(0)
    target = bits_to_target(header.bits)
    prefix = header.serialize()[:76]

    for nonce in range(min(max_tries, 1 << 32)):
        if hash_meets_target(sha256d(prefix + nonce.to_bytes(4, "little")), target):
            return template.block(nonce)
    return None
