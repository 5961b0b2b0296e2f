"""Benchmarks of the consensus core, each next to a baseline measured in the same run.

Every function runs for a fixed wall-clock budget (``seconds``) and returns a
dict of plain numbers, ready for ``json.dumps`` (``bench/bench_consensus.py``,
and ``zcoin bench`` later).  Subject and baseline are measured in alternating
rounds over the same inputs, so a machine that speeds up or slows down during
the run affects both alike; each rate is the median over rounds and each ratio
the median of same-round ratios to the baseline.  Nothing here asserts a speed:
goals are reported next to ratios.

- :func:`bench_verify`: signed 1-input 2-output transactions checked against a
  UTXO view (``check_transaction`` + ``check_tx_inputs``) against raw
  libsecp256k1 BIP340 verifies through coincurve with the key pre-parsed.
- :func:`bench_header_hash`: ``hash_header(raw80)`` and
  ``BlockHeader.parse(raw80).hash`` against a plain hashlib double SHA-256 loop.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from statistics import median
from typing import Any

import coincurve

from zcoin.consensus.builders import sign_transaction
from zcoin.consensus.params import LOCAL, REGTEST, ChainParams, dev_secret_key
from zcoin.consensus.primitives import BlockHeader, OutPoint, Transaction, TxOut, hash_header, sighash
from zcoin.consensus.validation import Coin, MemoryUtxoSet, check_transaction, check_tx_inputs
from zcoin.mining import _NONCE, _SHA256, CHECK_INTERVAL_HASHES, HEADER_PREFIX_BYTES, NONCE_SPACE, MiningJob, MiningPool

DEFAULT_SECONDS = 2.0
ROUNDS = 20  # alternations of subject and baseline within the budget
BATCH = 50  # items handled between two looks at the clock
VERIFY_GOAL_RATIO = 0.5
HASH_GOAL_RATIO = 0.9

Runner = Callable[[Sequence[Any]], object]


def _measure(runners: dict[str, tuple[Runner, Sequence[Any]]], seconds: float) -> dict[str, list[float]]:
    """Items per second of each runner in each round, the runners alternating within ``seconds`` in total.

    A runner handles one batch of its inputs per call; batches cycle through the
    inputs.  Reporting the median over rounds, and ratios of the same round, keeps
    a machine whose load changes during the run from favouring one side.
    """
    slot = seconds / (ROUNDS * len(runners))
    batched = {name: [items[i:i + BATCH] for i in range(0, len(items), BATCH)]
               for name, (_, items) in runners.items()}
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for name, (run, _) in runners.items():  # warm-up: caches, lazy imports
        run(batched[name][0])
    for _ in range(ROUNDS):
        for name, (run, _) in runners.items():
            batches = batched[name]
            count = index = 0
            start = now = time.perf_counter()
            deadline = start + slot
            while now < deadline:
                batch = batches[index]
                run(batch)
                count += len(batch)
                index = (index + 1) % len(batches)
                now = time.perf_counter()
            rates[name].append(count / (now - start))
    return rates


def _summary(rates: dict[str, list[float]], baseline: str = "baseline") -> tuple[dict[str, float], dict[str, float]]:
    """Median rate of each runner, and median over rounds of its rate relative to the baseline's."""
    medians = {name: statistics.median(values) for name, values in rates.items()}
    ratios = {name: statistics.median(r / b for r, b in zip(values, rates[baseline]))
              for name, values in rates.items() if name != baseline}
    return medians, ratios


def _signed_transfers(count: int) -> tuple[list[Transaction], MemoryUtxoSet]:
    """``count`` distinct signed 1-input 2-output transactions and a UTXO set holding their coins."""
    keys = [dev_secret_key(i) for i in range(16)]
    pubkeys = [coincurve.PrivateKey(k).public_key_xonly.format() for k in keys]
    coins: dict[OutPoint, Coin] = {}
    txs = []
    for i in range(count):
        owner = i % len(keys)
        outpoint = OutPoint(hashlib.sha256(b"bench coin %d" % i).digest(), i % 3)
        amount = 10_000_000 + i
        coins[outpoint] = Coin(amount, pubkeys[owner], 1, False)
        outputs = [TxOut(amount // 3, pubkeys[(owner + 1) % len(keys)]),
                   TxOut(amount - amount // 3 - 1_000, pubkeys[owner])]
        txs.append(sign_transaction([(outpoint, keys[owner])], outputs, aux32=bytes(32)))
    return txs, MemoryUtxoSet(coins)


def bench_verify(seconds: float = DEFAULT_SECONDS, *, transactions: int = 2000,
                 params: ChainParams = REGTEST) -> dict[str, Any]:
    """Transactions validated per second against raw coincurve Schnorr verifies per second."""
    txs, view = _signed_transfers(transactions)
    height = 2  # the coins are confirmed at height 1 and are not coinbases: no maturity applies
    verifies = []
    for tx in txs:
        coin = view.get_coin(tx.inputs[0].prev)
        verifies.append((coincurve.PublicKeyXOnly(coin.pubkey), tx.inputs[0].signature,
                         sighash(tx.sighash_digest(), 0)))
    raws = [tx.raw for tx in txs]

    def validate(batch: Sequence[Transaction]) -> None:
        for tx in batch:
            check_transaction(tx, params)
            check_tx_inputs(tx, view, height, params)

    def parse_and_validate(batch: Sequence[bytes]) -> None:
        for raw in batch:
            tx = Transaction.parse(raw)
            check_transaction(tx, params)
            check_tx_inputs(tx, view, height, params)

    def baseline(batch: Sequence[tuple[coincurve.PublicKeyXOnly, bytes, bytes]]) -> None:
        for key, signature, message in batch:
            key.verify(signature, message)

    if not all(key.verify(sig, msg) for key, sig, msg in verifies):
        raise RuntimeError("benchmark transactions carry invalid signatures")
    validate(txs)  # every transaction is valid (raises otherwise), so the figures measure the success path
    rates, ratios = _summary(_measure({"validate": (validate, txs), "parse_and_validate": (parse_and_validate, raws),
                                       "baseline": (baseline, verifies)}, seconds))
    return {
        "benchmark": "verify",
        "seconds": seconds,
        "transactions": len(txs),
        "tx_per_second": round(rates["validate"], 1),
        "parse_and_check_tx_per_second": round(rates["parse_and_validate"], 1),
        "baseline_verifies_per_second": round(rates["baseline"], 1),
        "ratio": round(ratios["validate"], 3),
        "parse_and_check_ratio": round(ratios["parse_and_validate"], 3),
        "goal_ratio": VERIFY_GOAL_RATIO,
    }


def _sample_headers(count: int) -> list[bytes]:
    """``count`` distinct 80-byte headers (any 80 bytes are a header)."""
    return [hashlib.sha512(b"bench header %d" % i).digest() + bytes(16) for i in range(count)]


def bench_header_hash(seconds: float = DEFAULT_SECONDS, *, headers: int = 1000) -> dict[str, Any]:
    """Header hashes per second through the consensus code against a plain hashlib loop."""
    raws = _sample_headers(headers)

    def consensus_hash(batch: Sequence[bytes]) -> None:
        for raw in batch:
            hash_header(raw)

    def parse_and_hash(batch: Sequence[bytes]) -> None:
        for raw in batch:
            BlockHeader.parse(raw).hash

    def baseline(batch: Sequence[bytes]) -> None:
        for raw in batch:
            hashlib.sha256(hashlib.sha256(raw).digest()).digest()

    if any(hash_header(r) != BlockHeader.parse(r).hash for r in raws):
        raise RuntimeError("hash_header and BlockHeader.hash disagree")
    rates, ratios = _summary(_measure({"hash_header": (consensus_hash, raws), "parse_hash": (parse_and_hash, raws),
                                       "baseline": (baseline, raws)}, seconds))
    return {
        "benchmark": "header_hash",
        "seconds": seconds,
        "headers": len(raws),
        "hash_header_per_second": round(rates["hash_header"], 1),
        "parse_hash_per_second": round(rates["parse_hash"], 1),
        "baseline_hashes_per_second": round(rates["baseline"], 1),
        "ratio": round(ratios["hash_header"], 3),
        "parse_hash_ratio": round(ratios["parse_hash"], 3),
        "goal_ratio": HASH_GOAL_RATIO,
    }


BENCHMARKS: dict[str, Callable[..., dict[str, Any]]] = {
    "verify": bench_verify,
    "header_hash": bench_header_hash,
}


# --- mining (zcoin bench hash) -----------------------------------------------------------

BENCH_SLICE_S = 0.1  # each measured phase: short, so that the phases compared in a round run close in time
BENCH_MIN_ROUNDS = 5  # a median of same-round ratios needs a few rounds, even on a short run
BENCH_SETTLE_S = 0.01  # after a job hand-off, before a pool's window opens (see _measure_pool)
BENCH_SWITCHES = 20  # job switches timed on the N-worker pool
BENCH_READY_TIMEOUT_S = 30.0  # spawning workers on a loaded machine
NO_HIT_TARGET = 1  # no hash meets it: the same per-hash work, and no worker stops at a hit


def _plain_loop(prefix: bytes, target: int, seconds: float, sha256: Any = hashlib.sha256) -> tuple[int, float]:
    """A loop in this process, no pool: midstate copy + update(nonce) + second SHA-256 + compare.

    Returns (hashes, seconds).  With ``hashlib.sha256`` it is the benchmark's
    baseline; with ``_SHA256`` it is exactly a worker's per-nonce work.
    """
    target_be = target.to_bytes(32, "big")
    top = target_be[0]
    pack = _NONCE.pack
    copy = sha256(prefix).copy
    hashes = found = base = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for nonce in range(base, base + CHECK_INTERVAL_HASHES):
            h = copy()
            h.update(pack(nonce))
            digest = sha256(h.digest()).digest()
            if digest[31] <= top and digest[::-1] <= target_be:
                found += 1
        base = (base + CHECK_INTERVAL_HASHES) % NONCE_SPACE
        hashes += CHECK_INTERVAL_HASHES
    return hashes, time.perf_counter() - start


def _plain_child(conn: Any, prefix: bytes, target: int) -> None:
    """A process of :class:`_PlainProcesses`: runs the workers' kernel for the seconds it is sent."""
    while (seconds := conn.recv()) is not None:
        conn.send(_plain_loop(prefix, target, seconds, _SHA256))


class _PlainProcesses:
    """Processes that run the plain kernel loop on command, no pool around it: how the machine
    itself scales from one busy process to N (a host may not give N virtual CPUs N cores' work)."""

    def __init__(self, count: int, prefix: bytes, target: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.conns, self.procs = [], []
        for _ in range(count):
            ours, theirs = context.Pipe()
            proc = context.Process(target=_plain_child, args=(theirs, prefix, target), daemon=True)
            proc.start()
            self.conns.append(ours)
            self.procs.append(proc)

    def measure(self, phase: _Phase, count: int, seconds: float) -> None:
        """``count`` of the processes run ``seconds`` at once; their summed rate goes to ``phase``."""
        pids = [proc.pid for proc in self.procs[:count]]
        cpu, machine = _cpu_seconds(pids), _machine_cpu_seconds()
        for conn in self.conns[:count]:
            conn.send(seconds)
        results = [conn.recv() for conn in self.conns[:count]]
        elapsed = max(e for _, e in results)
        rate = sum(h / e for h, e in results)
        phase.add(round(rate * elapsed), elapsed, _cpu_seconds(pids) - cpu, _machine_cpu_seconds() - machine)

    def close(self) -> None:
        for conn in self.conns:
            conn.send(None)
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def __enter__(self) -> _PlainProcesses:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wait_switched(pool: MiningPool, timeout_s: float) -> None:
    """Wait until every worker of ``pool`` acknowledged its current job (or idling)."""
    deadline = time.monotonic() + timeout_s
    while pool.switched_workers < pool.size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{pool.size - pool.switched_workers} mining workers did not switch")
        wait([pool], min(remaining, 0.5))
        pool.poll_results()


def _sleep_polling(pool: MiningPool, seconds: float) -> None:
    """Sleep ``seconds``, waking only when ``pool`` has results (none come on :data:`NO_HIT_TARGET`)."""
    deadline = time.perf_counter() + seconds
    while (remaining := deadline - time.perf_counter()) > 0:
        wait([pool], remaining)
        pool.poll_results()


def _cpu_seconds(pids: list[int | None]) -> float:
    """CPU time the processes ``pids`` have used (Linux ``/proc``; 0.0 where unreadable)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def _machine_cpu_seconds() -> float:
    """CPU time every process of the machine has used since boot (Linux ``/proc/stat``; 0.0 elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(field) for field in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    # user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait; the
    # guest fields are already inside user and nice.
    return sum(fields[:3] + fields[5:8]) / os.sysconf("SC_CLK_TCK")


class _Phase:
    """One measured subject over the rounds: its rate in each round, and CPU and wall time in total."""

    def __init__(self) -> None:
        self.rates: list[float] = []
        self.hashes = 0
        self.seconds = 0.0
        self.cpu = 0.0  # the subject's CPU: the workers', or this process's for a loop
        self.bench_cpu = 0.0  # this process's CPU while it waits on a pool
        self.machine_cpu = 0.0  # every process's CPU over the same windows
        self.worker_hashes: list[int] = []  # per worker, for a pool

    def add(self, hashes: int, seconds: float, cpu: float, machine_cpu: float, bench_cpu: float = 0.0) -> None:
        self.rates.append(hashes / seconds)
        self.hashes += hashes
        self.seconds += seconds
        self.cpu += cpu
        self.bench_cpu += bench_cpu
        self.machine_cpu += machine_cpu

    @property
    def total_rate(self) -> float:
        return self.hashes / self.seconds

    def other_cores(self) -> float | None:
        """Cores that other processes (not the subject, not this process) used during the windows."""
        if not self.machine_cpu:
            return None
        return max(0.0, (self.machine_cpu - self.cpu - self.bench_cpu) / self.seconds)

    def round_ratios(self, other: _Phase) -> list[float]:
        """This rate / ``other``'s rate, round by round."""
        return [a / b for a, b in zip(self.rates, other.rates, strict=True)]

    def ratio_to(self, other: _Phase, factor: float = 1.0) -> float:
        """Median over rounds of this rate / (``other``'s rate in the same round x ``factor``)."""
        return median(r / factor for r in self.round_ratios(other))


def _measure_loop(phase: _Phase, prefix: bytes, target: int, seconds: float, sha256: Any) -> None:
    """One slice of :func:`_plain_loop` in this process, recorded in ``phase``."""
    cpu, machine = time.process_time(), _machine_cpu_seconds()
    hashes, elapsed = _plain_loop(prefix, target, seconds, sha256)
    phase.add(hashes, elapsed, time.process_time() - cpu, _machine_cpu_seconds() - machine)


def _measure_pool(phase: _Phase, pool: MiningPool, job: MiningJob, seconds: float) -> list[int]:
    """Hashes per worker while ``pool`` searches ``job`` for ``seconds``; rate and CPU go to ``phase``.

    The window opens :data:`BENCH_SETTLE_S` after every worker acknowledged the
    job: a worker adds to its counter every ``CHECK_INTERVAL_HASHES`` hashes, so
    the counters then lag the work by the same amount on average at both ends
    of the window (opened at once, the window would count the hashes done
    before it and drop those after it).  It closes with every worker idle
    again: the pool measured next (or the loop) never shares the cores with
    workers still finishing this job.
    """
    pool.submit(job)
    _wait_switched(pool, BENCH_READY_TIMEOUT_S)
    _sleep_polling(pool, BENCH_SETTLE_S)
    pids = pool.pids()
    own = time.process_time()
    first, cpu, machine = pool.hash_counts(), _cpu_seconds(pids), _machine_cpu_seconds()
    start = time.perf_counter()
    _sleep_polling(pool, seconds)
    elapsed = time.perf_counter() - start
    last, cpu, machine = pool.hash_counts(), _cpu_seconds(pids) - cpu, _machine_cpu_seconds() - machine
    own = time.process_time() - own
    pool.cancel()
    _wait_switched(pool, BENCH_READY_TIMEOUT_S)
    counts = [b - a for a, b in zip(first, last, strict=True)]
    phase.add(sum(counts), elapsed, cpu, machine, own)
    phase.worker_hashes = [a + b for a, b in zip(phase.worker_hashes or [0] * len(counts), counts, strict=True)]
    return counts


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def bench_hash(workers: int | None = None, seconds: float = 5.0) -> dict:
    """Hash rate of the pool with 1 and ``workers`` workers against plain in-process loops.

    Four measurements alternate in rounds of short slices over about
    ``seconds`` (at least :data:`BENCH_MIN_ROUNDS` rounds; every other round
    runs them in reverse order).  Rates are medians over the rounds and ratios
    medians of ratios taken in the same round, as in :func:`_summary`: other
    load on a shared machine comes in bursts, and a burst falls unevenly on
    the phases (the 1-worker pool and the loops leave a core free to absorb
    it, a pool with a worker per core does not), so a ratio of totals moves
    with the few slices a burst hit.  The job is the local network's genesis
    header with a target no hash meets (:data:`NO_HIT_TARGET`): a worker stops
    at its first hit, and a hit would cut its measurement short.  Reported:

    - ``baseline_hashes_per_second``: the plain hashlib midstate loop in this
      process (:func:`_plain_loop` with ``hashlib.sha256``, i.e. OpenSSL);
    - ``kernel_hashes_per_second``: the same loop with the hash type the
      workers use (:data:`_SHA256`): a worker's exact work without the pool;
    - ``hashes_per_second``: the ``workers``-worker pool, from its own
      counters; ``per_worker_hashes_per_second`` over all its windows;
    - ``hashes_per_second_1_worker``: the pool with one worker;
    - ``per_worker_ratio`` = 1-worker pool / baseline;
      ``pool_overhead_ratio`` = 1-worker pool / kernel (what the pool's
      counters, checks and processes cost);
    - ``scaling`` = ``workers``-worker pool / 1-worker pool, with
      ``scaling_rounds`` (each round's ratio) and ``scaling_of_totals`` (all
      hashes over all windows, N workers against one: it falls below
      ``scaling`` when a burst of other load hit some windows).  Judge it by
      ``cores_used`` (worker CPU seconds per second, ideally ``workers``),
      ``scaling_per_core`` (hashes per worker CPU second, N workers against
      one: what contention costs beyond lost CPU) and ``other_load_cores``
      (CPU of every other process on the machine during the 1-worker and the
      N-worker windows);
    - ``machine_scaling``: the same for ``workers`` plain processes running the
      kernel against one (no pool: what the machine gives, as a host may not
      give N virtual CPUs N cores' work), and ``scaling_to_machine`` = the
      median of same-round ``scaling`` / ``machine_scaling`` (1.0: the pool
      scales as well as the machine lets anything scale);
    - ``ratio`` = ``hashes_per_second`` / (baseline x ``workers``): the whole
      pool against ideal scaling of the plain loop;
    - ``switch_latency_ms``: from :meth:`MiningPool.submit` of a new job while
      searching until every worker acknowledged it (median and max of
      ``BENCH_SWITCHES``).
    """
    workers = workers or os.cpu_count() or 1
    load_before = _load_average()
    header = LOCAL.genesis.header
    prefix = header.serialize()[:HEADER_PREFIX_BYTES]
    target = NO_HIT_TARGET
    phases = 6
    rounds = max(BENCH_MIN_ROUNDS, round(seconds / (phases * BENCH_SLICE_S)))
    slice_s = seconds / (phases * rounds)
    job_ids = iter(range(1, 1 << 62))

    def next_job() -> MiningJob:
        return MiningJob(next(job_ids), prefix, target, header.time, header.time + LOCAL.max_future_block_time_s)

    baseline, kernel, one_worker, many_workers = _Phase(), _Phase(), _Phase(), _Phase()
    one_plain, many_plain = _Phase(), _Phase()
    latencies = []
    # nice=0: measured against a loop in this process, the workers must not yield to it.
    with MiningPool(1, nice=0) as one, MiningPool(workers, nice=0) as pool, \
            _PlainProcesses(workers, prefix, target) as plain:
        measurements: list[Callable[[], object]] = [
            lambda: plain.measure(one_plain, 1, slice_s),
            lambda: plain.measure(many_plain, workers, slice_s),
            lambda: _measure_loop(baseline, prefix, target, slice_s, hashlib.sha256),
            lambda: _measure_loop(kernel, prefix, target, slice_s, _SHA256),
            lambda: _measure_pool(one_worker, one, next_job(), slice_s),
            lambda: _measure_pool(many_workers, pool, next_job(), slice_s),
        ]
        for round_ in range(rounds):
            # Every other round in reverse order: a machine speeding up or slowing down favours no phase.
            for measure in measurements if round_ % 2 == 0 else reversed(measurements):
                measure()
        for _ in range(BENCH_SWITCHES):
            before = pool.hash_counts()
            pool.submit(next_job())
            _wait_switched(pool, BENCH_READY_TIMEOUT_S)
            latencies.append(pool.switch_latency_s)
            # Let every worker get going on the job before replacing it.
            deadline = time.monotonic() + BENCH_READY_TIMEOUT_S
            while any(a - b < 2 * CHECK_INTERVAL_HASHES for a, b in zip(pool.hash_counts(), before, strict=True)):
                if time.monotonic() > deadline:
                    raise TimeoutError("mining workers stopped hashing")
                wait([pool], 0.001)
                pool.poll_results()
        pool.cancel()
    rate_many, rate_one = median(many_workers.rates), median(one_worker.rates)
    scaling_rounds, machine_rounds = many_workers.round_ratios(one_worker), many_plain.round_ratios(one_plain)
    cores_one = one_worker.cpu / one_worker.seconds
    cores_many = many_workers.cpu / many_workers.seconds
    other_one, other_many = one_worker.other_cores(), many_workers.other_cores()
    return {
        "workers": workers,
        "seconds": round(sum(p.seconds for p in (baseline, kernel, one_worker, many_workers, one_plain, many_plain)),
                         3),
        "rounds": rounds,
        "hashes_per_second": round(rate_many),
        "per_worker_hashes_per_second": [round(hashes / many_workers.seconds) for hashes in many_workers.worker_hashes],
        "hashes_per_second_1_worker": round(rate_one),
        "baseline_hashes_per_second": round(median(baseline.rates)),
        "kernel_hashes_per_second": round(median(kernel.rates)),
        "ratio": round(many_workers.ratio_to(baseline, workers), 3),
        "per_worker_ratio": round(one_worker.ratio_to(baseline), 3),
        "pool_overhead_ratio": round(one_worker.ratio_to(kernel), 3),
        "scaling": round(median(scaling_rounds), 3),
        "scaling_rounds": [round(r, 3) for r in scaling_rounds],
        "scaling_of_totals": round(many_workers.total_rate / one_worker.total_rate, 3),
        "machine_scaling": round(median(machine_rounds), 3),
        "scaling_to_machine": round(median(p / m for p, m in zip(scaling_rounds, machine_rounds, strict=True)), 3),
        "cores_used_1_worker": round(cores_one, 2),
        "cores_used": round(cores_many, 2),
        "scaling_per_core": round((many_workers.total_rate / cores_many) / (one_worker.total_rate / cores_one), 3)
        if cores_one and cores_many else None,
        "other_load_cores": {"1_worker": None if other_one is None else round(other_one, 2),
                             "n_workers": None if other_many is None else round(other_many, 2)},
        "switch_latency_ms": {"median": round(median(latencies) * 1000, 2),
                              "max": round(max(latencies) * 1000, 2)},
        "check_interval_hashes": CHECK_INTERVAL_HASHES,
        "worker_nice": 0,
        "hash_type": f"{_SHA256.__module__}.{_SHA256.__name__}",
        "cpu_count": os.cpu_count(),
        "load_average_1min": [load_before, _load_average()],  # other load skews scaling: judge by it
        "baseline": "hashlib.sha256(header[:76]) midstate; per nonce copy + update(nonce) + sha256 + compare",
    }
