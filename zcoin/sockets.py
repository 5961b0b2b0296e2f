"""ZeroMQ, once: socket options, draining, and the envelope around every wire message.

Every zcoin socket is opened by :func:`open_socket`, so linger, size limits and
high-water marks are set in one place: a finite linger so shutdown never hangs;
``zmq.MAXMSGSIZE`` only as a backstop (frames up to it reach :func:`wire.decode`,
which refuses anything over ``wire.MAX_MESSAGE_BYTES`` and lets the receiver
penalise the sender, where libzmq would drop silently); queues sized for bursts
instead of the silent-drop default of 1000.  :func:`drain` reads what is ready on
a socket, bounded, so one busy socket cannot starve the others.

:class:`Envelope` owns the frames around a message (jupyter_client's ``Session``
idea): ROUTER identities, the request id a DEALER request carries and its reply
brings back, REQ delimiters, gossip topics.  Handlers get ``(who, request id,
payload)`` and never touch raw frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import zmq

from zcoin import wire
from zcoin.wire import GOSSIP_TYPES

MAX_SOCKET_MESSAGE_BYTES = 2 * wire.MAX_MESSAGE_BYTES  # libzmq's limit: a backstop behind wire.decode
HWM = 100_000  # PUB/SUB and DEALER/ROUTER queues sized for bursts
MAX_DRAIN_PER_WAKE = 500  # messages read from one socket before the others get a turn
SHUTDOWN_LINGER_MS = 200
REQUEST_ID_BYTES = 8


def open_socket(context: zmq.Context, kind: int, *, linger_ms: int = 0, max_bytes: int = MAX_SOCKET_MESSAGE_BYTES,
                hwm: int | None = HWM, subscribe: tuple[bytes, ...] = ()) -> zmq.Socket:
    """A socket of ``kind`` with zcoin's options (not yet bound or connected)."""
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    if max_bytes:
        sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    if hwm is not None:
        if kind != zmq.SUB:
            sock.setsockopt(zmq.SNDHWM, hwm)
        if kind != zmq.PUB:
            sock.setsockopt(zmq.RCVHWM, hwm)
    for topic in subscribe:
        sock.setsockopt(zmq.SUBSCRIBE, topic)
    return sock


def last_endpoint(sock: zmq.Socket) -> str:
    """The endpoint a socket actually bound (port 0 / ``*`` resolved)."""
    return sock.getsockopt(zmq.LAST_ENDPOINT).decode()


def drain(sock: zmq.Socket, handler: Callable[[list[bytes]], None], limit: int = MAX_DRAIN_PER_WAKE) -> None:
    """Hand up to ``limit`` ready multipart messages to ``handler`` without blocking."""
    for _ in range(limit):
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        except zmq.ZMQError:
            return  # closed under us (a peer dropped while draining)
        handler(frames)
        if sock.closed:
            return


class EnvelopeError(ValueError):
    """Frames that do not have the shape of any zcoin envelope.

    ``reply_to``, when the route back is known, lets the receiver still answer (an error).
    """

    def __init__(self, message: str, reply_to: Incoming | None = None) -> None:
        super().__init__(message)
        self.reply_to = reply_to


@dataclass(frozen=True, slots=True)
class Incoming:
    """One request read from a ROUTER: who sent it, the frames to route the reply back, the payload."""

    identity: bytes
    route: tuple[bytes, ...]  # the frames between identity and payload, returned as they came
    payload: bytes


class Envelope:
    """Packs and unpacks the frames around wire messages (one place for the framing rules).

    - a peer's DEALER request: ``[request id (8 bytes), payload]``; the ROUTER sees the
      identity in front and sends ``[identity, request id, reply]`` back, so the reply is
      matched to its request, not its turn;
    - a client's DEALER sends ``[payload]``, a REQ ``[b"", payload]``: replies route back alike;
    - gossip: one frame, ``topic + payload`` (a SUB's subscription is a prefix of the frame;
      one frame, not ``[topic, payload]``, costs a publisher and each subscriber a fifth less).
    """

    @staticmethod
    def request(request_id: int, payload: bytes) -> list[bytes]:
        return [request_id.to_bytes(REQUEST_ID_BYTES, "big"), payload]

    @staticmethod
    def reply_id(frames: list[bytes]) -> int | None:
        """The request id a reply on a DEALER carries, or None when it carries none."""
        if len(frames) == 2 and len(frames[0]) == REQUEST_ID_BYTES:
            return int.from_bytes(frames[0], "big")
        return None

    @staticmethod
    def incoming(frames: list[bytes], *, delimited: bool = False) -> Incoming:
        """A request on a ROUTER.  Node api: at most one route frame, empty or a request id.
        ``delimited`` (the tracker): everything up to an empty delimiter is route."""
        if len(frames) < 2:
            raise EnvelopeError("no payload")
        identity, rest = frames[0], frames[1:]
        if delimited:
            cut = rest.index(b"") + 1 if b"" in rest else 0
            if len(rest) - cut != 1:
                raise EnvelopeError(f"expected one frame, got {len(rest) - cut}",
                                    Incoming(identity, tuple(rest[:cut]), b""))
            return Incoming(identity, tuple(rest[:cut]), rest[-1])
        route = rest[:-1]
        if len(route) > 1 or (route and len(route[0]) not in (0, REQUEST_ID_BYTES)):
            raise EnvelopeError("bad envelope")
        return Incoming(identity, tuple(route), rest[-1])

    @staticmethod
    def reply(incoming: Incoming, payload: bytes) -> list[bytes]:
        return [incoming.identity, *incoming.route, payload]

    @staticmethod
    def gossip(topic: bytes, payload: bytes) -> bytes:
        return topic + payload

    @staticmethod
    def gossip_parts(frames: list[bytes]) -> tuple[bytes, bytes]:
        """``(topic, payload)`` of a gossip message (no topic is a prefix of another)."""
        if len(frames) != 1:
            raise EnvelopeError(f"gossip with {len(frames)} frames")
        frame = frames[0]
        for topic in GOSSIP_TYPES:
            if frame.startswith(topic):
                return topic, frame[len(topic):]
        raise EnvelopeError(f"gossip under an unknown topic {frame[:8]!r}")
