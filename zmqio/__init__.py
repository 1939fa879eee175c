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

from collections.abc import Sequence
from typing import Any

import zmq

__all__ = ["has_input", "recv_message", "send_message"]

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
    return not sock.closed and bool(sock.getsockopt(_EVENTS) & _POLLIN)


def recv_message(sock: zmq.Socket[Any]) -> list[zmq.Frame]:
    """Receive one whole multipart message without blocking.

    Raises:
        zmq.Again: nothing is waiting.
    """
    recv = sock.recv
    frame = recv(_NOBLOCK, copy=False)
    frames = [frame]
    while frame.more:
        frame = recv(0, copy=False)  # the rest of a multipart message is already here
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
    send = sock.send
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        send(frame, _NOBLOCK if i == last else _MORE, copy=type(frame) is bytes)
