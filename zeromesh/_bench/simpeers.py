"""Simulated peers for ``zeromesh bench --scale``: thousands of workers, worker
endpoints or clients in one process, speaking protocol/SPEC.md through `protocol`.

Run as ``python -m zeromesh._bench.simpeers ROLE [options]``; the scale bench starts a
few of these, so that 1,000-5,000 peers fit on a 2-core machine. Roles:

* ``workers``: N DEALERs connected to one broker, each a worker of its own (SPEC
  12.3), greeting as the real worker's broker link does: HELLO (role worker, service
  ``bench.echo``), again after 5 ms, 10, 20 ... and every heartbeat until answered;
  then READY with ``--credit``, PING every ``--heartbeat-ms``, every REQUEST echoed
  with a REPLY and its credit given back with READY. A broker HELLO with id 0 ("I do
  not know you") is counted as an expiry the worker noticed, and answered by
  registering again; a broker silent for 3 heartbeats is greeted again.
* ``endpoints``: N ROUTERs bound on free loopback ports, each a worker endpoint a
  client connects to (SPEC 7): HELLO, PING and REQUEST answered as a worker with
  ``--threads`` slots whose handler returns at once would.
* ``clients``: N DEALERs connected to one worker, each a client session (SPEC 7.7),
  as the real client greets and pings: HELLO (again after 5 ms, 10, 20 ..., then once
  a heartbeat until answered), then PING whenever the worker has been quiet for most
  of the heartbeat it asked for. ``--busy B`` of them also pipeline ``bench.echo``
  requests, ``--window`` each, when told to.

Every message a simulated peer receives is decoded with `protocol.decode` (the real
decoder, default limits) and checked against the session rules of its role. A frame
that does not decode, a message the role never takes, an answer to nothing it asked
(a PONG or HELLO id it did not send, a REPLY for no outstanding request or with the
wrong value), a REQUEST beyond the credit it granted, or an ERROR refusing one of its
own messages is a *protocol mistake*: counted, the first few kept as text, reported
in ``stats``. The bench fails the run when any peer saw one.

Control: the process reads commands on stdin, one a line, and answers each with one
JSON line on stdout: ``stats`` (the counters), ``busy SECONDS`` (clients: run the busy
ones that long, then report their calls), ``quit``. End of input (the bench is gone)
ends the process too. ``endpoints`` first prints the endpoints it bound.

One epoll over the sockets' ZeroMQ descriptors (edge-triggered: every socket is
drained until ``zmq.Again`` and looked at again after each send), and one queue of
heartbeats in due order: an idle peer costs one PING and one PONG per interval and
nothing in between.

What they leave out, compared with the real worker and client:

- no handler, threads, job table or fair queue: a request is answered at once, in the
  socket loop, whatever its target (with ``bench.echo``'s echo); no deadlines
  (``ttl_ms`` is read, never enforced), no ``max_pending``, no OVERLOADED;
- no CURVE, metrics, drain on SIGTERM, DISCONNECT when closing, PROGRESS, batches
  sent by clients, JSON (everything they send is MessagePack; they answer in the
  codec they were asked in);
- no socket monitor, no fresh socket after a disconnect, no ZMTP heartbeats, no
  ``ZMQ_MAXMSGSIZE``, no outbox: libzmq's own reconnect only, and a send that would
  block is dropped and counted (``dropped``); the first greeting starts when the
  socket is made, not at the handshake (its HELLOs before the connection are dropped,
  IMMEDIATE, and the chain goes on); each chain of HELLOs repeats one id, where the
  real peers take a new one each time;
- a simulated worker joins one broker, with fixed credit (no prefetch, no
  several-broker accounting); it ignores CANCEL (its requests are answered before
  one could arrive);
- a simulated client talks to one worker, never retries or times out a request,
  and sends no CANCEL.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import select
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

import protocol
from protocol import (
    LIVENESS,
    Codec,
    Disconnect,
    Error,
    ErrorCode,
    Hello,
    Ping,
    Pong,
    ProtocolError,
    Ready,
    Reply,
    Request,
)
from zmqio import has_input, receive_batch, send_message

__all__ = ["SimClients", "SimEndpoints", "SimPeers", "SimWorkers", "main"]

SERVICES = {"bench": ["echo"]}
TARGET = "bench.echo"
_BATCH = 256  # messages read from one socket before the others get a turn
_TICK = 0.002  # seconds: heartbeats and timers this close together run in one turn
_EXAMPLES = 5  # mistakes kept as text
_REFUSALS = (ErrorCode.PROTOCOL, ErrorCode.UNSUPPORTED_VERSION, ErrorCode.LIMIT_EXCEEDED)
_EMPTY = b""

# Session states (a simulated peer's view of its one connection).
GREETING = "greeting"  # HELLO sent, no answer yet
READY = "ready"  # answered: requests and heartbeats flow
LEAVING = "leaving"  # the other side said DISCONNECT


_SESSION_BITS = 20  # HELLO ids: the sequence above, the session's index + 1 below


def hello_id(index: int, seq: int) -> int:
    """The id of session ``index``'s HELLO number ``seq``: an answer names its session
    exactly, however late it comes (an overloaded broker answers minutes late), with
    nothing kept per HELLO. PING and request ids come from a counter instead; each
    answer is checked against the ids of its own kind."""
    return (seq << _SESSION_BITS) | (index + 1)


def answers_hello(session: Session, rid: int) -> bool:
    """Is ``rid`` the id of a HELLO ``session`` sent?"""
    seq = rid >> _SESSION_BITS
    return rid & ((1 << _SESSION_BITS) - 1) == session.index + 1 and 0 < seq <= session.hellos


class Session:
    """One simulated peer: its socket and the state of its session."""

    __slots__ = (
        "credit",
        "due",
        "greeting_since",
        "heard",
        "hellos",
        "index",
        "interval",
        "outstanding",
        "owed",
        "ping_id",
        "pong_id",
        "sock",
        "state",
    )

    def __init__(self, index: int, sock: zmq.Socket[bytes], interval: float) -> None:
        self.index = index
        self.sock = sock
        self.state = GREETING
        self.greeting_since = time.monotonic()
        self.interval = interval
        self.due = 0.0  # when the next PING is due
        self.heard = time.monotonic()  # last message from the other side
        self.hellos = 0  # HELLOs sent (their ids say which: `hello_id`)
        self.ping_id = 0  # the last PING sent
        self.pong_id = 0  # the last PONG received
        self.credit = 0  # workers: requests the broker may still send
        self.owed = 0  # workers: credit to give back after this batch
        self.outstanding: dict[int, int] = {}  # clients: request id -> value sent


class SimPeers:
    """Many simulated peers of one role in one process, on one epoll loop.

    Not thread-safe. `step` runs one turn of the loop; `stats` reads the counters.
    """

    role = ""

    def __init__(self, count: int, heartbeat_ms: int = 1000) -> None:
        if not 0 < count < 1 << _SESSION_BITS:
            raise ValueError(f"from 1 to {(1 << _SESSION_BITS) - 1} peers in one process")
        self.count = count
        self.interval = heartbeat_ms / 1000
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        # libzmq refuses the 1,024th socket of a context unless told otherwise.
        self.ctx.set(zmq.MAX_SOCKETS, count + 64)
        self.epoll = select.epoll()
        self.readers: dict[int, Callable[[], None]] = {}
        self.sessions: list[Session] = []
        self.beats: deque[Session] = deque()  # in due order: all share one interval
        self.timers: list[tuple[float, int, Callable[[], None]]] = []  # a heap
        self._timer_seq = itertools.count()
        self.ids = itertools.count(1)  # PING and request ids, never 0
        self.host = socket.gethostname()
        self.counts: dict[str, int] = {
            "received": 0,
            "sent": 0,
            "dropped": 0,
            "pings": 0,
            "pongs": 0,
            "hb_late": 0,
            "silent": 0,
        }
        self.max_lag = 0.0
        self.mistakes: dict[str, int] = {
            "undecodable": 0,
            "unexpected": 0,
            "unasked": 0,
            "refused": 0,
        }
        self.examples: list[str] = []
        self.started = time.monotonic()

    # --- sockets ------------------------------------------------------------------------

    def _socket(self, kind: int) -> zmq.Socket[bytes]:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)  # a dead peer must not hang exit
        if kind == zmq.DEALER:
            # As the real peers' `zmqio.Dialer` sets them: nothing is queued for a
            # peer not connected, and up to 100,000 messages are for one that is.
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.setsockopt(zmq.RCVHWM, 100_000)
        return sock

    def _watch(self, session: Session) -> None:
        fd = int(session.sock.getsockopt(zmq.FD))
        self.readers[fd] = lambda: self._pump(session)
        self.epoll.register(fd, select.EPOLLIN)
        self.sessions.append(session)

    def _schedule_beats(self) -> None:
        """Spread the first heartbeats over one interval, not all in the same instant."""
        now = time.monotonic()
        n = max(1, len(self.sessions))
        for i, s in enumerate(self.sessions):
            s.due = now + s.interval * (i + 1) / n
            self.beats.append(s)

    def send(self, session: Session, frames: list[Any]) -> bool:
        """Send without blocking; a full pipe drops the message (counted)."""
        try:
            send_message(session.sock, frames)
        except zmq.Again:
            self.counts["dropped"] += 1
            return False
        self.counts["sent"] += 1
        return True

    # --- the loop -------------------------------------------------------------------------

    def add_reader(self, fd: int, fn: Callable[[], None]) -> None:
        """Call ``fn()`` when ``fd`` is readable (stdin, for the control commands)."""
        self.readers[fd] = fn
        self.epoll.register(fd, select.EPOLLIN)

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        """Call ``fn()`` from the loop in ``delay`` seconds."""
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self._timer_seq), fn))

    def step(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds (less if a heartbeat or a timer is due),
        handle what arrived, send the heartbeats and run the timers that are due."""
        now = time.monotonic()
        if self.beats:
            timeout = min(timeout, self.beats[0].due - now)
        if self.timers:
            timeout = min(timeout, self.timers[0][0] - now)
        # Thousands of heartbeats and greetings fall due a few µs apart: waking for each
        # would spend this process's CPU in epoll_wait. What falls due within _TICK
        # is done in one turn.
        for fd, _ in self.epoll.poll(max(timeout, _TICK)):
            reader = self.readers.get(fd)
            if reader is not None:
                reader()
        now = time.monotonic()
        self._beat(now)
        while self.timers and self.timers[0][0] <= now + _TICK:
            heapq.heappop(self.timers)[2]()
        self.after_step()

    def after_step(self) -> None:
        """A role's own housekeeping after each turn."""

    def _pump(self, session: Session) -> None:
        sock = session.sock
        handle = self._handler(session)
        while True:
            n = receive_batch(sock, handle, _BATCH)
            if n:
                self.counts["received"] += n
                session.heard = time.monotonic()
                self.flush(session)
            # Sending may have consumed the descriptor's edge of a message that came
            # meanwhile; a full batch means more may wait: look again either way.
            if n < _BATCH and not has_input(sock):
                return

    def _handler(self, session: Session) -> Callable[[list[zmq.Frame]], None]:
        return lambda frames: self.on_frames(session, frames)

    def flush(self, session: Session) -> None:
        """After a batch from ``session``: what a role sends once per batch."""

    def _beat(self, now: float) -> None:
        beats = self.beats
        while beats and beats[0].due <= now + _TICK:
            s = beats.popleft()
            lag = max(0.0, now - s.due)
            self.max_lag = max(self.max_lag, lag)
            if lag > s.interval:  # this process fell behind: say so, start afresh
                self.counts["hb_late"] += 1
                s.due = now + s.interval
            else:
                s.due += s.interval
            beats.append(s)
            self.heartbeat(s, now)
            if has_input(s.sock):
                self._pump(s)

    def heartbeat(self, session: Session, now: float) -> None:
        """A session's heartbeat is due."""

    def greet(self, session: Session, chain: bool = True) -> None:
        """Send HELLO and, with ``chain``, again after 5 ms, 10, 20... up to one
        heartbeat while unanswered: what the real peers' `zmqio.Dialer.greet` does."""
        session.state = GREETING
        self._greet_again(session, 0.005 if chain else session.interval)

    def _greet_again(self, session: Session, delay: float, frames: list[Any] | None = None) -> None:
        if session.state != GREETING:
            return  # answered
        if frames is None:
            # One id (and one encoding) per chain: a peer only echoes a HELLO's id,
            # and encoding thousands of HELLOs a second would take this process's
            # CPU from the broker it shares the machine with.
            session.hellos += 1
            frames = self.hello_frames(session, hello_id(session.index, session.hellos))
        self.send(session, frames)
        if delay < session.interval:
            self.later(delay, lambda: self._greet_again(session, 2 * delay, frames))

    def hello_frames(self, session: Session, rid: int) -> list[Any]:
        """The HELLO this role sends, with its envelope."""
        raise NotImplementedError

    def worker_hello(self, rid: int, name: str, slots: int, codec: Codec) -> Hello:
        """A worker's HELLO: serving ``bench.echo``, ``slots`` plain requests at once."""
        return Hello(
            rid,
            role="worker",
            name=name,
            version=protocol.__version__,
            host=self.host,
            pid=os.getpid(),
            services=SERVICES,
            capacity=slots,
            uptime=round(time.monotonic() - self.started, 3),
            heartbeat_ms=int(self.interval * 1000),
            codec=codec,
            threads=slots,
        )

    def ping(self, session: Session, frames_before: list[Any]) -> None:
        session.ping_id = next(self.ids)
        if self.send(session, [*frames_before, *protocol.encode(Ping(session.ping_id))]):
            self.counts["pings"] += 1

    def pong(self, session: Session, msg: Pong) -> None:
        """Check a PONG answers the latest PINGs, in order."""
        if not session.pong_id < msg.id <= session.ping_id:
            self.mistake(
                "unasked",
                session,
                f"PONG id {msg.id}: the last PING was {session.ping_id}, "
                f"the last PONG {session.pong_id}",
            )
            return
        session.pong_id = msg.id
        self.counts["pongs"] += 1

    # --- checking ---------------------------------------------------------------------------

    def decode(self, session: Session, frames: list[zmq.Frame]) -> protocol.Message | None:
        try:
            return protocol.decode(frames)
        except ProtocolError as exc:
            self.mistake("undecodable", session, f"{exc} (code {int(exc.code)})")
            return None

    def mistake(self, kind: str, session: Session | None, what: str) -> None:
        """A protocol mistake seen by ``session``: count it, keep the first few."""
        self.mistakes[kind] += 1
        if len(self.examples) < _EXAMPLES:
            who = f"{self.role} {session.index}" if session is not None else self.role
            text = f"{who}: {kind}: {what}"
            self.examples.append(text)
            print(f"simpeers[{os.getpid()}] {text}", file=sys.stderr, flush=True)

    def refusal(self, session: Session, msg: Error) -> bool:
        """True (a mistake, counted) if ``msg`` refuses one of our own messages."""
        if msg.code in _REFUSALS:
            self.mistake("refused", session, f"ERROR {int(msg.code)} {msg.message!r}")
            return True
        return False

    def on_frames(self, session: Session, frames: list[zmq.Frame]) -> None:
        raise NotImplementedError

    # --- reporting, closing -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters since start (all totals), for the bench to difference."""
        return {
            "event": "stats",
            "role": self.role,
            "pid": os.getpid(),
            "count": self.count,
            "ready": sum(1 for s in self.sessions if s.state == READY),
            **self.counts,
            "max_lag": round(self.max_lag, 4),
            "mistakes": dict(self.mistakes),
            "examples": list(self.examples),
            "cpu": time.process_time(),
            "uptime": time.monotonic() - self.started,
        }

    def close(self) -> None:
        self.epoll.close()
        for s in self.sessions:
            s.sock.close(linger=0)
        self.ctx.term()


class SimWorkers(SimPeers):
    """``count`` workers, each a DEALER connected to the broker at ``endpoint``."""

    role = "workers"

    def __init__(
        self,
        endpoint: str,
        count: int,
        *,
        credit: int = 1,
        heartbeat_ms: int = 1000,
        name: str = "sim",
    ) -> None:
        super().__init__(count, heartbeat_ms)
        self.credit = credit
        self.name = name
        self.counts.update(requests=0, forgotten=0, registered=0, errors=0)
        self.register_s: list[float] = []  # how long each registration took
        for i in range(count):
            s = Session(i, self._socket(zmq.DEALER), self.interval)
            s.sock.connect(endpoint)
            self._watch(s)
            self.greet(s)  # queued by libzmq until the connection is up
        self._schedule_beats()

    def greet(self, s: Session, chain: bool = True) -> None:
        """HELLO in the empty envelope: register (again) with the broker."""
        if s.state != GREETING:
            s.greeting_since = time.monotonic()
        super().greet(s, chain)

    def hello_frames(self, s: Session, rid: int) -> list[Any]:
        hello = self.worker_hello(rid, f"{self.name}-{s.index}", self.credit, Codec.MSGPACK)
        return [_EMPTY, *protocol.encode(hello)]

    def heartbeat(self, s: Session, now: float) -> None:
        # As the real worker's link does (worker/_broker_link.py, _tick): greet again
        # every heartbeat until answered (each time the Dialer's chain of HELLOs); a
        # broker silent for 3 heartbeats is lost.
        if s.state == GREETING:
            self.greet(s)
        elif now - s.heard > LIVENESS * s.interval:
            self.counts["silent"] += 1
            self.greet(s)
        elif s.state == READY:
            self.ping(s, [_EMPTY])

    def on_frames(self, s: Session, frames: list[zmq.Frame]) -> None:
        if len(frames) < 3:
            self.mistake("undecodable", s, f"a {len(frames)}-frame message from the broker")
            return
        if not len(frames[0]):
            self._control(s, frames[1:])
            return
        msg = self.decode(s, frames[1:])
        if msg is None:
            return
        if type(msg) is Request:
            if s.credit <= 0:
                self.mistake("unasked", s, f"REQUEST {msg.id} with no credit left")
            s.credit -= 1
            s.owed += 1
            self.counts["requests"] += 1
            result = msg.args[0] if msg.args else None
            self.send(s, [frames[0].bytes, *protocol.encode(Reply(msg.id, result, msg.codec))])
        elif type(msg) is protocol.Cancel:
            pass  # already answered: a CANCEL for a request we do not hold is normal
        else:
            self.mistake("unexpected", s, f"the broker forwarded a {type(msg).__name__}")

    def _control(self, s: Session, frames: list[zmq.Frame]) -> None:
        msg = self.decode(s, frames)
        if msg is None:
            return
        if type(msg) is Pong:
            self.pong(s, msg)
        elif type(msg) is Hello:
            if msg.role != "broker":
                self.mistake("unexpected", s, f"HELLO with role {msg.role!r} from the broker")
            elif msg.id == 0:
                # "I do not know you": the broker expired this worker (or restarted).
                if s.state != GREETING:  # (while greeting, the answer is on its way)
                    self.counts["forgotten"] += 1
                    self.greet(s)
            elif not answers_hello(s, msg.id):
                self.mistake("unasked", s, f"a broker HELLO with id {msg.id}, not ours")
            elif s.state == GREETING:
                # Registered. Any of this greeting's HELLOs will do, as for the real
                # worker: READY leaves after every HELLO sent so far, so the broker
                # (which restarts credit at each HELLO) counts this credit last.
                s.state = READY
                self.counts["registered"] += 1
                self.register_s.append(time.monotonic() - s.greeting_since)
                s.credit = self.credit
                s.owed = 0
                self.send(s, [_EMPTY, *protocol.encode(Ready(0, self.credit))])
            # (else a late answer to an earlier HELLO: already registered)
        elif type(msg) is Ping:
            self.send(s, [_EMPTY, *protocol.encode(Pong(msg.id, msg.codec))])
        elif type(msg) is Disconnect:
            s.state = LEAVING
        elif type(msg) is Error:
            self.counts["errors"] += 1
            self.mistake("refused", s, f"the broker answered ERROR {int(msg.code)} {msg.message!r}")
        else:
            self.mistake("unexpected", s, f"the broker sent a {type(msg).__name__} for itself")

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["register_max"] = round(max(self.register_s, default=0.0), 3)
        return out

    def flush(self, s: Session) -> None:
        # One READY per batch gives back what the batch used (as the real worker's
        # grant() does after each pump).
        if (
            s.owed
            and s.state == READY
            and self.send(s, [_EMPTY, *protocol.encode(Ready(0, s.owed))])
        ):
            s.credit += s.owed
            s.owed = 0


class SimEndpoints(SimPeers):
    """``count`` worker endpoints, each a ROUTER bound on a free port of ``host``."""

    role = "endpoints"

    def __init__(
        self, count: int, *, host: str = "127.0.0.1", threads: int = 1000, heartbeat_ms: int = 1000
    ) -> None:
        super().__init__(count, heartbeat_ms)
        self.threads = threads
        self.counts.update(requests=0, hellos=0, pings_answered=0, clients_left=0, answered_bad=0)
        self.endpoints: list[str] = []
        for i in range(count):
            s = Session(i, self._socket(zmq.ROUTER), self.interval)
            s.state = READY  # a worker is ready once bound
            port = s.sock.bind_to_random_port(f"tcp://{host}")
            self.endpoints.append(f"tcp://{host}:{port}")
            self._watch(s)

    def on_frames(self, s: Session, frames: list[zmq.Frame]) -> None:
        peer = frames[0].bytes
        try:
            msg = protocol.decode(frames[1:])
        except ProtocolError as exc:
            self.mistake("undecodable", s, f"{exc} (code {int(exc.code)})")
            # A worker answers a bad message it may answer (SPEC 6), and so do we.
            answer = protocol.refusal(exc, frames[1] if len(frames) > 1 else None)
            if answer is not None:
                self.counts["answered_bad"] += 1
                self.send(s, [peer, *protocol.encode(answer)])
            return
        if type(msg) is Request:
            self.counts["requests"] += 1
            if msg.batch:
                result: Any = [item[0] if item else None for item in msg.args]
            else:
                result = msg.args[0] if msg.args else None
            self.send(s, [peer, *protocol.encode(Reply(msg.id, result, msg.codec, msg.batch))])
        elif type(msg) is Ping:
            self.counts["pings_answered"] += 1
            self.send(s, [peer, *protocol.encode(Pong(msg.id, msg.codec))])
        elif type(msg) is Hello:
            self.counts["hellos"] += 1
            if msg.role != "client":
                self.mistake("unexpected", s, f"HELLO with role {msg.role!r} from a client")
            hello = self.worker_hello(msg.id, f"simendpoint-{s.index}", self.threads, msg.codec)
            self.send(s, [peer, *protocol.encode(hello)])
        elif type(msg) is protocol.Cancel:
            pass  # already answered
        elif type(msg) is Disconnect:
            self.counts["clients_left"] += 1
        else:
            self.mistake("unexpected", s, f"a client sent a {type(msg).__name__}")


class SimClients(SimPeers):
    """``count`` client sessions with the worker at ``endpoint``; ``busy`` of them
    pipeline requests (``window`` each) while `start_busy`'s time runs."""

    role = "clients"

    def __init__(
        self,
        endpoint: str,
        count: int,
        *,
        busy: int = 0,
        window: int = 100,
        heartbeat_ms: int = 1000,
    ) -> None:
        super().__init__(count, heartbeat_ms)
        self.window = window
        self.counts.update(replies=0, errors=0)
        self.error_codes: dict[str, int] = {}
        self.busy_until = 0.0
        self.busy_started = 0.0
        self.busy_calls = 0
        self.on_busy_done: Callable[[dict[str, Any]], None] | None = None
        self.busy_sessions: list[Session] = []
        for i in range(count):
            s = Session(i, self._socket(zmq.DEALER), self.interval)
            s.sock.connect(endpoint)
            self._watch(s)
            if i < busy:
                self.busy_sessions.append(s)
            self.greet(s)
        self._schedule_beats()

    def hello_frames(self, s: Session, rid: int) -> list[Any]:
        hello = Hello(rid, version=protocol.__version__, host=self.host, pid=os.getpid())
        return protocol.encode(hello)

    def heartbeat(self, s: Session, now: float) -> None:
        # As the real client's dispatcher does (client/_dispatch.py, tick): one HELLO a
        # heartbeat until answered; a PING only to a peer quiet for 0.9 of a heartbeat.
        if s.state == GREETING:
            self.greet(s, chain=False)
        elif now - s.heard > LIVENESS * s.interval:
            self.counts["silent"] += 1  # the worker missed 3 of our heartbeats
            s.heard = now
        elif now - s.heard > 0.9 * s.interval:
            self.ping(s, [])

    def on_frames(self, s: Session, frames: list[zmq.Frame]) -> None:
        msg = self.decode(s, frames)
        if msg is None:
            return
        if type(msg) is Reply:
            sent = s.outstanding.pop(msg.id, None)
            if sent is None:
                self.mistake("unasked", s, f"REPLY {msg.id} to no request of ours")
                return
            if msg.result != sent:
                self.mistake("unasked", s, f"REPLY {msg.id} is {msg.result!r}, sent {sent!r}")
            self.counts["replies"] += 1
            if self.busy_until:
                self._answered(s)
        elif type(msg) is Pong:
            self.pong(s, msg)
        elif type(msg) is Hello:
            if msg.role != "worker":
                self.mistake("unexpected", s, f"HELLO with role {msg.role!r} from a worker")
            elif msg.id and not answers_hello(s, msg.id):
                self.mistake("unasked", s, f"a worker HELLO with id {msg.id}, not ours")
            elif msg.id and s.state == GREETING:
                s.state = READY
                if msg.heartbeat_ms:
                    s.interval = msg.heartbeat_ms / 1000
        elif type(msg) is Error:
            if self.refusal(s, msg):
                return
            if s.outstanding.pop(msg.id, None) is None:
                self.mistake("unasked", s, f"ERROR {int(msg.code)} about no request of ours")
                return
            self.counts["errors"] += 1
            code = protocol.error_name(msg.code)
            self.error_codes[code] = self.error_codes.get(code, 0) + 1
            if self.busy_until:
                self._answered(s)
        elif type(msg) is Disconnect:
            s.state = LEAVING
        else:
            self.mistake("unexpected", s, f"a worker sent a {type(msg).__name__}")

    # --- busy clients ----------------------------------------------------------------------

    def start_busy(self, seconds: float, done: Callable[[dict[str, Any]], None]) -> None:
        """Pipeline requests from the busy sessions for ``seconds``; then, once every
        request is answered, ``done(report)``."""
        now = time.monotonic()
        self.busy_started, self.busy_until = now, now + seconds
        self.busy_calls = 0
        self.on_busy_done = done
        for s in self.busy_sessions:
            while len(s.outstanding) < self.window:
                self._request(s)

    def _request(self, s: Session) -> None:
        rid = next(self.ids)
        if self.send(s, protocol.encode(Request(rid, TARGET, [rid], ttl_ms=60_000))):
            s.outstanding[rid] = rid

    def _answered(self, s: Session) -> None:
        if time.monotonic() < self.busy_until:
            self.busy_calls += 1
            self._request(s)

    def after_step(self) -> None:
        if not self.busy_until:
            return
        now = time.monotonic()
        if now < self.busy_until:
            return
        waiting = sum(len(s.outstanding) for s in self.busy_sessions)
        if waiting and now < self.busy_until + 30:
            return  # the last requests are still on their way
        report = {
            "event": "busy",
            "calls": self.busy_calls,
            "seconds": self.busy_until - self.busy_started,
            "unanswered": waiting,
            "errors": dict(self.error_codes),
        }
        self.busy_until = 0.0
        done, self.on_busy_done = self.on_busy_done, None
        if done is not None:
            done(report)

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out["error_codes"] = dict(self.error_codes)
        return out


# --- the process ---------------------------------------------------------------------------


def _emit(obj: dict[str, Any]) -> None:
    os.write(sys.stdout.fileno(), (json.dumps(obj) + "\n").encode())


def serve(sim: SimPeers) -> None:
    """Run ``sim`` until ``quit`` or the end of stdin, answering commands (module doc)."""
    stdin = sys.stdin.fileno()
    buffer = b""
    stop = False

    def command(line: str) -> None:
        nonlocal stop
        word, _, arg = line.strip().partition(" ")
        if word == "stats":
            _emit(sim.stats())
        elif word == "busy" and isinstance(sim, SimClients):
            sim.start_busy(float(arg), _emit)
        elif word == "quit":
            stop = True
        elif word:
            _emit({"event": "error", "message": f"unknown command {line.strip()!r}"})

    def on_stdin() -> None:
        nonlocal buffer, stop
        data = os.read(stdin, 65536)
        if not data:
            stop = True  # the bench is gone
            return
        *lines, buffer = (buffer + data).split(b"\n")
        for line in lines:
            command(line.decode())

    sim.add_reader(stdin, on_stdin)
    while not stop:
        sim.step(0.5)
    sim.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m zeromesh._bench.simpeers",
        description="Many simulated zeromesh peers in one process (for zeromesh bench --scale).",
    )
    p.add_argument("role", choices=["workers", "endpoints", "clients"])
    p.add_argument("--count", type=int, required=True, help="simulated peers")
    p.add_argument("--connect", metavar="ENDPOINT", help="the broker (workers) or worker (clients)")
    p.add_argument("--credit", type=int, default=1, help="workers: credit (and capacity) each")
    p.add_argument("--threads", type=int, default=1000, help="endpoints: slots each announces")
    p.add_argument("--host", default="127.0.0.1", help="endpoints: the address to bind")
    p.add_argument("--busy", type=int, default=0, help="clients: how many pipeline requests")
    p.add_argument("--window", type=int, default=100, help="clients: requests in flight each")
    p.add_argument("--heartbeat-ms", type=int, default=1000)
    p.add_argument("--name", default="sim", help="workers: name prefix")
    args = p.parse_args(argv)
    sim: SimPeers
    if args.role == "endpoints":
        sim = SimEndpoints(
            args.count, host=args.host, threads=args.threads, heartbeat_ms=args.heartbeat_ms
        )
        _emit({"event": "endpoints", "endpoints": sim.endpoints})
    elif not args.connect:
        p.error(f"{args.role} needs --connect")
    elif args.role == "workers":
        sim = SimWorkers(
            args.connect,
            args.count,
            credit=args.credit,
            heartbeat_ms=args.heartbeat_ms,
            name=args.name,
        )
    else:
        sim = SimClients(
            args.connect,
            args.count,
            busy=args.busy,
            window=args.window,
            heartbeat_ms=args.heartbeat_ms,
        )
    serve(sim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
