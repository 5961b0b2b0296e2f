"""Tracker membership: the join handshake, leases, events, the client agent, and the CLI.

Everything runs on real ZeroMQ sockets bound to 127.0.0.1 with ephemeral ports, and
waits on conditions with a deadline (``wait_until``), never on fixed sleeps.  The
trackers of the ``*_process_*`` and CLI tests are real processes started through
``python -m zcoin.cli``, like a user would; a killed member is a small Python process
running a :class:`MembershipAgent`.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zmq.utils.monitor import recv_monitor_message

from support.waiting import wait_until
from zcoin import wire
from zcoin.config import HEARTBEAT_INTERVAL_S, LEASE_MISSES, load_tracker_settings
from zcoin.misbehaviour import BAN_SCORE
from zcoin.sockets import last_endpoint
from zcoin.tracker.agent import MembershipAgent
from zcoin.tracker.lookup import request_members
from zcoin.tracker.protocol import MAX_REQUEST_BYTES, MemberInfo, TrackerUnavailable, resolve_events_endpoint
from zcoin.tracker.registry import PENALTY_MALFORMED
from zcoin.tracker.server import MAX_SOCKET_MESSAGE_BYTES, TrackerServer

REPO = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"tracker listening api=(\S+) events=(\S+)")
GOSSIP, API = "tcp://127.0.0.1:17001", "tcp://127.0.0.1:17002"
OTHER_GOSSIP, OTHER_API = "tcp://127.0.0.1:17101", "tcp://127.0.0.1:17102"
# Short intervals keep leases and retries quick in tests (never below what loopback needs).
FAST = {"heartbeat_s": 0.2, "request_timeout_s": 0.3}


# --- helpers -------------------------------------------------------------------------------


def reserve_port() -> int:
    """A loopback port that was free a moment ago (bound and closed at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RawClient:
    """A bare REQ client speaking the tracker protocol one request at a time."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.REQ)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send_raw(self, frame: bytes, timeout: float = 5.0) -> wire.Message:
        self.sock.send(frame)
        assert self.sock.poll(timeout * 1000), "the tracker did not answer"
        return wire.decode(self.sock.recv())

    def request(self, msg_type: str, **fields: Any) -> wire.Message:
        return self.send_raw(wire.encode(msg_type, **fields))

    def join(self, node: str, gossip: str = GOSSIP, api: str = API) -> wire.Message:
        return self.request("join", node=node, gossip=gossip, api=api)

    def join_and_ack(self, node: str, gossip: str = GOSSIP, api: str = API) -> str:
        listing = self.join(node, gossip, api)
        assert listing.type == "list", listing
        welcome = self.request("ack", node=node, token=listing["token"])
        assert welcome.type == "welcome", welcome
        return listing["token"]

    def members(self) -> dict[str, tuple[str, str]]:
        listing = self.request("get_list")
        assert listing.type == "list"
        return {e["node"]: (e["gossip"], e["api"]) for e in listing["members"]}

    def close(self) -> None:
        self.sock.close(linger=0)


class EventSink:
    """A SUB socket on the tracker's events, read from the test thread."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        self.sock.connect(endpoint)
        self.events: list[wire.Message] = []

    def drain(self, timeout_s: float = 0.0) -> int:
        got = 0
        while self.sock.poll(timeout_s * 1000 if got == 0 else 0):
            self.events.append(wire.decode(self.sock.recv()))
            got += 1
        return got

    def wait_for(self, predicate: Callable[[wire.Message], bool], timeout: float = 10.0) -> wire.Message:
        def found() -> wire.Message | None:
            self.drain(0.02)
            return next((e for e in self.events if predicate(e)), None)
        return wait_until(found, timeout, what="a membership event")

    def of(self, node: str, kind: str) -> list[wire.Message]:
        return [e for e in self.events if e["node"] == node and e["kind"] == kind]

    def close(self) -> None:
        self.sock.close(linger=0)


def warm_up_events(client: RawClient, is_live: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until a subscriber really receives events (PUB/SUB slow joiner).

    A subscription takes effect some time after connect; join and leave a throwaway
    node until an event makes it through.
    """
    def cycle() -> bool:
        token = client.join_and_ack("warmup")
        assert client.request("leave", node="warmup", token=token).type == "bye"
        return is_live()
    wait_until(cycle, timeout, what="the event subscription to come up")


def live_sink(ctx: zmq.Context, server: TrackerServer, client: RawClient) -> EventSink:
    sink = EventSink(ctx, server.events_endpoint)
    warm_up_events(client, lambda: sink.drain(0.05) > 0)
    sink.wait_for(lambda e: e["node"] == "warmup" and e["kind"] == "left")
    sink.events.clear()
    return sink


def sentinel_flush(client: RawClient, sink: EventSink, node: str = "sentinel") -> None:
    """Events are ordered: once a fresh join is seen, every earlier event has been seen too."""
    client.join_and_ack(node)
    sink.wait_for(lambda e: e["node"] == node and e["kind"] == "joined")


class DroppingProxy:
    """ROUTER/DEALER request proxy in a thread that drops the first reply of chosen types."""

    def __init__(self, ctx: zmq.Context, backend: str, drop_types: set[str]) -> None:
        self.ctx, self.backend, self.to_drop = ctx, backend, set(drop_types)
        self.dropped: list[str] = []
        self.endpoint = ""
        self._ready, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> DroppingProxy:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def _run(self) -> None:
        front, back = self.ctx.socket(zmq.ROUTER), self.ctx.socket(zmq.DEALER)
        try:
            front.bind("tcp://127.0.0.1:*")
            back.connect(self.backend)
            self.endpoint = last_endpoint(front)
            self._ready.set()
            poller = zmq.Poller()
            poller.register(front, zmq.POLLIN)
            poller.register(back, zmq.POLLIN)
            while not self._stop.is_set():
                for sock, _ in poller.poll(50):
                    frames = sock.recv_multipart()
                    if sock is front:
                        back.send_multipart(frames)
                        continue
                    reply_type = wire.decode(frames[-1]).type
                    if reply_type in self.to_drop:
                        self.to_drop.discard(reply_type)
                        self.dropped.append(reply_type)
                    else:
                        front.send_multipart(frames)
        finally:
            front.close(linger=0)
            back.close(linger=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class LossyEventProxy:
    """XSUB/XPUB events proxy in a thread that drops the events matching ``drop``."""

    def __init__(self, ctx: zmq.Context, upstream: str, drop: Callable[[wire.Message], bool]) -> None:
        self.ctx, self.upstream, self.drop = ctx, upstream, drop
        self.forwarded = 0
        self.dropped: list[wire.Message] = []
        self.endpoint = ""
        self._ready, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LossyEventProxy:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def _run(self) -> None:
        xsub, xpub = self.ctx.socket(zmq.XSUB), self.ctx.socket(zmq.XPUB)
        try:
            xsub.connect(self.upstream)
            xpub.bind("tcp://127.0.0.1:*")
            self.endpoint = last_endpoint(xpub)
            self._ready.set()
            poller = zmq.Poller()
            poller.register(xsub, zmq.POLLIN)
            poller.register(xpub, zmq.POLLIN)
            while not self._stop.is_set():
                for sock, _ in poller.poll(50):
                    frame = sock.recv()
                    if sock is xpub:  # a subscription going upstream
                        xsub.send(frame)
                        continue
                    msg = wire.decode(frame)
                    if self.drop(msg):
                        self.dropped.append(msg)
                    else:
                        self.forwarded += 1
                        xpub.send(frame)
        finally:
            xsub.close(linger=0)
            xpub.close(linger=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def cleanup():
    """Callables run at teardown, last registered first, even when the test failed."""
    actions: list[Callable[[], None]] = []
    yield actions.append
    for action in reversed(actions):
        action()


@pytest.fixture
def start_tracker(ctx, cleanup):
    def start(bind: str = "tcp://127.0.0.1:*", events: str = "tcp://127.0.0.1:*", **kwargs: Any) -> TrackerServer:
        server = TrackerServer(bind, events, context=ctx, **kwargs)
        server.start()
        cleanup(server.stop)
        return server
    return start


@pytest.fixture
def start_agent(ctx, cleanup):
    def start(trackers: list[str], node: str, **kwargs: Any) -> MembershipAgent:
        for key, value in FAST.items():
            kwargs.setdefault(key, value)
        me = MemberInfo(node, f"inproc://{node}-gossip", f"inproc://{node}-api")
        agent = MembershipAgent(trackers, me, context=ctx, **kwargs)
        agent.start()
        cleanup(agent.stop)
        return agent
    return start


@pytest.fixture
def client(ctx, cleanup):
    def connect(endpoint: str) -> RawClient:
        raw = RawClient(ctx, endpoint)
        cleanup(raw.close)
        return raw
    return connect


@pytest.fixture
def sink(ctx, cleanup):
    def subscribe(server: TrackerServer, raw: RawClient) -> EventSink:
        events = live_sink(ctx, server, raw)
        cleanup(events.close)
        return events
    return subscribe


# --- join handshake ------------------------------------------------------------------------


def test_node_is_listed_only_after_ack_and_joined_is_published(start_tracker, client, sink):
    server = start_tracker()
    raw = client(server.endpoint)
    events = sink(server, raw)

    listing = raw.join("alice")
    assert listing.type == "list"
    assert listing["token"]
    assert listing["events"] == server.events_endpoint
    assert "alice" not in raw.members()

    welcome = raw.request("ack", node="alice", token=listing["token"])
    assert welcome.type == "welcome" and welcome["joined"] is True
    assert welcome["seq"] == listing["seq"] + 1
    assert raw.members()["alice"] == (GOSSIP, API)
    joined = events.wait_for(lambda e: e["node"] == "alice")
    assert joined["kind"] == "joined" and joined["seq"] == welcome["seq"]
    assert (joined["gossip"], joined["api"]) == (GOSSIP, API)


def test_join_never_acked_leaves_no_trace(start_tracker, client, sink):
    server = start_tracker(ack_timeout_s=0.3)
    raw = client(server.endpoint)
    events = sink(server, raw)
    token = raw.join("bob")["token"]
    # While the join awaits its ACK the id is claimed ...
    claimed = raw.join("bob", OTHER_GOSSIP, OTHER_API)
    assert claimed.type == "error" and claimed["reason"] == "duplicate-id"
    # ... and after the deadline the claim is gone, so another node may take the id.
    wait_until(lambda: raw.join("bob", OTHER_GOSSIP, OTHER_API).type == "list", 5, "the pending join to expire")
    late = raw.request("ack", node="bob", token=token)
    assert late.type == "error" and late["reason"] == "bad-token"
    assert "bob" not in raw.members()
    sentinel_flush(raw, events)
    assert [e for e in events.events if e["node"] == "bob"] == []


def test_duplicate_id_from_another_node_is_refused_and_retries_are_idempotent(start_tracker, client, sink):
    server = start_tracker()
    raw = client(server.endpoint)
    events = sink(server, raw)

    first, again = raw.join("carol"), raw.join("carol")
    assert first["token"] == again["token"]
    welcome, welcome_again = (raw.request("ack", node="carol", token=first["token"]) for _ in range(2))
    assert (welcome.type, welcome["joined"]) == ("welcome", True)
    assert (welcome_again.type, welcome_again["joined"]) == ("welcome", False)
    assert raw.join("carol")["token"] == first["token"]  # the same node rejoining is fine

    impostor = client(server.endpoint).join("carol", OTHER_GOSSIP, API)
    assert impostor.type == "error"
    assert impostor["reason"] == "duplicate-id"
    assert "carol" in impostor["detail"] and GOSSIP in impostor["detail"]
    assert raw.members() == {"carol": (GOSSIP, API)}
    sentinel_flush(raw, events)
    assert len(events.of("carol", "joined")) == 1


def test_leave_is_idempotent_and_needs_the_members_token(start_tracker, client):
    server = start_tracker()
    raw = client(server.endpoint)
    token = raw.join_and_ack("dora")
    stolen = raw.request("leave", node="dora", token="0" * 32)
    assert stolen.type == "error" and stolen["reason"] == "bad-token"
    assert "dora" in raw.members()
    assert raw.request("leave", node="dora", token=token).type == "bye"
    assert raw.request("leave", node="dora", token=token).type == "bye"
    assert raw.members() == {}


def test_heartbeat_from_a_non_member_is_answered_unknown(start_tracker, client):
    server = start_tracker()
    raw = client(server.endpoint)
    assert raw.request("heartbeat", node="ghost", token="x").type == "unknown"
    token = raw.join_and_ack("ghost")
    alive = raw.request("heartbeat", node="ghost", token=token)
    assert alive.type == "alive" and alive["seq"] == 1 and alive["tracker"] == server.tracker_id


# --- the client agent ------------------------------------------------------------------------


def test_lost_replies_are_retried_and_the_node_joins_exactly_once(ctx, start_tracker, start_agent, client,
                                                                  sink, cleanup):
    server = start_tracker()
    raw = client(server.endpoint)
    events = sink(server, raw)
    proxy = DroppingProxy(ctx, server.endpoint, {"list", "welcome"}).start()
    cleanup(proxy.stop)

    agent = start_agent([proxy.endpoint], "erin")
    wait_until(lambda: agent.state == "member", 10, "the agent to join")
    assert sorted(proxy.dropped) == ["list", "welcome"]
    listing = raw.request("get_list")
    assert [e["node"] for e in listing["members"]] == ["erin"]
    sentinel_flush(raw, events)
    assert len(events.of("erin", "joined")) == 1


def test_agent_without_tracker_times_out_keeps_retrying_and_joins_later(start_tracker, start_agent, client):
    endpoint = f"tcp://127.0.0.1:{reserve_port()}"
    agent = start_agent([endpoint], "frank", join_deadline_s=0.5, backoff_initial_s=0.2)
    assert agent.state == "joining"
    wait_until(lambda: agent.state == "timeout", 10, "the timeout state")
    assert agent.members() == {}

    server = start_tracker(bind=endpoint)
    wait_until(lambda: agent.state == "member", 15, "the agent to join the late tracker")
    assert "frank" in client(server.endpoint).members()


def test_agent_whose_name_another_member_holds_is_refused_for_good_and_never_times_out(start_tracker, start_agent,
                                                                                       client):
    server = start_tracker()
    client(server.endpoint).join_and_ack("holly")  # holds the name at GOSSIP, API for a lease
    agent = start_agent([server.endpoint], "holly", join_deadline_s=0.5)
    refused = wait_until(lambda: agent.refused, 10, "the agent to report the refusal")
    assert refused.startswith(f"duplicate-id: node id holly is held by a live member at gossip={GOSSIP}")
    assert agent.state == "joining"  # never "timeout": a node in that state would go on alone
    assert client(server.endpoint).members() == {"holly": (GOSSIP, API)}


def test_agents_learn_each_other_and_notify_the_node(ctx, start_tracker, start_agent, cleanup):
    server = start_tracker()
    pull = ctx.socket(zmq.PULL)
    cleanup(lambda: pull.close(linger=0))
    pull.bind("inproc://node-wakeup")
    watcher = start_agent([server.endpoint], "gina", notify_endpoint="inproc://node-wakeup")
    wait_until(lambda: watcher.state == "member", 10, "gina to join")
    start_agent([server.endpoint], "hank")
    wait_until(lambda: pull.poll(100) and pull.recv() == b"members" and "hank" in watcher.members(),
               10, "a notification that hank joined")
    info = watcher.members()["hank"]
    assert (info.gossip, info.api) == ("inproc://hank-gossip", "inproc://hank-api")
    assert "gina" not in watcher.members()


def test_clean_stop_sends_leave_before_the_lease_runs_out(start_tracker, start_agent, client, sink):
    server = start_tracker(lease_s=60.0)
    raw = client(server.endpoint)
    events = sink(server, raw)
    agent = start_agent([server.endpoint], "ivan")
    wait_until(lambda: "ivan" in raw.members(), 10, "ivan to join")
    agent.stop()
    assert agent.state == "stopped"
    assert "ivan" not in raw.members()  # long before the 60 s lease
    events.wait_for(lambda e: e["node"] == "ivan" and e["kind"] == "left")


def test_lost_membership_event_is_recovered_from_a_fresh_snapshot(ctx, start_tracker, start_agent, client,
                                                                  cleanup):
    events_port = reserve_port()
    proxy = LossyEventProxy(ctx, f"tcp://127.0.0.1:{events_port}",
                            lambda e: e["node"] == "hidden" and e["kind"] == "joined").start()
    cleanup(proxy.stop)
    server = start_tracker(events=f"tcp://127.0.0.1:{events_port}", advertise_events=proxy.endpoint)
    raw = client(server.endpoint)
    watcher = start_agent([server.endpoint], "judy")
    wait_until(lambda: watcher.state == "member", 10, "judy to join")
    warm_up_events(raw, lambda: proxy.forwarded > 0)  # judy's subscription now reaches the tracker

    start_agent([server.endpoint], "hidden")
    wait_until(lambda: "hidden" in watcher.members(), 10, "judy to learn about hidden despite the lost event")
    assert [e["node"] for e in proxy.dropped] == ["hidden"]


def test_two_trackers_are_merged_and_the_list_survives_when_both_are_down(start_tracker, start_agent, client):
    first, second = start_tracker(lease_s=1.0), start_tracker(lease_s=1.0)
    start_agent([first.endpoint], "kate")
    start_agent([second.endpoint], "leo")
    both = start_agent([first.endpoint, second.endpoint], "mia")
    wait_until(lambda: set(both.members()) == {"kate", "leo"}, 10, "the merged list")
    assert "mia" in client(first.endpoint).members()
    assert "mia" in client(second.endpoint).members()

    first.stop()
    second.stop()
    wait_until(lambda: both.state in ("joining", "timeout"), 10, "mia to notice that the trackers are gone")
    assert set(both.members()) == {"kate", "leo"}


def test_request_members_retries_a_lost_reply_and_reports_an_unreachable_tracker(ctx, start_tracker,
                                                                                  start_agent, cleanup):
    server = start_tracker()
    start_agent([server.endpoint], "nina")
    wait_until(lambda: request_members([server.endpoint], timeout_s=2.0, context=ctx), 10, "nina to join")
    proxy = DroppingProxy(ctx, server.endpoint, {"list"}).start()
    cleanup(proxy.stop)
    listed = request_members([proxy.endpoint], timeout_s=5.0, request_timeout_s=0.3, context=ctx)
    assert proxy.dropped == ["list"]
    assert [m.node_id for m in listed] == ["nina"]
    assert listed[0].age_s is not None and listed[0].age_s >= 0

    dead = f"tcp://127.0.0.1:{reserve_port()}"
    merged = request_members([dead, server.endpoint], timeout_s=1.0, request_timeout_s=0.2, context=ctx)
    assert [m.node_id for m in merged] == ["nina"]
    with pytest.raises(TrackerUnavailable, match=re.escape(dead)):
        request_members([dead], timeout_s=0.6, request_timeout_s=0.2, context=ctx)


def test_shipped_config_loads_and_flags_override_it():
    settings = load_tracker_settings(str(REPO / "configs" / "tracker.toml"), bind="tcp://127.0.0.1:9100")
    assert settings["bind"] == "tcp://127.0.0.1:9100"
    assert settings["events"] == "tcp://127.0.0.1:9001"
    assert settings["lease_s"] == LEASE_MISSES * HEARTBEAT_INTERVAL_S


def test_events_endpoint_on_a_wildcard_host_is_reached_through_the_trackers_host():
    assert resolve_events_endpoint("tcp://10.0.0.5:9000", "tcp://0.0.0.0:9001") == "tcp://10.0.0.5:9001"
    assert resolve_events_endpoint("tcp://10.0.0.5:9000", "tcp://127.0.0.1:9001") == "tcp://127.0.0.1:9001"
    assert resolve_events_endpoint("tcp://[::1]:9000", "tcp://[::]:9001") == "tcp://[::1]:9001"
    assert resolve_events_endpoint("ipc:///tmp/t", "ipc:///tmp/e") == "ipc:///tmp/e"


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("frame, reason", [
    (b"\xc1 not msgpack", "malformed"),
    (msgpack.packb([1, 2, 3]), "malformed"),
    (msgpack.packb({"v": 99, "t": "join"}), "bad-version"),
    (msgpack.packb({"v": wire.PROTOCOL_VERSION, "t": "no-such-type"}), "unknown-type"),
    (wire.encode("bye", node="x"), "unexpected-type"),
    (msgpack.packb({"v": wire.PROTOCOL_VERSION, "t": "join", "node": 7}), "bad-field"),
    (wire.encode("join", node="has space", gossip=GOSSIP, api=API), "bad-node-id"),
    (wire.encode("join", node="ok", gossip="tcp://*:5000", api=API), "bad-endpoint"),
    (b"\x00" * (MAX_REQUEST_BYTES + 1), "oversized"),
])
def test_bad_requests_get_an_error_reply_with_a_reason(start_tracker, client, frame, reason):
    raw = client(start_tracker().endpoint)
    reply = raw.send_raw(frame)
    assert reply.type == "error" and reply["reason"] == reason
    assert raw.join("after-bad-input").type == "list"


def test_a_connection_sending_malformed_requests_is_ignored_while_others_are_served(start_tracker, client):
    server = start_tracker()
    mallory = client(server.endpoint)
    for _ in range(BAN_SCORE // PENALTY_MALFORMED):
        assert mallory.send_raw(b"\xc1 garbage").type == "error"  # each one refused, and counted
    mallory.sock.send(wire.encode("join", node="mallory", gossip=GOSSIP, api=API))
    assert not mallory.sock.poll(1000), "a banned connection was answered"
    assert client(server.endpoint).join("honest").type == "list"
    # A refused but well-formed request is no misbehaviour: a misconfigured miner keeps its answers.
    clumsy = client(server.endpoint)
    for _ in range(2 * BAN_SCORE // PENALTY_MALFORMED):
        assert clumsy.join("has space").type == "error"
    assert clumsy.join("clumsy").type == "list"


def test_multipart_and_huge_messages_do_not_stop_the_tracker(ctx, start_tracker, client, cleanup):
    server = start_tracker()
    dealer = ctx.socket(zmq.DEALER)
    cleanup(lambda: dealer.close(linger=0))
    dealer.connect(server.endpoint)
    dealer.send_multipart([b"", wire.encode("get_list"), b"extra"])
    assert dealer.poll(5000)
    assert wire.decode(dealer.recv_multipart()[-1])["reason"] == "malformed"

    huge = ctx.socket(zmq.REQ)
    cleanup(lambda: huge.close(linger=0))
    monitor = huge.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    cleanup(huge.disable_monitor)
    huge.connect(server.endpoint)
    huge.send(b"\x00" * (MAX_SOCKET_MESSAGE_BYTES + 1))
    # The MAXMSGSIZE backstop makes libzmq drop the sender's connection.
    assert monitor.poll(5000), "the oversized sender was not disconnected"
    assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
    monitor.close(linger=0)
    assert client(server.endpoint).join("still-serving").type == "list"


_INTS = st.integers(-2**63, 2**64 - 1)  # what msgpack can pack
_FIELD_VALUES = st.one_of(
    st.none(), st.booleans(), _INTS, st.floats(), st.text(max_size=40),
    st.binary(max_size=40), st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.text(max_size=5), _INTS, max_size=2),
)
_MESSAGE_MAPS = st.one_of(
    st.dictionaries(st.one_of(st.text(max_size=8), _INTS), _FIELD_VALUES, max_size=6),
    st.fixed_dictionaries(
        {"v": st.sampled_from([wire.PROTOCOL_VERSION, 0, wire.PROTOCOL_VERSION + 1, "2", None]),
         "t": st.sampled_from(["join", "ack", "heartbeat", "leave", "get_list", "list", "welcome", "error", "x"])},
        optional={"node": _FIELD_VALUES, "gossip": _FIELD_VALUES, "api": _FIELD_VALUES, "token": _FIELD_VALUES,
                  "extra": _FIELD_VALUES},
    ),
)


def test_random_frames_never_stop_the_tracker_from_serving_a_join(start_tracker, client):
    server = start_tracker()
    raw = client(server.endpoint)
    expected = {"error", "list", "welcome", "alive", "unknown", "bye"}

    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(frame=st.one_of(st.binary(max_size=512), _MESSAGE_MAPS.map(lambda m: msgpack.packb(m, use_bin_type=True))))
    def probe(frame: bytes) -> None:
        fuzzer = client(server.endpoint)  # a fresh connection: malformed input gets a connection banned
        assert fuzzer.send_raw(frame).type in expected
        fuzzer.close()
        assert raw.join("fuzz-probe").type == "list"

    probe()
    raw.join_and_ack("fuzz-probe")
    assert "fuzz-probe" in raw.members()


# --- real processes --------------------------------------------------------------------------


class TrackerProcess:
    """``python -m zcoin.cli tracker ...`` with its stderr collected line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "zcoin.cli", "tracker", *args], cwd=REPO,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_listening(self, timeout: float = 20.0) -> tuple[str, str]:
        def listening() -> tuple[str, str] | None:
            for line in list(self.lines):
                if match := LISTENING.search(line):
                    return match.group(1), match.group(2)
            if self.proc.poll() is not None:
                raise AssertionError(f"tracker exited with {self.proc.returncode}: {''.join(self.lines)}")
            return None
        return wait_until(listening, timeout, "the tracker to listen")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)


@pytest.fixture
def tracker_process(cleanup):
    def spawn(*args: str) -> TrackerProcess:
        process = TrackerProcess(*args)
        cleanup(process.kill)
        return process
    return spawn


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zcoin.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def write_config(tmp_path: Path, **values: Any) -> str:
    body = "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())
    path = tmp_path / "tracker.toml"
    path.write_text(f"[tracker]\n{body}")
    return str(path)


def test_tracker_process_killed_and_restarted_members_rejoin(tmp_path, ctx, tracker_process, start_agent,
                                                             cleanup):
    config = write_config(tmp_path, lease_s=1.0)
    api, events = f"tcp://127.0.0.1:{reserve_port()}", f"tcp://127.0.0.1:{reserve_port()}"
    first = tracker_process("--config", config, "--bind", api, "--events", events)
    assert first.wait_listening() == (api, events)
    olga = start_agent([api], "olga")
    start_agent([api], "pete")
    wait_until(lambda: "pete" in olga.members(), 10, "olga to see pete")
    # Sample olga's view all along: a tracker restart must not make pete vanish from it.
    vanished, sampling = [], threading.Event()

    def sample() -> None:
        while not sampling.wait(0.005):
            if "pete" not in olga.members():
                vanished.append(time.monotonic())
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cleanup(lambda: (sampling.set(), sampler.join(5)))

    first.proc.send_signal(signal.SIGKILL)
    first.kill()
    second = tracker_process("--config", config, "--bind", api, "--events", events)
    second.wait_listening()

    def both_rejoined() -> bool:
        listed = request_members([api], timeout_s=1.0, request_timeout_s=0.3, context=ctx)
        return {m.node_id for m in listed} == {"olga", "pete"}
    wait_until(both_rejoined, 15, "both members to rejoin the restarted tracker")
    # Once nothing is carried over any more, pete is there because the new tracker said so.
    wait_until(lambda: olga.tracker_status()[api] == {"state": "member", "members": 1, "carried": 0, "seq": 2},
               10, "olga to relearn pete from the new tracker")
    sampling.set()
    sampler.join(5)
    assert vanished == []


MEMBER_SCRIPT = """
import sys, threading, zmq
from zcoin.log import setup_logging
from zcoin.tracker.agent import MembershipAgent
from zcoin.tracker.protocol import MemberInfo
setup_logging("WARNING")
tracker, node = sys.argv[1], sys.argv[2]
agent = MembershipAgent([tracker], MemberInfo(node, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"),
                        context=zmq.Context(), heartbeat_s=0.2, request_timeout_s=0.3)
agent.start()
threading.Event().wait()
"""


def test_member_process_killed_disappears_after_its_lease_and_left_is_published(start_tracker, client, sink,
                                                                                  cleanup):
    server = start_tracker(lease_s=1.0)
    raw = client(server.endpoint)
    events = sink(server, raw)
    member = subprocess.Popen([sys.executable, "-c", MEMBER_SCRIPT, server.endpoint, "quinn"], cwd=REPO,
                              stdin=subprocess.DEVNULL)
    cleanup(lambda: (member.poll() is None and member.kill(), member.wait(10)))
    wait_until(lambda: "quinn" in raw.members(), 20, "the member process to join")

    member.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    left = events.wait_for(lambda e: e["node"] == "quinn" and e["kind"] == "left", 10)
    # Dropped by the 1 s lease (its last heartbeat was at most 0.2 s before the kill), not by a LEAVE.
    assert time.monotonic() - killed_at >= 0.5
    assert left["seq"] > events.of("quinn", "joined")[0]["seq"]
    assert "quinn" not in raw.members()


def test_peers_json_lists_the_members_of_a_tracker_process(tracker_process, start_agent):
    process = tracker_process("--bind", "tcp://127.0.0.1:*", "--events", "tcp://127.0.0.1:*")
    api, _ = process.wait_listening()
    agent = start_agent([api], "rosa")
    wait_until(lambda: agent.state == "member", 10, "rosa to join")

    result = run_cli("peers", "--tracker", api, "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    [rosa] = document["members"]
    assert (rosa["node"], rosa["gossip"], rosa["api"]) == ("rosa", "inproc://rosa-gossip", "inproc://rosa-api")
    assert rosa["age_s"] >= 0

    table = run_cli("peers", "--tracker", api)
    assert table.returncode == 0 and "rosa" in table.stdout and "inproc://rosa-api" in table.stdout


def test_peers_against_an_unreachable_tracker_prints_one_line_and_exits_1():
    result = run_cli("peers", "--tracker", f"tcp://127.0.0.1:{reserve_port()}", "--timeout", "0.5")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("Error: no tracker answered")
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("command", ["tracker", "peers"])
def test_help_exits_0(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0 and "Usage:" in result.stdout


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_tracker_process_exits_0_on_signal(tracker_process, sig):
    process = tracker_process("--bind", "tcp://127.0.0.1:*", "--events", "tcp://127.0.0.1:*")
    process.wait_listening()
    process.proc.send_signal(sig)
    assert process.proc.wait(10) == 0
    assert "Traceback" not in "".join(process.lines)


def test_a_tracker_restarted_on_its_state_file_lists_its_members_and_knows_their_tokens(tmp_path, start_tracker,
                                                                                         client):
    state = tmp_path / "tracker-state.json"
    first = start_tracker(state_path=state)
    token = client(first.endpoint).join_and_ack("alice")
    first.stop()

    second = start_tracker(state_path=state)
    raw = client(second.endpoint)
    assert second.tracker_id == first.tracker_id
    assert raw.members() == {"alice": (GOSSIP, API)}
    assert raw.request("heartbeat", node="alice", token=token).type == "alive"
    assert raw.request("leave", node="alice", token=token).type == "bye"
    second.stop()
    assert json.loads(state.read_text())["members"] == []


def test_tracker_process_refuses_an_unusable_state_file_in_one_line(tmp_path):
    state = tmp_path / "state.json"
    state.write_text('{"tracker": "t1", "members": "everyone"}')
    result = run_cli("tracker", "--bind", "tcp://127.0.0.1:*", "--events", "tcp://127.0.0.1:*", "--state", str(state))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"Error: cannot use tracker state file {state}: not tracker, seq and a list of members with node, gossip, "
        "api and token (remove it to start with no members)"]


def test_tracker_process_refuses_a_bad_config_or_busy_port_in_one_line(tmp_path, tracker_process):
    bad = tmp_path / "bad.toml"
    bad.write_text("[tracker]\nlease = 3\n")
    result = run_cli("tracker", "--config", str(bad))
    assert result.returncode == 1 and "unknown key tracker.lease" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1

    process = tracker_process("--bind", "tcp://127.0.0.1:*", "--events", "tcp://127.0.0.1:*")
    api, _ = process.wait_listening()
    busy = run_cli("tracker", "--bind", api, "--events", "tcp://127.0.0.1:*")
    assert busy.returncode == 1 and "cannot bind" in busy.stderr and "Traceback" not in busy.stderr
