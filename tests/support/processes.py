"""Real processes for cluster tests, started through the ``zcoin`` CLI like a user would.

:class:`ZcoinProcess` runs one command (``python -m zcoin.cli ...``) with its
log in a file, can wait for a log line, stop it with SIGTERM, kill it with
SIGKILL and restart it with the same arguments.  :class:`ProcessGroup` cleans
up every process it started, even when a test fails, and prints the logs of
the processes of a failed test so the cause can be read.

:func:`cli_in_process` runs a short client command (``zcoin tx``, ``zcoin
generate``, ...) through the same click entry point inside the test process:
the same arguments, output and exit status as the child process gives, without
the half second a fresh interpreter spends importing.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import traceback
from pathlib import Path

from .waiting import wait_until

CLI = [sys.executable, "-m", "zcoin.cli"]


def free_port() -> int:
    """A loopback TCP port for a daemon to bind later: free a moment ago, and below the ephemeral range, so that
    no ``bind *`` or outgoing connection of any process is given it in the meantime."""
    try:
        ephemeral_from = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_from = 32768
    for _ in range(100):
        port = random.SystemRandom().randrange(20000, max(ephemeral_from, 20001))  # not a seeded generator
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free loopback port between 20000 and {ephemeral_from}")


def cli_in_process(*args: str) -> subprocess.CompletedProcess:
    """``zcoin ARGS`` run to completion by click in this process; the result reads as a child's would.

    An exception the command does not handle ends up on stderr as a traceback with exit
    status 1, as the interpreter of a child process would print it.
    """
    from click.testing import CliRunner
    from loguru import logger

    from zcoin.cli import cli

    result = CliRunner().invoke(cli, list(args))
    logger.remove()  # the command pointed the log at the runner's stderr, which is gone now
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["zcoin", *args], result.exit_code, result.stdout, stderr)


class ZcoinProcess:
    """One zcoin daemon or command running as a child process."""

    def __init__(self, name: str, args: list[str], log_dir: Path) -> None:
        self.name = name
        self.args = list(args)
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> ZcoinProcess:
        self.starts += 1
        log = self.log_path.open("a")
        log.write(f"--- start {self.starts}: zcoin {' '.join(self.args)}\n")
        log.flush()
        self.proc = subprocess.Popen([*CLI, "--log-level", "DEBUG", *self.args], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 20.0) -> re.Match:
        """The first match of ``pattern`` in the log of the current run."""
        regex = re.compile(pattern)

        def found():
            if not self.running():
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            text = self.log().rsplit(f"--- start {self.starts}:", 1)[-1]
            return regex.search(text)

        return wait_until(found, timeout, f"{self.name} to log {pattern!r}")

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"{self.name} did not exit within {timeout}s of SIGTERM") from None
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        if self.running():
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()


class ProcessGroup:
    """Every process a test starts; all are stopped at the end, logs shown on failure."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: dict[str, ZcoinProcess] = {}

    def start(self, name: str, *args: str) -> ZcoinProcess:
        proc = ZcoinProcess(name, list(args), self.tmp_path)
        self.procs[name] = proc
        return proc.start()

    def start_tracker(self, name: str = "tracker", *extra: str) -> tuple[ZcoinProcess, str]:
        proc = self.start(name, "tracker", "--bind", "tcp://127.0.0.1:*", "--events", "tcp://127.0.0.1:*", *extra)
        match = proc.wait_for_log(r"tracker listening.*?api=(tcp://127\.0\.0\.1:\d+)")
        return proc, match.group(1)

    def start_miner(self, name: str, trackers: list[str], *extra: str, network: str = "local",
                    mine: bool = True) -> tuple[ZcoinProcess, str]:
        """A miner with one worker on ephemeral ports, once started; returns it and its api endpoint."""
        (started,) = self.start_miners([name], trackers, *extra, network=network, mine=mine)
        return started

    def start_miners(self, names: list[str], trackers: list[str], *extra: str, network: str = "local",
                     mine: bool = True) -> list[tuple[ZcoinProcess, str]]:
        """Like :meth:`start_miner` for several miners, all started before any is waited for."""
        procs = []
        for name in names:
            args = ["miner", "--name", name, "--network", network, "--data-dir", str(self.tmp_path / name),
                    "--api", "tcp://127.0.0.1:*", "--gossip", "tcp://127.0.0.1:*", "--workers", "1", *extra]
            for tracker in trackers:
                args += ["--tracker", tracker]
            if not mine:
                args.append("--no-mine")
            procs.append(self.start(name, *args))
        started = []
        for proc in procs:
            proc.wait_for_log(r"node started")
            started.append((proc, json.loads((self.tmp_path / proc.name / "node.json").read_text())["api"]))
        return started

    def cli(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run a client command to completion."""
        return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def close(self, show_logs: bool) -> None:
        for proc in self.procs.values():
            proc.kill()
        if show_logs:
            for proc in self.procs.values():
                sys.stderr.write(f"\n===== log of {proc.name} =====\n{proc.log()[-6000:]}\n")
