"""A sync reply checked ahead: its blocks' rules first, their signatures in a process of their own.

A syncing node connects a reply of up to 16 blocks at a time (``Chain.batch``).
:class:`ChecksAhead` checks every rule of the run of blocks that extends the tip but the
signatures, and hands each block's transactions, with the keys of the coins they spend,
to the :class:`SignatureCheckProcess`; the chain then stores the blocks one by one while
the process works out what each input signs and verifies it, and the chain's thread
verifies the newest jobs not sent yet whenever it would wait for an answer.  A thread
would not do here: while the chain manager runs Python, a thread waiting for the GIL gets
it once per switch interval (5 ms), so it verified one signature in 4.3 ms (measured)
instead of 56 us.

The process says only "all valid" of a job; the chain checks a block it does not say so
of again on its own thread, which names the first bad signature in block order.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import select
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack
from loguru import logger

from zcoin.consensus import errors as E
from zcoin.consensus.params import ChainParams
from zcoin.consensus.primitives import PUBKEY_BYTES, Block
from zcoin.consensus.validation import (
    Spend,
    UtxoDiff,
    UtxoOverlay,
    UtxoView,
    check_block,
    connect_block_unsigned,
    encoded_signature_checks,
    first_invalid_signature,
    signature_checks,
    spend_checks,
)
from zcoin.sigchecks import SignatureCache

# The process costs a fifth of a second of the other core to start (once) and a few us per transaction
# to send; a reply with fewer signatures than this is checked block by block, as single blocks are.
AHEAD_MIN_SIGNATURES = 64
# A block's transactions go in jobs of at most JOB_SIGNATURES signatures (a transaction with more goes
# alone).  Jobs sent and not yet answered hold at most MAX_IN_FLIGHT signatures (one job, whatever its
# size, when none is in flight): about 2 ms of the process's work, so that the caller, rather than
# wait for an answer, verifies the newest jobs still unsent itself and the two cores share the
# signatures (with everything sent at once, replays were ~10% slower: the caller waited).  And they
# fill at most half of what the pipe holds (64 KB on Linux unless the system is short of pipe memory;
# it is asked at the start), so a send never blocks; a job larger than that is the caller's.
JOB_SIGNATURES = 64
MAX_IN_FLIGHT = 32
ASSUMED_PIPE_BYTES = 16 * 1024  # where the pipe's size cannot be asked (macOS starts at 16 KB)
# The caller waits this long for an answer the process owes before it gives up on the process
# (stopped, swapped out, wedged) and verifies alone from then on.
ANSWER_TIMEOUT_S = 10.0


Submitted = list[tuple[int, list[Spend]]]
"""What :meth:`SignatureCheckProcess.submit` returns: each job's ticket and spends."""


class SignatureCheckProcess:
    """Verifies the signatures of transactions in a process of its own while the caller goes on.

    :meth:`submit` hands over one block's spends (each transaction with the keys of the
    coins it spends) and returns at once; :meth:`passed` later says whether all their
    signatures are valid.  The process works out what each input signs (the sighash) and
    verifies it, so the caller does neither.  The spends travel in jobs of at most
    ``JOB_SIGNATURES`` signatures, answered in order, and at most ``MAX_IN_FLIGHT``
    signatures (and half the pipe) are in flight at a time; the rest wait in this object and
    go as answers come back.  :meth:`passed` verifies itself the jobs of its block not sent
    yet, and those sent while the process was still starting (the process answers them
    anyway; the answers are dropped); for the others it waits, verifying meanwhile the
    newest jobs not sent yet (the process takes the oldest).  A process that dies, answers
    out of turn, takes a short write, or owes an answer for ``answer_timeout`` seconds, is
    given up for good: the caller verifies alone from then on.  Started by :meth:`start`,
    stopped by :meth:`close`.

    The process is a Python of its own running :func:`serve` (not ``multiprocessing``,
    whose spawned child first imports the parent's main script: a script without a
    ``__main__`` guard would run again in it), with this very ``zcoin`` package loaded from
    its directory.  Its pipes carry a job as a 4-byte length and a msgpack array of
    ``[transaction, keys]`` pairs (its canonical encoding, and its inputs' keys joined), and
    an answer as one byte.
    """

    def __init__(self, answer_timeout: float = ANSWER_TIMEOUT_S) -> None:
        self.answer_timeout = answer_timeout
        self._process: subprocess.Popen | None = None
        self._poller: select.poll | None = None
        self._ready = False  # the process said it is up: from then on the caller waits for its answers
        self._failed = False
        self._tickets = itertools.count()
        self._unsent: dict[int, tuple[bytes, int, list[Spend]]] = {}  # ticket -> (framed job, signatures, spends)
        self._sent: deque[tuple[int, int, int]] = deque()  # (ticket, bytes, signatures) answers owed, oldest first
        self._owed: set[int] = set()  # their tickets
        self._in_flight = self._signatures_in_flight = 0  # bytes, signatures
        self._max_in_flight = ASSUMED_PIPE_BYTES // 2
        self._answers: dict[int, bool] = {}
        self._verified_here: dict[int, bool] = {}  # jobs this thread took while it waited
        self._dropped: set[int] = set()  # sent, then verified by the caller: the answer is dropped
        self.verified_by_process = 0  # jobs whose answer the caller took

    @property
    def running(self) -> bool:
        return self._process is not None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, *, wait: bool = False) -> bool:
        """Start the process if it is not running; False if it cannot run (the caller verifies alone).

        ``wait``: return once it is ready to verify (else the first jobs sent wait for it to start).
        """
        if self._process is None and not self._failed:
            self._spawn()
        while wait and self._process is not None and not self._ready:
            if not self._collect(self.answer_timeout):
                self._give_up(f"the signature process did not start in {self.answer_timeout:g} s")
        return self._process is not None

    def _spawn(self) -> None:
        package = str(Path(__file__).resolve().parent)  # this zcoin, installed or not
        try:
            # -P: nothing of the working directory on its path; the rest of its path is the usual one.
            self._process = subprocess.Popen([sys.executable, "-P", "-c", _CHILD, package],
                                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except OSError as exc:
            self._give_up(f"cannot start the signature process: {exc}")
            return
        try:
            pipe_bytes = fcntl.fcntl(self._process.stdin.fileno(), fcntl.F_GETPIPE_SZ)
        except (AttributeError, OSError):  # not Linux
            pipe_bytes = ASSUMED_PIPE_BYTES
        self._max_in_flight = pipe_bytes // 2
        self._poller = select.poll()
        self._poller.register(self._process.stdout.fileno(), select.POLLIN)

    def submit(self, spends: Sequence[Spend]) -> Submitted:
        """Queue ``spends`` for the process (sending what fits); what :meth:`passed` takes.

        Without a process, or for a job too large for the pipe, nothing is queued:
        :meth:`passed` verifies them.
        """
        submitted = [(next(self._tickets), job) for job in _jobs(spends)]
        if self._process is None:
            return submitted
        for ticket, job in submitted:
            packed = msgpack.packb([(tx.raw, b"".join(pubkeys)) for tx, pubkeys in job])
            if len(packed) + 4 <= self._max_in_flight:
                signatures = sum(len(pubkeys) for _, pubkeys in job)
                self._unsent[ticket] = (len(packed).to_bytes(4, "little") + packed, signatures, job)
        self._collect(0)
        return submitted

    def passed(self, submitted: Submitted) -> bool:
        """True if all the signatures of the spends :meth:`submit` took (and returned as ``submitted``) are valid."""
        self._collect(0)
        valid, left = True, []
        for ticket, job in submitted:  # jobs not sent yet are this thread's, checked while the process works
            if self._unsent.pop(ticket, None) is None:
                left.append((ticket, job))
            elif valid:
                valid = _all_valid(job)
        for ticket, job in left:
            while valid and self._ready and ticket in self._owed:
                if self._verify_newest_unsent():  # rather than wait: the process takes the oldest
                    self._collect(0)
                elif not self._collect(self.answer_timeout):
                    self._give_up(f"no answer from the signature process in {self.answer_timeout:g} s")
            if ticket in self._owed:  # sent while the process was starting (or no longer needed): not waited for
                self._dropped.add(ticket)
            answer = self._answers.pop(ticket, None)
            if answer is not None:
                self.verified_by_process += 1
                valid = valid and answer
            elif (answer := self._verified_here.pop(ticket, None)) is not None:
                valid = valid and answer
            elif valid:  # never sent, not waited for, or the process is gone
                valid = _all_valid(job)
        return valid

    def _verify_newest_unsent(self) -> bool:
        """Verify the newest job not sent yet here; False if there is none."""
        if not self._unsent:
            return False
        ticket, (_, _, job) = self._unsent.popitem()
        self._verified_here[ticket] = _all_valid(job)
        return True

    def forget(self) -> None:
        """Drop what was submitted and not asked for (blocks that were not added after all)."""
        self._unsent.clear()
        self._answers.clear()
        self._verified_here.clear()
        self._dropped.update(self._owed)

    def close(self, *, kill: bool = False) -> None:
        """Stop the process (it goes when its pipe closes; ``kill``: at once) and wait for it."""
        process, self._process, self._poller = self._process, None, None
        self._ready = False
        self._unsent.clear()
        self._sent.clear()
        self._owed.clear()
        self._in_flight = self._signatures_in_flight = 0
        self._answers.clear()
        self._verified_here.clear()
        self._dropped.clear()
        if process is not None:
            for pipe in (process.stdin, process.stdout):
                try:
                    pipe.close()
                except OSError:
                    pass
            if kill:
                process.kill()
            try:
                process.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # --- the pipes -----------------------------------------------------------------

    def _collect(self, timeout: float) -> bool:
        """Read the answers that have come, waiting up to ``timeout`` s for one, then send what now fits.

        False if no answer came (or the process is gone).
        """
        if self._process is None:
            return False
        try:
            came = bool(self._poller.poll(timeout * 1000))
            answers = os.read(self._process.stdout.fileno(), 4096) if came else None
        except OSError as exc:
            self._give_up(f"signature process gone: {exc}")
            return False
        if answers == b"":
            self._give_up(f"signature process gone (exit status {self._process.poll()})")
            return False
        for answer in answers or ():
            if self._process is None:  # given up on an answer out of turn
                return False
            self._take(answer)
        self._send()
        return bool(answers)

    def _send(self) -> None:
        """Send queued jobs, oldest first, while they fit (within half the pipe: a write never blocks)."""
        while self._unsent and self._process is not None:
            ticket = next(iter(self._unsent))
            framed, signatures, _ = self._unsent[ticket]
            if self._in_flight + len(framed) > self._max_in_flight or \
                    (self._signatures_in_flight and self._signatures_in_flight + signatures > MAX_IN_FLIGHT):
                return
            del self._unsent[ticket]
            try:
                written = os.write(self._process.stdin.fileno(), framed)
            except OSError as exc:
                self._give_up(f"signature process gone: {exc}")
                return
            if written != len(framed):  # the jobs' framing would be lost
                self._give_up(f"short write to the signature process ({written} of {len(framed)} bytes)")
                return
            self._sent.append((ticket, len(framed), signatures))
            self._owed.add(ticket)
            self._in_flight += len(framed)
            self._signatures_in_flight += signatures

    def _take(self, answer: int) -> None:
        if answer == _READY:
            self._ready = True
            return
        if not self._sent or answer not in (_VALID, _INVALID):
            self._give_up(f"an answer out of turn from the signature process ({answer})")
            return
        ticket, size, signatures = self._sent.popleft()
        self._owed.discard(ticket)
        self._in_flight -= size
        self._signatures_in_flight -= signatures
        if ticket in self._dropped:
            self._dropped.discard(ticket)
        else:
            self._answers[ticket] = answer == _VALID

    def _give_up(self, why: str) -> None:
        logger.warning("signatures checked on the chain's thread only from now", reason=why)
        self._failed = True
        self.close(kill=True)  # it may be wedged: the chain's thread does not wait for it


@dataclass(frozen=True, slots=True)
class _CheckedAhead:
    """A block whose other rules passed before it was added, its signatures being verified."""

    block: Block
    diff: UtxoDiff
    submitted: Submitted


class ChecksAhead:
    """A sync reply's blocks checked before the chain adds them, their signatures on the other core.

    :meth:`check` runs ``check_block`` and every rule of ``connect_block`` but the signatures
    (``connect_block_unsigned``) over the run of blocks that extends the tip, one after the
    other over a :class:`UtxoOverlay` of the store, and submits each block's spends to the
    :class:`SignatureCheckProcess` (transactions whose signatures the signature cache holds
    all, the mempool's, need no verify and are not sent).  The chain then
    adds the blocks one by one: :meth:`passed_check_block` spares it ``check_block`` again,
    and :meth:`diff` gives it what ``connect_block`` found once the block's signatures
    passed.  That diff holds whenever the block connects, since the UTXO set at a block's
    parent is always the same; a block whose signatures did not all pass gets None, and the
    chain judges it from scratch (naming its first bad signature, as ever).  The run ends
    at the first block that is known, does not follow the one before, or breaks a rule
    (judged again when it is added).  A reply with fewer than ``min_signatures`` is left alone.
    """

    def __init__(self, params: ChainParams, min_signatures: int = AHEAD_MIN_SIGNATURES,
                 cache: SignatureCache | None = None) -> None:
        self.params = params
        self.min_signatures = min_signatures
        self.cache = cache
        self.process = SignatureCheckProcess()
        self._blocks: dict[bytes, _CheckedAhead] = {}

    def check(self, blocks: Sequence[Block], tip_hash: bytes, tip_height: int, view: UtxoView,
              is_new: Callable[[bytes], bool]) -> None:
        """Check ``blocks`` ahead: those that extend ``tip_hash`` (whose UTXO set ``view`` is) in turn,
        while ``is_new`` says the chain has not got them."""
        if sum(len(tx.inputs) for block in blocks for tx in block.txs[1:]) < self.min_signatures \
                or not self.process.start():
            return
        view = UtxoOverlay(view)
        prev_hash, height = tip_hash, tip_height
        for block in blocks:
            if block.header.prev_hash != prev_hash or not is_new(block.hash):
                break
            try:
                check_block(block, self.params)
                diff, spends = connect_block_unsigned(block, height + 1, view, self.params)
            except E.ValidationError:
                break
            if self.cache:  # an empty one (a syncing node's) costs nothing
                spends = [spend for spend in spends if self.cache.unseen(signature_checks(*spend))]
            self._blocks[block.hash] = _CheckedAhead(block, diff, self.process.submit(spends))
            view.apply(diff)
            prev_hash, height = block.hash, height + 1

    def passed_check_block(self, block: Block) -> bool:
        """True if ``block`` (this very object) passed ``check_block`` in :meth:`check`."""
        ahead = self._blocks.get(block.hash)
        return ahead is not None and ahead.block is block

    def diff(self, block: Block) -> UtxoDiff | None:
        """What ``connect_block`` says of ``block`` if it was checked ahead and its signatures passed."""
        ahead = self._blocks.pop(block.hash, None)
        if ahead is None or ahead.block is not block or not self.process.passed(ahead.submitted):
            return None
        return ahead.diff

    def forget(self) -> None:
        """Drop what was checked ahead and not taken (at the end of a reply)."""
        self._blocks.clear()
        self.process.forget()

    def close(self) -> None:
        self._blocks.clear()
        self.process.close()


_READY, _VALID, _INVALID = b"R"[0], 1, 0

# The process's program: this zcoin package loaded from its directory (given as the argument), so
# that neither the working directory nor another installed zcoin can stand in for it.
_CHILD = """\
import importlib.util, sys
package = sys.argv[1]
spec = importlib.util.spec_from_file_location("zcoin", package + "/__init__.py", submodule_search_locations=[package])
sys.modules["zcoin"] = zcoin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zcoin)
from zcoin.checksahead import serve
serve()
"""


def _jobs(spends: Sequence[Spend]) -> list[list[Spend]]:
    """``spends`` in order, in jobs of at most ``JOB_SIGNATURES`` signatures (a larger spend alone)."""
    jobs: list[list[Spend]] = []
    job: list[Spend] = []
    signatures = 0
    for spend in spends:
        if job and signatures + len(spend[1]) > JOB_SIGNATURES:
            jobs.append(job)
            job, signatures = [], 0
        job.append(spend)
        signatures += len(spend[1])
    if job:
        jobs.append(job)
    return jobs


def _all_valid(spends: Sequence[Spend]) -> bool:
    """True if every signature of ``spends`` is valid (verified on this thread)."""
    return first_invalid_signature(spend_checks(spends)) is None


def _job_valid(job: bytes) -> bool:
    """The process's verdict on a job: every signature of its spends valid (anything malformed is not).

    It works from the encodings (``encoded_signature_checks``): parsing them into
    transactions would cost the process half as much again as the verifies.
    """
    try:
        checks = []
        for raw, keys in msgpack.unpackb(job):
            checks.extend(encoded_signature_checks(raw, [keys[at:at + PUBKEY_BYTES]
                                                         for at in range(0, len(keys), PUBKEY_BYTES)]))
        return len(checks) > 0 and first_invalid_signature(checks) is None
    except (ValueError, TypeError, E.DecodeError):  # a key too many or too few, or a short one: ValueError
        return False


def _read_exactly(fd: int, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def serve(stdin: int = 0, stdout: int = 1) -> None:
    """The signature process: verify each job it reads, answer ``1`` (all valid) or ``0``; end at EOF."""
    # Ctrl-C (SIGINT) and process managers such as honcho (SIGTERM) signal the whole process group: the
    # node handles them and closes the pipe, which ends this process (as the mining pool's workers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.stdout = sys.stderr  # the answers' pipe carries answers only, whatever else may print
    os.write(stdout, bytes([_READY]))
    while (header := _read_exactly(stdin, 4)) is not None:
        job = _read_exactly(stdin, int.from_bytes(header, "little"))
        if job is None:
            return
        valid = _job_valid(job)
        try:
            os.write(stdout, bytes([_VALID if valid else _INVALID]))
        except OSError:  # the node is gone
            return

