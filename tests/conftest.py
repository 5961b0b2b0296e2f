"""Pytest fixtures and hooks for the whole suite; the helpers themselves live in ``support``.

- Tests that take one of Bitcoin's vectors at a time ask for a fixture named
  after the case list (``header_case``, ``bip340_sign_case``, ...; see
  :func:`support.vectors.vector_cases`); :func:`pytest_generate_tests` turns
  each entry into its own test case with a readable id.  A missing or empty
  vector file fails the collection rather than silently producing no tests.
- :func:`mem_chain` is a fresh :class:`support.chain.Builder` at genesis.
- :func:`procs` is a :class:`support.processes.ProcessGroup` for real ``zcoin`` processes.
- Each phase's report is kept on the test item (``rep_setup``, ``rep_call``),
  so that fixtures can show the logs of a failed test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support.chain import Builder
from support.processes import ProcessGroup
from support.vectors import VECTORS_DIR, vector_cases


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize tests asking for a vector fixture, one test case per vector."""
    wanted = [name for name in metafunc.fixturenames if name.endswith("_case")]
    if not wanted:
        return
    cases = vector_cases()
    for name in wanted:
        if name not in cases:
            continue
        entries = cases[name]
        if not entries:
            raise ValueError(f"no vectors for {name}: is {VECTORS_DIR} complete?")
        metafunc.parametrize(name, [case for _, case in entries], ids=[case_id for case_id, _ in entries])


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """The directory of Bitcoin's test vectors."""
    return VECTORS_DIR


@pytest.fixture
def mem_chain() -> Builder:
    """A fresh regtest chain in memory, at genesis; the development accounts' premine is spendable."""
    return Builder()


@pytest.fixture
def procs(tmp_path, request):
    """Real ``zcoin`` processes, every one killed after the test; their logs are shown when it failed."""
    group = ProcessGroup(tmp_path)
    try:
        yield group
    finally:
        report = getattr(request.node, "rep_call", None)
        group.close(show_logs=report is not None and report.failed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item as ``rep_<phase>`` (for fixtures that show logs of failed tests)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
