"""The ``zcoin`` command line: daemons (tracker, miner) and client commands.

Exit status: 0 on success, 1 when the action failed, 2 on bad usage (and 3 when
``zcoin send`` got no answer to its push: outcome unknown).  Expected errors are
one line on stderr (``click.ClickException``), never a traceback.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import click

from zcoin.log import setup_logging

if TYPE_CHECKING:
    from pathlib import Path

    from zcoin.tracker.protocol import MemberInfo


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR"], case_sensitive=False),
              help="Lowest level of log lines written to stderr.")
@click.option("--log-json", is_flag=True, help="Write log lines as JSON objects.")
@click.version_option(package_name="zcoin")
@click.pass_context
def cli(ctx: click.Context, log_level: str, log_json: bool) -> None:
    """zcoin: a peer-to-peer cryptocurrency cluster over ZeroMQ.

    \b
    Example: a tracker and a miner on loopback
      zcoin tracker --bind tcp://127.0.0.1:9000
      zcoin miner --tracker tcp://127.0.0.1:9000
    """
    ctx.ensure_object(dict)
    ctx.obj["log_level"] = log_level
    ctx.obj["log_json"] = log_json
    setup_logging(log_level, log_json, component=ctx.invoked_subcommand or "zcoin")


@cli.command("tracker")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML file with a [tracker] table (see configs/tracker.toml).")
@click.option("--bind", metavar="ENDPOINT",
              help="Endpoint for JOIN/ACK/HEARTBEAT/LEAVE/LIST requests "
                   "[config: bind; default tcp://127.0.0.1:9000; port * = ephemeral].")
@click.option("--events", metavar="ENDPOINT",
              help="PUB endpoint for membership events [config: events; default tcp://127.0.0.1:9001].")
@click.option("--state", metavar="FILE",
              help="Keep the members in FILE, so that a restarted tracker lists them again [config: state].")
def tracker_command(config_path: str | None, bind: str | None, events: str | None, state: str | None) -> None:
    """Run a membership tracker until SIGTERM or SIGINT.

    Miners join through it (JOIN, LIST, ACK), renew a lease by heartbeat and are
    announced as joined or left on the events endpoint.  The bound endpoints are
    logged as "tracker listening api=... events=...".

    \b
    Example:
      zcoin tracker --bind tcp://127.0.0.1:9000 --events tcp://127.0.0.1:9001
    """
    from zcoin.config import ConfigError, load_tracker_settings
    from zcoin.tracker.protocol import TrackerError
    from zcoin.tracker.server import run_tracker

    try:
        run_tracker(load_tracker_settings(config_path, bind=bind, events=events, state=state))
    except (ConfigError, TrackerError) as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("peers")
@click.option("--tracker", "trackers", metavar="ENDPOINT", multiple=True, default=("tcp://127.0.0.1:9000",),
              show_default=True, help="Tracker to ask; repeat to merge the lists of several trackers.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a table.")
@click.option("--timeout", "timeout_s", metavar="S", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="Seconds to wait for an answer before giving up.")
def peers_command(trackers: tuple[str, ...], as_json: bool, timeout_s: float) -> None:
    """List the tracker's members with their endpoints and last heartbeat age.

    \b
    Example:
      zcoin peers --tracker tcp://127.0.0.1:9000 --json
    """
    import json

    from zcoin.tracker.lookup import request_members
    from zcoin.tracker.protocol import TrackerUnavailable

    try:
        members = request_members(list(trackers), timeout_s=timeout_s)
    except TrackerUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(members_as_json(members)) if as_json else format_members(members))


def members_as_json(members: list[MemberInfo]) -> dict[str, Any]:
    """The ``zcoin peers --json`` document."""
    return {"members": [{"node": m.node_id, "gossip": m.gossip, "api": m.api, "age_s": m.age_s}
                        for m in members]}


def format_members(members: list[MemberInfo]) -> str:
    """A plain table of members for ``zcoin peers``."""
    if not members:
        return "no members"
    rows = [("NODE", "GOSSIP", "API", "LAST HEARTBEAT")]
    rows += [(m.node_id, m.gossip, m.api, "?" if m.age_s is None else f"{m.age_s:.1f}s ago") for m in members]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip() for a, b, c, d in rows)


# --- miners and the clients that talk to them --------------------------------------

def _fail(message: str) -> None:
    raise click.ClickException(message)


def _params(name: str):
    from zcoin.consensus.params import network

    try:
        return network(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--network") from None


@cli.command("miner")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML file with a [miner] table (see configs/miner1.toml).")
@click.option("--name", help="Node id, unique in the cluster [config: name; default miner-<random>].")
@click.option("--network", help="local, test or regtest [config: network; default local].")
@click.option("--tracker", "trackers", metavar="ENDPOINT", multiple=True,
              help="Tracker to join; repeat for several [config: trackers].")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where the chain and keys live "
              "[config: data_dir; default run/<name>].")
@click.option("--api", metavar="ENDPOINT", help="ROUTER endpoint for peers and clients [port * = ephemeral].")
@click.option("--gossip", metavar="ENDPOINT", help="PUB endpoint for tx/block announcements.")
@click.option("--workers", type=click.IntRange(min=1), help="Mining worker processes [default: cores].")
@click.option("--no-mine", is_flag=True, help="Relay and validate only; start no mining pool (= --mining off).")
@click.option("--mining", "mining_mode", metavar="MODE",
              help="continuous | interval:SECONDS (one block a slot, idle between) | on-demand (only for "
                   "`zcoin generate`) | off [config: mining; default continuous].")
@click.option("--wallet", "wallet_path", type=click.Path(dir_okay=False),
              help="Wallet whose key the coinbase pays [default: a key made in the data dir].")
def miner_command(config_path, name, network, trackers, data_dir, api, gossip, workers, no_mine, mining_mode,
                  wallet_path):
    """Run a miner (full node) until SIGTERM or SIGINT.

    It joins the trackers, connects to every other miner, syncs the chain and
    the mempool, then mines.  The bound endpoints are logged and written to
    <data-dir>/node.json.

    \b
    Example:
      zcoin miner --name miner1 --tracker tcp://127.0.0.1:9000 --api tcp://127.0.0.1:9101
    """
    import secrets
    import signal
    from pathlib import Path

    from zcoin.config import MINER_CONFIG_SPEC, ConfigError, NodeConfig, load_section, parse_mining_mode
    from zcoin.node import Node, StartError
    from zcoin.storage import StoreError
    from zcoin.wallet import WalletError, load_wallet, new_wallet, save_wallet

    try:
        cfg = load_section(config_path, "miner", MINER_CONFIG_SPEC)
    except ConfigError as exc:
        _fail(str(exc))
    name = name or cfg["name"] or f"miner-{secrets.token_hex(3)}"
    params = _params(network or cfg["network"])
    tracker_list = tuple(trackers) or tuple(cfg["trackers"])
    if not all(isinstance(t, str) for t in tracker_list):
        _fail(f"{config_path}: miner.trackers must be a list of endpoint strings")
    data = Path(data_dir or cfg["data_dir"] or Path("run") / name)
    wallet_file = wallet_path or cfg["wallet"]
    payout = None
    try:
        mode = parse_mining_mode(mining_mode or cfg["mining"])
    except ConfigError as exc:
        if mining_mode:
            raise click.BadParameter(str(exc), param_hint="--mining") from None
        _fail(f"{config_path}: miner.mining: {exc}")
    mine = cfg["mine"] and not no_mine and mode.kind != "off"
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission, read-only file system
        _fail(f"cannot make the data directory {data}: {exc.strerror or exc}")
    try:
        if mine:
            if wallet_file is None:
                wallet_file = data / "miner-wallet.json"
                if not wallet_file.exists():
                    save_wallet(new_wallet(params), wallet_file)
            wallet = load_wallet(wallet_file)
            if wallet.network != params.name:  # its coins would be on a chain the wallet never asks about
                _fail(f"{wallet_file}: a wallet for network {wallet.network!r}; this miner runs {params.name!r}")
            payout = wallet.pubkey
        node = Node(NodeConfig(
            name=name, params=params, data_dir=data, api=api or cfg["api"], gossip=gossip or cfg["gossip"],
            trackers=tracker_list, mine=mine, mining=mode, workers=workers or cfg["workers"], payout=payout,
            join_deadline_s=float(cfg["join_deadline_s"]), heartbeat_s=float(cfg["heartbeat_s"])))
        node.freeze_gc = True  # this process is the node's: its long-lived objects can leave the collector
        node.start()
    except (WalletError, StoreError, StartError) as exc:
        _fail(str(exc))
    except sqlite3.Error as exc:  # a damaged page read while loading the chain
        _store_failed(name, data, exc)
    signal.signal(signal.SIGTERM, lambda *_: node.stop())
    signal.signal(signal.SIGINT, lambda *_: node.stop())
    try:
        node.run()
    except StartError as exc:  # a tracker refused the name for good
        _fail(str(exc))
    except sqlite3.Error as exc:
        _store_failed(name, data, exc)


def _store_failed(name: str, data_dir: Path, exc: sqlite3.Error) -> None:
    """One line for a chain store that failed under the node: damaged, or a write that failed."""
    if getattr(exc, "sqlite_errorcode", 0) & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        _fail(f"{name}: the chain store in {data_dir} is damaged ({exc}); restore it or delete it to resync")
    # disk full, I/O error: every write was rolled back, so a restart is safe
    _fail(f"{name}: the chain store failed ({exc}); stopped, the store is consistent")


def _client(endpoint: str, timeout_s: float):
    from zcoin.client import BadEndpoint, NodeClient

    try:
        return NodeClient(endpoint, timeout_s=timeout_s)
    except BadEndpoint as exc:  # a malformed --node value is bad usage, not an unreachable node
        raise click.BadParameter(str(exc), param_hint="--node") from None


# A node that serves no wallet now says why in one of these reasons; the user is told what to do.
UNSERVED_LINES = {"syncing": "the node is still syncing; try again or use another node",
                  "isolated": "the node has no peers (isolated)"}


def _refused_line(reason: str, detail: str = "") -> str:
    """The one line for a node's ``error`` reply."""
    return UNSERVED_LINES.get(reason) or f"node refused the request: {reason}" + (f": {detail}" if detail else "")


def _ask(endpoint: str, timeout_s: float, msg_type: str, **fields):
    from zcoin.client import NodeError, NodeUnavailable

    with _client(endpoint, timeout_s) as client:
        try:
            return client.request(msg_type, **fields)
        except NodeUnavailable as exc:
            _fail(f"node unreachable: {exc}")
        except NodeError as exc:
            _fail(_refused_line(exc.reason, exc.detail))


NODE_OPTION = click.option("--node", "node", metavar="ENDPOINT", default="tcp://127.0.0.1:9101", show_default=True,
                           help="A miner's api endpoint.")
TIMEOUT_OPTION = click.option("--timeout", "timeout_s", metavar="S", default=5.0, show_default=True,
                              type=click.FloatRange(min=0, min_open=True), help="Seconds to wait for the node.")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")


@cli.command("status")
@NODE_OPTION
@JSON_OPTION
@TIMEOUT_OPTION
def status_command(node: str, as_json: bool, timeout_s: float) -> None:
    """Show a miner's height, tip, work, peers (height, misbehaviour score), mempool size and hash rate.

    \b
    Example:
      zcoin status --node tcp://127.0.0.1:9101 --json
    """
    import json

    status = _ask(node, timeout_s, "status").fields
    if as_json:
        click.echo(json.dumps(status))
        return
    click.echo(f"node      {status['node']} ({status['network']}){'' if status['synced'] else '  [syncing]'}")
    click.echo(f"height    {status['height']}")
    click.echo(f"tip       {status['tip']}")
    click.echo(f"work      {status['work']}")
    click.echo(f"peers     {status['peers']}")
    width = max((len(p["node"]) for p in status["peer_list"]), default=0)
    for peer in sorted(status["peer_list"], key=lambda p: p["node"]):
        standing = "  banned" if peer["banned"] else ""
        click.echo(f"  {peer['node']:<{width}}  height {peer['height']:<8} score {peer['score']}{standing}")
    click.echo(f"mempool   {status['mempool']}")
    workers = ", ".join(f"{rate:.0f}" for rate in status["worker_hashrates"])
    click.echo(f"hashrate  {status['hashrate']:.0f} H/s" + (f" (workers: {workers})" if status["mining"]
                                                           else " (not mining)"))


@cli.group("wallet")
def wallet_group() -> None:
    """Make wallets, show their address, balance and history.

    \b
    Example:
      zcoin wallet new --wallet alice.json --dev 0
    """


WALLET_OPTION = click.option("--wallet", "wallet_path", required=True, type=click.Path(dir_okay=False),
                             help="Wallet file (JSON, mode 0600).")


def _load_wallet(path: str):
    from zcoin.consensus.params import NETWORKS
    from zcoin.wallet import WalletError, load_wallet

    try:
        wallet = load_wallet(path)
    except WalletError as exc:
        _fail(str(exc))
    if wallet.network not in NETWORKS:  # the file's fault, not that of a --network option
        _fail(f"{path}: wallet for network {wallet.network!r}, which this zcoin does not know "
              f"(known: {', '.join(NETWORKS)})")
    return wallet, NETWORKS[wallet.network]


@wallet_group.command("new")
@WALLET_OPTION
@click.option("--dev", "dev_index", type=click.IntRange(min=0), help="Write development account N instead of a new key.")
@click.option("--network", default="local", show_default=True, help="Network the wallet is for.")
@click.option("--force", is_flag=True, help="Replace an existing wallet file (its key is lost).")
def wallet_new_command(wallet_path: str, dev_index: int | None, network: str, force: bool) -> None:
    """Create a wallet file with a new key (or a premined development account).

    \b
    Example:
      zcoin wallet new --wallet alice.json --dev 0
    """
    from zcoin.wallet import WalletError, new_wallet, save_wallet

    params = _params(network)
    try:
        wallet = new_wallet(params, dev_index)
        save_wallet(wallet, wallet_path, force=force)
    except WalletError as exc:
        _fail(str(exc))
    click.echo(f"wrote {wallet_path}; address {wallet.address(params)}")


@wallet_group.command("address")
@WALLET_OPTION
@JSON_OPTION
def wallet_address_command(wallet_path: str, as_json: bool) -> None:
    """Print the wallet's address (the last word of the line).

    \b
    Example:
      zcoin wallet address --wallet alice.json
    """
    import json

    wallet, params = _load_wallet(wallet_path)
    address = wallet.address(params)
    click.echo(json.dumps({"address": address, "network": params.name}) if as_json else f"address {address}")


def _wallet_coins(wallet, node: str, timeout_s: float, params):
    status = _ask(node, timeout_s, "status")
    if status["network"] != params.name:
        _fail(f"the node is on network {status['network']!r}, the wallet on {params.name!r}")
    return _ask(node, timeout_s, "get_utxos", pubkey=wallet.pubkey)


@wallet_group.command("balance")
@WALLET_OPTION
@NODE_OPTION
@JSON_OPTION
@TIMEOUT_OPTION
def wallet_balance_command(wallet_path: str, node: str, as_json: bool, timeout_s: float) -> None:
    """Ask a node for the wallet's balance: confirmed, pending (mempool), held and spendable.

    Held: coins of the node's answer that a pending payment of this wallet spends, which
    the node has not seen (its outcome unknown, or pushed to another node): `send` never
    spends them again, so they are not spendable.

    \b
    Example:
      zcoin wallet balance --wallet alice.json --node tcp://127.0.0.1:9101
    """
    import json

    from zcoin.consensus.primitives import OutPoint

    wallet, params = _load_wallet(wallet_path)
    reply = _wallet_coins(wallet, node, timeout_s, params)
    confirmed = sum(c["amount"] for c in reply["coins"] if c["confirmed"])
    pending = sum(c["amount"] for c in reply["coins"] if not c["confirmed"])
    reserved = wallet.reserved()
    held = sum(c["amount"] for c in reply["coins"] if OutPoint(c["txid"], c["index"]) in reserved)
    result = {"address": wallet.address(params), "confirmed": confirmed, "pending": pending, "held": held,
              "spendable": confirmed + pending - held, "coins": len(reply["coins"]), "height": reply["height"]}
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"address    {result['address']}\nconfirmed  {confirmed}\npending    {pending}\n"
                   + (f"held       {held}  (spent by payments of this wallet the node has not seen)\n" if held else "")
                   + f"spendable  {result['spendable']}  ({result['coins']} coins at height {reply['height']})")


EXIT_OUTCOME_UNKNOWN = 3  # `zcoin send`: the node did not answer the push


class OutcomeUnknown(click.ClickException):
    """A push with no answer: one line on stderr, exit status 3."""

    exit_code = EXIT_OUTCOME_UNKNOWN


@cli.command("send")
@NODE_OPTION
@WALLET_OPTION
@click.option("--to", "to_address", required=True, help="Recipient address.")
@click.option("--amount", required=True, type=click.IntRange(min=1), help="Amount in base units.")
@click.option("--fee", type=click.IntRange(min=0), help="Fee in base units [default: fee rate x size].")
@click.option("--fee-rate", type=click.IntRange(min=0), default=1, show_default=True,
              help="Base units per byte when --fee is not given.")
@JSON_OPTION
@TIMEOUT_OPTION
def send_command(node, wallet_path, to_address, amount, fee, fee_rate, as_json, timeout_s) -> None:
    """Pay AMOUNT base units to an address: select coins, add change, sign, push to the node.

    The wallet file remembers its payments until they have 6 confirmations.
    Before a new one it asks the node about them: confirmed deeply enough ->
    forgotten; conflicted (a confirmed transaction spent the same coins) ->
    marked so, coins released; unknown to the node -> pushed again, oldest
    first.  Coins a pending payment spends are never spent again (its change
    may be).  The new payment is written to the wallet file before the push.

    \b
    Exit status, and what it means for the payment:
      0  acknowledged: the node took it (txid printed); pending until confirmed
      1  refused: the node said no (reason on stderr) and the wallet forgets it;
         or no payment was made (insufficient funds, node unreachable before the push)
      2  bad usage: a malformed option or endpoint
      3  unknown: no answer to the push (txid printed); the payment stays pending
         and the next send re-pushes it, never rebuilding it from the same coins
    A payment is conflicted when a confirmed transaction spent its coins: it can
    never confirm (`zcoin wallet history`, `zcoin tx` show it).

    \b
    Example:
      zcoin send --node tcp://127.0.0.1:9101 --wallet alice.json --to zcl1... --amount 5000
    """
    import json
    import time

    from zcoin.client import NodeError, NodeUnavailable
    from zcoin.payments import PushOutcome, pay, settle_payments
    from zcoin.wallet import WalletError, decode_address, locked_wallet

    _, params = _load_wallet(wallet_path)  # a missing or broken file is reported before a lock file is made beside it
    try:
        to_pubkey = decode_address(to_address, params)
    except WalletError as exc:  # a mistyped argument: a usage error, before anything is asked of the node
        raise click.BadParameter(str(exc), param_hint="--to") from None
    try:
        with locked_wallet(wallet_path), _client(node, timeout_s) as client:
            wallet, params = _load_wallet(wallet_path)
            try:
                status = client.request("status")
                if status["network"] != params.name:
                    _fail(f"the node is on network {status['network']!r}, the wallet on {params.name!r}")
                wallet, settlements = settle_payments(client, wallet, wallet_path)
                for note in filter(None, (s.note for s in settlements)):
                    click.echo(note, err=True)
                result = pay(client, wallet, wallet_path, to_pubkey, amount, fee=fee, fee_per_byte=fee_rate,
                             node=node, now=int(time.time()))
            except NodeUnavailable as exc:  # before the push: no payment was made
                _fail(f"node unreachable: {exc}")
            except NodeError as exc:
                _fail(_refused_line(exc.reason, exc.detail))
    except WalletError as exc:
        _fail(str(exc))
    if result.outcome is PushOutcome.REFUSED:
        _fail(UNSERVED_LINES.get(result.code) or
              f"transaction rejected: {result.reason or result.code or 'no reason given'}")
    txid = result.payment.txid
    if as_json:
        click.echo(json.dumps({"txid": txid, "amount": amount, "to": to_address, "fee": result.fee,
                               "size": result.payment.tx.size, "outcome": result.outcome.value}))
    elif result.outcome is PushOutcome.ACKNOWLEDGED:
        click.echo(f"sent {amount} to {to_address}; txid {txid}")
    else:
        click.echo(f"pushed {amount} to {to_address}; txid {txid}; outcome unknown")
    if result.outcome is PushOutcome.UNKNOWN:
        raise OutcomeUnknown(f"no answer from {node} within {timeout_s:g}s; outcome unknown: the payment stays "
                             "pending and will be re-pushed, never rebuilt from the same coins")


def _fee_of(tx, coins) -> int:
    spent = {op for op in (i.prev for i in tx.inputs)}
    return sum(value for op, value in coins if op in spent) - sum(o.amount for o in tx.outputs)


@cli.command("bench")
@click.argument("what", type=click.Choice(["hash", "verify", "header"]))
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes for `hash` [default: cores].")
@click.option("--seconds", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="How long each figure is measured.")
@JSON_OPTION
def bench_command(what: str, workers: int | None, seconds: float, as_json: bool) -> None:
    """Measure a speed next to its baseline in the same run.

    \b
    hash    mining pool hashes/s vs a plain hashlib midstate loop
    verify  transaction validation vs raw coincurve Schnorr verifies
    header  consensus header hashing vs a plain hashlib loop

    \b
    Example:
      zcoin bench hash --workers 2 --seconds 5 --json
    """
    import json
    import os

    if what == "hash":
        from zcoin.bench import bench_hash

        result = bench_hash(workers or os.cpu_count() or 1, seconds)
    elif what == "verify":
        from zcoin.bench import bench_verify

        result = bench_verify(seconds)
    else:
        from zcoin.bench import bench_header_hash

        result = bench_header_hash(seconds)
    if as_json:
        click.echo(json.dumps(result))
    else:
        for key, value in result.items():
            click.echo(f"{key:32} {value}")


def _host_port(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as the explorer binds it; a usage error otherwise."""
    host, _, port = bind.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"{bind!r} is not HOST:PORT (port 0-65535; 0 = any free port)", param_hint="--bind")
    return host, int(port)


@cli.command("explorer")
@click.option("--node", "nodes", metavar="ENDPOINT", multiple=True,
              help="A miner's api endpoint; repeat for several (asked in this order, the first that is up first).")
@click.option("--tracker", "trackers", metavar="ENDPOINT", multiple=True,
              help="A tracker whose members are shown and asked too; repeat for several.")
@click.option("--bind", default="127.0.0.1:8080", show_default=True, metavar="HOST:PORT",
              help="Where the page and the HTTP API listen (port 0: any free port).")
def explorer_command(nodes: tuple[str, ...], trackers: tuple[str, ...], bind: str) -> None:
    """Serve a live page of the cluster, an HTTP API in esplora's shapes and Prometheus metrics.

    A client of the cluster (it joins nothing): it asks the nodes' api, listens
    to their gossip and serves http://HOST:PORT/ (the page), /api/... (esplora's
    REST API, /api/cluster, /api/events: Server-Sent Events) and /metrics.  It
    logs "explorer listening on http://HOST:PORT" once serving, and runs until
    SIGTERM or SIGINT.

    \b
    Example:
      zcoin explorer --node tcp://127.0.0.1:9101 --node tcp://127.0.0.1:9102 \\
                     --tracker tcp://127.0.0.1:9000 --bind 127.0.0.1:8080
    """
    from zcoin.client import BadEndpoint
    from zcoin.explorer.api import ExplorerError, run_explorer

    host, port = _host_port(bind)
    if not nodes and not trackers:
        raise click.UsageError("give at least one --node or --tracker")
    try:
        run_explorer(list(nodes), list(trackers), host, port)
    except BadEndpoint as exc:  # a malformed endpoint is bad usage, as for every other command
        raise click.BadParameter(str(exc), param_hint="--node/--tracker") from None
    except ExplorerError as exc:
        _fail(str(exc))


from zcoin import cli_dev  # noqa: E402,F401  (registers the developer commands: generate, faucet, block, ...)


def main() -> None:
    """Console-script entry point."""
    cli(obj={})


if __name__ == "__main__":  # `python -m zcoin.cli`: run the imported module, the one cli_dev registered on
    from zcoin.cli import main as imported_main

    imported_main()
