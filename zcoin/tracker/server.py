"""The tracker daemon: the ZeroMQ driver of the membership registry.

A ROUTER takes requests (a ROUTER rather than a REP, so a slow or vanished client
never blocks the tracker) and a PUB carries membership events.  The driver reads
what is ready, hands each request to :class:`~zcoin.tracker.registry.MembershipRegistry`
with the time, publishes the events the registry returns and routes its reply back
through :class:`~zcoin.sockets.Envelope`; every tenth of a lease it lets the
registry expire what is overdue.

With a state file, the registry's members are written there (atomically, before
the reply that acknowledges a change is sent) and taken back at start, each with a
fresh lease: a restarted tracker lists the same network, not an empty one.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any

import zmq
from loguru import logger

from zcoin.config import JOIN_ACK_TIMEOUT_S, LEASE_S, MAX_MEMBERS
from zcoin.sockets import SHUTDOWN_LINGER_MS, Envelope, EnvelopeError, drain, last_endpoint, open_socket
from zcoin.tracker.protocol import POLL_MAX_S, TrackerError
from zcoin.tracker.registry import MembershipRegistry

MAX_SOCKET_MESSAGE_BYTES = 1024 * 1024  # zmq.MAXMSGSIZE backstop: libzmq drops the peer
MAX_REQUESTS_PER_WAKE = 1000  # requests handled per wake-up before housekeeping runs


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
                 advertise_events: str | None = None, max_members: int = MAX_MEMBERS,
                 state_path: str | Path | None = None) -> None:
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
        self._registry = MembershipRegistry(self.tracker_id, lease_s=self.lease_s,
                                            ack_timeout_s=self.ack_timeout_s, max_members=max_members)
        self.state_path = Path(state_path) if state_path else None
        if self.state_path is not None:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
        if self.state_path is not None and self.state_path.exists():
            self._registry.restore(_read_state(self.state_path), time.monotonic())
            self.tracker_id = self._registry.tracker_id
            logger.info("members taken back from the state file", members=len(self._registry),
                        state=str(self.state_path))
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._stop_event: threading.Event | None = None

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
        # Above MAX_REQUEST_BYTES the registry answers "oversized"; far above, libzmq drops the peer.
        api = open_socket(ctx, zmq.ROUTER, linger_ms=SHUTDOWN_LINGER_MS, max_bytes=MAX_SOCKET_MESSAGE_BYTES, hwm=None)
        pub = open_socket(ctx, zmq.PUB, linger_ms=SHUTDOWN_LINGER_MS, hwm=None)
        try:
            try:
                api.bind(self.bind)
                pub.bind(self.events_bind)
            except zmq.ZMQError as exc:
                raise TrackerError(f"cannot bind {self.bind} / {self.events_bind}: {exc}") from None
            self.endpoint = last_endpoint(api)
            self.events_endpoint = last_endpoint(pub)
            self._registry.events_endpoint = self.advertise_events or self.events_endpoint
            logger.info("tracker listening api={api} events={events}", api=self.endpoint,
                        events=self.events_endpoint, tracker=self.tracker_id, lease_s=self.lease_s)
            self.ready.set()
            self._loop(api, pub, stop_event)
        finally:
            api.close(linger=SHUTDOWN_LINGER_MS)
            pub.close(linger=SHUTDOWN_LINGER_MS)
            if own_context:
                ctx.term()
            if self.ready.is_set():
                logger.info("tracker stopped", members=len(self._registry),
                            bad_input=self._registry.bad_input.total)

    def _loop(self, api: zmq.Socket, pub: zmq.Socket, stop_event: threading.Event) -> None:
        poller = zmq.Poller()
        poller.register(api, zmq.POLLIN)
        sweep_every_s = min(POLL_MAX_S, self.lease_s / 10, self.ack_timeout_s / 10)
        next_sweep = time.monotonic()
        while not stop_event.is_set():
            now = time.monotonic()
            if now >= next_sweep:
                events = self._registry.expire(now)
                self._save(events)
                _publish(pub, events)
                next_sweep = now + sweep_every_s
            if not poller.poll(max(0.0, next_sweep - now) * 1000):
                continue
            drain(api, lambda frames: self._handle(api, pub, frames), MAX_REQUESTS_PER_WAKE)

    def _handle(self, api: zmq.Socket, pub: zmq.Socket, frames: list[bytes]) -> None:
        now = time.monotonic()
        try:
            incoming = Envelope.incoming(frames, delimited=True)
        except EnvelopeError as exc:
            incoming = exc.reply_to
            answer = self._registry.on_bad_envelope(frames[0], str(exc), now)
        else:
            answer = self._registry.on_request(incoming.identity, incoming.payload, now)
        self._save(answer.events)  # a change is on disk before its ACK leaves
        _publish(pub, answer.events)
        if answer.reply is None or incoming is None:
            return  # a banned connection is not answered
        try:
            # ROUTER never blocks: a reply to a vanished peer is dropped.
            api.send_multipart(Envelope.reply(incoming, answer.reply), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            logger.warning("cannot send reply", error=str(exc))

    def _save(self, events: tuple[bytes, ...]) -> None:
        """Write the members to the state file after a change (every change is an event)."""
        if self.state_path is None or not events:
            return
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self._registry.snapshot(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_path)
        except OSError as exc:  # membership is renewed by heartbeats: serve on, say so
            logger.error("cannot write the tracker state file", state=str(self.state_path), error=str(exc))


def _read_state(path: Path) -> dict[str, Any]:
    """A state file written by :meth:`TrackerServer._save`; ``TrackerError`` saying why it cannot be used."""
    fields = "tracker, seq and a list of members with node, gossip, api and token"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrackerError(f"cannot use tracker state file {path}: {exc} (remove it to start with no members)") \
            from None
    members = state.get("members") if isinstance(state, dict) else None
    if not (isinstance(members, list) and isinstance(state.get("tracker"), str) and isinstance(state.get("seq"), int)
            and all(isinstance(m, dict) and all(isinstance(m.get(k), str) for k in ("node", "gossip", "api", "token"))
                    for m in members)):
        raise TrackerError(f"cannot use tracker state file {path}: not {fields} (remove it to start with no members)")
    return state


def _publish(pub: zmq.Socket, events: tuple[bytes, ...]) -> None:
    for frame in events:
        pub.send(frame, zmq.NOBLOCK)  # PUB drops at its high-water mark; clients resync


def run_tracker(settings: dict[str, Any]) -> None:
    """Serve a tracker in this (main) thread until SIGTERM or SIGINT, then close cleanly."""
    server = TrackerServer(settings["bind"], settings["events"], lease_s=settings["lease_s"],
                           ack_timeout_s=settings["join_ack_timeout_s"],
                           advertise_events=settings["advertise_events"] or None,
                           max_members=settings["max_members"], state_path=settings["state"] or None)
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
