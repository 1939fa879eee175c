"""The worker process's shell: one ROUTER socket, one asyncio loop, handler threads beside it.

The worker is split by responsibility:

* `worker._config`: its settings and exit statuses;
* `worker._jobs`: the job table, a pure core (admission, the fair and bounded waiting
  room of `worker._fair_queue`, claims, deadlines, hard-timeout and drain decisions);
* `worker._runners`: calling a handler and turning its result or exception into frames;
* here: the socket loop and the lifecycle (`zmqio.RouterServer`), the handler threads,
  inline mode and its watchdog, the drain;
* `worker._broker_link`: the DEALERs to brokers, talking to this shell through its
  small port (`WorkerPort`).

The loop owns the socket and never runs user code. It drains the socket in batches
(non-blocking receives until ``zmq.Again``: an ``await`` per message costs ~75 µs in
pyzmq), answers HELLO and PING itself, and hands requests to

* handler threads (``concurrency`` of them) for plain functions, and
* asyncio tasks on the same loop (at most ``max_async`` at once) for ``async def``.

Threads hand replies back through a deque and one ``call_soon_threadsafe`` per batch;
a stream's items through its `worker._valve.Valve`, taken by the loop all at once. In
inline mode (``concurrency`` 1, no ``async`` handler) the loop runs handlers itself,
a stream a slice at a time as its credit allows (`Worker._advance_stream`), while a
watchdog thread answers heartbeats.
Every request the worker accepts is answered exactly once: a reply, a typed error, or,
when it shuts down before starting it, a DRAINING refusal the client re-sends elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import zmq

import protocol
from protocol import (
    LIVENESS,
    Bundle,
    Cancel,
    Credit,
    Disconnect,
    Error,
    ErrorCode,
    Hello,
    Ping,
    Pong,
    Progress,
    ProtocolError,
    Request,
)
from zmqio import (
    HANGUP_GRACE_S,
    OTHER_TARGET,
    CallStats,
    RouterServer,
    add_log_fields,
    counter,
    gauge,
    outcome_name,
    process_usage,
    receive_batch,
    recv_message,
    send_message,
    serve_metrics,
)

from . import _context
from ._broker_link import BrokerLink
from ._config import EXIT_DRAIN_TIMEOUT, EXIT_HARD_TIMEOUT, StartupError, WorkerConfig
from ._jobs import DONE, QUEUED, RUNNING, Capacity, Job, JobTable, expired_refusal
from ._runners import run_async, run_stream, run_stream_async, run_sync, stream_steps
from ._service import Handler, Service
from ._streams import PAUSED
from ._valve import BLOCKED_RECHECK_S, Valve

__all__ = ["EXIT_DRAIN_TIMEOUT", "EXIT_HARD_TIMEOUT", "StartupError", "Worker", "WorkerConfig"]

log = logging.getLogger("zeromesh.worker")


def _request_log_fields() -> dict[str, Any] | None:
    """The running handler's request, for JSON log lines (``--log-format json``)."""
    job = _context.current.get()
    if not isinstance(job, Job):
        return None
    req = job.request
    fields: dict[str, Any] = {"target": req.target, "request_id": req.id}
    if req.trace:
        fields["trace_id"] = protocol.trace_id_of(req.trace)
    return fields


add_log_fields(_request_log_fields)

_BATCH = 256  # messages handled per wake-up before other callbacks get a turn
_HOUSEKEEPING_S = 0.25
_STAND_IN_AFTER_S = 0.05
"""Inline mode: how long a handler runs before the watchdog reads the socket for it
(answers PING and HELLO, notes CANCEL, times out what waits)."""
_STAND_IN_POLL_S = 0.025
_REPLY_TYPE = int(protocol.MessageType.REPLY)  # the header's type byte of a REPLY
_END_TYPE = int(protocol.MessageType.END)  # ... and of a stream's END (a success too)
_PEER_FORGET_S = 60.0


class Worker(RouterServer):
    """Serves ``services`` on ``config.binds`` until drained.

    Use `serve` from a running loop, or `run` to own one. Not thread-safe apart from
    `request_stop`, which any thread (or a signal handler) may call.
    """

    def __init__(self, services: Sequence[Service], config: WorkerConfig) -> None:
        super().__init__(log)
        if not services:
            raise StartupError("no service to serve")
        self.config = config
        self._handlers: dict[str, Handler] = {}
        self._services: dict[str, list[str]] = {}
        for svc in services:
            if svc.name in self._services:
                raise StartupError(f"two services are named {svc.name!r}")
            if not svc.handlers:
                raise StartupError(f"service {svc.name!r} has no handlers")
            self._services[svc.name] = sorted(svc.handlers)
            for h in svc.handlers.values():
                self._handlers[h.target] = h
        self.slots = Capacity.of(self._handlers.values(), config.concurrency, config.max_async)
        """Plain and async requests it runs at once (announced in HELLO)."""
        self.capacity = self.slots.capacity
        has_async = bool(self.slots.async_slots)
        # Inline mode: one sync handler at a time, run on the loop thread itself, with a
        # watchdog thread that stands in on the socket while a handler runs long. Two
        # runnable Python threads trade the GIL on every pyzmq call (each one releases
        # it), which costs more than the handlers themselves for short calls; with
        # --concurrency 1 and no async handlers there is nothing a second thread buys.
        self.inline = config.concurrency == 1 and not has_async
        self.name = config.name or f"{socket.gethostname()}:{os.getpid()}"
        self.requests_done = 0
        self.request_limit = (
            config.max_requests + random.randint(0, config.max_requests_jitter)
            if config.max_requests
            else 0
        )
        """Requests this process serves before it recycles itself (0: no limit)."""
        self.protocol_errors = 0
        self.stats = CallStats()
        """Requests answered, by target and outcome, and handler time (`metrics`)."""
        self.drained_why = ""
        self.metrics_url = ""
        self._threads: list[threading.Thread] = []
        self._async_running = 0
        self.max_pending = config.max_pending or self.capacity + 1000
        slots = self.capacity + config.broker_prefetch
        if config.brokers and slots > self.max_pending:
            raise StartupError(
                f"--broker-prefetch {config.broker_prefetch} lets the brokers send this worker "
                f"{slots} requests at once ({self.capacity} slots + the prefetch), more than "
                f"it holds (--max-pending {self.max_pending}): the rest would be refused "
                f"OVERLOADED. Lower --broker-prefetch, or raise --max-pending to {slots} or more"
            )
        self.table = JobTable(self._handlers, max_pending=self.max_pending, name=self.name)
        self._jobs = self.table.jobs  # read often on the loop: one attribute lookup
        self.table.reporter = self._report_progress
        self._sock_lock = threading.Lock()  # inline mode: who may touch the socket now
        self._running_inline: Job | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._expiry_at = 0.0
        # Inline mode: stolen requests (read by the watchdog while a handler ran) that
        # the watchdog answered TIMEOUT at their deadline; the loop skips them.
        self._stolen_deadlines: list[tuple[float, list[zmq.Frame], protocol.Header]] = []
        self._stolen_answered: set[int] = set()
        self._stolen_arrivals: dict[int, float] = {}
        self._stolen_auth: dict[int, zmq.Frame] = {}  # a bundled message's BUNDLE frame
        self._stolen: deque[list[zmq.Frame]] = deque()  # received by the watchdog
        self._closing = False
        self._done: deque[tuple[Job | None, Any, list[Any] | Valve]] = deque()
        self._done_wake = False
        self._peers: dict[bytes, float] = {}
        self._bundlers: set[bytes] = set()  # clients whose HELLO said they take BUNDLEs
        self._streaming_inline: Job | None = None  # inline mode: the stream that runs
        self._stream_resuming = False  # inline mode: `_advance_stream` is due
        self._started_at = time.monotonic()
        self._link: BrokerLink | None = None

    # --- lifecycle -----------------------------------------------------------------

    def _bind(self) -> None:
        cfg = self.config
        self._bind_router(
            cfg.binds,
            limits=cfg.limits,
            heartbeat_ms=cfg.heartbeat_ms,
            heartbeat_timeout_ms=LIVENESS * cfg.heartbeat_ms,
            max_peer_output=cfg.max_peer_output,
            peer_kind="client",
            check_ipc=self._check_ipc_free,
            on_gone=self.peer_gone,
            security=cfg.security,
        )

    def _start(self, loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
        if self.config.metrics:
            try:
                self.metrics_url = serve_metrics(self.config.metrics, self.metrics, log)
            except ValueError as exc:
                raise StartupError(str(exc)) from exc
        if self.config.brokers:
            assert self._ctx is not None
            self._link = BrokerLink(self, self.config.brokers)
            try:
                self._link.start(self._ctx, loop)
            except ValueError as exc:
                raise StartupError(str(exc)) from exc
        if self.inline:
            self._sock_lock.acquire()  # the loop owns the socket except inside a handler
            t = threading.Thread(target=self._watchdog_main, name="zeromesh-watchdog")
            t.daemon = True
            t.start()
            self._threads.append(t)
        else:
            for i in range(self.config.concurrency):
                t = threading.Thread(target=self._thread_main, name=f"zeromesh-handler-{i}")
                t.daemon = True  # a handler stuck past the drain must not keep the process up
                t.start()
                self._threads.append(t)
        log.info(
            "worker %s serving %s on %s (pid %d, %d thread(s), %d async slot(s))",
            self.name,
            ", ".join(f"{s}.{{{','.join(h)}}}" for s, h in self._services.items()),
            " ".join(self.endpoints),
            os.getpid(),
            self.slots.threads,
            self.slots.async_slots,
        )
        if self.request_limit:
            log.info("recycling after %d requests (%s)", self.request_limit, self._limit_text())
        return [loop.create_task(self._housekeeping(), name="the worker's housekeeping")]

    def _close(self) -> None:
        self._closing = True
        if self.inline:
            self._sock_lock.release()
            if self._streaming_inline is not None:
                self._close_steps(self._streaming_inline)
            for t in self._threads:
                t.join(timeout=1.0)  # the watchdog notices `_closing` within 0.1 s
        else:
            self.table.close(len(self._threads))
        if self._link is not None:
            self._link.close(linger=2000)  # LINGER: let the replies to brokers leave

    def metrics(self) -> list[Any]:
        """The worker's Prometheus metric families, built from plain counters when
        scraped (``--metrics``; any thread). Names and labels: README, Observability."""
        table, slots = self.table, self.slots
        running = [j for j in list(table.jobs.values()) if j.state == RUNNING]
        busy_threads = sum(1 for j in running if not j.handler.is_async)
        undeliverable = self._outbox.undeliverable if self._outbox is not None else 0
        gauges = [
            ("in_flight", "Requests held: running or waiting", len(table.jobs)),
            (
                "queued",
                "Requests waiting in the worker for a slot",
                len(table.waiting) + len(table.async_waiting),
            ),
            ("threads", "Handler threads for plain handlers (--concurrency)", slots.threads),
            ("threads_busy", "Handler threads running a request", busy_threads),
            ("async_slots", "async handlers run at once (--max-async)", slots.async_slots),
            ("async_busy", "async handlers running", self._async_running),
            ("clients", "Clients heard from in the last minute", len(self._peers)),
        ]
        counters = [
            ("protocol_errors", "Malformed or unexpected messages received", self.protocol_errors),
            ("forbidden", "Requests refused by their key's services list", self.forbidden),
            ("undeliverable", "Answers whose client had left", undeliverable),
            (
                "broker_heartbeats_missed",
                "Times a broker fell silent for 3 heartbeats (its credit taken back)",
                self._link.silences if self._link is not None else 0,
            ),
        ]
        families = list(
            self.stats.families(
                "zeromesh_worker_requests",
                "Requests answered, by target and outcome (ok, or the error code's name)",
                "Time handlers took, by target (requests that ran)",
            )
        )
        families += [gauge(f"zeromesh_worker_{n}", text, v) for n, text, v in gauges]
        families += [counter(f"zeromesh_worker_{n}", text, v) for n, text, v in counters]
        who = {"name": self.name, "version": protocol.__version__}
        families.append(gauge("zeromesh_worker_info", "1; the labels say who it is", 1, who))
        if self.drained_why:
            why = {"why": self.drained_why}
            families.append(gauge("zeromesh_worker_draining", "1 while draining, and why", 1, why))
        return families

    def _check_ipc_free(self, endpoint: str, path: str) -> None:
        """Refuse a path a live worker answers on; libzmq would silently take it over."""
        if not os.path.exists(path):
            return
        if not _is_socket(path):
            raise StartupError(f"cannot bind {endpoint}: {path} exists and is not a socket")
        assert self._ctx is not None
        probe = self._ctx.socket(zmq.DEALER)
        probe.setsockopt(zmq.LINGER, 0)
        try:
            probe.connect(endpoint)
            probe.send_multipart(protocol.encode(Hello(0, role="client", name="bind-check")))
            if probe.poll(500, zmq.POLLIN):
                try:
                    hello = protocol.decode(probe.recv_multipart())
                except ProtocolError:
                    hello = None
                who = (
                    f"worker {hello.name} (pid {hello.pid})"
                    if isinstance(hello, Hello)
                    else "a live process"
                )
                raise StartupError(
                    f"cannot bind {endpoint}: {who} is serving on it; stop it first or "
                    "bind another path"
                )
        finally:
            probe.close(linger=0)
        if _listening(path):
            # A worker running CURVE never answers a plain HELLO, but it listens.
            raise StartupError(
                f"cannot bind {endpoint}: a live process listens on it (a worker running "
                "CURVE?); stop it first or bind another path"
            )
        log.info("reusing stale socket file %s (nothing answers on it)", path)

    # --- the socket loop --------------------------------------------------------------

    def pump(self) -> None:
        """Drain the socket in a batch, then send what handlers finished meanwhile.

        Part of the port the broker link uses: call it after a link received work.
        """
        self._pump_scheduled = False
        sock = self._sock
        assert sock is not None
        if receive_batch(sock, self._on_message, _BATCH) == _BATCH:
            self._schedule_pump()  # more may wait: let timers and signals run first
        if self.table.waiting:
            if self.inline:
                self._run_inline()
            else:
                # Wake handler threads once per batch, not per message: a woken thread
                # grabs the GIL each time this loop releases it in a pyzmq call.
                self.table.wake()
        self._flush_done()

    def _on_message(
        self, frames: list[Any], arrived: float = 0.0, auth: zmq.Frame | None = None
    ) -> None:
        """Handle one message from a client: ``[envelope, header, body, *oob]``.

        ``auth``: the frame whose ZAP User-Id speaks for the message (a bundled
        message's own frames are bytes: its BUNDLE's frame does).
        """
        peer = frames[0].bytes
        self._peers[peer] = time.monotonic()
        try:
            msg = protocol.decode(frames[1:], self.config.limits)
            if type(msg) is Bundle:
                protocol.check_route(msg, link=False)
        except ProtocolError as exc:
            self.malformed(peer, frames[1:], exc, f"client {peer.hex()}")
            return
        if type(msg) is Bundle:
            auth = frames[1] if auth is None else auth
            for header, body in msg.messages:  # each as if it had come alone (SPEC 7.10)
                self._on_message([frames[0], header, body], arrived, auth)
        elif type(msg) is Request:
            if self._gatekeeper is not None:
                why = self._forbidden(frames[1] if auth is None else auth, msg.target)
                if why is not None:
                    self._send_error(peer, msg, ErrorCode.FORBIDDEN, why)
                    return
            self.accept(peer, msg, arrived)
        elif type(msg) is Ping:
            self._send(peer, protocol.encode(Pong(msg.id, msg.codec)))
        elif type(msg) is Hello:
            if msg.bundle:
                self._bundlers.add(peer)
            else:
                self._bundlers.discard(peer)
            self._send(peer, protocol.encode(self.hello(msg.id, msg.codec)))
        elif type(msg) is Credit:
            self.grant(peer, msg.id, msg.credit)
        elif type(msg) is Cancel:
            self.cancel(peer, msg.id)
        elif type(msg) is Disconnect:
            self._forget_peer(peer)
            dropped = self.table.forget_peer(peer)
            self._wake_streams(peer)
            if dropped:
                log.info(
                    "client %s left (%s): dropped its %d waiting request(s)",
                    peer.hex(),
                    msg.reason or "no reason given",
                    dropped,
                )
        else:
            # Never answer an answer (ERROR, REPLY, PONG...): two peers doing that would
            # bounce errors forever. Count it (the log is rate-limited) and move on.
            self.count_bad(
                f"client {peer.hex()} sent a {type(msg).__name__}, which a worker does not "
                "take; ignored"
            )

    def malformed(self, peer: bytes, frames: list[zmq.Frame], exc: ProtocolError, who: str) -> None:
        """Count and log a message that failed to decode; answer it unless it was itself
        an answer (SPEC section 6)."""
        self.protocol_errors += 1
        n = self.protocol_errors
        if n <= 10 or n % 1000 == 0:  # a flood of garbage must not flood the log too
            log.warning(
                "malformed message from %s (%d frames): %s [%d so far]", who, len(frames), exc, n
            )
        answer = protocol.refusal(exc, frames[0] if frames else None)
        if answer is not None:
            self._send(peer, protocol.encode(answer))

    def count_bad(self, what: str) -> None:
        """Count a message this worker would not take (and log the first ones)."""
        self.protocol_errors += 1
        n = self.protocol_errors
        if n <= 10 or n % 1000 == 0:
            log.warning("%s [%d bad message(s) so far]", what, n)

    @property
    def held(self) -> int:
        """Requests held now: running, waiting, or answered and not yet sent."""
        return len(self._jobs)

    @property
    def draining(self) -> bool:
        """True once the worker stopped taking work."""
        return self.table.draining

    def _forget_peer(self, peer: bytes) -> None:
        self._peers.pop(peer, None)
        self._bundlers.discard(peer)

    def grant(self, peer: bytes, rid: int, credit: int) -> None:
        """``peer``'s CREDIT for stream ``rid`` (part of the broker link's port)."""
        job = self._jobs.get((peer, rid))
        if job is not None and job.valve is not None:  # else ended: ignored (SPEC 7.11)
            job.valve.grant(credit)

    def peer_gone(self, peer: bytes) -> None:
        """``peer`` is unreachable (a send found its connection closed, or ZeroMQ's
        heartbeat timed out; or, for a client behind a broker, the link to that broker
        dropped): forget it, and cancel its streams, which would otherwise wait for its
        credit forever holding their slots (SPEC 7.11, 12.8)."""
        self._forget_peer(peer)
        streams = self.table.streams_of(peer)
        for job in streams:
            job.cancelled = True
            if job.task is not None:
                job.task.cancel()
        self._wake_streams(peer, streams)
        if streams:
            log.info("client %s is gone: cancelled its %d stream(s)", peer.hex(), len(streams))

    def _wake_streams(self, peer: bytes, streams: list[Job] | None = None) -> None:
        """Let ``peer``'s cancelled streams that wait for credit see it."""
        for job in self.table.streams_of(peer) if streams is None else streams:
            if job.valve is not None:
                job.valve.wake()

    def _probe_streaming_clients(self) -> None:
        """A paused stream sends nothing, so nothing would show that its client left: a
        PING to each client holding a stream does (the send fails, `_peer_gone`)."""
        peers = {j.peer for j in self.table.jobs.values() if j.valve is not None}
        ping = protocol.encode(Ping(0))
        for peer in peers:
            if type(peer) is bytes:  # (a broker's clients are the broker's to watch)
                self._send(peer, list(ping))

    def hello(self, rid: int, codec: protocol.Codec) -> Hello:
        """This worker's HELLO (answer to a client, greeting to a broker). It says
        ``bundle``: a client may send it BUNDLEs, a broker routed ones (SPEC 7.10)."""
        slots = self.slots.announced(self.table.draining)
        return Hello(
            rid,
            role="worker",
            name=self.name,
            version=protocol.__version__,
            host=socket.gethostname(),
            pid=os.getpid(),
            services=self._services,
            capacity=slots.capacity,
            in_flight=len(self._jobs),
            uptime=round(time.monotonic() - self._started_at, 3),
            heartbeat_ms=self.config.heartbeat_ms,
            codec=codec,
            threads=slots.threads,
            async_slots=slots.async_slots,
            async_handlers=slots.async_handlers,
            stats={**self.stats.summary(), **process_usage()},
            bundle=True,
            streams=True,
        )

    def accept(self, peer: bytes, req: Request, arrived: float = 0.0) -> None:
        """Take a request from ``peer`` (a direct client, or a `Via` from a broker link):
        queue it to run, or answer why not."""
        if type(peer) is bytes and self._outbox.not_reading(peer):
            return
        job = self.table.admit(peer, req, arrived)
        if type(job) is not Job:
            self._send_error(peer, req, *job)  # type: ignore[misc]
            return
        if req.window:
            valve = job.valve = Valve(req.window, req.id, req.codec)
            valve.blocked = lambda: self._peer_full(peer)
            valve.post = lambda: self._post(job, valve, final=False)
        if job.handler.is_async and self._async_running < self.config.max_async:
            self._start_async(job)
            return
        refused = self.table.enqueue(job)
        if refused is not None:
            self._answer_error(refused, *self.table.overloaded())
        if job.deadline and not self.inline:
            self._arm_expiry()

    def _arm_expiry(self) -> None:
        """Have `_expire` run when the soonest waiting job's deadline passes (threaded
        mode: the loop is free; inline mode: the watchdog does it, `_stand_in`)."""
        at = self.table.next_expiry()
        if not at or (self._expiry_timer is not None and self._expiry_at <= at):
            return
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        assert self._loop is not None
        self._expiry_at = at
        self._expiry_timer = self._loop.call_later(max(0.0, at - time.monotonic()), self._expire)

    def _expire(self) -> None:
        """Answer TIMEOUT to the waiting requests whose deadline passed; they never run."""
        self._expiry_timer = None
        now = time.monotonic()
        for job in self.table.expire():
            self._answer_error(job, *self.table.expired(job, now))
        self._arm_expiry()

    def cancel(self, peer: bytes, rid: int) -> None:
        """``peer`` gave up on request ``rid``: stop it if it runs, drop it if it waits."""
        stream = self._jobs.get((peer, rid))
        job = self.table.cancel(peer, rid)
        if job is not None:
            self._answer_error(job, ErrorCode.CANCELLED, "cancelled before it started")
        if stream is not None and stream.valve is not None:
            stream.valve.wake()  # it may wait for credit: let it see the cancel

    def _report_progress(self, job: Job, done: float, total: float | None, note: str) -> None:
        msg = Progress(job.request.id, done, total, note, job.request.codec)
        self._post(job, protocol.encode(msg), final=False)

    def _send(self, peer: bytes, frames: list[Any]) -> None:
        if type(peer) is not bytes:  # a client behind a broker: its link sends it
            peer.link.reply(peer, frames)  # type: ignore[attr-defined]
            return
        self._outbox.send([peer, *frames])

    def _send_error(self, peer: bytes, req: Request, code: ErrorCode, message: str) -> None:
        """Refuse ``req`` before it became a job (unknown handler, draining, forbidden...)."""
        target = req.target if req.target in self._handlers else OTHER_TARGET
        self.stats.observe(target, outcome_name(code), None)
        self._send(peer, protocol.encode(Error(req.id, code, message, codec=req.codec)))

    # --- running handlers ----------------------------------------------------------------

    def _run_inline(self) -> None:
        """Run the ready sync jobs on this (the loop's) thread, answering each at once."""
        waiting = self.table.waiting
        lock = self._sock_lock
        started = time.monotonic()
        while waiting and self._streaming_inline is None:
            if time.monotonic() - started > 0.05:
                # Let timers and signals (SIGTERM) in between long runs of work.
                self._schedule_pump()
                return
            job = waiting.pop()
            assert job is not None
            if not self.table.claim(job, QUEUED):
                continue
            if job.valve is not None:
                # A stream holds the one slot until it ends; it runs here a slice at a
                # time, as its client's credit allows (`_advance_stream`).
                self._streaming_inline = job
                job.valve.resume = self._resume_stream
                self._advance_stream()
                return
            frames = self._refusal(job)
            if frames is None:
                token = _context.current.set(job)
                self._running_inline = job
                lock.release()  # the watchdog may answer pings while the handler runs
                try:
                    frames = run_sync(job, self.config.limits)
                finally:
                    lock.acquire()
                    self._running_inline = None
                    _context.current.reset(token)
                if not self.table.claim(job, RUNNING):
                    continue  # the watchdog answered it (hard timeout)
            else:
                job.state = DONE
            self._done.append((job, job.peer, frames))
            if len(self._done) >= 32 or time.monotonic() - job.started > 0.001:
                self._flush_done()  # answer slow calls at once, batch quick ones
            self._take_stolen()

    def _take_stolen(self) -> None:
        """Inline mode: handle what the watchdog read while a handler ran."""
        while self._stolen:
            frames = self._stolen.popleft()
            if self._stolen_answered and id(frames) in self._stolen_answered:
                self._stolen_answered.discard(id(frames))
                continue  # expired while it waited: the watchdog answered it
            # Its deadline counts from when the watchdog read it, not from now.
            key = id(frames)
            arrived = self._stolen_arrivals.pop(key, 0.0)
            self._on_message(frames, arrived, self._stolen_auth.pop(key, None))
        self._stolen_deadlines.clear()
        self._stolen_arrivals.clear()
        self._stolen_auth.clear()

    def _peer_full(self, peer: bytes) -> bool:
        """Whether answers wait unread for ``peer`` past ``max_peer_output`` (a direct
        client; for one behind a broker, the link to that broker)."""
        if type(peer) is bytes:
            return self._outbox.full(peer)
        outbox = peer.conn.outbox  # type: ignore[attr-defined]
        return outbox is not None and bool(outbox.full())

    def _resume_stream(self) -> None:
        """Inline mode: a grant or a cancel came for the stream: go on with it soon."""
        if not self._stream_resuming and self._loop is not None:
            self._stream_resuming = True
            self._loop.call_soon(self._advance_stream)

    def _advance_stream(self) -> None:
        """Inline mode: run the stream's handler on this (the loop's) thread while it
        holds credit, up to 50 ms at a time, as `_run_inline` runs a plain handler (the
        watchdog stands in meanwhile); its items go out at least every millisecond.
        No thread hands items to the loop, so none waits for one to wake: its first
        item goes out as soon as it is made. Out of credit, it stops until a grant or
        a cancel `_resume_stream`s it."""
        self._stream_resuming = False
        job = self._streaming_inline
        if job is None:
            return
        valve = job.valve
        assert valve is not None
        final: list[Any] | None = None
        if valve.steps is None:
            final = self._refusal(job)
            if final is not None:
                job.state = DONE
            else:
                valve.steps = stream_steps(job, self.config.limits)
        if final is None:
            final = self._run_steps(job, valve.steps)
            if final is not None and not self.table.claim(job, RUNNING):
                final = None  # answered already (abandoned by a drain)
                self._streaming_inline = None
        if final is not None:
            self._done.append((job, job.peer, final))
            self._flush_done()  # (frees the slot: `_streaming_inline` is cleared there)
        elif valve.gate.state is not PAUSED and not job.cancelled and self._loop is not None:
            # Stopped with credit left: its client does not read (a grant may never
            # come), or its slice ended: look again soon either way.
            self._loop.call_later(BLOCKED_RECHECK_S, self._resume_stream)
        self._take_stolen()

    def _close_steps(self, job: Job) -> None:
        """Inline mode: close a stream that runs on this loop (abandoned by the drain,
        or the worker closing): its generator's ``finally`` runs now, seeing
        ``cancelled()`` true."""
        steps = job.valve.steps if job.valve is not None else None
        if steps is None:
            return
        token = _context.current.set(job)
        try:
            steps.close()
        finally:
            _context.current.reset(token)

    def _run_steps(self, job: Job, steps: Any) -> list[Any] | None:
        """Advance ``steps`` (`stream_steps`) for one slice: its final frames if the
        stream ended, else None (out of credit, or the slice is over: it goes on)."""
        lock = self._sock_lock
        token = _context.current.set(job)
        self._running_inline = job
        lock.release()  # the watchdog may answer pings while the handler runs
        started = flushed = time.monotonic()
        try:
            while next(steps):
                now = time.monotonic()
                if now - flushed > 0.001:
                    lock.acquire()
                    try:
                        self._flush_done()  # the items made so far
                    finally:
                        lock.release()
                    flushed = now
                if now - started > 0.05:
                    self._resume_stream()  # timers and signals first, then on
                    break
        except StopIteration as stop:
            return stop.value
        finally:
            lock.acquire()
            self._running_inline = None
            _context.current.reset(token)
        return None

    def _watchdog_main(self) -> None:
        """Inline mode: while a handler runs long, answer PING and HELLO, note CANCEL.

        Holds the socket lock only while the loop thread is inside a handler (which
        releases it). Requests are kept for the loop, never run here; the hard timeout
        is enforced here, because the loop thread is the one that is stuck.
        """
        lock = self._sock_lock
        while not self._closing:
            # Look often while a handler runs (a request queued behind it must be
            # answered TIMEOUT near its deadline), seldom while idle.
            time.sleep(_STAND_IN_POLL_S if self._running_inline is not None else 0.1)
            job = self._running_inline
            if job is None:
                continue
            # A stream's items must not wait for its generator's next one: stand in at
            # once when some wait (`_stand_in` sends them).
            early = job.valve is not None and job.valve.waiting()
            if not early and time.monotonic() - job.started < _STAND_IN_AFTER_S:
                continue
            if not lock.acquire(blocking=False):
                continue
            try:
                if self._running_inline is job and not self._closing:
                    self._stand_in(job)
            finally:
                lock.release()

    def _stand_in(self, job: Job) -> None:
        sock = self._sock
        assert sock is not None
        if job.valve is not None:  # a stream's items, made before its handler blocked
            self._send_stream_items(job, job.valve)
        while True:
            try:
                frames = recv_message(sock)
            except zmq.Again:
                break
            self._stand_in_one(job, frames)
        self._expire_standing_in()
        if self._link is not None:
            self._link.stand_in()  # the brokers need heartbeats too
        limit = self.config.hard_timeout
        if limit and job in self.table.overdue(limit) and self.table.claim(job, RUNNING):
            self._hard_exit(job)

    def _send_stream_items(self, job: Job, valve: Valve) -> None:
        """Watchdog: send what waits at a running stream's valve, straight to the socket
        (the loop's outbox is the loop's), unless answers wait in that outbox for the
        client (they go first, in order); what the pipe refuses goes back for the loop."""
        peer = job.peer
        if type(peer) is not bytes or self._outbox.waiting(peer)[0]:
            return  # (behind a broker, or answers queued: the loop sends them in order)
        sock = self._sock
        assert sock is not None
        messages = valve.take_items()
        for i, frames in enumerate(messages):
            try:
                send_message(sock, [peer, *frames])
            except zmq.ZMQError:
                valve.put_back(messages[i:])
                return

    def _stand_in_one(self, job: Job, frames: list[Any]) -> None:
        """Watchdog: answer what cannot wait for the loop (PING, HELLO), note a CANCEL of
        the running job, keep the rest for the loop with its arrival time."""
        try:
            header = protocol.decode_header(frames[1]) if len(frames) > 1 else None
        except ProtocolError:
            header = None
        if header is None:
            self._stolen.append(frames)  # the loop answers it, as it would have
            return
        kind = header.type
        peer = frames[0].bytes
        if kind is protocol.MessageType.REQUEST and header.ttl_ms:
            deadline = time.monotonic() + header.ttl_ms / 1000
            self._stolen_deadlines.append((deadline, frames, header))
            self._stolen_arrivals[id(frames)] = deadline - header.ttl_ms / 1000
            self._stolen.append(frames)
        elif kind is protocol.MessageType.PING:
            self._send_now(peer, protocol.encode(Pong(header.id, header.codec)))
        elif kind is protocol.MessageType.HELLO:
            with contextlib.suppress(ProtocolError):
                if protocol.decode(frames[1:], self.config.limits).bundle:  # type: ignore[union-attr]
                    self._bundlers.add(peer)
            self._send_now(peer, protocol.encode(self.hello(header.id, header.codec)))
        elif kind is protocol.MessageType.CANCEL and (peer, header.id) == (
            job.peer,
            job.request.id,
        ):
            job.cancelled = True
        elif kind is protocol.MessageType.DISCONNECT and peer == job.peer:
            job.cancelled = True  # the running one; the loop drops the waiting ones
            self._stolen.append(frames)
        elif kind is protocol.MessageType.BUNDLE:
            self._steal_bundle(job, frames)
        else:
            self._stolen.append(frames)

    def _steal_bundle(self, job: Job, frames: list[zmq.Frame]) -> None:
        """Watchdog: a BUNDLE came while a handler runs. Its messages are taken apart and
        each treated as if it had come alone (a PING in it is answered, a request in
        it keeps its deadline); one that does not decode is left for the loop."""
        try:
            msg = protocol.decode(frames[1:], self.config.limits)
            assert type(msg) is Bundle
            protocol.check_route(msg, link=False)
        except ProtocolError:
            self._stolen.append(frames)  # the loop counts and logs it
            return
        for header, body in msg.messages:
            inner = [frames[0], header, body]
            self._stolen_auth[id(inner)] = frames[1]
            self._stand_in_one(job, inner)

    def _expire_standing_in(self) -> None:
        """Inline mode, watchdog (holding the socket lock, the loop inside a handler):
        answer TIMEOUT to what waits past its deadline, admitted or still stolen."""
        now = time.monotonic()
        timeout = outcome_name(ErrorCode.TIMEOUT)
        for job in self.table.expire():
            self._answer_now(job, *self.table.expired(job, now))
            if self.table.finish(job):
                self.requests_done += 1
                self.stats.observe(job.request.target, timeout, None)
        if not self._stolen_deadlines:
            return
        waiting = []
        for deadline, frames, header in self._stolen_deadlines:
            if deadline > now:
                waiting.append((deadline, frames, header))
                continue
            self._stolen_answered.add(id(frames))
            target = header.target if header.target in self._handlers else OTHER_TARGET
            self.stats.observe(target, timeout, None)
            code, text = expired_refusal(header.target, header.ttl_ms / 1000, header.ttl_ms)
            msg = Error(header.id, code, text, codec=header.codec)
            self._send_now(frames[0].bytes, protocol.encode(msg))
        self._stolen_deadlines = waiting

    def _send_now(self, peer: Any, frames: list[Any]) -> None:
        """Send from the watchdog thread (holding the socket lock); best effort."""
        if type(peer) is not bytes:  # a client behind a broker
            peer.link.reply_now(peer, frames)
            return
        sock = self._sock
        assert sock is not None
        with contextlib.suppress(zmq.ZMQError):
            send_message(sock, [peer, *frames])

    def _hard_exit(self, job: Job) -> None:
        """Inline mode, watchdog thread: a handler overran the hard timeout while the
        loop is stuck in it; answer everything held and exit."""
        self._hard_timeout(job, self._answer_now)
        goodbye = protocol.encode(Disconnect(0, f"worker {self.name} restarting"))
        for peer in list(self._peers):
            self._send_now(peer, goodbye)
        for frames in self._stolen:
            if id(frames) in self._stolen_answered:
                continue  # answered TIMEOUT already
            with contextlib.suppress(ProtocolError, IndexError):
                header = protocol.decode_header(frames[1])
                if header.type is protocol.MessageType.REQUEST:
                    self._send_now(
                        frames[0].bytes,
                        protocol.encode(Error(header.id, ErrorCode.DRAINING, "worker restarting")),
                    )
        sock = self._sock
        assert sock is not None
        assert self._ctx is not None
        # As after a drain: a client with IMMEDIATE=1 drops what it has not read yet once
        # we hang up, and the Timeout just sent is the one answer that must reach it.
        time.sleep(HANGUP_GRACE_S)
        if self._link is not None:
            self._link.close(linger=2000)
        sock.close(linger=2000)  # let the answers leave before the process does
        self._ctx.term()
        logging.shutdown()
        os._exit(EXIT_HARD_TIMEOUT)

    def _answer_now(self, job: Job, code: ErrorCode, message: str) -> None:
        req = job.request
        self._send_now(job.peer, protocol.encode(Error(req.id, code, message, codec=req.codec)))

    def _thread_main(self) -> None:
        while (job := self.table.next_sync()) is not None:
            if self.table.claim(job, QUEUED):  # else answered already (drain, cancel)
                self._run_claimed(job)

    def _run_claimed(self, job: Job) -> None:
        """On a handler thread: run ``job`` (claimed QUEUED → RUNNING) and post its answer."""
        frames = self._refusal(job)
        if frames is None:
            token = _context.current.set(job)
            try:
                if job.valve is not None:
                    frames = run_stream(job, self.config.limits)
                else:
                    frames = run_sync(job, self.config.limits)
            finally:
                _context.current.reset(token)
            if not self.table.claim(job, RUNNING):
                return  # the hard-timeout watchdog answered it meanwhile
        else:
            job.state = DONE
        self._post(job, frames, final=True)

    def _refusal(self, job: Job) -> list[Any] | None:
        """The answer for a job that must not start (cancelled, expired), else None."""
        refusal = self.table.refusal_on_start(job)
        if refusal is None:
            return None
        req = job.request
        return protocol.encode(Error(req.id, *refusal, codec=req.codec))

    def _start_async(self, job: Job) -> None:
        self._async_running += 1
        assert self._loop is not None
        job.task = self._loop.create_task(self._call_async(job))
        # The slot is given back when the task ends, however it ends: a task cancelled
        # before its first step (a CANCEL or DISCONNECT in the same batch) never runs
        # a line of _call_async.
        job.task.add_done_callback(self._async_done)

    def _async_done(self, task: asyncio.Task[None]) -> None:
        self._async_running -= 1
        waiting = self.table.async_waiting
        if waiting and not self.table.draining:
            self._start_async(waiting.pop())  # type: ignore[arg-type]

    async def _call_async(self, job: Job) -> None:
        if not self.table.claim(job, QUEUED):
            return  # answered before it started (cancelled, expired, the drain)
        frames = self._refusal(job)
        if frames is None:
            _context.current.set(job)  # this task's own context
            if job.valve is not None:
                frames = await run_stream_async(job, self.config.limits)
            else:
                frames = await run_async(job, self.config.limits)
            if not self.table.claim(job, RUNNING):
                return  # answered by the drain meanwhile
        else:
            job.state = DONE
        self._post(job, frames, final=True)

    def _answer_error(self, job: Job, code: ErrorCode, message: str) -> None:
        req = job.request
        self._post(job, protocol.encode(Error(req.id, code, message, codec=req.codec)), True)

    def _post(self, job: Job, frames: list[Any] | Valve, final: bool) -> None:
        """Queue frames for ``job``'s client from any thread; the loop sends them (a
        `Valve`: the stream's items waiting there, taken when their turn comes)."""
        if not final and self._running_inline is job and type(frames) is list:
            # PROGRESS from an inline handler: the loop is busy running it, so send now.
            with self._sock_lock:
                self._send_now(job.peer, frames)
            return
        self._done.append((job if final else None, job.peer, frames))
        if not self._done_wake:
            self._done_wake = True
            loop = self._loop
            assert loop is not None
            # RuntimeError: the loop is closed, the process is exiting anyway.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._flush_done)

    def _flush_done(self) -> None:
        self._done_wake = False
        done = self._done
        jobs = self._jobs
        finish = self.table.finish
        observe = self.stats.observe
        now = time.monotonic()
        finished = 0
        # What this turn sends, by client (a stream's items ready together as batched
        # ITEMs): a client that takes BUNDLEs gets its small answers in some.
        held: dict[bytes, list[list[Any]]] = {}
        while done:
            job, peer, frames = done.popleft()
            answers = held.get(peer)
            if answers is None:
                answers = held[peer] = []
            if isinstance(frames, Valve):  # a stream's items, all those made by now
                answers += frames.take_items()
                continue
            if job is not None:
                if not finish(job):
                    continue  # answered already by the watchdog; drop the late result
                finished += 1
                if job is self._streaming_inline:
                    self._streaming_inline = None
                    self._schedule_pump()  # what waited behind the stream may run now
                # The outcome, and the handler's time if it ran (refusals count apart).
                kind = frames[0][3]
                if kind in (_REPLY_TYPE, _END_TYPE):
                    outcome = "ok"
                else:
                    outcome = outcome_name(protocol.answer_code(frames, self.config.limits))
                observe(job.request.target, outcome, now - job.started if job.ran else None)
            answers.append(frames)
        if held:
            self._send_held(held)
        if finished:
            self.requests_done += finished
            limit = self.request_limit
            if limit and self.requests_done >= limit and not self.table.draining:
                reason = f"served {self.requests_done} requests ({self._limit_text()})"
                self._begin_drain(reason, "max_requests")
            if self.table.draining and not jobs:
                self._wake()
        if self._link is not None:
            self._link.grant()  # free slots become credit at the brokers
        self._look_for_input()  # sending may have consumed the FD's edge

    def _send_held(self, held: dict[bytes, list[list[Any]]]) -> None:
        """Send what `_flush_done` held, by client: small answers in BUNDLEs to a
        client that takes them, and those that came through brokers to their links,
        which bundle them per broker (SPEC 7.10)."""
        bundlers = self._bundlers
        send = self._send
        routed: list[tuple[Any, list[Any]]] = []
        for peer, answers in held.items():
            if type(peer) is not bytes:  # a client behind a broker
                routed += [(peer, frames) for frames in answers]
            elif peer in bundlers and len(answers) > 1:
                for frames, _ in protocol.coalesce(answers):
                    send(peer, frames)
            else:
                for frames in answers:
                    send(peer, frames)
        if routed:
            assert self._link is not None
            self._link.reply_all(routed)

    def _limit_text(self) -> str:
        cfg = self.config
        if not cfg.max_requests_jitter:
            return f"--max-requests {cfg.max_requests}"
        return (
            f"--max-requests {cfg.max_requests} + {self.request_limit - cfg.max_requests} "
            f"of --max-requests-jitter {cfg.max_requests_jitter}"
        )

    # --- drain and housekeeping ----------------------------------------------------------

    def _begin_drain(self, reason: str, why: str = "") -> None:
        """Stop taking work. ``why`` is the metrics label: ``max_requests``, ``max_rss``,
        ``hard_timeout``; by default ``signal`` (SIGTERM, SIGINT) or ``stop``."""
        if self.table.draining:
            return
        self.table.draining = True
        self.drained_why = why or ("signal" if reason in ("SIGTERM", "SIGINT") else "stop")
        log.info(
            "draining (%s): taking no new work, %d request(s) in flight, %d client(s) told",
            reason,
            len(self._jobs),
            len(self._peers),
        )
        goodbye = protocol.encode(Disconnect(0, f"worker {self.name} draining: {reason}"))
        for peer in list(self._peers):
            self._send(peer, list(goodbye))
        if self._link is not None:
            self._link.drain(reason)
        # Queued async work was accepted: it still runs, within the drain timeout.
        waiting = self.table.async_waiting
        while waiting and self._async_running < self.config.max_async:
            self._start_async(waiting.pop())  # type: ignore[arg-type]
        self._wake()

    async def _drain(self) -> None:
        started = time.monotonic()
        if await self._wait_while(lambda: bool(self._jobs), self.config.drain_timeout):
            self._abandon(f"drain timeout ({self.config.drain_timeout:g} s) passed")
            if not self.exit_code:
                self.exit_code = EXIT_DRAIN_TIMEOUT
        self._flush_done()
        if self._peers:
            await self._hang_up_grace()  # for our last replies and the DISCONNECT
        log.info(
            "drained in %.2f s: %d request(s) served in total; exiting %d",
            time.monotonic() - started,
            self.requests_done,
            self.exit_code,
        )

    def _abandon(self, why: str) -> None:
        """Answer every job still held: unstarted ones DRAINING, running ones WORKER_LOST."""
        for job, refusal, was_running in self.table.abandon(why):
            if was_running:
                if job.task is not None:
                    job.task.cancel()
                if job.valve is not None:  # a stream waiting for credit: close it now
                    job.cancelled = True
                    job.valve.wake()
                    self._close_steps(job)
                log.error(
                    "abandoning %s (id %d) after %.1f s: %s",
                    job.request.target,
                    job.request.id,
                    time.monotonic() - job.started,
                    why,
                )
            self._answer_error(job, *refusal)
        self._flush_done()

    async def _housekeeping(self) -> None:
        cfg = self.config
        next_rss = next_probe = 0.0
        while True:
            await asyncio.sleep(_HOUSEKEEPING_S)
            now = time.monotonic()
            if now >= next_probe:
                next_probe = now + cfg.heartbeat_ms / 1000
                self._probe_streaming_clients()
            if cfg.hard_timeout and not self.inline:  # inline: the watchdog enforces it
                self._check_hard_timeout()
            if cfg.max_rss_mb and now >= next_rss and not self.table.draining:
                next_rss = now + 1.0
                rss = _rss_mb()
                if rss > cfg.max_rss_mb:
                    limit = cfg.max_rss_mb
                    reason = f"resident memory {rss:.0f} MB > --max-rss {limit:g}"
                    self._begin_drain(reason, "max_rss")
            stale = [p for p, seen in self._peers.items() if now - seen > _PEER_FORGET_S]
            for peer in stale:
                self._forget_peer(peer)
            self._look_for_input()

    def _check_hard_timeout(self) -> None:
        """Threaded mode, on the loop: answer an overrunning handler's client and drain."""
        for job in self.table.overdue(self.config.hard_timeout):
            if self.table.claim(job, RUNNING):
                self._hard_timeout(job, self._answer_error)
                if not self.table.draining:
                    self._begin_drain("hard timeout", "hard_timeout")

    def _hard_timeout(self, job: Job, answer: Callable[[Job, ErrorCode, str], None]) -> None:
        """``job`` overran ``--hard-timeout`` (claimed RUNNING → DONE by the caller).

        Its client gets TIMEOUT; sync work queued behind it would never start (its
        thread is stuck), so it is answered DRAINING and its clients re-send it
        elsewhere; the worker exits `EXIT_HARD_TIMEOUT` so supervisord replaces it.
        ``answer`` sends from the caller's thread (the loop, or the inline watchdog).
        """
        req = job.request
        limit = self.config.hard_timeout
        log.error(
            "%s (id %d) still running after %.1f s (--hard-timeout %g): answering Timeout; "
            "this worker takes no more work and exits %d so a fresh one replaces it",
            req.target,
            req.id,
            time.monotonic() - job.started,
            limit,
            EXIT_HARD_TIMEOUT,
        )
        self.exit_code = EXIT_HARD_TIMEOUT
        answer(
            job,
            ErrorCode.TIMEOUT,
            f"{req.target} ran longer than the worker's hard timeout ({limit:g} s)",
        )
        for other in self.table.unstarted_sync():
            answer(other, ErrorCode.DRAINING, "worker restarting")


def _listening(path: str) -> bool:
    """True if a process accepts connections on the unix socket ``path`` (a stale file
    left by a dead one refuses them)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def _is_socket(path: str) -> bool:
    import stat

    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
