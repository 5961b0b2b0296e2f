"""A sync reply checked ahead: its blocks' rules first, their signatures in the chain's signature process.

Whatever the process does, the chain ends where adding the blocks one by one with every check
on the calling thread ends: the same tip, the same UTXO set, the same block refused with the
same first bad signature named.  At the chain's level: the process answering, starting late,
and answers dropped with one reply; on the process itself (its verdicts against the sequential
verifier's): the process killed, frozen, signalled, answering out of turn, or shadowed by
another ``zcoin`` package.
"""

from __future__ import annotations

import os
import random
import signal

import msgpack
import pytest

from support.chain import NOW, Builder, open_chain
from support.payments import dev_key, premine_spend, random_spends, respend_both, with_bad_signature
from support.payments import pay as sign_payment
from zcoin.consensus import errors as E
from zcoin.consensus.primitives import Block, OutPoint
from zcoin.consensus.validation import Spend, first_invalid_signature, signature_checks
from zcoin import checksahead
from zcoin.checksahead import SignatureCheckProcess

ACCOUNTS = 8


def _reply(bad: tuple[int, int, int] | None = None, blocks: int = 5) -> tuple[Builder, list[Block]]:
    """Block 1 funds ``ACCOUNTS`` accounts; the reply is the ``blocks`` after it, 16 signatures each.

    ``bad``: (block of the reply, transaction, input) whose signature is damaged; the blocks
    after it build on it all the same.
    """
    builder = Builder()
    txs = [premine_spend(account) for account in range(ACCOUNTS)]
    builder.mine(txs)
    reply = []
    for position in range(blocks):
        txs = respend_both(txs)
        if bad is not None and bad[0] == position:
            txs[bad[1]] = with_bad_signature(txs[bad[1]], bad[2])
        reply.append(builder.mine(txs, unchecked=bad is not None and position >= bad[0]))
    return builder, reply


def _add_reply(chain, reply: list[Block]) -> list[object]:
    """Add ``reply`` as a syncing node does; per block, what became of it."""
    outcomes = []
    with chain.batch(reply):
        for block in reply:
            try:
                update = chain.add_block(block, NOW)
                outcomes.append(("orphaned",) if update.orphaned else ("connected", [b.hash for b in update.connected]))
            except E.BlockBadTx as exc:
                outcomes.append(("bad tx", exc.tx_error.code, exc.tx_error.data))
            except E.InvalidBlock as exc:
                outcomes.append(("invalid", exc.code))
    return outcomes


def _run(tmp_path, name: str, builder: Builder, reply: list[Block], *, ahead: bool, prepare=None):
    store, chain = open_chain(tmp_path / f"{name}.sqlite")
    try:
        chain.add_block(builder.blocks[1], NOW)
        if ahead:
            chain.ahead.min_signatures = 1
            if prepare is not None:
                prepare(chain.ahead.process)
        else:
            chain.ahead.min_signatures = 10**9
        outcomes = _add_reply(chain, reply)
        return outcomes, chain.tip.hash, store.utxo_snapshot(), chain.ahead.process, chain.ahead.process.running
    finally:
        store.close()


def _start_and_wait(process: SignatureCheckProcess) -> None:
    assert process.start(wait=True)


@pytest.fixture
def all_sent(monkeypatch):
    """Every job goes to the process at once: none is left for the caller to verify while it waits
    for an answer, so the process's verdicts can be counted."""
    monkeypatch.setattr(checksahead, "MAX_IN_FLIGHT", 10**6)
    return True


@pytest.mark.parametrize("every_job_sent", [False, True], ids=["shared", "all-sent"])
@pytest.mark.parametrize("bad", [None, (0, 0, 0), (2, 5, 1), (4, 7, 0)])
def test_a_reply_checked_ahead_ends_where_adding_its_blocks_one_by_one_ends(tmp_path, monkeypatch, bad,
                                                                           every_job_sent):
    if every_job_sent:
        monkeypatch.setattr(checksahead, "MAX_IN_FLIGHT", 10**6)
    builder, reply = _reply(bad)
    ahead = _run(tmp_path, "ahead", builder, reply, ahead=True, prepare=_start_and_wait)
    alone = _run(tmp_path, "alone", builder, reply, ahead=False)
    assert ahead[:3] == alone[:3]
    outcomes = ahead[0]
    if bad is None:
        assert [o[0] for o in outcomes] == ["connected"] * len(reply)
        assert ahead[1] == reply[-1].hash
        if every_job_sent:
            assert ahead[3].verified_by_process == len(reply)  # every verdict came from the process
        else:  # the first block's job goes at once and is never the caller's: the process answered it at least
            assert ahead[3].verified_by_process >= 1
    else:
        block, tx, index = bad
        assert outcomes[block] == ("bad tx", "bad-txns-signature", {"txid": reply[block].txs[tx + 1].txid_hex,
                                                                    "index": index})
        assert all(o[0] == "connected" for o in outcomes[:block])
        if every_job_sent:  # the process said "valid" for the blocks before, "not all valid" for this one
            assert ahead[3].verified_by_process == block + 1  # and no one asked after it
        # Its child is refused, and the blocks after that wait for a parent that never came in.
        assert outcomes[block + 1:] == [("invalid", "bad-prevblk"), *[("orphaned",)] * 3][:len(reply) - block - 1]
        assert ahead[1] == (reply[block - 1].hash if block else builder.blocks[1].hash)


def test_a_block_breaking_another_rule_ends_the_run_checked_ahead_and_is_judged_as_ever(tmp_path):
    builder = Builder()
    txs = [premine_spend(account) for account in range(ACCOUNTS)]
    builder.mine(txs)
    reply = []
    for position in range(4):
        txs = respend_both(txs)
        if position == 1:  # spends a coin that never existed, beside good transactions
            txs[3] = sign_payment([(OutPoint(bytes(range(32)), 0), dev_key(3))], [5_000, 5_000])
        reply.append(builder.mine(txs, unchecked=position >= 1))
    ahead = _run(tmp_path, "ahead", builder, reply, ahead=True, prepare=_start_and_wait)
    alone = _run(tmp_path, "alone", builder, reply, ahead=False)
    assert ahead[:3] == alone[:3]
    assert ahead[0][:2] == [("connected", [reply[0].hash]), ("bad tx", "bad-txns-inputs-missingorspent",
                                                             {"txid": reply[1].txs[4].txid_hex, "index": 0,
                                                              "outpoint": str(OutPoint(bytes(range(32)), 0))})]
    assert ahead[3].verified_by_process == 1  # the block before it; none after it was checked ahead


def test_answers_dropped_with_one_reply_do_not_stray_into_the_next(tmp_path, all_sent):
    builder, bad_reply = _reply((0, 2, 0))  # the first block fails: the other four are answered for nothing
    good = builder.fork(1, b"good")
    txs = list(builder.blocks[1].txs[1:])
    good_reply = []
    for _ in range(5):
        txs = respend_both(txs)
        good_reply.append(good.mine(txs))
    store, chain = open_chain(tmp_path / "chain.sqlite")
    try:
        chain.add_block(builder.blocks[1], NOW)
        chain.ahead.min_signatures = 1
        assert chain.ahead.process.start(wait=True)
        assert _add_reply(chain, bad_reply)[0][0] == "bad tx"
        before = chain.ahead.process.verified_by_process
        assert [o[0] for o in _add_reply(chain, good_reply)] == ["connected"] * len(good_reply)
        assert chain.ahead.process.verified_by_process == before + len(good_reply)
        assert chain.tip.hash == good_reply[-1].hash
        assert store.utxo_snapshot() == good.coins()
    finally:
        store.close()


def test_checks_sent_while_the_process_starts_are_verified_by_the_caller(tmp_path):
    builder, reply = _reply((3, 1, 1))
    ahead = _run(tmp_path, "ahead", builder, reply, ahead=True)  # not waited for: it is still starting
    alone = _run(tmp_path, "alone", builder, reply, ahead=False)
    assert ahead[:3] == alone[:3]
    assert ahead[0][3][0] == "bad tx"
    # It was started for the reply, and it answered nothing in time (its start takes a fifth of a second).
    assert ahead[4] and ahead[3].verified_by_process == 0


def _random_jobs(seed: int, jobs: int) -> list[list[Spend]]:
    """Blocks' worth of spends, each fewer signatures than a job holds (one job a block)."""
    rng = random.Random(seed)
    result = []
    for _ in range(jobs):
        count = rng.randrange(1, 10)
        bad = {rng.randrange(count) for _ in range(rng.choice([0, 0, 1, 2]))}
        result.append(random_spends(rng, count, bad))
    return result


def _sequential(spends: list[Spend]) -> bool:
    """The verdict of the sequential verifier on this thread."""
    return first_invalid_signature([check for tx, keys in spends for check in signature_checks(tx, keys)]) is None


def _verdicts(process: SignatureCheckProcess, jobs: list[list[Spend]]) -> list[bool]:
    submitted = [process.submit(spends) for spends in jobs]
    return [process.passed(handle) for handle in submitted]


@pytest.fixture
def process():
    process = SignatureCheckProcess(answer_timeout=2.0)
    yield process
    process.close()


def test_the_process_says_what_the_sequential_verifier_says(process, all_sent):
    assert process.start(wait=True)
    jobs = _random_jobs(3, 12)  # 15 KB in all: every job fits in the pipe at once
    assert _verdicts(process, jobs) == [_sequential(spends) for spends in jobs]
    assert {_sequential(spends) for spends in jobs} == {True, False}  # both kinds were asked
    assert process.verified_by_process == len(jobs)  # every verdict came from the process


def test_a_killed_process_is_given_up_and_the_caller_verifies_alone(process):
    assert process.start(wait=True)
    pid = process.pid
    jobs = _random_jobs(4, 12)
    submitted = [process.submit(spends) for spends in jobs[:6]]
    os.kill(pid, signal.SIGKILL)
    submitted += [process.submit(spends) for spends in jobs[6:]]
    assert [process.passed(handle) for handle in submitted] == [_sequential(spends) for spends in jobs]
    assert not process.running
    assert process.start() is False  # for good: a process that died once is not started again


def test_a_frozen_process_is_given_up_after_the_answer_timeout():
    process = SignatureCheckProcess(answer_timeout=0.3)
    try:
        assert process.start(wait=True)
        pid = process.pid
        os.kill(pid, signal.SIGSTOP)
        jobs = _random_jobs(5, 3)
        assert _verdicts(process, jobs) == [_sequential(spends) for spends in jobs]
        assert not process.running
        with pytest.raises(ProcessLookupError):  # killed and reaped, not left stopped
            os.kill(pid, 0)
    finally:
        process.close()


def test_the_process_starts_on_a_large_reply_only_and_stops_with_the_store(tmp_path):
    builder, reply = _reply(blocks=6)  # 16 signatures a block
    store, chain = open_chain(tmp_path / "chain.sqlite")
    try:
        chain.add_block(builder.blocks[1], NOW)
        chain.ahead.min_signatures = 49
        assert [o[0] for o in _add_reply(chain, reply[:3])] == ["connected"] * 3  # 48 signatures
        assert not chain.ahead.process.running
        chain.ahead.min_signatures = 48
        assert [o[0] for o in _add_reply(chain, reply[3:])] == ["connected"] * 3
        assert chain.ahead.process.running
        pid = chain.ahead.process.pid
    finally:
        store.close()
    assert not chain.ahead.process.running
    with pytest.raises(ProcessLookupError):  # gone and reaped
        os.kill(pid, 0)


def test_blocks_of_more_checks_than_the_pipes_hold_are_shared_with_the_caller(process):
    assert process.start(wait=True)
    rng = random.Random(8)
    good = random_spends(rng, 300, set())
    blocks = [good, good[:200] + random_spends(rng, 100, {97}), good[::-1], good[:130]]
    submitted = [process.submit(spends) for spends in blocks]  # 1,030 transactions: most wait to be sent
    assert [process.passed(handle) for handle in submitted] == [True, False, True, True]
    # Some jobs came back from the process, the others this thread took before they were sent.
    assert 0 < process.verified_by_process < sum(len(handle) for handle in submitted)


def test_the_process_runs_this_zcoin_not_one_in_the_working_directory(tmp_path, monkeypatch, all_sent):
    impostor = tmp_path / "zcoin"
    impostor.mkdir()
    (impostor / "__init__.py").write_text("")
    (impostor / "checksahead.py").write_text("import os\nos.write(1, b'R')\nwhile os.read(0, 65536):\n    os.write(1, b'\\x00')\n")
    monkeypatch.chdir(tmp_path)
    process = SignatureCheckProcess(answer_timeout=5.0)
    try:
        assert process.start(wait=True)
        jobs = _random_jobs(6, 4)
        assert _verdicts(process, jobs) == [_sequential(spends) for spends in jobs]
        assert process.verified_by_process == len(jobs)
    finally:
        process.close()


def test_group_signals_leave_the_process_to_its_node_which_ends_it_by_closing_the_pipe(process):
    assert process.start(wait=True)
    pid = process.pid
    for signum in (signal.SIGINT, signal.SIGTERM):  # what Ctrl-C and honcho send the whole group
        os.kill(pid, signum)
    jobs = _random_jobs(7, 3)
    assert _verdicts(process, jobs) == [_sequential(spends) for spends in jobs]
    assert process.running and process.verified_by_process > 0
    process.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_an_answer_out_of_turn_gives_the_process_up_and_the_caller_verifies_alone(process):
    assert process.start(wait=True)
    process._take(1)  # an answer with nothing sent: the pipes' framing cannot be trusted any more
    assert not process.running
    jobs = _random_jobs(9, 3)
    assert _verdicts(process, jobs) == [_sequential(spends) for spends in jobs]
    assert process.verified_by_process == 0 and process.start() is False


def test_the_process_answers_not_valid_to_a_job_whose_keys_do_not_match_its_inputs_or_that_is_malformed():
    spends = random_spends(random.Random(10), 3, set())

    def job(keys_of) -> bytes:
        return msgpack.packb([(tx.raw, keys_of(b"".join(keys))) for tx, keys in spends])

    assert checksahead._job_valid(job(lambda keys: keys))  # the well-formed job: valid
    for keys_of in (lambda keys: keys[:-1], lambda keys: keys[:-32], lambda keys: keys + bytes(32)):
        assert not checksahead._job_valid(job(keys_of))  # a key short, one too few, one too many
    assert not checksahead._job_valid(b"\xc1")  # not msgpack
    assert not checksahead._job_valid(msgpack.packb([]))  # nothing to verify
