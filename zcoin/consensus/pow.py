"""Proof of work: compact targets, the hash check, chain work and retargeting.

These follow Bitcoin Core to the bit: ``bits_to_target`` is ``SetCompact``
(with its negative and overflow flags available from :func:`decode_compact`),
``target_to_bits`` is ``GetCompact``, a block's work is ``2**256 // (target+1)``
and :func:`next_work_required` is ``CalculateNextWorkRequired``: the time the
last window took, clamped to a factor of ``max_adjust`` either way, scales the
target, capped at the network's limit.
"""

from __future__ import annotations

from zcoin.consensus.primitives import BlockHeader

MAX_TARGET = (1 << 256) - 1


def decode_compact(bits: int) -> tuple[int, bool, bool]:
    """Bitcoin's ``SetCompact``: ``(target, negative, overflow)`` of compact ``bits``."""
    exponent = bits >> 24
    mantissa = bits & 0x007FFFFF
    if exponent <= 3:
        mantissa >>= 8 * (3 - exponent)  # as SetCompact: the sign test below sees the shifted word
        target = mantissa
    else:
        target = mantissa << (8 * (exponent - 3))
    negative = mantissa != 0 and bool(bits & 0x00800000)
    overflow = mantissa != 0 and (
        exponent > 34 or (mantissa > 0xFF and exponent > 33) or (mantissa > 0xFFFF and exponent > 32)
    )
    return target & MAX_TARGET, negative, overflow


def bits_to_target(bits: int) -> int:
    """The 256-bit target encoded by compact ``bits`` (the magnitude, as ``SetCompact``)."""
    return decode_compact(bits)[0]


def target_to_bits(target: int) -> int:
    """Bitcoin's ``GetCompact``: the canonical compact encoding of ``target`` (>= 0)."""
    if target < 0:
        raise ValueError("target must not be negative")
    size = (target.bit_length() + 7) // 8
    if size <= 3:
        mantissa = target << (8 * (3 - size))
    else:
        mantissa = target >> (8 * (size - 3))
    if mantissa & 0x00800000:  # the sign bit: shift one byte into the exponent
        mantissa >>= 8
        size += 1
    return (size << 24) | mantissa


def target_of(bits: int, pow_limit: int = MAX_TARGET) -> int | None:
    """The target of ``bits`` if it is usable (positive, no overflow, within ``pow_limit``), else None."""
    target, negative, overflow = decode_compact(bits)
    if negative or overflow or target == 0 or target > pow_limit:
        return None
    return target


def hash_meets_target(block_hash: bytes, target: int) -> bool:
    """True if the hash, read as a little-endian integer, is at most ``target``."""
    return int.from_bytes(block_hash, "little") <= target


def check_pow(header: BlockHeader, pow_limit: int = MAX_TARGET) -> bool:
    """Bitcoin's ``CheckProofOfWork`` for a header: valid bits and hash at or under the target."""
    target = target_of(header.bits, pow_limit)
    return target is not None and hash_meets_target(header.hash, target)


def block_work(bits: int) -> int:
    """Expected number of hashes to find a block at ``bits`` (Bitcoin's ``GetBlockProof``)."""
    target, negative, overflow = decode_compact(bits)
    if negative or overflow or target == 0:
        return 0
    return (1 << 256) // (target + 1)


def next_work_required(last_bits: int, first_time: int, last_time: int, *, timespan_s: int,
                       pow_limit: int, max_adjust: int = 4) -> int:
    """Bits for the next window, from the window that ended (Bitcoin's ``CalculateNextWorkRequired``).

    ``first_time`` is the time of the window's first block and ``last_time`` of
    its last; the elapsed time is clamped to ``[timespan/max_adjust,
    timespan*max_adjust]`` before scaling, so one window moves difficulty by at
    most that factor.
    """
    actual = last_time - first_time
    actual = max(timespan_s // max_adjust, min(actual, timespan_s * max_adjust))
    target = bits_to_target(last_bits) * actual // timespan_s
    return target_to_bits(min(target, pow_limit))
