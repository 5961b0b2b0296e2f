"""Child program of the crash tests: connect blocks with transactions into a store until killed.

Usage: ``python crash_writer.py STORE_PATH [HOLD_AFTER]``.  It opens (or creates)
the regtest store, prints ``started <height>`` once the chain is loaded, then
loops: three signed 1-in/2-out transactions spending the development accounts'
coins, one block over them through ``Chain.add_block``, and ``connected <height>
<block hash>`` printed only after ``add_block`` returned (the block is
acknowledged).  The store flushes its cache every ``FLUSH_EVERY_BLOCKS`` blocks,
so a kill at a random moment lands before, during or after a flush.  With
``HOLD_AFTER`` the store never flushes by itself and, after that many blocks, the
writer prints ``holding <height>`` and waits: a kill then lands between the block
connects and the cache flush.

``python crash_writer.py --fork-server`` imports all that once and then starts
writers by ``fork`` (milliseconds, where a fresh interpreter takes a quarter of
a second, for each of the test's kills).  It reads commands on stdin and answers
each with one line: ``start STORE_PATH OUTPUT_PATH [HOLD_AFTER]`` forks a writer
whose output goes to OUTPUT_PATH and answers ``pid PID``; ``reap PID`` waits for
that writer to end and answers ``exit STATUS`` (``-9`` after SIGKILL, as
``subprocess`` reports it).  End of input ends the server.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import traceback
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
FLUSH_EVERY_BLOCKS = 4
NEVER = 1 << 62


def main(path: str, hold_after: int | None = None) -> None:
    holding = hold_after is not None
    store = ChainStore(path, PARAMS, flush_every_blocks=NEVER if holding else FLUSH_EVERY_BLOCKS)
    chain = Chain(store, PARAMS)
    coins = deque()  # (outpoint, amount, account), oldest first
    for account in ACCOUNTS:
        coins.extend((op, coin.amount, account) for op, coin in store.coins_of(PARAMS.dev_pubkey(account)))
    print(f"started {chain.height}", flush=True)
    for _ in range(hold_after) if holding else itertools.count():
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
        print(f"connected {chain.height} {block.hash_hex}", flush=True)
    print(f"holding {chain.height}", flush=True)
    while True:
        signal.pause()


def serve() -> None:
    """The fork server (see the module docstring)."""
    for line in sys.stdin:
        command, *args = line.split()
        if command == "start":
            path, output, *hold_after = args
            pid = os.fork()
            if pid == 0:  # the writer: its output to the file, until killed
                try:
                    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(fd, 1)
                    os.dup2(fd, 2)
                    main(path, *map(int, hold_after))
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(1)
            print(f"pid {pid}", flush=True)
        elif command == "reap":
            _, status = os.waitpid(int(args[0]), 0)
            print(f"exit {-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)}", flush=True)
        else:
            raise SystemExit(f"unknown command {line!r}")


if __name__ == "__main__":
    if sys.argv[1] == "--fork-server":
        serve()
    else:
        main(sys.argv[1], *map(int, sys.argv[2:]))
