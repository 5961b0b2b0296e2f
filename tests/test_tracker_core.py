"""The join protocol without sockets or clock: the tracker's registry and miners' links, wired in memory.

:class:`~zcoin.tracker.registry.MembershipRegistry` and
:class:`~zcoin.tracker.link.TrackerLink` are sans-I/O state machines, so a test can
be their driver: :class:`Net` is a small loop that moves a fake clock forward in
steps, ticks every link, carries each :class:`SendRequest` to ``registry.on_request``
and the reply back to ``link.on_reply``, and hands every published event to the
links that subscribed.  It loses exactly the frames a test tells it to lose, so
Lazy Pirate retries and Clone resyncs are exercised deterministically.  A link left
out of ``Net.links`` is a frozen miner: it neither sends nor hears anything.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

from zcoin import wire
from zcoin.misbehaviour import BAN_SCORE, Misbehaviour
from zcoin.tracker.link import Action, JoinStep, LinkConfig, Phase, ResetRequest, Subscribe, TrackerLink
from zcoin.tracker.protocol import MAX_REQUEST_BYTES, MemberInfo
from zcoin.tracker.registry import PENALTY_MALFORMED, MembershipRegistry
from zcoin.wire import Message

TRACKER = "tcp://127.0.0.1:7000"
EVENTS = "tcp://127.0.0.1:7001"
LEASE_S = 0.6
ACK_TIMEOUT_S = 0.4
HEARTBEAT_S = 0.2  # LEASE_MISSES (3) heartbeats per lease
REQUEST_TIMEOUT_S = 0.1
STEP_S = 0.02  # the fake clock's resolution
BAN_DURATION_S = 1.0


def new_registry(tracker_id: str, misbehaviour: Misbehaviour | None = None) -> MembershipRegistry:
    """A tracker instance with the short test lease, advertising ``EVENTS``."""
    registry = MembershipRegistry(tracker_id, lease_s=LEASE_S, ack_timeout_s=ACK_TIMEOUT_S, max_members=16,
                                  misbehaviour=misbehaviour)
    registry.events_endpoint = EVENTS
    return registry


def new_link(node: str, port: int = 17000, now: float = 0.0, join_deadline_s: float = 1.0) -> TrackerLink:
    """Miner ``node``'s link to ``TRACKER``, gossiping on ``port`` and serving its api on ``port + 1``."""
    me = MemberInfo(node, f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{port + 1}")
    cfg = LinkConfig(me, join_deadline_s=join_deadline_s, request_timeout_s=REQUEST_TIMEOUT_S,
                     heartbeat_s=HEARTBEAT_S, backoff_initial_s=0.1, backoff_max_s=0.4)
    return TrackerLink(TRACKER, cfg, now)


class Step(NamedTuple):
    """One thing that happened on a link's wire: ``what`` is send, lost, reply, lost-reply or reset."""

    at: float
    node: str
    what: str
    msg: Message | None


@dataclass
class Net:
    """One registry and some links, joined by wires that lose only what the test asks them to."""

    registry: MembershipRegistry
    links: list[TrackerLink]
    now: float = 0.0
    lose_requests: list[str] = field(default_factory=list)  # request types, each entry loses the next one
    lose_replies: list[str] = field(default_factory=list)  # request types whose next reply is lost
    lose_events: set[tuple[str, int]] = field(default_factory=set)  # (node, seq) never reaches that node
    trace: list[Step] = field(default_factory=list)
    events: list[Message] = field(default_factory=list)  # everything the registry published
    _reqs: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))  # link -> REQ generation

    def run(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward in steps: expire, then let every link act."""
        end = round(self.now + seconds, 6)
        while self.now < end:
            self.now = round(self.now + STEP_S, 6)
            self._publish(self.registry.expire(self.now))
            for link in list(self.links):
                for action in link.tick(self.now):
                    self._perform(link, action)

    def _perform(self, link: TrackerLink, action: Action) -> None:
        node = link.cfg.me.node_id
        if isinstance(action, Subscribe):
            link.subscribed(action.endpoint)
            return
        if isinstance(action, ResetRequest):
            self._reqs[id(link)] += 1  # a fresh REQ is a new identity to the tracker's ROUTER
            self.trace.append(Step(self.now, node, "reset", None))
            return
        request = wire.decode(action.frame)
        self.trace.append(Step(self.now, node, "send", request))
        if request.type in self.lose_requests:
            self.lose_requests.remove(request.type)
            self.trace.append(Step(self.now, node, "lost", request))
            return
        answer = self.registry.on_request((node, id(link), self._reqs[id(link)]), action.frame, self.now)
        self._publish(answer.events)
        assert answer.reply is not None, f"{node}'s request was ignored"
        reply = wire.decode(answer.reply)
        if request.type in self.lose_replies:
            self.lose_replies.remove(request.type)
            self.trace.append(Step(self.now, node, "lost-reply", reply))
            return
        self.trace.append(Step(self.now, node, "reply", reply))
        for follow_up in link.on_reply(answer.reply, self.now):
            self._perform(link, follow_up)

    def _publish(self, frames: tuple[bytes, ...]) -> None:
        for frame in frames:
            event = wire.decode(frame)
            self.events.append(event)
            for link in self.links:
                if link.events_endpoint and (link.cfg.me.node_id, event["seq"]) not in self.lose_events:
                    link.on_event(frame, self.now)

    def story(self, node: str, since: float = 0.0) -> list[str]:
        """What ``node``'s link did since ``since``, as lines like "send join", "lost-reply list", "reset"."""
        return [f"{s.what} {s.msg.type}" if s.msg else s.what
                for s in self.trace if s.node == node and s.at > since]

    def replies(self, node: str, msg_type: str) -> list[Message]:
        """Replies of ``msg_type`` the registry gave ``node``, whether or not they arrived."""
        return [s.msg for s in self.trace if s.node == node and s.what in ("reply", "lost-reply")
                and s.msg is not None and s.msg.type == msg_type]

    def listed(self) -> dict[str, str]:
        """The registry's members as GET_LIST shows them: node id -> gossip endpoint."""
        reply = wire.decode(self.registry.on_request("observer", wire.encode("get_list"), self.now).reply)
        return {entry["node"]: entry["gossip"] for entry in reply["members"]}

    def announced(self) -> list[tuple[str, str]]:
        """Every published event as (kind, node), in order."""
        return [(event["kind"], event["node"]) for event in self.events]


def reason(reply: bytes | None) -> str:
    """An error reply's reason, or the type of any other reply."""
    msg = wire.decode(reply)
    return msg["reason"] if msg.type == "error" else msg.type


# --- joining -------------------------------------------------------------------------------


def test_a_node_is_listed_only_after_its_ack():
    net = Net(new_registry("t1"), [new_link("a")], lose_requests=["ack"])
    net.run(2 * STEP_S)
    link = net.links[0]
    assert net.story("a") == ["send join", "reply list", "send ack", "lost ack"]
    assert link.join_step == JoinStep.ACK and link.phase == Phase.JOINING
    assert net.listed() == {} and net.events == []

    net.run(REQUEST_TIMEOUT_S + 2 * STEP_S)
    assert link.phase == Phase.MEMBER
    assert net.listed() == {"a": link.cfg.me.gossip}
    assert net.announced() == [("joined", "a")]


def test_an_unacked_join_expires_and_the_link_joins_again_with_a_new_token():
    acks_lost = 5  # one ACK per request timeout: together they outlast the ack timeout
    net = Net(new_registry("t1"), [new_link("a")], lose_requests=["ack"] * acks_lost)
    net.run(ACK_TIMEOUT_S)  # the JOIN went out one step in: its claim on the id still holds
    other = wire.encode("join", node="a", gossip="tcp://10.0.0.9:1", api="tcp://10.0.0.9:2")
    assert reason(net.registry.on_request("other", other, net.now).reply) == "duplicate-id"
    assert net.listed() == {} and net.events == []

    net.run(4 * REQUEST_TIMEOUT_S)
    expected = (["send join", "reply list"] + ["send ack", "lost ack", "reset"] * acks_lost
                + ["send ack", "reply error", "send join", "reply list", "send ack", "reply welcome"])
    assert net.story("a")[:len(expected)] == expected
    assert net.replies("a", "error")[0]["reason"] == "bad-token"
    first, second = (listing["token"] for listing in net.replies("a", "list"))
    assert first != second == net.links[0].token
    assert net.links[0].phase == Phase.MEMBER and net.announced() == [("joined", "a")]


def test_join_and_ack_retried_after_lost_replies_join_the_node_once():
    net = Net(new_registry("t1"), [new_link("a")], lose_replies=["join", "ack"])
    net.run(0.5)
    listings = net.replies("a", "list")
    assert len(listings) == 2 and listings[0]["token"] == listings[1]["token"] == net.links[0].token
    assert [welcome["joined"] for welcome in net.replies("a", "welcome")] == [True, False]
    assert net.announced() == [("joined", "a")]
    assert net.links[0].phase == Phase.MEMBER and list(net.listed()) == ["a"]


def test_a_duplicate_node_id_with_other_endpoints_is_refused():
    net = Net(new_registry("t1"), [new_link("a", port=17000)])
    net.run(0.1)
    impostor = new_link("a", port=18000, now=net.now)
    net.links.append(impostor)
    net.run(0.5)
    assert {error["reason"] for error in net.replies("a", "error")} == {"duplicate-id"}
    assert impostor.phase == Phase.JOINING and impostor.last_error.startswith("duplicate-id")
    assert net.listed() == {"a": "tcp://127.0.0.1:17000"}
    assert net.announced() == [("joined", "a")]
    assert net.registry.misbehaviour.bans == 0


def test_a_name_still_refused_at_the_join_deadline_is_refused_for_good():
    net = Net(new_registry("t1"), [new_link("a", port=17000)])
    net.run(0.1)
    impostor = new_link("a", port=18000, now=net.now, join_deadline_s=1.0)
    net.links.append(impostor)
    net.run(0.5)
    assert impostor.last_error.startswith("duplicate-id") and impostor.refused is None  # still trying
    net.run(0.5 + STEP_S)
    assert impostor.timed_out
    assert impostor.refused.startswith("duplicate-id: node id a is held by a live member at "
                                       "gossip=tcp://127.0.0.1:17000")
    assert net.links[0].phase == Phase.MEMBER and net.listed() == {"a": "tcp://127.0.0.1:17000"}


def test_a_restart_on_new_ports_joins_once_the_killed_runs_lease_runs_out():
    net = Net(new_registry("t1"), [new_link("a", port=17000)])
    net.run(0.1)
    net.links.clear()  # killed: no LEAVE, its lease runs on
    restarted = new_link("a", port=18000, now=net.now, join_deadline_s=2.0)
    net.links.append(restarted)
    net.run(2.0)
    assert "duplicate-id" in {error["reason"] for error in net.replies("a", "error")}
    assert restarted.phase == Phase.MEMBER and restarted.refused is None and restarted.refusal is None
    assert net.listed() == {"a": "tcp://127.0.0.1:18000"}


# --- leases --------------------------------------------------------------------------------


def test_a_silent_member_is_dropped_with_a_left_event_and_rejoins_after_an_unknown_heartbeat():
    a, b = new_link("a", 17000), new_link("b", 17010)
    net = Net(new_registry("t1"), [a, b])
    net.run(0.1)
    assert set(b.view()) == {"a"}

    net.links.remove(a)  # frozen
    last_heard = max(step.at for step in net.trace if step.node == "a")
    net.run(last_heard + LEASE_S - net.now)
    assert "a" in net.listed()
    net.run(STEP_S)
    assert net.announced() == [("joined", "a"), ("joined", "b"), ("left", "a")]
    assert list(net.listed()) == ["b"] and b.view() == {}

    thawed_at = net.now
    net.links.append(a)
    net.run(0.1)
    assert net.story("a", thawed_at)[:4] == ["send heartbeat", "reply unknown", "send join", "reply list"]
    assert a.phase == Phase.MEMBER and set(net.listed()) == {"a", "b"} and set(b.view()) == {"a"}
    assert net.announced()[-1] == ("joined", "a")


# --- Lazy Pirate ---------------------------------------------------------------------------


def test_a_lost_reply_resets_the_request_and_resends_it():
    net = Net(new_registry("t1"), [new_link("a")], lose_replies=["join"])
    net.run(0.3)
    assert net.story("a")[:6] == ["send join", "lost-reply list", "reset", "send join", "reply list", "send ack"]
    sent, reset = net.trace[0], next(s for s in net.trace if s.what == "reset")
    assert REQUEST_TIMEOUT_S <= reset.at - sent.at <= REQUEST_TIMEOUT_S + STEP_S + 1e-9

    since = net.now
    net.lose_replies = ["heartbeat"]
    net.run(HEARTBEAT_S + REQUEST_TIMEOUT_S + 2 * STEP_S)
    assert net.story("a", since)[:5] == ["send heartbeat", "lost-reply alive", "reset", "send heartbeat",
                                          "reply alive"]
    assert net.links[0].phase == Phase.MEMBER and net.announced() == [("joined", "a")]


# --- Clone ---------------------------------------------------------------------------------


def test_a_gap_in_event_numbers_makes_the_link_take_a_fresh_snapshot():
    a = new_link("a", 17000)
    net = Net(new_registry("t1"), [a])
    net.run(0.1)
    assert a.phase == Phase.MEMBER and a.applied_seq == 1

    since = net.now
    net.lose_events = {("a", 2)}  # "b joined" never reaches a; "c joined" (3) does
    net.links += [new_link("b", 17010, net.now), new_link("c", 17020, net.now)]
    net.run(0.1)
    assert net.announced() == [("joined", "a"), ("joined", "b"), ("joined", "c")]
    assert net.story("a", since)[:2] == ["send get_list", "reply list"]  # before its next heartbeat
    for link in net.links:
        me = link.cfg.me.node_id
        assert set(link.view()) == set(net.listed()) - {me}, me
        assert link.applied_seq == net.registry.seq


# --- a tracker restart ---------------------------------------------------------------------


def test_a_restarted_tracker_keeps_old_members_carried_over_until_they_rejoin_or_it_ends():
    a, b, c, d = (new_link(node, 17000 + 10 * i) for i, node in enumerate("abcd"))
    net = Net(new_registry("t1"), [a, b, c, d])
    net.run(0.1)
    assert set(a.view()) == {"b", "c", "d"}

    restarted_at = net.now
    net.registry = new_registry("t2")
    net.links = [a, b]  # c is away for a while, d for good
    net.run(0.4)
    assert set(net.listed()) == {"a", "b"}
    assert a.tracker_id == "t2" and a.phase == Phase.MEMBER
    assert set(a.view()) == {"b", "c", "d"} and set(a.carried) == {"c", "d"}

    net.links.append(c)
    net.run(0.4)
    assert set(net.listed()) == {"a", "b", "c"}
    assert set(a.carried) == {"d"} and set(a.view()) == {"b", "c", "d"}

    carry_over_ends = restarted_at + 0.3 + 2 * LEASE_S  # a rejoined within 0.3 s of the restart
    net.run(carry_over_ends - net.now)
    assert a.carried == {} and set(a.view()) == {"b", "c"}
    assert set(b.view()) == {"a", "c"}


def test_a_tracker_restarted_from_its_snapshot_lists_the_silent_members_for_one_lease():
    """A new node joining a restarted tracker sees the network, not an empty list, while the
    old members (here frozen) have a lease to renew; members that renew go on without rejoining."""
    a, b = new_link("a", 17000), new_link("b", 17010)
    net = Net(new_registry("t1"), [a, b])
    net.run(0.1)
    snapshot = net.registry.snapshot()

    restarted_at = net.now
    net.registry = new_registry("t2")
    net.registry.restore(snapshot, net.now)
    assert net.registry.tracker_id == "t1" and net.registry.seq == 2
    c = new_link("c", 17020, now=net.now)
    net.links = [b, c]  # a is frozen
    net.run(0.1)
    assert set(c.view()) == {"a", "b"} and c.phase == Phase.MEMBER
    assert net.announced()[-1] == ("joined", "c") and net.events[-1]["seq"] == 3
    assert "join" not in net.story("b", restarted_at)  # b's heartbeats go on with its old token

    net.run(restarted_at + LEASE_S + STEP_S - net.now)
    assert set(net.listed()) == {"b", "c"} and set(c.view()) == {"b"}
    assert net.announced()[-1] == ("left", "a")


# --- misbehaviour --------------------------------------------------------------------------


def test_malformed_requests_ban_their_sender_while_refused_ones_count_against_no_one():
    registry = new_registry("t1", Misbehaviour(ban_duration_s=BAN_DURATION_S))
    net = Net(registry, [new_link("a")])
    net.run(0.1)
    token = net.links[0].token
    assert token is not None

    refused = {  # well formed, each refused for what it says
        "duplicate-id": wire.encode("join", node="a", gossip="tcp://10.0.0.9:1", api="tcp://10.0.0.9:2"),
        "bad-token": wire.encode("ack", node="a", token="not-a's-token"),
        "bad-node-id": wire.encode("join", node="has space", gossip="tcp://h:1", api="tcp://h:2"),
        "bad-endpoint": wire.encode("join", node="z", gossip="tcp://*:1", api="tcp://h:2"),
    }
    for _ in range(BAN_SCORE // PENALTY_MALFORMED + 1):
        for why, frame in refused.items():
            assert reason(registry.on_request("careless", frame, net.now).reply) == why
    assert registry.misbehaviour.score("careless", net.now) == 0

    malformed = [b"\xc1", wire.encode("alive", tracker="t0", seq=1, lease_s=1.0), b"\x80" * (MAX_REQUEST_BYTES + 1),
                 wire.encode("join", node="x", gossip="tcp://h:1", api="tcp://h:2")[:-3]]
    offences = BAN_SCORE // PENALTY_MALFORMED
    for i in range(offences - 1):
        answer = registry.on_request("vandal", malformed[i % len(malformed)], net.now)
        assert reason(answer.reply) in {"malformed", "unexpected-type", "oversized"}
    assert not registry.misbehaviour.banned("vandal", net.now)
    assert reason(registry.on_bad_envelope("vandal", "two payload frames", net.now).reply) == "malformed"
    assert registry.misbehaviour.banned("vandal", net.now)
    assert registry.on_request("vandal", wire.encode("get_list"), net.now).reply is None  # even a good one

    since = net.now
    net.run(BAN_DURATION_S - 2 * STEP_S)
    assert registry.on_request("vandal", wire.encode("get_list"), net.now).reply is None
    assert "reply alive" in net.story("a", since) and net.links[0].phase == Phase.MEMBER
    net.run(2 * STEP_S)
    assert reason(registry.on_request("vandal", wire.encode("get_list"), net.now).reply) == "list"
    assert registry.misbehaviour.score("vandal", net.now) == 0
