"""The node core's control of its mining pool: when to search, on which template, for whom.

A part of :class:`zcoin.nodecore.NodeCore`.  The pool (``zcoin.mining.MiningPool``)
searches one job at a time; this decides which, following the miner's mode
(:class:`zcoin.config.MiningMode`):

- ``continuous``: search whenever the node is synced;
- ``interval:S``: search until this miner finds a block, then rest until the next
  S-second slot begins (the pool idles: near-zero CPU), as Anvil's ``--block-time``
  and Polar's auto-mine.  Each miner's slots start at a phase drawn from its name, so
  the miners of a cluster take turns through a slot rather than all racing at its start
  (on an easy target, every miner would find a block at once and all but one be stale);
- ``on-demand``: search only while ``zcoin generate`` asks for blocks;
- ``off``: no pool at all.

``generate`` requests (Bitcoin Core's ``generatetoaddress``) are served in every
mode that has a pool, in order, each answered once its blocks are connected.  A
job is replaced when the tip changes, when the mempool pays more (at most every
``RETEMPLATE_INTERVAL_S``), when its nonces run out or when the payout changes;
results for an older job are dropped.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zcoin import wire
from zcoin.config import RETEMPLATE_INTERVAL_S
from zcoin.consensus.primitives import Block

if TYPE_CHECKING:
    from zcoin.nodecore import NodeCore


@dataclass(slots=True)
class Demand:
    """A ``generate`` request being served: blocks still to find, and the hashes found so far."""

    route: Any
    left: int
    payout: bytes | None
    hashes: list[str] = field(default_factory=list)


class MiningControl:
    """Which job the pool searches (see the module docstring)."""

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self.mode = core.config.mining
        self.demands: deque[Demand] = deque()
        self.job_id = 0
        self.templates: dict[int, object] = {}  # job id -> template, for the job being searched
        self.tip = b""  # the tip the job builds on (empty: no job)
        self.payout = b""
        self.fees = -1
        self.made_at = 0.0
        self.slots_from: float | None = None  # interval mode: when slot 0 began
        self.rest_until = 0.0

    def describe(self) -> str:
        """The mode as ``zcoin status`` shows it."""
        return str(self.mode) if self.core.miner is not None else "off"

    def demand(self, route: Any, blocks: int, payout: bytes | None) -> None:
        """Queue a ``generate`` request: ``blocks`` blocks paying ``payout`` (None: the node's key)."""
        self.demands.append(Demand(route, blocks, payout))

    def _searching(self, now: float) -> bool:
        if self.demands:
            return True  # generate mines on our tip now, synced or not (as generatetoaddress)
        if self.mode.kind == "continuous":
            return self.core.synced
        if self.mode.kind == "interval":
            return self.core.synced and now >= self.rest_until
        return False

    def on_timer(self, now: float) -> None:
        from zcoin.mining import build_template, job_from_template

        core, miner = self.core, self.core.miner
        if self.slots_from is None:
            self.slots_from = now + self._phase()
            self.rest_until = self.slots_from
        if not self._searching(now):
            if self.tip:
                miner.cancel()
                self.tip = b""
            return
        tip = core.chain.tip.hash
        payout = (self.demands[0].payout if self.demands else None) or core.config.payout
        fees_changed = now - self.made_at >= RETEMPLATE_INTERVAL_S and core.mempool.fees > self.fees
        if tip == self.tip and payout == self.payout and not fees_changed and not miner.job_exhausted:
            return
        # Every job gets its own extra nonce, so even a template identical in all else
        # (an exhausted search) has a new merkle root and fresh nonces to try.
        template = build_template(core.chain, core.mempool, payout, int(core.clock.time()),
                                  extra_nonce=(self.job_id + 1).to_bytes(8, "little"))
        self.job_id += 1
        self.templates = {self.job_id: template}
        miner.submit(job_from_template(template, self.job_id, core.params.max_future_block_time_s))
        self.tip, self.payout, self.fees, self.made_at = tip, payout, core.mempool.fees, now
        core.log.debug("mining job", job=self.job_id, height=template.height, txs=len(template.txs))

    def blocks_found(self, found: list) -> list[Block]:
        """The block the pool found for the job being searched, if any: one ends the job.

        (Each worker reports its first hit on a job; with several workers, only the first
        hit counts, the others would be siblings of the same block.)
        """
        from zcoin.mining import block_from_found

        for result in found:
            template = self.templates.get(result.job_id)
            if template is None or result.job_id != self.job_id:
                continue
            block = block_from_found(template, result)
            self.core.log.info("block found", height=template.height, block=block.hash_hex, worker=result.worker)
            if not self.demands and self.mode.kind == "interval":  # one block a slot, even one that loses a race
                now = self.core.clock.monotonic()
                slot = self.mode.interval_s
                self.rest_until = self.slots_from + (math.floor((now - self.slots_from) / slot) + 1) * slot
            self.templates = {}
            self.tip = b""  # the next timer turn makes a new job
            self.core.miner.cancel()
            return [block]
        return []

    def _phase(self) -> float:
        """Where in a slot this miner's slots begin: a fraction of the interval drawn from its name."""
        if self.mode.kind != "interval":
            return 0.0
        draw = int.from_bytes(hashlib.sha256(self.core.name.encode()).digest()[:4], "big") / 2**32
        return draw * self.mode.interval_s

    def on_block_connected(self, block: Block) -> None:
        """One of our blocks became the tip: count it for a ``generate``."""
        if self.demands:
            demand = self.demands[0]
            demand.hashes.append(block.hash_hex)
            demand.left -= 1
            if demand.left <= 0:
                self.demands.popleft()
                self.core.reply_later(demand.route, wire.encode("generated", hashes=demand.hashes,
                                                                height=self.core.chain.height))
