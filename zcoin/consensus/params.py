"""Chain parameters: everything that makes one zcoin network differ from another.

Parameters are an object handed to every rule, never a module-level switch
(python-bitcoinlib's ``CoreChainParams``).  Three networks exist:

- ``local`` (the default): a developer's cluster on one machine.  Its first
  target lets two Python cores find a block in about two seconds; difficulty
  then retargets every 16 blocks toward one block per 5 seconds.  Ten
  development accounts, derived from fixed public seeds like Hardhat's, are
  premined in the genesis block and spendable at once.
- ``test``: the same rules, sixteen times harder at the start and one block per
  30 seconds, for clusters spread over several machines.
- ``regtest``: Bitcoin regtest's target (``0x207fffff``, about every other hash
  wins) and no retargeting, so tests make hundreds of real, fully checked blocks
  per second.

The genesis block of each network is built here from these numbers; its nonce
was ground once and is written down so that starting a node costs nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from zcoin.consensus.crypto import merkle_root, schnorr_pubkey
from zcoin.consensus.primitives import NULL_HASH, Block, BlockHeader, TxOut, make_coinbase

COIN = 100_000_000  # base units per coin
MAX_MONEY = 21_000_000 * COIN
DEV_ACCOUNT_SEED = b"zcoin development account "


def dev_secret_key(index: int) -> bytes:
    """The secret key of development account ``index`` (public by design: never use it for value)."""
    if index < 0:
        raise ValueError("account index must not be negative")
    return hashlib.sha256(DEV_ACCOUNT_SEED + str(index).encode()).digest()


@dataclass(frozen=True, slots=True)
class ChainParams:
    """The consensus parameters of one network (see the module docstring)."""

    name: str
    pow_limit_bits: int
    genesis_bits: int
    genesis_time: int
    genesis_nonce: int
    target_spacing_s: int
    retarget_interval: int  # blocks per difficulty window; 0 keeps the genesis bits forever
    max_adjust: int = 4
    initial_subsidy: int = 50 * COIN
    halving_interval: int = 210_000
    coinbase_maturity: int = 100
    max_future_block_time_s: int = 2 * 60 * 60
    median_time_span: int = 11
    max_block_bytes: int = 1_000_000
    max_tx_bytes: int = 100_000
    dev_accounts: int = 10
    dev_account_amount: int = 1_000_000 * COIN
    genesis: Block = field(init=False, repr=False, compare=False)
    pow_limit: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from zcoin.consensus.pow import bits_to_target  # pow imports primitives only; no cycle

        object.__setattr__(self, "pow_limit", bits_to_target(self.pow_limit_bits))
        object.__setattr__(self, "genesis", build_genesis(self, self.genesis_nonce))

    @property
    def genesis_hash(self) -> bytes:
        """Hash of the genesis block, internal byte order."""
        return self.genesis.hash

    @property
    def retarget_timespan_s(self) -> int:
        """The time one difficulty window should take."""
        return self.target_spacing_s * self.retarget_interval

    def subsidy(self, height: int) -> int:
        """The new coins a block at ``height`` may create (halving like Bitcoin's)."""
        halvings = height // self.halving_interval
        return 0 if halvings >= 64 else self.initial_subsidy >> halvings

    def dev_pubkey(self, index: int) -> bytes:
        """The x-only public key of development account ``index``."""
        return schnorr_pubkey(dev_secret_key(index))


def build_genesis(params: ChainParams, nonce: int) -> Block:
    """The genesis block: a coinbase paying each development account its premine."""
    outputs = tuple(TxOut(params.dev_account_amount, params.dev_pubkey(i)) for i in range(params.dev_accounts))
    if not outputs:
        outputs = (TxOut(params.initial_subsidy, NULL_HASH),)  # unspendable: nobody holds a key for it
    coinbase = make_coinbase(0, outputs, extra_nonce=f"zcoin {params.name} genesis".encode())
    header = BlockHeader(1, NULL_HASH, merkle_root([coinbase.txid]), params.genesis_time,
                         params.genesis_bits, nonce)
    return Block(header, (coinbase,))


GENESIS_TIME = 1764028800  # 2025-11-25 00:00:00 UTC

LOCAL = ChainParams(
    name="local",
    pow_limit_bits=0x1F00FFFF,
    genesis_bits=0x1E080000,  # target 2**235: about 2 million hashes a block
    genesis_time=GENESIS_TIME,
    genesis_nonce=3145389,
    target_spacing_s=5,
    retarget_interval=16,
    coinbase_maturity=10,
)

TEST = ChainParams(
    name="test",
    pow_limit_bits=0x1F00FFFF,
    genesis_bits=0x1E008000,  # 16 times harder than local
    genesis_time=GENESIS_TIME,
    genesis_nonce=27374644,
    target_spacing_s=30,
    retarget_interval=64,
    coinbase_maturity=100,
    dev_accounts=0,
)

REGTEST = ChainParams(
    name="regtest",
    pow_limit_bits=0x207FFFFF,
    genesis_bits=0x207FFFFF,
    genesis_time=GENESIS_TIME,
    genesis_nonce=0,
    target_spacing_s=1,
    retarget_interval=0,
    coinbase_maturity=10,
)

NETWORKS: dict[str, ChainParams] = {p.name: p for p in (LOCAL, TEST, REGTEST)}


def network(name: str) -> ChainParams:
    """The parameters of network ``name``; ``ValueError`` names the known ones otherwise."""
    try:
        return NETWORKS[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r} (known: {', '.join(NETWORKS)})") from None
