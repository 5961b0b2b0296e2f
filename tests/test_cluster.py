"""The cluster as a user runs it: a tracker and miners as real processes started through the CLI.

These start the same commands as the ``Procfile`` (with ephemeral loopback ports
and temporary data dirs) and use ``zcoin status``, ``zcoin wallet``, ``zcoin
send`` and ``zcoin generate`` as a user would.  The first test runs a user's
default cluster end to end: three miners mining real blocks on the ``local``
network with the worker pool.  The waits in between poll the miners' api
directly (a CLI process per poll would cost half a second and a core that the
miners need); what the user sees is then checked through the CLI.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from support.processes import ProcessGroup
from support.waiting import wait_until
from zcoin.client import NodeClient
from zcoin.consensus.primitives import Block

LOADTEST = Path(__file__).resolve().parents[1] / "bin" / "loadtest"
POLL_S = 0.1  # each poll asks every miner's api
CLI_POLL_S = 0.2  # each poll of these conditions starts a CLI process


def status(procs: ProcessGroup, api: str) -> dict:
    """What ``zcoin status --json`` prints for the miner at ``api``."""
    result = procs.cli("status", "--node", api, "--json", "--timeout", "5")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def ask(api: str, msg_type: str, **fields) -> dict:
    """One request to a miner's api."""
    with NodeClient(api, timeout_s=5.0) as client:
        return client.request(msg_type, **fields).fields


def same_tip(apis: list[str], min_height: int = 1) -> dict | None:
    """The tip every miner at ``apis`` is on (asked over the api), once they agree at ``min_height`` or above."""
    tips = [ask(api, "get_tip") for api in apis]
    if len({t["hash"] for t in tips}) == 1 and tips[0]["height"] >= min_height:
        return tips[0]
    return None


def block_hash_at(api: str, height: int) -> str | None:
    """The hash (hex, display order) of the block at ``height`` of the chain of the miner at ``api``."""
    raw = ask(api, "get_block", height=height).get("block")
    return Block.parse(raw).hash_hex if raw is not None else None


def each(function, items: list) -> list:
    """``function`` of every item, called at once from threads (each call starts a CLI process)."""
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        return list(pool.map(function, items))


def found_blocks(log: str) -> list[tuple[int, str]]:
    """(height, block hash) of every "block found" line of a miner's log."""
    return [(int(h), b) for h, b in re.findall(r"block found .*?height=(\d+) block=([0-9a-f]{64})", log)]


def test_miners_mine_relay_and_agree_then_send_moves_coins_and_sigterm_exits_cleanly(procs, tmp_path):
    _, tracker = procs.start_tracker()
    names = ["miner1", "miner2", "miner3"]
    apis = [api for _, api in procs.start_miners(names, [tracker])]
    tip = wait_until(lambda: same_tip(apis, min_height=2), 90, "three miners on one tip, height >= 2", POLL_S)
    statuses = each(lambda api: status(procs, api), apis)
    assert all(s["peers"] == 2 for s in statuses)
    shown = procs.cli("status", "--node", apis[0], "--timeout", "5")  # what a person reads
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("node      miner1") and "peers     2" in lines
    assert [line.split()[0] for line in lines if line.startswith("  ")] == ["miner2", "miner3"]
    assert all(re.search(r"height \d+ +score 0$", line) for line in lines if line.startswith("  "))
    assert any(s["hashrate"] > 0 for s in statuses)
    assert all(len(s["worker_hashrates"]) == 1 for s in statuses)
    # A block found by one miner restarts the others' search on top of it.  (The chain is at height 2
    # or more, so some miner has found a block that is on it.)
    on_chain = [(name, height, block) for name in names for height, block in found_blocks(procs.procs[name].log())
                if block_hash_at(apis[0], height) == block]
    assert on_chain, "no miner logged a block found that is on the chain"
    finder, height, block = on_chain[0]
    for other in names:
        if other != finder:
            procs.procs[other].wait_for_log(rf"block connected .*?height={height} block={block}", timeout=30)
            procs.procs[other].wait_for_log(rf"block connected .*?height={height} block={block}[^\n]*\n"
                                            rf"(?:.*\n)*?.*mining job .*?height={height + 1}", timeout=30)

    alice, bob = tmp_path / "alice.json", tmp_path / "bob.json"
    made = each(lambda args: procs.cli("wallet", "new", *args), [("--wallet", str(alice), "--dev", "0"),
                                                                  ("--wallet", str(bob))])
    assert all(m.returncode == 0 for m in made), [m.stderr for m in made]
    bob_address = procs.cli("wallet", "address", "--wallet", str(bob)).stdout.split()[-1]
    sent = procs.cli("send", "--node", apis[0], "--wallet", str(alice), "--to", bob_address, "--amount", "123456",
                     "--json")
    assert sent.returncode == 0, sent.stderr
    txid = json.loads(sent.stdout)["txid"]
    assert re.fullmatch(r"[0-9a-f]{64}", txid)

    def bob_balance(api: str) -> dict:
        result = procs.cli("wallet", "balance", "--wallet", str(bob), "--node", api, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    # Seen on another miner (relayed to its mempool, or already in a block), then confirmed everywhere.
    wait_until(lambda: bob_balance(apis[2])["spendable"] == 123456, 30, "payment seen by miner3",
               interval=CLI_POLL_S)
    in_a_block = bytes.fromhex(txid)[::-1]
    wait_until(lambda: all(ask(api, "get_tx", txid=in_a_block)["state"] == "confirmed" for api in apis), 90,
               "payment in a block on every miner", POLL_S)
    wait_until(lambda: all(b["confirmed"] == 123456 for b in each(bob_balance, apis)), 30, "payment confirmed",
               interval=CLI_POLL_S)
    assert status(procs, apis[0])["height"] > tip["height"]

    # The load tester pushes from development accounts to two miners; its summary adds up.
    load = subprocess.run([sys.executable, str(LOADTEST), "--node", apis[0], "--node", apis[1], "--rate", "100",
                           "--seconds", "1", "--accounts", "5,6", "--outputs", "200", "--confirm-timeout", "60",
                           "--json"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert load.returncode == 0, load.stderr
    summary = json.loads(load.stdout)
    assert summary["sent"] > 0 and summary["accepted"] > 0
    assert summary["sent"] == summary["accepted"] + summary["rejected"] + summary["unanswered"]
    assert summary["confirmed"] + summary["unconfirmed"] == summary["accepted"]
    assert summary["confirmed"] > 0 and summary["accept_latency"]["count"] == summary["accepted"]

    # Spending more than the wallet holds: one line, exit status 1.
    broke = procs.cli("send", "--node", apis[0], "--wallet", str(bob), "--to", bob_address, "--amount", "10000000")
    assert broke.returncode == 1 and "insufficient funds" in broke.stderr and "Traceback" not in broke.stderr

    # SIGTERM: each miner leaves, closes its store and exits 0 within 5 s.
    for name in names:
        assert procs.procs[name].terminate(timeout=5) == 0


def test_late_miner_syncs_then_mines_on_the_same_chain(procs):
    # On regtest, mining on demand: the chain is exactly as long as asked, the moment it is asked.
    _, tracker = procs.start_tracker()
    on_demand = ("--mining", "on-demand")
    first = procs.start_miner("miner1", [tracker], *on_demand, network="regtest")[1]
    made = procs.cli("generate", "3", "--node", first, "--json")
    assert made.returncode == 0 and json.loads(made.stdout)["height"] == 3, made.stderr
    late = procs.start_miner("miner2", [tracker], *on_demand, network="regtest")[1]
    wait_until(lambda: same_tip([first, late], min_height=3), 60, "late miner synced", POLL_S)
    procs.procs["miner2"].wait_for_log(r"synced")
    # Its own blocks extend the shared chain: the block it finds is connected by miner1 too.
    mined = procs.cli("generate", "1", "--node", late, "--json")
    assert mined.returncode == 0, mined.stderr
    found = procs.procs["miner2"].wait_for_log(r"block found .*?height=(\d+) block=([0-9a-f]{64})")
    height, block = int(found.group(1)), found.group(2)
    assert (height, [block]) == (4, json.loads(mined.stdout)["hashes"])
    wait_until(lambda: same_tip([first, late], min_height=height), 60, "one tip again", POLL_S)
    assert block_hash_at(first, height) == block


def test_client_errors_are_one_line_with_exit_status_1(procs, tmp_path):
    wallet = tmp_path / "w.json"
    unreachable, made, usage = each(lambda args: procs.cli(*args), [  # independent of each other
        ("status", "--node", "tcp://127.0.0.1:1", "--timeout", "0.5"),
        ("wallet", "new", "--wallet", str(wallet), "--dev", "1"),
        ("send", "--wallet", str(wallet))])
    assert unreachable.returncode == 1
    assert unreachable.stderr.strip().count("\n") == 0 and "unreachable" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    assert made.returncode == 0
    assert usage.returncode == 2
    address = procs.cli("wallet", "address", "--wallet", str(wallet)).stdout.split()[-1]
    typo = address[:-3] + ("q" if address[-3] != "q" else "p") + address[-2:]
    bad, again = each(lambda args: procs.cli(*args), [
        ("send", "--node", "tcp://127.0.0.1:1", "--wallet", str(wallet), "--to", typo, "--amount", "5"),
        ("wallet", "new", "--wallet", str(wallet))])
    # A mistyped address is a bad argument, like an unknown --network: a usage error (2) naming --to.
    assert bad.returncode == 2 and "checksum" in bad.stderr and "--to" in bad.stderr and "Traceback" not in bad.stderr
    assert again.returncode == 1 and "--force" in again.stderr
    assert (wallet.stat().st_mode & 0o777) == 0o600


def test_acknowledged_transactions_survive_kill_9_of_the_node(procs):
    from support.payments import premine_spend

    from zcoin.client import NodeClient

    _, tracker = procs.start_tracker()
    node, api = procs.start_miner("relay", [tracker], network="regtest", mine=False)
    txs = [premine_spend(i, to=(i + 1) % 10) for i in range(5)]
    with NodeClient(api) as client:
        wait_until(lambda: client.request("status")["synced"], 15, "the node synced (it refuses payments before)")
        for tx in txs:
            assert client.request("push_tx", tx=tx.raw)["accepted"]
    node.kill()  # SIGKILL right after the last acknowledgement
    node.start()
    node.wait_for_log(r"node started")
    endpoints = json.loads((procs.tmp_path / "relay" / "node.json").read_text())
    assert endpoints["pid"] == node.pid
    with NodeClient(endpoints["api"]) as client:
        pool = set(client.request("get_mempool")["txids"])
    assert pool == {tx.txid for tx in txs}
