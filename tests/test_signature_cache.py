"""The signature cache: a block of transactions the mempool took verifies none of their signatures again.

Against a real store: the pool and the chain share the cache as a node's do.  Whatever is
remembered, a block is judged as without the cache: a signature the pool never saw is
verified, and the first bad one in block order is named.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.chain import NOW, PARAMS, Builder, open_chain
from support.payments import premine_spend, random_checks, respend_both, with_bad_signature
from zcoin.consensus import errors as E
from zcoin.consensus import validation
from zcoin.consensus.validation import first_invalid_signature
from zcoin.mempool import Mempool, MempoolFull
from zcoin.sigchecks import SignatureCache

ACCOUNTS = 4


@pytest.fixture
def node(tmp_path):
    """A chain at height 1 (funding ``ACCOUNTS`` accounts), a pool sharing its cache, and the builder."""
    store, chain = open_chain(tmp_path / "chain.sqlite")
    builder = Builder()
    funding = [premine_spend(account) for account in range(ACCOUNTS)]
    chain.add_block(builder.mine(funding), NOW)
    pool = Mempool(PARAMS, signature_cache=chain.signature_cache)
    yield chain, pool, builder, funding
    store.close()


def _count_verifies(monkeypatch) -> list[int]:
    calls = [0]
    real = validation.schnorr_verify

    def counting(*args):
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(validation, "schnorr_verify", counting)
    return calls


def test_a_block_of_pool_transactions_verifies_none_of_their_signatures_again(node, monkeypatch):
    chain, pool, builder, funding = node
    txs = respend_both(funding)
    for tx in txs:
        pool.accept(tx, chain.store, chain.height)
    assert len(chain.signature_cache) == 2 * ACCOUNTS
    block = builder.mine(txs)  # the builder checks it with every rule
    verifies = _count_verifies(monkeypatch)
    update = chain.add_block(block, NOW)
    assert [b.hash for b in update.connected] == [builder.tip.hash]
    assert verifies[0] == 0 and chain.signature_cache.hits == 2 * ACCOUNTS
    assert len(chain.signature_cache) == 0  # a block uses an entry once


def test_a_block_verifies_what_the_pool_never_took(node, monkeypatch):
    chain, pool, builder, funding = node
    txs = respend_both(funding)
    for tx in txs[:1]:
        pool.accept(tx, chain.store, chain.height)
    block = builder.mine(txs)
    verifies = _count_verifies(monkeypatch)
    chain.add_block(block, NOW)
    assert chain.height == 2
    assert verifies[0] == 2 * (ACCOUNTS - 1) and chain.signature_cache.hits == 2


def test_a_block_whose_copy_of_a_pool_transaction_carries_another_signature_is_refused_naming_it(node):
    """Same inputs, outputs and message as a pool transaction, a damaged signature: not a cache hit."""
    chain, pool, builder, funding = node
    txs = respend_both(funding)
    for tx in txs:
        pool.accept(tx, chain.store, chain.height)
    bad = with_bad_signature(txs[2], 1)
    block = builder.mine(txs[:2] + [bad] + txs[3:], unchecked=True)
    with pytest.raises(E.BlockBadTx) as refused:
        chain.add_block(block, NOW)
    assert isinstance(refused.value.tx_error, E.TxBadSignature)
    assert refused.value.tx_error.data["txid"] == bad.txid_hex and refused.value.tx_error.data["index"] == 1
    assert chain.height == 1


def test_a_transaction_the_pool_refuses_after_verifying_it_leaves_nothing_in_the_cache(node):
    chain, _, _, funding = node
    small = Mempool(PARAMS, max_bytes=100, signature_cache=chain.signature_cache)
    with pytest.raises(MempoolFull):  # valid, signatures verified, then too large for the pool
        small.accept(respend_both(funding)[0], chain.store, chain.height)
    assert len(chain.signature_cache) == 0


def test_the_oldest_entries_go_first_when_the_cache_is_full():
    cache = SignatureCache(max_entries=3)
    checks = random_checks(random.Random(1), 5, set())
    cache.add(checks[:2])
    cache.add(checks[2:])
    verify = cache.verifier(first_invalid_signature)
    assert verify(checks) is None and cache.hits == 3  # the last three were remembered
    assert len(cache) == 0


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 12), st.data())
def test_a_cached_verifier_names_the_first_bad_check_as_the_plain_one_does(seed, count, data):
    rng = random.Random(seed)
    bad = set(data.draw(st.lists(st.integers(0, count - 1), max_size=3)))
    checks = random_checks(rng, count, bad)
    remembered = data.draw(st.lists(st.sampled_from(sorted(set(range(count)) - bad) or [None]), max_size=count))
    cache = SignatureCache()
    cache.add([checks[i] for i in remembered if i is not None])  # only valid ones are ever remembered
    assert cache.verifier(first_invalid_signature)(checks) == first_invalid_signature(checks)


def test_a_sync_reply_of_pool_transactions_sends_the_signature_process_none_of_them(node, monkeypatch):
    """Blocks checked ahead (a reply, as a node behind by a few blocks gets them) use the cache too."""
    chain, pool, builder, funding = node
    first = respend_both(funding)
    second = respend_both(first)
    for tx in first + second:
        pool.accept(tx, chain.store, chain.height)
    reply = [builder.mine(first), builder.mine(second)]
    chain.ahead.min_signatures = 1
    assert chain.ahead.process.start(wait=True)
    verifies = _count_verifies(monkeypatch)
    with chain.batch(reply):
        for block in reply:
            chain.add_block(block, NOW)
    assert chain.height == 3
    assert verifies[0] == 0 and chain.signature_cache.hits == 4 * ACCOUNTS
    assert chain.ahead.process.verified_by_process == 0  # nothing was sent
