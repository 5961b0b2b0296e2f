"""One question to the trackers: who are the members? (what ``zcoin peers`` asks).

The zguide *Lazy Pirate* client (``lpclient.py``): a REQ per tracker, a per-try
timeout, and on silence close the REQ and resend on a fresh one, until the overall
budget runs out.  Trackers are asked in parallel and their lists merged.
"""

from __future__ import annotations

import time

import zmq
from loguru import logger

from zcoin import wire
from zcoin.config import TRACKER_TRY_TIMEOUT_S
from zcoin.sockets import open_socket
from zcoin.tracker.protocol import MAX_REPLY_BYTES, MemberInfo, TrackerUnavailable, merge_listings
from zcoin.wire import Message, WireError


def request_members(trackers: list[str], *, timeout_s: float, context: zmq.Context | None = None,
                    request_timeout_s: float = TRACKER_TRY_TIMEOUT_S) -> list[MemberInfo]:
    """Ask every tracker for its member list and merge them (sorted by node id).

    Each tracker gets a REQ; a try unanswered within ``request_timeout_s`` closes the
    socket and resends on a new one, until ``timeout_s`` has passed.  Raises
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
        sock = open_socket(ctx, zmq.REQ, max_bytes=MAX_REPLY_BYTES, hwm=None)
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

    def read_reply(endpoint: str, frame: bytes) -> None:
        try:
            msg = wire.decode(frame)
        except WireError as exc:
            failures[endpoint] = f"bad reply: {exc}"
            return
        if msg.type == "list":
            answers[endpoint] = msg
            failures.pop(endpoint, None)
        elif msg.type == "error":
            failures[endpoint] = f"refused: {msg['reason']} {msg.get('detail', '')}".strip()
        else:
            failures[endpoint] = f"unexpected reply {msg.type}"

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
                    read_reply(endpoint, frame)
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
    return merge_listings(list(answers.values()))
