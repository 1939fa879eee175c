"""Moving zeromesh messages through pyzmq sockets quickly: shared by worker, client, broker.

pyzmq's ``send_multipart``/``recv_multipart`` spend more time in Python than libzmq
spends moving a small message: flag enums are combined per frame (``IntFlag.__or__``
costs microseconds) and every frame is handled the same way whatever its size. These
two functions use plain integer flags, copy small ``bytes`` frames (cheaper than
tracking them) and pass large buffers — numpy arrays — without a copy. Receiving
yields ``zmq.Frame`` objects: their buffers go straight to the decoder, and arrays
built on them share their memory.

A multipart message is atomic in ZeroMQ: once its first frame is accepted, the rest
are, so `send_message` either sends all or raises ``zmq.Again`` having sent nothing.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from ._logs import add_log_level, setup_logging

__all__ = [
    "BindError",
    "add_log_level",
    "bind_router",
    "has_input",
    "recv_message",
    "send_message",
    "setup_logging",
]

# The Cython methods under pyzmq's Python ``Socket`` layer: that layer only adds the
# DRAFT ``routing_id``/``group`` arguments and ~2 µs of Python per frame, which at a
# few frames per message is a large share of a small call's cost.
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_get = zmq.backend.Socket.get

_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def has_input(sock: zmq.Socket[Any]) -> bool:
    """True if a message is waiting on ``sock``.

    ZeroMQ's file descriptor is edge-triggered, and sending or reading ``EVENTS`` may
    consume the edge of a message that arrived meanwhile: after sending, ask this
    before going back to wait on the descriptor.
    """
    return not sock.closed and bool(_get(sock, _EVENTS) & _POLLIN)


def recv_message(sock: zmq.Socket[Any]) -> list[zmq.Frame]:
    """Receive one whole multipart message without blocking.

    Raises:
        zmq.Again: nothing is waiting.
    """
    frame = _recv(sock, _NOBLOCK, False)
    frames = [frame]
    while frame.more:
        frame = _recv(sock, 0, False)  # the rest of a multipart message is already here
        frames.append(frame)
    return frames


def send_message(sock: zmq.Socket[Any], frames: Sequence[Any]) -> None:
    """Send ``frames`` as one multipart message without blocking.

    ``bytes`` frames are copied (cheap at their size); any other buffer — a numpy
    array's memory — is handed to libzmq without a copy: do not modify it until the
    message is gone.

    Raises:
        zmq.Again: the peer's queue is full, or (with IMMEDIATE) no peer is connected;
            nothing was sent.
    """
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        _send(sock, frame, _NOBLOCK if i == last else _MORE, type(frame) is bytes)


class BindError(Exception):
    """An endpoint cannot be bound; the message says why and what to do."""


def bind_router(
    ctx: zmq.Context[Any],
    endpoints: Sequence[str],
    *,
    heartbeat_ms: int,
    heartbeat_timeout_ms: int,
    max_message_bytes: int,
    check_ipc: Callable[[str, str], None] | None = None,
    log: logging.Logger,
) -> tuple[zmq.Socket[Any], list[str]]:
    """A ROUTER bound on every endpoint, set up as worker and broker both need it.

    ``check_ipc(endpoint, path)`` runs before an ipc bind (the worker refuses a path a
    live worker answers on) and may raise `BindError`. Returns the socket and the
    endpoints actually bound (``tcp://*:0`` resolved).

    Raises:
        BindError: a malformed endpoint, an address in use, a missing directory.
    """
    sock = ctx.socket(zmq.ROUTER)
    # A send to a peer that left must fail at once (EHOSTUNREACH), not vanish silently.
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.setsockopt(zmq.MAXMSGSIZE, max(max_message_bytes, 1 << 20))
    sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat_timeout_ms)
    sock.setsockopt(zmq.LINGER, 0)
    bound: list[str] = []
    try:
        for endpoint in endpoints:
            scheme, sep, rest = endpoint.partition("://")
            if not sep or scheme not in ("tcp", "ipc") or not rest:
                raise BindError(
                    f"cannot bind {endpoint!r}: use tcp://HOST:PORT (e.g. "
                    "tcp://127.0.0.1:5555, tcp://*:5555) or ipc:///path/to/socket"
                )
            if scheme == "ipc":
                if len(rest.encode()) > 100:
                    raise BindError(
                        f"ipc path {rest!r} is {len(rest.encode())} bytes; unix sockets "
                        "allow ~107, use a shorter path"
                    )
                if check_ipc is not None:
                    check_ipc(endpoint, rest)
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                hint = ""
                if exc.errno == zmq.EADDRINUSE:
                    hint = ": the address is in use (another worker or broker on it?)"
                elif exc.errno == errno.ENOENT:
                    hint = ": the directory does not exist"
                raise BindError(f"cannot bind {endpoint}: {exc.strerror}{hint}") from exc
            last = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            bound.append(last)
            log.info("bound %s", last)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock, bound
