"""The explorer's HTTP side: ``/api`` in esplora's shapes, the cluster, the live stream, metrics, the page.

An aiohttp application on the explorer's one asyncio loop (aiohttp serves HTTP,
Server-Sent Events and static files on asyncio, so the ``zmq.asyncio`` node links
live in the same loop, with no thread between a request and its answer).

- ``/api/...``: Blockstream esplora's REST API (https://github.com/Blockstream/esplora/blob/master/API.md),
  as far as a zcoin node can answer it: amounts in base units, hashes and txids
  in display hex.  Lookups go to the first node that is up (failing over); the
  tip endpoints answer from the status the explorer polls every second.
  Deviations: an output's ``scriptpubkey`` is its 32-byte x-only key and its type
  ``"pubkey"``; ``weight`` is 4 x size (no witness); ``locktime`` is 0 and an
  input's ``sequence`` 0xffffffff (zcoin has neither); address stats have no
  ``*_txo_count`` (the node's address index keeps sums per transaction); a coin's
  ``status`` (``/utxo``) has its height but no block hash or time; a block or
  transaction the node reports conflicted is 404.
- ``/api/cluster``: every node's last status, the trackers' members, the tree of
  the last blocks.  ``/api/events``: Server-Sent Events (``block``, ``tip``,
  ``reorg``, ``tx``, ``node``).  ``/metrics``: Prometheus' text format.
- ``/`` and ``/static/``: the page (``zcoin/explorer/static``).

Errors are always ``{"error": code, "reason": one line}``: 400 bad input, 404
unknown, 503 when no node answers; an unexpected exception is logged and
answered 500, never a traceback.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

from aiohttp import web
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from zcoin import wire
from zcoin.client import NodeError
from zcoin.consensus.crypto import sha256d
from zcoin.consensus.errors import DecodeError
from zcoin.consensus.params import ChainParams
from zcoin.consensus.pow import bits_to_target
from zcoin.consensus.primitives import NULL_HASH, UINT32_MAX, BlockHeader, Transaction
from zcoin.explorer.cluster import Cluster, NoNodeAnswers, Node, display, unpack_block
from zcoin.explorer.events import TREE_HEIGHTS_SHOWN
from zcoin.explorer.metrics import metrics_registry
from zcoin.payments import UNSERVED
from zcoin.wallet import WalletError, decode_address, encode_address

STATIC_DIR = Path(__file__).parent / "static"
MAX_POST_BYTES = 1_000_000  # a raw transaction in hex; the network caps a transaction far below
BLOCKS_PER_PAGE = 10  # /api/blocks, as esplora
TXS_PER_PAGE = 25  # /api/block/:hash/txs, as esplora
ADDRESS_TXS = 50
WEIGHT_PER_BYTE = 4  # esplora's weight units; zcoin has no witness
SEQUENCE_FINAL = 0xFFFFFFFF
PING_INTERVAL_S = 15.0
SHUTDOWN_TIMEOUT_S = 2.0
CLUSTER = web.AppKey("cluster", Cluster)
REGISTRY = web.AppKey("registry", CollectorRegistry)

_HASH_TEXT = re.compile(r"[0-9a-fA-F]{64}")
_NUMBER_TEXT = re.compile(r"[0-9]{1,10}")
_HEX_TEXT = re.compile(r"(?:[0-9a-fA-F]{2})+")


class ApiError(Exception):
    """An answer other than 200: an HTTP status, a short code and a one-line reason."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.code, self.reason = status, code, reason


class ExplorerError(RuntimeError):
    """The explorer cannot start (the address is in use, say); the message is one line."""


def error_response(status: int, code: str, reason: str) -> web.Response:
    return web.json_response({"error": code, "reason": reason}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """Every failure as a JSON body with a reason; unexpected exceptions logged, answered 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.reason)
    except NoNodeAnswers as exc:
        return error_response(503, exc.code, exc.reason)
    except NodeError as exc:
        return error_response(502, exc.reason, f"the node refused the request: {exc}")
    except DecodeError as exc:
        return error_response(502, "bad-node-reply", f"a node sent something that does not decode: {exc}")
    except web.HTTPRequestEntityTooLarge:
        return error_response(400, "too-large", f"the body is over {MAX_POST_BYTES} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason.lower().replace(" ", "-"), f"{request.method} {request.path}: "
                              f"{exc.reason.lower()}")
    except Exception:
        logger.exception("request failed", method=request.method, path=request.path)
        return error_response(500, "internal", "the explorer failed on this request (see its log)")


# --- input ----------------------------------------------------------------------------------


def parse_hash(text: str) -> bytes:
    """A block hash or txid typed in display order, in internal order; 400 otherwise."""
    if not _HASH_TEXT.fullmatch(text):
        raise ApiError(400, "bad-hash", f"{text[:80]!r} is not a hash (64 hex digits)")
    return bytes.fromhex(text)[::-1]


def parse_number(text: str, what: str) -> int:
    if not _NUMBER_TEXT.fullmatch(text) or int(text) > UINT32_MAX:
        raise ApiError(400, f"bad-{what}", f"{text[:80]!r} is not a {what} (a whole number from 0)")
    return int(text)


def network_of(cluster: Cluster) -> ChainParams:
    if cluster.params is None:
        raise NoNodeAnswers("unavailable", "no node has answered yet: the network is not known")
    return cluster.params


def parse_address(cluster: Cluster, text: str) -> bytes:
    try:
        return decode_address(text, network_of(cluster))
    except WalletError as exc:
        raise ApiError(400, "bad-address", str(exc)) from None


# --- esplora's shapes -----------------------------------------------------------------------


def output_json(amount: int, pubkey: bytes, params: ChainParams) -> dict:
    return {"scriptpubkey": pubkey.hex(), "scriptpubkey_type": "pubkey",
            "scriptpubkey_address": encode_address(pubkey, params), "value": amount}


def tx_json(tx: Transaction, prevouts: list[dict] | None, status: dict, params: ChainParams) -> dict:
    """Esplora's transaction object; ``prevouts``: the coin each input spends (None when unknown)."""
    coins = prevouts if prevouts and len(prevouts) == len(tx.inputs) else [None] * len(tx.inputs)
    vin = [{"txid": display(txin.prev.txid), "vout": txin.prev.index, "is_coinbase": tx.is_coinbase,
            "sequence": SEQUENCE_FINAL, "prevout": output_json(c["amount"], c["pubkey"], params) if c else None}
           for txin, c in zip(tx.inputs, coins)]
    fee = 0 if tx.is_coinbase else None
    if not tx.is_coinbase and None not in coins:
        fee = sum(c["amount"] for c in coins) - sum(o.amount for o in tx.outputs)
    return {"txid": tx.txid_hex, "version": tx.version, "locktime": 0, "size": tx.size,
            "weight": tx.size * WEIGHT_PER_BYTE, "fee": fee, "vin": vin,
            "vout": [output_json(o.amount, o.pubkey, params) for o in tx.outputs], "status": status}


def confirmed_status(height: int, block_hash: bytes, block_time: int | None) -> dict:
    return {"confirmed": True, "block_height": height, "block_hash": display(block_hash), "block_time": block_time}


UNCONFIRMED = {"confirmed": False}


def block_json(reply: wire.Message, params: ChainParams) -> dict:
    """Esplora's block object for a ``block`` reply, with zcoin's fees, confirmations and in_best_chain."""
    header, txs = unpack_block(reply["block"])
    height, active = reply["height"], bool(reply.get("active"))
    target = bits_to_target(header.bits)
    return {"id": header.hash_hex, "height": height, "version": header.version, "timestamp": header.time,
            "tx_count": len(txs), "size": len(reply["block"]), "weight": len(reply["block"]) * WEIGHT_PER_BYTE,
            "merkle_root": display(header.merkle_root),
            "previousblockhash": display(header.prev_hash) if header.prev_hash != NULL_HASH else None,
            "nonce": header.nonce, "bits": header.bits, "difficulty": params.pow_limit / target if target else None,
            "fees": reply.get("fees"), "confirmations": reply["tip_height"] - height + 1 if active else 0,
            "in_best_chain": active}


# --- lookups --------------------------------------------------------------------------------


async def ask_until_known(cluster: Cluster, frame: bytes, known) -> wire.Message:
    """Ask the first node that is up; if ``known(reply)`` is false, the other up nodes in turn (a block
    on one node's branch, a transaction not relayed yet).  The first answer when nobody knows."""
    node, (reply,) = await cluster.ask(frame)
    if known(reply):
        return reply
    for other in [n for n in cluster.nodes if n.up and n is not node]:
        try:
            _, (answer,) = await cluster.ask(frame, on=other)
        except NoNodeAnswers:
            continue
        if known(answer):
            return answer
    return reply


async def find_block(cluster: Cluster, block_hash: bytes, prevouts: bool = False) -> wire.Message:
    reply = await ask_until_known(cluster, wire.encode("get_block", hash=block_hash, prevouts=prevouts),
                                  lambda r: r.get("block") is not None)
    if reply.get("block") is None:
        raise ApiError(404, "not-found", f"block {display(block_hash)} not found")
    return reply


async def find_tx(cluster: Cluster, txid: bytes, verbose: bool) -> wire.Message:
    reply = await ask_until_known(cluster, wire.encode("get_tx", txid=txid, verbose=verbose),
                                  lambda r: r["state"] in ("mempool", "confirmed"))
    if reply["state"] == "conflicted":
        raise ApiError(404, "conflicted", f"transaction {display(txid)} is conflicted by {reply.get('conflict')}: "
                                          "a confirmed transaction spent the same coins")
    if reply["state"] not in ("mempool", "confirmed"):
        raise ApiError(404, "not-found", f"transaction {display(txid)} not found")
    return reply


def tx_status(reply: wire.Message) -> dict:
    """Esplora's status of a ``tx_status`` reply."""
    if reply["state"] != "confirmed":
        return UNCONFIRMED
    return confirmed_status(reply["height"], reply["block"], reply.get("block_time"))


def txs_json(replies: list[wire.Message], params: ChainParams) -> list[dict]:
    """Tx objects for verbose ``tx_status`` replies (those without a transaction are left out)."""
    return [tx_json(Transaction.parse(r["tx"]), r.get("prevouts"), tx_status(r), params)
            for r in replies if r.get("tx") is not None]


# --- handlers -------------------------------------------------------------------------------


def cluster_of(request: web.Request) -> Cluster:
    return request.app[CLUSTER]


def text(body: str) -> web.Response:
    return web.Response(text=body, content_type="text/plain")


async def tip_height(request: web.Request) -> web.Response:
    return text(str(cluster_of(request).primary_status()["height"]))


async def tip_hash(request: web.Request) -> web.Response:
    return text(cluster_of(request).primary_status()["tip"])


async def blocks(request: web.Request) -> web.Response:
    cluster = cluster_of(request)
    given = request.match_info.get("start_height")
    start = parse_number(given, "height") if given is not None else cluster.primary_status()["height"]
    heights = range(start, max(-1, start - BLOCKS_PER_PAGE), -1)
    _, replies = await cluster.ask(*(wire.encode("get_block", height=h) for h in heights))
    params = network_of(cluster)
    return web.json_response([block_json(r, params) for r in replies if r.get("block") is not None])


async def block(request: web.Request) -> web.Response:
    cluster = cluster_of(request)
    reply = await find_block(cluster, parse_hash(request.match_info["hash"]))
    return web.json_response(block_json(reply, network_of(cluster)))


async def block_txids(request: web.Request) -> web.Response:
    reply = await find_block(cluster_of(request), parse_hash(request.match_info["hash"]))
    return web.json_response([display(sha256d(raw)) for raw in unpack_block(reply["block"])[1]])


async def block_txs(request: web.Request) -> web.Response:
    """A page of a block's transactions, with the coins they spend (from the node's undo data)."""
    cluster = cluster_of(request)
    start = parse_number(request.match_info.get("start", "0"), "start index")
    reply = await find_block(cluster, parse_hash(request.match_info["hash"]), prevouts=True)
    header, raws = unpack_block(reply["block"])
    if start % TXS_PER_PAGE or start >= len(raws):
        raise ApiError(400, "bad-start-index", f"start index {start} is out of range or not a multiple of "
                                               f"{TXS_PER_PAGE} ({len(raws)} transactions)")
    prevouts = reply.get("prevouts") or [None] * len(raws)  # none for a block off the active chain
    status = confirmed_status(reply["height"], header.hash, header.time) if reply.get("active") else UNCONFIRMED
    params = network_of(cluster)
    page = range(start, min(start + TXS_PER_PAGE, len(raws)))
    return web.json_response([tx_json(Transaction.parse(raws[i]), prevouts[i], status, params) for i in page])


async def block_at_height(request: web.Request) -> web.Response:
    height = parse_number(request.match_info["height"], "height")
    _, (reply,) = await cluster_of(request).ask(wire.encode("get_header", height=height))
    if reply.get("header") is None:
        raise ApiError(404, "not-found", f"no block at height {height}")
    return text(BlockHeader.parse(reply["header"]).hash_hex)


async def tx(request: web.Request) -> web.Response:
    cluster = cluster_of(request)
    reply = await find_tx(cluster, parse_hash(request.match_info["txid"]), verbose=True)
    return web.json_response(txs_json([reply], network_of(cluster))[0])


async def tx_status_handler(request: web.Request) -> web.Response:
    reply = await find_tx(cluster_of(request), parse_hash(request.match_info["txid"]), verbose=False)
    return web.json_response(tx_status(reply))


async def push_tx(request: web.Request) -> web.Response:
    """POST /api/tx: a raw transaction in hex; its txid as text, or 400 with the node's code and reason."""
    if (request.content_length or 0) > MAX_POST_BYTES:
        raise ApiError(400, "too-large", f"the body is over {MAX_POST_BYTES} bytes")
    body = (await request.read()).strip()
    if not _HEX_TEXT.fullmatch(body.decode("latin-1")):
        raise ApiError(400, "bad-hex", "the body is not a transaction in hex (an even number of hex digits)")
    try:
        _, (reply,) = await cluster_of(request).ask(wire.encode("push_tx", tx=bytes.fromhex(body.decode())))
    except NoNodeAnswers as exc:
        if exc.code in UNSERVED:
            raise ApiError(400, exc.code, exc.reason) from None
        raise
    if not reply["accepted"]:
        raise ApiError(400, reply.get("code") or "rejected", reply.get("reason") or "the node rejected it")
    return text(reply["txid"])


def history_stats(items: list[dict]) -> dict:
    return {"tx_count": len(items), "funded_txo_sum": sum(i["received"] for i in items),
            "spent_txo_sum": sum(i["spent"] for i in items)}


async def address(request: web.Request) -> web.Response:
    cluster = cluster_of(request)
    pubkey = parse_address(cluster, request.match_info["address"])
    _, (reply,) = await cluster.ask(wire.encode("get_history", pubkey=pubkey))
    items = reply["items"]
    return web.json_response({"address": request.match_info["address"],
                              "chain_stats": history_stats([i for i in items if i["height"] >= 0]),
                              "mempool_stats": history_stats([i for i in items if i["height"] < 0])})


async def address_txs(request: web.Request) -> web.Response:
    """The address's transactions: pending first, then confirmed, newest first, at most 50."""
    cluster = cluster_of(request)
    pubkey = parse_address(cluster, request.match_info["address"])
    node, (reply,) = await cluster.ask(wire.encode("get_history", pubkey=pubkey))
    items = reply["items"]
    newest = ([i for i in items if i["height"] < 0][::-1] + [i for i in items if i["height"] >= 0][::-1])
    if not newest:
        return web.json_response([])
    frames = [wire.encode("get_tx", txid=i["txid"], verbose=True) for i in newest[:ADDRESS_TXS]]
    _, replies = await cluster.ask(*frames, on=node)
    return web.json_response(txs_json(replies, network_of(cluster)))


async def address_utxo(request: web.Request) -> web.Response:
    cluster = cluster_of(request)
    pubkey = parse_address(cluster, request.match_info["address"])
    _, (reply,) = await cluster.ask(wire.encode("get_utxos", pubkey=pubkey))
    return web.json_response([
        {"txid": display(c["txid"]), "vout": c["index"], "value": c["amount"],
         "status": {"confirmed": True, "block_height": c["height"]} if c["confirmed"] else UNCONFIRMED}
        for c in reply["coins"]])


async def mempool(request: web.Request) -> web.Response:
    _, (info,) = await cluster_of(request).ask(wire.encode("get_mempool_info"))
    return web.json_response({"count": info["count"], "vsize": info["bytes"], "total_fee": info["fees"],
                              "fee_histogram": [[b["min_rate"], b["bytes"]] for b in info["histogram"]]})


async def mempool_txids(request: web.Request) -> web.Response:
    _, (reply,) = await cluster_of(request).ask(wire.encode("get_mempool"))
    return web.json_response([display(t) for t in reply["txids"]])


def node_json(node: Node) -> dict:
    status = node.status or {}
    return {"name": node.name, "api": node.endpoint, "gossip": node.gossip or None, "up": node.up,
            "last_seen": node.last_seen, "error": node.error or None, "height": status.get("height"),
            "tip": status.get("tip"), "work": status.get("work"), "synced": status.get("synced"),
            "peers": status.get("peer_list", []), "mempool": status.get("mempool"),
            "mempool_bytes": status.get("mempool_bytes"), "hashrate": status.get("hashrate"),
            "mining_mode": status.get("mining_mode"), "counters": status.get("counters") or {}}


async def cluster_view(request: web.Request) -> web.Response:
    """zcoin's own: every node's last status, the trackers' members, the blocks of the last heights."""
    cluster = cluster_of(request)
    members = None if cluster.members is None else [{"node": m.node_id, "api": m.api, "gossip": m.gossip}
                                                     for m in cluster.members]
    tree = [{"hash": display(b.hash), "height": b.height, "prev": display(b.prev), "first_seen_by": b.first_seen_by,
             "time": b.time, "timestamp": b.timestamp, "tx_count": b.tx_count}
            for b in cluster.tree.recent(TREE_HEIGHTS_SHOWN)]
    tips = {n.name: display(n.tip[0]) for n in cluster.nodes if n.tip is not None}
    return web.json_response({"network": cluster.params.name if cluster.params else None,
                              "nodes": [node_json(n) for n in cluster.nodes], "members": members,
                              "tree": {"blocks": tree, "tips": tips}})


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events until the client goes or the explorer stops; ``: ping`` when quiet."""
    hub = cluster_of(request).hub
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    sub = hub.subscribe()
    try:
        await response.write(b": connected\n\n")
        while True:
            try:
                event = await asyncio.wait_for(sub.queue.get(), PING_INTERVAL_S)
            except TimeoutError:
                event = ": ping\n\n"
            if event is None:
                break
            await response.write(event.encode())
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away
    finally:
        hub.unsubscribe(sub)
    return response


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        raise ApiError(404, "not-found", "the page is not installed (zcoin/explorer/static/index.html)")
    return web.FileResponse(page)


def make_app(cluster: Cluster) -> web.Application:
    """The explorer's aiohttp application over ``cluster`` (started and closed with the app)."""
    app = web.Application(middlewares=[json_errors], client_max_size=MAX_POST_BYTES)
    app[CLUSTER] = cluster
    app[REGISTRY] = metrics_registry(cluster)
    app.router.add_get("/api/blocks/tip/height", tip_height)
    app.router.add_get("/api/blocks/tip/hash", tip_hash)
    app.router.add_get("/api/blocks", blocks)
    app.router.add_get("/api/blocks/{start_height}", blocks)
    app.router.add_get("/api/block/{hash}", block)
    app.router.add_get("/api/block/{hash}/txids", block_txids)
    app.router.add_get("/api/block/{hash}/txs", block_txs)
    app.router.add_get("/api/block/{hash}/txs/{start}", block_txs)
    app.router.add_get("/api/block-height/{height}", block_at_height)
    app.router.add_get("/api/tx/{txid}", tx)
    app.router.add_get("/api/tx/{txid}/status", tx_status_handler)
    app.router.add_post("/api/tx", push_tx)
    app.router.add_get("/api/address/{address}", address)
    app.router.add_get("/api/address/{address}/txs", address_txs)
    app.router.add_get("/api/address/{address}/utxo", address_utxo)
    app.router.add_get("/api/mempool", mempool)
    app.router.add_get("/api/mempool/txids", mempool_txids)
    app.router.add_get("/api/cluster", cluster_view)
    app.router.add_get("/api/events", events)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    if STATIC_DIR.is_dir():
        app.router.add_static("/static/", STATIC_DIR)

    async def end_streams(app: web.Application) -> None:
        cluster.hub.close()

    async def close_cluster(app: web.Application) -> None:
        await cluster.close()

    app.on_shutdown.append(end_streams)
    app.on_cleanup.append(close_cluster)
    return app


# --- serving --------------------------------------------------------------------------------


def run_explorer(nodes: list[str], trackers: list[str], host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM.  Raises ``BadEndpoint`` for an endpoint ZeroMQ cannot use and
    :class:`ExplorerError` when the address cannot be bound."""
    asyncio.run(_serve(nodes, trackers, host, port))


async def _serve(nodes: list[str], trackers: list[str], host: str, port: int) -> None:
    cluster = Cluster(nodes, trackers)
    runner = web.AppRunner(make_app(cluster), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        try:
            await site.start()
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ExplorerError(f"cannot listen on {host}:{port}: {reason}") from None
        cluster.start()
        bound_port = runner.addresses[0][1]
        url_host = f"[{host}]" if ":" in host else host
        logger.info(f"explorer listening on http://{url_host}:{bound_port}", nodes=len(nodes), trackers=len(trackers))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        logger.info("explorer stopping")
    finally:
        await runner.cleanup()
