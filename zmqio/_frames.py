"""Moving whole messages through pyzmq sockets quickly, without ever blocking.

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

from collections.abc import Callable, Sequence
from typing import Any

import zmq

__all__ = ["has_input", "receive_batch", "recv_message", "send_message"]

# The Cython methods under pyzmq's Python ``Socket`` layer: that layer only adds the
# DRAFT ``routing_id``/``group`` arguments and ~2 µs of Python per frame, which at a
# few frames per message is a large share of a small call's cost.
_send = zmq.backend.Socket.send
_recv = zmq.backend.Socket.recv
_get: Callable[[Any, int], int] = zmq.backend.Socket.get  # type: ignore[assignment]

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


def receive_batch(
    sock: zmq.Socket[Any], handle: Callable[[list[zmq.Frame]], None], limit: int
) -> int:
    """Hand up to ``limit`` waiting messages to ``handle``, one call per message.

    The one receive loop of every zeromesh socket: drain until ``zmq.Again`` (the FD is
    edge-triggered, so stopping early would strand messages), but at most ``limit`` at
    a time, so timers and signals get a turn during a flood.

    Returns:
        How many messages were handled; ``limit`` means more may be waiting: call
        again soon.
    """
    n = 0
    try:
        while n < limit:
            frames = recv_message(sock)
            n += 1
            handle(frames)
            if n == 1 and (sock.closed or not _get(sock, _EVENTS) & _POLLIN):
                # A lone message, the common case of a quiet peer: asking EVENTS costs
                # less than the zmq.Again a second receive would raise (an exception
                # object built in Python), and re-arms the descriptor just the same.
                break
    except zmq.Again:
        pass
    return n
