"""Talking to a miner's ``api`` socket from outside: the CLI, wallets, load generators, tests.

A :class:`NodeClient` owns one DEALER socket connected to a node's ROUTER and
sends checked wire messages.  Replies come back in order (the node serves one
client's requests in the order they arrive), so a load generator may keep
several requests in flight with :meth:`NodeClient.send` / :meth:`NodeClient.recv`.
A request with no reply within the timeout raises :class:`NodeUnavailable`
(and the socket is replaced, as in the Lazy Pirate recipe, so a late reply is
never mistaken for the next one).  An endpoint ZeroMQ cannot connect to at all
(``nonsense``, ``tcp://host`` without a port) raises :class:`BadEndpoint` from
the constructor.
"""

from __future__ import annotations

from typing import Any

import zmq

from zcoin import wire

DEFAULT_TIMEOUT_S = 5.0


class NodeUnavailable(ConnectionError):
    """The node did not answer within the timeout."""


class BadEndpoint(ValueError):
    """Not an endpoint ZeroMQ can connect to (a usage error, not an unreachable node)."""


class NodeError(RuntimeError):
    """The node answered with an error message."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class NodeClient:
    """A blocking client of one node's api endpoint."""

    def __init__(self, endpoint: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.context = context or zmq.Context.instance()
        self.sock: zmq.Socket | None = None
        self._open()

    def _open(self) -> None:
        self.sock = self.context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        try:
            self.sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise BadEndpoint(f"not a node endpoint: {self.endpoint!r} ({zmq.strerror(exc.errno)})") from None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send(self, msg_type: str, **fields: Any) -> None:
        """Send one request without waiting."""
        self.sock.send(wire.encode(msg_type, **fields))

    def recv(self, timeout_s: float | None = None) -> wire.Message:
        """The next reply; raises ``NodeUnavailable`` after the timeout, ``NodeError`` on an error reply."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if not self.sock.poll(int(timeout * 1000), zmq.POLLIN):
            self.close()
            self._open()
            raise NodeUnavailable(f"no answer from {self.endpoint} within {timeout:g}s")
        msg = wire.decode(self.sock.recv())
        if msg.type == "error":
            raise NodeError(msg["reason"], msg.get("detail", ""))
        return msg

    def request(self, msg_type: str, **fields: Any) -> wire.Message:
        """Send a request and wait for its reply."""
        self.send(msg_type, **fields)
        return self.recv()
