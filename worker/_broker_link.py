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

A ``--broker`` endpoint with a host name (``tcp://brokers.internal:5600``) stands for
every address the name resolves to, looked up off the loop and again every
``resolve_interval`` (`zmqio.NameWatch`): a new address gets a link of its own; a
vanished one is drained like a worker leaving that broker alone (DISCONNECT: no more
credit, replies still go), and closed with a second DISCONNECT ("gone") once the
worker holds nothing that came through it, or its connection dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import zmq

import protocol
from protocol import (
    CONNECTING,
    GREETING,
    LEAVING,
    LIVENESS,
    READY,
    Bundle,
    Cancel,
    Codec,
    Credit,
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
from zmqio import (
    BindError,
    Dialer,
    NameTable,
    NameWatch,
    Outbox,
    receive_batch,
    recv_message,
    send_message,
)

if TYPE_CHECKING:
    from ._config import WorkerConfig
    from ._jobs import JobTable


class WorkerPort(Protocol):
    """What a broker link needs of its worker: the whole of their contract."""

    name: str
    config: WorkerConfig
    capacity: int
    table: JobTable

    @property
    def held(self) -> int: ...
    @property
    def draining(self) -> bool: ...
    def accept(self, peer: Any, req: Request) -> None: ...
    def cancel(self, peer: Any, rid: int) -> None: ...
    def pump(self) -> None: ...
    def hello(self, rid: int, codec: Codec) -> Hello: ...
    def grant(self, peer: Any, rid: int, credit: int) -> None: ...
    def peer_gone(self, peer: Any) -> None: ...
    def malformed(
        self, peer: Any, frames: list[zmq.Frame], exc: ProtocolError, who: str
    ) -> None: ...
    def count_bad(self, what: str) -> None: ...


__all__ = ["BrokerLink", "Via"]

log = logging.getLogger("zeromesh.worker")

_CONNECTING, _GREETING, _READY, _LEAVING = CONNECTING, GREETING, READY, LEAVING
_BATCH = 256
_EMPTY = b""


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
        "bundle",
        "dialer",
        "endpoint",
        "granted",
        "heard",
        "hello_id",
        "index",
        "name",
        "outbox",
        "pinged",
        "prefix",
        "refused",
        "retiring",
        "state",
        "stolen",
    )

    def __init__(self, endpoint: str, index: int, name: str = "") -> None:
        self.endpoint = endpoint
        self.name = name  # the --broker endpoint with a host name it came from, if any
        self.index = index
        self.retiring = False  # its address left DNS: no more credit, closed once idle
        # Starts with 0x00 and is 7 bytes long: libzmq's own routing ids are 5 bytes,
        # and one a peer chooses may not start with 0x00, so no direct peer looks like it.
        self.prefix = b"\x00zmbrk" + bytes([index % 256])
        self.dialer: Dialer | None = None
        self.outbox: Outbox | None = None
        self.state = _CONNECTING
        self.granted = 0  # credit this broker believes it has from us
        self.bundle = False  # its HELLO said it takes routed BUNDLEs
        self.hello_id = 0
        self.heard = 0.0
        self.pinged = 0.0
        self.stolen: deque[list[zmq.Frame]] = deque()  # read by the inline watchdog
        self.refused = ""  # why the last handshake failed (CURVE), logged once

    @property
    def sock(self) -> zmq.Socket[bytes] | None:
        """The link's socket right now (a new one after every redial)."""
        return self.dialer.sock if self.dialer is not None else None


class BrokerLink:
    """The worker's connections to its brokers. Loop thread only, except `stand_in`."""

    def __init__(self, worker: WorkerPort, endpoints: Sequence[str]) -> None:
        self.worker = worker
        self.names = NameTable(
            endpoints, interval=worker.config.resolve_interval, clock=time.monotonic
        )
        self.conns = [_Conn(ep, i) for i, ep in enumerate(self.names.fixed)]
        self._watch: NameWatch | None = None
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self.heartbeat = worker.config.heartbeat_ms / 1000
        # Requests the worker takes from brokers at once: its capacity, plus the prefetch
        # the operator asked for (none by default: no request waits behind a busy one).
        self.slots = worker.capacity + worker.config.broker_prefetch
        self.draining = False
        self.silences = 0
        """Times a broker missed its heartbeats (silent for LIVENESS intervals)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._hello_ids = itertools.count(1)
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
        self._ctx = ctx
        for conn in self.conns:
            self._open(conn)
        if self.names.names:
            self._watch = NameWatch(
                self.names, loop, log=log, on_join=self._join, on_leave=self._leave
            )
            self._watch.start()
        self._ticker = loop.call_later(self.heartbeat, self._tick)

    def _open(self, conn: _Conn) -> None:
        """Dial ``conn``'s broker (registration follows the handshake).

        Raises:
            ValueError: the endpoint is malformed.
        """
        assert self._ctx is not None
        assert self._loop is not None
        cfg = self.worker.config
        # IMMEDIATE (the Dialer's): a reply for a broker that is gone is dropped, not
        # kept for a restarted broker that never heard of its request.
        conn.dialer = dialer = Dialer(
            self._ctx,
            conn.endpoint,
            self._loop,
            limits=cfg.limits,
            heartbeat_ms=cfg.heartbeat_ms,
            on_input=functools.partial(self._pump, conn),
            on_connected=functools.partial(self._on_connected, conn),
            on_disconnected=functools.partial(self._on_disconnected, conn),
            on_refused=functools.partial(self._on_refused, conn),
            security=cfg.broker_security,
            name=conn.name,
        )
        try:
            dialer.open()
        except BindError as exc:
            raise ValueError(f"broker: {exc}") from exc
        conn.outbox = Outbox(
            dialer.sock, self._loop, max_bytes=cfg.max_peer_output, log=log, peer_kind="broker"
        )
        log.info("connecting to broker %s%s", conn.endpoint, f" ({conn.name})" if conn.name else "")

    def close(self, linger: int = 2000) -> None:
        """Say goodbye and close every link. Idempotent.

        Safe from the inline watchdog's thread too (hard timeout: the loop is stuck in a
        handler and the process is about to exit), so it sends straight to the sockets.
        """
        on_loop = threading.get_ident() == self._loop_thread
        if self._ticker is not None and on_loop:
            self._ticker.cancel()
            self._ticker = None
        if self._watch is not None and on_loop:
            self._watch.close()
        gone = [_EMPTY, *protocol.encode(Disconnect(0, "worker closed"))]
        bye = [_EMPTY, *protocol.encode(Disconnect(0, f"worker {self.worker.name} stopping"))]
        for conn in self.conns:
            sock = conn.sock
            if sock is None or sock.closed:
                continue
            if conn.state in (_READY, _LEAVING):
                # DISCONNECT twice means "gone": the broker forgets this worker now
                # rather than after 3 silent heartbeats.
                with contextlib.suppress(zmq.ZMQError):
                    if not self.draining:
                        send_message(sock, bye)
                    send_message(sock, gone)
            assert conn.dialer is not None
            conn.dialer.close(linger, on_loop=on_loop)

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

    def reply_all(self, answers: list[tuple[Via, list[Any]]]) -> None:
        """Send the answers of one turn of the worker's loop, in order: those for one
        broker that takes routed BUNDLEs, small ones together in some (SPEC 7.10)."""
        by_conn: dict[_Conn, list[tuple[bytes, list[Any]]]] = {}
        for via, frames in answers:
            msgs = by_conn.get(via.conn)
            if msgs is None:
                msgs = by_conn[via.conn] = []
            msgs.append((via.client, frames))
        for conn, msgs in by_conn.items():
            if conn.bundle and len(msgs) > 1:
                msgs = protocol.coalesce_routed(msgs)
            for envelope, frames in msgs:
                self._send(conn, [envelope, *frames])

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
        free = self.slots - w.held
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
        """Send without blocking, or queue in order behind earlier messages; False if
        the message was dropped (no broker there: its client re-sends)."""
        sock = conn.sock
        if sock is None or sock.closed or conn.outbox is None:
            return False
        if conn.state is _CONNECTING:
            return conn.dialer.send(frames)  # type: ignore[union-attr]
        conn.outbox.send(frames)
        conn.dialer.watch_input()  # type: ignore[union-attr]
        return True

    # --- receiving -----------------------------------------------------------------------

    def _pump(self, conn: _Conn) -> None:
        sock = conn.sock
        if sock is None or sock.closed:
            return
        got = len(conn.stolen)
        while conn.stolen:  # what the watchdog read while an inline handler ran
            self._on_frames(conn, conn.stolen.popleft())
        n = receive_batch(sock, functools.partial(self._on_frames, conn), _BATCH)
        if n == _BATCH:
            assert self._loop is not None
            self._loop.call_soon(self._pump, conn)
        if got or n:
            conn.heard = time.monotonic()
            self.worker.pump()  # start what arrived now, send what finished

    def _on_frames(self, conn: _Conn, frames: list[zmq.Frame]) -> None:
        w = self.worker
        if len(frames) < 2:
            w.count_bad(f"broker {conn.endpoint} sent a {len(frames)}-frame message; ignored")
            return
        client = frames[0].bytes
        if not client:
            self._on_control(conn, frames[1:])
            return
        self._on_routed(conn, client, frames[1:])

    def _on_routed(self, conn: _Conn, client: bytes, frames: list[Any]) -> None:
        """``header, body…`` for ``client`` from the broker: a message that came alone,
        or one out of a routed BUNDLE (``bytes`` frames then, SPEC 7.10)."""
        w = self.worker
        via = Via(conn.prefix + client)
        via.link, via.conn, via.client = self, conn, client
        try:
            msg = protocol.decode(frames, w.config.limits)
        except ProtocolError as exc:
            if conn.granted > 0 and protocol.header_type(frames[0]) is MessageType.REQUEST:
                conn.granted -= 1  # it used a credit all the same: grant() gives it back
            w.malformed(via, frames, exc, f"client {client.hex()} via broker {conn.endpoint}")
            return
        if type(msg) is Request:
            if not w.draining and self.slots - w.held <= 0:
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
            w.accept(via, msg)
        elif type(msg) is Cancel:
            w.cancel(via, msg.id)
        elif type(msg) is Credit:
            w.grant(via, msg.id, msg.credit)
        else:
            w.count_bad(
                f"broker {conn.endpoint} forwarded a {type(msg).__name__} from client "
                f"{client.hex()}; ignored"
            )

    def _on_control(self, conn: _Conn, frames: list[zmq.Frame]) -> None:
        w = self.worker
        try:
            msg = protocol.decode(frames, w.config.limits)
        except ProtocolError as exc:
            # Never answered: the broker's own messages are not requests.
            w.count_bad(f"malformed message from broker {conn.endpoint}: {exc}")
            return
        if type(msg) is Pong:
            return
        if type(msg) is Bundle:
            try:
                protocol.check_route(msg, link=True)
            except ProtocolError as exc:
                w.count_bad(f"malformed message from broker {conn.endpoint}: {exc}")
                return
            on_routed = self._on_routed
            for client, pair in zip(msg.clients, msg.messages, strict=True):
                on_routed(conn, client, list(pair))
            return
        if type(msg) is Hello:
            if msg.id == 0:
                # The broker does not know us (it expired us, or restarted): start over.
                # The streams it had sent us are over there: nobody grants them credit.
                self._drop_streams(conn, "the broker forgot this worker")
                if conn.state is _READY:
                    log.warning(
                        "broker %s forgot this worker (expired?): registering again",
                        conn.endpoint,
                    )
                if not self.draining and conn.state is not _GREETING:
                    self._greet(conn)
                return
            conn.bundle = msg.bundle  # it takes routed BUNDLEs (SPEC 7.10)
            if conn.state is _GREETING:
                conn.state = _READY
                log.info("registered with broker %s (%s, pid %d)", conn.endpoint, msg.name, msg.pid)
                self.grant()
        elif type(msg) is Ping:
            self._send(conn, [_EMPTY, *protocol.encode(Pong(msg.id, msg.codec))])
        elif type(msg) is Disconnect:
            log.info("broker %s is draining (%s): no more credit for it", conn.endpoint, msg.reason)
            conn.state = _LEAVING
        elif type(msg) is Error:
            if msg.code == ErrorCode.FORBIDDEN:
                # Our key may not serve there; said once, the greeting keeps trying (an
                # operator may allow it and SIGHUP the broker).
                conn.state = _GREETING
                self._on_refused(conn, f"broker {conn.endpoint}: {msg.message}")
                return
            log.warning("broker %s reported an error: %s", conn.endpoint, msg.message)
        else:
            w.count_bad(f"broker {conn.endpoint} sent a {type(msg).__name__}; ignored")

    def _on_connected(self, conn: _Conn) -> None:
        assert conn.outbox is not None
        conn.refused = ""
        conn.outbox.sock = conn.sock  # type: ignore[assignment]  # a new one after a redial
        conn.heard = time.monotonic()
        if not self.draining:
            self._greet(conn)

    def _on_refused(self, conn: _Conn, reason: str) -> None:
        """The broker's CURVE handshake failed: say so once (it keeps being retried)."""
        if conn.refused != reason:
            log.error("cannot join broker: %s", reason)
        conn.refused = reason

    def _on_disconnected(self, conn: _Conn) -> None:
        """The connection dropped; the Dialer dials a fresh socket next."""
        self._pump(conn)  # what the broker sent before it went
        if conn.state is not _CONNECTING:
            log.warning("lost the connection to broker %s; reconnecting", conn.endpoint)
        conn.state = _CONNECTING
        conn.granted = 0
        conn.bundle = False
        assert conn.outbox is not None
        conn.outbox.reset(why=f"the connection to broker {conn.endpoint} dropped")
        conn.stolen.clear()
        self._drop_streams(conn, "the connection dropped")

    def _drop_streams(self, conn: _Conn, why: str) -> None:
        """Cancel the streams that came through ``conn``: the broker that routed their
        credit no longer knows of them (a new connection is a new worker to it), so
        they would stay paused, holding their slots, until the worker stops."""
        peers = {
            job.peer
            for job in list(self.worker.table.jobs.values())
            if job.valve is not None and type(job.peer) is Via and job.peer.conn is conn
        }
        if peers:
            log.warning(
                "broker %s: %s; cancelling the streams of %d client(s) that came through it",
                conn.endpoint,
                why,
                len(peers),
            )
        for peer in peers:
            self.worker.peer_gone(peer)

    def _greet(self, conn: _Conn) -> None:
        """Say HELLO (register); the broker's HELLO answer makes the link READY."""
        if self.draining or conn.dialer is None or conn.retiring:
            return
        conn.state = _GREETING
        conn.granted = 0
        conn.dialer.greet(functools.partial(self._greeting, conn))

    def _greeting(self, conn: _Conn) -> list[Any] | None:
        if self.draining or conn.state is not _GREETING:
            return None
        conn.hello_id = next(self._hello_ids)
        return [
            _EMPTY,
            *protocol.encode(self.worker.hello(conn.hello_id, Codec.MSGPACK)),
        ]

    # --- time ----------------------------------------------------------------------------------

    def _tick(self) -> None:
        """Every heartbeat: ping the brokers, notice silent ones, greet again. The next
        tick is set first: were this one to fail (a bug, logged by the loop), the
        brokers must still hear from this worker, or they would expire it."""
        assert self._loop is not None
        self._ticker = self._loop.call_later(self.heartbeat, self._tick)
        now = time.monotonic()
        hb = self.heartbeat
        for conn in self.conns:
            if conn.retiring:
                self._tick_retiring(conn, now)
            elif conn.state is _GREETING:
                self._greet(conn)
            elif conn.state in (_READY, _LEAVING):
                silent = now - conn.heard
                if silent > LIVENESS * hb:
                    self.silences += 1
                    log.warning(
                        "broker %s silent for %.1f s: taking back its credit, greeting again",
                        conn.endpoint,
                        silent,
                    )
                    if self.draining:
                        conn.state = _CONNECTING
                    else:
                        self._greet(conn)
                else:
                    conn.pinged = now
                    self._send(conn, [_EMPTY, *protocol.encode(Ping(0))])
        self.grant()

    # --- brokers from DNS -------------------------------------------------------------------

    def _join(self, address: str, name: str) -> None:
        """``name``'s host now resolves to ``address`` too: take work from that broker
        (or again from a retiring link still there)."""
        if self.draining:
            return
        for conn in self.conns:
            if conn.endpoint == address:
                if conn.retiring:
                    conn.retiring = False
                    log.info("broker %s is back in DNS (%s): registering again", address, name)
                    if conn.state is not _CONNECTING:
                        self._greet(conn)  # a HELLO ends the drain the broker was told of
                return
        used = {c.index for c in self.conns}
        index = next((i for i in range(256) if i not in used), len(self.conns))
        conn = _Conn(address, index, name)
        self._open(conn)
        # A new list, not an append: the inline watchdog may be iterating the old one.
        self.conns = [*self.conns, conn]

    def _leave(self, address: str) -> None:
        """``address`` left DNS: tell that broker to send nothing new (DISCONNECT, as a
        draining worker does); what it sent is answered; closed once idle (`_tick`)."""
        for conn in self.conns:
            if conn.endpoint == address and not conn.retiring:
                conn.retiring = True
                log.info("broker %s left DNS (%s): taking no more work from it", address, conn.name)
                if conn.state in (_GREETING, _READY) and not self.draining:
                    bye = protocol.encode(
                        Disconnect(0, f"worker {self.worker.name}: this broker left DNS")
                    )
                    self._send(conn, [_EMPTY, *bye])
                if conn.state is not _CONNECTING:
                    conn.state = _LEAVING
                conn.granted = 0

    def _tick_retiring(self, conn: _Conn, now: float) -> None:
        """A retiring link: close it once nothing that came through it is held (or it is
        gone or silent); until then keep it alive so the replies reach the broker."""
        silent = now - conn.heard > LIVENESS * self.heartbeat
        if conn.state is _CONNECTING or silent or not self._holds(conn):
            self._close_conn(conn)
            return
        conn.pinged = now
        self._send(conn, [_EMPTY, *protocol.encode(Ping(0))])

    def _holds(self, conn: _Conn) -> int:
        """Requests the worker holds that came through ``conn``."""
        return sum(
            1
            for job in list(self.worker.table.jobs.values())
            if type(job.peer) is Via and job.peer.conn is conn
        )

    def _close_conn(self, conn: _Conn) -> None:
        """Say "gone" (DISCONNECT twice: the broker forgets this worker at once) and close."""
        sock = conn.sock
        if conn.state is not _CONNECTING and sock is not None and not sock.closed:
            gone = [_EMPTY, *protocol.encode(Disconnect(0, "worker left this broker"))]
            with contextlib.suppress(zmq.ZMQError):
                send_message(sock, gone)
        if conn.dialer is not None:
            conn.dialer.close(500)  # LINGER: let the goodbye leave
        self.conns = [c for c in self.conns if c is not conn]
        log.info("closed the link to broker %s (it left DNS)", conn.endpoint)

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
    return protocol.header_type(frame) is kind
