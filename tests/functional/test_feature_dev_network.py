"""The developer's network: an on-demand regtest cluster driven by ``zcoin generate``, ``faucet`` and the lookups.

Real processes: a tracker and regtest miners started with ``--mining on-demand``
(as ``Procfile.regtest`` starts them), so no block appears unless a test asks
for it and every height below is exact.  Everything a developer would type goes
through the ``zcoin`` command; what the command prints is checked against what
the nodes report over their api (tips, blocks, ``get_tx``).  The commands that
fetch data run in the test process (:func:`support.processes.cli_in_process`:
the same entry point, output and exit status, without starting an interpreter
for each of some fifty commands); those whose point is how they fail (the exit
status and the one line a shell shows) and Ctrl-C run as child processes.
"""

from __future__ import annotations

import json
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from framework import disconnect, reconnect, sync_blocks, sync_mempools, wait_connected
from framework import cluster  # noqa: F401  (a fixture: tests take it by name)
from support.processes import CLI, cli_in_process
from support.waiting import wait_until

from zcoin.config import MINER_CONFIG_SPEC, load_section, load_tracker_settings, parse_mining_mode
from zcoin.consensus.params import LOCAL, REGTEST
from zcoin.wallet import encode_address, load_wallet

ON_DEMAND = ("--mining", "on-demand")
REPO = Path(__file__).resolve().parents[2]


# --- the command line as a user runs it ----------------------------------------------------


def zcoin_json(net, *args: str):
    """Run ``zcoin ARGS --json``; it must succeed; return the parsed output."""
    result = cli_in_process(*args, "--json")
    assert result.returncode == 0, f"zcoin {' '.join(args)} failed ({result.returncode}): {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def zcoin_fails(net, status: int, *args: str) -> subprocess.CompletedProcess:
    """Run ``zcoin ARGS`` as a child process; it must exit with ``status`` and say why in one line on stderr,
    without a traceback."""
    result = net.cli(*args)
    assert result.returncode == status, (args, result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error:"), result.stderr
    return result


@dataclass(frozen=True)
class WalletFile:
    path: str
    address: str


def new_wallet(net, name: str) -> WalletFile:
    path = str(net.tmp_path / f"{name}.json")
    created = cli_in_process("wallet", "new", "--wallet", path, "--network", "regtest")
    assert created.returncode == 0, created.stderr
    return WalletFile(path, zcoin_json(net, "wallet", "address", "--wallet", path)["address"])


def history(net, node, wallet: WalletFile) -> list[dict]:
    return zcoin_json(net, "wallet", "history", "--wallet", wallet.path, "--node", node.api)


def generate(net, node, blocks: int, *extra: str) -> dict:
    made = zcoin_json(net, "generate", str(blocks), "--node", node.api, *extra)
    assert len(made["hashes"]) == blocks, made
    return made


def start_regtest_cluster(net, names, **kwargs):
    net.add_tracker()
    nodes = net.add_miners(names, network_name="regtest", extra=ON_DEMAND, **kwargs)
    wait_connected(nodes)
    return nodes


def assert_history_matches_the_node(net, node, wallet: WalletFile) -> list[dict]:
    """``zcoin wallet history`` on ``node`` against the node's own answers: each confirmed item is in the
    block at its height, each pending one in the mempool, and the nets add up to the wallet's balance."""
    items = history(net, node, wallet)
    for item in items:
        txid = bytes.fromhex(item["txid"])[::-1]
        if item["height"] is None:
            assert node.tx_state(txid) == ("mempool", None), (node.name, item)
        else:
            assert node.tx_state(txid) == ("confirmed", item["height"]), (node.name, item)
            assert txid in node.block_at(item["height"]).txids, (node.name, item)
    assert [i["height"] for i in items if i["height"] is not None] == sorted(
        i["height"] for i in items if i["height"] is not None), "confirmed items oldest first"
    assert all(i["height"] is None for i in items[len([j for j in items if j["height"] is not None]):]), \
        "pending items last"
    balance = zcoin_json(net, "wallet", "balance", "--wallet", wallet.path, "--node", node.api)
    assert sum(i["net"] for i in items) == balance["spendable"], (node.name, items, balance)
    return items


# --- the tests ----------------------------------------------------------------------------


def test_generate_mines_exact_blocks_on_every_node_and_faucet_payments_confirm_as_lookups_say(cluster):
    nodes = start_regtest_cluster(cluster, ("alpha", "bravo", "charlie"))
    alpha, bravo, charlie = nodes
    start, _ = sync_blocks(nodes)

    # generate 10: every node's height rises by exactly 10, on the same blocks, paying the miner's own key.
    made = generate(cluster, alpha, 10)
    assert made["height"] == start + 10 and len(set(made["hashes"])) == 10
    height, tip = sync_blocks(nodes, min_height=start + 10)
    assert (height, tip[::-1].hex()) == (start + 10, made["hashes"][-1])
    for node in nodes:
        assert [node.block_at(start + 1 + i).hash_hex for i in range(10)] == made["hashes"], node.name

    # zcoin block by height and by hash describe the same block, on any node.
    by_height = zcoin_json(cluster, "block", str(height), "--node", bravo.api)
    by_hash = zcoin_json(cluster, "block", made["hashes"][-1], "--node", charlie.api)
    assert by_height == by_hash
    assert (by_height["hash"], by_height["height"], by_height["prev"]) == (made["hashes"][-1], height,
                                                                        made["hashes"][-2])
    assert by_height["confirmations"] == 1 and by_height["active"] and by_height["tx_count"] == 1
    assert by_height["bits"] == f"{REGTEST.genesis_bits:08x}" and by_height["fees"] == 0
    miner_key = load_wallet(alpha.data_dir / "miner-wallet.json").pubkey
    assert by_height["payout"] == encode_address(miner_key, REGTEST)
    assert zcoin_json(cluster, "block", str(start + 1), "--node", alpha.api)["confirmations"] == 10

    # faucet: the payment is in every mempool, then confirmed with 1, then 2 confirmations.
    bob = new_wallet(cluster, "bob")
    paid = zcoin_json(cluster, "faucet", "--node", bravo.api, "--to", bob.address, "--amount", "5000")
    assert (paid["amount"], paid["to"], paid["from_account"]) == (5000, bob.address, 0)
    assert bytes.fromhex(paid["txid"])[::-1] in sync_mempools(nodes)
    pending = zcoin_json(cluster, "tx", paid["txid"], "--node", charlie.api)
    assert pending["state"] == "mempool" and not pending["coinbase"]
    assert {"index": 0, "amount": 5000, "address": bob.address} in pending["outputs"]
    dev0 = encode_address(REGTEST.dev_pubkey(0), REGTEST)
    assert [(i["address"], i["amount"]) for i in pending["inputs"]] == [(dev0, REGTEST.dev_account_amount)]
    fee = REGTEST.dev_account_amount - sum(o["amount"] for o in pending["outputs"])
    assert pending["fee"] == fee == paid["fee"] > 0 and pending["fee_rate"] == round(fee / pending["size"], 3)
    pool = zcoin_json(cluster, "mempool", "--node", alpha.api, "--txids")
    assert (pool["count"], pool["fees"], pool["txids"]) == (1, fee, [paid["txid"]])
    assert sum(b["count"] for b in pool["histogram"]) == 1 and pool["bytes"] == pending["size"]

    mined = generate(cluster, charlie, 1)
    sync_blocks(nodes, min_height=height + 1)
    confirmed = zcoin_json(cluster, "tx", paid["txid"], "--node", alpha.api)
    assert (confirmed["state"], confirmed["height"], confirmed["confirmations"], confirmed["block"]) == (
        "confirmed", height + 1, 1, mined["hashes"][0])
    assert confirmed["fee"] == fee and confirmed["outputs"] == pending["outputs"]
    block = zcoin_json(cluster, "block", mined["hashes"][0], "--node", bravo.api)
    assert paid["txid"] in block["txids"] and block["fees"] == fee
    assert block["coinbase_outputs"][0]["amount"] == REGTEST.subsidy(height + 1) + fee
    assert zcoin_json(cluster, "mempool", "--node", bravo.api)["count"] == 0
    generate(cluster, alpha, 1)
    sync_blocks(nodes, min_height=height + 2)
    text = cli_in_process("tx", paid["txid"], "--node", bravo.api)
    assert text.returncode == 0 and f"confirmed at height {height + 1} with 2 confirmations" in text.stdout

    # generate --to: the coinbase pays that address; its owner's history and `zcoin tx` show the coinbase.
    dave = new_wallet(cluster, "dave")
    to_dave = generate(cluster, bravo, 1, "--to", dave.address)
    sync_blocks(nodes, min_height=height + 3)
    block = zcoin_json(cluster, "block", to_dave["hashes"][0], "--node", alpha.api)
    assert block["payout"] == dave.address
    (item,) = history(cluster, alpha, dave)  # (its balance is 0 until the coinbase matures)
    assert (item["txid"], item["height"], item["net"]) == (block["txids"][0], height + 3,
                                                           REGTEST.subsidy(height + 3))
    coinbase = zcoin_json(cluster, "tx", block["txids"][0], "--node", charlie.api)
    assert coinbase["coinbase"] and coinbase["inputs"] == [] and coinbase["fee"] is None
    assert coinbase["outputs"] == [{"index": 0, "amount": REGTEST.subsidy(height + 3), "address": dave.address}]


def test_wallet_history_shows_payments_both_ways_and_follows_a_reorg(cluster):
    nodes = start_regtest_cluster(cluster, ("alpha", "bravo", "charlie", "delta"))
    alpha, bravo, charlie, delta = nodes
    sync_blocks(nodes)
    bob, carol = new_wallet(cluster, "bob"), new_wallet(cluster, "carol")

    # In: the faucet pays bob.  Out: bob pays carol.  Pending first, confirmed after a block.
    faucet = zcoin_json(cluster, "faucet", "--node", alpha.api, "--to", bob.address, "--amount", "50000")
    h1 = generate(cluster, alpha, 1)["height"]
    sync_blocks(nodes, min_height=h1)
    sent = zcoin_json(cluster, "send", "--node", bravo.api, "--wallet", bob.path, "--to", carol.address,
                      "--amount", "20000")
    sync_mempools(nodes)
    assert [(i["txid"], i["height"], i["net"]) for i in assert_history_matches_the_node(cluster, charlie, bob)] == [
        (faucet["txid"], h1, 50000), (sent["txid"], None, -(20000 + sent["fee"]))]
    assert [(i["txid"], i["height"], i["net"]) for i in history(cluster, alpha, carol)] == [
        (sent["txid"], None, 20000)]
    h2 = generate(cluster, bravo, 1)["height"]
    sync_blocks(nodes, min_height=h2)
    for node in nodes:
        assert [(i["txid"], i["height"]) for i in assert_history_matches_the_node(cluster, node, bob)] == [
            (faucet["txid"], h1), (sent["txid"], h2)]

    # A partition into two pairs (a node left without any peer refuses payments as "isolated"):
    # alpha + delta, the losing side, and bravo + charlie, the longer, winning side.
    losing_side, winning_side = [alpha, delta], [bravo, charlie]
    for here in losing_side:
        for there in winning_side:
            disconnect(here, there)
    # On alpha: the faucet pays bob from development account 0 (its change coin), and carol pays bob.
    lost = zcoin_json(cluster, "faucet", "--node", alpha.api, "--to", bob.address, "--amount", "30000")
    back = zcoin_json(cluster, "send", "--node", alpha.api, "--wallet", carol.path, "--to", bob.address,
                      "--amount", "5000")
    losing = generate(cluster, alpha, 1)
    sync_blocks(losing_side, min_height=h2 + 1)
    # On bravo: the faucet pays carol from the same coin of account 0, and the side grows longer.
    won = zcoin_json(cluster, "faucet", "--node", bravo.api, "--to", carol.address, "--amount", "40000")
    generate(cluster, bravo, 2)
    sync_blocks(winning_side, min_height=h2 + 2)
    spends = [{(i["prev_txid"], i["prev_index"]) for i in zcoin_json(cluster, "tx", txid, "--node", node.api)["inputs"]}
              for txid, node in ((lost["txid"], alpha), (won["txid"], bravo))]
    assert spends[0] & spends[1], "the two faucet payments should spend the same coin"
    for node in losing_side:
        on_losing_side = history(cluster, node, bob)[-2:]  # one block: ordered by txid there, not block position
        assert {(i["txid"], i["height"]) for i in on_losing_side} == {(lost["txid"], h2 + 1),
                                                                      (back["txid"], h2 + 1)}, node.name

    for here in losing_side:
        for there in winning_side:
            reconnect(here, there)
    _, tip = sync_blocks(nodes, min_height=h2 + 2)
    assert bravo.block_at(h2 + 2).hash == tip
    for node in losing_side:
        side = zcoin_json(cluster, "block", losing["hashes"][0], "--node", node.api)
        assert not side["active"] and side["confirmations"] == 0, node.name
    lost_id, back_id = (bytes.fromhex(t)[::-1] for t in (lost["txid"], back["txid"]))
    # The payment whose coin the winning chain spent is gone (the losing side, which held it, says by what);
    # carol's payment to bob is pending again.
    wait_until(lambda: all(n.tx_state(back_id)[0] == "mempool" for n in nodes), 20,
               "carol's payment back in the losing side's mempools and relayed")
    for node in nodes:
        gone = node.rpc("get_tx", txid=lost_id)
        if node in losing_side:
            assert (gone["state"], gone["conflict"]) == ("conflicted", won["txid"]), (node.name, gone.fields)
        else:
            assert gone["state"] == "unknown", (node.name, gone.fields)
        bob_items = assert_history_matches_the_node(cluster, node, bob)
        assert lost["txid"] not in [i["txid"] for i in bob_items], node.name
        assert [i["txid"] for i in bob_items][:2] == [faucet["txid"], sent["txid"]]
        assert [(i["txid"], i["height"], i["net"]) for i in bob_items[2:]] == [(back["txid"], None, 5000)], node.name
        carol_items = assert_history_matches_the_node(cluster, node, carol)
        assert (won["txid"], h2 + 1, 40000) in [(i["txid"], i["height"], i["net"]) for i in carol_items]

    # Mined again on the winning chain, carol's payment is confirmed in everyone's history.
    h_final = generate(cluster, alpha, 1)["height"]
    sync_blocks(nodes, min_height=h_final)
    for node in nodes:
        assert [(i["txid"], i["height"]) for i in assert_history_matches_the_node(cluster, node, bob)] == [
            (faucet["txid"], h1), (sent["txid"], h2), (back["txid"], h_final)]
        assert [i["txid"] for i in assert_history_matches_the_node(cluster, node, carol)] == [
            sent["txid"], won["txid"], back["txid"]]


def test_unknown_things_bad_input_and_refused_requests_fail_in_one_line(cluster):
    regtest_tracker, test_tracker = cluster.add_tracker(), cluster.add_tracker("test-tracker")
    alpha, idle, testnet = [  # started at once, then waited for
        cluster.add_miner("alpha", trackers=[regtest_tracker], network_name="regtest", extra=ON_DEMAND, wait=False),
        cluster.add_miner("idle", trackers=[regtest_tracker], network_name="regtest", extra=("--mining", "off"),
                          wait=False),
        cluster.add_miner("testnet", trackers=[test_tracker], network_name="test", mine=False, wait=False)]
    for node in (alpha, idle, testnet):
        node.wait_started()
    wait_connected([alpha, idle])  # (a node answers for coins only once synced with its peers)

    bob = new_wallet(cluster, "bob")
    local_address = encode_address(REGTEST.dev_pubkey(1), LOCAL)
    too_much = str(REGTEST.dev_account_amount + 1)
    cases = [  # (exit status, what stderr says, the command): each a child process, independent of the others
        # Unknown: exit 1.  Malformed: exit 2.
        (1, "not found", ("block", "999999", "--node", alpha.api)),
        (1, "", ("block", "ab" * 32, "--node", alpha.api)),
        (1, "", ("tx", "cd" * 32, "--node", alpha.api, "--json")),
        *[(2, "", (*args, "--node", alpha.api)) for args in (
            ("block", "xyz"), ("block", "ab" * 31), ("block", "-1"), ("tx", "12"), ("generate", "0"),
            ("generate", "100000"))],
        (2, "another network", ("generate", "1", "--node", alpha.api, "--to", local_address)),
        # Refused: a node that does not mine, a network without development accounts, more than the faucet holds.
        (1, "not-mining", ("generate", "1", "--node", idle.api)),
        (1, "network test has no development accounts",
         ("faucet", "--node", testnet.api, "--to", bob.address, "--amount", "1")),
        (1, "no development account of regtest can pay",
         ("faucet", "--node", alpha.api, "--to", bob.address, "--amount", too_much)),
    ]
    with ThreadPoolExecutor(max_workers=4) as pool:  # interpreters start in parallel on both cores
        results = list(pool.map(lambda case: zcoin_fails(cluster, case[0], *case[2]), cases))
    for (_, says, args), result in zip(cases, results, strict=True):
        assert says in result.stderr, (args, result.stderr)
        if "--json" in args:
            assert json.loads(result.stdout) == {"txid": "cd" * 32, "state": "unknown"}

    # Ctrl-C stops a long generate cleanly and says how many blocks were made.
    start = alpha.height
    log = cluster.tmp_path / "generate.stderr"
    with log.open("w") as stderr:
        proc = subprocess.Popen([*CLI, "generate", "10000", "--node", alpha.api], stdout=subprocess.DEVNULL,
                                stderr=stderr, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: "block 2/10000 " in log.read_text(), 30, "two blocks generated")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    finally:
        proc.kill()
        proc.wait()
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith("interrupted: ") and last.endswith("(the node may still finish the block it was mining)")
    made = int(last.split()[1])
    assert made >= 2 and alpha.height >= start + made


def test_regtest_cluster_files_describe_three_on_demand_regtest_miners():
    tracker = load_tracker_settings(str(REPO / "configs/regtest/tracker.toml"))
    assert (tracker["bind"], tracker["events"]) == ("tcp://127.0.0.1:19000", "tcp://127.0.0.1:19001")
    procfile = (REPO / "Procfile.regtest").read_text()
    assert "zcoin tracker --config configs/regtest/tracker.toml" in procfile
    for n in (1, 2, 3):
        miner = load_section(REPO / f"configs/regtest/miner{n}.toml", "miner", MINER_CONFIG_SPEC)
        assert (miner["network"], str(parse_mining_mode(miner["mining"])), miner["workers"]) == (
            "regtest", "on-demand", 1)
        assert (miner["api"], miner["gossip"]) == (f"tcp://127.0.0.1:1910{n}", f"tcp://127.0.0.1:1920{n}")
        assert miner["trackers"] == [tracker["bind"]] and miner["data_dir"] == f"run/regtest/miner{n}"
        assert f"zcoin miner --config configs/regtest/miner{n}.toml" in procfile
