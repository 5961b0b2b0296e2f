"""The membership protocol itself: its messages, its names for members, its checks.

Both ends share this module: the tracker (:mod:`zcoin.tracker.registry`) and the
clients (:mod:`zcoin.tracker.link`, :mod:`zcoin.tracker.lookup`).  It declares the
wire messages of the diagram in :mod:`zcoin.tracker` and the rules every node id and
endpoint must follow.  It opens no socket and reads no clock, so importing it never
pulls in ZeroMQ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from zcoin import wire
from zcoin.config import MAX_MEMBERS
from zcoin.wire import Bool, Float, Int, List, Map, Opt, Str

MAX_REQUEST_BYTES = 64 * 1024  # a larger request gets an "oversized" error; also the largest event
MAX_REPLY_BYTES = wire.MAX_MESSAGE_BYTES + 1024  # libzmq's limit on a client's REQ (a LIST fits)
POLL_MAX_S = 0.1  # longest a driver's loop sleeps before looking at its stop flag

EVENT_JOINED = "joined"
EVENT_LEFT = "left"

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


def merge_listings(listings: list[wire.Message]) -> list[MemberInfo]:
    """The members of several LIST replies, sorted by node id; of two entries for one
    node, the one heard from most recently wins."""
    merged: dict[str, MemberInfo] = {}
    for msg in listings:
        for entry in msg["members"]:
            info = MemberInfo(entry["node"], entry["gossip"], entry["api"], entry["age_s"])
            known = merged.get(info.node_id)
            if known is None or (known.age_s or 0.0) > (info.age_s or 0.0):
                merged[info.node_id] = info
    return [merged[node] for node in sorted(merged)]
