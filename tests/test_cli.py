"""The ``zcoin`` command line: help everywhere, exit codes, one-line errors, wallets, configs, benchmarks.

Commands run in-process through click's runner where no daemon is involved, and
as a real subprocess where the exact stderr a user sees matters.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from zcoin.cli import cli

COMMANDS = [["tracker"], ["miner"], ["status"], ["peers"], ["wallet"], ["wallet", "new"], ["wallet", "address"],
            ["wallet", "balance"], ["send"], ["bench"], ["generate"], ["faucet"], ["block"], ["tx"], ["mempool"],
            ["wallet", "history"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help_with_exit_status_0(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "Example:" in result.output and "zcoin " in result.output.split("Example:")[1]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zcoin.cli", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def test_bad_config_is_one_line_naming_the_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[miner]\nname = "m"\nworkerz = 3\n')
    result = run("miner", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 1
    assert "miner.workerz" in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    config.write_text('[miner]\nworkers = "two"\n')
    result = run("miner", "--config", str(config), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 1 and "miner.workers" in result.stderr and "Traceback" not in result.stderr


def test_a_miner_refuses_a_wallet_of_another_network(tmp_path):
    wallet = tmp_path / "local.json"
    assert run("wallet", "new", "--wallet", str(wallet), "--network", "local").returncode == 0
    result = run("miner", "--network", "regtest", "--wallet", str(wallet), "--data-dir", str(tmp_path / "d"),
                 "--api", "tcp://127.0.0.1:*", "--gossip", "tcp://127.0.0.1:*")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "network 'local'" in result.stderr and "'regtest'" in result.stderr and result.stderr.count("\n") == 1


def test_unknown_network_is_a_usage_error(tmp_path):
    result = run("wallet", "new", "--wallet", str(tmp_path / "w.json"), "--network", "mainnet")
    assert result.returncode == 2 and "unknown network" in result.stderr


def test_wallet_file_is_private_and_never_overwritten_without_force(tmp_path):
    path = tmp_path / "w.json"
    runner = CliRunner()
    first = runner.invoke(cli, ["wallet", "new", "--wallet", str(path)])
    assert first.exit_code == 0 and (path.stat().st_mode & 0o777) == 0o600
    key = json.loads(path.read_text())["secret_key"]
    again = runner.invoke(cli, ["wallet", "new", "--wallet", str(path)])
    assert again.exit_code == 1 and json.loads(path.read_text())["secret_key"] == key
    forced = runner.invoke(cli, ["wallet", "new", "--wallet", str(path), "--force"])
    assert forced.exit_code == 0 and json.loads(path.read_text())["secret_key"] != key
    assert (path.stat().st_mode & 0o777) == 0o600


def test_dev_account_address_is_the_last_word_and_round_trips(tmp_path):
    from zcoin.consensus.params import LOCAL
    from zcoin.wallet import decode_address

    path = tmp_path / "dev3.json"
    runner = CliRunner()
    assert runner.invoke(cli, ["wallet", "new", "--wallet", str(path), "--dev", "3"]).exit_code == 0
    address = runner.invoke(cli, ["wallet", "address", "--wallet", str(path)]).output.split()[-1]
    assert decode_address(address, LOCAL) == LOCAL.dev_pubkey(3)
    out_of_range = runner.invoke(cli, ["wallet", "new", "--wallet", str(tmp_path / "x.json"), "--dev", "10"])
    assert out_of_range.exit_code == 1 and "development accounts" in out_of_range.output


def test_every_one_character_change_of_an_address_is_refused():
    from zcoin.consensus.params import LOCAL
    from zcoin.wallet import WalletError, decode_address, encode_address

    address = encode_address(LOCAL.dev_pubkey(0), LOCAL)
    for position in range(len(address)):
        for replacement in "qpzry9x8gf2tvdw0s3jn54khce6mua7l":
            if replacement == address[position]:
                continue
            changed = address[:position] + replacement + address[position + 1:]
            with pytest.raises(WalletError):
                decode_address(changed, LOCAL)


def test_send_to_a_mistyped_address_is_a_usage_error_before_the_node_is_asked(tmp_path):
    path = tmp_path / "dev0.json"
    runner = CliRunner()
    assert runner.invoke(cli, ["wallet", "new", "--wallet", str(path), "--dev", "0"]).exit_code == 0
    address = runner.invoke(cli, ["wallet", "address", "--wallet", str(path)]).output.split()[-1]
    mistyped = address[:-1] + ("q" if address[-1] != "q" else "p")
    result = runner.invoke(cli, ["send", "--node", "tcp://127.0.0.1:1", "--wallet", str(path), "--to", mistyped,
                                 "--amount", "1000"])
    assert result.exit_code == 2 and "--to" in result.output and "bad address" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "dev0.json.lock").exists()


@pytest.mark.parametrize("what", ["verify", "header"])
def test_bench_prints_a_figure_next_to_its_baseline(what):
    result = CliRunner().invoke(cli, ["bench", what, "--seconds", "0.2", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["ratio"] > 0
    assert any(key.startswith("baseline") and value > 0 for key, value in figures.items())


def test_a_miner_whose_api_port_is_taken_says_so_in_one_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("miner", "--name", "m", "--no-mine", "--data-dir", str(tmp_path / "m"),
                     "--tracker", "tcp://127.0.0.1:1", "--api", f"tcp://127.0.0.1:{port}")
    assert result.returncode == 1, result.stderr
    assert "cannot open sockets" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: cannot open sockets")


# --- bad input: one line, never a traceback --------------------------------------------


def _dev_wallet(tmp_path, index: int = 0) -> str:
    path = tmp_path / f"dev{index}.json"
    assert CliRunner().invoke(cli, ["wallet", "new", "--wallet", str(path), "--dev", str(index)]).exit_code == 0
    return str(path)


@pytest.mark.parametrize("command", [["status"], ["wallet", "balance"], ["send"]], ids=" ".join)
@pytest.mark.parametrize("endpoint", ["nonsense", "tcp://127.0.0.1"])
def test_a_malformed_node_endpoint_is_a_usage_error(tmp_path, command, endpoint):
    from zcoin.consensus.params import LOCAL
    from zcoin.wallet import encode_address

    wallet = ["--wallet", _dev_wallet(tmp_path)]
    more = {"status": [], "balance": wallet,
            "send": [*wallet, "--to", encode_address(LOCAL.dev_pubkey(1), LOCAL), "--amount", "1"]}[command[-1]]
    result = run(*command, "--node", endpoint, *more, "--timeout", "1")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        f"Error: Invalid value for --node: not a node endpoint: {endpoint!r} (Invalid argument)"


def test_loadtest_with_a_malformed_node_endpoint_is_a_usage_error():
    from pathlib import Path

    loadtest = Path(__file__).resolve().parents[1] / "bin" / "loadtest"
    result = subprocess.run([sys.executable, str(loadtest), "--node", "tcp://127.0.0.1", "--count", "1"],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: Invalid value for --node: not a node endpoint")


@pytest.mark.parametrize("mining", [[], ["--no-mine"]], ids=["mining", "no-mine"])
def test_a_miner_whose_data_dir_cannot_be_made_says_so_in_one_line(tmp_path, mining):
    (tmp_path / "a-file").write_text("")  # in the way of the data dir, even for root
    data_dir = tmp_path / "a-file" / "m"
    result = run("miner", "--name", "m", *mining, "--data-dir", str(data_dir), "--tracker", "tcp://127.0.0.1:1")
    assert result.returncode == 1, result.stderr
    assert result.stderr == f"Error: cannot make the data directory {data_dir}: Not a directory\n"


def test_a_miner_whose_store_cannot_be_opened_says_so_in_one_line(tmp_path):
    (tmp_path / "m" / "chain.sqlite").mkdir(parents=True)  # a directory where the store file goes
    result = run("miner", "--name", "m", "--no-mine", "--data-dir", str(tmp_path / "m"),
                 "--tracker", "tcp://127.0.0.1:1", "--api", "tcp://127.0.0.1:*", "--gossip", "tcp://127.0.0.1:*")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        f"Error: {tmp_path / 'm' / 'chain.sqlite'}: cannot open the store (unable to open database file)"


@pytest.mark.parametrize("left", ["by a crash", "closed cleanly"])
def test_a_miner_on_a_store_with_garbled_pages_says_it_is_damaged_and_exits_1(tmp_path, left):
    from support.chain import Builder, add_all, garble_middle, open_chain, write_crashed_store

    builder = Builder()
    builder.mine_empty(40)
    data_dir = tmp_path / "m"
    data_dir.mkdir()
    store = data_dir / "chain.sqlite"
    if left == "by a crash":  # checked page by page at open
        write_crashed_store(store, builder.blocks)
        damaged = f"Error: {store}: the store is damaged (quick_check: "
    else:  # not checked at open: the first read of a garbled page finds the damage
        chain_store, chain = open_chain(store)
        add_all(chain, builder.blocks)
        chain_store.close()
        damaged = f"Error: m: the chain store in {data_dir} is damaged (database disk image is malformed"
    garble_middle(store)
    result = run("miner", "--name", "m", "--network", "regtest", "--no-mine", "--data-dir", str(data_dir),
                 "--tracker", "tcp://127.0.0.1:1", "--api", "tcp://127.0.0.1:*", "--gossip", "tcp://127.0.0.1:*")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(damaged) and last.endswith("); restore it or delete it to resync")


def test_a_wallet_of_an_unknown_network_names_the_file_not_an_option(tmp_path):
    path = tmp_path / "w.json"
    assert CliRunner().invoke(cli, ["wallet", "new", "--wallet", str(path)]).exit_code == 0
    document = json.loads(path.read_text())
    path.write_text(json.dumps({**document, "network": "mainnet"}))
    result = run("wallet", "address", "--wallet", str(path))
    assert result.returncode == 1
    assert result.stderr == (f"Error: {path}: wallet for network 'mainnet', which this zcoin does not know "
                             "(known: local, test, regtest)\n")


REFUSED_JOIN_DEADLINE_S = 2.0


def test_a_miner_whose_name_the_tracker_refuses_says_why_and_exits_1(procs, tmp_path):
    import re

    from support.waiting import wait_until

    _, tracker = procs.start_tracker()
    first, first_api = procs.start_miner("m1", [tracker], mine=False)
    first.wait_for_log(r"joined tracker")
    config = tmp_path / "short-deadline.toml"
    config.write_text(f"[miner]\njoin_deadline_s = {REFUSED_JOIN_DEADLINE_S}\n")
    second = procs.start("m1-again", "miner", "--config", str(config), "--name", "m1", "--network", "local",
                         "--no-mine", "--data-dir", str(tmp_path / "m1-again"), "--tracker", tracker,
                         "--api", "tcp://127.0.0.1:*", "--gossip", "tcp://127.0.0.1:*")
    wait_until(lambda: not second.running(), REFUSED_JOIN_DEADLINE_S + 15, "the second m1 to exit")
    log = second.log()
    assert second.proc.returncode == 1, log[-3000:]
    assert "Traceback" not in log
    assert re.search(r"^Error: the tracker refused the name m1: duplicate-id: node id m1 is held by a live member "
                     rf"at gossip=\S+ api={re.escape(first_api)}$", log.strip().splitlines()[-1])
    assert not re.search(r"\bsynced\b", log)  # it never went on alone
    assert first.running()
    peers = procs.cli("peers", "--tracker", tracker, "--json")
    assert peers.returncode == 0, peers.stderr
    assert [(m["node"], m["api"]) for m in json.loads(peers.stdout)["members"]] == [("m1", first_api)]


# --- zcoin send: acknowledged, refused, unknown --------------------------------------------


def _wait_for_cluster(apis: list[str]) -> None:
    from support.waiting import wait_until
    from zcoin.client import NodeClient

    def all_synced_with_every_peer() -> bool:
        statuses = []
        for api in apis:
            with NodeClient(api, timeout_s=5.0) as client:
                statuses.append(client.request("status"))
        return all(s["synced"] and s["peers"] == len(apis) - 1 for s in statuses)

    wait_until(all_synced_with_every_peer, 30, "every node synced with every other")


def test_a_send_the_node_does_not_answer_exits_3_and_the_next_send_re_pushes_it_and_spends_only_its_change(
        procs, tmp_path, monkeypatch):
    import os
    import signal

    from zcoin.client import NodeClient
    from zcoin.consensus.params import LOCAL
    from zcoin.consensus.primitives import OutPoint
    from zcoin.wallet import encode_address, load_wallet

    _, tracker = procs.start_tracker()
    (frozen, frozen_api), (_, other_api), (_, third_api) = [
        procs.start_miner(name, [tracker], mine=False) for name in ("frozen", "other", "third")]
    _wait_for_cluster([frozen_api, other_api, third_api])
    wallet = _dev_wallet(tmp_path, 0)
    bob = encode_address(LOCAL.dev_pubkey(1), LOCAL)
    send = ["send", "--wallet", wallet, "--to", bob, "--amount", "5000", "--timeout", "2"]

    pushes = NodeClient.send

    def freeze_before_the_push(client, msg_type, **fields):  # the node stops between the coin lookup and the push
        if msg_type == "push_tx" and client.endpoint == frozen_api:
            os.kill(frozen.pid, signal.SIGSTOP)
        pushes(client, msg_type, **fields)

    monkeypatch.setattr(NodeClient, "send", freeze_before_the_push)
    try:
        unknown = CliRunner().invoke(cli, [*send, "--node", frozen_api])
        assert unknown.exit_code == 3, unknown.output
        (first,) = load_wallet(wallet).payments
        assert first.txid in unknown.stdout and first.inputs == (OutPoint(LOCAL.genesis.txs[0].txid, 0),)
        assert unknown.stderr.strip().splitlines()[-1] == (
            f"Error: no answer from {frozen_api} within 2s; outcome unknown: the payment stays pending and will be "
            "re-pushed, never rebuilt from the same coins")
        listed = CliRunner().invoke(cli, ["wallet", "history", "--wallet", wallet, "--node", other_api, "--json"])
        assert listed.exit_code == 0, listed.output
        assert [(e["txid"], e["state"], e["in_mempool"]) for e in json.loads(listed.stdout)
                if e["height"] is None] == [(first.txid, "pending", False)]
        shown = CliRunner().invoke(cli, ["wallet", "balance", "--wallet", wallet, "--node", other_api, "--json"])
        assert shown.exit_code == 0, shown.output
        balance = json.loads(shown.stdout)  # the coin the unanswered payment spends is held, not spendable
        assert (balance["confirmed"], balance["held"], balance["spendable"]) == (LOCAL.dev_account_amount,) * 2 + (0,)

        sent = CliRunner().invoke(cli, [*send, "--node", other_api, "--json"])
        assert sent.exit_code == 0, sent.output
        assert f"re-pushed pending payment {first.txid}" in sent.stderr
        second = load_wallet(wallet).payments[1]
        assert json.loads(sent.stdout)["txid"] == second.txid
        assert second.inputs == (OutPoint(first.tx.txid, 1),), "it spends the first payment's change, not its coin"
        with NodeClient(other_api) as client:
            assert {first.tx.txid, second.tx.txid} <= set(client.request("get_mempool")["txids"])
    finally:
        os.kill(frozen.pid, signal.SIGCONT)


def test_a_refused_send_exits_1_with_the_reason_and_the_wallet_forgets_it(procs, tmp_path, monkeypatch):
    from support.payments import dev_key, dev_outpoint, pay
    from zcoin.client import NodeClient
    from zcoin.consensus.params import LOCAL
    from zcoin.wallet import encode_address, load_wallet

    _, tracker = procs.start_tracker()
    _, api = procs.start_miner("m1", [tracker], mine=False)
    _wait_for_cluster([api])
    wallet = _dev_wallet(tmp_path, 0)
    rival = pay([(dev_outpoint(LOCAL, 0), dev_key(0))], [LOCAL.dev_account_amount - 1_000], LOCAL.dev_pubkey(2))
    pushes = NodeClient.send

    def spend_the_coin_first(client, msg_type, **fields):  # a copy of the key elsewhere spends the same coin
        if msg_type == "push_tx":
            with NodeClient(api) as elsewhere:
                pushes(elsewhere, "push_tx", tx=rival.raw)
                assert elsewhere.recv()["accepted"]
        pushes(client, msg_type, **fields)

    monkeypatch.setattr(NodeClient, "send", spend_the_coin_first)
    refused = CliRunner().invoke(cli, ["send", "--node", api, "--wallet", wallet, "--amount", "5000",
                                       "--to", encode_address(LOCAL.dev_pubkey(1), LOCAL)])
    assert refused.exit_code == 1, refused.output
    assert refused.stderr.startswith("Error: transaction rejected: ") and refused.stderr.count("\n") == 1
    assert refused.stdout == "" and load_wallet(wallet).payments == ()


def test_a_pending_payment_whose_coin_a_confirmed_transaction_spent_is_shown_and_marked_conflicted_by_it(
        procs, tmp_path):
    import time

    from support.payments import dev_key, dev_outpoint, pay
    from zcoin.client import NodeClient
    from zcoin.consensus.params import REGTEST
    from zcoin.wallet import Payment, build_payment, encode_address, load_wallet, rewrite_wallet

    _, tracker = procs.start_tracker()
    _, api = procs.start_miner("m1", [tracker], "--mining", "on-demand", network="regtest")
    _wait_for_cluster([api])
    path = tmp_path / "dev0.json"
    assert CliRunner().invoke(cli, ["wallet", "new", "--wallet", str(path), "--network", "regtest",
                                    "--dev", "0"]).exit_code == 0
    premine = [(dev_outpoint(REGTEST, 0), REGTEST.dev_account_amount)]
    unsent = build_payment(load_wallet(path), premine, REGTEST.dev_pubkey(1), 5_000)
    rewrite_wallet(load_wallet(path).with_payment(Payment(unsent, int(time.time()), api, premine[0][1])), path)
    rival = pay([(dev_outpoint(REGTEST, 0), dev_key(0))], [REGTEST.dev_account_amount - 1_000], REGTEST.dev_pubkey(2))
    with NodeClient(api) as client:
        assert client.request("push_tx", tx=rival.raw)["accepted"]
    assert CliRunner().invoke(cli, ["generate", "1", "--node", api]).exit_code == 0

    listed = CliRunner().invoke(cli, ["wallet", "history", "--wallet", str(path), "--node", api])
    assert listed.exit_code == 0, listed.output
    assert f"{unsent.txid_hex}  conflicted by {rival.txid_hex}" in listed.stdout
    assert load_wallet(path).payments[0].conflict is None, "history changes nothing"
    sent = CliRunner().invoke(cli, ["send", "--wallet", str(path), "--node", api, "--amount", "5000",
                                    "--to", encode_address(REGTEST.dev_pubkey(1), REGTEST)])
    assert sent.exit_code == 1 and sent.stderr.strip().splitlines()[-1].startswith("Error: insufficient funds")
    assert f"payment {unsent.txid_hex} is conflicted by {rival.txid_hex}" in sent.stderr
    assert load_wallet(path).payments[0].conflict == rival.txid_hex


def test_every_refusal_that_means_not_now_has_its_own_line():
    from zcoin.cli import UNSERVED_LINES
    from zcoin.payments import UNSERVED

    assert set(UNSERVED_LINES) == UNSERVED


def test_a_node_with_no_peer_while_members_exist_is_one_clear_line_for_balance_and_send(procs, tmp_path):
    from support.waiting import wait_until
    from zcoin.client import NodeClient
    from zcoin.consensus.params import LOCAL
    from zcoin.wallet import encode_address, load_wallet

    _, tracker = procs.start_tracker()
    (_, lonely), (_, other) = [procs.start_miner(name, [tracker], mine=False) for name in ("lonely", "other")]
    _wait_for_cluster([lonely, other])
    for api, peer in ((lonely, "other"), (other, "lonely")):
        with NodeClient(api) as client:
            assert client.request("admin", action="disconnect", peer=peer).type == "ok"
    with NodeClient(lonely) as client:
        wait_until(lambda: client.request("status")["peers"] == 0, 15, "lonely to have no peer")
    wallet = _dev_wallet(tmp_path, 0)
    balance = run("wallet", "balance", "--wallet", wallet, "--node", lonely)
    assert (balance.returncode, balance.stderr) == (1, "Error: the node has no peers (isolated)\n")
    sent = run("send", "--wallet", wallet, "--node", lonely, "--to", encode_address(LOCAL.dev_pubkey(1), LOCAL),
               "--amount", "5000")
    assert (sent.returncode, sent.stderr, sent.stdout) == (1, "Error: the node has no peers (isolated)\n", "")
    assert load_wallet(wallet).payments == ()


def test_a_payment_a_block_conflicts_with_is_conflicted_by_its_rival_in_tx_history_and_the_wallet(procs, tmp_path):
    from support.cluster import make_block, submit
    from support.payments import dev_key, dev_outpoint, pay
    from zcoin.client import NodeClient
    from zcoin.consensus.params import REGTEST
    from zcoin.wallet import encode_address, load_wallet

    _, tracker = procs.start_tracker()
    _, api = procs.start_miner("m1", [tracker], network="regtest", mine=False)
    _wait_for_cluster([api])
    path = str(tmp_path / "dev0.json")
    assert CliRunner().invoke(cli, ["wallet", "new", "--wallet", path, "--network", "regtest",
                                    "--dev", "0"]).exit_code == 0
    send = ["send", "--wallet", path, "--node", api, "--amount", "5000",
            "--to", encode_address(REGTEST.dev_pubkey(1), REGTEST)]
    assert CliRunner().invoke(cli, send).exit_code == 0
    (payment,) = load_wallet(path).payments
    rival = pay([(dev_outpoint(REGTEST, 0), dev_key(0))], [REGTEST.dev_account_amount - 1_000], REGTEST.dev_pubkey(2))
    with NodeClient(api) as client:
        submit(client, make_block(client, REGTEST, [rival], fees=1_000))

    shown = run("tx", payment.txid, "--node", api)
    assert shown.returncode == 0, shown.stderr
    assert f"conflicted by {rival.txid_hex}" in shown.stdout
    listed = CliRunner().invoke(cli, ["wallet", "history", "--wallet", path, "--node", api, "--json"])
    assert [(e["txid"], e["state"], e["conflict"]) for e in json.loads(listed.stdout)][-1] == (
        payment.txid, "conflicted", rival.txid_hex)
    again = CliRunner().invoke(cli, send)
    assert again.exit_code == 1 and f"payment {payment.txid} is conflicted by {rival.txid_hex}" in again.stderr
    assert load_wallet(path).payments[0].conflict == rival.txid_hex


def test_log_json_writes_one_flat_object_per_line_with_the_fields_and_the_exception(capsys):
    from loguru import logger

    from zcoin.log import _json_line

    handler = logger.add(_json_line, level="INFO", format="{message}")  # what setup_logging(json=True) adds
    try:
        log = logger.bind(component="miner")
        log.debug("not at INFO")
        log.info("block connected", height=7, block="ab")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("handler failed")
    finally:
        logger.remove(handler)  # only ours: the process's other handlers stay as they were
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [line["message"] for line in lines] == ["block connected", "handler failed"]
    first = lines[0]
    assert (first["level"], first["component"], first["height"], first["block"]) == ("INFO", "miner", 7, "ab")
    assert isinstance(first["time"], float) and "exception" not in first
    assert "ValueError: boom" in lines[1]["exception"]
