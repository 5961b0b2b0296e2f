"""A miner's relation with one tracker, as a state machine without sockets or clock.

The link joins (JOIN, LIST, ACK, WELCOME), keeps its lease with heartbeats, and
follows the tracker's membership events after the zguide *Clone* pattern (snapshot,
then numbered updates; a gap or a new tracker instance asks for a fresh snapshot).
It is fed replies, events and the current time, and answers with actions for its
driver (:mod:`zcoin.tracker.agent`): :class:`SendRequest`, :class:`ResetRequest`
(the *Lazy Pirate* recipe: a REQ whose reply is lost is stuck, so it is closed and
a fresh one opened for the next try) and :class:`Subscribe`.  The request in flight
is one record here (its kind and its deadline), so a reply is always read against
what was asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from loguru import logger

from zcoin import wire
from zcoin.config import LEASE_MISSES
from zcoin.tracker.protocol import EVENT_JOINED, EVENT_LEFT, MemberInfo, resolve_events_endpoint
from zcoin.wire import Message, WireError

MAX_BUFFERED_EVENTS = 10_000  # updates kept while waiting for a snapshot
CARRY_OVER_LEASES = 2  # leases a client keeps members that a restarted tracker has not relisted
# Refusals of who we are (our name, our endpoints), which no retry changes while they hold.
NAME_REFUSALS = frozenset({"duplicate-id", "bad-node-id", "bad-endpoint"})


class Phase(StrEnum):
    JOINING = "joining"  # JOIN, then ACK
    MEMBER = "member"  # heartbeats


class JoinStep(StrEnum):
    JOIN = "join"
    ACK = "ack"


@dataclass(frozen=True, slots=True)
class SendRequest:
    """Send ``frame`` on the link's REQ, opening (and connecting) one first if there is none."""

    frame: bytes


@dataclass(frozen=True, slots=True)
class ResetRequest:
    """Close the link's REQ (linger 0); the next :class:`SendRequest` opens a fresh one."""


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Replace the link's SUB with one connected to ``endpoint``; report success with
    :meth:`TrackerLink.subscribed` (on failure the next snapshot asks again)."""

    endpoint: str


Action = SendRequest | ResetRequest | Subscribe


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """What every link of one agent shares."""

    me: MemberInfo
    join_deadline_s: float
    request_timeout_s: float
    heartbeat_s: float
    backoff_initial_s: float
    backoff_max_s: float


class TrackerLink:
    """The state of one tracker as seen by one miner.

    ``phase`` is joining or member; ``timed_out`` marks a join that has run past its
    deadline and now retries with backoff.
    """

    def __init__(self, endpoint: str, cfg: LinkConfig, now: float) -> None:
        self.endpoint = endpoint
        self.cfg = cfg
        self.log = logger.bind(node=cfg.me.node_id, tracker=endpoint)
        self.phase = Phase.JOINING
        self.timed_out = False
        self.join_step = JoinStep.JOIN
        self.join_started = now
        self.token: str | None = None
        self.inflight: str | None = None  # kind of the request awaiting its reply
        self.inflight_deadline = math.inf
        self.next_send_at = 0.0
        self.backoff_s = cfg.backoff_initial_s
        self.last_error = ""
        self.refusal: str | None = None  # "reason: detail" when the last answer to our JOIN refused our name
        self.last_ok = 0.0  # when our lease was last renewed
        self.lease_s = LEASE_MISSES * cfg.heartbeat_s
        self.heartbeat_s = cfg.heartbeat_s
        self.tracker_id: str | None = None
        self.events_endpoint: str | None = None  # what the driver's SUB is connected to
        self.applied_seq = 0
        self.reported_seq = 0
        self.need_snapshot = False
        self.buffered: list[Message] = []
        self.members: dict[str, MemberInfo] = {}
        # Members known before the tracker restarted, kept until they rejoin or carried_until.
        self.carried: dict[str, MemberInfo] = {}
        self.carried_until = 0.0

    def state(self) -> str:
        """"member", "joining" or "timeout" for this tracker."""
        return "member" if self.phase == Phase.MEMBER else "timeout" if self.timed_out else "joining"

    @property
    def refused(self) -> str | None:
        """Why the tracker will not have us ("reason: detail"), once that is final; None otherwise.

        A refusal of the name (or endpoints) is final when the join deadline passes with it still
        the tracker's last answer.  Until then the holder may be this very miner's previous run,
        killed before it could leave and restarted on new (ephemeral) ports: its lease runs out
        and the retried join succeeds.
        """
        return self.refusal if self.timed_out else None

    def view(self) -> dict[str, MemberInfo]:
        """What this tracker says about the members (with those carried over a restart)."""
        return {**self.carried, **self.members} if self.carried else self.members

    # -- scheduling --

    def next_wake(self) -> float:
        """The next instant this link has something to do."""
        wake = self.inflight_deadline if self.inflight else self.next_send_at
        if self.phase == Phase.JOINING and not self.timed_out:
            wake = min(wake, self.join_started + self.cfg.join_deadline_s)
        if self.carried:
            wake = min(wake, self.carried_until)
        return wake

    def tick(self, now: float) -> list[Action]:
        """Handle an expired try, the join deadline, and send the next request when due."""
        actions: list[Action] = []
        if self.inflight is not None and now >= self.inflight_deadline:
            actions.append(self._on_no_reply(now))
        if self.phase == Phase.JOINING and not self.timed_out and now - self.join_started >= self.cfg.join_deadline_s:
            self.timed_out = True
            self.backoff_s = self.cfg.backoff_initial_s
            self.log.warning("tracker join timed out; still retrying with backoff",
                             deadline_s=self.cfg.join_deadline_s, last_error=self.last_error or "no reply")
        if self.inflight is None and now >= self.next_send_at:
            actions.append(self._send_next(now))
        if self.carried and now >= self.carried_until:
            self.log.info("members not seen since the tracker restarted are dropped", nodes=sorted(self.carried))
            self.carried = {}
        return actions

    def _retry_later(self, now: float) -> None:
        """Capped exponential backoff between attempts."""
        self.next_send_at = now + self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, self.cfg.backoff_max_s)

    def _rejoin(self, now: float, why: str) -> None:
        self.log.info("joining tracker again", reason=why)
        self.phase = Phase.JOINING
        self.join_step = JoinStep.JOIN
        self.timed_out = False
        self.join_started = now
        self.next_send_at = now
        self.backoff_s = self.cfg.backoff_initial_s

    # -- requests (Lazy Pirate) --

    def _send_next(self, now: float) -> SendRequest:
        me = self.cfg.me
        if self.phase == Phase.JOINING:
            if self.join_step == JoinStep.ACK and self.token is not None:
                return self._request("ack", wire.encode("ack", node=me.node_id, token=self.token), now)
            return self._request("join", wire.encode("join", node=me.node_id, gossip=me.gossip, api=me.api), now)
        if self.need_snapshot:
            return self._request("get_list", wire.encode("get_list"), now)
        return self._request("heartbeat", wire.encode("heartbeat", node=me.node_id, token=self.token or ""), now)

    def _request(self, kind: str, frame: bytes, now: float) -> SendRequest:
        """Put ``kind`` in flight and start its per-try timer."""
        self.inflight = kind
        self.inflight_deadline = now + self.cfg.request_timeout_s
        return SendRequest(frame)

    def _clear_inflight(self) -> None:
        self.inflight = None
        self.inflight_deadline = math.inf

    def send_failed(self, why: str) -> None:
        """The driver could not send the request: it counts as a try without reply."""
        self.last_error = why

    def leave(self, now: float) -> list[Action]:
        """LEAVE, if this tracker may count us as a member (it holds our token); else nothing."""
        if self.token is None or (self.phase != Phase.MEMBER and self.join_step != JoinStep.ACK):
            return []
        self._clear_inflight()  # a REQ with a request in flight cannot send: start a fresh one
        leave = wire.encode("leave", node=self.cfg.me.node_id, token=self.token)
        return [ResetRequest(), self._request("leave", leave, now)]

    def _on_no_reply(self, now: float) -> ResetRequest:
        kind = self.inflight
        self._clear_inflight()
        self.log.debug("no reply from tracker", request=kind, timeout_s=self.cfg.request_timeout_s)
        if self.phase == Phase.JOINING:
            self.last_error = "no reply"
            if self.timed_out:
                self._retry_later(now)
            else:
                self.next_send_at = now  # resend at once while within the join deadline
        elif now - self.last_ok > self.lease_s:
            self._rejoin(now, "no reply from tracker for longer than the lease")
        else:
            self.next_send_at = now
        return ResetRequest()

    # -- replies --

    def on_reply(self, frame: bytes, now: float) -> list[Action]:
        """The reply to the request in flight: advance the state machine."""
        kind = self.inflight
        self._clear_inflight()
        try:
            msg = wire.decode(frame)
        except WireError as exc:
            self._on_bad_reply(now, f"undecodable reply: {exc}")
            return []
        actions: list[Action] = []
        if kind == "join":
            self.refusal = _name_refusal(msg)
        if msg.type == "error":
            self._on_error_reply(now, kind, msg)
        elif kind == "join" and msg.type == "list" and msg.get("token"):
            self.token = msg["token"]
            actions = self._apply_snapshot(msg, now)
            self.lease_s = msg["lease_s"]
            self.join_step = JoinStep.ACK
            self.next_send_at = now
        elif kind == "ack" and msg.type == "welcome":
            self._on_welcome(now, msg)
        elif kind == "heartbeat" and msg.type == "alive":
            self._on_alive(now, msg)
        elif kind == "heartbeat" and msg.type == "unknown":
            self._rejoin(now, "tracker does not know us (restarted, or our lease ran out)")
        elif kind == "get_list" and msg.type == "list":
            actions = self._apply_snapshot(msg, now)
            if self.phase == Phase.MEMBER and not any(e["node"] == self.cfg.me.node_id for e in msg["members"]):
                self._rejoin(now, "tracker no longer lists us")
            else:
                self.next_send_at = now + self.heartbeat_s
        else:
            self._on_bad_reply(now, f"unexpected reply {msg.type} to {kind}")
        return actions

    def _on_error_reply(self, now: float, kind: str | None, msg: Message) -> None:
        reason, detail = msg["reason"], msg.get("detail", "")
        if kind == "ack" and reason == "bad-token":
            self.join_step = JoinStep.JOIN  # our pending join expired: start over at once
            self.next_send_at = now
            return
        self._on_bad_reply(now, f"{reason}: {detail}" if detail else reason)

    def _on_bad_reply(self, now: float, why: str) -> None:
        if why != self.last_error:
            self.log.warning("tracker refused or answered badly", error=why)
        self.last_error = why
        if self.phase == Phase.JOINING:
            self.join_step = JoinStep.JOIN
            self._retry_later(now)
        else:
            self.next_send_at = now + self.heartbeat_s

    def _on_welcome(self, now: float, msg: Message) -> None:
        self.phase = Phase.MEMBER
        self.timed_out = False
        self.last_error = ""
        self.backoff_s = self.cfg.backoff_initial_s
        self.last_ok = now
        self.lease_s = msg["lease_s"]
        # Renew well within the lease, whatever the configured interval.
        self.heartbeat_s = min(self.cfg.heartbeat_s, self.lease_s / LEASE_MISSES)
        seq = msg["seq"]
        if seq > self.applied_seq:
            if msg["joined"] and seq == self.applied_seq + 1 and msg["tracker"] == self.tracker_id:
                self.applied_seq = seq  # the one event since our snapshot is our own "joined"
            else:
                self.need_snapshot = True
        self.reported_seq = seq
        self.next_send_at = now if self.need_snapshot else now + self.heartbeat_s
        self.log.info("joined tracker", members=len(self.members), lease_s=self.lease_s)

    def _on_alive(self, now: float, msg: Message) -> None:
        self.last_ok = now
        # Clone: events up to what the tracker reported last time should have arrived by now.
        if msg["tracker"] != self.tracker_id or self.reported_seq > self.applied_seq:
            self.need_snapshot = True
        self.reported_seq = max(self.reported_seq, msg["seq"])
        self.next_send_at = now if self.need_snapshot else now + self.heartbeat_s

    # -- snapshot and updates (Clone pattern) --

    def _apply_snapshot(self, msg: Message, now: float) -> list[Action]:
        me = self.cfg.me.node_id
        fresh = {e["node"]: MemberInfo(e["node"], e["gossip"], e["api"]) for e in msg["members"] if e["node"] != me}
        if msg["tracker"] != self.tracker_id:
            self.buffered = [ev for ev in self.buffered if ev["tracker"] == msg["tracker"]]
            if self.tracker_id is not None:
                # A restarted tracker lists only who has rejoined so far.  Keep the others
                # for a while so that a tracker restart does not shake the miners' mesh.
                self.carried = {n: i for n, i in self.view().items() if n not in fresh}
                self.carried_until = now + CARRY_OVER_LEASES * msg["lease_s"]
                self.log.info("tracker restarted", tracker_id=msg["tracker"], members=len(fresh),
                              carried=len(self.carried))
        for node in fresh:
            self.carried.pop(node, None)
        self.tracker_id = msg["tracker"]
        self.members = fresh
        self.applied_seq = msg["seq"]
        self.reported_seq = msg["seq"]
        self.need_snapshot = False
        events = resolve_events_endpoint(self.endpoint, msg["events"])
        actions: list[Action] = [Subscribe(events)] if events != self.events_endpoint else []
        buffered, self.buffered = self.buffered, []
        for event in sorted(buffered, key=lambda ev: ev["seq"]):
            self._on_event(event, now)
        return actions

    def subscribed(self, endpoint: str) -> None:
        """The driver's SUB is now connected to ``endpoint``."""
        self.events_endpoint = endpoint
        self.log.debug("subscribed to tracker events", events=endpoint)

    def on_event(self, frame: bytes, now: float) -> None:
        """One frame from the events SUB."""
        try:
            msg = wire.decode(frame)
        except WireError as exc:
            self.log.warning("bad membership event", error=str(exc))
            return
        if msg.type != "member_event":
            self.log.warning("unexpected message on the events socket", type=msg.type)
            return
        self._on_event(msg, now)
        if self.phase == Phase.MEMBER and self.need_snapshot and self.inflight is None:
            self.next_send_at = min(self.next_send_at, now)

    def _on_event(self, msg: Message, now: float) -> None:
        if msg["tracker"] != self.tracker_id:
            # An old instance's last words, or a restarted tracker: a snapshot settles it.
            self.need_snapshot = True
            if len(self.buffered) < MAX_BUFFERED_EVENTS:
                self.buffered.append(msg)
            return
        seq = msg["seq"]
        if seq <= self.applied_seq:
            return
        if self.need_snapshot or seq > self.applied_seq + 1:
            if not self.need_snapshot:
                self.log.debug("gap in membership events", expected=self.applied_seq + 1, got=seq)
            self.need_snapshot = True
            if len(self.buffered) < MAX_BUFFERED_EVENTS:
                self.buffered.append(msg)
            return
        self.applied_seq = seq
        node = msg["node"]
        if node == self.cfg.me.node_id:
            if msg["kind"] == EVENT_LEFT and self.phase == Phase.MEMBER:
                self._rejoin(now, "tracker announced that we left")
            return
        self.carried.pop(node, None)
        if msg["kind"] == EVENT_JOINED:
            self.members[node] = MemberInfo(node, msg["gossip"], msg["api"])
        elif msg["kind"] == EVENT_LEFT:
            self.members.pop(node, None)


def _name_refusal(reply: Message) -> str | None:
    """``"reason: detail"`` when ``reply`` refuses our name or endpoints, else None."""
    if reply.type != "error" or reply["reason"] not in NAME_REFUSALS:
        return None
    detail = reply.get("detail", "")
    return f"{reply['reason']}: {detail}" if detail else reply["reason"]
