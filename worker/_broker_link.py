"""A worker's links to brokers: one DEALER connected out to each ``--broker`` endpoint.

What arrives on a link is ``[client, header, body, oob…]``: the same shape as a direct
request on the worker's ROUTER, where frame 0 is the peer. The worker handles it with
the same code; the job's peer is a `Via`, which the worker's send path recognises and
hands back here, so the reply leaves on the link it came from as ``[client, header…]``.
An empty ``client`` frame is the broker itself (HELLO, PONG, DISCONNECT, …).

Session with each broker (protocol/SPEC.md, section 12):

1. On connect, HELLO (role "worker": services, capacity, heartbeat) in the empty
   envelope; the broker answers with its HELLO.
2. READY(credit) whenever slots are free, then PING every heartbeat. A broker silent
   for 3 heartbeats is lost: its credit is taken back and HELLO is sent again until it
   answers. A HELLO with id 0 from the broker means "I do not know you": register again.
3. On drain, DISCONNECT (no more credit; replies still follow) and, when closing,
   DISCONNECT again (gone).

Credit with several brokers is optimistic: each broker is told of every free slot
(``free = capacity - requests held``), so none waits on another's idle share. The
worker never holds more than its capacity: a request that finds no free slot (another
broker took it first) is refused at once with DRAINING, which the broker puts back at
the head of its queue without counting a delivery, and that broker's credit drops to
zero until the next READY. With one broker the accounting is exact: no refusals.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils.monitor import recv_monitor_message

import protocol
from protocol import (
    Cancel,
    Codec,
    Disconnect,
    Error,
    ErrorCode,
    Hello,
    MessageType,
    Ping,
    Pong,
    ProtocolError,
    Ready,
    Request,
)
from zmqio import has_input, recv_message, send_message

if TYPE_CHECKING:
    from ._server import Worker

__all__ = ["BrokerLink", "Via"]

log = logging.getLogger("zeromesh.worker")

_CONNECTING, _GREETING, _READY, _LEAVING = "connecting", "greeting", "ready", "leaving"
_MONITOR_EVENTS = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
_BATCH = 256
_EMPTY = b""
_LIVENESS = 3  # heartbeats of silence before a broker is taken for lost


class Via(bytes):
    """The peer of a request that came through a broker.

    Its bytes (the link's prefix, then the client's routing id at the broker) key the
    worker's job table, distinct from any direct peer and from the same client id at
    another broker; ``link``, ``conn`` and ``client`` say where the reply goes.
    """

    link: BrokerLink
    conn: _Conn
    client: bytes


class _Conn:
    """One broker: its socket, session state and the credit it was told about."""

    __slots__ = (
        "backlog",
        "endpoint",
        "granted",
        "heard",
        "hello_id",
        "monitor",
        "pinged",
        "prefix",
        "sock",
        "state",
        "stolen",
    )

    def __init__(self, endpoint: str, index: int) -> None:
        self.endpoint = endpoint
        # Starts with 0x00 and is 7 bytes long: libzmq's own routing ids are 5 bytes,
        # and one a peer chooses may not start with 0x00, so no direct peer looks like it.
        self.prefix = b"\x00zmbrk" + bytes([index % 256])
        self.sock: zmq.Socket[bytes] | None = None
        self.monitor: zmq.Socket[bytes] | None = None
        self.state = _CONNECTING
        self.granted = 0  # credit this broker believes it has from us
        self.hello_id = 0
        self.heard = 0.0
        self.pinged = 0.0
        self.backlog: deque[list[Any]] = deque()
        self.stolen: deque[list[zmq.Frame]] = deque()  # read by the inline watchdog


class BrokerLink:
    """The worker's connections to its brokers. Loop thread only, except `stand_in`."""

    def __init__(self, worker: Worker, endpoints: Sequence[str]) -> None:
        self.worker = worker
        self.conns = [_Conn(ep, i) for i, ep in enumerate(endpoints)]
        self.heartbeat = worker.config.heartbeat_ms / 1000
        # Requests the worker takes from brokers at once: its capacity, plus the prefetch
        # the operator asked for (none by default: no request waits behind a busy one).
        self.slots = worker.capacity + worker.config.broker_prefetch
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._hello_ids = itertools.count(1)
        self._check_soon: set[_Conn] = set()
        self._stolen_wake = False
        self._ready_frames: dict[int, list[Any]] = {}
        self._loop_thread = 0

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, ctx: zmq.Context[zmq.Socket[bytes]], loop: asyncio.AbstractEventLoop) -> None:
        """Connect to every broker (registration follows the handshake).

        Raises:
            ValueError: an endpoint is malformed.
        """
        self._loop = loop
        self._loop_thread = threading.get_ident()
        hb = self.worker.config.heartbeat_ms
        for conn in self.conns:
            sock = ctx.socket(zmq.DEALER)
            # IMMEDIATE: a reply for a broker that is gone is dropped, not kept for a
            # restarted broker that never heard of its request.
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.setsockopt(zmq.RCVHWM, 100_000)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            sock.setsockopt(zmq.HEARTBEAT_IVL, hb)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * hb)
            limit = self.worker.config.limits.max_message_bytes
            sock.setsockopt(zmq.MAXMSGSIZE, max(limit, 1 << 20))
            conn.sock = sock
            conn.monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
            try:
                sock.connect(conn.endpoint)
            except zmq.ZMQError as exc:
                raise ValueError(f"cannot connect to broker {conn.endpoint}: {exc}") from exc
            loop.add_reader(sock.FD, self._pump, conn)
            loop.add_reader(conn.monitor.FD, self._on_monitor, conn)
            loop.call_soon(self._on_monitor, conn)  # events queued before add_reader
            log.info("connecting to broker %s", conn.endpoint)
        self._ticker = loop.call_later(self.heartbeat, self._tick)

    def close(self, linger: int = 2000) -> None:
        """Say goodbye and close every link. Idempotent.

        Safe from the inline watchdog's thread too (hard timeout: the loop is stuck in a
        handler and the process is about to exit), so it sends straight to the sockets.
        """
        on_loop = threading.get_ident() == self._loop_thread
        if self._ticker is not None and on_loop:
            self._ticker.cancel()
            self._ticker = None
        gone = [_EMPTY, *protocol.encode(Disconnect(0, "worker closed"))]
        bye = [_EMPTY, *protocol.encode(Disconnect(0, f"worker {self.worker.name} stopping"))]
        for conn in self.conns:
            sock, monitor = conn.sock, conn.monitor
            if sock is None or sock.closed:
                continue
            if conn.state in (_READY, _LEAVING):
                # DISCONNECT twice means "gone": the broker forgets this worker now
                # rather than after 3 silent heartbeats.
                with contextlib.suppress(zmq.ZMQError):
                    if not self.draining:
                        send_message(sock, bye)
                    send_message(sock, gone)
            loop = self._loop
            if on_loop and loop is not None and not loop.is_closed():
                loop.remove_reader(sock.FD)
                if monitor is not None:
                    loop.remove_reader(monitor.FD)
            sock.disable_monitor()
            if monitor is not None:
                monitor.close(linger=0)
            sock.close(linger=linger)

    def drain(self, reason: str) -> None:
        """The worker drains: no more credit; the brokers are told, replies still go."""
        if self.draining:
            return
        self.draining = True
        bye = protocol.encode(Disconnect(0, f"worker {self.worker.name} draining: {reason}"))
        for conn in self.conns:
            if conn.state in (_GREETING, _READY):
                self._send(conn, [_EMPTY, *bye])

    # --- sending ----------------------------------------------------------------------------

    def reply(self, via: Via, frames: list[Any]) -> None:
        """Send a worker's answer to ``via``'s client, on the link it came from."""
        self._send(via.conn, [via.client, *frames])

    def reply_now(self, via: Via, frames: list[Any]) -> None:
        """`reply` from the inline watchdog's thread (socket lock held); best effort."""
        sock = via.conn.sock
        if sock is not None and not sock.closed:
            with contextlib.suppress(zmq.ZMQError):
                send_message(sock, [via.client, *frames])

    def grant(self) -> None:
        """Tell each registered broker of every free slot it does not know about yet."""
        if self.draining:
            return
        w = self.worker
        free = self.slots - len(w._jobs)
        if free <= 0:
            return
        for conn in self.conns:
            if conn.state is _READY and conn.granted < free:
                n = free - conn.granted
                frames = self._ready_frames.get(n)
                if frames is None:
                    frames = [_EMPTY, *protocol.encode(Ready(0, n))]
                    if n <= 64:
                        self._ready_frames[n] = frames
                if self._send(conn, frames):
                    conn.granted = free

    def _send(self, conn: _Conn, frames: list[Any]) -> bool:
        """Send without blocking; False if the message was dropped (no broker there)."""
        sock = conn.sock
        if sock is None or sock.closed:
            return False
        try:
            send_message(sock, frames)
        except zmq.Again:
            if conn.state is _CONNECTING:
                return False  # no broker behind it: the reply is moot, its client re-sends
            conn.backlog.append(frames)
            if len(conn.backlog) == 1 and self._loop is not None:
                self._loop.call_later(0.01, self._flush_backlog, conn)
            return True  # it will go, in order
        except zmq.ZMQError as exc:
            log.warning("send to broker %s failed: %s", conn.endpoint, exc)
            return False
        # The FD is edge-triggered and a send may swallow the edge of a message that
        # arrived meanwhile: look once this burst of sends is over.
        if not self._check_soon and self._loop is not None:
            self._loop.call_soon(self._check_input)
        self._check_soon.add(conn)
        return True

    def _flush_backlog(self, conn: _Conn) -> None:
        backlog, conn.backlog = conn.backlog, deque()
        if conn.state is _CONNECTING:
            return
        for frames in backlog:
            self._send(conn, frames)

    def _check_input(self) -> None:
        conns, self._check_soon = self._check_soon, set()
        for conn in conns:
            if conn.sock is not None and has_input(conn.sock):
                self._pump(conn)

    # --- receiving -----------------------------------------------------------------------

    def _pump(self, conn: _Conn) -> None:
        sock = conn.sock
        if sock is None or sock.closed:
            return
        got = False
        while conn.stolen:  # what the watchdog read while an inline handler ran
            got = True
            self._on_frames(conn, conn.stolen.popleft())
        try:
            for _ in range(_BATCH):
                frames = recv_message(sock)
                got = True
                self._on_frames(conn, frames)
            else:
                assert self._loop is not None
                self._loop.call_soon(self._pump, conn)
        except zmq.Again:
            pass
        if got:
            conn.heard = time.monotonic()
            self.worker._pump()  # start what arrived now, send what finished

    def _on_frames(self, conn: _Conn, frames: list[zmq.Frame]) -> None:
        w = self.worker
        if len(frames) < 2:
            w.protocol_errors += 1
            log.warning("broker %s sent a %d-frame message; ignored", conn.endpoint, len(frames))
            return
        client = frames[0].bytes
        if not client:
            self._on_control(conn, frames[1:])
            return
        via = Via(conn.prefix + client)
        via.link, via.conn, via.client = self, conn, client
        try:
            msg = protocol.decode(frames[1:], w.config.limits)
        except ProtocolError as exc:
            if conn.granted > 0 and _is_type(frames[1], MessageType.REQUEST):
                conn.granted -= 1  # it used a credit all the same: grant() gives it back
            w.protocol_errors += 1
            log.warning(
                "malformed message from client %s via broker %s: %s [%d so far]",
                client.hex(),
                conn.endpoint,
                exc,
                w.protocol_errors,
            )
            if not _is_error(frames[1]):
                err = Error(exc.request_id, exc.code, str(exc), codec=exc.codec)
                self.reply(via, protocol.encode(err))
            return
        kind = type(msg)
        if kind is Request:
            if not w._draining and self.slots - len(w._jobs) <= 0:
                # Another broker (or a direct client) took the slot this one was told of.
                conn.granted = 0
                self.reply(
                    via,
                    protocol.encode(
                        Error(
                            msg.id,
                            ErrorCode.DRAINING,
                            f"worker {w.name} has no free slot; not started",
                            codec=msg.codec,
                        )
                    ),
                )
                return
            if conn.granted > 0:
                conn.granted -= 1
            w._on_request(via, msg)
        elif kind is Cancel:
            w._on_cancel(via, msg.id)
        else:
            w.protocol_errors += 1
            log.warning(
                "broker %s forwarded a %s from client %s; ignored",
                conn.endpoint,
                kind.__name__,
                client.hex(),
            )

    def _on_control(self, conn: _Conn, frames: list[zmq.Frame]) -> None:
        w = self.worker
        try:
            msg = protocol.decode(frames, w.config.limits)
        except ProtocolError as exc:
            w.protocol_errors += 1
            log.warning("malformed message from broker %s: %s", conn.endpoint, exc)
            return
        kind = type(msg)
        if kind is Pong:
            return
        if kind is Hello:
            if msg.id == 0:
                # The broker does not know us (it expired us, or restarted): start over.
                if conn.state is _READY:
                    log.warning(
                        "broker %s forgot this worker (expired?): registering again",
                        conn.endpoint,
                    )
                if not self.draining and conn.state is not _GREETING:
                    self._greet(conn)
                return
            if conn.state is _GREETING:
                conn.state = _READY
                log.info("registered with broker %s (%s, pid %d)", conn.endpoint, msg.name, msg.pid)
                self.grant()
        elif kind is Ping:
            self._send(conn, [_EMPTY, *protocol.encode(Pong(msg.id, msg.codec))])
        elif kind is Disconnect:
            log.info("broker %s is draining (%s): no more credit for it", conn.endpoint, msg.reason)
            conn.state = _LEAVING
        elif kind is Error:
            log.warning("broker %s reported an error: %s", conn.endpoint, msg.message)
        else:
            w.protocol_errors += 1
            log.warning("broker %s sent a %s; ignored", conn.endpoint, kind.__name__)

    def _on_monitor(self, conn: _Conn) -> None:
        mon = conn.monitor
        while mon is not None and not mon.closed:
            try:
                event = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                conn.heard = time.monotonic()
                if not self.draining:
                    self._greet(conn)
            elif kind == zmq.EVENT_DISCONNECTED:
                if conn.state is not _CONNECTING:
                    log.warning("lost the connection to broker %s; reconnecting", conn.endpoint)
                conn.state = _CONNECTING
                conn.granted = 0
                conn.backlog.clear()

    def _greet(self, conn: _Conn, delay: float = 0.005) -> None:
        """Send HELLO; right after the handshake the pipe may not take it yet, so retry
        quickly, backing off to the heartbeat (the tick resends it after that)."""
        if self.draining or conn.sock is None or conn.sock.closed:
            return
        conn.state = _GREETING
        conn.granted = 0
        conn.hello_id = next(self._hello_ids)
        hello = self.worker._hello(conn.hello_id, Codec.MSGPACK)
        if not self._send(conn, [_EMPTY, *protocol.encode(hello)]) and delay < self.heartbeat:
            assert self._loop is not None
            self._loop.call_later(delay, self._regreet, conn, delay * 2)

    def _regreet(self, conn: _Conn, delay: float) -> None:
        if conn.state is _GREETING:
            self._greet(conn, delay)

    # --- time ----------------------------------------------------------------------------------

    def _tick(self) -> None:
        """Every heartbeat: ping the brokers, notice silent ones, greet again."""
        now = time.monotonic()
        hb = self.heartbeat
        for conn in self.conns:
            if conn.state is _GREETING:
                self._greet(conn, hb)
            elif conn.state in (_READY, _LEAVING):
                silent = now - conn.heard
                if silent > _LIVENESS * hb:
                    log.warning(
                        "broker %s silent for %.1f s: taking back its credit, greeting again",
                        conn.endpoint,
                        silent,
                    )
                    if self.draining:
                        conn.state = _CONNECTING
                    else:
                        self._greet(conn, hb)
                else:
                    conn.pinged = now
                    self._send(conn, [_EMPTY, *protocol.encode(Ping(0))])
        self.grant()
        assert self._loop is not None
        self._ticker = self._loop.call_later(hb, self._tick)

    def stand_in(self) -> None:
        """Inline mode, watchdog thread, socket lock held, loop busy in a handler: keep
        the brokers' heartbeats going and keep what arrives for the loop."""
        now = time.monotonic()
        woke = False
        for conn in self.conns:
            sock = conn.sock
            if sock is None or sock.closed:
                continue
            while True:
                try:
                    frames = recv_message(sock)
                except zmq.Again:
                    break
                conn.heard = now
                if not len(frames[0]) and _is_type(frames[1], MessageType.PONG):
                    continue  # proof of life is all a PONG carries
                conn.stolen.append(frames)
                woke = True
            if conn.state in (_READY, _LEAVING) and now - conn.pinged >= self.heartbeat:
                conn.pinged = now
                # Straight to the socket: the loop's helpers are not for this thread.
                with contextlib.suppress(zmq.ZMQError):
                    send_message(sock, [_EMPTY, *protocol.encode(Ping(0))])
        if woke and not self._stolen_wake and self._loop is not None:
            self._stolen_wake = True
            self._loop.call_soon_threadsafe(self._take_stolen)

    def _take_stolen(self) -> None:
        self._stolen_wake = False
        for conn in self.conns:
            if conn.stolen:
                self._pump(conn)


def _is_type(frame: Any, kind: MessageType) -> bool:
    try:
        return protocol.decode_header(frame).type is kind
    except ProtocolError:
        return False


def _is_error(frame: Any) -> bool:
    """Never answer an ERROR with an ERROR (two peers would bounce them forever)."""
    return _is_type(frame, MessageType.ERROR)
