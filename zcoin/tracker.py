"""Membership: the tracker service and the client side that miners and the CLI use.

The founding document's join protocol, made reliable over ZeroMQ::

    miner (REQ)                               tracker (ROUTER)          tracker (PUB)
    JOIN {node, gossip, api}          ─────▶  remembers a *pending* join
                                      ◀─────  LIST {members, token, seq, events, tracker}
    (connects its SUB to ``events``, connects to the listed members)
    ACK {node, token}                 ─────▶  only now a member ─────▶  member_event "joined"
                                      ◀─────  WELCOME {lease_s, seq}
    HEARTBEAT {node, token} every 2 s ─────▶  renews the lease
                                      ◀─────  ALIVE {seq}  or  UNKNOWN  (→ the miner joins again)
    LEAVE {node, token}               ─────▶  drops the member ─────▶  member_event "left"
                                      ◀─────  BYE
    GET_LIST (zcoin peers)            ─────▶
                                      ◀─────  LIST {members with the age of their last heartbeat}

Rules that make it reliable:

* A JOIN that is never ACKed within ``ack_timeout_s`` leaves no trace.  JOIN and ACK
  are idempotent: a retry after a lost reply gets the same token and the same answer,
  so a node joins exactly once however many replies are lost.
* A node id belongs to one node: a JOIN for an id held by a live member (or a pending
  join) with *different* endpoints is refused with ``error(reason="duplicate-id")``;
  the same id with the same endpoints is the same node rejoining and is fine.
* Leases: a member whose heartbeats stop for ``lease_s`` (``LEASE_MISSES`` heartbeat
  intervals) is dropped and announced as "left".  A tracker restart forgets every
  member; their next heartbeat is answered UNKNOWN and they join again.  Meanwhile
  clients keep the members the old instance listed (``CARRY_OVER_LEASES`` leases, or
  until relisted), so a tracker restart does not shake the miners' mesh.
* Every request gets exactly one reply; anything invalid gets ``error(reason, detail)``
  and a log line, never a crash.  The tracker binds a ROUTER rather than a REP so a
  slow or vanished client never blocks it.  A connection that sends malformed
  requests (not a refused but well-formed one) collects ``PENALTY_MALFORMED``
  points; past ``BAN_SCORE`` its requests are dropped unanswered for ``BAN_DURATION_S``.
* Membership events carry a per-tracker sequence number.  Clients follow the zguide
  *Clone* pattern: subscribe, take a snapshot (LIST), apply only updates newer than
  the snapshot, and take a fresh snapshot when they see a gap (an event, WELCOME or
  ALIVE with a sequence number ahead of what they applied) or a new tracker instance.
* Clients follow the zguide *Lazy Pirate* pattern: poll with a per-try timeout, and on
  silence close the REQ socket (linger 0), open a new one and resend.  A miner that is
  not a member after ``join_deadline_s`` enters the *timeout* state (one warning line)
  and keeps retrying with capped exponential backoff; it never gives up.  With several
  trackers the client joins each one and merges their lists; while every tracker is
  down it keeps the last list it knew, so the node keeps relaying and mining.
"""

from __future__ import annotations

import math
import re
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

import zmq
from loguru import logger

from zcoin import wire
from zcoin.wire import Bool, Float, Int, List, Map, Message, Opt, Str, WireError

# --- constants ---------------------------------------------------------------------

DEFAULT_BIND = "tcp://127.0.0.1:9000"
DEFAULT_EVENTS = "tcp://127.0.0.1:9001"
HEARTBEAT_INTERVAL_S = 2.0
LEASE_MISSES = 3  # heartbeat intervals a member may miss before it is dropped
LEASE_S = LEASE_MISSES * HEARTBEAT_INTERVAL_S
JOIN_ACK_TIMEOUT_S = 10.0  # a JOIN not ACKed within this leaves no trace
REQUEST_TIMEOUT_S = 2.5  # Lazy Pirate per-try timeout
JOIN_DEADLINE_S = 30.0  # after this without membership a miner is in the timeout state
JOIN_BACKOFF_INITIAL_S = 1.0
JOIN_BACKOFF_MAX_S = 30.0
PEERS_TIMEOUT_S = 5.0  # overall budget of `zcoin peers`

MAX_MEMBERS = 4000  # keeps the largest LIST well under wire.MAX_MESSAGE_BYTES
MAX_PENDING_JOINS = 1000  # bounds the memory a flood of unACKed JOINs can take
MAX_REQUEST_BYTES = 64 * 1024  # larger requests get an "oversized" error reply
MAX_SOCKET_MESSAGE_BYTES = 1024 * 1024  # zmq.MAXMSGSIZE backstop: libzmq drops the peer
MAX_DRAIN_PER_WAKE = 1000  # requests handled per wake-up before housekeeping runs
MAX_BUFFERED_EVENTS = 10_000  # updates kept while waiting for a snapshot
CARRY_OVER_LEASES = 2  # leases a client keeps members that a restarted tracker has not relisted
POLL_MAX_S = 0.1  # longest a loop sleeps before looking at its stop flag
SHUTDOWN_LINGER_MS = 200  # finite linger so shutdown never hangs
BAD_INPUT_LOG_PER_S = 5  # log lines per second about bad input, the rest are counted
PENALTY_MALFORMED = 20  # per malformed request, against the connection that sent it
BAN_SCORE = 100
BAN_DURATION_S = 60.0
MAX_SCORED_CLIENTS = 10_000  # bounds the memory a flood of fresh connections can take

_NODE_ID = re.compile(r"[!-~]{1,64}")  # printable ASCII, no spaces
_TRANSPORTS = ("tcp", "ipc", "inproc", "ws", "wss", "pgm", "epgm", "udp", "vmci")
_WILDCARD_HOSTS = {"*", "0.0.0.0", "::", "[::]", "[*]", ""}

# --- wire messages -----------------------------------------------------------------

_MEMBER_ENTRY = Map({"node": Str(64), "gossip": Str(256), "api": Str(256), "age_s": Float()})

# requests (client -> tracker)
wire.register("join", node=Str(64), gossip=Str(256), api=Str(256))
wire.register("ack", node=Str(64), token=Str(64))
wire.register("heartbeat", node=Str(64), token=Str(64))
wire.register("leave", node=Str(64), token=Str(64))
wire.register("get_list")
# replies (tracker -> client)
wire.register("list", tracker=Str(32), seq=Int(), events=Str(256), lease_s=Float(),
              members=List(_MEMBER_ENTRY, MAX_MEMBERS), token=Opt(Str(64)))
wire.register("welcome", node=Str(64), tracker=Str(32), seq=Int(), lease_s=Float(), joined=Bool())
wire.register("alive", tracker=Str(32), seq=Int(), lease_s=Float())
wire.register("unknown", node=Str(64))
wire.register("bye", node=Str(64))
# events (tracker PUB -> client SUB)
wire.register("member_event", tracker=Str(32), seq=Int(), kind=Str(16), node=Str(64),
              gossip=Str(256), api=Str(256))

EVENT_JOINED = "joined"
EVENT_LEFT = "left"


# --- shared types ------------------------------------------------------------------


class TrackerError(Exception):
    """A tracker-side or client-side failure that deserves one line, not a traceback."""


class TrackerUnavailable(TrackerError):
    """No tracker answered within the allowed time (or every one refused)."""


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """A member of the cluster: its id and the endpoints other miners connect to.

    ``age_s`` is how long ago the tracker last heard from it, as of the listing that
    produced this object (None when unknown); it takes no part in equality.
    """

    node_id: str
    gossip: str
    api: str
    age_s: float | None = field(default=None, compare=False)


def last_endpoint(sock: zmq.Socket) -> str:
    """The endpoint a socket actually bound (port 0 / ``*`` resolved)."""
    return sock.getsockopt(zmq.LAST_ENDPOINT).decode()


def check_node_id(node_id: str) -> str | None:
    """Why ``node_id`` is unusable, or None when it is fine."""
    if not _NODE_ID.fullmatch(node_id):
        return "node id must be 1-64 printable ASCII characters without spaces"
    return None


def check_endpoint(endpoint: str) -> str | None:
    """Why ``endpoint`` cannot be advertised to peers, or None when it is fine."""
    transport, sep, address = endpoint.partition("://")
    if not sep or transport not in _TRANSPORTS or not address or any(c.isspace() for c in endpoint):
        return f"not a ZeroMQ endpoint: {endpoint!r}"
    if "*" in address:
        return f"wildcard endpoint cannot be connected to: {endpoint!r}"
    return None


def resolve_events_endpoint(tracker_endpoint: str, events_endpoint: str) -> str:
    """The events endpoint a client should connect to.

    A tracker bound on all interfaces reports ``tcp://0.0.0.0:PORT``; a client then
    uses the host it reached the tracker on.
    """
    try:
        events = urlsplit(events_endpoint)
        if events.scheme != "tcp" or events.hostname not in _WILDCARD_HOSTS | {None}:
            return events_endpoint
        host = urlsplit(tracker_endpoint).hostname
        port = events.port
    except ValueError:
        return events_endpoint
    if not host or host in _WILDCARD_HOSTS or port is None:
        return events_endpoint
    if ":" in host:
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


# --- server --------------------------------------------------------------------------


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


class TrackerServer:
    """The membership service: a ROUTER for requests and a PUB for membership events.

    Sockets are created by the thread that serves (sockets never cross threads):
    either call :meth:`serve_forever` yourself, or :meth:`start` it in a background
    thread and :meth:`stop` it.  ``endpoint`` and ``events_endpoint`` hold the bound
    endpoints (ephemeral ports resolved) once ``ready`` is set, i.e. when
    :meth:`start` returns.
    """

    def __init__(self, bind: str, events: str, *, lease_s: float = LEASE_S,
                 ack_timeout_s: float = JOIN_ACK_TIMEOUT_S, context: zmq.Context | None = None,
                 advertise_events: str | None = None, max_members: int = MAX_MEMBERS) -> None:
        if not lease_s > 0 or not ack_timeout_s > 0 or not 0 < max_members <= MAX_MEMBERS:
            raise ValueError("lease_s and ack_timeout_s must be > 0, max_members in [1, MAX_MEMBERS]")
        self.bind = bind
        self.events_bind = events
        self.lease_s = float(lease_s)
        self.ack_timeout_s = float(ack_timeout_s)
        self.max_members = max_members
        self.advertise_events = advertise_events or None
        self.endpoint: str | None = None
        self.events_endpoint: str | None = None
        self.tracker_id = secrets.token_hex(8)  # tells clients a restarted tracker from the old one
        self.ready = threading.Event()
        self._context = context
        self._members: dict[str, _Member] = {}
        self._pending: dict[str, _PendingJoin] = {}
        self._seq = 0
        self._pub: zmq.Socket | None = None
        self._bad_input = _RateLimitedLog(BAD_INPUT_LOG_PER_S)
        self._scores: dict[bytes, int] = {}  # ROUTER identity -> points for malformed requests
        self._banned: dict[bytes, float] = {}  # ROUTER identity -> end of its ban
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: threading.Event | None = None
        self._handlers: dict[str, Callable[[Message, float], bytes]] = {
            "join": self._on_join,
            "ack": self._on_ack,
            "heartbeat": self._on_heartbeat,
            "leave": self._on_leave,
            "get_list": self._on_get_list,
        }

    # -- lifecycle --

    def start(self, timeout_s: float = 5.0) -> TrackerServer:
        """Serve in a background thread; return once bound (raise if binding failed)."""
        if self._thread is not None:
            raise RuntimeError("tracker already started")
        self._stop_event = threading.Event()
        self._thread = threading.Thread(target=self._serve_in_thread, name="tracker", daemon=True)
        self._thread.start()
        if not self.ready.wait(timeout_s):
            raise TrackerError("tracker did not start in time")
        if self._error is not None:
            self._thread.join()
            raise TrackerError(f"cannot start tracker: {self._error}") from self._error
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the background thread started by :meth:`start` and wait for it."""
        if self._thread is None or self._stop_event is None:
            return
        self._stop_event.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("tracker thread did not stop in time", timeout_s=timeout_s)

    def __enter__(self) -> TrackerServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _serve_in_thread(self) -> None:
        assert self._stop_event is not None
        try:
            self.serve_forever(self._stop_event)
        except BaseException as exc:  # reported by start(); the thread must not die silently
            if not self.ready.is_set():
                self._error = exc
                self.ready.set()
            else:
                logger.exception("tracker stopped on an unexpected error")

    def serve_forever(self, stop_event: threading.Event) -> None:
        """Bind, then answer requests until ``stop_event`` is set; close sockets on the way out."""
        own_context = self._context is None
        ctx = zmq.Context() if own_context else self._context
        api = ctx.socket(zmq.ROUTER)
        pub = ctx.socket(zmq.PUB)
        try:
            # Above MAX_REQUEST_BYTES we answer "oversized"; far above, libzmq drops the peer.
            api.setsockopt(zmq.MAXMSGSIZE, MAX_SOCKET_MESSAGE_BYTES)
            try:
                api.bind(self.bind)
                pub.bind(self.events_bind)
            except zmq.ZMQError as exc:
                raise TrackerError(f"cannot bind {self.bind} / {self.events_bind}: {exc}") from None
            self.endpoint = last_endpoint(api)
            self.events_endpoint = last_endpoint(pub)
            self._pub = pub
            logger.info("tracker listening api={api} events={events}", api=self.endpoint,
                        events=self.events_endpoint, tracker=self.tracker_id, lease_s=self.lease_s)
            self.ready.set()
            self._loop(api, stop_event)
        finally:
            self._pub = None
            api.close(linger=SHUTDOWN_LINGER_MS)
            pub.close(linger=SHUTDOWN_LINGER_MS)
            if own_context:
                ctx.term()
            if self.ready.is_set():
                logger.info("tracker stopped", members=len(self._members), bad_input=self._bad_input.total)

    def _loop(self, api: zmq.Socket, stop_event: threading.Event) -> None:
        poller = zmq.Poller()
        poller.register(api, zmq.POLLIN)
        sweep_every_s = min(POLL_MAX_S, self.lease_s / 10, self.ack_timeout_s / 10)
        next_sweep = time.monotonic()
        while not stop_event.is_set():
            now = time.monotonic()
            if now >= next_sweep:
                self._expire(now)
                next_sweep = now + sweep_every_s
            if not poller.poll(max(0.0, next_sweep - now) * 1000):
                continue
            # Drain everything that is ready in one wake-up, up to a bound.
            for _ in range(MAX_DRAIN_PER_WAKE):
                try:
                    frames = api.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._handle(api, frames)

    # -- requests --

    def _handle(self, api: zmq.Socket, frames: list[bytes]) -> None:
        now = time.monotonic()
        identity, rest = frames[0], frames[1:]
        # A REQ peer's envelope ends with an empty delimiter frame; a DEALER may send none.
        try:
            cut = rest.index(b"") + 1
        except ValueError:
            cut = 0
        envelope, body = rest[:cut], rest[cut:]
        if self._is_banned(identity, now):
            self._bad_input.total += 1
            return
        if len(body) != 1:
            reply = self._malformed(identity, now, "malformed", f"expected one frame, got {len(body)}")
        else:
            try:
                msg = wire.decode(body[0], max_bytes=MAX_REQUEST_BYTES)
            except WireError as exc:
                reply = self._malformed(identity, now, exc.reason, exc.detail)
            else:
                handler = self._handlers.get(msg.type)
                if handler is None:
                    reply = self._malformed(identity, now, "unexpected-type", f"{msg.type} is not a tracker request")
                else:
                    reply = handler(msg, now)
        try:
            # ROUTER never blocks: a reply to a vanished peer is dropped.
            api.send_multipart([identity, *envelope, reply], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            logger.warning("cannot send reply", error=str(exc))

    def _is_banned(self, identity: bytes, now: float) -> bool:
        until = self._banned.get(identity)
        if until is None:
            return False
        if until > now:
            return True
        del self._banned[identity]
        self._scores.pop(identity, None)
        return False

    def _malformed(self, identity: bytes, now: float, reason: str, detail: str = "") -> bytes:
        """Refuse a request that is not even well formed, and hold it against its connection."""
        if len(self._scores) >= MAX_SCORED_CLIENTS:
            self._scores.clear()
        score = self._scores.get(identity, 0) + PENALTY_MALFORMED
        self._scores[identity] = score
        if score >= BAN_SCORE:
            if len(self._banned) >= MAX_SCORED_CLIENTS:  # the ban that ends first goes first
                del self._banned[next(iter(self._banned))]
            self._banned[identity] = now + BAN_DURATION_S
            logger.warning("client banned", client=identity.hex(), seconds=BAN_DURATION_S)
        return self._refuse(now, reason, detail, client=identity.hex(), score=score)

    def _refuse(self, now: float, reason: str, detail: str = "", **fields: Any) -> bytes:
        self._bad_input.warning(now, "request refused", reason=reason, detail=detail[:200], **fields)
        return wire.encode("error", reason=reason, detail=detail[:1024] or None)

    def _list_reply(self, now: float, token: str | None = None) -> bytes:
        members = [{"node": node, "gossip": m.gossip, "api": m.api, "age_s": round(now - m.last_seen, 3)}
                   for node, m in self._members.items()]
        return wire.encode("list", tracker=self.tracker_id, seq=self._seq,
                           events=self.advertise_events or self.events_endpoint,
                           lease_s=self.lease_s, members=members, token=token)

    def _on_join(self, msg: Message, now: float) -> bytes:
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
        return wire.encode("welcome", node=node, tracker=self.tracker_id, seq=self._seq,
                           lease_s=self.lease_s, joined=joined)

    def _on_ack(self, msg: Message, now: float) -> bytes:
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
                    members=len(self._members), seq=self._seq)
        return self._welcome(node, joined=True)

    def _on_heartbeat(self, msg: Message, now: float) -> bytes:
        node, token = msg["node"], msg["token"]
        member = self._members.get(node)
        if member is None or member.token != token:
            logger.debug("heartbeat from a non-member", node=node)
            return wire.encode("unknown", node=node)
        member.last_seen = now
        return wire.encode("alive", tracker=self.tracker_id, seq=self._seq, lease_s=self.lease_s)

    def _on_leave(self, msg: Message, now: float) -> bytes:
        node, token = msg["node"], msg["token"]
        member = self._members.get(node)
        if member is not None:
            if member.token != token:
                return self._refuse(now, "bad-token", "LEAVE with another node's token", node=node)
            del self._members[node]
            self._publish(EVENT_LEFT, node, member.gossip, member.api)
            logger.info("member left", node=node, members=len(self._members), seq=self._seq)
        else:
            pending = self._pending.get(node)
            if pending is not None and pending.token == token:
                del self._pending[node]
        return wire.encode("bye", node=node)  # idempotent: leaving twice is fine

    def _on_get_list(self, msg: Message, now: float) -> bytes:
        return self._list_reply(now)

    # -- housekeeping and events --

    def _expire(self, now: float) -> None:
        for node in [n for n, p in self._pending.items() if now > p.deadline]:
            del self._pending[node]
            logger.info("join abandoned without ACK", node=node)
        for node in [n for n, m in self._members.items() if now - m.last_seen > self.lease_s]:
            member = self._members.pop(node)
            self._publish(EVENT_LEFT, node, member.gossip, member.api)
            logger.info("member lease expired", node=node, silent_s=round(now - member.last_seen, 2),
                        members=len(self._members), seq=self._seq)

    def _publish(self, kind: str, node: str, gossip: str, api: str) -> None:
        self._seq += 1
        frame = wire.encode("member_event", tracker=self.tracker_id, seq=self._seq, kind=kind,
                            node=node, gossip=gossip, api=api)
        if self._pub is not None:
            self._pub.send(frame, zmq.NOBLOCK)  # PUB drops at its high-water mark; clients resync


# --- tracker daemon (used by `zcoin tracker`) ------------------------------------------

TRACKER_CONFIG_SPEC: dict[str, tuple[type | tuple[type, ...], Any]] = {
    "bind": (str, DEFAULT_BIND),
    "events": (str, DEFAULT_EVENTS),
    "advertise_events": (str, ""),
    "lease_s": ((int, float), LEASE_S),
    "join_ack_timeout_s": ((int, float), JOIN_ACK_TIMEOUT_S),
    "max_members": (int, MAX_MEMBERS),
}


def load_tracker_settings(config_path: str | None, *, bind: str | None = None,
                          events: str | None = None) -> dict[str, Any]:
    """The ``[tracker]`` table of ``config_path`` (defaults without one), flags overriding it.

    Raises :class:`zcoin.config.ConfigError` with one line on a bad file or value.
    """
    from zcoin.config import ConfigError, load_section

    settings = load_section(config_path, "tracker", TRACKER_CONFIG_SPEC)
    if bind:
        settings["bind"] = bind
    if events:
        settings["events"] = events
    where = config_path or "defaults"
    for key in ("lease_s", "join_ack_timeout_s"):
        if not (math.isfinite(settings[key]) and settings[key] > 0):
            raise ConfigError(f"{where}: tracker.{key} must be a positive number")
    if not 0 < settings["max_members"] <= MAX_MEMBERS:
        raise ConfigError(f"{where}: tracker.max_members must be between 1 and {MAX_MEMBERS}")
    return settings


def run_tracker(settings: dict[str, Any]) -> None:
    """Serve a tracker in this (main) thread until SIGTERM or SIGINT, then close cleanly."""
    server = TrackerServer(settings["bind"], settings["events"], lease_s=settings["lease_s"],
                           ack_timeout_s=settings["join_ack_timeout_s"],
                           advertise_events=settings["advertise_events"] or None,
                           max_members=settings["max_members"])
    stop_event = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logger.info("shutting down", signal=signal.Signals(signum).name)
        stop_event.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.serve_forever(stop_event)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- client: one-shot listing (zcoin peers) --------------------------------------------


def request_members(trackers: list[str], *, timeout_s: float, context: zmq.Context | None = None,
                    request_timeout_s: float = REQUEST_TIMEOUT_S) -> list[MemberInfo]:
    """Ask every tracker for its member list and merge them (sorted by node id).

    Lazy Pirate (zguide lpclient.py): each tracker gets a REQ; a try unanswered within
    ``request_timeout_s`` closes the socket and resends on a new one, until
    ``timeout_s`` has passed.  Trackers are asked in parallel.  Raises
    :class:`TrackerUnavailable` when no tracker answered with a list.
    """
    if not trackers:
        raise ValueError("no tracker endpoint given")
    own_context = context is None
    ctx = zmq.Context() if own_context else context
    per_try_s = max(0.01, min(request_timeout_s, timeout_s))
    deadline = time.monotonic() + timeout_s
    request = wire.encode("get_list")
    sockets: dict[str, zmq.Socket] = {}
    try_deadline: dict[str, float] = {}
    answers: dict[str, Message] = {}
    failures: dict[str, str] = {endpoint: "no reply" for endpoint in trackers}

    def open_and_send(endpoint: str, now: float) -> None:
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_MESSAGE_BYTES + 1024)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:  # a malformed endpoint: retrying will not help
            failures[endpoint] = f"cannot connect: {exc}"
            sock.close()
            return
        try:
            sock.send(request, zmq.NOBLOCK)
        except zmq.Again:
            pass  # counted as an unanswered try
        sockets[endpoint] = sock
        try_deadline[endpoint] = now + per_try_s

    try:
        now = time.monotonic()
        for endpoint in dict.fromkeys(trackers):
            open_and_send(endpoint, now)
        while sockets and now < deadline:
            poller = zmq.Poller()
            for sock in sockets.values():
                poller.register(sock, zmq.POLLIN)
            wait_s = min(deadline, *(try_deadline[endpoint] for endpoint in sockets)) - now
            ready = dict(poller.poll(max(0.0, wait_s) * 1000))
            now = time.monotonic()
            for endpoint, sock in list(sockets.items()):
                if sock in ready:
                    frame = sock.recv()
                    sock.close()
                    del sockets[endpoint]
                    try:
                        msg = wire.decode(frame)
                    except WireError as exc:
                        failures[endpoint] = f"bad reply: {exc}"
                        continue
                    if msg.type == "list":
                        answers[endpoint] = msg
                        failures.pop(endpoint, None)
                    elif msg.type == "error":
                        failures[endpoint] = f"refused: {msg['reason']} {msg.get('detail', '')}".strip()
                    else:
                        failures[endpoint] = f"unexpected reply {msg.type}"
                elif now >= try_deadline[endpoint] and now < deadline:
                    logger.debug("no reply from tracker, retrying", tracker=endpoint)
                    sock.close()  # Lazy Pirate: a REQ that lost its reply cannot be reused
                    open_and_send(endpoint, now)
    finally:
        for sock in sockets.values():
            sock.close(linger=0)
        if own_context:
            ctx.term()
    if not answers:
        detail = "; ".join(f"{endpoint}: {why}" for endpoint, why in failures.items())
        raise TrackerUnavailable(f"no tracker answered within {timeout_s:g} s ({detail})")
    for endpoint, why in failures.items():
        logger.warning("tracker did not answer", tracker=endpoint, error=why)
    merged: dict[str, MemberInfo] = {}
    for msg in answers.values():
        for entry in msg["members"]:
            info = MemberInfo(entry["node"], entry["gossip"], entry["api"], entry["age_s"])
            known = merged.get(info.node_id)
            if known is None or (known.age_s or 0.0) > (info.age_s or 0.0):
                merged[info.node_id] = info
    return [merged[node] for node in sorted(merged)]


def members_as_json(members: list[MemberInfo]) -> dict[str, Any]:
    """The ``zcoin peers --json`` document."""
    return {"members": [{"node": m.node_id, "gossip": m.gossip, "api": m.api, "age_s": m.age_s}
                        for m in members]}


def format_members(members: list[MemberInfo]) -> str:
    """A plain table of members for ``zcoin peers``."""
    if not members:
        return "no members"
    rows = [("NODE", "GOSSIP", "API", "LAST HEARTBEAT")]
    rows += [(m.node_id, m.gossip, m.api, "?" if m.age_s is None else f"{m.age_s:.1f}s ago") for m in members]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip() for a, b, c, d in rows)


# --- client: the membership agent of a miner ---------------------------------------------


@dataclass(frozen=True, slots=True)
class _AgentConfig:
    me: MemberInfo
    context: zmq.Context
    join_deadline_s: float
    request_timeout_s: float
    heartbeat_s: float
    backoff_initial_s: float
    backoff_max_s: float


class _TrackerLink:
    """The agent's relation with one tracker: a small state machine driven by the agent's loop.

    ``phase`` is "joining" (JOIN then ACK) or "member" (heartbeats); ``timed_out`` marks
    a join that has run past its deadline and now retries with backoff.
    """

    def __init__(self, endpoint: str, cfg: _AgentConfig) -> None:
        self.endpoint = endpoint
        self.cfg = cfg
        self.log = logger.bind(node=cfg.me.node_id, tracker=endpoint)
        self.phase = "joining"
        self.timed_out = False
        self.join_step = "join"
        self.join_started = time.monotonic()
        self.token: str | None = None
        self.req: zmq.Socket | None = None
        self.inflight: str | None = None  # kind of the request awaiting its reply
        self.inflight_deadline = math.inf
        self.next_send_at = 0.0
        self.backoff_s = cfg.backoff_initial_s
        self.last_error = ""
        self.last_ok = 0.0  # when our lease was last renewed
        self.lease_s = LEASE_MISSES * cfg.heartbeat_s
        self.heartbeat_s = cfg.heartbeat_s
        self.tracker_id: str | None = None
        self.events_endpoint: str | None = None
        self.sub: zmq.Socket | None = None
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
        return "member" if self.phase == "member" else "timeout" if self.timed_out else "joining"

    def view(self) -> dict[str, MemberInfo]:
        """What this tracker says about the members (with those carried over a restart)."""
        return {**self.carried, **self.members} if self.carried else self.members

    # -- scheduling --

    def next_wake(self) -> float:
        """The next instant this link has something to do."""
        wake = self.inflight_deadline if self.inflight else self.next_send_at
        if self.phase == "joining" and not self.timed_out:
            wake = min(wake, self.join_started + self.cfg.join_deadline_s)
        if self.carried:
            wake = min(wake, self.carried_until)
        return wake

    def tick(self, now: float) -> None:
        """Handle an expired try, the join deadline, and send the next request when due."""
        if self.inflight is not None and now >= self.inflight_deadline:
            self._on_no_reply(now)
        if self.phase == "joining" and not self.timed_out and now - self.join_started >= self.cfg.join_deadline_s:
            self.timed_out = True
            self.backoff_s = self.cfg.backoff_initial_s
            self.log.warning("tracker join timed out; still retrying with backoff",
                             deadline_s=self.cfg.join_deadline_s, last_error=self.last_error or "no reply")
        if self.inflight is None and now >= self.next_send_at:
            self._send_next(now)
        if self.carried and now >= self.carried_until:
            self.log.info("members not seen since the tracker restarted are dropped", nodes=sorted(self.carried))
            self.carried = {}

    def _retry_later(self, now: float) -> None:
        """Capped exponential backoff between attempts."""
        self.next_send_at = now + self.backoff_s
        self.backoff_s = min(self.backoff_s * 2, self.cfg.backoff_max_s)

    def _rejoin(self, now: float, why: str) -> None:
        self.log.info("joining tracker again", reason=why)
        self.phase = "joining"
        self.join_step = "join"
        self.timed_out = False
        self.join_started = now
        self.next_send_at = now
        self.backoff_s = self.cfg.backoff_initial_s

    # -- requests (Lazy Pirate) --

    def _send_next(self, now: float) -> None:
        me = self.cfg.me
        if self.phase == "joining":
            if self.join_step == "ack" and self.token is not None:
                kind, frame = "ack", wire.encode("ack", node=me.node_id, token=self.token)
            else:
                kind, frame = "join", wire.encode("join", node=me.node_id, gossip=me.gossip, api=me.api)
        elif self.need_snapshot:
            kind, frame = "get_list", wire.encode("get_list")
        else:
            kind, frame = "heartbeat", wire.encode("heartbeat", node=me.node_id, token=self.token or "")
        self.send_request(kind, frame, now)

    def send_request(self, kind: str, frame: bytes, now: float) -> None:
        """Send one request on the REQ (opened on demand) and start its per-try timer."""
        if self.req is None:
            self.req = self.cfg.context.socket(zmq.REQ)
            self.req.setsockopt(zmq.LINGER, 0)
            self.req.setsockopt(zmq.MAXMSGSIZE, wire.MAX_MESSAGE_BYTES + 1024)
            self.req.connect(self.endpoint)
        try:
            self.req.send(frame, zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # counted as a lost try below
            self.last_error = str(exc)
        self.inflight = kind
        self.inflight_deadline = now + self.cfg.request_timeout_s

    def close_req(self) -> None:
        """Lazy Pirate: a REQ whose reply is lost is stuck; close it and open a new one later."""
        if self.req is not None:
            self.req.close(linger=0)
            self.req = None
        self.inflight = None
        self.inflight_deadline = math.inf

    def _on_no_reply(self, now: float) -> None:
        kind = self.inflight
        self.close_req()
        self.log.debug("no reply from tracker", request=kind, timeout_s=self.cfg.request_timeout_s)
        if self.phase == "joining":
            self.last_error = "no reply"
            if self.timed_out:
                self._retry_later(now)
            else:
                self.next_send_at = now  # resend at once while within the join deadline
        elif now - self.last_ok > self.lease_s:
            self._rejoin(now, "no reply from tracker for longer than the lease")
        else:
            self.next_send_at = now

    def on_reply(self, now: float) -> None:
        """Read the reply to the request in flight and advance the state machine."""
        assert self.req is not None
        try:
            frame = self.req.recv(zmq.NOBLOCK)
        except zmq.Again:
            return
        kind = self.inflight
        self.inflight = None
        self.inflight_deadline = math.inf
        try:
            msg = wire.decode(frame)
        except WireError as exc:
            self._on_bad_reply(now, f"undecodable reply: {exc}")
            return
        if msg.type == "error":
            self._on_error_reply(now, kind, msg)
        elif kind == "join" and msg.type == "list" and msg.get("token"):
            self.token = msg["token"]
            self._apply_snapshot(msg, now)
            self.lease_s = msg["lease_s"]
            self.join_step = "ack"
            self.next_send_at = now
        elif kind == "ack" and msg.type == "welcome":
            self._on_welcome(now, msg)
        elif kind == "heartbeat" and msg.type == "alive":
            self._on_alive(now, msg)
        elif kind == "heartbeat" and msg.type == "unknown":
            self._rejoin(now, "tracker does not know us (restarted, or our lease ran out)")
        elif kind == "get_list" and msg.type == "list":
            self._apply_snapshot(msg, now)
            if self.phase == "member" and not any(e["node"] == self.cfg.me.node_id for e in msg["members"]):
                self._rejoin(now, "tracker no longer lists us")
            else:
                self.next_send_at = now + self.heartbeat_s
        else:
            self._on_bad_reply(now, f"unexpected reply {msg.type} to {kind}")

    def _on_error_reply(self, now: float, kind: str | None, msg: Message) -> None:
        reason, detail = msg["reason"], msg.get("detail", "")
        if kind == "ack" and reason == "bad-token":
            self.join_step = "join"  # our pending join expired: start over at once
            self.next_send_at = now
            return
        self._on_bad_reply(now, f"{reason}: {detail}" if detail else reason)

    def _on_bad_reply(self, now: float, why: str) -> None:
        if why != self.last_error:
            self.log.warning("tracker refused or answered badly", error=why)
        self.last_error = why
        if self.phase == "joining":
            self.join_step = "join"
            self._retry_later(now)
        else:
            self.next_send_at = now + self.heartbeat_s

    def _on_welcome(self, now: float, msg: Message) -> None:
        self.phase = "member"
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

    def _apply_snapshot(self, msg: Message, now: float) -> None:
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
        if events != self.events_endpoint:
            self._subscribe(events)
        buffered, self.buffered = self.buffered, []
        for event in sorted(buffered, key=lambda ev: ev["seq"]):
            self._on_event(event)

    def _subscribe(self, events: str) -> None:
        if self.sub is not None:
            self.sub.close(linger=0)
        self.sub = self.cfg.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            self.sub.connect(events)
        except zmq.ZMQError as exc:
            self.log.warning("cannot subscribe to tracker events", events=events, error=str(exc))
            self.sub.close(linger=0)
            self.sub = None
            return
        self.events_endpoint = events
        self.log.debug("subscribed to tracker events", events=events)

    def on_events(self, now: float) -> None:
        """Drain the SUB socket."""
        assert self.sub is not None
        for _ in range(MAX_DRAIN_PER_WAKE):
            try:
                frame = self.sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = wire.decode(frame)
            except WireError as exc:
                self.log.warning("bad membership event", error=str(exc))
                continue
            if msg.type != "member_event":
                self.log.warning("unexpected message on the events socket", type=msg.type)
                continue
            self._on_event(msg)
            if self.phase == "member" and self.need_snapshot and self.inflight is None:
                self.next_send_at = min(self.next_send_at, now)

    def _on_event(self, msg: Message) -> None:
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
            if msg["kind"] == EVENT_LEFT and self.phase == "member":
                self._rejoin(time.monotonic(), "tracker announced that we left")
            return
        self.carried.pop(node, None)
        if msg["kind"] == EVENT_JOINED:
            self.members[node] = MemberInfo(node, msg["gossip"], msg["api"])
        elif msg["kind"] == EVENT_LEFT:
            self.members.pop(node, None)

    def close(self) -> None:
        """Close every socket of this link (linger 0)."""
        self.close_req()
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
                 request_timeout_s: float = REQUEST_TIMEOUT_S, heartbeat_s: float = HEARTBEAT_INTERVAL_S,
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
        self._cfg = _AgentConfig(me, context, join_deadline_s, request_timeout_s, heartbeat_s,
                                 backoff_initial_s, max(backoff_max_s, backoff_initial_s))
        self._notify_endpoint = notify_endpoint
        self._lock = threading.Lock()
        self._members: dict[str, MemberInfo] = {}
        self._tracker_status: dict[str, dict[str, Any]] = {}
        self._state = "joining"
        self._stop_event = threading.Event()
        self._leave_budget_s = request_timeout_s
        self._thread: threading.Thread | None = None
        self._log = logger.bind(node=me.node_id)

    @property
    def state(self) -> str:
        """"joining", "member" (of at least one tracker), "timeout" (every join past its deadline) or "stopped"."""
        return self._state

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
        links = [_TrackerLink(endpoint, self._cfg) for endpoint in self._trackers]
        notify: zmq.Socket | None = None
        try:
            if self._notify_endpoint:
                notify = self._cfg.context.socket(zmq.PUSH)
                notify.setsockopt(zmq.LINGER, 0)
                notify.connect(self._notify_endpoint)
            while not self._stop_event.is_set():
                self._step(links)
                self._publish(links, notify)
            self._leave(links)
        except Exception:
            self._log.exception("membership agent failed")
        finally:
            for link in links:
                link.close()
            if notify is not None:
                notify.close(linger=0)
            self._state = "stopped"

    def _step(self, links: list[_TrackerLink]) -> None:
        now = time.monotonic()
        for link in links:
            link.tick(now)
        poller = zmq.Poller()
        owners: dict[zmq.Socket, tuple[_TrackerLink, bool]] = {}
        for link in links:
            if link.req is not None and link.inflight is not None:
                poller.register(link.req, zmq.POLLIN)
                owners[link.req] = (link, True)
            if link.sub is not None:
                poller.register(link.sub, zmq.POLLIN)
                owners[link.sub] = (link, False)
        wake = min([now + POLL_MAX_S] + [link.next_wake() for link in links])
        ready = poller.poll(max(0.0, wake - now) * 1000) if owners else self._sleep(wake - now)
        now = time.monotonic()
        for sock, _ in ready:
            link, is_req = owners[sock]
            if not is_req:
                link.on_events(now)
        # Replies after events: a snapshot then replays what the SUB buffered.
        for sock, _ in ready:
            link, is_req = owners[sock]
            if is_req and link.req is sock:
                link.on_reply(now)

    def _sleep(self, seconds: float) -> list:
        self._stop_event.wait(max(0.0, seconds))
        return []

    def _publish(self, links: list[_TrackerLink], notify: zmq.Socket | None) -> None:
        merged: dict[str, MemberInfo] = {}
        for link in links:  # on conflicting entries the first configured tracker wins
            for node, info in link.view().items():
                merged.setdefault(node, info)
        if any(link.phase == "member" for link in links):
            state = "member"
        elif all(link.timed_out for link in links):
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

    def _leave(self, links: list[_TrackerLink]) -> None:
        """LEAVE every tracker that may count us as a member, waiting at most the leave budget."""
        deadline = time.monotonic() + self._leave_budget_s
        waiting: dict[zmq.Socket, _TrackerLink] = {}
        for link in links:
            if link.token is None or (link.phase != "member" and link.join_step != "ack"):
                continue
            link.close_req()  # a REQ with a request in flight cannot send
            link.send_request("leave", wire.encode("leave", node=self._me.node_id, token=link.token), time.monotonic())
            if link.req is not None:
                waiting[link.req] = link
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
