"""Mining: block templates over a real chain and mempool, and the worker pool with real processes.

Pool tests start real worker processes (spawned, as the node does) and wait on
conditions with a deadline; every pool is stopped in a ``finally``.  Targets
are easy (a find every few thousand hashes) so results keep coming; the local
network's difficulty is left to the benchmark.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from pathlib import Path

import pytest
import zmq

from support.chain import MINER_PUBKEY, open_chain
from support.payments import dev_key, dev_outpoint, pay
from support.waiting import wait_until
from zcoin.bench import NO_HIT_TARGET, _measure_pool, _Phase, _PlainProcesses
from zcoin.chain import Chain
from zcoin.consensus.builders import new_template, sign_transaction, solve
from zcoin.consensus.crypto import sha256d
from zcoin.consensus.params import REGTEST, ChainParams, build_genesis, dev_secret_key
from zcoin.consensus.pow import bits_to_target, check_pow, target_to_bits
from zcoin.consensus.primitives import OutPoint, Transaction, TxOut, coinbase_height
from zcoin.consensus.validation import next_bits, retarget_window_start
from zcoin.mempool import Mempool
from zcoin.mining import (
    MSG_FOUND,
    NONCE_SPACE,
    WORKER_NICE,
    MiningJob,
    MiningPool,
    _EXHAUSTED,
    _FOUND,
    _search,
    block_from_found,
    build_template,
    job_from_template,
)

WORKERS = 2
DEADLINE_S = 15.0  # generous: spawning workers on a loaded two-core machine is slow
EASY_TARGET = 1 << 244  # one hash in 4096 wins: a steady stream of results
NEVER_TARGET = 1  # no hash meets it: pure hashing
POOL_POLL_S = 0.02  # how often a waiting test reads the pool's results
NOW = REGTEST.genesis_time + 600


# --- helpers -------------------------------------------------------------------------


@pytest.fixture
def regtest_chain(tmp_path: Path) -> Iterator[Chain]:
    _, chain = open_chain(tmp_path / "chain.sqlite", REGTEST)
    try:
        yield chain
    finally:
        chain.store.close()


@pytest.fixture
def pool() -> Iterator[MiningPool]:
    mining_pool = MiningPool(WORKERS)
    try:
        mining_pool.start()
        yield mining_pool
    finally:
        mining_pool.stop()


def dev_spend(params: ChainParams, account: int, fee: int, to: bytes = MINER_PUBKEY) -> Transaction:
    """Development account ``account`` pays its whole premine, less ``fee``, to ``to``."""
    return pay([(dev_outpoint(params, account), dev_key(account))], [params.dev_account_amount - fee], to)


def job_at(job_id: int, time_: int, target: int = EASY_TARGET) -> MiningJob:
    """A job over the regtest genesis header at ``time_``."""
    header = dataclasses.replace(REGTEST.genesis.header, time=time_)
    return MiningJob(job_id, header.serialize()[:76], target, time_, time_ + 60)


def collect(pool: MiningPool, done: Callable[[list], bool], timeout_s: float = DEADLINE_S) -> list:
    """Read ``pool``'s results until ``done(results so far)``; fail at the deadline."""
    results: list = []

    def gathered() -> bool:
        results.extend(pool.poll_results())
        return done(results)

    try:
        wait_until(gathered, timeout_s, "the pool's results", interval=POOL_POLL_S)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; got {len(results)} results") from None
    return results


def wait_serving(pool: MiningPool, condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition``, reading ``pool``'s results meanwhile (and dropping them), as a node's loop does."""
    def served() -> bool:
        pool.poll_results()
        return condition()

    wait_until(served, DEADLINE_S, what, interval=POOL_POLL_S)


def process_gone(pid: int) -> bool:
    """True if ``pid`` has exited (gone, or a zombie its new parent has not reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


# --- templates -----------------------------------------------------------------------


def test_mined_block_connects_and_pays_subsidy_plus_fees(regtest_chain: Chain, pool: MiningPool) -> None:
    chain = regtest_chain
    mempool = Mempool(REGTEST)
    parent = dev_spend(REGTEST, 0, fee=1_000, to=REGTEST.dev_pubkey(1))
    child = sign_transaction([(OutPoint(parent.txid, 0), dev_secret_key(1))],
                             [TxOut(parent.outputs[0].amount - 300, MINER_PUBKEY)])
    rich = dev_spend(REGTEST, 2, fee=50_000)
    for tx in (parent, child, rich):
        mempool.accept(tx, chain.store, chain.height)
    fees = 1_000 + 300 + 50_000

    template = build_template(chain, mempool, MINER_PUBKEY, NOW)
    assert template.txs == [rich, parent, child]  # best fee rate first, the child after its parent
    assert template.reward == REGTEST.subsidy(1) + fees
    assert (template.height, template.bits, template.time) == (1, REGTEST.genesis_bits, NOW)

    pool.submit(job_from_template(template, 7, REGTEST.max_future_block_time_s))
    found = collect(pool, lambda r: len(r) >= 1)[0]
    assert found.job_id == 7
    block = block_from_found(template, found)

    update = chain.add_block(block, NOW)
    assert [b.hash for b in update.connected] == [block.hash]
    assert chain.tip.hash == block.hash and chain.height == 1
    coinbase = block.txs[0]
    assert coinbase_height(coinbase) == 1
    assert sum(out.amount for out in coinbase.outputs) == REGTEST.subsidy(1) + fees
    assert chain.store.get_coin(OutPoint(coinbase.txid, 0)).amount == REGTEST.subsidy(1) + fees
    mempool.update_for_chain(update.connected, update.disconnected, chain.store, chain.height)
    assert len(mempool) == 0


def test_template_fills_the_block_by_fee_rate_within_its_size(tmp_path: Path) -> None:
    txs = [dev_spend(REGTEST, i, fee=1_000 * (i + 1)) for i in range(8)]
    empty = new_template(REGTEST, REGTEST.genesis_hash, 1, REGTEST.genesis_bits, NOW, MINER_PUBKEY)
    room_for_three = empty.block(0).size + sum(tx.size + 3 for tx in txs[-3:]) + 20  # + less than a fourth
    params = dataclasses.replace(REGTEST, max_block_bytes=room_for_three)
    _, chain = open_chain(tmp_path / "chain.sqlite", params)
    try:
        mempool = Mempool(params)
        for tx in txs:
            mempool.accept(tx, chain.store, chain.height)
        template = build_template(chain, mempool, MINER_PUBKEY, NOW)
        assert template.txs == txs[:-4:-1]  # the three best fee rates
        assert template.reward == params.subsidy(1) + 8_000 + 7_000 + 6_000
        block = solve(template, max_tries=1 << 20)
        assert block.size <= params.max_block_bytes
        chain.add_block(block, NOW)
        assert chain.tip.hash == block.hash
    finally:
        chain.store.close()


def test_template_time_is_after_the_median_time_past(regtest_chain: Chain) -> None:
    chain = regtest_chain
    mempool = Mempool(REGTEST)
    future = REGTEST.genesis_time + 3_000
    for height in range(1, 4):
        block = solve(build_template(chain, mempool, MINER_PUBKEY, future + height), max_tries=1 << 20)
        chain.add_block(block, future + height)
    early = build_template(chain, mempool, MINER_PUBKEY, REGTEST.genesis_time, extra_nonce=b"roll")
    assert early.time == chain.next_block_context().median_time_past + 1
    assert early.coinbase().inputs[0].signature == (4).to_bytes(4, "little") + b"roll"
    late = build_template(chain, mempool, MINER_PUBKEY, future + 100)
    assert late.time == future + 100
    with pytest.raises(ValueError):
        build_template(chain, mempool, MINER_PUBKEY, future, extra_nonce=bytes(97))


# --- the pool ------------------------------------------------------------------------


class _Sink:
    """Stands in for the results pipe of a worker run in this process."""

    def __init__(self) -> None:
        self.messages: list[tuple] = []

    def send(self, message: tuple) -> None:
        self.messages.append(message)


def test_worker_search_reports_its_first_winning_nonce_or_rolls_the_time_then_gives_up() -> None:
    slice_size, slot = 4096, 3  # a worker's share of the nonces, made small enough to spend here
    low = slot * slice_size
    for target in (1 << 250, NEVER_TARGET):
        job = job_at(1, REGTEST.genesis_time, target=target)
        message = ("job", 5, job.header_prefix, job.target, job.time, job.time + 1)
        generation = dataclasses.make_dataclass("Generation", [("value", int)])(5)
        hashes, sink = [0] * (NONCE_SPACE // slice_size), _Sink()

        outcome = _search(message, slot, NONCE_SPACE // slice_size, generation, hashes, sink, 1024, os.getppid())

        wins = [(t, nonce) for t in (job.time, job.time + 1) for nonce in range(low, low + slice_size)
                if job.meets_target(t, nonce)]
        if target == NEVER_TARGET:
            assert outcome == _EXHAUSTED and not wins and not sink.messages  # both times of the window spent
            assert hashes[slot] == 2 * slice_size
        else:
            (t, nonce) = wins[0]
            assert outcome == _FOUND and sink.messages == [(MSG_FOUND, 5, slot, nonce, t)]
            assert t == job.time and hashes[slot] == nonce - low + 1


def test_each_worker_reports_its_first_hit_then_stops_and_wakes_a_zmq_poller(pool: MiningPool) -> None:
    poller = zmq.Poller()
    poller.register(pool, zmq.POLLIN)
    for job_id in (1, 2):  # a hit ends a worker's search of its job; the next job searches again
        job = job_at(job_id, REGTEST.genesis_time)
        pool.submit(job)
        results: list = []
        deadline = time.monotonic() + DEADLINE_S
        while len(results) < WORKERS:
            assert time.monotonic() < deadline, f"{len(results)} results of job {job_id}"
            if dict(poller.poll(100)).get(pool.fileno()):  # pyzmq names a non-socket by its descriptor
                results += pool.poll_results()
        assert sorted(f.worker for f in results) == list(range(WORKERS))
        for found in results:
            assert found.job_id == job_id
            raw = job.header_bytes(found.time, found.nonce)
            assert int.from_bytes(sha256d(raw), "little") <= EASY_TARGET
        assert_silent(pool)


def assert_silent(pool: MiningPool) -> None:
    """No result and no hash from any worker for a while (an observation window, not a wait for a condition)."""
    counts = pool.hash_counts()
    observed_until = time.monotonic() + 0.3
    while time.monotonic() < observed_until:
        wait([pool], 0.05)
        assert pool.poll_results() == []
    assert pool.hash_counts() == counts


def test_new_job_cancels_the_old_search(pool: MiningPool) -> None:
    pool.submit(job_at(1, REGTEST.genesis_time, NEVER_TARGET))
    wait_serving(pool, lambda: pool.switched_workers == WORKERS, "every worker on job 1")
    first = pool.hash_counts()
    wait_serving(pool, lambda: all(n > f for n, f in zip(pool.hash_counts(), first)), "every worker searching")

    job_b = job_at(2, REGTEST.genesis_time + 1)
    pool.submit(job_b)
    # Every worker must switch: a result for B comes from each of them, and nothing of A.
    results = collect(pool, lambda r: len(r) == WORKERS)
    assert sorted(f.worker for f in results) == list(range(WORKERS))
    assert {f.job_id for f in results} == {2}
    assert all(job_b.meets_target(f.time, f.nonce) for f in results)
    assert pool.switched_workers == WORKERS

    pool.submit(job_at(3, REGTEST.genesis_time + 2, NEVER_TARGET))
    pool.cancel()
    wait_serving(pool, lambda: pool.switched_workers == WORKERS, "every worker to go idle")  # all acknowledged
    assert_silent(pool)


def test_killed_worker_is_replaced_and_mining_continues(pool: MiningPool) -> None:
    pool.submit(job_at(1, REGTEST.genesis_time, NEVER_TARGET))
    wait_serving(pool, lambda: pool.switched_workers == WORKERS, "every worker on job 1")
    victim = pool.pids()[0]
    os.kill(victim, signal.SIGKILL)

    wait_serving(pool, lambda: pool.pids()[0] not in (None, victim), "a new worker 0")
    assert pool.restarts == 1
    assert process_gone(victim)
    counts = pool.hash_counts()
    wait_serving(pool, lambda: pool.hash_counts()[0] > counts[0], "the new worker 0 searching the current job")
    pool.submit(job_at(2, REGTEST.genesis_time))
    results = collect(pool, lambda r: any(f.worker == 0 for f in r))  # the new process finds nonces
    assert {f.job_id for f in results} == {2}
    assert pool.pids()[1] is not None


def test_hash_rates_per_worker_and_in_total(pool: MiningPool) -> None:
    pool.submit(job_at(1, REGTEST.genesis_time, NEVER_TARGET))
    wait_serving(pool, lambda: all(count > 0 for count in pool.hash_counts()), "every worker hashing")
    rates = pool.hashrates()
    assert len(rates["workers"]) == WORKERS
    assert all(rate > 0 for rate in rates["workers"])
    assert rates["total"] == pytest.approx(sum(rates["workers"]))
    assert 0 < rates["hashes"] <= sum(pool.hash_counts())
    # Workers run niced so that the node's own loop gets the CPU when it needs it.
    expected_nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICE)
    assert all(os.getpriority(os.PRIO_PROCESS, pid) == expected_nice for pid in pool.pids())


def test_benchmark_window_counts_every_worker_and_closes_with_the_pool_idle(pool: MiningPool) -> None:
    phase = _Phase()
    counts = _measure_pool(phase, pool, job_at(1, REGTEST.genesis_time, NEVER_TARGET), 0.2)
    assert len(counts) == WORKERS and all(count > 0 for count in counts)
    assert phase.worker_hashes == counts and phase.hashes == sum(counts) and phase.seconds >= 0.2
    # Every worker acknowledged idling, so none still hashes into the next phase's window.
    assert pool.job is None and pool.switched_workers == WORKERS
    idle = pool.hash_counts()
    time.sleep(0.05)
    assert pool.hash_counts() == idle


def test_benchmark_scaling_is_the_median_of_same_round_ratios() -> None:
    # A burst of other load that halves one N-worker window moves a ratio of totals, not the median.
    one, many = _Phase(), _Phase()
    for hashes_one, hashes_many in [(100, 200), (100, 200), (100, 100), (100, 200), (100, 200)]:
        one.add(hashes_one, 1.0, cpu=1.0, machine_cpu=1.0)
        many.add(hashes_many, 1.0, cpu=2.0, machine_cpu=2.5, bench_cpu=0.1)
    assert many.ratio_to(one) == 2.0
    assert many.total_rate / one.total_rate == pytest.approx(1.8)
    assert many.other_cores() == pytest.approx((12.5 - 10.0 - 0.5) / 5)


def test_the_machine_baseline_runs_the_kernel_in_as_many_processes_and_reaps_them() -> None:
    one, both = _Phase(), _Phase()
    with _PlainProcesses(2, REGTEST.genesis.header.serialize()[:76], NO_HIT_TARGET) as plain:
        plain.measure(one, 1, 0.1)
        plain.measure(both, 2, 0.1)
        procs = list(plain.procs)
    assert one.hashes > 0 and both.hashes > 0 and len(both.rates) == 1 and both.seconds >= 0.1
    assert not any(proc.is_alive() for proc in procs)


def test_stop_reaps_every_worker_and_is_idempotent() -> None:
    mining_pool = MiningPool(WORKERS)
    try:
        assert mining_pool.context.get_start_method() == "spawn"  # no ZeroMQ state crosses a fork
        mining_pool.start()
        mining_pool.submit(job_at(1, REGTEST.genesis_time, REGTEST.pow_limit))  # floods results
        pids = mining_pool.pids()
        collect(mining_pool, lambda r: len(r) >= 1)
    finally:
        mining_pool.stop()
    mining_pool.stop()
    assert all(process_gone(pid) for pid in pids)
    assert mining_pool.poll_results() == []


def test_workers_exit_when_the_node_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "node.py"
    script.write_text(textwrap.dedent(f"""
        import time
        from multiprocessing.connection import wait
        from zcoin.mining import MiningJob, MiningPool

        if __name__ == "__main__":
            pool = MiningPool({WORKERS})
            pool.start()
            pool.submit(MiningJob(1, bytes(76), 1, 0, 60))
            while pool.switched_workers < pool.size:
                wait([pool], 0.1)
                pool.poll_results()
            print(*pool.pids(), flush=True)
            time.sleep(60)
    """))
    node = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    pids: list[int] = []
    try:
        assert wait([node.stdout], DEADLINE_S), "the node did not start its pool"
        pids = [int(pid) for pid in node.stdout.readline().split()]
        assert len(pids) == WORKERS
        node.kill()
        node.wait(DEADLINE_S)
        wait_until(lambda: all(process_gone(pid) for pid in pids), DEADLINE_S, "the orphaned workers to exit")
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        node.stdout.close()
        for pid in pids:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)


# --- difficulty ----------------------------------------------------------------------


def easy_retarget_params() -> ChainParams:
    """Local-like rules (retarget every 4 blocks toward 5 s) with targets easy enough to solve at once."""
    fields = dict(name="retarget", pow_limit_bits=0x207FFFFF, genesis_bits=target_to_bits(1 << 248),
                  genesis_time=REGTEST.genesis_time, target_spacing_s=5, retarget_interval=4, max_adjust=4,
                  coinbase_maturity=10)
    draft = ChainParams(genesis_nonce=0, **fields)
    header = build_genesis(draft, 0).header.serialize()[:76]
    target = bits_to_target(draft.genesis_bits)
    nonce = next(n for n in range(1 << 20)
                 if int.from_bytes(sha256d(header + n.to_bytes(4, "little")), "little") <= target)
    params = ChainParams(genesis_nonce=nonce, **fields)
    assert check_pow(params.genesis.header, params.pow_limit)
    return params


@pytest.mark.parametrize(("spacing_s", "harder"), [(1, True), (30, False)])
def test_difficulty_retargets_through_the_chain(tmp_path: Path, spacing_s: int, harder: bool) -> None:
    params = easy_retarget_params()
    _, chain = open_chain(tmp_path / "chain.sqlite", params)
    try:
        mempool = Mempool(params)
        times = {0: params.genesis_time}
        for height in range(1, params.retarget_interval + 1):
            template = build_template(chain, mempool, MINER_PUBKEY, params.genesis_time + height * spacing_s)
            window_start = retarget_window_start(params, height)
            prev_bits = chain.tip.header.bits
            assert template.bits == (prev_bits if window_start is None else
                                     next_bits(params, height, prev_bits, times[height - 1], times[window_start]))
            chain.add_block(solve(template, max_tries=1 << 20), template.time)  # full validation, bits included
            assert chain.height == height
            times[height] = template.time
        new_target = bits_to_target(chain.tip.header.bits)
        old_target = bits_to_target(params.genesis_bits)
        # Blocks every 1 s (or 30 s) against a 5 s target: harder (easier), by at most max_adjust.
        assert (new_target < old_target) == harder
        assert old_target // params.max_adjust <= new_target <= old_target * params.max_adjust
    finally:
        chain.store.close()
