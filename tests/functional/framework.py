"""A small functional test framework for zcoin, in the spirit of Bitcoin Core's ``test_framework``.

A test starts real processes - trackers and miners - through the ``zcoin`` CLI
(``python -m zcoin.cli``, via :class:`support.processes.ZcoinProcess`) on ephemeral
loopback ports with temporary data dirs, and talks to them only as a user or a
peer would: the miners' api (:class:`zcoin.client.NodeClient`), the tracker's
member list (``zcoin peers``), and, for a hostile peer, the wire protocol
itself.

- :class:`FunctionalCluster` owns every process, client and hostile peer a
  test makes; its ``close`` (called by the :func:`cluster` fixture in a
  ``finally``) kills them all and prints the logs when the test failed.
  Test modules import the fixture by name (``from framework import
  cluster``): a second ``conftest.py`` in this folder would clash with
  ``tests/conftest.py`` as the module named ``conftest``.
- :class:`MinerNode` / :class:`TrackerNode` wrap one daemon: start, stop
  (SIGTERM), kill (SIGKILL), restart.  A restart reuses the endpoints the
  first run bound, so trackers and peers find the process where it was (as a
  restarted daemon with a configured port would be).  A tracker's api port is
  picked before it starts, so miners start alongside it.  A miner started with
  ``--mining on-demand`` mines when a test calls :meth:`MinerNode.generate`.
- :func:`sync_blocks`, :func:`sync_mempools`, :func:`disconnect` /
  :func:`reconnect` (both directions, through the admin api) are the waiting
  and partitioning helpers, built on :func:`support.waiting.wait_until`; none
  sleeps a fixed time.
- :meth:`FunctionalCluster.hostile_peer` adds a :class:`support.hostile.HostilePeer`:
  it joins through the tracker like a miner, then publishes crafted gossip on
  its own PUB and answers (or not) the honest nodes' requests.
- :func:`premine_coin`, :func:`split` and :func:`spend_coin` make the
  development accounts' coins into signed transactions (with
  :func:`support.payments.pay`).
- :class:`TxPusher` pushes signed transactions at a steady rate to several
  nodes (one thread per node), recording which node accepted which txid (a
  "not now" refusal, ``syncing`` or ``isolated``, puts the coin back).
- :func:`active_chain` and :func:`assert_confirmed_once_everywhere` check the
  promises: one chain, every accepted transaction in it exactly once.
"""

from __future__ import annotations

import json
import re
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from zcoin import wire
from zcoin.client import NodeClient, NodeError, NodeUnavailable
from zcoin.consensus.params import ChainParams, network
from zcoin.consensus.primitives import Block, OutPoint, Transaction
from zcoin.payments import UNSERVED

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:  # the shared helpers (the ``support`` package) live there
    sys.path.insert(0, str(TESTS_DIR))

from support.hostile import HostilePeer  # noqa: E402
from support.payments import dev_key, dev_outpoint, pay  # noqa: E402
from support.processes import ProcessGroup, ZcoinProcess, cli_in_process, free_port  # noqa: E402
from support.waiting import wait_until  # noqa: E402

LOOPBACK_ANY = "tcp://127.0.0.1:*"
RPC_TIMEOUT_S = 10.0
POLL_S = 0.1  # the cluster helpers' polling: every poll is an RPC to each node
SYNC_TIMEOUT_S = 30.0
LOAD_FEE = 300  # base units per load transaction (1 input, 1 output)


# --- processes ---------------------------------------------------------------------------


class TrackerNode:
    """A ``zcoin tracker`` process; restarts bind the same endpoints again.

    Its api port is chosen before it starts, so that miners can be started at the
    same time (their requests wait in ZeroMQ until it listens); :meth:`wait_listening`
    waits for it (a miner's :meth:`MinerNode.wait_started` does).
    """

    def __init__(self, cluster: FunctionalCluster, name: str, extra: Iterable[str] = ()) -> None:
        self.cluster = cluster
        self.name = name
        self.extra = list(extra)
        self.endpoint = ""  # the ROUTER the miners and ``zcoin peers`` talk to
        self.events = ""
        self.proc: ZcoinProcess | None = None
        self.listening = False

    def start(self, wait: bool = True) -> TrackerNode:
        """Start the process (again); with ``wait``, return once it listens."""
        self.endpoint = self.endpoint or f"tcp://127.0.0.1:{free_port()}"
        state = self.cluster.tmp_path / f"{self.name}-state.json"  # as configs/tracker.toml keeps its members
        args = ["tracker", "--bind", self.endpoint, "--events", self.events or LOOPBACK_ANY, "--state", str(state),
                *self.extra]
        if self.proc is None:
            self.proc = self.cluster.group.start(self.name, *args)
        else:
            self.proc.args = args
            self.proc.start()
        self.listening = False
        return self.wait_listening() if wait else self

    def wait_listening(self) -> TrackerNode:
        """Wait (once per start) for its "tracker listening" line; learn the events endpoint from it."""
        if not self.listening:
            match = self.proc.wait_for_log(r"tracker listening api=(tcp://\S+) events=(tcp://\S+)")
            assert match.group(1) == self.endpoint, match.group(0)
            self.events, self.listening = match.group(2), True
        return self

    def kill(self) -> None:
        """SIGKILL: the member list survives in its state file."""
        self.proc.kill()

    def stop(self) -> int:
        return self.proc.terminate()

    def restart(self) -> TrackerNode:
        """Kill (if still running) and start again on the same endpoints, taking its members back from its
        state file (each with a fresh lease to renew)."""
        self.proc.kill()
        return self.start()

    def running(self) -> bool:
        return self.proc is not None and self.proc.running()

    def members(self) -> set[str]:
        """The node ids ``zcoin peers --json`` (run in this process) lists for this tracker."""
        result = cli_in_process("peers", "--tracker", self.endpoint, "--json", "--timeout", "3")
        assert result.returncode == 0, f"zcoin peers failed: {result.stderr}"
        return {m["node"] for m in json.loads(result.stdout)["members"]}


class MinerNode:
    """A ``zcoin miner`` process and a client of its api."""

    def __init__(self, cluster: FunctionalCluster, name: str, trackers: list[str], *, network_name: str,
                 mine: bool, workers: int, extra: Iterable[str] = ()) -> None:
        self.cluster = cluster
        self.name = name
        self.trackers = list(trackers)
        self.network_name = network_name
        self.params: ChainParams = network(network_name)
        self.mine = mine
        self.workers = workers
        self.extra = list(extra)
        self.data_dir = cluster.tmp_path / name
        self.api = ""
        self.gossip = ""
        self.proc: ZcoinProcess | None = None
        self.start_line = ""  # the "node started" log line of the current run
        self._client: NodeClient | None = None

    # -- life cycle --

    def _args(self) -> list[str]:
        args = ["miner", "--name", self.name, "--network", self.network_name, "--data-dir", str(self.data_dir),
                "--api", self.api or LOOPBACK_ANY, "--gossip", self.gossip or LOOPBACK_ANY,
                "--workers", str(self.workers), *self.extra]
        for tracker in self.trackers:
            args += ["--tracker", tracker]
        if not self.mine:
            args.append("--no-mine")
        return args

    def start(self, wait: bool = True) -> MinerNode:
        """Start the process (again); with ``wait``, return once its api is bound."""
        if self.proc is None:
            self.proc = self.cluster.group.start(self.name, *self._args())
        else:
            self.proc.args = self._args()
            self.proc.start()
        if wait:
            self.wait_started()
        return self

    def wait_started(self, timeout: float = 30.0) -> MinerNode:
        """Wait until the api is bound (and the trackers it joins listen)."""
        for tracker in self.cluster.trackers:
            if tracker.endpoint in self.trackers:
                tracker.wait_listening()
        match = self.proc.wait_for_log(r"node started[^\n]*", timeout)
        info = json.loads((self.data_dir / "node.json").read_text())  # written just before that line
        assert info["pid"] == self.proc.pid, f"{self.name}: stale node.json"
        self.api, self.gossip = info["api"], info["gossip"]
        self.start_line = match.group(0)
        return self

    @property
    def start_height(self) -> int:
        """The chain height the current run opened its store at (from its "node started" line)."""
        return int(re.search(r" height=(\d+)", self.start_line).group(1))

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        return self.proc.terminate(timeout)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        self.proc.kill()

    def restart(self, wait: bool = True) -> MinerNode:
        """Start again on the same data dir and endpoints (after :meth:`stop` or :meth:`kill`)."""
        assert not self.proc.running(), f"{self.name} is still running"
        return self.start(wait)

    def running(self) -> bool:
        return self.proc is not None and self.proc.running()

    def worker_pids(self) -> set[int]:
        """Pids of this miner's child processes (its mining workers)."""
        return children_of(self.proc.pid)

    def log(self) -> str:
        return self.proc.log()

    # -- the api --

    @property
    def client(self) -> NodeClient:
        if self._client is None:
            self._client = NodeClient(self.api, timeout_s=RPC_TIMEOUT_S)
            self.cluster.clients.append(self._client)
        return self._client

    def rpc(self, msg_type: str, **fields) -> wire.Message:
        return self.client.request(msg_type, **fields)

    def status(self) -> dict:
        return self.rpc("status").fields

    def tip(self) -> tuple[int, bytes]:
        reply = self.rpc("get_tip")
        return reply["height"], reply["hash"]

    @property
    def height(self) -> int:
        return self.tip()[0]

    def mempool(self) -> set[bytes]:
        return set(self.rpc("get_mempool")["txids"])

    def tx_state(self, txid: bytes) -> tuple[str, int | None]:
        """("mempool" | "confirmed" | "unknown", height when confirmed)."""
        reply = self.rpc("get_tx", txid=txid)
        return reply["state"], reply.get("height")

    def push_tx(self, tx: Transaction) -> dict:
        return self.rpc("push_tx", tx=tx.raw).fields

    def submit_block(self, block: Block) -> dict:
        return self.rpc("submit_block", block=block.raw).fields

    def block_at(self, height: int) -> Block | None:
        raw = self.rpc("get_block", height=height).get("block")
        return Block.parse(raw) if raw is not None else None

    def block_by_hash(self, block_hash: bytes) -> tuple[Block, int] | None:
        reply = self.rpc("get_block", hash=block_hash)
        raw = reply.get("block")
        return (Block.parse(raw), reply["height"]) if raw is not None else None

    def peers(self) -> dict[str, dict]:
        """The status ``peer_list`` by peer name."""
        return {p["node"]: p for p in self.status()["peer_list"]}

    def generate(self, blocks: int = 1) -> list[bytes]:
        """Mine ``blocks`` blocks on this node's tip now (``zcoin generate``'s request); their hashes, once
        connected.  A miner started with ``--mining on-demand`` makes blocks only so."""
        reply = self.rpc("generate", blocks=blocks)
        assert len(reply["hashes"]) == blocks, reply
        return [bytes.fromhex(h)[::-1] for h in reply["hashes"]]

    def admin(self, action: str, peer: str) -> wire.Message:
        reply = self.rpc("admin", action=action, peer=peer)
        assert reply.type == "ok", reply
        return reply

    def __repr__(self) -> str:
        return f"MinerNode({self.name})"


def children_of(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.add(int(entry.name))
    return found


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def sqlite_integrity(path: Path) -> str:
    """``PRAGMA integrity_check`` of a SQLite file no process has open: "ok" when sound.

    Read-only, so the file and its WAL are left exactly as the crash left them
    (a read-write connection would checkpoint the WAL on close, doing the
    node's recovery for it).
    """
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


# --- the cluster -------------------------------------------------------------------------


class FunctionalCluster:
    """Every process, client and hostile peer of one test (see the module docstring)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.group = ProcessGroup(tmp_path)
        self.trackers: list[TrackerNode] = []
        self.miners: list[MinerNode] = []
        self.clients: list[NodeClient] = []
        self.closables: list = []

    @property
    def tracker_endpoints(self) -> list[str]:
        """Where members join: every tracker of the cluster."""
        return [t.endpoint for t in self.trackers]

    def add_tracker(self, name: str | None = None, extra: Iterable[str] = ()) -> TrackerNode:
        """A tracker, started (the miners started next wait for it to listen); ``extra``: more arguments of
        ``zcoin tracker`` (``--config FILE``)."""
        tracker = TrackerNode(self, name or f"tracker{len(self.trackers) + 1}", extra)
        self.trackers.append(tracker)
        return tracker.start(wait=False)

    def add_miner(self, name: str, *, trackers: list[TrackerNode] | None = None, network_name: str = "local",
                  mine: bool = True, workers: int = 1, extra: Iterable[str] = (), wait: bool = True) -> MinerNode:
        """A miner joined to ``trackers`` (default: every tracker of the cluster)."""
        endpoints = [t.endpoint for t in (self.trackers if trackers is None else trackers)]
        miner = MinerNode(self, name, endpoints, network_name=network_name, mine=mine, workers=workers,
                          extra=extra)
        self.miners.append(miner)
        return miner.start(wait)

    def add_miners(self, names: Iterable[str], **kwargs) -> list[MinerNode]:
        """Start several miners at once, then wait for each (faster than one by one)."""
        miners = [self.add_miner(name, wait=False, **kwargs) for name in names]
        return [m.wait_started() for m in miners]

    def hostile_peer(self, name: str) -> HostilePeer:
        """A :class:`HostilePeer` joined to every tracker (once it listens, so that the peer is a member before
        miners started next), closed with the cluster."""
        for tracker in self.trackers:
            tracker.wait_listening()
        peer = HostilePeer(self, name)
        self.closables.append(peer)
        return peer

    def cli(self, *args: str, timeout: float = 30.0):
        return self.group.cli(*args, timeout=timeout)

    def close(self, show_logs: bool) -> None:
        for thing in reversed(self.closables):
            try:
                thing.close()
            except Exception as exc:  # keep closing the rest
                print(f"closing {thing!r} failed: {exc!r}")
        for client in self.clients:
            client.close()
        self.group.close(show_logs)


@pytest.fixture
def cluster(tmp_path, request):
    """A :class:`FunctionalCluster` whose processes are killed after the test, their logs shown if it failed."""
    c = FunctionalCluster(tmp_path)
    try:
        yield c
    finally:
        # tests/conftest.py keeps each phase's report on the item as rep_<phase>.
        failed = any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False) for when in ("setup", "call"))
        c.close(show_logs=failed)


def connected(nodes: list[MinerNode], expected: int | None = None) -> Callable[[], bool]:
    """A condition: every node has ``expected`` peers (default: all the others of ``nodes``) and is synced
    (a node answers for coins only then: it refuses payments while syncing or isolated)."""
    want = len(nodes) - 1 if expected is None else expected

    def every_node_has_its_peers() -> bool:
        return all((s := n.status())["peers"] == want and s["synced"] for n in nodes)

    return every_node_has_its_peers


def wait_connected(nodes: list[MinerNode], timeout: float = SYNC_TIMEOUT_S) -> None:
    wait_until(connected(nodes), timeout, f"{[n.name for n in nodes]} fully connected", POLL_S)


def sync_blocks(nodes: list[MinerNode], timeout: float = SYNC_TIMEOUT_S, min_height: int = 0) -> tuple[int, bytes]:
    """Wait until every node has the same tip (at least ``min_height``); return it."""

    def same_tip():
        tips = {n.tip() for n in nodes}
        if len(tips) == 1:
            tip = tips.pop()
            return tip if tip[0] >= min_height else None
        return None

    return wait_until(same_tip, timeout, f"one tip (height >= {min_height}) on {[n.name for n in nodes]}", POLL_S)


def sync_mempools(nodes: list[MinerNode], timeout: float = SYNC_TIMEOUT_S) -> set[bytes]:
    """Wait until every node's mempool holds the same transactions; return them."""

    found: list[set[bytes]] = []

    def same_mempool() -> bool:
        pools = [n.mempool() for n in nodes]
        found[:] = [pools[0]]
        return all(p == pools[0] for p in pools)

    wait_until(same_mempool, timeout, f"one mempool on {[n.name for n in nodes]}", POLL_S)
    return found[0]


def disconnect(a: MinerNode, b: MinerNode, timeout: float = SYNC_TIMEOUT_S) -> None:
    """Cut the link between ``a`` and ``b`` in both directions and wait until neither lists the other."""
    a.admin("disconnect", b.name)
    b.admin("disconnect", a.name)
    wait_until(lambda: b.name not in a.peers() and a.name not in b.peers(), timeout,
               f"{a.name} and {b.name} disconnected", POLL_S)


def reconnect(a: MinerNode, b: MinerNode, timeout: float = SYNC_TIMEOUT_S) -> None:
    """Undo :func:`disconnect` and wait until each lists the other again."""
    a.admin("reconnect", b.name)
    b.admin("reconnect", a.name)
    wait_until(lambda: b.name in a.peers() and a.name in b.peers(), timeout, f"{a.name} and {b.name} reconnected",
               POLL_S)


# --- the chain as the nodes report it ----------------------------------------------------------


def active_chain(node: MinerNode, up_to: int | None = None, attempts: int = 5) -> list[Block]:
    """The node's active chain from genesis to ``up_to`` (default: its tip), every link checked.

    A reorg during the walk breaks a link; the walk is then done again.
    """
    for _ in range(attempts):
        top = node.height if up_to is None else up_to
        blocks = [node.block_at(h) for h in range(top + 1)]
        if all(b is not None for b in blocks) and all(
                blocks[i].header.prev_hash == blocks[i - 1].hash for i in range(1, len(blocks))):
            return blocks
    raise AssertionError(f"{node.name}: no consistent chain to height {up_to} after {attempts} walks")


def confirmed_txids(blocks: list[Block]) -> dict[bytes, list[int]]:
    """txid -> the heights of the blocks holding it (coinbases left out)."""
    where: dict[bytes, list[int]] = {}
    for height, block in enumerate(blocks):
        for tx in block.txs[1:]:
            where.setdefault(tx.txid, []).append(height)
    return where


def wait_all_confirmed(nodes: list[MinerNode], txids: Iterable[bytes], timeout: float = 60.0) -> None:
    """Wait until every node reports every txid confirmed (``get_tx``)."""
    remaining = {n.name: set(txids) for n in nodes}

    def all_confirmed() -> bool:
        for node in nodes:
            remaining[node.name] = {t for t in remaining[node.name] if node.tx_state(t)[0] != "confirmed"}
        return not any(remaining.values())

    try:
        wait_until(all_confirmed, timeout, "every transaction confirmed on every node", interval=POLL_S)
    except AssertionError:
        report = {name: [t[::-1].hex()[:16] for t in list(left)[:5]] + [f"({len(left)} in all)"]
                  for name, left in remaining.items() if left}
        raise AssertionError(f"not confirmed after {timeout}s: {report}") from None


def assert_confirmed_once_everywhere(nodes: list[MinerNode], txids: Iterable[bytes],
                                     timeout: float = 60.0) -> list[Block]:
    """Every txid ends confirmed on every node, in exactly one block of one shared chain.

    Returns that chain (genesis first) as the first node walked it.
    """
    txids = set(txids)
    wait_all_confirmed(nodes, txids, timeout)
    height, _ = sync_blocks(nodes, timeout)
    chain = active_chain(nodes[0], up_to=height)
    for node in nodes[1:]:
        block = node.block_at(height)
        assert block is not None and block.hash == chain[-1].hash, f"{node.name} is on another chain at {height}"
    where = confirmed_txids(chain)
    twice = {t[::-1].hex(): hs for t, hs in where.items() if len(hs) > 1}
    assert not twice, f"transactions confirmed more than once in the active chain: {twice}"
    missing = [t[::-1].hex() for t in txids if t not in where]
    assert not missing, f"{len(missing)} accepted transactions are not in the active chain: {missing[:5]}"
    for node in nodes:
        for txid in txids:
            assert node.tx_state(txid) == ("confirmed", where[txid][0]), (node.name, txid[::-1].hex())
    return chain


# --- coins and transactions ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Coin:
    outpoint: OutPoint
    amount: int
    account: int  # the development account whose key spends it


def premine_coin(params: ChainParams, account: int) -> Coin:
    """Development account ``account``'s genesis output."""
    return Coin(dev_outpoint(params, account), params.dev_account_amount, account)


def spend_coin(coin: Coin, params: ChainParams, to_account: int, fee: int = LOAD_FEE) -> Transaction:
    """A signed transaction moving ``coin`` (less ``fee``) to development account ``to_account``."""
    return pay([(coin.outpoint, dev_key(coin.account))], [coin.amount - fee], params.dev_pubkey(to_account))


def split(coin: Coin, params: ChainParams, outputs: int, fee: int = 100_000) -> tuple[Transaction, list[Coin]]:
    """A transaction splitting ``coin`` into ``outputs`` equal coins of the same account."""
    each = (coin.amount - fee) // outputs
    tx = pay([(coin.outpoint, dev_key(coin.account))], [each] * outputs)
    return tx, [Coin(OutPoint(tx.txid, i), each, coin.account) for i in range(outputs)]


def fund_load(nodes: list[MinerNode], accounts: list[int], outputs: int, timeout: float = 60.0) -> list[Coin]:
    """Split the premine of ``accounts`` into coins, pushed to ``nodes[0]``, and wait until every node
    has them confirmed (so a restarted node, whose mempool starts empty, can still check spends of them)."""
    coins, txids = [], []
    for account in accounts:
        tx, made = split(premine_coin(nodes[0].params, account), nodes[0].params, outputs)
        reply = nodes[0].push_tx(tx)
        assert reply["accepted"], reply
        coins += made
        txids.append(tx.txid)
    wait_all_confirmed(nodes, txids, timeout)
    return coins


@dataclass
class PushLog:
    """What one pusher thread saw from its node."""

    accepted: dict[bytes, float] = field(default_factory=dict)  # txid -> when the node said accepted
    rejected: dict[bytes, str] = field(default_factory=dict)  # txid -> reason code
    unanswered: list[bytes] = field(default_factory=list)  # pushes with no reply (node down or slow)
    unserved: list[bytes] = field(default_factory=list)  # pushes refused "not now" (syncing, isolated)


class TxPusher:
    """Pushes signed transactions at a steady rate to several nodes, one thread per node.

    Each transaction spends one coin from a shared supply (independent of the
    others, so none waits for another) to the next development account.  A node
    that does not answer within ``timeout_s`` costs only its own thread; a node
    that answers "not now" (it is catching up on a peer's new block: ``syncing``;
    or ``isolated``) gets the coin back in the supply, as a wallet would try the
    payment again.  What each node said is in :attr:`logs`.
    """

    def __init__(self, nodes: list[MinerNode], coins: list[Coin], rate_per_node: float,
                 timeout_s: float = 2.0) -> None:
        self.nodes = nodes
        self.params = nodes[0].params
        self.coins = deque(coins)
        self.lock = threading.Lock()
        self.interval = 1.0 / rate_per_node
        self.timeout_s = timeout_s
        self.logs: dict[str, PushLog] = {n.name: PushLog() for n in nodes}
        self.paused: set[str] = set()
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> TxPusher:
        for node in self.nodes:
            thread = threading.Thread(target=self._run, args=(node,), name=f"push-{node.name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _next_coin(self) -> Coin | None:
        with self.lock:
            return self.coins.popleft() if self.coins else None

    def _give_back(self, coin: Coin) -> None:
        with self.lock:
            self.coins.append(coin)

    def _run(self, node: MinerNode) -> None:
        log = self.logs[node.name]
        client = NodeClient(node.api, timeout_s=self.timeout_s)  # this thread's own socket
        try:
            next_at = time.monotonic()
            while not self._stop.is_set():
                self._stop.wait(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at + self.interval, time.monotonic() - self.interval)
                if self._stop.is_set() or node.name in self.paused:
                    continue
                coin = self._next_coin()
                if coin is None:
                    return
                tx = spend_coin(coin, self.params, (coin.account + 1) % self.params.dev_accounts)
                try:
                    reply = client.request("push_tx", tx=tx.raw)
                except NodeUnavailable:
                    log.unanswered.append(tx.txid)
                    continue
                except NodeError as exc:
                    code = exc.reason
                else:
                    if reply["accepted"]:
                        log.accepted[tx.txid] = time.monotonic()
                        continue
                    code = reply.get("code") or "rejected"
                if code in UNSERVED:
                    log.unserved.append(tx.txid)
                    self._give_back(coin)
                else:
                    log.rejected[tx.txid] = code
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)
        finally:
            client.close()

    def accepted(self, by: str | None = None) -> set[bytes]:
        """Txids accepted (by node ``by``, or by any)."""
        logs = [self.logs[by]] if by else self.logs.values()
        return {txid for log in logs for txid in list(log.accepted)}

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 5)
        assert not self.errors, f"pusher failed: {self.errors!r}"

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 5)

    def summary(self) -> dict:
        return {name: {"accepted": len(log.accepted), "rejected": len(log.rejected),
                       "unanswered": len(log.unanswered), "unserved": len(log.unserved),
                       "reasons": sorted(set(log.rejected.values()))} for name, log in self.logs.items()}


def peer_entry(node: MinerNode, peer: str) -> dict | None:
    """``node``'s status entry for ``peer`` (score, banned), or None when not connected."""
    return node.peers().get(peer)


def logged(node: MinerNode, pattern: str) -> list[str]:
    """Every log line of ``node`` (all runs) matching ``pattern``."""
    return re.findall(rf"[^\n]*{pattern}[^\n]*", node.log())

