"""The membership agent a miner runs: the ZeroMQ driver of its tracker links.

Each configured tracker is a :class:`~zcoin.tracker.link.TrackerLink` (the state
machine) with a REQ for its requests and a SUB on its membership events.  One
thread owns every socket (sockets never cross threads), polls them, feeds the links
what arrives and the time, and carries out what they ask: send a request, close
and reopen the REQ (Lazy Pirate), subscribe.  It merges what the trackers say into
one member list and wakes the node's poll loop when that list changes.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import zmq
from loguru import logger

from zcoin.config import (
    HEARTBEAT_INTERVAL_S,
    JOIN_BACKOFF_INITIAL_S,
    JOIN_BACKOFF_MAX_S,
    JOIN_DEADLINE_S,
    TRACKER_TRY_TIMEOUT_S,
)
from zcoin.sockets import drain, open_socket
from zcoin.tracker.link import Action, LinkConfig, Phase, ResetRequest, SendRequest, Subscribe, TrackerLink
from zcoin.tracker.protocol import (
    MAX_REPLY_BYTES,
    MAX_REQUEST_BYTES,
    POLL_MAX_S,
    MemberInfo,
    check_endpoint,
    check_node_id,
)


class _LinkSockets:
    """One link with its REQ and SUB: carries out the link's actions on them."""

    def __init__(self, link: TrackerLink, context: zmq.Context) -> None:
        self.link = link
        self.context = context
        self.req: zmq.Socket | None = None
        self.sub: zmq.Socket | None = None

    def perform(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, ResetRequest):
                self._close_req()
            elif isinstance(action, SendRequest):
                self._send(action.frame)
            elif isinstance(action, Subscribe):
                self._subscribe(action.endpoint)

    def _send(self, frame: bytes) -> None:
        if self.req is None:
            self.req = open_socket(self.context, zmq.REQ, max_bytes=MAX_REPLY_BYTES, hwm=None)
            self.req.connect(self.link.endpoint)
        try:
            self.req.send(frame, zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # counted as a lost try when the timer runs out
            self.link.send_failed(str(exc))

    def _close_req(self) -> None:
        if self.req is not None:
            self.req.close(linger=0)
            self.req = None

    def _subscribe(self, endpoint: str) -> None:
        if self.sub is not None:
            self.sub.close(linger=0)
        self.sub = open_socket(self.context, zmq.SUB, max_bytes=MAX_REQUEST_BYTES, hwm=None, subscribe=(b"",))
        try:
            self.sub.connect(endpoint)
        except zmq.ZMQError as exc:
            self.link.log.warning("cannot subscribe to tracker events", events=endpoint, error=str(exc))
            self.sub.close(linger=0)
            self.sub = None
            return
        self.link.subscribed(endpoint)

    def read_reply(self, now: float) -> None:
        assert self.req is not None
        try:
            frame = self.req.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        self.perform(self.link.on_reply(frame, now))

    def read_events(self, now: float) -> None:
        assert self.sub is not None

        def on_frames(frames: list[bytes]) -> None:
            for frame in frames:
                self.link.on_event(frame, now)
        drain(self.sub, on_frames)

    def close(self) -> None:
        """Close both sockets (linger 0)."""
        self._close_req()
        if self.sub is not None:
            self.sub.close(linger=0)
            self.sub = None


class MembershipAgent:
    """Background thread owning its own REQ and SUB sockets (sockets never cross threads).

    It joins every configured tracker (JOIN, LIST, ACK, WELCOME), keeps its leases
    with heartbeats, follows each tracker's membership events, and merges what the
    trackers say into :meth:`members`.  When the member set changes and
    ``notify_endpoint`` is given, it sends one frame ``b"members"`` on a PUSH socket
    connected there so that the node's poll loop wakes up.
    """

    def __init__(self, trackers: list[str], me: MemberInfo, *, context: zmq.Context,
                 notify_endpoint: str | None = None, join_deadline_s: float = JOIN_DEADLINE_S,
                 request_timeout_s: float = TRACKER_TRY_TIMEOUT_S, heartbeat_s: float = HEARTBEAT_INTERVAL_S,
                 backoff_initial_s: float = JOIN_BACKOFF_INITIAL_S,
                 backoff_max_s: float = JOIN_BACKOFF_MAX_S) -> None:
        if not trackers:
            raise ValueError("at least one tracker endpoint is needed")
        if min(join_deadline_s, request_timeout_s, heartbeat_s, backoff_initial_s, backoff_max_s) <= 0:
            raise ValueError("timeouts and intervals must be positive")
        problem = check_node_id(me.node_id) or check_endpoint(me.gossip) or check_endpoint(me.api)
        if problem:
            raise ValueError(problem)  # the tracker would refuse it forever
        self._trackers = list(dict.fromkeys(trackers))
        self._me = me
        self._context = context
        self._cfg = LinkConfig(me, join_deadline_s, request_timeout_s, heartbeat_s,
                               backoff_initial_s, max(backoff_max_s, backoff_initial_s))
        self._notify_endpoint = notify_endpoint
        self._lock = threading.Lock()
        self._members: dict[str, MemberInfo] = {}
        self._tracker_status: dict[str, dict[str, Any]] = {}
        self._state = "joining"
        self._refused: str | None = None
        self._stop_event = threading.Event()
        self._leave_budget_s = request_timeout_s
        self._thread: threading.Thread | None = None
        self._log = logger.bind(node=me.node_id)

    @property
    def state(self) -> str:
        """"joining", "member" (of at least one tracker), "timeout" (every join past its deadline, none
        refused: see :attr:`refused`) or "stopped"."""
        return self._state

    @property
    def refused(self) -> str | None:
        """Why a tracker will not have this node ("reason: detail", e.g. ``duplicate-id: ...``), or None.

        Set once a tracker's refusal of the name or endpoints is final (see
        :attr:`TrackerLink.refused`); the node must not go on alone under a name that is not its own,
        so while it is set the state never becomes "timeout".
        """
        return self._refused

    def members(self) -> dict[str, MemberInfo]:
        """A copy of the merged known members, without this node."""
        with self._lock:
            return dict(self._members)

    def tracker_status(self) -> dict[str, dict[str, Any]]:
        """Per tracker endpoint: ``state``, ``members`` it lists, ``carried`` (kept over its
        restart, not yet relisted) and ``seq`` (last membership event applied)."""
        with self._lock:
            return {endpoint: dict(status) for endpoint, status in self._tracker_status.items()}

    def start(self) -> None:
        """Start the agent's thread."""
        if self._thread is not None:
            raise RuntimeError("membership agent already started")
        self._thread = threading.Thread(target=self._run, name=f"membership-{self._me.node_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 3.0) -> None:
        """Send LEAVE to the trackers (best effort, bounded), close the sockets, join the thread."""
        if self._thread is None:
            self._state = "stopped"
            return
        self._leave_budget_s = max(0.0, min(self._cfg.request_timeout_s, timeout_s / 2))
        self._stop_event.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._log.warning("membership agent did not stop in time", timeout_s=timeout_s)

    # -- the thread --

    def _run(self) -> None:
        now = time.monotonic()
        links = [_LinkSockets(TrackerLink(endpoint, self._cfg, now), self._context) for endpoint in self._trackers]
        notify: zmq.Socket | None = None
        try:
            if self._notify_endpoint:
                notify = open_socket(self._context, zmq.PUSH, hwm=None)
                notify.connect(self._notify_endpoint)
            while not self._stop_event.is_set():
                self._step(links)
                self._publish([each.link for each in links], notify)
            self._leave(links)
        except Exception:
            self._log.exception("membership agent failed")
        finally:
            for each in links:
                each.close()
            if notify is not None:
                notify.close(linger=0)
            self._state = "stopped"

    def _step(self, links: list[_LinkSockets]) -> None:
        now = time.monotonic()
        for each in links:
            each.perform(each.link.tick(now))
        poller = zmq.Poller()
        owners: dict[zmq.Socket, tuple[_LinkSockets, bool]] = {}
        for each in links:
            if each.req is not None and each.link.inflight is not None:
                poller.register(each.req, zmq.POLLIN)
                owners[each.req] = (each, True)
            if each.sub is not None:
                poller.register(each.sub, zmq.POLLIN)
                owners[each.sub] = (each, False)
        wake = min([now + POLL_MAX_S] + [each.link.next_wake() for each in links])
        ready = poller.poll(max(0.0, wake - now) * 1000) if owners else self._sleep(wake - now)
        now = time.monotonic()
        for sock, _ in ready:
            each, is_req = owners[sock]
            if not is_req:
                each.read_events(now)
        # Replies after events: a snapshot then replays what the SUB buffered.
        for sock, _ in ready:
            each, is_req = owners[sock]
            if is_req and each.req is sock:
                each.read_reply(now)

    def _sleep(self, seconds: float) -> list:
        self._stop_event.wait(max(0.0, seconds))
        return []

    def _publish(self, links: list[TrackerLink], notify: zmq.Socket | None) -> None:
        merged: dict[str, MemberInfo] = {}
        for link in links:  # on conflicting entries the first configured tracker wins
            for node, info in link.view().items():
                merged.setdefault(node, info)
        refusing = next((link for link in links if link.refused), None)
        refused = refusing.refused if refusing is not None else None
        if refused is not None and refused != self._refused:
            refusing.log.error("the tracker refused this node for good", reason=refused)
        self._refused = refused  # before the state, which depends on it
        if any(link.phase == Phase.MEMBER for link in links):
            state = "member"
        elif all(link.timed_out for link in links) and refused is None:
            state = "timeout"
        else:
            state = "joining"
        if state != self._state:
            self._log.info("membership state", state=state, previous=self._state)
            self._state = state
        status = {link.endpoint: {"state": link.state(), "members": len(link.members), "carried": len(link.carried),
                                  "seq": link.applied_seq} for link in links}
        with self._lock:
            self._tracker_status = status
            if merged == self._members:
                return
            self._members = merged
        self._log.debug("members changed", members=len(merged))
        if notify is not None:
            try:
                notify.send(b"members", zmq.NOBLOCK)
            except zmq.Again:
                pass  # a wake-up is already queued; members() gives the latest set

    def _leave(self, links: list[_LinkSockets]) -> None:
        """LEAVE every tracker that may count us as a member, waiting at most the leave budget."""
        deadline = time.monotonic() + self._leave_budget_s
        waiting: dict[zmq.Socket, TrackerLink] = {}
        for each in links:
            each.perform(each.link.leave(time.monotonic()))
            if each.req is not None and each.link.inflight == "leave":
                waiting[each.req] = each.link
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            poller = zmq.Poller()
            for sock in waiting:
                poller.register(sock, zmq.POLLIN)
            for sock, _ in poller.poll(remaining * 1000):
                link = waiting.pop(sock)
                try:
                    sock.recv(zmq.NOBLOCK)
                    link.log.info("left tracker")
                except zmq.Again:
                    pass
        for link in waiting.values():
            link.log.info("tracker did not confirm our LEAVE; the lease will expire")
