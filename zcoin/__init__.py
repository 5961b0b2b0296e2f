"""zcoin: a peer-to-peer cryptocurrency cluster over ZeroMQ.

Layers, each depending only on those above it:

- ``zcoin.consensus`` - the rules of the chain, pure code (no I/O, no clock);
- ``zcoin.storage``, ``zcoin.chain``, ``zcoin.mempool`` - the durable chain state;
- ``zcoin.wire``, ``zcoin.tracker``, ``zcoin.node``, ``zcoin.mining`` - processes and sockets;
- ``zcoin.wallet``, ``zcoin.cli`` - what users touch.

``zcoin.core`` re-exports the stable public names of the consensus layer.
"""

__version__ = "0.1.0"
