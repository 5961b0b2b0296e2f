"""Mining: block templates and a pool of worker processes that search nonces.

A **template** is the next block on the current tip with everything but the
nonce: the mempool's best transactions (highest fee rate first, parents before
children, as many as fit under the block size), a coinbase paying the subsidy
plus their fees to the miner's key, the bits the chain expects and a time just
after the median time past.

A **job** is what the workers need of a template: the first 76 header bytes
(version .. bits), the target, and how far the header time may roll.  Each
worker owns a disjoint slice of the 2**32 nonces.  SHA-256 compresses 64-byte
blocks, so the first 64 header bytes (version, previous hash, most of the
merkle root) are compressed once per job and time: a worker keeps that
*midstate* (a SHA-256 object fed ``header[:76]`` holds the compressed first
block and the 12 bytes after it, so that no per-nonce concatenation is needed)
and per nonce only ``copy()``s it, feeds the 4 nonce bytes and hashes the
digest again: two compressions per nonce.  The digest is
compared to the target as bytes, and only when its most significant byte
(``digest[31]``: the hash is a little-endian number) could pass.  When a
worker's slice is spent, it rolls the time by one second (never past the job's
``max_time``) and starts the slice again; when that is spent too it reports
the job exhausted and the node should build a template with a new extra nonce.
A worker reports its **first hit** and stops searching that job: a found block
ends its job (every other hit would be a sibling of the same block), and on an
easy target (regtest) a worker that kept going would flood the node with
thousands of useless results per block.

**Switching jobs** (new tip, better template) must stop the old search within
milliseconds.  The parent bumps a shared generation counter (a lock-free
``RawValue``: a worker killed with SIGKILL can never leave a lock held), then
sends the new job down each worker's own pipe.  Workers read the counter every
``CHECK_INTERVAL_HASHES`` hashes (about 2 ms at ~1 MH/s per Python core), and
on a change take the newest message from their pipe.  Found nonces, switch
acknowledgements and "exhausted" notices come back over one shared pipe whose
read end is :meth:`MiningPool.fileno`, so a node's ``zmq.Poller`` wakes up when
a result is ready.  Every worker writes that pipe without a lock: each message
is one ``write`` far below ``PIPE_BUF``, which POSIX makes atomic.  Results
carry the generation they were found under; anything from an older generation
is dropped by the pool and never reaches the node.

Workers are started with the **spawn** method: a fresh interpreter that
imports this module and receives only the pipes and shared counters it is
handed, so no ZeroMQ context, socket or thread of the node crosses into it.
They run at a lower priority (``WORKER_NICE``), so the node's own loop
(validation, relay, the tracker's heartbeats) takes a core whenever it needs one.
A worker that dies is replaced on the current job by :meth:`MiningPool.maintain`
(which :meth:`MiningPool.poll_results` calls), and a worker whose parent is
gone exits on its own instead of spinning forever.
"""

from __future__ import annotations

import hashlib
import importlib
import multiprocessing
import os
import signal
import struct
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from loguru import logger

from zcoin.consensus.builders import BlockTemplate, new_template
from zcoin.consensus.crypto import merkle_root, sha256d
from zcoin.consensus.pow import bits_to_target
from zcoin.consensus.primitives import HEADER_BYTES, UINT32_MAX, Block, BlockHeader, TxOut, make_coinbase

if TYPE_CHECKING:  # workers import this module: keep storage and sqlite out of them
    from zcoin.chain import Chain
    from zcoin.mempool import Mempool

NONCE_SPACE = 1 << 32
HEADER_PREFIX_BYTES = 76  # version .. bits: everything but the nonce
_TIME_OFFSET = 68  # header bytes 68..72 hold the time
CHECK_INTERVAL_HASHES = 2048  # ~2 ms per worker at ~1 MH/s: bounds the cancellation latency
MAX_MESSAGES_PER_POLL = 10_000  # keeps one poll_results() call short even if workers flood
MAX_SEEN_RESULTS = 65_536  # duplicate filter per job (a restarted worker redoes its slice)
WORKER_RESTART_BACKOFF_S = 1.0  # a worker slot restarts at most once a second (no crash loop storm)
STOP_GRACE_S = 1.0  # workers asked to stop get this long before SIGKILL
HASHRATE_WINDOW_S = 5.0  # hash rates average over about this long
HASHRATE_SAMPLE_S = 0.25  # counters are sampled at most this often by maintain()
START_METHOD = "spawn"  # no state of the parent (ZeroMQ contexts!) reaches a worker
WORKER_NICE = 10  # workers yield the CPU to the node's own loop (as Bitcoin's old miner threads ran lowest)

_NONCE = struct.Struct("<I")


def _fastest_sha256() -> Any:
    """CPython's own SHA-256 type if it has one, else hashlib's (OpenSSL).

    For 80- and 32-byte inputs the builtin one beats OpenSSL's EVP wrapper by
    about 20% per nonce here (less work per ``copy()`` and per new object; see
    ``bench/bench_hash.py``, which reports both).  The module is private and
    renamed in 3.12, hence the fallbacks; the digests are the same.
    """
    for module_name in ("_sha2", "_sha256"):  # 3.12+, 3.11
        try:
            return importlib.import_module(module_name).sha256
        except (ImportError, AttributeError):
            continue
    return hashlib.sha256


_SHA256 = _fastest_sha256()

# Worker -> pool messages: (kind, generation, worker, ...)
MSG_SWITCHED = "switched"  # the worker now follows this generation (a job or idle)
MSG_FOUND = "found"  # + nonce, time: the worker's first hit on the job, after which it stops searching it
MSG_EXHAUSTED = "exhausted"  # its nonce slice and time window are spent

# Search outcomes inside a worker.
_CANCELLED, _EXHAUSTED, _PARENT_GONE, _FOUND = range(4)


# --- templates and jobs -------------------------------------------------------------


def _bin_prefix_bytes(size: int) -> int:
    """Bytes msgpack puts before a byte string of ``size`` (bin 8/16/32)."""
    return 2 if size < 1 << 8 else 3 if size < 1 << 16 else 5


def _block_overhead_bytes(height: int, payout_pubkey: bytes, extra_nonce: bytes) -> int:
    """Block bytes besides the selected transactions: envelope, header, coinbase at its largest amount."""
    coinbase = make_coinbase(height, (TxOut(2**64 - 1, payout_pubkey),), extra_nonce)
    envelope = 1 + _bin_prefix_bytes(HEADER_BYTES) + HEADER_BYTES + 5  # fixarray, header, array32 of txs
    return envelope + _bin_prefix_bytes(coinbase.size) + coinbase.size


def build_template(chain: Chain, mempool: Mempool, payout_pubkey: bytes, now: int, *,
                   extra_nonce: bytes = b"") -> BlockTemplate:
    """The next block on ``chain``'s tip over ``mempool``'s best transactions, paying ``payout_pubkey``.

    Transactions come from :meth:`Mempool.select_for_block` (best fee rate
    first, parents before children) within what the block size leaves after
    the header, the coinbase and the encoding; the coinbase claims the subsidy
    plus exactly their fees.  Bits are what the chain expects at this height,
    and the time is ``now`` but at least one second past the median time past.
    A new ``extra_nonce`` gives a new merkle root when a job's nonces and times
    are spent.  Raise ``ValueError`` on a bad key or an extra nonce too long.
    """
    params = chain.params
    ctx = chain.next_block_context()
    limit = params.max_block_bytes
    fixed = _block_overhead_bytes(ctx.height, payout_pubkey, extra_nonce)
    if fixed > limit:
        raise ValueError(f"a block of {limit} bytes has no room for its header and coinbase")
    txs, _ = mempool.select_for_block(limit - fixed)
    size = fixed + sum(tx.size + _bin_prefix_bytes(tx.size) for tx in txs)
    while size > limit:
        # The selection counted transaction bytes only; drop from the end, which never strands
        # a child (children always come after their parents).
        tx = txs.pop()
        size -= tx.size + _bin_prefix_bytes(tx.size)
    fees = sum(mempool.entries[tx.txid].fee for tx in txs)
    block_time = max(now, ctx.median_time_past + 1)
    template = new_template(params, ctx.prev_hash, ctx.height, ctx.expected_bits, block_time, payout_pubkey,
                            txs, fees)
    template.extra_nonce = extra_nonce
    template.coinbase()  # raise now, not in the miner, on an extra nonce that does not fit
    return template


@dataclass(frozen=True, slots=True)
class MiningJob:
    """What the workers search: header bytes 0..76 (version .. bits, with ``time``) and the target.

    Workers roll the time from ``time`` up to ``max_time`` (inclusive) once
    their nonces are spent.  ``job_id`` is the caller's name for the job; it
    comes back in every :class:`Found`.
    """

    job_id: int
    header_prefix: bytes
    target: int
    time: int
    max_time: int

    def __post_init__(self) -> None:
        if type(self.header_prefix) is not bytes or len(self.header_prefix) != HEADER_PREFIX_BYTES:
            raise ValueError(f"header_prefix must be the first {HEADER_PREFIX_BYTES} header bytes")
        if not 0 < self.target < 1 << 256:
            raise ValueError("target must be in (0, 2**256)")
        if not 0 <= self.time <= self.max_time <= UINT32_MAX:
            raise ValueError("need 0 <= time <= max_time < 2**32")
        if self.header_prefix[_TIME_OFFSET:_TIME_OFFSET + 4] != _NONCE.pack(self.time):
            raise ValueError("header_prefix does not carry time")

    def header_bytes(self, time_: int, nonce: int) -> bytes:
        """The 80 header bytes for a header time and nonce."""
        prefix = self.header_prefix
        return prefix[:_TIME_OFFSET] + _NONCE.pack(time_) + prefix[_TIME_OFFSET + 4:] + _NONCE.pack(nonce)

    def meets_target(self, time_: int, nonce: int) -> bool:
        """True if the header with this time and nonce hashes at or under the target."""
        return int.from_bytes(sha256d(self.header_bytes(time_, nonce)), "little") <= self.target


@dataclass(frozen=True, slots=True)
class Found:
    """A nonce (and the header time it was found with) that meets job ``job_id``'s target."""

    job_id: int
    nonce: int
    time: int
    worker: int


def job_from_template(template: BlockTemplate, job_id: int, max_future_s: int) -> MiningJob:
    """The job for ``template``: its header without the nonce; times may roll ``max_future_s`` ahead.

    Do not change the template (extra nonce, transactions) while its job runs:
    :func:`block_from_found` rebuilds the block from it.
    """
    prefix = template.header(0).serialize()[:HEADER_PREFIX_BYTES]
    return MiningJob(job_id, prefix, bits_to_target(template.bits), template.time,
                     min(template.time + max_future_s, UINT32_MAX))


def block_from_found(template: BlockTemplate, found: Found) -> Block:
    """The block of ``template`` with the time and nonce of ``found`` (validate it like any other)."""
    coinbase = template.coinbase()
    txs = (coinbase, *template.txs)
    header = BlockHeader(template.version, template.prev_hash, merkle_root([tx.txid for tx in txs]), found.time,
                         template.bits, found.nonce)
    return Block(header, txs)


# --- the worker process -------------------------------------------------------------


def _worker_main(slot: int, size: int, generation: Any, hashes: Any, jobs: Connection, results: Connection,
                 check_interval: int, nice: int) -> None:
    """A worker: take the newest job from ``jobs``, search it, report to ``results``, until told to stop."""
    # Ctrl-C (SIGINT) and process managers such as honcho (SIGTERM) signal the whole
    # process group; the parent stops its workers itself (and SIGKILLs stragglers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if nice:
        os.nice(nice)
    parent_pid = os.getppid()
    job = None
    try:
        while True:
            if job is None or jobs.poll():
                message = jobs.recv()  # blocks while idle; EOFError once the parent is gone
                while jobs.poll():
                    message = jobs.recv()  # only the newest job matters
                if message[0] == "stop":
                    return
                job = message if message[0] == "job" else None
                results.send((MSG_SWITCHED, message[1], slot))
                continue
            outcome = _search(job, slot, size, generation, hashes, results, check_interval, parent_pid)
            if outcome == _PARENT_GONE:
                return
            if outcome == _EXHAUSTED:
                results.send((MSG_EXHAUSTED, job[1], slot))
            job = None  # cancelled (the next message follows the bump), found or spent: wait for a message
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return  # the pool is gone


def _search(job: tuple, slot: int, size: int, generation: Any, hashes: Any, results: Connection,
            check_interval: int, parent_pid: int) -> int:
    """Search this worker's nonce slice of ``job``, rolling the time; return why it stopped."""
    _, gen, prefix, target, header_time, max_time = job
    low = slot * NONCE_SPACE // size
    high = (slot + 1) * NONCE_SPACE // size
    target_be = target.to_bytes(32, "big")
    top = target_be[0]
    head, bits = prefix[:_TIME_OFFSET], prefix[_TIME_OFFSET + 4:]
    pack = _NONCE.pack
    sha256 = _SHA256
    send = results.send
    while True:
        copy = sha256(head + pack(header_time) + bits).copy  # the midstate, with 12 bytes buffered
        for start in range(low, high, check_interval):
            end = min(start + check_interval, high)
            for nonce in range(start, end):
                h = copy()
                h.update(pack(nonce))
                digest = sha256(h.digest()).digest()
                # Little-endian number: digest[31] is its top byte; most hashes fail on it alone.
                if digest[31] <= top and digest[::-1] <= target_be:
                    hashes[slot] += nonce + 1 - start  # counted before the pool can hear of the hit
                    send((MSG_FOUND, gen, slot, nonce, header_time))
                    return _FOUND
            hashes[slot] += end - start
            if generation.value != gen:
                return _CANCELLED
            if os.getppid() != parent_pid:
                return _PARENT_GONE
        header_time += 1
        if header_time > max_time:
            return _EXHAUSTED


# --- the pool -----------------------------------------------------------------------


@dataclass(slots=True)
class _Worker:
    process: BaseProcess
    jobs: Connection  # the parent's sending end of this worker's job pipe
    started_at: float


class MiningPool:
    """Worker processes searching the current :class:`MiningJob` (see the module docstring).

    Single-threaded use: the node's loop registers the pool with its
    ``zmq.Poller`` (it has :meth:`fileno`), calls :meth:`poll_results` when it
    is readable and at least once a second otherwise (that also replaces dead
    workers), and :meth:`submit`\\ s a new job on a new tip or a better
    template.  Call :meth:`poll_results` before :meth:`submit`: whatever is
    still queued for the old job is dropped as stale by the switch.

    Workers are spawned: the program's main module is imported again in each,
    so it must keep its work under ``if __name__ == "__main__":``.
    """

    def __init__(self, workers: int | None = None, *, nice: int = WORKER_NICE,
                 check_interval: int = CHECK_INTERVAL_HASHES) -> None:
        size = (os.cpu_count() or 1) if workers is None else workers
        if type(size) is not int or size < 1:
            raise ValueError("workers must be a positive integer")
        if check_interval < 1:
            raise ValueError("check_interval must be positive")
        self.size = size
        self.nice = nice
        self.check_interval = check_interval
        self.context = multiprocessing.get_context(START_METHOD)
        self._generation = self.context.RawValue("q", 0)
        self._hashes = self.context.RawArray("Q", size)
        self._results, self._results_writer = self.context.Pipe(duplex=False)
        self._workers: list[_Worker | None] = [None] * size
        self._restart_at = [0.0] * size
        self._gen = 0
        self._job: MiningJob | None = None
        self._job_message: tuple = ("idle", 0)
        self._submitted_at = 0.0
        self._switched: set[int] = set()
        self._exhausted: set[int] = set()
        self._seen: set[tuple[int, int]] = set()
        self._samples: deque[tuple[float, tuple[int, ...]]] = deque()
        self._started = False
        self._stopped = False
        self.restarts = 0
        self.stale_results = 0
        self.switch_latency_s: float | None = None  # submit() to every worker acknowledging, last switch

    # --- life cycle ----------------------------------------------------------

    def start(self) -> None:
        """Start the workers (idle, or on the job already submitted)."""
        if self._stopped:
            raise RuntimeError("a stopped mining pool cannot start again")
        if self._started:
            return
        self._started = True
        for slot in range(self.size):
            self._spawn(slot)
        self._sample(time.monotonic(), force=True)
        logger.info("mining pool started", workers=self.size, start_method=START_METHOD)

    def stop(self) -> None:
        """Stop every worker (ask, then SIGKILL after a grace period), reap them and close the pipes; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        live = [w for w in self._workers if w is not None]
        if live:
            self._gen += 1
            self._generation.value = self._gen
            for worker in live:
                try:
                    worker.jobs.send(("stop", self._gen))
                except OSError:
                    pass  # already dead
            deadline = time.monotonic() + STOP_GRACE_S
            while any(w.process.is_alive() for w in live) and time.monotonic() < deadline:
                # A worker blocked writing results must be read from to see its stop message.
                wait([self._results] + [w.process.sentinel for w in live], deadline - time.monotonic())
                self._drain()
            for worker in live:
                if worker.process.is_alive():
                    worker.process.kill()  # workers ignore SIGTERM (see _worker_main)
                worker.process.join()
                self._retire(worker)
        self._workers = [None] * self.size
        self._results.close()
        self._results_writer.close()
        logger.info("mining pool stopped", workers=self.size, restarts=self.restarts)

    def __enter__(self) -> MiningPool:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _spawn(self, slot: int) -> None:
        reader, writer = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_worker_main, name=f"zcoin-miner-{slot}", daemon=True,
            args=(slot, self.size, self._generation, self._hashes, reader, self._results_writer,
                  self.check_interval, self.nice))
        try:
            process.start()
        except BaseException:
            writer.close()
            raise
        finally:
            reader.close()  # the worker has its copy; ours would keep its pipe open after it dies
        self._workers[slot] = _Worker(process, writer, time.monotonic())
        try:
            writer.send(self._job_message)
        except OSError:
            pass  # died at once: maintain() sees it

    @staticmethod
    def _retire(worker: _Worker) -> None:
        worker.jobs.close()
        worker.process.close()

    def maintain(self) -> None:
        """Replace dead workers on the current job and sample the hash counters (cheap; call often)."""
        if not self._started or self._stopped:
            return
        now = time.monotonic()
        for slot, worker in enumerate(self._workers):
            if worker is not None:
                if worker.process.is_alive():  # also reaps a dead one: no zombie
                    continue
                logger.warning("mining worker died", worker=slot, pid=worker.process.pid,
                               exitcode=worker.process.exitcode)
                self._restart_at[slot] = max(now, worker.started_at + WORKER_RESTART_BACKOFF_S)
                self._retire(worker)
                self._workers[slot] = None
            if now >= self._restart_at[slot]:
                try:
                    self._spawn(slot)
                except OSError as exc:  # out of processes or descriptors: try again later, keep the node up
                    self._restart_at[slot] = now + WORKER_RESTART_BACKOFF_S
                    logger.error("cannot restart mining worker", worker=slot, error=str(exc))
                    continue
                self.restarts += 1
                logger.info("mining worker restarted", worker=slot, pid=self._workers[slot].process.pid)
        self._sample(now)

    # --- jobs ----------------------------------------------------------------

    def submit(self, job: MiningJob) -> None:
        """Make ``job`` the one the workers search; the previous search stops within milliseconds."""
        self._switch(job)
        logger.debug("mining job submitted", job=job.job_id, target_bits=job.target.bit_length(),
                     time=job.time)

    def cancel(self) -> None:
        """Stop searching: the workers idle until the next :meth:`submit`."""
        self._switch(None)

    @property
    def job(self) -> MiningJob | None:
        """The job being searched (None when idle)."""
        return self._job

    def _switch(self, job: MiningJob | None) -> None:
        if self._stopped:
            raise RuntimeError("the mining pool is stopped")
        self._gen += 1
        self._generation.value = self._gen  # first: workers stop producing old results at their next check
        self._drain()  # all stale now; also unblocks a worker stuck writing so it can read its new job
        self._job = job
        if job is None:
            self._job_message = ("idle", self._gen)
        else:
            self._job_message = ("job", self._gen, job.header_prefix, job.target, job.time, job.max_time)
        self._switched.clear()
        self._exhausted.clear()
        self._seen.clear()
        self._submitted_at = time.perf_counter()
        self.switch_latency_s = None
        for worker in self._workers:
            if worker is None:
                continue
            try:
                worker.jobs.send(self._job_message)
            except OSError:
                pass  # it died: maintain() restarts it with this job

    # --- results -------------------------------------------------------------

    def fileno(self) -> int:
        """A descriptor that is readable when results are waiting (register it with a ``zmq.Poller``)."""
        return self._results.fileno()

    def poll_results(self) -> list[Found]:
        """Found nonces of the current job, without blocking; replaces dead workers first."""
        if not self._started or self._stopped:
            return []
        self.maintain()
        return self._drain()

    def _drain(self) -> list[Found]:
        found = []
        for _ in range(MAX_MESSAGES_PER_POLL):
            try:
                if not self._results.poll():
                    break
                message = self._results.recv()
            except (EOFError, OSError):
                break
            result = self._handle(message)
            if result is not None:
                found.append(result)
        return found

    def _handle(self, message: tuple) -> Found | None:
        kind, gen, slot = message[:3]
        if gen != self._gen:
            if kind == MSG_FOUND:
                self.stale_results += 1
            return None
        if kind == MSG_SWITCHED:
            if slot in self._switched:
                return None  # a restarted worker acknowledging again
            self._switched.add(slot)
            if len(self._switched) == self.size:
                self.switch_latency_s = time.perf_counter() - self._submitted_at
        elif kind == MSG_EXHAUSTED:
            self._exhausted.add(slot)
            if len(self._exhausted) == self.size and self._job is not None:
                logger.info("mining job exhausted: build a template with a new extra nonce", job=self._job.job_id)
        elif kind == MSG_FOUND and self._job is not None:
            nonce, header_time = message[3], message[4]
            if (header_time, nonce) in self._seen:
                return None
            if not self._job.meets_target(header_time, nonce):
                logger.warning("worker reported a nonce that misses the target", worker=slot, nonce=nonce)
                return None
            if len(self._seen) < MAX_SEEN_RESULTS:
                self._seen.add((header_time, nonce))
            return Found(self._job.job_id, nonce, header_time, slot)
        return None

    @property
    def switched_workers(self) -> int:
        """How many workers have acknowledged the current job (or idling)."""
        return len(self._switched)

    @property
    def job_exhausted(self) -> bool:
        """True once every worker has spent its nonces and times on the current job."""
        return self._job is not None and len(self._exhausted) == self.size

    # --- monitoring ----------------------------------------------------------

    def pids(self) -> list[int | None]:
        """Process id of each worker slot (None while a slot waits to restart)."""
        return [w.process.pid if w is not None else None for w in self._workers]

    def hash_counts(self) -> list[int]:
        """Hashes each worker slot has done since the pool started (restarts continue the count)."""
        return list(self._hashes)

    def _sample(self, now: float, force: bool = False) -> None:
        samples = self._samples
        if samples and now - samples[-1][0] < (0.01 if force else HASHRATE_SAMPLE_S):
            return
        samples.append((now, tuple(self._hashes)))
        while len(samples) > 2 and samples[1][0] <= now - HASHRATE_WINDOW_S:
            samples.popleft()

    def hashrates(self) -> dict:
        """Hashes per second over about the last ``HASHRATE_WINDOW_S``: ``{"total", "workers", "hashes"}``."""
        if self._started and not self._stopped:
            self._sample(time.monotonic(), force=True)
        if len(self._samples) < 2:
            return {"total": 0.0, "workers": [0.0] * self.size, "hashes": sum(self._hashes)}
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        rates = [(b - a) / (t1 - t0) for a, b in zip(first, last, strict=True)]
        return {"total": sum(rates), "workers": rates, "hashes": sum(last)}
