"""Prometheus metrics of the cluster, through ``prometheus_client``, from the explorer's cached node statuses.

A custom collector, prometheus_client's pattern for an exporter that relays
another system's numbers: each scrape turns the last ``status`` reply of every
node into metric families labelled ``node`` (nothing is asked of the nodes
during a scrape, so a scrape costs no more under load).  Counters are the
node's own since it started (a restart resets them; Prometheus' ``rate`` handles
that).  A node that is down reports only ``zcoin_node_up 0``.  The explorer adds
its own gossip counters.  The collector sits in a registry of its own, not the
process-wide default one.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric

from zcoin.explorer.cluster import Cluster

GAUGES = (  # (metric, status field, help)
    ("zcoin_node_height", "height", "Height of the node's active chain."),
    ("zcoin_node_peers", "peers", "Peers the node is connected to."),
    ("zcoin_node_mempool_txs", "mempool", "Transactions in the node's mempool."),
    ("zcoin_node_mempool_bytes", "mempool_bytes", "Encoded bytes of the node's mempool."),
    ("zcoin_node_hashrate", "hashrate", "Hashes per second of the node's mining pool."),
)
COUNTERS = (  # (metric, status counter, help); prometheus_client appends _total
    ("zcoin_node_txs_accepted", "txs_accepted", "Transactions the node accepted into its mempool."),
    ("zcoin_node_blocks_connected", "blocks_connected", "Blocks the node connected to its chain."),
    ("zcoin_node_reorgs", "reorgs", "Reorganisations of the node's chain."),
    ("zcoin_node_bans", "bans", "Peers the node banned for misbehaviour."),
    ("zcoin_node_gossip_gaps", "gossip_gaps", "Gaps the node saw in its peers' gossip numbering."),
    ("zcoin_node_request_stalls", "request_stalls", "Requests to peers that stalled."),
    ("zcoin_node_signatures_cached", "signatures_cached",
     "Block signatures not verified again: the mempool had verified them (the signature cache)."),
)


class ClusterCollector:
    """Metric families over :class:`~zcoin.explorer.cluster.Cluster`'s cached statuses, built at each scrape."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("zcoin_node_up", "1 when the node answered the explorer's last request.",
                               labels=["node"])
        gauges = [(field, GaugeMetricFamily(name, text, labels=["node"])) for name, field, text in GAUGES]
        counters = [(field, CounterMetricFamily(name, text, labels=["node"])) for name, field, text in COUNTERS]
        rejected = CounterMetricFamily("zcoin_node_txs_rejected", "Transactions the node rejected, by reason.",
                                       labels=["node", "reason"])
        for node in self.cluster.nodes:
            up.add_metric([node.name], 1.0 if node.up else 0.0)
            status = node.status
            if not node.up or status is None:
                continue
            for field, family in gauges:
                if status.get(field) is not None:
                    family.add_metric([node.name], float(status[field]))
            for field, family in counters:
                value = (status.get("counters") or {}).get(field)
                if value is not None:
                    family.add_metric([node.name], float(value))
            for item in status.get("rejected") or []:
                rejected.add_metric([node.name, item["reason"]], float(item["count"]))
        yield up
        yield from (family for _, family in gauges)
        yield from (family for _, family in counters)
        yield rejected
        gossip = CounterMetricFamily("zcoin_explorer_gossip_messages", "Announcements the explorer received, "
                                     "by topic (tx: transactions, several to a batch); dropped: malformed "
                                     "messages.", labels=["topic"])
        for topic in ("tx", "block", "dropped"):
            gossip.add_metric([topic], float(self.cluster.gossip.counts[topic]))
        yield gossip
        yield GaugeMetricFamily("zcoin_explorer_event_streams", "Open /api/events streams.",
                                value=len(self.cluster.hub.subscriptions))


def metrics_registry(cluster: Cluster) -> CollectorRegistry:
    """A registry of its own holding the cluster's collector (what ``/metrics`` renders)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(cluster))
    return registry
