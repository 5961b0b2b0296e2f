"""``zcoin explorer`` against real processes: every endpoint checked against the nodes' own answers.

One regtest cluster for the module (a tracker and two miners started with
``--mining on-demand``, so the chain moves only when a test says so) and the
explorer as a child process, started like a user would (``zcoin explorer --node
... --tracker ... --bind 127.0.0.1:0``).  Each test asks the explorer over HTTP
and compares with what the nodes say over their api (status, ``get_block``,
``get_tx``) and with the ``zcoin`` commands (``generate``, ``faucet``, ``wallet
balance``, run in the test process).  The explorer polls every second, so every
comparison waits on its condition with a deadline.  The tests share the chain and
run in file order; the last one kills every node.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
from framework import FunctionalCluster, MinerNode, TrackerNode, disconnect, reconnect, sync_blocks, wait_connected
from prometheus_client.parser import text_string_to_metric_families
from support.payments import dev_key, dev_outpoint, dev_pubkey, pay
from support.processes import ZcoinProcess, cli_in_process
from support.waiting import wait_until

from zcoin.consensus.params import REGTEST
from zcoin.wallet import encode_address

ON_DEMAND = ("--mining", "on-demand")
HTTP_TIMEOUT_S = 10.0
NOT_HEX = "zz" * 32


@dataclass
class Explorer:
    """The cluster, the explorer process and its base URL."""

    cluster: FunctionalCluster
    tracker: TrackerNode
    nodes: list[MinerNode]
    proc: ZcoinProcess
    url: str
    streams: list = field(default_factory=list)

    def request(self, path: str, body: bytes | None = None) -> tuple[int, str, bytes]:
        """(status, content type, body) of a GET, or a POST when ``body`` is given."""
        req = urllib.request.Request(self.url + path, data=body, method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as reply:
                return reply.status, reply.headers.get_content_type(), reply.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get_content_type(), exc.read()

    def json(self, path: str):
        status, kind, body = self.request(path)
        assert (status, kind) == (200, "application/json"), (path, status, body)
        return json.loads(body)

    def text(self, path: str) -> str:
        status, kind, body = self.request(path)
        assert (status, kind) == (200, "text/plain"), (path, status, body)
        return body.decode()

    def error(self, path: str, status: int, body: bytes | None = None) -> dict:
        """The JSON error of a request that must fail with ``status``: a code and a one-line reason."""
        got, kind, raw = self.request(path, body)
        assert (got, kind) == (status, "application/json"), (path, got, raw)
        error = json.loads(raw)
        assert set(error) == {"error", "reason"} and error["reason"] and "\n" not in error["reason"], error
        assert "Traceback" not in error["reason"]
        return error

    def tip_height(self) -> int | None:
        status, _, body = self.request("/api/blocks/tip/height")
        return int(body) if status == 200 else None

    def events(self) -> EventStream:
        stream = EventStream(self.url)
        self.streams.append(stream)
        return stream


class EventStream:
    """An ``/api/events`` stream over a plain socket (HTTP/1.0: no chunks); :meth:`wait_for` waits for an event."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=HTTP_TIMEOUT_S)
        self.sock.sendall(b"GET /api/events HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n")
        self.buffer = b""
        while b": connected\n\n" not in self.buffer:  # subscribed: every later event reaches us
            chunk = self.sock.recv(65536)
            assert chunk, f"the stream ended: {self.buffer!r}"
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b": connected\n\n", 1)
        assert head.startswith(b"HTTP/1.0 200") and b"Content-Type: text/event-stream" in head, head
        self.sock.settimeout(0.05)
        self.seen: list[tuple[str, dict]] = []

    def _read(self) -> None:
        try:
            while chunk := self.sock.recv(65536):
                self.buffer += chunk
        except TimeoutError:
            pass
        *messages, self.buffer = self.buffer.split(b"\n\n")
        for message in messages:
            lines = dict(line.split(": ", 1) for line in message.decode().splitlines() if not line.startswith(":"))
            if "event" in lines:
                self.seen.append((lines["event"], json.loads(lines["data"])))

    def wait_for(self, name: str, timeout: float = 15.0, **fields) -> dict:
        """The first event ``name`` whose data has ``fields``."""
        def match():
            self._read()
            return next((data for event, data in self.seen
                         if event == name and all(data.get(k) == v for k, v in fields.items())), None)

        return wait_until(match, timeout, f"event {name} {fields}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def explorer(tmp_path_factory, request):
    cluster = FunctionalCluster(tmp_path_factory.mktemp("explorer"))
    failed_before = request.session.testsfailed
    try:
        tracker = cluster.add_tracker()
        nodes = cluster.add_miners(("alpha", "bravo"), network_name="regtest", extra=ON_DEMAND)
        proc = cluster.group.start("explorer", "explorer", "--node", nodes[0].api, "--node", nodes[1].api,
                                   "--tracker", tracker.endpoint, "--bind", "127.0.0.1:0")
        url = proc.wait_for_log(r"explorer listening on (http://\S+)").group(1)
        wait_connected(nodes)
        ex = Explorer(cluster, tracker, nodes, proc, url)
        yield ex
        for stream in ex.streams:
            stream.close()
    finally:
        cluster.close(show_logs=request.session.testsfailed > failed_before)


def zcoin_json(*args: str):
    result = cli_in_process(*args, "--json")
    assert result.returncode == 0, f"zcoin {' '.join(args)} failed ({result.returncode}): {result.stderr}"
    return json.loads(result.stdout)


def generate(node: MinerNode, blocks: int) -> dict:
    return zcoin_json("generate", str(blocks), "--node", node.api)


def new_address(ex: Explorer, name: str) -> tuple[str, str]:
    path = str(ex.cluster.tmp_path / f"{name}.json")
    assert cli_in_process("wallet", "new", "--wallet", path, "--network", "regtest").returncode == 0
    return path, zcoin_json("wallet", "address", "--wallet", path)["address"]


def explorer_caught_up(ex: Explorer, height: int) -> None:
    wait_until(lambda: ex.tip_height() == height, 10, f"the explorer's tip at height {height}")


# --- the tests -------------------------------------------------------------------------------


def test_tip_blocks_and_a_blocks_transactions_match_the_nodes_after_generate(explorer):
    ex, (alpha, bravo) = explorer, explorer.nodes
    made = generate(alpha, 3)
    height, tip = sync_blocks(ex.nodes, min_height=made["height"])
    explorer_caught_up(ex, height)
    assert ex.text("/api/blocks/tip/hash") == made["hashes"][-1] == alpha.status()["tip"] == tip[::-1].hex()
    assert ex.text(f"/api/block-height/{height - 1}") == made["hashes"][-2]

    latest = ex.json("/api/blocks")
    assert [b["height"] for b in latest] == list(range(height, max(-1, height - 10), -1))
    assert [b["id"] for b in latest] == [bravo.block_at(b["height"]).hash_hex for b in latest]
    assert [b["height"] for b in ex.json("/api/blocks/1")] == [1, 0]

    block, _ = bravo.block_by_hash(tip)
    shown = ex.json(f"/api/block/{made['hashes'][-1]}")
    assert shown == {
        "id": block.hash_hex, "height": height, "version": block.header.version, "timestamp": block.header.time,
        "tx_count": 1, "size": block.size, "weight": 4 * block.size,
        "merkle_root": block.header.merkle_root[::-1].hex(), "previousblockhash": made["hashes"][-2],
        "nonce": block.header.nonce, "bits": REGTEST.genesis_bits, "difficulty": 1.0, "fees": 0,
        "confirmations": 1, "in_best_chain": True}
    assert ex.json(f"/api/block/{made['hashes'][0]}")["confirmations"] == 3
    txids = ex.json(f"/api/block/{block.hash_hex}/txids")
    assert txids == [t.txid_hex for t in block.txs]
    (coinbase,) = ex.json(f"/api/block/{block.hash_hex}/txs")
    assert coinbase["txid"] == txids[0] and coinbase["fee"] == 0 and coinbase["vin"][0]["is_coinbase"]
    assert coinbase["status"] == {"confirmed": True, "block_height": height, "block_hash": block.hash_hex,
                                  "block_time": block.header.time}
    assert [(o["scriptpubkey_address"], o["value"]) for o in coinbase["vout"]] == [
        (encode_address(o.pubkey, REGTEST), o.amount) for o in block.txs[0].outputs]


def test_a_payment_goes_from_the_mempool_to_confirmed_and_the_address_shows_it(explorer):
    ex, (alpha, bravo) = explorer, explorer.nodes
    wallet, address = new_address(ex, "carol")
    paid = zcoin_json("faucet", "--node", bravo.api, "--to", address, "--amount", "5000")
    txid = paid["txid"]
    wait_until(lambda: ex.request(f"/api/tx/{txid}/status")[0] == 200, 10, "the payment known to the explorer")
    assert ex.json(f"/api/tx/{txid}/status") == {"confirmed": False}
    pending = ex.json(f"/api/tx/{txid}")
    assert pending["fee"] == paid["fee"] > 0 and pending["status"] == {"confirmed": False}
    assert {"scriptpubkey_address": address, "value": 5000} in [
        {k: o[k] for k in ("scriptpubkey_address", "value")} for o in pending["vout"]]
    (spent,) = pending["vin"]
    assert spent["prevout"]["scriptpubkey_address"] == encode_address(REGTEST.dev_pubkey(0), REGTEST)
    assert spent["prevout"]["value"] - sum(o["value"] for o in pending["vout"]) == paid["fee"]
    wait_until(lambda: txid in ex.json("/api/mempool/txids"), 10, "the payment in the explorer's mempool")
    pool = ex.json("/api/mempool")
    assert pool["count"] >= 1 and pool["total_fee"] >= paid["fee"] and pool["vsize"] >= pending["size"]
    assert sum(size for _, size in pool["fee_histogram"]) == pool["vsize"]
    assert ex.json(f"/api/address/{address}") == {
        "address": address, "chain_stats": {"tx_count": 0, "funded_txo_sum": 0, "spent_txo_sum": 0},
        "mempool_stats": {"tx_count": 1, "funded_txo_sum": 5000, "spent_txo_sum": 0}}

    mined = generate(alpha, 1)
    height, _ = sync_blocks(ex.nodes, min_height=mined["height"])
    confirmed = {"confirmed": True, "block_height": height, "block_hash": mined["hashes"][0]}
    wait_until(lambda: ex.json(f"/api/tx/{txid}/status").get("confirmed"), 10, "the payment confirmed")
    status = ex.json(f"/api/tx/{txid}/status")
    assert {k: status[k] for k in confirmed} == confirmed
    assert status["block_time"] == alpha.block_at(height).header.time
    assert txid in ex.json(f"/api/block/{mined['hashes'][0]}/txids")
    in_block = {t["txid"]: t for t in ex.json(f"/api/block/{mined['hashes'][0]}/txs")}
    assert in_block[txid] == {**pending, "status": status} == ex.json(f"/api/tx/{txid}")
    assert ex.json(f"/api/address/{address}")["chain_stats"] == {"tx_count": 1, "funded_txo_sum": 5000,
                                                                 "spent_txo_sum": 0}
    assert [t["txid"] for t in ex.json(f"/api/address/{address}/txs")] == [txid]
    balance = zcoin_json("wallet", "balance", "--wallet", wallet, "--node", alpha.api)
    utxo = ex.json(f"/api/address/{address}/utxo")
    assert utxo == [{"txid": txid, "vout": 0, "value": 5000, "status": {"confirmed": True, "block_height": height}}]
    assert balance["confirmed"] == sum(c["value"] for c in utxo) == 5000


def test_post_tx_pushes_a_valid_transaction_and_refuses_a_bad_one_with_the_nodes_reason(explorer):
    ex, (alpha, _) = explorer, explorer.nodes
    tx = pay([(dev_outpoint(REGTEST, 2), dev_key(2))], [REGTEST.dev_account_amount - 1000], dev_pubkey(3))
    status, kind, body = ex.request("/api/tx", tx.raw.hex().encode())
    assert (status, kind, body.decode()) == (200, "text/plain", tx.txid_hex)
    assert alpha.tx_state(tx.txid)[0] == "mempool" or ex.nodes[1].tx_state(tx.txid)[0] == "mempool"

    double = pay([(dev_outpoint(REGTEST, 2), dev_key(2))], [REGTEST.dev_account_amount - 2000], dev_pubkey(4))
    refused = ex.error("/api/tx", 400, double.raw.hex().encode())
    assert refused["error"] == "txn-mempool-conflict", refused
    assert ex.error("/api/tx", 400, b"abcd")["error"] == "decode"  # the node's code for bytes that are no tx
    assert ex.error("/api/tx", 400, b"xyz")["error"] == "bad-hex"
    assert ex.error("/api/tx", 400, b"")["error"] == "bad-hex"
    assert ex.error("/api/tx", 400, b"00" * 600_000)["error"] == "too-large"


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/api/block/xyz", 400, "bad-hash"),
    (f"/api/block/{NOT_HEX}/txids", 400, "bad-hash"),
    ("/api/block/" + "00" * 32, 404, "not-found"),
    ("/api/block-height/abc", 400, "bad-height"),
    ("/api/block-height/-1", 400, "bad-height"),
    ("/api/block-height/99999", 404, "not-found"),
    ("/api/blocks/99999999999", 400, "bad-height"),
    ("/api/tx/" + "ab" * 32, 404, "not-found"),
    ("/api/tx/" + "ab" * 31 + "/status", 400, "bad-hash"),
    ("/api/address/nonsense", 400, "bad-address"),
    ("/api/address/" + encode_address(REGTEST.dev_pubkey(1), REGTEST)[:-1] + "q/utxo", 400, "bad-address"),
    ("/api/no-such-thing", 404, "not-found"),
])
def test_bad_input_is_400_and_unknown_things_404_with_a_json_reason(explorer, path, status, code):
    assert explorer.error(path, status)["error"] == code


def test_an_address_of_another_network_is_refused(explorer):
    from zcoin.consensus.params import LOCAL

    error = explorer.error(f"/api/address/{encode_address(REGTEST.dev_pubkey(1), LOCAL)}", 400)
    assert error["error"] == "bad-address" and "another network" in error["reason"]


def test_the_event_stream_announces_blocks_tips_and_transactions(explorer):
    ex, (alpha, bravo) = explorer, explorer.nodes
    stream = ex.events()
    made = generate(bravo, 1)
    block = stream.wait_for("block", hash=made["hashes"][0])
    mined = bravo.block_at(made["height"])
    assert (block["height"], block["node"], block["tx_count"]) == (made["height"], "bravo", len(mined.txs))
    assert block["prev"] == mined.header.prev_hash[::-1].hex()
    for node in ("alpha", "bravo"):
        stream.wait_for("tip", node=node, height=made["height"], hash=made["hashes"][0])
    _, address = new_address(ex, "dave")
    paid = zcoin_json("faucet", "--node", alpha.api, "--to", address, "--amount", "7000")
    assert stream.wait_for("tx", txid=paid["txid"])["node"] in ("alpha", "bravo")


def test_cluster_view_and_metrics_agree_with_the_nodes_status(explorer):
    ex = explorer
    statuses = {n.name: n.status() for n in ex.nodes}

    def caught_up():
        view = ex.json("/api/cluster")
        return view if {n["name"]: n["tip"] for n in view["nodes"]} == {
            name: s["tip"] for name, s in statuses.items()} else None

    view = wait_until(caught_up, 10, "the cluster view at the nodes' tips")
    assert view["network"] == "regtest"
    for shown in view["nodes"]:
        status = statuses[shown["name"]]
        assert shown["up"] and shown["error"] is None and shown["api"] == status["api"]
        assert (shown["height"], shown["work"], shown["synced"], shown["mining_mode"]) == (
            status["height"], status["work"], True, "on-demand")
        assert [p["node"] for p in shown["peers"]] == [p["node"] for p in status["peer_list"]]
        assert shown["counters"]["blocks_connected"] >= 1
    assert sorted(m["node"] for m in view["members"]) == ["alpha", "bravo"]
    tips = view["tree"]["tips"]
    assert tips == {name: s["tip"] for name, s in statuses.items()}
    heights = [b["height"] for b in view["tree"]["blocks"]]
    assert heights == sorted(heights) and max(heights) == statuses["alpha"]["height"] and len(set(heights)) <= 12
    assert tips["alpha"] in {b["hash"] for b in view["tree"]["blocks"]}

    status, kind, body = ex.request("/metrics")
    assert (status, kind) == (200, "text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode()) for s in family.samples}
    for name, status in statuses.items():
        node = (("node", name),)
        assert samples[("zcoin_node_height", node)] == status["height"]
        assert samples[("zcoin_node_up", node)] == 1
        assert samples[("zcoin_node_peers", node)] == status["peers"] == 1
        assert samples[("zcoin_node_blocks_connected_total", node)] >= 1
        assert ("zcoin_node_txs_accepted_total", node) in samples
    assert samples[("zcoin_explorer_gossip_messages_total", (("topic", "block"),))] >= 1


def test_a_reorg_shows_as_an_event_and_both_branches_in_the_tree(explorer):
    ex, (alpha, bravo) = explorer, explorer.nodes
    start, _ = sync_blocks(ex.nodes)
    stream = ex.events()
    disconnect(alpha, bravo)
    losing = generate(alpha, 1)["hashes"][0]
    winning = generate(bravo, 2)["hashes"]
    stream.wait_for("tip", node="alpha", hash=losing)
    reconnect(alpha, bravo)
    sync_blocks(ex.nodes, min_height=start + 2)
    reorg = stream.wait_for("reorg", node="alpha")
    assert reorg == {"node": "alpha", "old_tip": losing, "new_tip": winning[1], "fork_height": start, "depth": 1}
    tree = ex.json("/api/cluster")["tree"]
    at = {b["hash"]: b for b in tree["blocks"]}
    assert at[losing]["height"] == at[winning[0]]["height"] == start + 1
    assert at[losing]["first_seen_by"] == "alpha" and at[winning[0]]["first_seen_by"] == "bravo"
    assert ex.json(f"/api/block/{losing}")["in_best_chain"] is False


def test_the_explorer_command_says_what_is_wrong_in_one_line(explorer):
    bound = urlsplit(explorer.url).netloc
    in_use = explorer.cluster.cli("explorer", "--node", explorer.nodes[0].api, "--bind", bound)  # a real process
    usage = [  # (what stderr says, arguments): bad usage, exit status 2, told by click in this process
        ("not an endpoint: 'nonsense'", ("--node", "nonsense")),
        ("'nonsense' is not HOST:PORT", ("--node", explorer.nodes[0].api, "--bind", "nonsense")),
        ("give at least one --node or --tracker", ()),
    ]
    results = [(1, f"cannot listen on {bound}: Address already in use", in_use)]
    results += [(2, says, cli_in_process("explorer", *args)) for says, args in usage]
    for status, says, result in results:
        assert result.returncode == status, (result.args, result.returncode, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("Error:") and says in last, (result.args, result.stderr)


def test_every_node_killed_is_503_with_a_reason_and_one_restarted_answers_again(explorer):
    ex, alpha = explorer, explorer.nodes[0]
    height = alpha.height
    stream = ex.events()
    for node in ex.nodes:
        node.kill()
    wait_until(lambda: ex.tip_height() is None, 15, "the explorer to see every node down")
    for path in ("/api/blocks/tip/height", "/api/block-height/1", "/api/mempool"):
        error = ex.error(path, 503)
        assert error["error"] == "unavailable" and "alpha" in error["reason"] and "bravo" in error["reason"]
    stream.wait_for("node", node="alpha", up=False)
    alpha.restart()
    wait_until(lambda: ex.tip_height() == height, 15, "the explorer answering again")
    stream.wait_for("node", node="alpha", up=True)
    assert ex.text(f"/api/block-height/{height}") == alpha.status()["tip"]
    assert ex.proc.running()
