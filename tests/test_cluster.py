"""The cluster as a user runs it: a tracker and miners as real processes started through the CLI.

These start the same commands as the ``Procfile`` (with ephemeral loopback ports
and temporary data dirs), mine real blocks on the ``local`` network with the
worker pool, and use ``zcoin status``, ``zcoin wallet`` and ``zcoin send`` as a
user would.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from support.processes import ProcessGroup
from support.waiting import wait_until

LOADTEST = Path(__file__).resolve().parents[1] / "bin" / "loadtest"
CLI_POLL_S = 0.2  # each poll of these conditions starts a CLI process


def status(procs: ProcessGroup, api: str) -> dict:
    result = procs.cli("status", "--node", api, "--json", "--timeout", "5")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def same_tip(procs: ProcessGroup, apis: list[str], min_height: int = 1):
    tips = [status(procs, api) for api in apis]
    if len({t["tip"] for t in tips}) == 1 and tips[0]["height"] >= min_height:
        return tips[0]
    return None


def test_miners_mine_relay_and_agree_then_send_moves_coins_and_sigterm_exits_cleanly(procs, tmp_path):
    _, tracker = procs.start_tracker()
    apis = [procs.start_miner(f"miner{i}", [tracker])[1] for i in range(1, 4)]
    tip = wait_until(lambda: same_tip(procs, apis, min_height=2), 90, "three miners on one tip, height >= 2",
                     interval=CLI_POLL_S)
    assert all(status(procs, api)["peers"] == 2 for api in apis)
    shown = procs.cli("status", "--node", apis[0], "--timeout", "5")  # what a person reads
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith("node      miner1") and "peers     2" in lines
    assert [line.split()[0] for line in lines if line.startswith("  ")] == ["miner2", "miner3"]
    assert all(re.search(r"height \d+ +score 0$", line) for line in lines if line.startswith("  "))
    assert any(status(procs, api)["hashrate"] > 0 for api in apis)
    assert all(len(status(procs, api)["worker_hashrates"]) == 1 for api in apis)
    # A block found by one miner restarts the others' search on top of it.
    found = procs.procs["miner1"].wait_for_log(r"block found .*?height=(\d+) block=([0-9a-f]{64})", timeout=90)
    height, block = int(found.group(1)), found.group(2)
    for other in ("miner2", "miner3"):
        procs.procs[other].wait_for_log(rf"block connected .*?height={height} block={block}", timeout=30)
        procs.procs[other].wait_for_log(rf"block connected .*?height={height} block={block}[^\n]*\n"
                                        rf"(?:.*\n)*?.*mining job .*?height={height + 1}", timeout=30)

    alice, bob = tmp_path / "alice.json", tmp_path / "bob.json"
    made = procs.cli("wallet", "new", "--wallet", str(alice), "--dev", "0")
    assert made.returncode == 0, made.stderr
    assert procs.cli("wallet", "new", "--wallet", str(bob)).returncode == 0
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
    wait_until(lambda: bob_balance(apis[2])["spendable"] == 123456, 30, "payment seen by miner3", interval=CLI_POLL_S)
    wait_until(lambda: all(bob_balance(api)["confirmed"] == 123456 for api in apis), 90, "payment confirmed",
               interval=CLI_POLL_S)
    assert status(procs, apis[0])["height"] > tip["height"]

    # The load tester pushes from development accounts to two miners; its summary adds up.
    load = subprocess.run([sys.executable, str(LOADTEST), "--node", apis[0], "--node", apis[1], "--rate", "100",
                           "--seconds", "2", "--accounts", "5,6", "--outputs", "200", "--confirm-timeout", "60",
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
    for i in range(1, 4):
        assert procs.procs[f"miner{i}"].terminate(timeout=5) == 0


def test_late_miner_syncs_then_mines_on_the_same_chain(procs):
    _, tracker = procs.start_tracker()
    first = procs.start_miner("miner1", [tracker])[1]
    wait_until(lambda: status(procs, first)["height"] >= 3, 90, "miner1 at height 3", interval=CLI_POLL_S)
    late = procs.start_miner("miner2", [tracker])[1]
    wait_until(lambda: same_tip(procs, [first, late], min_height=3), 60, "late miner synced", interval=CLI_POLL_S)
    procs.procs["miner2"].wait_for_log(r"synced")
    # Its own blocks extend the shared chain: the found block is connected by miner1 too.
    found = procs.procs["miner2"].wait_for_log(r"block found .*?height=(\d+) block=([0-9a-f]{64})", timeout=120)

    def miner1_has_block():
        result = procs.cli("status", "--node", first, "--json")
        return json.loads(result.stdout)["height"] >= int(found.group(1))

    wait_until(miner1_has_block, 60, "miner1 past the late miner's block", interval=CLI_POLL_S)
    assert same_tip(procs, [first, late], min_height=int(found.group(1))) or wait_until(
        lambda: same_tip(procs, [first, late], min_height=int(found.group(1))), 60, "one tip again",
        interval=CLI_POLL_S)


def test_client_errors_are_one_line_with_exit_status_1(procs, tmp_path):
    unreachable = procs.cli("status", "--node", "tcp://127.0.0.1:1", "--timeout", "0.5")
    assert unreachable.returncode == 1
    assert unreachable.stderr.strip().count("\n") == 0 and "unreachable" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    wallet = tmp_path / "w.json"
    assert procs.cli("wallet", "new", "--wallet", str(wallet), "--dev", "1").returncode == 0
    address = procs.cli("wallet", "address", "--wallet", str(wallet)).stdout.split()[-1]
    typo = address[:-3] + ("q" if address[-3] != "q" else "p") + address[-2:]
    bad = procs.cli("send", "--node", "tcp://127.0.0.1:1", "--wallet", str(wallet), "--to", typo, "--amount", "5")
    assert bad.returncode == 1 and "checksum" in bad.stderr and "Traceback" not in bad.stderr
    again = procs.cli("wallet", "new", "--wallet", str(wallet))
    assert again.returncode == 1 and "--force" in again.stderr
    usage = procs.cli("send", "--wallet", str(wallet))
    assert usage.returncode == 2
    assert (wallet.stat().st_mode & 0o777) == 0o600


def test_acknowledged_transactions_survive_kill_9_of_the_node(procs):
    from support.payments import premine_spend

    from zcoin.client import NodeClient

    _, tracker = procs.start_tracker()
    node, api = procs.start_miner("relay", [tracker], network="regtest", mine=False)
    txs = [premine_spend(i, to=(i + 1) % 10) for i in range(5)]
    with NodeClient(api) as client:
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
