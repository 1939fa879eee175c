"""Send now, or queue in order when a peer's pipe is full: never block, never drop silently.

A worker or broker must not block its loop on one slow peer, and must not lose an
answer because a pipe was momentarily full. libzmq queues up to ``SNDHWM`` messages
per peer; past that a send raises ``zmq.Again`` and the message waits here, in order
behind the peer's earlier ones, and is retried on a timer. What waits is counted in
bytes per peer, so the owner can stop taking work from a peer that does not read
(`full`) and its memory stays bounded. A message that can never be delivered (the
peer left) is counted and logged, never dropped without a word.
"""

from __future__ import annotations

import argparse
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from ._frames import send_message
from ._sockets import SERVER_SNDHWM

__all__ = ["DEFAULT_PEER_OUTPUT", "Outbox", "add_max_peer_output"]

DEFAULT_PEER_OUTPUT = 64 * 1024 * 1024
"""Bytes of answers that may wait for one peer (past libzmq's SNDHWM messages) before
a worker or broker takes no more requests from it."""

_RETRY_MIN_S = 0.005
_RETRY_MAX_S = 0.2


def _nbytes(frames: Sequence[Any]) -> int:
    total = 0
    for frame in frames:
        total += len(frame) if type(frame) is bytes else memoryview(frame).nbytes
    return total


class _Queue:
    __slots__ = ("bytes", "messages")

    def __init__(self) -> None:
        self.messages: deque[Sequence[Any]] = deque()
        self.bytes = 0


class Outbox:
    """The send path of one socket. Loop thread only.

    For a ROUTER, each message's first frame is the peer's routing id and queues are
    per peer; for a DEALER there is one queue. ``max_bytes`` is what one peer's queue
    may hold before `full` says so (a message is always accepted: the bound is the
    owner's to enforce, by taking no more work from that peer).

    ``on_gone(peer)`` runs when a peer turns out to be unreachable (it left).
    """

    def __init__(
        self,
        sock: zmq.Socket[Any],
        loop: Any,
        *,
        max_bytes: int,
        log: logging.Logger,
        peer_kind: str = "peer",
        on_gone: Callable[[bytes], None] | None = None,
    ) -> None:
        self.sock = sock
        self.max_bytes = max_bytes
        self.undeliverable = 0
        """Messages given up on because their peer left (or the socket was reset)."""
        self.refused_unread = 0
        """Requests dropped because their peer's answers were not being read."""
        self._router = sock.type == zmq.ROUTER
        self._loop = loop
        self._log = log
        self._kind = peer_kind
        self._on_gone = on_gone
        self._queues: dict[bytes, _Queue] = {}
        self._timer: Any = None
        self._delay = _RETRY_MIN_S
        self._events = 0

    def send(self, frames: Sequence[Any]) -> bool:
        """Send ``frames`` now or queue them behind the peer's earlier messages.

        Returns:
            False if the peer is gone (the message is counted as undeliverable).
        """
        key = frames[0] if self._router else b""
        queue = self._queues.get(key) if self._queues else None
        if queue is None:
            try:
                send_message(self.sock, frames)
                return True
            except zmq.Again:
                queue = self._queues[key] = _Queue()
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                self._gone(key, 1, "it left")
                return False
        queue.messages.append(frames)
        queue.bytes += _nbytes(frames)
        if self._timer is None:
            self._delay = _RETRY_MIN_S
            self._timer = self._loop.call_later(self._delay, self._retry)
        return True

    def full(self, peer: bytes = b"") -> bool:
        """True while more than ``max_bytes`` wait for ``peer``: take no work from it."""
        queue = self._queues.get(peer) if self._queues else None
        return queue is not None and queue.bytes > self.max_bytes

    def not_reading(self, peer: bytes) -> bool:
        """True (counted, and logged now and then) if ``peer`` is `full`: the owner then
        drops the request it just got from it unanswered, because an answer would only
        wait behind the others while the peer's own deadline runs out."""
        queue = self._queues.get(peer) if self._queues else None
        if queue is None or queue.bytes <= self.max_bytes:
            return False
        self.refused_unread += 1
        n = self.refused_unread
        if n in (1, 10, 100) or n % 10_000 == 0:
            count, size = self.waiting(peer)
            self._log.warning(
                "%s %s is not reading (%d answers, %d bytes waiting, over %d): its requests "
                "are dropped unanswered until it reads [%d so far]",
                self._kind,
                peer.hex(),
                count,
                size,
                self.max_bytes,
                n,
            )
        return True

    def waiting(self, peer: bytes = b"") -> tuple[int, int]:
        """(messages, bytes) queued for ``peer``."""
        queue = self._queues.get(peer)
        return (len(queue.messages), queue.bytes) if queue is not None else (0, 0)

    @property
    def total_bytes(self) -> int:
        """Bytes waiting for all peers together."""
        return sum(q.bytes for q in self._queues.values())

    def reset(
        self, sock: zmq.Socket[Any] | None = None, why: str = "the connection was reset"
    ) -> None:
        """Give up on everything queued (counted), optionally for a new socket."""
        for key, queue in list(self._queues.items()):
            self._gone(key, len(queue.messages), why, notify=False)
        if sock is not None:
            self.sock = sock

    def flush(self) -> None:
        """Send what waits, in order, until a peer's pipe is full again."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._retry()

    def _retry(self) -> None:
        self._timer = None
        progress = False
        sock = self.sock
        for key, queue in list(self._queues.items()):
            messages = queue.messages
            try:
                while messages:
                    frames = messages[0]
                    send_message(sock, frames)
                    messages.popleft()
                    queue.bytes -= _nbytes(frames)
                    progress = True
            except zmq.Again:
                continue
            except zmq.ZMQError as exc:
                if exc.errno not in (zmq.EHOSTUNREACH, zmq.ENOTSOCK):
                    raise
                self._gone(key, len(messages), "it left")
                continue
            del self._queues[key]
        if self._queues:
            self._delay = _RETRY_MIN_S if progress else min(2 * self._delay, _RETRY_MAX_S)
            self._timer = self._loop.call_later(self._delay, self._retry)

    def _gone(self, key: bytes, count: int, why: str, notify: bool = True) -> None:
        if notify and self._on_gone is not None:
            self._on_gone(key)
        self._queues.pop(key, None)
        if count:
            self.undeliverable += count
            self._events += 1
            if self._events > 10 and self._events % 100:
                return  # a peer that leaves holding thousands must not flood the log
            self._log.warning(
                "%d message(s) to %s %s undeliverable (%s); %d undeliverable so far",
                count,
                self._kind,
                key.hex() or "(broker)",
                why,
                self.undeliverable,
            )


def add_max_peer_output(parser: argparse.ArgumentParser) -> None:
    """Add ``--max-peer-output MB`` (worker and broker): the bound on one peer's queue."""
    parser.add_argument(
        "--max-peer-output",
        type=float,
        default=DEFAULT_PEER_OUTPUT / 2**20,
        metavar="MB",
        help="MiB of answers that may wait for one client that does not read them "
        f"(beyond {SERVER_SNDHWM} messages in libzmq's queue); past it, that client's "
        f"requests are dropped until it reads (default {DEFAULT_PEER_OUTPUT // 2**20})",
    )
