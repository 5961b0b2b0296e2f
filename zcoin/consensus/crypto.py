"""Hashes and signatures, exactly as Bitcoin defines them.

- ``sha256d``: SHA-256 applied twice, the hash of headers, transactions and merkle nodes.
- ``merkle_root``: Bitcoin's tree over txids, pairing neighbours and duplicating the last
  hash of an odd level (which is why a duplicated tail is checked separately, CVE-2012-2459).
- ``tagged_hash``: BIP340's domain separation, ``sha256(sha256(tag)*2 || msg)``.
- ``schnorr_sign`` / ``schnorr_verify``: BIP340 signatures over secp256k1 through
  libsecp256k1 (coincurve).  As in the BIP's reference code, bad arguments raise
  ``ValueError`` and an invalid signature simply returns ``False``.

All hashes are bytes in internal order; display order (as explorers show) is reversed.
"""

from __future__ import annotations

import functools
import hashlib

from coincurve import PrivateKey, PublicKeyXOnly

_sha256 = hashlib.sha256
PARSED_KEYS_CACHED = 16_384  # wallets reuse their keys: parsing one costs a quarter of a verify


def sha256d(data: bytes) -> bytes:
    """Double SHA-256 of ``data``."""
    return _sha256(_sha256(data).digest()).digest()


def merkle_root(txids: list[bytes]) -> bytes:
    """Bitcoin's merkle root of ``txids`` (internal byte order in and out)."""
    return merkle_root_and_mutation(txids)[0]


def has_duplicate_tail(txids: list[bytes]) -> bool:
    """True if some level of the tree pairs two equal hashes (a mutated block, CVE-2012-2459).

    Such a list has the same root as the list without the duplicate, so a block
    with it must be refused without marking the honest block with that header invalid.
    """
    return merkle_root_and_mutation(txids)[1]


def merkle_root_and_mutation(txids: list[bytes]) -> tuple[bytes, bool]:
    """The merkle root of ``txids`` and whether some level pairs two equal hashes, in one pass
    (as Core's ``ComputeMerkleRoot``): see :func:`merkle_root` and :func:`has_duplicate_tail`."""
    if not txids:
        raise ValueError("merkle root of an empty list")
    level = list(txids)
    mutated = False
    while len(level) > 1:
        if not mutated:
            mutated = any(level[i] == level[i + 1] for i in range(0, len(level) - 1, 2))
        if len(level) % 2:
            level.append(level[-1])
        level = [_sha256(_sha256(level[i] + level[i + 1]).digest()).digest() for i in range(0, len(level), 2)]
    return level[0], mutated


_TAG_CACHE: dict[bytes, bytes] = {}


def tagged_hash(tag: str, msg: bytes) -> bytes:
    """BIP340 tagged hash: ``sha256(sha256(tag) || sha256(tag) || msg)``."""
    key = tag.encode()
    prefix = _TAG_CACHE.get(key)
    if prefix is None:
        prefix = _TAG_CACHE.setdefault(key, _sha256(key).digest() * 2)
    return _sha256(prefix + msg).digest()


def schnorr_pubkey(seckey32: bytes) -> bytes:
    """The 32-byte x-only public key of a secret key."""
    if len(seckey32) != 32:
        raise ValueError("secret key must be 32 bytes")
    return PrivateKey(seckey32).public_key_xonly.format()


def schnorr_sign(msg32: bytes, seckey32: bytes, aux32: bytes = b"") -> bytes:
    """BIP340 signature of a 32-byte message; ``aux32`` empty means fresh randomness."""
    if len(msg32) != 32:
        raise ValueError("message must be 32 bytes")
    if len(seckey32) != 32:
        raise ValueError("secret key must be 32 bytes")
    if aux32 and len(aux32) != 32:
        raise ValueError("auxiliary randomness must be 32 bytes")
    try:
        return PrivateKey(seckey32).sign_schnorr(msg32, aux32)
    except ValueError:
        raise
    except Exception as exc:  # coincurve reports an out-of-range key this way
        raise ValueError(f"invalid secret key: {exc}") from None


def schnorr_verify(msg32: bytes, pubkey32: bytes, sig64: bytes) -> bool:
    """True if ``sig64`` is a valid BIP340 signature of ``msg32`` by ``pubkey32``."""
    if len(msg32) != 32:
        raise ValueError("message must be 32 bytes")
    if len(pubkey32) != 32:
        raise ValueError("public key must be 32 bytes")
    if len(sig64) != 64:
        raise ValueError("signature must be 64 bytes")
    key = _parsed_key(pubkey32)
    return key is not None and key.verify(sig64, msg32)


@functools.lru_cache(maxsize=PARSED_KEYS_CACHED)
def _parsed_key(pubkey32: bytes) -> PublicKeyXOnly | None:
    """The parsed key, or None if ``pubkey32`` is not an x coordinate on the curve (no signature is valid)."""
    try:
        return PublicKeyXOnly(pubkey32)
    except ValueError:
        return None
