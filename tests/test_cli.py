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
