"""The tracker's membership registry: who is a member, who is joining, who misbehaves.

Sans-I/O (h11's idea): the registry is fed a request's payload with its sender and
the current time, and returns an :class:`Answer` (the reply frame, and the
membership events to publish, already numbered); :meth:`MembershipRegistry.expire`
is fed the time alone.  It opens no socket and reads no clock, so every rule of the
join protocol in :mod:`zcoin.tracker` is testable without either, and the ZeroMQ
driver (:mod:`zcoin.tracker.server`) only moves frames.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from zcoin import wire
from zcoin.misbehaviour import Misbehaviour
from zcoin.tracker.protocol import EVENT_JOINED, EVENT_LEFT, MAX_REQUEST_BYTES, check_endpoint, check_node_id
from zcoin.wire import Message, WireError

MAX_PENDING_JOINS = 1000  # bounds the memory a flood of unACKed JOINs can take
BAD_INPUT_LOG_PER_S = 5  # log lines per second about bad input, the rest are counted
PENALTY_MALFORMED = 20  # per malformed request, against the connection that sent it


@dataclass(frozen=True, slots=True)
class Answer:
    """What to do about one request: send ``reply`` back to its sender (None: the sender
    is banned, drop the request unanswered), then publish ``events`` in order."""

    reply: bytes | None
    events: tuple[bytes, ...] = ()


@dataclass(slots=True)
class _Member:
    gossip: str
    api: str
    token: str
    last_seen: float


@dataclass(slots=True)
class _PendingJoin:
    gossip: str
    api: str
    token: str
    deadline: float


class _RateLimitedLog:
    """At most ``per_s`` warning lines a second; the rest are counted and summarised."""

    def __init__(self, per_s: int) -> None:
        self._per_s = per_s
        self._window = 0.0
        self._lines = 0
        self._suppressed = 0
        self.total = 0

    def warning(self, now: float, message: str, **fields: Any) -> None:
        self.total += 1
        if now - self._window >= 1.0:
            if self._suppressed:
                logger.warning("bad input lines suppressed", suppressed=self._suppressed)
            self._window, self._lines, self._suppressed = now, 0, 0
        if self._lines < self._per_s:
            self._lines += 1
            logger.warning(message, **fields)
        else:
            self._suppressed += 1


class MembershipRegistry:
    """Members with leases, joins awaiting their ACK, and the numbered events about them.

    ``tracker_id`` tells clients one tracker instance from the next.  ``events_endpoint``
    is what every LIST tells clients to subscribe to; the driver sets it once bound.
    Senders are whatever identifies a connection to the driver (a ROUTER identity):
    malformed requests count against them in ``misbehaviour``; refused but well-formed
    ones do not.
    """

    def __init__(self, tracker_id: str, *, lease_s: float, ack_timeout_s: float, max_members: int,
                 misbehaviour: Misbehaviour | None = None) -> None:
        self.tracker_id = tracker_id
        self.lease_s = lease_s
        self.ack_timeout_s = ack_timeout_s
        self.max_members = max_members
        self.events_endpoint = ""
        self.misbehaviour = misbehaviour or Misbehaviour()
        self.bad_input = _RateLimitedLog(BAD_INPUT_LOG_PER_S)
        self.seq = 0  # number of the last membership event
        self._members: dict[str, _Member] = {}
        self._pending: dict[str, _PendingJoin] = {}
        self._outbox: list[bytes] = []  # events produced by the request being handled
        self._handlers: dict[str, Callable[[Message, float], bytes]] = {
            "join": self.on_join,
            "ack": self.on_ack,
            "heartbeat": self.on_heartbeat,
            "leave": self.on_leave,
            "get_list": self.on_get_list,
        }

    def __len__(self) -> int:
        """The number of members (joins awaiting ACK not counted)."""
        return len(self._members)

    # -- what survives a restart --

    def snapshot(self) -> dict[str, Any]:
        """The state a restarted tracker takes back: its id, its event number and its members.

        Without it a restarted tracker lists no one until the members' next heartbeats,
        and a miner joining in that window would believe itself alone in the network.
        """
        return {"tracker": self.tracker_id, "seq": self.seq,
                "members": [{"node": node, "gossip": m.gossip, "api": m.api, "token": m.token}
                            for node, m in self._members.items()]}

    def restore(self, snapshot: dict[str, Any], now: float) -> None:
        """Take back a :meth:`snapshot`: each member gets a fresh lease from ``now`` to renew it."""
        self.tracker_id = str(snapshot["tracker"])
        self.seq = int(snapshot["seq"])
        self._members = {m["node"]: _Member(m["gossip"], m["api"], m["token"], now)
                         for m in snapshot["members"][:self.max_members]}

    # -- what the driver calls --

    def on_request(self, sender: Hashable, payload: bytes, now: float) -> Answer:
        """Handle one request frame from ``sender``."""
        if self.misbehaviour.banned(sender, now):
            self.bad_input.total += 1
            return Answer(None)
        try:
            msg = wire.decode(payload, max_bytes=MAX_REQUEST_BYTES)
        except WireError as exc:
            return Answer(self._malformed(sender, now, exc.reason, exc.detail))
        handler = self._handlers.get(msg.type)
        if handler is None:
            return Answer(self._malformed(sender, now, "unexpected-type", f"{msg.type} is not a tracker request"))
        reply = handler(msg, now)
        events, self._outbox = tuple(self._outbox), []
        return Answer(reply, events)

    def on_bad_envelope(self, sender: Hashable, detail: str, now: float) -> Answer:
        """A request whose frames do not hold exactly one payload."""
        if self.misbehaviour.banned(sender, now):
            self.bad_input.total += 1
            return Answer(None)
        return Answer(self._malformed(sender, now, "malformed", detail))

    def expire(self, now: float) -> tuple[bytes, ...]:
        """Forget joins never ACKed in time and members whose lease ran out; return the events."""
        for node in [n for n, p in self._pending.items() if now > p.deadline]:
            del self._pending[node]
            logger.info("join abandoned without ACK", node=node)
        for node in [n for n, m in self._members.items() if now - m.last_seen > self.lease_s]:
            member = self._members.pop(node)
            self._publish(EVENT_LEFT, node, member.gossip, member.api)
            logger.info("member lease expired", node=node, silent_s=round(now - member.last_seen, 2),
                        members=len(self._members), seq=self.seq)
        events, self._outbox = tuple(self._outbox), []
        return events

    # -- refusals --

    def _malformed(self, sender: Hashable, now: float, reason: str, detail: str = "") -> bytes:
        """Refuse a request that is not even well formed, and hold it against its sender."""
        score, banned = self.misbehaviour.penalise(sender, PENALTY_MALFORMED, now)
        client = sender.hex() if isinstance(sender, bytes) else str(sender)
        if banned:
            logger.warning("client banned", client=client, seconds=self.misbehaviour.ban_duration_s)
        return self._refuse(now, reason, detail, client=client, score=score)

    def _refuse(self, now: float, reason: str, detail: str = "", **fields: Any) -> bytes:
        self.bad_input.warning(now, "request refused", reason=reason, detail=detail[:200], **fields)
        return wire.encode("error", reason=reason, detail=detail[:1024] or None)

    # -- requests (one handler per message type) --

    def _list_reply(self, now: float, token: str | None = None) -> bytes:
        members = [{"node": node, "gossip": m.gossip, "api": m.api, "age_s": round(now - m.last_seen, 3)}
                   for node, m in self._members.items()]
        return wire.encode("list", tracker=self.tracker_id, seq=self.seq, events=self.events_endpoint,
                           lease_s=self.lease_s, members=members, token=token)

    def on_join(self, msg: Message, now: float) -> bytes:
        node, gossip, api = msg["node"], msg["gossip"], msg["api"]
        problem = check_node_id(node)
        if problem:
            return self._refuse(now, "bad-node-id", problem)
        problem = check_endpoint(gossip) or check_endpoint(api)
        if problem:
            return self._refuse(now, "bad-endpoint", problem, node=node)
        member = self._members.get(node)
        if member is not None:
            if (member.gossip, member.api) != (gossip, api):
                return self._refuse(now, "duplicate-id",
                                    f"node id {node} is held by a live member at gossip={member.gossip} "
                                    f"api={member.api}", node=node)
            # The same node again (a retry, or a restart before its lease ran out): same token.
            logger.debug("join from a current member", node=node)
            return self._list_reply(now, token=member.token)
        pending = self._pending.get(node)
        if pending is not None:
            if (pending.gossip, pending.api) != (gossip, api):
                return self._refuse(now, "duplicate-id",
                                    f"node id {node} is being joined by another node at gossip={pending.gossip} "
                                    f"api={pending.api}", node=node)
            pending.deadline = now + self.ack_timeout_s  # a retry: the node is evidently alive
            return self._list_reply(now, token=pending.token)
        if len(self._members) + len(self._pending) >= self.max_members:
            return self._refuse(now, "full", f"the tracker holds its maximum of {self.max_members} nodes", node=node)
        if len(self._pending) >= MAX_PENDING_JOINS:
            return self._refuse(now, "busy", "too many joins awaiting ACK", node=node)
        token = secrets.token_hex(16)
        self._pending[node] = _PendingJoin(gossip, api, token, now + self.ack_timeout_s)
        logger.debug("join pending until ACK", node=node, gossip=gossip, api=api)
        return self._list_reply(now, token=token)

    def _welcome(self, node: str, joined: bool) -> bytes:
        return wire.encode("welcome", node=node, tracker=self.tracker_id, seq=self.seq,
                           lease_s=self.lease_s, joined=joined)

    def on_ack(self, msg: Message, now: float) -> bytes:
        node, token = msg["node"], msg["token"]
        member = self._members.get(node)
        if member is not None and member.token == token:
            member.last_seen = now  # a repeated ACK: answer again, announce nothing
            return self._welcome(node, joined=False)
        pending = self._pending.get(node)
        if pending is None or pending.token != token:
            return self._refuse(now, "bad-token", "no join awaiting ACK with this token (expired or never sent)",
                                node=node)
        del self._pending[node]
        self._members[node] = _Member(pending.gossip, pending.api, token, now)
        self._publish(EVENT_JOINED, node, pending.gossip, pending.api)
        logger.info("member joined", node=node, gossip=pending.gossip, api=pending.api,
                    members=len(self._members), seq=self.seq)
        return self._welcome(node, joined=True)

    def on_heartbeat(self, msg: Message, now: float) -> bytes:
        node, token = msg["node"], msg["token"]
        member = self._members.get(node)
        if member is None or member.token != token:
            logger.debug("heartbeat from a non-member", node=node)
            return wire.encode("unknown", node=node)
        member.last_seen = now
        return wire.encode("alive", tracker=self.tracker_id, seq=self.seq, lease_s=self.lease_s)

    def on_leave(self, msg: Message, now: float) -> bytes:
        node, token = msg["node"], msg["token"]
        member = self._members.get(node)
        if member is not None:
            if member.token != token:
                return self._refuse(now, "bad-token", "LEAVE with another node's token", node=node)
            del self._members[node]
            self._publish(EVENT_LEFT, node, member.gossip, member.api)
            logger.info("member left", node=node, members=len(self._members), seq=self.seq)
        else:
            pending = self._pending.get(node)
            if pending is not None and pending.token == token:
                del self._pending[node]
        return wire.encode("bye", node=node)  # idempotent: leaving twice is fine

    def on_get_list(self, msg: Message, now: float) -> bytes:
        return self._list_reply(now)

    def _publish(self, kind: str, node: str, gossip: str, api: str) -> None:
        self.seq += 1
        self._outbox.append(wire.encode("member_event", tracker=self.tracker_id, seq=self.seq, kind=kind,
                                        node=node, gossip=gossip, api=api))
