"""The client's socket loop: one DEALER per worker endpoint, load-aware dispatch, liveness.

Everything here runs on one loop: the caller's asyncio loop for `AsyncClient`, and for
`Client` a small loop (`_driver.SyncLoop`) that offers the same few methods and is
driven under a lock by whichever thread is reading the sockets. No method is
thread-safe. One socket per endpoint, not one DEALER
connected to all: the client must know which worker holds each request, to send the
next one to the least busy worker, to never exceed a worker's capacity, and to re-send
exactly what a lost worker held.

Liveness comes from three sources: the socket monitor (a killed worker's connection
closes at once), application PING/PONG (a frozen worker, or a stuck loop, stops
answering: lost after 3 missed intervals), and the worker's own DISCONNECT on drain.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

import protocol
from protocol import (
    CONNECTING,
    DRAINING,
    READY,
    AuthenticationError,
    Cancel,
    Disconnect,
    Error,
    ErrorCode,
    Hello,
    Limits,
    NoWorkers,
    Overloaded,
    Ping,
    Progress,
    ProtocolError,
    Reply,
    Timeout,
    UnknownHandler,
    WorkerLost,
    ZeromeshError,
)
from zmqio import BindError, ClientSecurity, Dialer, receive_batch

__all__ = ["Call", "Core", "WorkerInfo"]

log = logging.getLogger("zeromesh.client")

_ids = itertools.count(1)  # process-wide: ids never repeat across clients or retries
_CONNECTING, _READY, _DRAINING = CONNECTING, READY, DRAINING
_BATCH = 1024  # replies read per wake-up before other callbacks get a turn
_OVERLOAD_REST_S = 0.05  # a worker that answered OVERLOADED gets nothing new for this long


def next_id() -> int:
    """A fresh request id (thread-safe: ``next`` on a count is atomic under the GIL)."""
    return next(_ids)


class Call:
    """One request the client owes an answer for, from submit until it completes.

    ``complete(call, value, exc)`` is the facade's: it resolves the caller's future.
    """

    __slots__ = (
        "attempts",
        "complete",
        "deadline",
        "frames",
        "future",
        "id",
        "on_progress",
        "peer",
        "service",
        "target",
        "timeout",
    )

    def __init__(
        self,
        target: str,
        frames: list[Any],
        rid: int,
        timeout: float,
        retries: int,
        future: Any,
        complete: Callable[[Call, Any, BaseException | None], None],
    ) -> None:
        self.id = rid
        self.target = target
        self.service = target.partition(".")[0]
        self.frames = frames
        self.timeout = timeout
        self.deadline = 0.0
        self.attempts = retries + 1
        self.future = future
        self.complete = complete
        self.peer: _Peer | None = None
        self.on_progress: Callable[[Progress], None] | None = None


class WorkerInfo(dict[str, Any]):
    """What one endpoint said about itself (a dict, printed by ``zeromesh ping``)."""


class _Peer:
    __slots__ = (
        "capacity",
        "dialer",
        "endpoint",
        "hello",
        "hello_at",
        "last_seen",
        "outstanding",
        "pinged_at",
        "refused",
        "resting_until",
        "role",
        "state",
        "targets",
    )

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.dialer: Dialer = None  # type: ignore[assignment]  # set by Core.start
        self.state = _CONNECTING
        self.capacity = 0
        self.targets: frozenset[str] = frozenset()
        self.role = ""
        self.outstanding: set[int] = set()
        self.last_seen = 0.0
        self.pinged_at = 0.0
        self.hello_at = 0.0  # when we last got a HELLO from it
        self.hello: Hello | None = None
        self.resting_until = 0.0  # it answered OVERLOADED: nothing new for it until then
        self.refused = ""  # why its last handshake failed (CURVE), until one succeeds

    def serves(self, target: str) -> bool:
        return self.role == "broker" or target in self.targets

    @property
    def sock(self) -> zmq.Socket[bytes]:
        return self.dialer.sock


class Core:
    """Sockets, dispatch and liveness for a set of endpoints. Loop-thread only."""

    def __init__(
        self,
        endpoints: list[str],
        *,
        heartbeat: float,
        prefetch: int,
        limits: Limits,
        loop: asyncio.AbstractEventLoop | Any,
        security: ClientSecurity | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.security = security
        self.heartbeat = heartbeat
        self.prefetch = prefetch
        self.limits = limits
        self.loop = loop
        self.calls: dict[int, Call] = {}
        self._queues: dict[str, deque[Call]] = {}
        self._deadlines: list[tuple[float, int]] = []
        self._timer: Any = None  # the loop's timer handle (asyncio's or SyncLoop's)
        self._timer_at = 0.0
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._peers: list[_Peer] = []
        self._all_busy = False  # the last _pick found servers, all at their limit
        self._rr = 0
        self._ticker: Any = None
        self._closed = False
        self._info_waiters: list[tuple[float, Callable[[], None]]] = []
        self._hello_frames = protocol.encode(
            Hello(
                0,
                role="client",
                version=protocol.__version__,
                host=socket.gethostname(),
                pid=os.getpid(),
            )
        )

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Connect to every endpoint (workers are greeted as their handshakes complete).

        Raises:
            ValueError: an endpoint is malformed or cannot be connected to.
        """
        for endpoint in self.endpoints:
            peer = _Peer(endpoint)
            peer.dialer = Dialer(
                self._ctx,
                endpoint,
                self.loop,
                limits=self.limits,
                heartbeat_ms=int(self.heartbeat * 1000),
                on_input=functools.partial(self._on_readable, peer),
                on_connected=functools.partial(self._on_handshake, peer),
                on_disconnected=functools.partial(self._on_dropped, peer),
                on_refused=functools.partial(self._on_refused, peer),
                security=self.security,
            )
            try:
                peer.dialer.open()
            except BindError as exc:
                self.close()
                raise ValueError(str(exc)) from exc
            self._peers.append(peer)
            self._greet(peer)
        self._tick()

    def close(self) -> None:
        """Fail what is still pending, close every socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for handle in (self._timer, self._ticker):
            if handle is not None:
                handle.cancel()
        for call in list(self.calls.values()):
            self._finish(call, None, ZeromeshError("the client was closed before a reply came"))
        bye = protocol.encode(Disconnect(0, "client closing"))
        for peer in self._peers:
            if peer.dialer is None:
                continue  # start() failed before this one
            if peer.state != _CONNECTING:
                self._try_send(peer, bye)
            peer.dialer.close()
        self._ctx.term()

    # --- submitting ----------------------------------------------------------------------

    def submit(self, call: Call) -> None:
        """Take ``call``: send it now if a worker has room, else queue it."""
        if self._closed:
            call.complete(call, None, ZeromeshError("the client is closed"))
            return
        self.calls[call.id] = call
        deadline = time.monotonic() + call.timeout
        call.deadline = deadline
        heapq.heappush(self._deadlines, (deadline, call.id))
        if self._timer is None or deadline < self._timer_at:
            self._arm_timer(deadline)
        self._queue_for(call.service).append(call)
        self._dispatch(call.service)

    def cancel(self, rid: int) -> bool:
        """The caller gave up on ``rid``: forget it, and tell its worker to drop it.

        True if the call was still pending (so its ``complete`` will never run).
        """
        call = self.calls.pop(rid, None)
        if call is None:
            return False
        peer = call.peer
        if peer is None:
            q = self._queues.get(call.service)
            if q is not None and call in q:
                q.remove(call)
        elif rid in peer.outstanding:
            self._try_send(peer, protocol.encode(Cancel(rid)))
        return True

    def _queue_for(self, service: str) -> deque[Call]:
        q = self._queues.get(service)
        if q is None:
            q = self._queues[service] = deque()
        return q

    def _dispatch(self, service: str) -> None:
        q = self._queues.get(service)
        while q:
            call = q[0]
            if call.id not in self.calls:  # timed out or cancelled while queued
                q.popleft()
                continue
            peer = self._pick(call.target)
            if peer is None:
                if self._refused_check(call):
                    continue
                if not self._all_busy:  # nobody ready serves it: maybe nobody can
                    self._unknown_check(call)
                return
            q.popleft()
            self._send_call(peer, call)

    def _dispatch_all(self) -> None:
        for service in list(self._queues):
            self._dispatch(service)

    def _pick(self, target: str) -> _Peer | None:
        """The ready worker with the fewest outstanding requests and room for one more."""
        best: _Peer | None = None
        best_load = 1 << 62
        self._all_busy = False
        peers = self._peers
        n = len(peers)
        start = self._rr
        now = 0.0
        for i in range(n):
            peer = peers[(start + i) % n]
            if peer.state is not _READY or not peer.serves(target):
                continue
            if peer.resting_until:
                now = now or time.monotonic()
                if now < peer.resting_until:
                    self._all_busy = True
                    continue
                peer.resting_until = 0.0
            load = len(peer.outstanding)
            if load < best_load and load < peer.capacity + self.prefetch:
                best, best_load = peer, load
            else:
                self._all_busy = True
        if best is not None:
            self._rr = (start + 1) % n  # rotate among equals
        return best

    def _unknown_check(self, call: Call) -> None:
        """Fail at once a call no worker can serve, once every worker has said what it serves."""
        known = [p for p in self._peers if p.hello is not None]
        if not known or len(known) < len(self._peers):
            return
        if any(p.serves(call.target) for p in known):
            return
        served = sorted({t for p in known for t in p.targets})
        self._finish(
            call,
            None,
            UnknownHandler(
                f"no worker serves {call.target!r}; served: {', '.join(served) or 'nothing'}"
            ),
        )

    def _send_call(self, peer: _Peer, call: Call) -> None:
        if not self._try_send(peer, call.frames):
            # Not connected after all (or its queue is full): let it go elsewhere.
            peer.state = _CONNECTING
            self._lost(peer, "cannot send to it")
            self._queue_for(call.service).appendleft(call)
            return
        call.peer = peer
        peer.outstanding.add(call.id)

    def _try_send(self, peer: _Peer, frames: list[Any]) -> bool:
        try:
            return peer.dialer.send(frames)
        except zmq.ZMQError as exc:
            log.warning("send to %s failed: %s", peer.endpoint, exc)
            return False

    # --- receiving -----------------------------------------------------------------------

    def _on_readable(self, peer: _Peer) -> None:
        sock = peer.sock
        if sock.closed:
            return
        n = receive_batch(sock, functools.partial(self._on_frames, peer), _BATCH)
        if n == _BATCH:
            self.loop.call_soon(self._on_readable, peer)  # more waiting; let others run
        if n:
            peer.last_seen = time.monotonic()
            self._dispatch_all()

    def _on_frames(self, peer: _Peer, frames: list[zmq.Frame]) -> None:
        try:
            msg = protocol.decode(frames, self.limits)
        except ProtocolError as exc:
            self._on_bad_message(peer, exc)
            return
        if type(msg) is Reply:
            peer.outstanding.discard(msg.id)
            call = self.calls.pop(msg.id, None)
            if call is not None:
                call.complete(call, msg.result, None)
        elif type(msg) is Error:
            peer.outstanding.discard(msg.id)
            self._on_error(peer, msg)
        elif type(msg) is Hello:
            self._on_hello(peer, msg)
        elif type(msg) is Progress:
            call = self.calls.get(msg.id)
            if call is not None and call.on_progress is not None:
                call.on_progress(msg)
        elif type(msg) is Disconnect:
            self._on_disconnect(peer, msg)
        # PONG only proves life (last_seen); READY and the rest mean nothing to a client.

    def _on_bad_message(self, peer: _Peer, exc: ProtocolError) -> None:
        log.warning("malformed message from %s: %s", peer.endpoint, exc)
        call = self.calls.pop(exc.request_id, None) if exc.request_id else None
        if call is not None:
            peer.outstanding.discard(call.id)
            call.complete(call, None, exc)

    def _on_error(self, peer: _Peer, msg: Error) -> None:
        call = self.calls.get(msg.id)
        if call is None:
            if msg.id == 0:
                log.warning("%s reported a protocol error: %s", peer.endpoint, msg.message)
            return
        if msg.code == ErrorCode.DRAINING:
            # Not started: safe to send elsewhere, and it does not use up a retry.
            call.peer = None
            self._queue_for(call.service).appendleft(call)
            if peer.state is _READY:
                peer.state = _DRAINING
            return
        if msg.code == ErrorCode.OVERLOADED and peer.role != "broker":
            # That worker is full (it never started this one): try another for a while,
            # within the call's retries; a broker's OVERLOADED speaks for all its workers.
            self._rest(peer)
            if self._retry(call, f"{peer.endpoint}: {msg.message}", Overloaded):
                return
        # A broker's WORKER_LOST means its own delivery cap was reached: re-sending it
        # would multiply the runs of what may be a poison request.
        if (
            msg.code == ErrorCode.WORKER_LOST
            and peer.role != "broker"
            and self._retry(call, f"{peer.endpoint}: {msg.message}")
        ):
            return
        del self.calls[call.id]
        exc = msg.to_exception()
        exc.detail = msg.detail
        call.complete(call, None, exc)

    def _on_hello(self, peer: _Peer, msg: Hello) -> None:
        if msg.role not in ("worker", "broker"):
            log.warning("%s answered as a %r, not a worker or broker", peer.endpoint, msg.role)
            return
        first = peer.hello is None
        peer.hello = msg
        peer.hello_at = time.monotonic()
        peer.role = msg.role
        peer.targets = frozenset(f"{s}.{h}" for s, hs in msg.services.items() for h in hs)
        if msg.capacity <= 0:
            peer.state = _DRAINING
        else:
            peer.capacity = msg.capacity
            if peer.state is not _READY:
                log.info(
                    "%s %s ready: %s %s (pid %d), capacity %d",
                    "connected to" if first else "reconnected to",
                    peer.endpoint,
                    msg.role,
                    msg.name,
                    msg.pid,
                    msg.capacity,
                )
            peer.state = _READY
        waiters, self._info_waiters = self._info_waiters, []
        for since, on_done in waiters:
            if all(p.hello_at > since for p in self._peers):
                on_done()
            else:
                self._info_waiters.append((since, on_done))

    def _on_disconnect(self, peer: _Peer, msg: Disconnect) -> None:
        log.info("%s is draining (%s): sending it nothing new", peer.endpoint, msg.reason)
        peer.state = _DRAINING

    def _on_dropped(self, peer: _Peer) -> None:
        """The connection to ``peer`` dropped; its Dialer dials a fresh socket next."""
        # Replies the worker sent before it closed are still queued here: take them
        # first, or their requests count as lost and run twice.
        self._on_readable(peer)
        peer.state = _CONNECTING
        self._lost(peer, "connection closed")

    def _greet(self, peer: _Peer) -> None:
        """Say HELLO to a newly connected worker or broker; its answer makes it READY."""
        peer.dialer.greet(functools.partial(self._greeting, peer))

    def _greeting(self, peer: _Peer) -> list[Any] | None:
        if self._closed or peer.state is not _CONNECTING:
            return None
        return self._hello_frames

    # --- CURVE handshakes (refused keys) ------------------------------------------------

    def _on_handshake(self, peer: _Peer) -> None:
        """A handshake succeeded: whatever refused us before is fixed."""
        peer.refused = ""
        self._greet(peer)

    def _on_refused(self, peer: _Peer, reason: str) -> None:
        """``peer``'s handshake failed (its Dialer says why): once every endpoint has
        refused us, fail what waits instead of letting it time out in silence."""
        if peer.refused != reason:
            log.error("%s", reason)
        peer.refused = reason
        self._dispatch_all()

    def _refusals(self) -> str:
        """Why the endpoints that refused us did (empty if none did)."""
        return "; ".join(p.refused for p in self._peers if p.refused and p.state is not _READY)

    def _refused_check(self, call: Call) -> bool:
        """Fail ``call`` with AuthenticationError if every endpoint refused us. True if
        it did (the call is done and out of its queue)."""
        if not self._peers or any(p.refused == "" or p.state is _READY for p in self._peers):
            return False
        q = self._queues.get(call.service)
        if q and q[0] is call:
            q.popleft()
        self._finish(call, None, AuthenticationError(f"{call.target}: {self._refusals()}"))
        return True

    # --- failure handling ------------------------------------------------------------------

    def _lost(self, peer: _Peer, why: str) -> None:
        """``peer`` is gone: re-send what it held, or fail it with WorkerLost."""
        held = [self.calls[rid] for rid in peer.outstanding if rid in self.calls]
        peer.outstanding.clear()
        if held:
            log.warning(
                "worker at %s lost (%s) holding %d request(s): re-sending",
                peer.endpoint,
                why,
                len(held),
            )
        for call in held:
            self._retry(call, f"worker at {peer.endpoint} lost ({why})")
        self._dispatch_all()

    def _retry(self, call: Call, why: str, error: type[ZeromeshError] = WorkerLost) -> bool:
        """Re-queue ``call`` if it has attempts left; else fail it with ``error``.

        Returns True either way: the call is dealt with.
        """
        call.peer = None
        call.attempts -= 1
        if call.attempts > 0:
            self._queue_for(call.service).appendleft(call)
            return True
        self.calls.pop(call.id, None)
        call.complete(
            call,
            None,
            error(f"{call.target}: {why}; no retries left (raise retries= to re-send more)"),
        )
        return True

    def _rest(self, peer: _Peer) -> None:
        """Send ``peer`` nothing new for a moment: it answered OVERLOADED."""
        peer.resting_until = time.monotonic() + _OVERLOAD_REST_S
        self.loop.call_later(_OVERLOAD_REST_S, self._dispatch_all)

    def _finish(self, call: Call, value: Any, exc: BaseException | None) -> None:
        self.calls.pop(call.id, None)
        call.complete(call, value, exc)

    # --- timers ------------------------------------------------------------------------------

    def _arm_timer(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(self._loop_time(when), self._on_deadline)

    def _loop_time(self, monotonic_at: float) -> float:
        return self.loop.time() + (monotonic_at - time.monotonic())

    def _on_deadline(self) -> None:
        self._timer = None
        now = time.monotonic()
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, rid = heapq.heappop(heap)
            call = self.calls.get(rid)
            if call is None:
                continue
            del self.calls[rid]
            call.complete(call, None, self._expired(call))
            peer = call.peer
            if peer is not None and rid in peer.outstanding:
                self._try_send(peer, protocol.encode(Cancel(rid)))
        if heap:
            self._arm_timer(heap[0][0])

    def _expired(self, call: Call) -> ZeromeshError:
        if call.peer is not None:
            return Timeout(
                f"{call.target}: no reply within {call.timeout:g} s from {call.peer.endpoint} "
                "(it may still run; raise the timeout with options(timeout=...))"
            )
        ready = [p for p in self._peers if p.state is _READY and p.serves(call.target)]
        if ready:
            return Timeout(
                f"{call.target}: waited {call.timeout:g} s for a free worker; all "
                f"{len(ready)} are busy (add workers or raise the timeout)"
            )
        refused = self._refusals()
        if refused:
            return AuthenticationError(f"{call.target}: {refused}")
        down = ", ".join(p.endpoint for p in self._peers if p.state is not _READY)
        return NoWorkers(
            f"{call.target}: no worker answered within {call.timeout:g} s "
            f"(not reachable: {down or 'none'}); is a worker running there? check with "
            f"`zeromesh ping --connect {','.join(self.endpoints)}`"
        )

    def _tick(self) -> None:
        """Every heartbeat: ping quiet workers, expire silent ones, greet new ones."""
        if self._closed:
            return
        now = time.monotonic()
        hb = self.heartbeat
        for peer in self._peers:
            if peer.state is _CONNECTING:
                self._try_send(peer, self._hello_frames)
                continue
            quiet = now - peer.last_seen
            if quiet > 3 * hb:
                log.warning(
                    "worker at %s missed 3 heartbeats (silent %.1f s): treating it as lost",
                    peer.endpoint,
                    quiet,
                )
                peer.state = _CONNECTING
                self._lost(peer, f"silent for {quiet:.1f} s")
            elif peer.state is _DRAINING:
                # HELLO, not PING: if a fresh worker replaced the draining one on this
                # endpoint and we missed the disconnect, its answer makes it READY again.
                self._try_send(peer, self._hello_frames)
            elif quiet > hb * 0.9 and now - peer.pinged_at > hb * 0.9:
                peer.pinged_at = now
                self._try_send(peer, protocol.encode(Ping(0)))
        self._dispatch_all()
        self._ticker = self.loop.call_later(hb, self._tick)

    # --- introspection ---------------------------------------------------------------------------

    def capacity(self) -> int:
        """Total capacity of the ready workers (readable from any thread)."""
        return sum(p.capacity for p in self._peers if p.state is _READY)

    def ask_info(self, on_done: Callable[[], None]) -> float:
        """Ask every endpoint for a fresh HELLO; ``on_done()`` once all have answered.

        Returns the time of asking, for `info_rows`. The caller waits (with its own
        timeout) in whatever way suits its loop.
        """
        since = time.monotonic()
        self._info_waiters.append((since, on_done))
        for peer in self._peers:
            self._try_send(peer, self._hello_frames)
        return since

    def info_rows(self, since: float) -> list[WorkerInfo]:
        """One row per endpoint: what it said in a HELLO later than ``since``."""
        rows = []
        for peer in self._peers:
            row = WorkerInfo(endpoint=peer.endpoint)
            h = peer.hello
            if h is None or peer.hello_at <= since:
                row["state"] = "unreachable"
                if peer.refused:
                    row["refused"] = peer.refused  # a CURVE handshake failed: why
            else:
                row.update(
                    state="draining" if h.capacity <= 0 else "ready",
                    role=h.role,
                    name=h.name,
                    host=h.host,
                    pid=h.pid,
                    version=h.version,
                    services=h.services,
                    capacity=h.capacity,
                    in_flight=h.in_flight,
                    uptime=h.uptime,
                )
            rows.append(row)
        return rows
