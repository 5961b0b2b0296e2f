"""Child program of the crash test: connect blocks with transactions into a store until killed.

Usage: ``python crash_writer.py STORE_PATH``.  It opens (or creates) the regtest
store, prints ``started <height>`` once the chain is loaded, then loops forever:
three signed 1-in/2-out transactions spending the development accounts' coins,
one block over them through ``Chain.add_block``, and ``connected <height>``
printed only after ``add_block`` returned (the block is acknowledged).  The
test kills it with SIGKILL at a random moment and checks the store.
"""

from __future__ import annotations

import sys
from collections import deque

from zcoin.chain import Chain
from zcoin.consensus.builders import new_template, sign_transaction, solve
from zcoin.consensus.params import REGTEST, dev_secret_key
from zcoin.consensus.primitives import OutPoint, TxOut
from zcoin.storage import ChainStore

PARAMS = REGTEST
ACCOUNTS = range(8)
TXS_PER_BLOCK = 3
FEE = 500
NOW = PARAMS.genesis_time + 10_000_000


def main(path: str) -> None:
    store = ChainStore(path, PARAMS)
    chain = Chain(store, PARAMS)
    coins = deque()  # (outpoint, amount, account), oldest first
    for account in ACCOUNTS:
        coins.extend((op, coin.amount, account) for op, coin in store.coins_of(PARAMS.dev_pubkey(account)))
    print(f"started {chain.height}", flush=True)
    while True:
        txs = []
        for _ in range(TXS_PER_BLOCK):
            outpoint, amount, account = coins.popleft()
            half = (amount - FEE) // 2
            pubkey = PARAMS.dev_pubkey(account)
            tx = sign_transaction([(outpoint, dev_secret_key(account))],
                                  [TxOut(half, pubkey), TxOut(amount - FEE - half, pubkey)])
            txs.append(tx)
            coins.extend((OutPoint(tx.txid, i), out.amount, account) for i, out in enumerate(tx.outputs))
        tip = chain.tip
        ctx = chain.header_context(tip)
        template = new_template(PARAMS, tip.hash, ctx.height, ctx.expected_bits,
                                max(ctx.median_time_past + 1, tip.header.time + 1), PARAMS.dev_pubkey(9),
                                txs, FEE * len(txs))
        block = solve(template, max_tries=1 << 16)
        update = chain.add_block(block, NOW)
        assert update.connected == [block]
        print(f"connected {chain.height}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
