"""Waiting on a condition with a deadline: the one way a test waits for something to happen.

Tests never sleep a fixed time; they poll a condition until it holds, and fail
with an ``AssertionError`` naming what they waited for when it does not hold in
time.  Every timeout is multiplied by :data:`TIMEOUT_FACTOR`, read once from the
``ZCOIN_TIMEOUT_FACTOR`` environment variable (default 1.0), as Bitcoin Core's
``test_framework`` scales its timeouts with ``--timeout-factor``: a slow or
heavily shared machine runs the same tests with, say, ``ZCOIN_TIMEOUT_FACTOR=3``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

TIMEOUT_FACTOR = float(os.environ.get("ZCOIN_TIMEOUT_FACTOR", "1.0"))
DEFAULT_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.05  # Bitcoin Core's wait_until polls every 0.05 s too


def wait_until(condition: Callable[[], T], timeout: float = DEFAULT_TIMEOUT_S, what: str | None = None,
               interval: float = POLL_INTERVAL_S) -> T:
    """Poll ``condition`` every ``interval`` seconds until it returns something truthy, and return that.

    Fails with an ``AssertionError`` naming ``what`` (by default the condition's
    name) once ``timeout`` seconds, times :data:`TIMEOUT_FACTOR`, have passed.
    The condition is always called at least once, and once more at the deadline.
    An exception it raises (a process that exited, say) ends the wait at once.
    """
    limit_s = timeout * TIMEOUT_FACTOR
    deadline = time.monotonic() + limit_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            name = what or getattr(condition, "__name__", "a condition")
            raise AssertionError(f"timed out after {limit_s:g} s waiting for {name}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
