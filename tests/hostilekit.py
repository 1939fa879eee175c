"""Hostile peers for the robustness tests: raw pyzmq sockets that flood, never read, send
frames over a limit, or pose as a worker or a broker; and a reader of a process's memory.

Everything here is a real socket on a real connection; nothing mocks ZeroMQ. Each raw
socket has its own ``zmq.Context`` and LINGER 0, so closing it never waits on a peer.

A raw DEALER that stops reading while its peer goes on sending can hit a libzmq 4.3
assertion (``!_io_error``, zeromq/libzmq#4364) in *our* process if it reads again after
the peer dropped the connection. So a flooder either never reads (`raw_dealer` default)
or takes every answer off the wire as it comes (``rcvhwm=0``) and reads them later.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

import protocol
from protocol import Hello, Ping, Pong, Reply, Request

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


# --- memory -------------------------------------------------------------------------------


def rss_mb(pid: int | str = "self") -> float:
    """Resident memory of process ``pid`` (default: this one) in MiB, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"process {pid} has no VmRSS: it exited")


class PeakRss:
    """Samples a process's resident memory every ``interval`` seconds while in a ``with``.

    ``peak`` is the largest sample so far (readable while sampling); the samples stop at
    the end of the block, or at once if the process exits.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = rss_mb(pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(self.interval):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (OSError, AssertionError):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)


# --- raw DEALERs --------------------------------------------------------------------------


@contextlib.contextmanager
def raw_dealer(endpoint: str, *, rcvhwm: int = 1000) -> Iterator[zmq.Socket[bytes]]:
    """A bare DEALER connected to ``endpoint``, in its own context, closed at the end.

    ``rcvhwm=0`` makes libzmq take every answer off the wire into this process as it
    arrives, so the peer's sends never block on us; the default (1000) stops reading
    the connection once that many answers wait, as a client that never reads would.
    """
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.SNDTIMEO, 200)  # a blocked send returns, so a flood can be stopped
    try:
        sock.connect(endpoint)
        yield sock
    finally:
        sock.close(linger=0)
        ctx.term()


def requests(target: str, args: list[Any], n: int) -> list[list[Any]]:
    """``n`` encoded requests for ``target(*args)`` with ids 1..n and no ttl.

    Built before the flood starts, so the sender outpaces the worker. The body (and any
    out-of-band frame) is one object shared by all ``n``: only the header differs.
    """
    shared = protocol.encode(Request(1, target, args))[1:]
    return [[protocol.encode(Request(i, target))[0], *shared] for i in range(1, n + 1)]


class Flooder(threading.Thread):
    """Sends ``messages`` on a raw DEALER as fast as the peer takes them; never reads.

    Use it as a context manager: the thread starts on entry and is stopped and joined on
    exit. ``sent`` counts the messages that went out; `halt` ends the flood early. The
    socket is this thread's until it is joined; then the test may read from it.
    """

    def __init__(self, sock: zmq.Socket[bytes], messages: Sequence[list[Any]]) -> None:
        super().__init__(name="flooder", daemon=True)
        self.sock = sock
        self.messages = messages
        self.sent = 0
        self._halt = threading.Event()

    def run(self) -> None:
        for frames in self.messages:
            while not self._halt.is_set():
                try:
                    self.sock.send_multipart(frames, copy=False)
                    break
                except zmq.Again:  # the peer takes nothing now (SNDTIMEO): try again
                    pass
            else:
                return
            self.sent += 1

    def halt(self) -> None:
        self._halt.set()

    def __enter__(self) -> Flooder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.halt()
        self.join(10)
        assert not self.is_alive(), "the flooder did not stop"


def answers(sock: zmq.Socket[bytes], expected: int, quiet: float = 3.0) -> Counter[str]:
    """Read what a peer sent ``sock`` until ``expected`` messages came or none for
    ``quiet`` seconds; count them as "REPLY", or by error code name ("OVERLOADED", ...)."""
    seen: Counter[str] = Counter()
    while seen.total() < expected and sock.poll(int(quiet * 1000)):
        msg = protocol.decode(sock.recv_multipart())
        if isinstance(msg, protocol.Error):
            seen[protocol.ErrorCode(msg.code).name] += 1
        else:
            seen[type(msg).__name__.upper()] += 1
    return seen


def send_oversized(endpoint: str, nbytes: int, timeout: float = 20) -> None:
    """Send one ``nbytes`` frame at ``endpoint`` from a fresh raw DEALER; wait until the
    peer hangs up on it (libzmq's ZMQ_MAXMSGSIZE) or answers, then close.

    The frame is untouched zeroed memory sent without a copy: a GiB of it costs this
    process next to nothing.
    """
    frame = np.zeros(nbytes, np.uint8)
    with raw_dealer(endpoint) as sock:
        monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        try:
            sock.send(frame, copy=False)
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(monitor, zmq.POLLIN)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                ready = dict(poller.poll(100))
                if sock in ready:
                    return  # accepted and answered: not dropped, but not harmful either
                if monitor in ready:
                    recv_monitor_message(monitor)  # the only event it reports: DISCONNECTED
                    return
            pytest.fail(f"{endpoint} neither dropped nor answered a {nbytes}-byte frame")
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)


# --- a raw ROUTER posing as a worker or a broker ------------------------------------------


class Impostor(threading.Thread):
    """A raw ROUTER bound on ``endpoint`` that speaks just enough of the protocol to pass
    for a worker (``role="worker"``: a client connects to it) or a broker
    (``role="broker"``: a worker connects to it with ``--broker``).

    It answers HELLO with a HELLO of its role, PING with PONG and every request with a
    REPLY of the request's first argument (a ``t.echo``). `attack` sends the last peer
    that said HELLO one frame of a given size. ``hellos`` lists the routing id of every
    HELLO received: a new id means the peer came back on a new connection.
    """

    def __init__(self, endpoint: str, role: str) -> None:
        super().__init__(name=f"impostor-{role}", daemon=True)
        self.role = role
        # A broker's messages to and from a worker carry a client frame; empty for its own.
        self.envelope = [b""] if role == "broker" else []
        self.hellos: list[bytes] = []
        self.changed = threading.Condition()
        self._attacks: queue.SimpleQueue[tuple[int, threading.Event]] = queue.SimpleQueue()
        self._done = threading.Event()
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(endpoint)

    def run(self) -> None:
        sock = self._sock
        try:
            while not self._done.is_set():
                while not self._attacks.empty():
                    nbytes, sent = self._attacks.get()
                    sock.send_multipart([self.hellos[-1], np.zeros(nbytes, np.uint8)], copy=False)
                    sent.set()
                if sock.poll(50):
                    self._on_message(sock.recv_multipart())
        finally:
            sock.close(linger=0)
            self._ctx.term()

    def _on_message(self, frames: list[bytes]) -> None:
        peer, rest = frames[0], frames[1 + len(self.envelope) :]
        try:
            msg = protocol.decode(rest)
        except protocol.ProtocolError:
            return
        answer: Any = None
        if isinstance(msg, Hello):
            answer = Hello(
                msg.id,
                role=self.role,
                name=f"impostor-{self.role}",
                version=protocol.__version__,
                pid=os.getpid(),
                services={"t": ["echo"]},
                capacity=1,
                heartbeat_ms=1000,
            )
        elif isinstance(msg, Ping):
            answer = Pong(msg.id)
        elif isinstance(msg, Request):
            answer = Reply(msg.id, msg.args[0] if msg.args else None)
        if answer is not None:
            self._sock.send_multipart([peer, *self.envelope, *protocol.encode(answer)])
        if isinstance(msg, Hello):
            with self.changed:
                self.hellos.append(peer)
                self.changed.notify_all()

    def attack(self, nbytes: int, timeout: float = 10) -> bytes:
        """Send the last peer that said HELLO one ``nbytes`` frame; return its routing id."""
        sent = threading.Event()
        victim = self.wait_hello(lambda ids: bool(ids), timeout, "a HELLO")[-1]
        self._attacks.put((nbytes, sent))
        assert sent.wait(timeout), "the impostor did not send its frame"
        return victim

    def wait_hello(self, check: Any, timeout: float, what: str) -> list[bytes]:
        """Wait until ``check(hellos)`` holds; fail the test with ``what`` if it does not."""
        with self.changed:
            if not self.changed.wait_for(lambda: check(self.hellos), timeout):
                pytest.fail(f"no {what} within {timeout} s (HELLOs from {self.hellos})")
            return list(self.hellos)

    def __enter__(self) -> Impostor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self.join(10)


# --- error texts --------------------------------------------------------------------------

_AMOUNT = re.compile(r"(\d[\d,_]*(?:\.\d+)?)\s*(GiB|MiB|KiB|GB|MB|kB|KB)?")
_UNIT = {"": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9}


def byte_amounts(text: str) -> list[float]:
    """Every size in ``text`` in bytes: ``67108864``, ``67,108,864``, ``64 MiB``, ``70.0 MB``."""
    return [float(n.replace(",", "").replace("_", "")) * _UNIT[u] for n, u in _AMOUNT.findall(text)]


def assert_names_size_and_limit(text: str, size: int, limit: int) -> None:
    """``text`` gives the limit and a size of at least ``size`` bytes (1% for rounding)."""
    amounts = byte_amounts(text)
    assert any(abs(a - limit) <= 0.01 * limit for a in amounts), f"no limit {limit} in {text!r}"
    assert any(a >= 0.99 * size and abs(a - limit) > 0.01 * limit for a in amounts), (
        f"no size >= {size} in {text!r}"
    )
