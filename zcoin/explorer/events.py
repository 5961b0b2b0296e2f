"""The explorer's memory of recent blocks and its live stream.

- :class:`BlockTree`: every block the explorer knows at the last
  :data:`TREE_HEIGHTS_KEPT` heights, all branches, linked by their parents, each
  with the node that announced it first: what the page draws forks from.
- :class:`EventHub`: fans each event out to every ``/api/events`` stream (Server-Sent
  Events), encoded once; ``tx`` events are rate-capped per stream, and a stream too
  slow to keep up misses events rather than holding memory.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

TREE_HEIGHTS_SHOWN = 12  # /api/cluster's tree: every block known at the last 12 heights
TREE_HEIGHTS_KEPT = 64
TX_EVENTS_PER_S = 20  # per stream: a page needs a sample of the transactions, not every one
STREAM_QUEUE_EVENTS = 1000  # events waiting for a slow stream before it misses some


# --- the block tree -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TreeBlock:
    """A block the explorer knows: where it sits, who announced it first and when."""

    hash: bytes
    height: int
    prev: bytes
    first_seen_by: str | None  # None: fetched, its announcement not seen
    time: float  # wall time the explorer learned of it
    timestamp: int  # the header's time
    tx_count: int


class BlockTree:
    """The blocks at the last :data:`TREE_HEIGHTS_KEPT` heights, every branch, linked by their parents."""

    def __init__(self) -> None:
        self.blocks: dict[bytes, TreeBlock] = {}
        self.best_height = -1

    def add(self, block: TreeBlock) -> bool:
        """Keep ``block`` (the first record of a hash wins); False when it was known or is too old to keep."""
        if block.hash in self.blocks or block.height <= self.best_height - TREE_HEIGHTS_KEPT:
            return False
        self.blocks[block.hash] = block
        if block.height > self.best_height:
            self.best_height = block.height
            floor = block.height - TREE_HEIGHTS_KEPT
            for old in [b.hash for b in self.blocks.values() if b.height <= floor]:
                del self.blocks[old]
        return True

    def ancestor_at(self, block_hash: bytes, height: int) -> bytes | None:
        """The hash of ``block_hash``'s ancestor (or itself) at ``height``; None when the tree cannot tell."""
        block = self.blocks.get(block_hash)
        while block is not None and block.height > height:
            block = self.blocks.get(block.prev)
        return block.hash if block is not None and block.height == height else None

    def common_ancestor(self, a: bytes, b: bytes) -> TreeBlock | None:
        """The last block two branches share, when the tree holds both back to it."""
        x, y = self.blocks.get(a), self.blocks.get(b)
        while x is not None and y is not None and x.hash != y.hash:
            if x.height >= y.height:
                x = self.blocks.get(x.prev)
            else:
                y = self.blocks.get(y.prev)
        return x if x is not None and y is not None else None

    def locator(self, limit: int = 32) -> dict[bytes, int]:
        """Known hashes, highest first, with their heights: what ``get_headers`` starts after."""
        best = sorted(self.blocks.values(), key=lambda b: b.height, reverse=True)[:limit]
        return {b.hash: b.height for b in best}

    def recent(self, heights: int = TREE_HEIGHTS_SHOWN) -> list[TreeBlock]:
        """Every block at the last ``heights`` heights, lowest first."""
        floor = self.best_height - heights
        return sorted((b for b in self.blocks.values() if b.height > floor), key=lambda b: (b.height, b.time))


# --- the live stream ------------------------------------------------------------------------


class Subscription:
    """One ``/api/events`` stream: its queue of encoded events and its budget of ``tx`` events."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(STREAM_QUEUE_EVENTS)
        self.tx_tokens = float(TX_EVENTS_PER_S)
        self.refilled = time.monotonic()

    def offer(self, text: str | None) -> None:
        """Queue an event (None ends the stream); a stream too slow to keep up misses events."""
        if self.queue.full():
            if text is not None:
                return
            self.queue.get_nowait()  # the end must get through
        self.queue.put_nowait(text)

    def take_tx_token(self, now: float) -> bool:
        """A token bucket: at most :data:`TX_EVENTS_PER_S` ``tx`` events a second."""
        self.tx_tokens = min(float(TX_EVENTS_PER_S), self.tx_tokens + (now - self.refilled) * TX_EVENTS_PER_S)
        self.refilled = now
        if self.tx_tokens < 1.0:
            return False
        self.tx_tokens -= 1.0
        return True


class EventHub:
    """Fans each event out to every stream, encoded once as a Server-Sent Events message."""

    def __init__(self) -> None:
        self.subscriptions: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        sub = Subscription()
        self.subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscriptions.discard(sub)

    def publish(self, event: str, data: dict) -> None:
        if self.subscriptions:
            text = f"event: {event}\ndata: {json.dumps(data)}\n\n"
            for sub in self.subscriptions:
                sub.offer(text)

    def publish_tx(self, data: dict) -> None:
        """A ``tx`` event, to the streams whose budget allows it."""
        now = time.monotonic()
        text = None
        for sub in self.subscriptions:
            if sub.take_tx_token(now):
                text = text or f"event: tx\ndata: {json.dumps(data)}\n\n"
                sub.offer(text)

    def close(self) -> None:
        """End every stream (at shutdown)."""
        for sub in self.subscriptions:
            sub.offer(None)
