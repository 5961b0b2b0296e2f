"""The node's api: one ``on_<type>`` handler per request a peer or a client may send.

Handlers read the chain, the store and the mempool and return the encoded reply;
a refused request raises :class:`wire.WireError` (the core answers it with an
``error`` and counts it against the sender).  Pushes and submitted blocks go
through the core's own acceptance, like transactions and blocks from peers.
No handler does I/O of the network: the core sends the reply once what it
acknowledges is on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zcoin import wire
from zcoin.consensus import errors as E
from zcoin.consensus.primitives import Block, OutPoint, Transaction
from zcoin.consensus.validation import UtxoDiff
from zcoin.mempool import MIN_RELAY_FEE_PER_BYTE, MempoolReject

if TYPE_CHECKING:
    from zcoin.nodecore import NodeCore

MAX_REPLY_BYTES = 3 * 1024 * 1024  # under wire.MAX_MESSAGE_BYTES with room for the envelope
MAX_UTXOS_PER_REPLY = 100_000

API_REQUESTS = frozenset({"status", "push_tx", "submit_block", "get_tip", "get_headers", "get_blocks", "get_block",
                          "get_header", "get_mempool", "get_txs", "get_utxos", "get_tx", "admin", "generate",
                          "get_mempool_info", "get_history"})
FEE_RATE_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000)  # base units per byte, lower bounds


class Refused(wire.WireError):
    """A well-formed request the node will not serve (forbidden, not mining): held against no one."""


class Deferred:
    """A handler's answer "later": ``attach`` receives the route the reply must take."""

    def __init__(self, attach: Callable[[Any], None]) -> None:
        self.attach = attach


def spent_coins(block: Block, diff: UtxoDiff) -> dict[OutPoint, tuple[int, bytes]]:
    """``(amount, pubkey)`` of every coin ``block``'s inputs spend: from its undo data, or made in the block."""
    coins = {op: (coin.amount, coin.pubkey) for op, coin in diff.spent}
    for tx in block.txs:
        coins.update({OutPoint(tx.txid, i): (out.amount, out.pubkey) for i, out in enumerate(tx.outputs)})
    return coins


class NodeApi:
    """The api handlers of one node core."""

    def __init__(self, core: NodeCore) -> None:
        self.core = core

    def on_status(self, msg: wire.Message) -> bytes:
        return wire.encode("status_reply", **self.status())

    def status(self) -> dict:
        """What ``zcoin status`` shows."""
        core = self.core
        tip = core.chain.tip
        rates = core.miner.hashrates() if core.miner is not None else {"total": 0.0, "workers": []}
        counters = core.counters
        return {
            "node": core.name, "network": core.params.name, "height": tip.height, "tip": tip.hash_hex,
            "work": hex(tip.chain_work), "peers": len(core.peers), "mempool": len(core.mempool),
            "hashrate": float(rates["total"]), "worker_hashrates": [float(r) for r in rates["workers"]],
            "synced": core.synced, "mining": core.miner is not None, "mining_mode": core.mining.describe(),
            "best_header": core.chain.best_header.height, "orphans": len(core.chain.orphans),
            "api": core.endpoints.get("api", ""), "gossip": core.endpoints.get("gossip", ""),
            "peer_list": [{"node": p.name, "height": p.height, "score": core.score(p), "banned": core.banned(p)}
                          for p in core.peers.values()],
            "mempool_bytes": core.mempool.bytes,
            "payout": core.config.payout.hex() if core.config.payout else None,
            "counters": {"txs_accepted": counters.txs_accepted, "blocks_connected": counters.blocks_connected,
                         "reorgs": counters.reorgs, "bans": core.misbehaviour.bans,
                         "gossip_gaps": counters.gossip_gaps, "request_stalls": counters.request_stalls,
                         "signatures_cached": core.chain.signature_cache.hits},
            "rejected": [{"reason": code, "count": n} for code, n in sorted(counters.rejected.items())][:64],
        }

    def _stand_behind(self) -> None:
        """Refuse to answer for coins from a view the node cannot stand behind (not synced, isolated)."""
        problem = self.core.standing()
        if problem == "syncing":
            raise Refused("syncing", f"{self.core.name} is not synced with its peers yet")
        if problem == "isolated":
            raise Refused("isolated", f"{self.core.name} has no peer answering while the cluster has members")

    def on_push_tx(self, msg: wire.Message) -> bytes:
        self._stand_behind()
        try:
            tx = Transaction.parse(msg["tx"])
        except E.DecodeError as exc:
            return wire.encode("tx_result", accepted=False, txid="", reason=str(exc)[:512], code=exc.code)
        try:
            self.core.relay.accept_tx(tx)
        except (E.ValidationError, MempoolReject) as exc:
            self.core.log.info("tx rejected", txid=tx.txid_hex, reason=exc.reason)
            return wire.encode("tx_result", accepted=False, txid=tx.txid_hex, reason=exc.reason[:512], code=exc.code)
        return wire.encode("tx_result", accepted=True, txid=tx.txid_hex)

    def on_submit_block(self, msg: wire.Message) -> bytes:
        """Take a block from a client (Bitcoin's ``submitblock``): checked, connected and relayed like a mined one."""
        try:
            block = Block.parse(msg["block"])
        except E.DecodeError as exc:
            return wire.encode("block_result", accepted=False, hash="", reason=str(exc)[:512], code=exc.code)
        try:
            self.core.accept_block(block, None, relay=True, strict=True)
        except E.ValidationError as exc:
            return wire.encode("block_result", accepted=False, hash=block.hash_hex, reason=exc.reason[:512],
                               code=exc.code)
        entry = self.core.chain.index.get(block.hash)
        return wire.encode("block_result", accepted=True, hash=block.hash_hex,
                           height=entry.height if entry is not None else None)

    def on_get_tip(self, msg: wire.Message) -> bytes:
        tip = self.core.chain.tip
        return wire.encode("tip", node=self.core.name, height=tip.height, hash=tip.hash,
                           work=tip.chain_work.to_bytes(32, "big"), epoch=self.core.epoch, seq=self.core.seq)

    def on_get_headers(self, msg: wire.Message) -> bytes:
        headers = self.core.chain.headers_after(msg["locator"], wire.MAX_HEADERS_PER_REPLY)
        return wire.encode("headers", headers=[h.serialize() for h in headers])

    def on_get_blocks(self, msg: wire.Message) -> bytes:
        chain, store = self.core.chain, self.core.store
        blocks, size = [], 0
        for block_hash in msg["hashes"]:
            raw = store.get_block_raw(block_hash) if block_hash in chain.index else None
            if raw is None:
                continue
            if blocks and size + len(raw) > MAX_REPLY_BYTES:
                break
            blocks.append(raw)
            size += len(raw)
        return wire.encode("blocks", blocks=blocks)

    def _entry(self, msg: wire.Message):
        """The index entry a request names by ``hash`` or by active-chain ``height`` (None: unknown)."""
        chain = self.core.chain
        if msg.get("hash") is not None:
            return chain.index.get(msg["hash"])
        return chain.entry_at(msg["height"]) if msg.get("height") is not None else None

    def on_get_header(self, msg: wire.Message) -> bytes:
        entry, chain = self._entry(msg), self.core.chain
        if entry is None:
            return wire.encode("header")
        return wire.encode("header", header=entry.header.serialize(), height=entry.height,
                           active=chain.in_active_chain(entry.hash), tip_height=chain.height)

    def on_get_block(self, msg: wire.Message) -> bytes:
        core = self.core
        chain = core.chain
        entry = self._entry(msg)
        raw = core.store.get_block_raw(entry.hash) if entry is not None else None
        if raw is None:
            return wire.encode("block")
        active = chain.in_active_chain(entry.hash)
        diff = core.store.get_undo(entry.hash) if active else None
        fees = prevouts = None
        if diff is not None:
            block = Block.parse(raw)
            coins = spent_coins(block, diff)
            fees = sum(coins[i.prev][0] for tx in block.txs[1:] for i in tx.inputs) \
                - sum(o.amount for tx in block.txs[1:] for o in tx.outputs)
            if msg.get("prevouts"):
                prevouts = [[] if tx.is_coinbase else
                             [{"amount": coins[i.prev][0], "pubkey": coins[i.prev][1]} for i in tx.inputs]
                             for tx in block.txs]
        return wire.encode("block", block=raw, height=entry.height, active=active, tip_height=chain.height,
                           fees=fees, prevouts=prevouts)

    def on_get_mempool(self, msg: wire.Message) -> bytes:
        return wire.encode("mempool", txids=[tx.txid for tx in self.core.mempool.txs()[:wire.MAX_MEMPOOL_IDS]],
                           epoch=self.core.epoch, seq=self.core.seq)

    def on_get_txs(self, msg: wire.Message) -> bytes:
        txs, size = [], 0
        for txid in msg["txids"]:
            tx = self.core.mempool.get(txid)
            if tx is None:
                continue
            if size + tx.size > MAX_REPLY_BYTES:
                break
            txs.append(tx.raw)
            size += tx.size
        return wire.encode("txs", txs=txs)

    def on_get_utxos(self, msg: wire.Message) -> bytes:
        self._stand_behind()
        core = self.core
        pubkey = msg["pubkey"]
        height = core.chain.height
        coins = core.mempool.spendable_coins(pubkey, core.store.coins_of(pubkey), height)
        return wire.encode("utxos", height=height, coins=[
            {"txid": op.txid, "index": op.index, "amount": c.amount, "height": c.height,
             "confirmed": c.height <= height} for op, c in coins[:MAX_UTXOS_PER_REPLY]])

    def on_get_tx(self, msg: wire.Message) -> bytes:
        """Where a transaction is; ``verbose`` adds the transaction and the coins it spends (Core's
        ``getrawtransaction`` verbose), which costs reading its block, so it is asked for only by need."""
        core = self.core
        txid, verbose = msg["txid"], msg.get("verbose", False)
        tx = core.mempool.get(txid)
        if tx is not None:
            if not verbose:
                return wire.encode("tx_status", state="mempool")
            prevouts = [self._mempool_prevout(txin.prev) for txin in tx.inputs]
            return wire.encode("tx_status", state="mempool", tx=tx.raw,
                               prevouts=prevouts if None not in prevouts else None)
        height = core.store.tx_height(txid)
        block_hash = core.store.hash_at(height) if height is not None else None
        if block_hash is None:
            conflict = core.relay.conflict_of(txid)
            if conflict is not None:
                return wire.encode("tx_status", state="conflicted", conflict=conflict[::-1].hex())
            return wire.encode("tx_status", state="unknown")
        confirmed = {"height": height, "block": block_hash, "confirmations": core.chain.height - height + 1,
                     "block_time": core.chain.index[block_hash].header.time}
        if not verbose:
            return wire.encode("tx_status", state="confirmed", **confirmed)
        block = core.store.get_block(block_hash)
        tx = next(t for t in block.txs if t.txid == txid)
        prevouts = None
        if not tx.is_coinbase:
            coins = spent_coins(block, core.store.get_undo(block_hash) or UtxoDiff((), ()))
            prevouts = [{"amount": coins[i.prev][0], "pubkey": coins[i.prev][1]} for i in tx.inputs]
        return wire.encode("tx_status", state="confirmed", tx=tx.raw, prevouts=prevouts, **confirmed)

    def _mempool_prevout(self, prev: OutPoint) -> dict | None:
        """The coin a pool transaction spends: on the chain, or an output of a pool parent."""
        coin = self.core.store.get_coin(prev)
        if coin is not None:
            return {"amount": coin.amount, "pubkey": coin.pubkey}
        parent = self.core.mempool.get(prev.txid)
        if parent is not None and prev.index < len(parent.outputs):
            out = parent.outputs[prev.index]
            return {"amount": out.amount, "pubkey": out.pubkey}
        return None

    def on_get_mempool_info(self, msg: wire.Message) -> bytes:
        pool = self.core.mempool
        buckets = {low: [0, 0] for low in FEE_RATE_BUCKETS}
        for entry in pool.entries.values():
            low = max(b for b in FEE_RATE_BUCKETS if b <= entry.fee_rate)
            buckets[low][0] += 1
            buckets[low][1] += entry.size
        histogram = [{"min_rate": low, "count": n, "bytes": size} for low, (n, size) in sorted(buckets.items(),
                                                                                              reverse=True) if n]
        return wire.encode("mempool_info", count=len(pool), bytes=pool.bytes, fees=pool.fees,
                           min_fee_rate=float(MIN_RELAY_FEE_PER_BYTE), max_bytes=pool.max_bytes, histogram=histogram)

    def on_get_history(self, msg: wire.Message) -> bytes:
        core = self.core
        pubkey = msg["pubkey"]
        items = [{"txid": txid, "height": height, "received": received, "spent": spent}
                 for txid, height, received, spent in core.store.history_of(pubkey)]
        for tx in core.mempool.txs():  # pending: in pool order, so parents come before children
            received = sum(o.amount for o in tx.outputs if o.pubkey == pubkey)
            prevouts = [self._mempool_prevout(txin.prev) for txin in tx.inputs]
            spent = sum(p["amount"] for p in prevouts if p is not None and p["pubkey"] == pubkey)
            if received or spent:
                items.append({"txid": tx.txid, "height": -1, "received": received, "spent": spent})
        return wire.encode("history", height=core.chain.height, items=items[-wire.MAX_HISTORY_ITEMS:])

    def on_generate(self, msg: wire.Message) -> Deferred:
        """Mine ``blocks`` blocks on our tip now (Bitcoin's ``generatetoaddress``); answer once connected."""
        core = self.core
        if not core.admin_allowed:
            raise Refused("forbidden", "admin requests are served on a loopback api only")
        if core.miner is None:
            raise Refused("not-mining", f"{core.name} has no mining pool (mining mode off or no payout key)")
        return Deferred(lambda route: core.mining.demand(route, msg["blocks"], msg.get("payout")))

    def on_admin(self, msg: wire.Message) -> bytes:
        core = self.core
        if not core.admin_allowed:
            raise Refused("forbidden", "admin requests are served on a loopback api only")
        action, name = msg["action"], msg["peer"]
        if action == "disconnect":
            core.blocked.add(name)
            peer = core.peers.get(name)
            if peer is not None:
                core.drop_peer(peer, "admin request")
            return wire.encode("ok", detail=f"disconnected from {name}")
        if action == "reconnect":
            core.blocked.discard(name)
            core.on_members()
            return wire.encode("ok", detail=f"reconnecting to {name}" if name in core.peers else f"{name} unknown")
        raise wire.WireError("bad-field", f"unknown admin action {action!r}")
