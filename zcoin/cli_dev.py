"""The developer's commands: mine blocks on demand, pay from the development accounts, look things up.

What Bitcoin Core's regtest gives with ``generatetoaddress``, ``getblock``,
``getrawtransaction`` and ``getmempoolinfo``, Anvil with ``mine`` and nigiri with
its faucet: ``zcoin generate``, ``zcoin faucet``, ``zcoin block``, ``zcoin tx``,
``zcoin mempool`` and ``zcoin wallet history``.  Each asks a miner's api and
formats the reply; none keeps state.  They register themselves on the ``zcoin``
group when :mod:`zcoin.cli` imports this module, and follow its conventions:
``--json`` for data, exit status 1 with one line on stderr when the node refuses
or does not know the thing asked for, 2 on bad usage.

Hashes and txids are shown and typed in display order (byte-reversed hex, as
Bitcoin shows them); the wire carries them in internal order.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import click

from zcoin.cli import (
    JSON_OPTION,
    NODE_OPTION,
    TIMEOUT_OPTION,
    WALLET_OPTION,
    _ask,
    _client,
    _fail,
    _fee_of,
    _load_wallet,
    _params,
    _refused_line,
    cli,
    wallet_group,
)
from zcoin.client import DEFAULT_TIMEOUT_S, NodeError, NodeUnavailable
from zcoin.consensus.errors import DecodeError
from zcoin.consensus.primitives import UINT32_MAX, Block, OutPoint, Transaction
from zcoin.payments import PaymentView, TxState, check_payments
from zcoin.wallet import InsufficientFunds, WalletError, build_payment, decode_address, encode_address, new_wallet

MAX_GENERATE_BLOCKS = 10_000
GENERATE_TIMEOUT_S = 300.0  # per block: real proof of work at the network's difficulty
EXIT_INTERRUPTED = 130  # the shell's status for a command ended by SIGINT

_HASH_TEXT = re.compile(r"[0-9a-fA-F]{64}")
_HEIGHT_TEXT = re.compile(r"[0-9]{1,10}")


# --- arguments and the node's network ---------------------------------------------------


def _hash_arg(text: str, param_hint: str) -> bytes:
    """A hash typed in display order, as the wire carries it (internal order); usage error otherwise."""
    if not _HASH_TEXT.fullmatch(text):
        raise click.BadParameter(f"{text!r} is not a hash (64 hex digits)", param_hint=param_hint)
    return bytes.fromhex(text)[::-1]


def _display(hash32: bytes) -> str:
    return hash32[::-1].hex()


def _node_params(node: str, timeout_s: float):
    """The chain parameters of the network the node runs."""
    return _params(_ask(node, timeout_s, "status")["network"])


def _pubkey_of(address: str, params, param_hint: str) -> bytes:
    try:
        return decode_address(address, params)
    except WalletError as exc:
        raise click.BadParameter(str(exc), param_hint=param_hint) from None


def _confirmations(n: int) -> str:
    return f"{n} confirmation{'' if n == 1 else 's'}"


# --- generate -------------------------------------------------------------------------------


@cli.command("generate")
@click.argument("count", metavar="N", type=click.IntRange(1, MAX_GENERATE_BLOCKS))
@NODE_OPTION
@click.option("--to", "to_address", metavar="ADDRESS", help="Address the new coinbases pay [default: the node's key].")
@JSON_OPTION
@click.option("--timeout", "timeout_s", metavar="S", default=GENERATE_TIMEOUT_S, show_default=True,
              type=click.FloatRange(min=0, min_open=True), help="Seconds to wait for each block.")
def generate_command(count: int, node: str, to_address: str | None, as_json: bool, timeout_s: float) -> None:
    """Mine N blocks (1..10000) on the node's tip now, with its mining pool (admin: loopback api only).

    The node is asked block by block: each is mined with real proof of work at
    the network's difficulty and connected before the next is asked for.
    Progress goes to stderr ("block 3/10 HASH height H"), the hashes to stdout,
    one a line (--json: {"hashes": [...], "height": H} at the end).  Ctrl-C
    stops with exit status 130 and says how many blocks were made (the node may
    still finish the block it was mining).  A node that does not mine (--mining
    off, --no-mine) refuses: exit status 1.

    \b
    Example:
      zcoin generate 10 --node tcp://127.0.0.1:19101
      zcoin generate 1 --node tcp://127.0.0.1:19101 --to zcrt1...
    """
    payout = None
    if to_address is not None:
        payout = _pubkey_of(to_address, _node_params(node, min(timeout_s, DEFAULT_TIMEOUT_S)), "--to")
    hashes: list[str] = []
    height = None
    try:
        for number in range(1, count + 1):
            reply = _ask(node, timeout_s, "generate", blocks=1, payout=payout)
            if len(reply["hashes"]) != 1:
                _fail(f"the node answered a request for 1 block with {len(reply['hashes'])} hashes")
            hashes += reply["hashes"]
            height = reply["height"]
            click.echo(f"block {number}/{count} {hashes[-1]} height {height}", err=True)
            if not as_json:
                click.echo(hashes[-1])
    except KeyboardInterrupt:
        click.echo(f"interrupted: {len(hashes)} of {count} blocks made "
                   f"(the node may still finish the block it was mining)", err=True)
        if as_json:
            click.echo(json.dumps({"hashes": hashes, "height": height}))
        raise SystemExit(EXIT_INTERRUPTED) from None
    if as_json:
        click.echo(json.dumps({"hashes": hashes, "height": height}))


# --- faucet ---------------------------------------------------------------------------------


@cli.command("faucet")
@NODE_OPTION
@click.option("--to", "to_address", required=True, metavar="ADDRESS", help="Recipient address.")
@click.option("--amount", required=True, type=click.IntRange(min=1), help="Amount in base units.")
@click.option("--fee", type=click.IntRange(min=0), help="Fee in base units [default: 1 per byte].")
@JSON_OPTION
@TIMEOUT_OPTION
def faucet_command(node: str, to_address: str, amount: int, fee: int | None, as_json: bool,
                   timeout_s: float) -> None:
    """Pay AMOUNT base units to an address from the network's premined development accounts.

    Development accounts exist on the local and regtest networks (their keys
    are public by design); the first account whose spendable coins cover the
    amount and the fee pays, and the payment is pushed to the node.  Prints the
    txid; exit status 1 when the node refuses it or no account can pay.

    \b
    Example:
      zcoin faucet --node tcp://127.0.0.1:19101 --to zcrt1... --amount 100000000
    """
    params = _node_params(node, timeout_s)
    if params.dev_accounts == 0:
        _fail(f"network {params.name} has no development accounts")
    to_pubkey = _pubkey_of(to_address, params, "--to")
    for account in range(params.dev_accounts):
        reply = _ask(node, timeout_s, "get_utxos", pubkey=params.dev_pubkey(account))
        coins = [(OutPoint(c["txid"], c["index"]), c["amount"]) for c in reply["coins"]]
        try:
            tx = build_payment(new_wallet(params, account), coins, to_pubkey, amount, fee=fee)
        except InsufficientFunds:
            continue
        break
    else:
        _fail(f"no development account of {params.name} can pay {amount} plus the fee")
    result = _ask(node, timeout_s, "push_tx", tx=tx.raw)
    if not result["accepted"]:
        _fail(f"transaction rejected: {result.get('reason', 'no reason given')}")
    if as_json:
        click.echo(json.dumps({"txid": result["txid"], "amount": amount, "to": to_address,
                               "fee": _fee_of(tx, coins), "from_account": account}))
    else:
        click.echo(f"paid {amount} to {to_address} from development account {account}; txid {result['txid']}")


# --- block ----------------------------------------------------------------------------------


def block_as_json(block: Block, reply, params) -> dict:
    """The ``zcoin block --json`` document for a ``block`` reply."""
    height = reply["height"]
    active = bool(reply.get("active"))
    tip_height = reply.get("tip_height")
    header = block.header
    coinbase = block.txs[0] if block.txs else None
    outputs = [] if coinbase is None else [{"address": encode_address(o.pubkey, params), "amount": o.amount}
                                          for o in coinbase.outputs]
    return {
        "hash": block.hash_hex, "height": height, "active": active,
        "confirmations": tip_height - height + 1 if active and tip_height is not None else 0,
        "version": header.version, "prev": _display(header.prev_hash), "merkle_root": _display(header.merkle_root),
        "time": header.time, "bits": f"{header.bits:08x}", "nonce": header.nonce, "size": block.size,
        "tx_count": len(block.txs), "txids": [tx.txid_hex for tx in block.txs], "fees": reply.get("fees"),
        "payout": outputs[0]["address"] if outputs else None, "coinbase_outputs": outputs,
    }


@cli.command("block")
@click.argument("which", metavar="HASH|HEIGHT")
@NODE_OPTION
@JSON_OPTION
@TIMEOUT_OPTION
def block_command(which: str, node: str, as_json: bool, timeout_s: float) -> None:
    """Show a block by hash or by height on the active chain: header, confirmations, transactions, fees.

    A block on a side branch has 0 confirmations.  Exit status 1 when the node
    does not know the block, 2 when HASH|HEIGHT is neither.

    \b
    Example:
      zcoin block 12 --node tcp://127.0.0.1:19101
      zcoin block 3c5f...e1 --node tcp://127.0.0.1:19101 --json
    """
    if _HEIGHT_TEXT.fullmatch(which) and int(which) <= UINT32_MAX:
        query = {"height": int(which)}
    elif _HASH_TEXT.fullmatch(which):
        query = {"hash": _hash_arg(which, "HASH|HEIGHT")}
    else:
        raise click.BadParameter(f"{which!r} is neither a height nor a hash (64 hex digits)", param_hint="HASH|HEIGHT")
    params = _node_params(node, timeout_s)
    reply = _ask(node, timeout_s, "get_block", **query)
    if reply.get("block") is None:
        _fail(f"block {which} not found")
    try:
        block = Block.parse(reply["block"])
    except DecodeError as exc:
        _fail(f"the node sent a block that does not decode: {exc}")
    if "hash" in query and block.hash != query["hash"]:
        _fail(f"the node answered with another block ({block.hash_hex})")
    doc = block_as_json(block, reply, params)
    if as_json:
        click.echo(json.dumps(doc))
        return
    standing = _confirmations(doc["confirmations"]) if doc["active"] else "side branch, 0 confirmations"
    when = datetime.fromtimestamp(doc["time"], UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    click.echo(f"hash          {doc['hash']}\nheight        {doc['height']} ({standing})\n"
               f"version       {doc['version']}\nprev          {doc['prev']}\nmerkle root   {doc['merkle_root']}\n"
               f"time          {doc['time']} ({when})\nbits          {doc['bits']}\nnonce         {doc['nonce']}\n"
               f"size          {doc['size']} bytes\nfees          {_or_unknown(doc['fees'])}")
    for output in doc["coinbase_outputs"]:
        click.echo(f"payout        {output['amount']} to {output['address']}")
    click.echo(f"transactions  {doc['tx_count']}")
    for txid in doc["txids"]:
        click.echo(f"  {txid}")


def _or_unknown(value) -> str:
    return "unknown" if value is None else str(value)


# --- tx -------------------------------------------------------------------------------------


def tx_as_json(txid: str, reply, params) -> dict:
    """The ``zcoin tx --json`` document for a ``tx_status`` reply (state "mempool", "confirmed" or "conflicted")."""
    doc = {"txid": txid, "state": reply["state"], "height": reply.get("height"),
           "block": _display(reply["block"]) if reply.get("block") else None,
           "confirmations": reply.get("confirmations") if reply["state"] == "confirmed" else 0}
    if reply["state"] == "conflicted":
        doc["conflict"] = reply.get("conflict")
    if reply.get("tx") is None:
        return doc
    try:
        tx = Transaction.parse(reply["tx"])
    except DecodeError as exc:
        _fail(f"the node sent a transaction that does not decode: {exc}")
    prevouts = list(reply.get("prevouts") or [])
    prevouts += [None] * (len(tx.inputs) - len(prevouts))  # the node may not know every spent coin
    inputs = [] if tx.is_coinbase else [
        {"prev_txid": _display(i.prev.txid), "prev_index": i.prev.index,
         "amount": coin["amount"] if coin else None,
         "address": encode_address(coin["pubkey"], params) if coin else None}
        for i, coin in zip(tx.inputs, prevouts)]
    fee = None
    if not tx.is_coinbase and all(i["amount"] is not None for i in inputs):
        fee = sum(i["amount"] for i in inputs) - sum(o.amount for o in tx.outputs)
    doc.update(coinbase=tx.is_coinbase, size=tx.size, fee=fee,
               fee_rate=None if fee is None else round(fee / tx.size, 3), inputs=inputs,
               outputs=[{"index": n, "amount": o.amount, "address": encode_address(o.pubkey, params)}
                        for n, o in enumerate(tx.outputs)])
    return doc


def _state_line(doc: dict) -> str:
    if doc["state"] == "mempool":
        return "in mempool"
    if doc["state"] == "confirmed":
        depth = "" if doc["confirmations"] is None else f" with {_confirmations(doc['confirmations'])}"
        return f"confirmed at height {doc['height']}{depth}" + (f" (block {doc['block']})" if doc["block"] else "")
    if doc["state"] == "conflicted":
        return f"conflicted by {doc.get('conflict') or 'a confirmed transaction'}: it can never confirm"
    return doc["state"]


@cli.command("tx")
@click.argument("txid", metavar="TXID")
@NODE_OPTION
@JSON_OPTION
@TIMEOUT_OPTION
def tx_command(txid: str, node: str, as_json: bool, timeout_s: float) -> None:
    """Show a transaction: state, inputs and outputs with amounts and addresses, fee and fee rate.

    The state is "in mempool", "confirmed at height H with K confirmations",
    "conflicted by TXID" (the node dropped it: the confirmed transaction TXID
    spent the same coins, so it can never confirm) or unknown (exit status 1;
    with --json the state is printed first).  A coinbase lists no inputs and
    no fee.

    \b
    Example:
      zcoin tx 9a1c...07 --node tcp://127.0.0.1:19101 --json
    """
    query = _hash_arg(txid, "TXID")
    txid = txid.lower()
    params = _node_params(node, timeout_s)
    reply = _ask(node, timeout_s, "get_tx", txid=query, verbose=True)
    if reply["state"] == "unknown":
        if as_json:
            click.echo(json.dumps({"txid": txid, "state": "unknown"}))
        _fail(f"transaction {txid} unknown to the node")
    doc = tx_as_json(txid, reply, params)
    if as_json:
        click.echo(json.dumps(doc))
        return
    click.echo(f"txid     {txid}\nstate    {_state_line(doc)}")
    if "size" not in doc:
        return
    fee = "none (coinbase)" if doc["coinbase"] else (
        "unknown" if doc["fee"] is None else f"{doc['fee']} ({doc['fee_rate']:g} per byte)")
    click.echo(f"size     {doc['size']} bytes\nfee      {fee}\ninputs   {len(doc['inputs'])}")
    for i in doc["inputs"]:
        click.echo(f"  {i['prev_txid']}:{i['prev_index']}  {_or_unknown(i['amount'])}  {_or_unknown(i['address'])}")
    click.echo(f"outputs  {len(doc['outputs'])}")
    for o in doc["outputs"]:
        click.echo(f"  {o['index']}  {o['amount']}  {o['address']}")


# --- mempool --------------------------------------------------------------------------------


@cli.command("mempool")
@NODE_OPTION
@JSON_OPTION
@click.option("--txids", "with_txids", is_flag=True, help="Also list the txids in the mempool.")
@TIMEOUT_OPTION
def mempool_command(node: str, as_json: bool, with_txids: bool, timeout_s: float) -> None:
    """Show the node's mempool: transactions, bytes, total fees and a histogram of fee rates.

    \b
    Example:
      zcoin mempool --node tcp://127.0.0.1:19101 --txids
    """
    info = dict(_ask(node, timeout_s, "get_mempool_info").fields)
    if with_txids:
        info["txids"] = [_display(t) for t in _ask(node, timeout_s, "get_mempool")["txids"]]
    if as_json:
        click.echo(json.dumps(info))
        return
    click.echo(f"transactions  {info['count']}\nbytes         {info['bytes']} (at most {info['max_bytes']})\n"
               f"fees          {info['fees']}\nmin fee rate  {info['min_fee_rate']:g} per byte")
    if info["histogram"]:
        click.echo("fee rate (per byte)  transactions  bytes")
        for bucket in info["histogram"]:
            click.echo(f"  >= {bucket['min_rate']:<16}{bucket['count']:<14}{bucket['bytes']}")
    for txid in info.get("txids", []):
        click.echo(txid)


# --- wallet history -------------------------------------------------------------------------


HISTORY_ORDER = {"confirmed": 0, "pending": 1, "conflicted": 2}


@wallet_group.command("history")
@WALLET_OPTION
@NODE_OPTION
@JSON_OPTION
@TIMEOUT_OPTION
def wallet_history_command(wallet_path: str, node: str, as_json: bool, timeout_s: float) -> None:
    """List every transaction that paid or spent the wallet's address, newest last, with its net amount and state.

    Net is what the transaction paid the address minus the wallet's coins it
    spent (a payment out shows minus the amount, the fee and less the change).
    The node's history is merged with the payments the wallet file remembers:
    confirmed ones first (height, confirmations), then pending ones (in the
    node's mempool, or not known to this node: the next `zcoin send` re-pushes
    them), then conflicted ones ("conflicted by TXID": a confirmed transaction
    spent the same coins, so they never happen; their net is what they would
    have been, never part of the balance).

    \b
    Example:
      zcoin wallet history --wallet alice.json --node tcp://127.0.0.1:19101 --json
    """
    wallet, params = _load_wallet(wallet_path)
    node_params = _node_params(node, timeout_s)
    if node_params.name != params.name:
        _fail(f"the node is on network {node_params.name!r}, the wallet on {params.name!r}")
    reply = _ask(node, timeout_s, "get_history", pubkey=wallet.pubkey)
    items = sorted(reply["items"], key=lambda item: (item["height"] == -1, item["height"]))
    history = [{"txid": _display(item["txid"]), "height": None if item["height"] == -1 else item["height"],
                "confirmations": 0 if item["height"] == -1 else reply["height"] - item["height"] + 1,
                "received": item["received"], "spent": item["spent"], "net": item["received"] - item["spent"],
                "state": "pending" if item["height"] == -1 else "confirmed", "in_mempool": item["height"] == -1,
                "conflict": None}
               for item in items]
    known = {entry["txid"] for entry in history}
    history += [_payment_entry(view, wallet.pubkey) for view in _payment_views(node, timeout_s, wallet)
                if view.payment.txid not in known]
    history.sort(key=lambda entry: (HISTORY_ORDER[entry["state"]], entry["height"] or 0))  # stable: pool order stays
    if as_json:
        click.echo(json.dumps(history))
        return
    if not history:
        click.echo(f"no transactions for {wallet.address(params)}")
        return
    click.echo(f"{'HEIGHT':<10}{'NET':>16}  {'TXID':<64}  STATE")
    for entry in history:
        click.echo(f"{entry['state'] if entry['height'] is None else entry['height']:<10}{entry['net']:>+16}  "
                   f"{entry['txid']}  {_history_state(entry)}")


def _payment_views(node: str, timeout_s: float, wallet) -> list[PaymentView]:
    """What the node says of the payments the wallet file remembers."""
    if not wallet.payments:
        return []
    with _client(node, timeout_s) as client:
        try:
            return check_payments(client, wallet)
        except NodeUnavailable as exc:
            _fail(f"node unreachable: {exc}")
        except NodeError as exc:
            _fail(_refused_line(exc.reason, exc.detail))


def _payment_entry(view: PaymentView, pubkey: bytes) -> dict:
    """A history entry for a remembered payment the node's history does not list."""
    payment = view.payment
    received = sum(o.amount for o in payment.tx.outputs if o.pubkey == pubkey)
    confirmed = view.state is TxState.CONFIRMED
    state = "confirmed" if confirmed else "conflicted" if view.state is TxState.CONFLICTED else "pending"
    return {"txid": payment.txid, "height": view.height if confirmed else None,
            "confirmations": view.confirmations if confirmed else 0, "received": received, "spent": payment.spent,
            "net": received - payment.spent, "state": state, "in_mempool": view.state is TxState.MEMPOOL,
            "conflict": view.conflict if state == "conflicted" else None}


def _history_state(entry: dict) -> str:
    if entry["state"] == "confirmed":
        return _confirmations(entry["confirmations"])
    if entry["state"] == "conflicted":
        return f"conflicted by {entry['conflict']}"
    return "in mempool" if entry["in_mempool"] else "not known to this node (the next send re-pushes it)"
