"""The stable public names of zcoin's consensus layer (DESIGN.md section 6).

Outside tools and tests import these from here; they are kept stable while the
modules behind them may move.
"""

from zcoin.consensus.crypto import merkle_root, schnorr_sign, schnorr_verify
from zcoin.consensus.pow import bits_to_target, check_pow, target_to_bits
from zcoin.consensus.primitives import BlockHeader

__all__ = ["BlockHeader", "bits_to_target", "check_pow", "merkle_root", "schnorr_sign", "schnorr_verify",
           "target_to_bits"]
