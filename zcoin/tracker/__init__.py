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
  and keeps retrying with capped exponential backoff; it never gives up, unless the
  tracker's last answer still refuses its name at that deadline (``duplicate-id``: the
  refusal is final, and the miner stops saying why; before the deadline the holder may
  be its own killed previous run, whose lease runs out).  With several
  trackers the client joins each one and merges their lists; while every tracker is
  down it keeps the last list it knew, so the node keeps relaying and mining.

The package splits the way the node does (sans-I/O state, thin ZeroMQ drivers):

* :mod:`~zcoin.tracker.protocol` - the wire messages, :class:`MemberInfo`, the checks
  on node ids and endpoints, the errors; no sockets.
* :mod:`~zcoin.tracker.registry` - the tracker's membership registry as a state
  machine: requests and the time in, reply frames and events to publish out.
* :mod:`~zcoin.tracker.link` - a miner's relation with one tracker as a state machine:
  replies, events and the time in, "send this request" / "reopen the REQ" out.
* :mod:`~zcoin.tracker.server` - :class:`TrackerServer` and ``run_tracker``: the
  ZeroMQ driver of the registry (ROUTER + PUB).
* :mod:`~zcoin.tracker.agent` - :class:`MembershipAgent`: the ZeroMQ driver of the
  links (REQ + SUB per tracker) that a miner runs.
* :mod:`~zcoin.tracker.lookup` - ``request_members``: the one-shot listing of
  ``zcoin peers``.

Only ``server``, ``agent`` and ``lookup`` import ``zmq``; this file imports nothing.
"""
