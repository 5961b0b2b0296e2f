"""The tree of consensus errors: one class per rule, each carrying its data.

``ValidationError`` is the root.  ``DecodeError`` means the bytes are not a
canonical encoding of the object; ``InvalidTx`` and ``InvalidBlock`` mean the
object decodes but breaks a rule.  Every class has a short ``code`` (in the
spirit of Bitcoin's reject reasons) that nodes log and send back to whoever
pushed the object; the keyword data given at raise time is kept in ``.data``.
"""

from __future__ import annotations

from typing import Any


class Rejection(ValueError):
    """Something a node refuses, with a short ``code`` and the data given at raise time.

    The common base of consensus errors (:class:`ValidationError`) and of the
    mempool's policy refusals, which are not consensus errors: a peer is never
    penalised for those.
    """

    code = "rejected"

    def __init__(self, message: str = "", **data: Any) -> None:
        super().__init__(message or self.__doc__ or self.code)
        self.data = data

    @property
    def reason(self) -> str:
        """``code: message`` - one line fit for a log or a reply."""
        return f"{self.code}: {self.args[0]}"


class ValidationError(Rejection):
    """Root of every consensus error."""

    code = "invalid"


class DecodeError(ValidationError):
    """Bytes that are not the canonical encoding of the expected object."""

    code = "decode"


# --- transactions ----------------------------------------------------------------


class InvalidTx(ValidationError):
    """A transaction that breaks a consensus rule."""

    code = "bad-tx"


class TxNoInputs(InvalidTx):
    """The transaction has no inputs."""

    code = "bad-txns-vin-empty"


class TxNoOutputs(InvalidTx):
    """The transaction has no outputs."""

    code = "bad-txns-vout-empty"


class TxTooLarge(InvalidTx):
    """The encoded transaction is larger than the limit."""

    code = "bad-txns-oversize"


class TxAmountOutOfRange(InvalidTx):
    """An output amount (or the sum of outputs) is not in (0, MAX_MONEY]."""

    code = "bad-txns-vout-amount"


class TxDuplicateInput(InvalidTx):
    """The same outpoint is spent twice by one transaction."""

    code = "bad-txns-inputs-duplicate"


class TxBadCoinbase(InvalidTx):
    """A coinbase transaction that is not well formed."""

    code = "bad-cb-format"


class TxUnexpectedCoinbase(InvalidTx):
    """A coinbase where a normal transaction is required."""

    code = "bad-txns-coinbase"


class TxMissingInput(InvalidTx):
    """An input spends an output that does not exist or is already spent."""

    code = "bad-txns-inputs-missingorspent"


class TxImmatureSpend(InvalidTx):
    """An input spends a coinbase output before it matured."""

    code = "bad-txns-premature-spend-of-coinbase"


class TxInputsBelowOutputs(InvalidTx):
    """The outputs spend more than the inputs bring in."""

    code = "bad-txns-in-belowout"


class TxInputValueOutOfRange(InvalidTx):
    """The sum of input values is not in range."""

    code = "bad-txns-inputvalues-outofrange"


class TxBadSignature(InvalidTx):
    """An input's signature does not verify against the key of the spent output."""

    code = "bad-txns-signature"


# --- blocks ----------------------------------------------------------------------


class InvalidBlock(ValidationError):
    """A block (or header) that breaks a consensus rule."""

    code = "bad-block"


class BlockBadPow(InvalidBlock):
    """The header hash is above the target its bits encode, or the bits are invalid."""

    code = "high-hash"


class BlockBadBits(InvalidBlock):
    """The header's bits are not the difficulty the chain requires at that height."""

    code = "bad-diffbits"


class BlockBadPrevHash(InvalidBlock):
    """The header does not link to the block it is connected on."""

    code = "bad-prevblk"


class BlockTimeTooOld(InvalidBlock):
    """The header time is not after the median time of the previous 11 blocks."""

    code = "time-too-old"


class BlockTimeTooNew(InvalidBlock):
    """The header time is too far in the future."""

    code = "time-too-new"


class BlockBadVersion(InvalidBlock):
    """The header version is not one this network accepts."""

    code = "bad-version"


class BlockBadMerkleRoot(InvalidBlock):
    """The merkle root in the header does not match the transactions."""

    code = "bad-txnmrklroot"


class BlockMutated(InvalidBlock):
    """The transaction list repeats a txid (a mutated block with an honest-looking root)."""

    code = "bad-txns-duplicate"


class BlockTooLarge(InvalidBlock):
    """The block has too many bytes or too many transactions."""

    code = "bad-blk-length"


class BlockNoCoinbase(InvalidBlock):
    """The first transaction is not a coinbase."""

    code = "bad-cb-missing"


class BlockMultipleCoinbase(InvalidBlock):
    """A transaction other than the first is a coinbase."""

    code = "bad-cb-multiple"


class BlockBadCoinbaseHeight(InvalidBlock):
    """The coinbase does not start with the block's height."""

    code = "bad-cb-height"


class BlockBadCoinbaseAmount(InvalidBlock):
    """The coinbase pays more than the subsidy plus the fees."""

    code = "bad-cb-amount"


class BlockDoubleSpend(InvalidBlock):
    """Two transactions of the block spend the same output."""

    code = "bad-txns-double-spend"


class BlockBadTx(InvalidBlock):
    """A transaction of the block is invalid; ``.tx_error`` is the rule it broke."""

    code = "bad-blk-tx"

    def __init__(self, tx_error: InvalidTx, **data: Any) -> None:
        super().__init__(f"tx {data.get('txid', '?')}: {tx_error.reason}", **data)
        self.tx_error = tx_error
