"""The broker process: one ROUTER socket for clients and workers, around the scheduler.

Clients and workers both connect to the broker's endpoints; the first frame after the
routing id tells them apart (protocol/SPEC.md, section 12):

* ``[peer, header, body, oob…]`` — a client message, exactly what a worker would get;
* ``[peer, "", header, body…]`` — a worker's own message to the broker (HELLO, READY,
  PING, DISCONNECT): the empty frame is the envelope "from the worker itself";
* ``[peer, client, header, body…]`` from a registered worker — its answer (REPLY,
  ERROR, PROGRESS; a stream's ITEM and END) to request ``header.id`` of ``client``.

Requests travel to workers as ``[worker, client, header, body, oob…]`` and replies back
to clients as ``[client, header, body, oob…]``: frames are forwarded as received, never
decoded beyond the header (a broker routes on the header alone); only a request's
``ttl_ms`` is rewritten to the time it has left. A stream's CREDIT goes from the client
to the worker holding the stream as ``[worker, client, header, body]``, like a CANCEL
(SPEC 12.8).

The loop never blocks: every send is non-blocking with ``ROUTER_MANDATORY``, so a peer
that left raises ``EHOSTUNREACH`` (a worker is then removed and its requests re-queued)
and a full pipe raises ``zmq.Again`` (a request goes back to its queue; an answer waits
in a bounded backlog).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import zmq

import protocol
from protocol import (
    DEFAULT_LIMITS,
    FLAG_STREAM,
    Bundle,
    Cancel,
    Codec,
    Disconnect,
    Error,
    ErrorCode,
    Hello,
    Limits,
    MessageType,
    Ping,
    Pong,
    ProtocolError,
    Ready,
    Reply,
    StartupError,
)
from zmqio import (
    DEFAULT_PEER_OUTPUT,
    RouterServer,
    Security,
    counter,
    gauge,
    labelled,
    process_usage,
    receive_batch,
    send_message,
    serve_metrics,
)

from ._scheduler import (
    IN_FLIGHT,
    RESERVED_SERVICE,
    Answer,
    CancelAt,
    Dispatch,
    Job,
    Scheduler,
)

__all__ = ["EXIT_DRAIN_TIMEOUT", "Broker", "BrokerConfig", "StartupError"]

log = logging.getLogger("zeromesh.broker")

_TOTALS = [
    ("answered", "Requests answered by a worker"),
    ("refused", "Requests a draining worker refused (sent elsewhere)"),
    ("worker_lost", "Requests given up after their workers were lost max-deliveries times"),
    ("unknown", "Requests for a target no worker serves"),
    ("cancelled", "Requests their client cancelled or left"),
    ("late_replies", "Answers that came after their request was given up"),
    ("workers_expired", "Workers dropped after missing their heartbeats"),
    ("streams", "Stream requests accepted"),
    ("items", "Stream ITEM messages forwarded to clients (a batched one counts once)"),
]
"""The scheduler's totals served as counters (``zeromesh_broker_<name>_total``)."""

EXIT_DRAIN_TIMEOUT = 3
"""Exit status when requests were still in flight at the end of the drain timeout."""

_BATCH = 512  # messages handled per wake-up before timers and signals get a turn
_CLIENT_FORGET_S = 60.0
_GONE_REMEMBERED = 4096  # gone clients whose requests were already dropped
_EMPTY = b""
_REQUEST = MessageType.REQUEST
_REPLY = MessageType.REPLY
_ERROR = MessageType.ERROR
_PROGRESS = MessageType.PROGRESS
_ITEM = MessageType.ITEM
_END = MessageType.END


@dataclass(frozen=True)
class BrokerConfig:
    """How a broker runs."""

    binds: Sequence[str]
    max_queue: int = 10_000
    """Requests one service's queue holds before new ones are answered OVERLOADED."""
    max_deliveries: int = 3
    """Workers a request may be handed to (all lost) before it is answered WORKER_LOST."""
    heartbeat_ms: int = 1000
    """Ping interval clients should use; the ZMTP heartbeat of the socket."""
    drain_timeout: float = 10.0
    """Seconds to wait for in-flight replies after SIGTERM."""
    name: str = ""
    limits: Limits = field(default=DEFAULT_LIMITS)
    max_peer_output: int = DEFAULT_PEER_OUTPUT
    """Bytes of answers waiting for one client that does not read; past it the broker
    takes no more requests from that client until it reads."""
    security: Security = field(default_factory=Security)
    """CURVE on the bound endpoints and the allowed keys (clients and workers alike);
    ``insecure`` to bind beyond loopback without it."""
    metrics: str = ""
    """``HOST:PORT`` to serve Prometheus metrics at (``/metrics``; port 0 picks one)."""

    def __post_init__(self) -> None:
        checks = [
            (self.max_peer_output >= 1, "--max-peer-output must be at least 1 byte"),
            (bool(self.binds), "no endpoint to bind: give at least one --bind"),
            (self.max_queue >= 1, "--max-queue must be at least 1"),
            (self.max_deliveries >= 1, "--max-deliveries must be at least 1"),
            (self.heartbeat_ms >= 100, "--heartbeat-ms must be at least 100"),
            (self.drain_timeout >= 0, "--drain-timeout must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise StartupError(message)


class Broker(RouterServer):
    """Dispatches clients' requests to workers by credit, until drained.

    Use `serve` from a running loop or `run` to own one. Not thread-safe apart from
    `request_stop`.
    """

    def __init__(self, config: BrokerConfig, *, clock: Any = time.monotonic) -> None:
        super().__init__(log)
        self.config = config
        self.name = config.name or f"{socket.gethostname()}:{os.getpid()}"
        self.sched = Scheduler(
            max_queue=config.max_queue,
            max_deliveries=config.max_deliveries,
            # Workers (re)connecting to a freshly started broker may take a while to
            # import their service: wait that long before calling a service unknown.
            grace=max(10.0, 3 * config.heartbeat_ms / 1000),
            clock=clock,
        )
        self.protocol_errors = 0
        self.streams_cut = 0
        """Streams ended because their client did not read (`_cut_stream`)."""
        self._clock = clock
        self._started = clock()
        # client -> last heard (those who said HELLO), the least lately heard first: the
        # ticker forgets from the front, whatever the number of clients.
        self._clients: OrderedDict[bytes, float] = OrderedDict()
        self._bundlers: set[bytes] = set()  # clients whose HELLO said they take BUNDLEs
        self._gone: OrderedDict[bytes, None] = OrderedDict()  # clients found gone lately
        self._held: dict[bytes, list[list[Any]]] = {}  # answers to bundle, this pump
        self._draining = False
        # What the last unasked HELLO said (capacity, threads, async slots, services,
        # async handlers): nothing yet.
        self._advertised: tuple[Any, ...] = (0, 0, 0, {}, {})
        self._advertised_gen = 0
        self._announce_at = 0.0
        self._hello_ids = 0

    # --- lifecycle -------------------------------------------------------------------------

    def _bind(self) -> None:
        # ZMTP heartbeats only clear away connections whose peer host vanished; liveness
        # is the application's (3 silent heartbeats expire a worker). A frozen worker's
        # connection outlives its expiry, so its late replies arrive and are dropped here.
        cfg = self.config
        self._bind_router(
            cfg.binds,
            limits=cfg.limits,
            heartbeat_ms=cfg.heartbeat_ms,
            heartbeat_timeout_ms=10 * cfg.heartbeat_ms,
            max_peer_output=cfg.max_peer_output,
            on_gone=self._peer_gone,
            security=cfg.security,
        )

    def _start(self, loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
        if self.config.metrics:
            try:
                serve_metrics(self.config.metrics, self.metrics, log)
            except ValueError as exc:
                raise StartupError(str(exc)) from exc
        log.info(
            "broker %s on %s (pid %d, max queue %d per service, heartbeat %d ms)",
            self.name,
            " ".join(self.endpoints),
            os.getpid(),
            self.config.max_queue,
            self.config.heartbeat_ms,
        )
        return [loop.create_task(self._ticker(), name="the broker's ticker")]

    # --- the socket loop --------------------------------------------------------------------

    def pump(self) -> None:
        """Drain the socket in a batch, then carry out what the scheduler decided."""
        self._pump_scheduled = False
        sock = self._sock
        assert sock is not None
        if receive_batch(sock, self._on_message, _BATCH) == _BATCH:
            self._schedule_pump()  # more may wait: let timers and signals run first
        # Workers first: the requests their answers made room for go out before those
        # answers are forwarded, so a worker is idle for less of each turn (brokered,
        # prefetch 32: +15% calls/s). A client's forwarded answers still precede the
        # broker's own answer to it (`_run_outbox`). Forwarding may find a client gone,
        # whose requests are then cancelled: the outbox runs again for those.
        self._run_outbox()
        if self._held:
            self._send_held()
            if self.sched.outbox:
                self._run_outbox()
        self._maybe_announce()
        if self._draining and not self.sched.in_flight:
            self._wake()  # the drain is done (the ticker wakes it too, unless it failed)
        self._look_for_input()  # sending may have consumed the FD's edge

    def _on_message(self, frames: list[zmq.Frame]) -> None:
        if len(frames) < 2:
            self._bad(frames[0].bytes, ProtocolError("a message needs a header and a body"), None)
            return
        peer = frames[0].bytes
        first = frames[1]
        if not len(first):
            self._on_control(peer, frames[2:])
        elif peer in self.sched.workers:
            self._on_worker_answer(peer, first.bytes, frames[2:])
        else:
            self._on_client(peer, frames)

    # --- clients ------------------------------------------------------------------------------

    def _on_client(self, peer: bytes, frames: list[Any], auth: zmq.Frame | None = None) -> None:
        """``[peer, header, body, *oob]`` from a client. ``auth``: the frame whose ZAP
        User-Id speaks for it (a bundled message's own frames are bytes: its BUNDLE's
        frame does)."""
        limits = self.config.limits
        clients = self._clients
        if peer in clients:
            clients[peer] = self._clock()
            clients.move_to_end(peer)
        try:
            header = protocol.decode_header(frames[1], limits)
        except ProtocolError as exc:
            if self._late_from_unknown_worker(peer, frames):
                return
            self._bad(peer, exc, frames[1])
            return
        kind = header.type
        if kind is _REQUEST:
            if self._outbox.not_reading(peer):
                return
            if len(frames) - 1 > limits.max_frames:
                too_many = ProtocolError(
                    f"message of {len(frames) - 1} frames exceeds limit {limits.max_frames}",
                    ErrorCode.LIMIT_EXCEEDED,
                )
                too_many.request_id, too_many.codec = header.id, header.codec
                self._bad(peer, too_many, frames[1])
                return
            if self._gatekeeper is not None:
                why = self._forbidden(frames[1] if auth is None else auth, header.target)
                if why is not None:
                    refused = Error(header.id, ErrorCode.FORBIDDEN, why, codec=header.codec)
                    self._send([peer, *protocol.encode(refused)])
                    return
            if header.target.startswith(RESERVED_SERVICE + "."):
                self._answer_itself(peer, header)
                return
            self.sched.submit(
                peer,
                header.id,
                header.target,
                header.ttl_ms,
                frames[1:],
                header.codec,
                bool(header.flags & FLAG_STREAM),
            )
            return
        if kind is MessageType.CREDIT:
            # To the worker holding the stream, as received (SPEC 12.8); dropped if none.
            wid = self.sched.holder(peer, header.id)
            if wid is not None:
                self._send([wid, peer, *frames[1:]])
        elif kind is MessageType.PING:
            self._send([peer, *protocol.encode(Pong(header.id, header.codec))])
        elif kind is MessageType.HELLO:
            self._clients[peer] = self._clock()
            self._note_bundles(peer, frames)
            self._send([peer, *protocol.encode(self._hello(header.id, header.codec))])
        elif kind is MessageType.BUNDLE:
            self._unbundle(peer, frames, auth)
        elif kind is MessageType.CANCEL:
            self.sched.cancel(peer, header.id)
        elif kind is MessageType.DISCONNECT:
            self._forget_client(peer)
            self.sched.forget_client(peer)
        else:
            # Never answer an answer (ERROR, REPLY, PONG...): two peers doing that would
            # bounce errors forever. Count it and move on.
            self._count_bad(peer, f"a client sent a {kind.name}, which a broker does not take")

    def _note_bundles(self, peer: bytes, frames: list[Any]) -> None:
        """A client's HELLO: remember whether it takes BUNDLEs (SPEC 7.10)."""
        try:
            hello = protocol.decode(frames[1:], self.config.limits)
        except ProtocolError:
            hello = None
        if type(hello) is Hello and hello.bundle:
            self._bundlers.add(peer)
        else:
            self._bundlers.discard(peer)

    def _unbundle(self, peer: bytes, frames: list[Any], auth: zmq.Frame | None) -> None:
        """A client's BUNDLE: each message in it as if it had come alone (SPEC 7.10)."""
        try:
            msg = protocol.decode(frames[1:], self.config.limits)
            assert type(msg) is Bundle
            protocol.check_route(msg, link=False)
        except ProtocolError as exc:
            self._bad(peer, exc, frames[1])  # (never answered: it may have held answers)
            return
        auth = frames[1] if auth is None else auth
        for header, body in msg.messages:
            self._on_client(peer, [frames[0], header, body], auth)

    def _to_client(self, client: bytes, frames: list[Any]) -> None:
        """A worker's answer for ``client``: now, or with the others for it this pump
        if it takes BUNDLEs (sent by `_send_held`)."""
        if client in self._bundlers:
            held = self._held.get(client)
            if held is None:
                self._held[client] = [frames]
            else:
                held.append(frames)
        else:
            self._send([client, *frames])

    def _send_held(self) -> None:
        """The answers held this pump, small ones bundled per client (SPEC 7.10)."""
        held, self._held = self._held, {}
        for client, answers in held.items():
            self._send_answers(client, answers)

    def _end_request(self, client: bytes, msg: Error) -> None:
        """The broker's own answer to ``client`` ends a request (a stream's LIMIT_EXCEEDED,
        a WORKER_LOST...): the workers' answers held for that client this pump go
        first, so a stream's last items are not left behind its end."""
        held = self._held.pop(client, None)
        if held:
            self._send_answers(client, held)
        self._send([client, *protocol.encode(msg)])

    def _send_answers(self, client: bytes, answers: list[list[Any]]) -> None:
        for frames, _ in protocol.coalesce(answers):
            self._send([client, *frames])

    def _forget_client(self, peer: bytes) -> None:
        self._clients.pop(peer, None)
        self._bundlers.discard(peer)

    def _late_from_unknown_worker(self, peer: bytes, frames: list[zmq.Frame]) -> bool:
        """``[peer, client, header…]`` from a worker we do not know (it was expired, or
        reconnected): drop its answer and ask it to say HELLO again."""
        if len(frames) < 3 or len(frames[1]) > 255:
            return False
        try:
            protocol.decode_header(frames[2], self.config.limits)
        except ProtocolError:
            return False
        self.sched.counters["late_replies"] += 1
        self._send_control(peer, protocol.encode(self._hello(0, Codec.MSGPACK)))
        return True

    def _answer_itself(self, peer: bytes, header: protocol.Header) -> None:
        """``_broker.status``: the broker's own view, answered without a worker."""
        if header.target != RESERVED_SERVICE + ".status":
            msg = Error(
                header.id,
                ErrorCode.UNKNOWN_HANDLER,
                f"the broker answers {RESERVED_SERVICE}.status only, not {header.target!r}",
                "UnknownHandler",
                codec=header.codec,
            )
            self._send([peer, *protocol.encode(msg)])
            return
        self._send([peer, *protocol.encode(Reply(header.id, self.status(), header.codec))])

    def metrics(self) -> list[Any]:
        """The broker's Prometheus metric families, built from the scheduler's plain
        counters when scraped (``--metrics``; any thread)."""
        sched = self.sched
        workers = list(sched.workers.values())
        states = {"ready": 0, "busy": 0, "draining": 0}
        for w in workers:
            states["draining" if w.draining else "ready" if w.credit > 0 else "busy"] += 1
        by_service = sorted(sched.by_service.items())
        families = [
            labelled(
                "counter",
                "zeromesh_broker_requests",
                "Client requests by service and event: accepted (queued), dispatched (sent "
                "to a worker), requeued (its worker was lost), expired_in_queue, overloaded",
                ["service", "event"],
                (([s, e], n) for s, counts in by_service for e, n in counts.items()),
            ),
            labelled(
                "gauge",
                "zeromesh_broker_queue_depth",
                "Requests waiting, by service",
                ["service"],
                _by_label(sched.queue_depths(), sched.service_label, sum),
            ),
            labelled(
                "gauge",
                "zeromesh_broker_queue_oldest_seconds",
                "How long the oldest waiting request of each service has waited",
                ["service"],
                _by_label(sched.oldest_waiting(), sched.service_label, max),
            ),
            labelled(
                "gauge",
                "zeromesh_broker_workers",
                "Registered workers: ready (credit left), busy (none left), draining",
                ["state"],
                (([state], n) for state, n in states.items()),
            ),
        ]
        families += [
            counter(f"zeromesh_broker_{n}", text, sched.counters[n]) for n, text in _TOTALS
        ]
        credit = sum(w.credit for w in workers)
        families += [
            gauge("zeromesh_broker_credit", "Credit the workers granted, not used yet", credit),
            gauge("zeromesh_broker_in_flight", "Requests at workers now", sched.in_flight),
            gauge("zeromesh_broker_clients", "Clients heard from lately", len(self._clients)),
            counter("zeromesh_broker_protocol_errors", "Malformed messages", self.protocol_errors),
            counter("zeromesh_broker_forbidden", "Refused by a key's services", self.forbidden),
            counter(
                "zeromesh_broker_streams_cut",
                "Streams ended because their items waited unread past --max-peer-output",
                self.streams_cut,
            ),
        ]
        who = {"name": self.name, "version": protocol.__version__}
        families.append(gauge("zeromesh_broker_info", "1; the labels say who it is", 1, who))
        return families

    def status(self) -> dict[str, Any]:
        """The scheduler's status plus who this broker is (the ``_broker.status`` reply)."""
        out = self.sched.status()
        out["broker"] = {
            "name": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": protocol.__version__,
            "endpoints": list(self.endpoints),
            "uptime": round(self._clock() - self._started, 3),
            "state": "draining" if self._draining else "ready",
            "max_queue": self.config.max_queue,
            "clients": len(self._clients),
            "protocol_errors": self.protocol_errors,
            "dropped": self._outbox.undeliverable,
            "refused_unread": self._outbox.refused_unread,
            "streams_cut": self.streams_cut,
            **process_usage(),
        }
        return out

    def _hello(self, rid: int, codec: Codec) -> Hello:
        """The broker's HELLO: to a client it looks like one worker as large as all of
        its registered, non-draining workers together (0 of everything while draining)."""
        sched = self.sched
        draining = self._draining
        return Hello(
            rid,
            role="broker",
            name=self.name,
            version=protocol.__version__,
            host=socket.gethostname(),
            pid=os.getpid(),
            services=sched.services(),
            capacity=0 if draining else sched.capacity,
            in_flight=sched.in_flight,
            uptime=round(self._clock() - self._started, 3),
            heartbeat_ms=self.config.heartbeat_ms,
            codec=codec,
            threads=0 if draining else sched.threads,
            async_slots=0 if draining else sched.async_slots,
            async_handlers=sched.async_handlers(),
            bundle=True,  # a client may bundle; over a worker's link: routed BUNDLEs
            streams=True,  # it routes streams to the workers that stream (SPEC 12.8)
        )

    def _maybe_announce(self) -> None:
        """Tell clients (unasked HELLO, id 0) when the capacity or services behind this
        broker change: a client sends nothing to a broker that reports capacity 0."""
        if self._draining or self.sched.generation == self._advertised_gen or not self._clients:
            return
        now = self._clock()
        if now < self._announce_at:
            return  # at most one announcement per 50 ms; the ticker comes back
        self._advertised_gen = self.sched.generation
        sched = self.sched
        current = (
            sched.capacity,
            sched.threads,
            sched.async_slots,
            sched.services(),
            sched.async_handlers(),
        )
        if current == self._advertised:
            return
        self._advertised = current
        self._announce_at = now + 0.05
        frames = protocol.encode(self._hello(0, Codec.MSGPACK))
        for client in list(self._clients):
            self._send([client, *frames])

    # --- workers ------------------------------------------------------------------------------

    def _on_control(self, peer: bytes, frames: list[zmq.Frame]) -> None:
        """``[peer, "", header, body]``: a worker speaking to the broker itself."""
        sched = self.sched
        try:
            msg = protocol.decode(frames, self.config.limits)
        except ProtocolError as exc:
            self._count_bad(peer, f"bad message from a worker: {exc}")
            answer = protocol.refusal(exc, frames[0] if frames else None)
            if answer is not None:
                self._send_control(peer, protocol.encode(answer))
            return
        if type(msg) is Ping:
            self._send_control(peer, protocol.encode(Pong(msg.id, msg.codec)))
            if not sched.heard(peer):
                self._send_control(peer, protocol.encode(self._hello(0, msg.codec)))
        elif type(msg) is Ready:
            if not self._may_serve(peer, frames[0], msg):
                return
            if not sched.ready(peer, msg.credit):
                self._send_control(peer, protocol.encode(self._hello(0, msg.codec)))
        elif type(msg) is Hello:
            if not self._may_serve(peer, frames[0], msg):
                return
            if msg.role != "worker":
                self._count_bad(peer, f"HELLO with role {msg.role!r} in a worker's envelope")
                self._send_control(
                    peer,
                    protocol.encode(
                        Error(msg.id, ErrorCode.PROTOCOL, "only workers use the empty envelope")
                    ),
                )
                return
            known = peer in sched.workers
            sched.register(
                peer,
                services=msg.services,
                capacity=msg.capacity,
                heartbeat=(msg.heartbeat_ms or self.config.heartbeat_ms) / 1000,
                name=msg.name,
                host=msg.host,
                pid=msg.pid,
                threads=msg.threads,
                async_slots=msg.async_slots,
                async_handlers=msg.async_handlers,
                protocol=msg.protocol,
                streams=msg.streams,
                bundle=msg.bundle,
            )
            log.info(
                "worker %s %s: %s (host %s, pid %d, capacity %d: %d thread(s), %d async)",
                msg.name or peer.hex(),
                "re-registered" if known else "registered",
                ", ".join(f"{s}.{{{','.join(h)}}}" for s, h in msg.services.items()),
                msg.host,
                msg.pid,
                msg.capacity,
                msg.threads,
                msg.async_slots,
            )
            self._send_control(peer, protocol.encode(self._hello(msg.id, msg.codec)))
        elif type(msg) is Disconnect:
            w = sched.workers.get(peer)
            if w is None:
                return
            if w.draining:  # the second one: it is gone
                log.info("worker %s left (%s)", w.name or peer.hex(), msg.reason)
                sched.remove(peer, f"left: {msg.reason}")
                return
            log.info(
                "worker %s draining (%s): no new work; %d in flight still answered",
                w.name or peer.hex(),
                msg.reason,
                len(w.in_flight),
            )
            sched.disconnect(peer)
        elif type(msg) is Bundle:
            self._unbundle_answers(peer, msg)
        elif type(msg) is Pong:
            sched.heard(peer)
        elif type(msg) is Error:
            log.warning("worker %s reported an error: %s", peer.hex(), msg.message)
        else:
            self._count_bad(peer, f"a worker sent a {type(msg).__name__} in the broker envelope")

    def _unbundle_answers(self, wid: bytes, msg: Bundle) -> None:
        """A worker's routed BUNDLE: each answer in it as if it had come alone, as
        ``[wid, client, header, body]`` (SPEC 7.10, 12.2)."""
        try:
            protocol.check_route(msg, link=True)
        except ProtocolError as exc:
            self._count_bad(wid, f"bad message from a worker: {exc}")
            return
        if wid not in self.sched.workers:
            # From a worker we do not know (expired, or we restarted): like a lone answer.
            self.sched.counters["late_replies"] += len(msg.messages)
            self._send_control(wid, protocol.encode(self._hello(0, Codec.MSGPACK)))
            return
        answer = self._on_worker_answer
        for client, frames in zip(msg.clients, msg.messages, strict=True):
            answer(wid, client, list(frames))

    def _may_serve(self, peer: bytes, frame: zmq.Frame, msg: Hello | Ready) -> bool:
        """May the key ``peer`` connected with join as a worker (`Gatekeeper.may_serve`)?
        If not, answer FORBIDDEN, and drop it if it had joined (its key was narrowed or
        removed since): a worker reads every client's arguments."""
        gate = self._gatekeeper
        if gate is None or gate.may_serve(frame):
            return True
        why = (
            "this key may not serve as a worker here: the broker's --curve-allow "
            f"{gate.security.allow} does not hold it, or limits it to some services (a "
            "worker's key must be allowed everything)"
        )
        if self.sched.workers.get(peer) is not None:
            log.warning("worker %s dropped: %s", peer.hex(), why)
            self.sched.remove(peer, "its key is no longer allowed")
        self._count_bad(peer, why)
        self._send_control(peer, protocol.encode(Error(msg.id, ErrorCode.FORBIDDEN, why)))
        return False

    def _on_worker_answer(self, wid: bytes, client: bytes, frames: list[Any]) -> None:
        """``[wid, client, header, body…]``: a worker's answer to a client's request
        (``zmq.Frame``s, or ``bytes`` from a routed BUNDLE)."""
        sched = self.sched
        try:
            header = protocol.decode_header(frames[0], self.config.limits)
        except ProtocolError as exc:
            self._count_bad(wid, f"bad answer from a worker: {exc}")
            return
        kind = header.type
        if kind is _REPLY:
            if sched.finish(wid, client, header.id):
                self._to_client(client, frames)
        elif kind is _ERROR:
            code = protocol.answer_code(frames, self.config.limits)
            if code == ErrorCode.DRAINING:
                sched.refused(wid, client, header.id)
            elif sched.finish(wid, client, header.id):
                self._to_client(client, frames)
        elif kind is _ITEM:
            if sched.item(wid, client, header.id):
                if self._outbox.full(client):
                    self._cut_stream(wid, client, header)
                else:
                    self._to_client(client, frames)
        elif kind is _END:
            if sched.finish(wid, client, header.id):
                self._to_client(client, frames)
        elif kind is _PROGRESS:
            if sched.holds(wid, client, header.id):
                sched.heard(wid)
                self._to_client(client, frames)
        else:
            self._count_bad(wid, f"a worker sent a {kind.name} about a request")

    def _cut_stream(self, wid: bytes, client: bytes, header: protocol.Header) -> None:
        """A stream's items pile up unread for ``client`` (its output is over
        ``max_peer_output``): end it here with LIMIT_EXCEEDED and cancel it at its
        worker. Credit bounds what a client that reads slowly costs; this bounds what a
        client costs that asked for a huge window and does not read (SPEC 12.8)."""
        rid = header.id
        self.sched.finish(wid, client, rid)  # (the worker's CANCELLED comes late: dropped)
        self._send([wid, client, *protocol.encode(Cancel(rid))])
        count, size = self._outbox.waiting(client)
        why = (
            f"stream {rid} cut by the broker: {size} bytes of answers wait unread for this "
            f"client (over --max-peer-output {self.config.max_peer_output}); read the "
            "stream as it comes, or ask for a smaller window"
        )
        self._end_request(client, Error(rid, ErrorCode.LIMIT_EXCEEDED, why, codec=header.codec))
        self.streams_cut += 1
        n = self.streams_cut
        if n <= 10 or n % 1000 == 0:
            log.warning(
                "client %s: %s (%d message(s) waiting) [%d cut so far]", client.hex(), why, count, n
            )

    def _send_control(self, wid: bytes, frames: list[Any]) -> None:
        self._send([wid, _EMPTY, *frames])

    # --- carrying out the scheduler's decisions ----------------------------------------------

    def _run_outbox(self) -> None:
        """Carry out the scheduler's commands. Requests for one worker are held until
        the end and sent together: in routed BUNDLEs to a worker that takes them
        (SPEC 7.10), one by one to any other. Sending may add commands (a worker found
        gone has its requests queued again): they run in the same call."""
        out = self.sched.outbox
        while out:
            held: dict[bytes, list[tuple[Job, list[Any]]]] = {}
            i = 0
            try:
                while i < len(out):
                    cmd = out[i]
                    i += 1
                    if type(cmd) is Dispatch:
                        self._dispatch(cmd, held)
                    elif type(cmd) is Answer:
                        job = cmd.job
                        msg = Error(
                            job.id,
                            cmd.code,
                            cmd.message,
                            protocol.error_name(cmd.code),
                            codec=Codec(job.codec),
                        )
                        self._end_request(job.client, msg)
                    elif type(cmd) is CancelAt:
                        job = cmd.job
                        wid = cmd.worker
                        if job.state is IN_FLIGHT and job.worker == wid:
                            if wid in held:  # the request goes before its CANCEL
                                self._send_requests(wid, held.pop(wid))
                            self._send([wid, job.client, *protocol.encode(Cancel(job.id))])
            finally:
                # Whatever happens to one command, none is carried out twice: a command
                # left in the outbox would be sent again on every pump.
                del out[:i]
            for wid, requests in held.items():
                self._send_requests(wid, requests)

    def _dispatch(self, cmd: Dispatch, held: dict[bytes, list[tuple[Job, list[Any]]]]) -> None:
        """Hold ``cmd``'s request, ready to go, with the others for its worker."""
        job = cmd.job
        wid = cmd.worker
        if job.state is not IN_FLIGHT or job.worker != wid:
            return  # superseded: the worker was removed later in the same batch
        frames = job.payload
        header = frames[0]
        if memoryview(header)[5] & protocol.FLAG_META:  # a zmq.Frame: through a view
            w = self.sched.workers.get(wid)
            if w is not None and not protocol.takes_meta(w.protocol):
                # A 1.0 worker refuses the meta flag (SPEC 2): send it the request
                # without the trace. Rare (a mesh mid-upgrade), so decoding is fine here.
                try:
                    frames = protocol.without_meta(frames, self.config.limits)
                except ProtocolError as exc:  # only the header was checked on arrival
                    self._count_bad(job.client, f"bad request for a 1.0 worker: {exc}")
                    answer = protocol.refusal(exc, header)
                    if self.sched.finish(wid, job.client, job.id) and answer is not None:
                        self._send([job.client, *protocol.encode(answer)])
                    return
                header = frames[0]
        if job.deadline:
            # The worker computes its deadline from ttl_ms on arrival: give it what is
            # left, not what the client first said (the request waited here).
            header = protocol.with_ttl(header, int((job.deadline - self._clock()) * 1000))
        requests = held.get(wid)
        if requests is None:
            requests = held[wid] = []
        requests.append((job, [header, *frames[1:]]))

    def _send_requests(self, wid: bytes, requests: list[tuple[Job, list[Any]]]) -> None:
        """Send ``wid`` the requests `_dispatch` held for it that are still its own."""
        mine = [
            (job.client, frames)
            for job, frames in requests
            if job.state is IN_FLIGHT and job.worker == wid
        ]
        w = self.sched.workers.get(wid)
        if not mine or w is None:
            return
        if w.bundle and len(mine) > 1:
            mine = protocol.coalesce_routed(mine)
        sock = self._sock
        assert sock is not None
        try:
            for envelope, frames in mine:
                send_message(sock, [wid, envelope, *frames])
        except zmq.Again:
            # Credit bounds what a worker's pipe holds, so a full one means the worker is
            # not reading: drop it (its requests go elsewhere); if it lives, it is told
            # to say HELLO again, which restarts its credit on both sides.
            log.warning("worker %s is not reading (its pipe is full): removing it", wid.hex())
            self.sched.remove(wid, "its pipe is full")
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            log.warning("worker %s unreachable: removing it", wid.hex())
            self.sched.remove(wid, "unreachable")

    def _send(self, frames: list[Any]) -> None:
        """Send to a client (or a worker's control envelope); never blocks, never drops
        an answer silently (see `zmqio.Outbox`)."""
        self._outbox.send(frames)

    def _peer_gone(self, peer: bytes) -> None:
        """A send found ``peer`` gone (EHOSTUNREACH): forget it. A client's requests are
        dropped or cancelled at their workers (its streams would otherwise hold their
        slots, paused for want of its credit, SPEC 12.8); a worker's are re-queued.
        The commands run with the next outbox. Each answer that still comes for a
        gone client fails the same way: only the first looks at its requests (a
        routing id is never given to another peer)."""
        self._forget_client(peer)
        if peer in self.sched.workers:
            self.sched.remove(peer, "unreachable")
        elif peer not in self._gone:
            self._gone[peer] = None
            if len(self._gone) > _GONE_REMEMBERED:
                self._gone.popitem(last=False)
            self.sched.forget_client(peer)

    def _probe_streaming_clients(self) -> None:
        """A paused stream sends its client nothing, so nothing would show that the
        client left: a PING to each client holding a stream does (a send to a client
        that is gone fails, `_peer_gone`). A client ignores it."""
        clients = {client for client, _ in self.sched.open_streams()}
        if clients:
            ping = protocol.encode(Ping(0))
            for client in clients:
                self._send([client, *ping])

    # --- errors ----------------------------------------------------------------------------------

    def _bad(self, peer: bytes, exc: ProtocolError, header: zmq.Frame | None) -> None:
        """A malformed message from ``peer``: count it, log it, and answer a typed ERROR
        (in the offending message's codec, when its header said) unless the message
        says it is itself an answer (SPEC section 6: never answer an ERROR)."""
        self._count_bad(peer, str(exc))
        answer = protocol.refusal(exc, header)
        if answer is not None:
            self._send([peer, *protocol.encode(answer)])

    def _count_bad(self, peer: bytes, what: str) -> None:
        self.protocol_errors += 1
        n = self.protocol_errors
        if n <= 10 or n % 1000 == 0:  # a flood of garbage must not flood the log too
            log.warning("peer %s: %s [%d bad message(s) so far]", peer.hex(), what, n)

    # --- time, drain ------------------------------------------------------------------------------

    async def _ticker(self) -> None:
        interval = min(0.05, self.config.heartbeat_ms / 4000)
        heartbeat = self.config.heartbeat_ms / 1000
        probe_at = self._clock() + heartbeat
        while True:
            await asyncio.sleep(interval)
            now = self._clock()
            if now >= probe_at:
                probe_at = now + heartbeat
                self._probe_streaming_clients()
            before = len(self.sched.workers)
            self.sched.tick()
            if len(self.sched.workers) < before:
                log.warning(
                    "%d worker(s) expired (silent for %d heartbeats); their requests re-queued",
                    before - len(self.sched.workers),
                    self.sched.liveness,
                )
            self._run_outbox()
            self._maybe_announce()
            clients = self._clients
            while clients and now - next(iter(clients.values())) > _CLIENT_FORGET_S:
                self._bundlers.discard(clients.popitem(last=False)[0])
            if self._draining and not self.sched.in_flight:
                self._wake()
            self._look_for_input()  # (after its PINGs, answers and HELLOs)

    def _begin_drain(self, reason: str) -> None:
        if self._draining:
            return
        self._draining = True
        queued = sum(self.sched.queue_depths().values())
        log.info(
            "draining (%s): %d queued request(s) handed back, %d in flight awaited, "
            "%d client(s) and %d worker(s) told",
            reason,
            queued,
            self.sched.in_flight,
            len(self._clients),
            len(self.sched.workers),
        )
        self.sched.drain()
        goodbye = protocol.encode(Disconnect(0, f"broker {self.name} draining: {reason}"))
        for client in list(self._clients):
            self._send([client, *goodbye])
        for wid in list(self.sched.workers):
            self._send_control(wid, list(goodbye))
        self._run_outbox()
        self._wake()

    async def _drain(self) -> None:
        started = self._clock()
        if await self._wait_while(lambda: bool(self.sched.in_flight), self.config.drain_timeout):
            n = self.sched.in_flight
            self.sched.abandon(
                f"the broker stopped (drain timeout {self.config.drain_timeout:g} s) before "
                "the worker replied"
            )
            self._run_outbox()
            if not self.exit_code:  # (an internal error's status stands)
                self.exit_code = EXIT_DRAIN_TIMEOUT
            log.error("drain timeout: %d request(s) still in flight answered WORKER_LOST", n)
        if self._clients:
            await self._hang_up_grace()  # for the DRAINING answers and the DISCONNECT
        log.info(
            "drained in %.2f s: %d request(s) answered in total; exiting %d",
            self._clock() - started,
            self.sched.counters["answered"],
            self.exit_code,
        )


def _by_label(
    values: Mapping[str, float],
    label: Callable[[str], str],
    combine: Callable[[list[float]], float],
) -> list[tuple[list[str], float]]:
    """``values`` by service, as samples of bounded labels: services folded into one
    label (``_other``) are combined (summed, or the largest)."""
    grouped: dict[str, list[float]] = {}
    for service, value in values.items():
        grouped.setdefault(label(service), []).append(value)
    return [([name], combine(vs)) for name, vs in sorted(grouped.items())]
