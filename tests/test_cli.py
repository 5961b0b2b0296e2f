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
            ["wallet", "balance"], ["send"], ["bench"]]


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
