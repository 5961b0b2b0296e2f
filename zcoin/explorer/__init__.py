"""``zcoin explorer``: a web page, an HTTP API in esplora's shapes and Prometheus metrics over a live cluster.

The explorer is a client of the cluster, never a member: it asks the miners'
api sockets and listens to their gossip, and it serves what it learns over HTTP
from one asyncio loop (aiohttp, with ``zmq.asyncio`` sockets in the same loop).

- :mod:`zcoin.explorer.cluster`: the explorer's view of the cluster - links to
  every node with failover, a status poll, gossip subscriptions, the tree of
  the last blocks (forks and which node sits on which branch), and the events
  of the live stream.
- :mod:`zcoin.explorer.api`: the aiohttp application - ``/api`` in esplora's
  shapes, ``/api/cluster``, ``/api/events`` (Server-Sent Events), ``/metrics``
  and the page itself (``static/``) - and :func:`~zcoin.explorer.api.run_explorer`.
- :mod:`zcoin.explorer.metrics`: a ``prometheus_client`` collector over the
  cached node statuses.
"""
