"""What the tests share, each helper defined once; pytest fixtures and hooks stay in ``tests/conftest.py``.

- :mod:`support.waiting`: :func:`~support.waiting.wait_until`, the one way to wait
  for a condition (a deadline, never a fixed sleep); every timeout scaled by
  ``ZCOIN_TIMEOUT_FACTOR``.
- :mod:`support.chain`: :class:`~support.chain.Builder`, valid regtest blocks made
  in memory and forkable; ``MINER_PUBKEY``; block surgery (``grind``,
  ``with_header``, ``with_txs``); opening stores and chains, replaying and
  checking them; stores as a crash leaves them, and garbled ones.
- :mod:`support.payments`: :func:`~support.payments.pay`, the one way to sign a
  payment; the development accounts' premine (``dev_outpoint(params, index)``,
  ``premine_spend``) and ``spend_output``.
- :mod:`support.cluster`: an in-process cluster (a tracker and node threads) and
  blocks made outside a node (``make_block``, ``submit``).
- :mod:`support.processes`: the ``zcoin`` CLI as real child processes
  (``ZcoinProcess``, ``ProcessGroup``), and short client commands run in the
  test process (``cli_in_process``).
- :mod:`support.hostile`: :class:`~support.hostile.HostilePeer`, a cluster member
  that speaks the wire protocol with crafted messages.
- :mod:`support.vectors`: Bitcoin's test vectors, read from ``../shared/vectors``.

The package lives in ``tests/``, which pytest puts on ``sys.path`` (rootdir
``conftest.py``); ``tests/functional/framework.py`` and ``bench/`` add it
themselves before importing ``support``.
"""
