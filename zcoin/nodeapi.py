"""The node's api: one ``on_<type>`` handler per request a peer or a client may send.

Handlers read the chain, the store and the mempool and return the encoded reply;
a refused request raises :class:`wire.WireError` (the core answers it with an
``error`` and counts it against the sender).  Pushes and submitted blocks go
through the core's own acceptance, like transactions and blocks from peers.
No handler does I/O of the network: the core sends the reply once what it
acknowledges is on disk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zcoin import wire
from zcoin.consensus import errors as E
from zcoin.consensus.primitives import Block, Transaction
from zcoin.mempool import MempoolReject

if TYPE_CHECKING:
    from zcoin.nodecore import NodeCore

MAX_REPLY_BYTES = 3 * 1024 * 1024  # under wire.MAX_MESSAGE_BYTES with room for the envelope
MAX_UTXOS_PER_REPLY = 100_000

API_REQUESTS = frozenset({"status", "push_tx", "submit_block", "get_tip", "get_headers", "get_blocks", "get_block",
                          "get_mempool", "get_txs", "get_utxos", "get_tx", "admin"})


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
        return {
            "node": core.name, "network": core.params.name, "height": tip.height, "tip": tip.hash_hex,
            "work": hex(tip.chain_work), "peers": len(core.peers), "mempool": len(core.mempool),
            "hashrate": float(rates["total"]), "worker_hashrates": [float(r) for r in rates["workers"]],
            "synced": core.synced, "mining": core.miner is not None,
            "best_header": core.chain.best_header.height, "orphans": len(core.chain.orphans),
            "api": core.endpoints.get("api", ""), "gossip": core.endpoints.get("gossip", ""),
            "peer_list": [{"node": p.name, "height": p.height, "score": core.score(p), "banned": core.banned(p)}
                          for p in core.peers.values()],
        }

    def on_push_tx(self, msg: wire.Message) -> bytes:
        try:
            tx = Transaction.parse(msg["tx"])
        except E.DecodeError as exc:
            return wire.encode("tx_result", accepted=False, txid="", reason=str(exc)[:512], code=exc.code)
        try:
            self.core.accept_tx(tx)
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
                           work=tip.chain_work.to_bytes(32, "big"))

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

    def on_get_block(self, msg: wire.Message) -> bytes:
        chain = self.core.chain
        block_hash = msg.get("hash")
        if block_hash is None and msg.get("height") is not None:
            entry = chain.entry_at(msg["height"])
            block_hash = entry.hash if entry else None
        entry = chain.index.get(block_hash) if block_hash else None
        raw = self.core.store.get_block_raw(block_hash) if entry is not None else None
        return wire.encode("block", block=raw, height=entry.height if raw is not None else None)

    def on_get_mempool(self, msg: wire.Message) -> bytes:
        return wire.encode("mempool", txids=[tx.txid for tx in self.core.mempool.txs()[:wire.MAX_MEMPOOL_IDS]])

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
        core = self.core
        pubkey = msg["pubkey"]
        height = core.chain.height
        coins = core.mempool.spendable_coins(pubkey, core.store.coins_of(pubkey), height)
        return wire.encode("utxos", height=height, coins=[
            {"txid": op.txid, "index": op.index, "amount": c.amount, "height": c.height,
             "confirmed": c.height <= height} for op, c in coins[:MAX_UTXOS_PER_REPLY]])

    def on_get_tx(self, msg: wire.Message) -> bytes:
        txid = msg["txid"]
        if txid in self.core.mempool:
            return wire.encode("tx_status", state="mempool")
        height = self.core.store.tx_height(txid)
        if height is not None:
            return wire.encode("tx_status", state="confirmed", height=height)
        return wire.encode("tx_status", state="unknown")

    def on_admin(self, msg: wire.Message) -> bytes:
        core = self.core
        if not core.admin_allowed:
            raise wire.WireError("forbidden", "admin requests are served on a loopback api only")
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
