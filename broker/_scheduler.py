"""The broker's scheduler: who has credit, what is queued, what is in flight, what expired.

A plain state machine, no sockets and no clock of its own (it is given one). The socket
shell (`broker._server`) turns frames into method calls and executes the commands the
scheduler leaves in `Scheduler.outbox`:

* `Dispatch` — send the job's request frames to a worker;
* `Answer` — answer the job's client with an ERROR of the given code;
* `CancelAt` — tell the worker holding the job that its client gave up on it.

Rules (protocol/SPEC.md, section 12, says the same for other implementations):

* Requests queue per service, first in first out. A worker with credit for the service
  takes the head of the queue; among several, the one that has waited longest since it
  was last given work (least recently used).
* Credit is exactly what the worker announced in READY, decreased by one per request
  sent to it. Nothing is sent to a worker without credit: no hidden prefetch.
* A worker is expired after ``liveness`` heartbeat intervals without a word from it
  (its own ``heartbeat_ms``). The requests it held are queued again, at the head of
  their queues; one that has already been handed to ``max_deliveries`` workers is
  answered WORKER_LOST instead (a poison request must not kill the whole pool).
* A request whose time-to-live passes while it is queued is answered TIMEOUT (or
  NO_WORKERS when nobody serves its service) and is never sent to a worker.
* A queue holding ``max_queue`` requests answers the next one OVERLOADED at once.
* Every request accepted gets exactly one answer: the worker's reply (forwarded once;
  later replies for it are dropped and counted as late) or one `Answer` from here.
* A stream request (SPEC 12.8) goes only to a worker whose HELLO said ``streams``, and
  holds that worker's slot until its END or ERROR; the ITEMs on the way are counted
  (`item`). A worker lost after one of them went out is answered WORKER_LOST at once,
  never queued again: the client consumed those items.

What it costs: the shell ticks twenty times a heartbeat, and each worker is heard
about once a heartbeat (its PING). The workers stand in order of when they were last
heard (one queue per liveness, as their heartbeats may differ): hearing from one
moves it to the end, and `tick` looks at the front of each queue only, so it costs
the workers that expire, not the number of workers (issue 18). What the broker's
HELLO says of its workers together (capacity, threads, async slots, in flight,
services) is kept up to date as they join, drain and leave, not added up per HELLO:
1,000 workers joining had cost a million steps.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from protocol import LIVENESS, OTHER_NAME, RESERVED_SERVICE, ErrorCode

__all__ = [
    "OTHER_SERVICE",
    "PER_SERVICE",
    "RESERVED_SERVICE",
    "Answer",
    "CancelAt",
    "Dispatch",
    "Job",
    "Scheduler",
    "WorkerRecord",
]

QUEUED, IN_FLIGHT, DONE = 1, 2, 3

PER_SERVICE = ("accepted", "dispatched", "requeued", "expired_in_queue", "overloaded")
"""The counters kept per service as well (`Scheduler.by_service`)."""
OTHER_SERVICE = OTHER_NAME
"""The service label of requests for a service no worker ever served."""


class Job:
    """One client request, from arrival at the broker until its answer leaves.

    ``payload`` is opaque here: the shell keeps the request's frames in it.
    """

    __slots__ = (
        "arrived",
        "cancelled",
        "client",
        "codec",
        "deadline",
        "deliveries",
        "id",
        "items",
        "payload",
        "seq",
        "service",
        "state",
        "stream",
        "target",
        "worker",
    )

    def __init__(
        self,
        client: bytes,
        rid: int,
        target: str,
        deadline: float,
        payload: Any,
        codec: int,
        seq: int,
        stream: bool = False,
    ) -> None:
        self.client = client
        self.id = rid
        self.target = target
        self.service = target.partition(".")[0]
        self.deadline = deadline  # 0.0: none
        self.payload = payload
        self.codec = codec
        self.seq = seq  # arrival order, for fairness between queues
        self.arrived = 0.0  # clock time it reached the broker (set by `submit`)
        self.deliveries = 0
        self.state = QUEUED
        self.worker: bytes | None = None
        self.cancelled = False  # its client gave up while a worker held it
        self.stream = stream  # a stream request (SPEC 12.8)
        self.items = 0  # its ITEMs forwarded to the client so far

    @property
    def key(self) -> tuple[bytes, int]:
        return (self.client, self.id)

    def __repr__(self) -> str:
        return f"<Job {self.target} id={self.id} state={self.state} deliveries={self.deliveries}>"


class WorkerRecord:
    """What the broker knows about one connected worker."""

    __slots__ = (
        "async_handlers",
        "async_slots",
        "bundle",
        "capacity",
        "credit",
        "draining",
        "enlisted",
        "host",
        "id",
        "in_flight",
        "last_seen",
        "liveness",
        "name",
        "pid",
        "protocol",
        "registered_at",
        "served",
        "services",
        "streams",
        "targets",
        "threads",
    )

    def __init__(self, wid: bytes, now: float) -> None:
        self.id = wid
        self.name = ""
        self.host = ""
        self.pid = 0
        self.services: dict[str, list[str]] = {}
        self.targets: frozenset[str] = frozenset()
        self.capacity = 0
        self.threads = 0  # 0: a 1.0 worker, which did not say
        self.async_slots = 0
        self.async_handlers: dict[str, list[str]] = {}
        self.protocol = "1.1"
        """Its HELLO's protocol revision: a "1.0" worker is sent requests without meta."""
        self.streams = False
        """Its HELLO said ``streams``: it takes stream requests (revision 1.2)."""
        self.bundle = False
        """Its HELLO said ``bundle``: it takes routed BUNDLEs (revision 1.2, SPEC 7.10)."""
        self.credit = 0
        self.draining = False
        self.enlisted = False  # counted among who serves what
        self.in_flight: dict[tuple[bytes, int], Job] = {}
        self.last_seen = now
        self.liveness = 3.0  # seconds of silence before it is expired
        self.registered_at = now
        self.served = 0


class Dispatch(NamedTuple):
    """Send ``job.payload`` to ``worker``."""

    worker: bytes
    job: Job


class Answer(NamedTuple):
    """Answer ``job``'s client with an ERROR ``code`` carrying ``message``."""

    job: Job
    code: ErrorCode
    message: str


class CancelAt(NamedTuple):
    """Tell ``worker`` that ``job``'s client cancelled it."""

    worker: bytes
    job: Job


Command = Dispatch | Answer | CancelAt


class Scheduler:
    """Per-service queues, worker credit, in-flight table, liveness and deadlines.

    Args:
        max_queue: requests one service's queue holds before new ones are refused
            OVERLOADED (requests put back after a worker was lost may exceed it).
        max_deliveries: workers a request may be handed to before it is answered
            WORKER_LOST rather than queued again.
        liveness: heartbeat intervals of silence after which a worker is expired.
        grace: seconds after start during which a request for a service no worker has
            announced yet waits for one (workers reconnecting to a restarted broker);
            afterwards such a request is answered UNKNOWN_HANDLER at once.
        clock: monotonic seconds; tests pass a fake one.

    Not thread-safe: one loop drives it. Every method appends its commands to `outbox`;
    the caller executes and clears them.
    """

    def __init__(
        self,
        *,
        max_queue: int = 10_000,
        max_deliveries: int = 3,
        liveness: int = LIVENESS,
        grace: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_queue < 1 or max_deliveries < 1 or liveness < 1:
            raise ValueError("max_queue, max_deliveries and liveness must be at least 1")
        self.max_queue = max_queue
        self.max_deliveries = max_deliveries
        self.liveness = liveness
        self.grace = grace
        self.clock = clock
        self.started = clock()
        self.outbox: list[Command] = []
        self.workers: dict[bytes, WorkerRecord] = {}
        self.jobs: dict[tuple[bytes, int], Job] = {}
        self.draining = False
        self.generation = 0
        """Bumped whenever the set of serving workers changes (capacity, services)."""
        self._queues: dict[str, deque[Job]] = {}
        self._depth: dict[str, int] = {}  # live (QUEUED) jobs per queue
        # Per service: the workers with credit, least recently given work first.
        self._avail: dict[str, OrderedDict[bytes, WorkerRecord]] = {}
        # How many live, non-draining workers serve each service and each target; what
        # they offer all together (`_offer`: kept as workers come and go, so a HELLO,
        # which says it, costs the same with 10 workers or 5,000).
        self._providers: dict[str, int] = {}
        self._handlers: dict[tuple[str, str], int] = {}  # (service, handler)
        self._async_services: dict[str, int] = {}
        self._async_handlers: dict[tuple[str, str], int] = {}
        self._stream_handlers: dict[tuple[str, str], int] = {}  # by streaming workers
        self._capacity = self._threads = self._async_slots = 0
        self._in_flight = 0  # requests at workers, all together
        self._ever_served: set[str] = set()
        self._deadlines: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        # By liveness: the workers, least lately heard first (module docstring, "What
        # it costs").
        self._silence: dict[float, OrderedDict[bytes, WorkerRecord]] = {}
        # Stream requests not yet answered (some may be answered already: `open_streams`
        # sweeps those out), for the clients to watch and the status to show.
        self._streams: dict[tuple[bytes, int], Job] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "accepted",
                "dispatched",
                "answered",
                "requeued",
                "refused",
                "expired_in_queue",
                "overloaded",
                "worker_lost",
                "unknown",
                "cancelled",
                "late_replies",
                "workers_expired",
                "streams",
                "items",
            ),
            0,
        )
        self.by_service: dict[str, dict[str, int]] = {}
        """The `PER_SERVICE` counters by service (services some worker served, else
        ``_other``: a client's made-up names must not become labels)."""

    def _tally(self, name: str, job: Job) -> None:
        """Count ``name`` in total and for ``job``'s service."""
        self.counters[name] += 1
        service = job.service if job.service in self._ever_served else OTHER_SERVICE
        per = self.by_service.get(service)
        if per is None:
            per = self.by_service[service] = dict.fromkeys(PER_SERVICE, 0)
        per[name] += 1

    def oldest_waiting(self) -> dict[str, float]:
        """Seconds the oldest queued request of each service has waited. Safe from a
        metrics scrape's thread: it iterates copies (each taken in one C call)."""
        now = self.clock()
        ages = {}
        for service, q in list(self._queues.items()):
            for job in list(q):
                if job.state is QUEUED:
                    ages[service] = now - job.arrived
                    break
        return ages

    def service_label(self, service: str) -> str:
        """``service`` as a metrics label: itself if some worker served it, else
        `OTHER_SERVICE` (clients may ask for made-up ones while the broker starts)."""
        return service if service in self._ever_served else OTHER_SERVICE

    # --- workers ---------------------------------------------------------------------------

    def register(
        self,
        wid: bytes,
        *,
        services: dict[str, list[str]],
        capacity: int,
        heartbeat: float,
        name: str = "",
        host: str = "",
        pid: int = 0,
        threads: int = 0,
        async_slots: int = 0,
        async_handlers: dict[str, list[str]] | None = None,
        protocol: str = "1.1",
        streams: bool = False,
        bundle: bool = False,
    ) -> None:
        """A worker said HELLO. A known worker saying it again starts a new credit count
        at zero (its READY follows); the requests it holds stay in flight.

        ``threads``, ``async_slots`` and ``async_handlers`` are what it runs at once of
        each kind (protocol 1.1; a 1.0 worker leaves them out). Dispatch goes by credit
        alone; they only add up into what the broker announces to clients. ``streams``:
        it takes stream requests, ``bundle``: routed BUNDLEs (its HELLO said so,
        revision 1.2)."""
        now = self.clock()
        w = self.workers.get(wid)
        if w is None:
            w = self.workers[wid] = WorkerRecord(wid, now)
        else:
            self._withdraw(w)
            self._delist(w)
            self._unwatch(w)
            w.credit = 0
        w.name, w.host, w.pid = name, host, pid
        w.protocol = protocol
        w.streams = streams
        w.bundle = bundle
        w.services = {s: list(h) for s, h in services.items() if s != RESERVED_SERVICE}
        w.targets = frozenset(f"{s}.{h}" for s, hs in w.services.items() for h in hs)
        w.capacity = max(0, capacity)
        w.threads = max(0, threads)
        w.async_slots = max(0, async_slots)
        w.async_handlers = {
            s: list(h) for s, h in (async_handlers or {}).items() if s in w.services
        }
        w.draining = False
        w.last_seen = now
        w.liveness = liveness = self.liveness * max(heartbeat, 0.01)
        queue = self._silence.get(liveness)
        if queue is None:
            queue = self._silence[liveness] = OrderedDict()
        queue[wid] = w  # (at the end: heard just now)
        self._ever_served.update(w.services)
        self._enlist(w)

    def ready(self, wid: bytes, credit: int) -> bool:
        """The worker grants ``credit`` more requests. False if it is not registered."""
        w = self.workers.get(wid)
        if w is None:
            return False
        self._heard(w)
        if credit <= 0 or w.draining:
            return True
        was = w.credit
        w.credit = was + credit
        if was == 0:
            for s in w.services:
                self._avail.setdefault(s, OrderedDict())[wid] = w
        self._feed(w)
        # What w took may have been blocking the head of a queue another worker can serve.
        self._dispatch_services(w.services)
        return True

    def heard(self, wid: bytes) -> bool:
        """Any message from the worker proves it alive. False if it is not registered."""
        w = self.workers.get(wid)
        if w is None:
            return False
        self._heard(w)
        return True

    def disconnect(self, wid: bytes) -> None:
        """The worker drains: it gets nothing new; replies to what it holds still pass."""
        w = self.workers.get(wid)
        if w is None or w.draining:
            return
        self._heard(w)
        self._withdraw(w)
        self._delist(w)
        w.draining = True
        w.credit = 0

    def remove(self, wid: bytes, why: str) -> None:
        """The worker is gone (expired, unreachable): requeue or fail what it held."""
        self._dispatch_services(self._remove(wid, why))

    def _remove(self, wid: bytes, why: str) -> set[str]:
        """Forget ``wid``; return the services whose queues may now move."""
        w = self.workers.pop(wid, None)
        if w is None:
            return set()
        self._withdraw(w)
        self._delist(w)
        self._unwatch(w)
        now = self.clock()
        touched: set[str] = set()
        # Put back in reverse so the oldest ends up at the head of its queue.
        for job in sorted(w.in_flight.values(), key=lambda j: j.seq, reverse=True):
            if job.state is not IN_FLIGHT:
                continue
            job.worker = None
            if job.cancelled:
                # Its client gave up on it (and was told so, or is gone): nobody would
                # read it if it ran again.
                job.state = DONE
                del self.jobs[job.key]
            elif job.items:
                self.counters["worker_lost"] += 1
                self._answer(
                    job,
                    ErrorCode.WORKER_LOST,
                    f"{job.target}: its worker ({_who(w)}) was lost ({why}) after it had sent "
                    f"{job.items} ITEM message(s); a stream is not sent again once items "
                    "were consumed: start it again if you need the rest",
                )
            elif job.deliveries >= self.max_deliveries:
                self.counters["worker_lost"] += 1
                self._answer(
                    job,
                    ErrorCode.WORKER_LOST,
                    f"{job.target}: handed to {job.deliveries} workers, all lost before "
                    f"replying (last: {_who(w)}, {why}); not sent again",
                )
            elif job.deadline and job.deadline <= now:
                self._expire(job, now)
            else:
                self._tally("requeued", job)
                self._requeue(job)
                touched.add(job.service)
        self._in_flight -= len(w.in_flight)
        w.in_flight.clear()
        touched.update(w.services)
        return touched

    def finish(self, wid: bytes, client: bytes, rid: int) -> bool:
        """The worker answered (REPLY or ERROR). True: forward it to the client.

        False for a late answer: from a worker no longer registered, or for a request
        that worker does not hold (it was expired and the request re-sent elsewhere).
        """
        w = self.workers.get(wid)
        if w is None:
            self.counters["late_replies"] += 1
            return False
        self._heard(w)
        job = w.in_flight.pop((client, rid), None)
        if job is None:
            self.counters["late_replies"] += 1
            return False
        self._in_flight -= 1
        job.state = DONE
        job.worker = None
        del self.jobs[job.key]
        w.served += 1
        self.counters["answered"] += 1
        return True

    def holds(self, wid: bytes, client: bytes, rid: int) -> bool:
        """Whether ``wid`` holds that request now (PROGRESS is forwarded only then)."""
        w = self.workers.get(wid)
        return w is not None and (client, rid) in w.in_flight

    def item(self, wid: bytes, client: bytes, rid: int) -> bool:
        """The worker sent an ITEM of stream ``rid``. True: forward it to the client
        (``wid`` holds that stream); it is counted, and proves the worker alive."""
        w = self.workers.get(wid)
        if w is None:
            return False
        job = w.in_flight.get((client, rid))
        if job is None or not job.stream:
            return False
        self._heard(w)
        job.items += 1
        self.counters["items"] += 1
        return True

    def holder(self, client: bytes, rid: int) -> bytes | None:
        """The worker holding ``client``'s stream ``rid`` now, where its CREDIT goes;
        None if it is queued, over or unknown (the CREDIT is dropped: a client grants
        only for items it read, and a stream that sent one is never queued again)."""
        job = self.jobs.get((client, rid))
        if job is None or not job.stream or job.state is not IN_FLIGHT:
            return None
        return job.worker

    def open_streams(self) -> dict[tuple[bytes, int], Job]:
        """The stream requests not answered yet (queued or at a worker), by key."""
        streams = self._streams
        for key in [k for k, job in streams.items() if job.state is DONE]:
            del streams[key]
        return streams

    def refused(self, wid: bytes, client: bytes, rid: int) -> None:
        """The worker did not start the request (DRAINING: busy or stopping).

        It goes back to the head of its queue without counting as a delivery, and the
        worker's credit drops to zero until its next READY.
        """
        w = self.workers.get(wid)
        if w is None:
            self.counters["late_replies"] += 1
            return
        self._heard(w)
        self._withdraw(w)
        w.credit = 0
        job = w.in_flight.pop((client, rid), None)
        if job is None:
            self.counters["late_replies"] += 1
            return
        self._in_flight -= 1
        self.counters["refused"] += 1
        job.deliveries -= 1
        job.worker = None
        self._requeue(job)
        self._dispatch_services((job.service,))

    # --- clients ------------------------------------------------------------------------------

    def submit(
        self,
        client: bytes,
        rid: int,
        target: str,
        ttl_ms: int,
        payload: Any,
        codec: int = 0,
        stream: bool = False,
    ) -> Job | None:
        """A client's request (``stream``: a stream request, SPEC 12.8). Returns its
        job, or None if it was answered at once."""
        now = self.clock()
        job = Job(
            client,
            rid,
            target,
            now + ttl_ms / 1000 if ttl_ms else 0.0,
            payload,
            codec,
            next(self._seq),
            stream,
        )
        job.arrived = now
        key = (client, rid)
        if self.draining:
            self._answer(job, ErrorCode.DRAINING, "the broker is shutting down; not started")
            return None
        if key in self.jobs:
            self._answer(job, ErrorCode.PROTOCOL, f"request id {rid} is already in flight")
            return None
        service = job.service
        if self._providers.get(service):
            handler = (service, target.partition(".")[2])
            if not self._handlers.get(handler):
                self.counters["unknown"] += 1
                self._answer(job, ErrorCode.UNKNOWN_HANDLER, self._no_handler(target))
                return None
            if stream and not self._stream_handlers.get(handler):
                self.counters["unknown"] += 1
                self._answer(
                    job,
                    ErrorCode.UNKNOWN_HANDLER,
                    f"{target}: the workers connected to the broker that serve it cannot "
                    "stream (their HELLO did not say streams: a zeromesh release before "
                    "protocol 1.2); upgrade them, or call() it to get all its items as one list",
                )
                return None
        elif service not in self._ever_served and now - self.started > self.grace:
            self.counters["unknown"] += 1
            self._answer(job, ErrorCode.UNKNOWN_HANDLER, self._no_handler(target))
            return None
        self._tally("accepted", job)
        if stream:
            self.counters["streams"] += 1
            self._streams[key] = job
        q = self._queues.get(service)
        if not q or not self._depth.get(service):
            avail = self._avail.get(service)
            if avail:
                w = _pick(avail, job)
                if w is not None:
                    self.jobs[key] = job
                    self._send(w, job)
                    return job
        depth = self._depth.get(service, 0)
        if depth >= self.max_queue:
            self._tally("overloaded", job)
            self._answer(
                job,
                ErrorCode.OVERLOADED,
                f"the broker's queue for {service!r} is full ({depth} waiting); retry later",
            )
            return None
        self.jobs[key] = job
        if q is None:
            q = self._queues[service] = deque()
        q.append(job)
        self._depth[service] = depth + 1
        if job.deadline:
            heapq.heappush(self._deadlines, (job.deadline, job.seq, job))
        return job

    def cancel(self, client: bytes, rid: int) -> None:
        """The client gave up on a request: unqueue it, or tell its worker."""
        job = self.jobs.get((client, rid))
        if job is None:
            return
        self.counters["cancelled"] += 1
        if job.state is QUEUED:
            self._unqueue(job)
            job.state = DONE
            del self.jobs[job.key]
            self._dispatch_services((job.service,))  # it may have blocked the head
        elif job.state is IN_FLIGHT and job.worker is not None:
            job.cancelled = True
            self.outbox.append(CancelAt(job.worker, job))

    def forget_client(self, client: bytes) -> None:
        """The client left (DISCONNECT): drop its queued requests, cancel the rest."""
        touched = set()
        for job in [j for j in self.jobs.values() if j.client == client]:
            if job.state is QUEUED:
                self.counters["cancelled"] += 1
                self._unqueue(job)
                job.state = DONE
                del self.jobs[job.key]
                touched.add(job.service)
            elif job.worker is not None:
                job.cancelled = True
                self.outbox.append(CancelAt(job.worker, job))
        self._dispatch_services(touched)

    # --- time ----------------------------------------------------------------------------------

    def tick(self) -> None:
        """Expire silent workers and queued requests whose time is up.

        Looks at the least lately heard worker of each liveness, and past it only at
        those that expire.
        """
        now = self.clock()
        touched: set[str] = set()
        # Remove every silent worker before dispatching: none of them may be given work.
        for liveness, queue in list(self._silence.items()):
            while queue:
                w = next(iter(queue.values()))
                silent = now - w.last_seen
                if silent <= liveness:
                    break
                self.counters["workers_expired"] += 1
                touched |= self._remove(w.id, f"silent for {silent:.1f} s")
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, job = heapq.heappop(heap)
            if job.state is QUEUED and job.deadline <= now:
                self._unqueue(job)
                self._expire(job, now)
                touched.add(job.service)  # it may have been blocking the head of its queue
        self._dispatch_services(touched)

    def next_wakeup(self) -> float | None:
        """When `tick` next has something to do (a clock reading), None if never."""
        times = [
            next(iter(queue.values())).last_seen + liveness
            for liveness, queue in self._silence.items()
        ]
        heap = self._deadlines
        while heap and heap[0][2].state is not QUEUED:
            heapq.heappop(heap)  # dispatched or answered meanwhile
        if heap:
            times.append(heap[0][0])
        return min(times) if times else None

    def drain(self) -> None:
        """Take no new requests; answer every queued one DRAINING (not started)."""
        self.draining = True
        for q in self._queues.values():
            for job in q:
                if job.state is QUEUED:
                    self._answer(job, ErrorCode.DRAINING, "the broker is shutting down")
            q.clear()
        self._depth.clear()

    def abandon(self, why: str) -> None:
        """Answer every request still in flight WORKER_LOST (the broker is leaving)."""
        for w in self.workers.values():
            for job in w.in_flight.values():
                if job.state is IN_FLIGHT:
                    self.counters["worker_lost"] += 1
                    self._answer(job, ErrorCode.WORKER_LOST, f"{job.target}: {why}")
            self._in_flight -= len(w.in_flight)
            w.in_flight.clear()

    # --- reading the state ----------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Requests the registered, non-draining workers run at once, all together."""
        return self._capacity

    @property
    def threads(self) -> int:
        """Plain requests the registered, non-draining workers run at once, all together.

        A 1.0 worker (it did not say) counts with its whole capacity: it names no async
        handler, so a client counts everything it sends there as plain."""
        return self._threads

    @property
    def async_slots(self) -> int:
        """``async`` requests the registered, non-draining workers run at once, together."""
        return self._async_slots

    @property
    def in_flight(self) -> int:
        """Requests at workers now (safe to read from any thread)."""
        return self._in_flight

    def services(self) -> dict[str, list[str]]:
        """Union of the services of the non-draining workers, with their handlers."""
        return _grouped(self._providers, self._handlers)

    def async_handlers(self) -> dict[str, list[str]]:
        """Union of the non-draining workers' ``async`` handlers, by service."""
        return _grouped(self._async_services, self._async_handlers)

    def queue_depths(self) -> dict[str, int]:
        return {s: n for s, n in sorted(self._depth.items()) if n}

    def status(self) -> dict[str, Any]:
        """Workers, queues and totals, as plain data (the ``_broker.status`` reply)."""
        now = self.clock()
        workers = [
            {
                "id": w.id.hex(),
                "name": w.name,
                "host": w.host,
                "pid": w.pid,
                "services": w.services,
                "state": "draining" if w.draining else "ready",
                "capacity": w.capacity,
                "credit": w.credit,
                "in_flight": len(w.in_flight),
                "streams": sum(1 for job in w.in_flight.values() if job.stream),
                "served": w.served,
                "last_seen": round(now - w.last_seen, 3),
                "connected": round(now - w.registered_at, 3),
            }
            for w in sorted(self.workers.values(), key=lambda w: (w.host, w.pid, w.id))
        ]
        queues = self.queue_depths()
        return {
            "workers": workers,
            "queues": queues,
            "oldest": {s: round(age, 3) for s, age in sorted(self.oldest_waiting().items())},
            "totals": {
                "workers": len(workers),
                "capacity": self.capacity,
                "credit": sum(w.credit for w in self.workers.values()),
                "in_flight": self.in_flight,
                "queued": sum(queues.values()),
                "open_streams": len(self.open_streams()),
                **self.counters,
            },
        }

    # --- internals --------------------------------------------------------------------------------

    def _heard(self, w: WorkerRecord) -> None:
        """``w`` is alive now: to the end of its queue (module docstring)."""
        w.last_seen = self.clock()
        self._silence[w.liveness].move_to_end(w.id)

    def _unwatch(self, w: WorkerRecord) -> None:
        """Take ``w`` out of its queue (it leaves, or its liveness changes)."""
        queue = self._silence[w.liveness]
        del queue[w.id]
        if not queue:
            del self._silence[w.liveness]

    def _send(self, w: WorkerRecord, job: Job) -> None:
        job.state = IN_FLIGHT
        job.worker = w.id
        job.deliveries += 1
        w.in_flight[job.key] = job
        self._in_flight += 1
        w.credit -= 1
        self._tally("dispatched", job)
        if w.credit <= 0:
            self._withdraw(w)
        else:
            avail = self._avail
            for s in w.services:
                avail[s].move_to_end(w.id)
        self.outbox.append(Dispatch(w.id, job))

    def _feed(self, w: WorkerRecord) -> None:
        """Give ``w`` queued work while it has credit, oldest request first."""
        queues = self._queues
        while w.credit > 0:
            best: Job | None = None
            for s in w.services:
                q = queues.get(s)
                if not q:
                    continue
                head = self._head(q)
                if head is not None and _serves(w, head) and (best is None or head.seq < best.seq):
                    best = head
            if best is None:
                return
            self._unqueue(best)
            self._send(w, best)

    def _head(self, q: deque[Job]) -> Job | None:
        """The first live request of ``q``; expired ones on the way are answered."""
        now = self.clock()
        while q:
            job = q[0]
            if job.state is not QUEUED:
                q.popleft()
                continue
            if job.deadline and job.deadline <= now:
                self._unqueue(job)
                self._expire(job, now)
                continue
            return job
        return None

    def _dispatch_services(self, services: Iterable[str]) -> None:
        for s in services:
            q = self._queues.get(s)
            avail = self._avail.get(s)
            while q and avail:
                job = self._head(q)
                if job is None:
                    break
                w = _pick(avail, job)
                if w is None:
                    break  # head of line: only busy workers serve its handler
                self._unqueue(job)
                self._send(w, job)

    def _requeue(self, job: Job) -> None:
        job.state = QUEUED
        q = self._queues.get(job.service)
        if q is None:
            q = self._queues[job.service] = deque()
        q.appendleft(job)
        self._depth[job.service] = self._depth.get(job.service, 0) + 1
        if job.deadline:
            heapq.heappush(self._deadlines, (job.deadline, job.seq, job))

    def _unqueue(self, job: Job) -> None:
        """Take a QUEUED job out of its queue: popped if at the head, else left for
        `_head` to skip (the caller moves it out of the QUEUED state)."""
        self._depth[job.service] -= 1
        q = self._queues[job.service]
        if q and q[0] is job:
            q.popleft()

    def _expire(self, job: Job, now: float) -> None:
        self._tally("expired_in_queue", job)
        ran = (
            f"; it had been sent to {job.deliveries} worker(s), lost before replying"
            if job.deliveries
            else "; it did not run"
        )
        if self._providers.get(job.service):
            self._answer(
                job, ErrorCode.TIMEOUT, f"{job.target}: its time ran out in the broker's queue{ran}"
            )
        else:
            self._answer(
                job,
                ErrorCode.NO_WORKERS,
                f"{job.target}: no worker serving {job.service!r} is connected to the "
                f"broker, and its time ran out waiting for one{ran}",
            )

    def _answer(self, job: Job, code: ErrorCode, message: str) -> None:
        job.state = DONE
        if self.jobs.get(job.key) is job:
            del self.jobs[job.key]
        self.outbox.append(Answer(job, code, message))

    def _enlist(self, w: WorkerRecord) -> None:
        """Count ``w`` among the workers serving its services and handlers."""
        if w.enlisted or w.draining:
            return
        w.enlisted = True
        self._offer(w, 1)

    def _delist(self, w: WorkerRecord) -> None:
        if not w.enlisted:
            return
        w.enlisted = False
        self._offer(w, -1)

    def _offer(self, w: WorkerRecord, sign: int) -> None:
        """Add (``sign`` 1) or take away (-1) what ``w`` offers: the counts of who
        serves what, and the totals a HELLO announces."""
        self.generation += 1
        self._capacity += sign * w.capacity
        self._threads += sign * (w.threads or w.capacity)  # (the `threads` rule)
        self._async_slots += sign * w.async_slots
        counted: tuple[tuple[dict[Any, int], Iterable[Any]], ...] = (
            (self._providers, w.services),
            (self._handlers, _pairs(w.services)),
            (self._async_services, w.async_handlers),
            (self._async_handlers, _pairs(w.async_handlers)),
            (self._stream_handlers, _pairs(w.services) if w.streams else ()),
        )
        for counts, keys in counted:
            for k in keys:
                n = counts.get(k, 0) + sign
                if n:
                    counts[k] = n
                else:
                    del counts[k]

    def _withdraw(self, w: WorkerRecord) -> None:
        """Take ``w`` off the lists of workers with credit."""
        wid = w.id
        for s in w.services:
            avail = self._avail.get(s)
            if avail is not None:
                avail.pop(wid, None)

    def _no_handler(self, target: str) -> str:
        served = sorted(f"{s}.{h}" for s, h in self._handlers)
        return (
            f"no worker connected to the broker serves {target!r}; served: "
            f"{', '.join(served) or 'nothing'}"
        )


def _pairs(handlers: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(service, handler) of each handler in a service -> handler names map."""
    return [(s, h) for s, hs in handlers.items() for h in hs]


def _grouped(
    services: dict[str, int], handlers: dict[tuple[str, str], int]
) -> dict[str, list[str]]:
    """Service -> sorted handler names, from the counts of services and of handlers."""
    out: dict[str, set[str]] = {s: set() for s in services}
    for s, h in handlers:
        out.setdefault(s, set()).add(h)
    return {s: sorted(hs) for s, hs in sorted(out.items())}


def _pick(avail: OrderedDict[bytes, WorkerRecord], job: Job) -> WorkerRecord | None:
    """The least recently used worker with credit that can run ``job``."""
    for w in avail.values():
        if _serves(w, job):
            return w
    return None


def _serves(w: WorkerRecord, job: Job) -> bool:
    """Whether ``w`` can run ``job``: it serves the target, and streams if need be."""
    return job.target in w.targets and (w.streams or not job.stream)


def _who(w: WorkerRecord) -> str:
    return f"{w.name or w.id.hex()} pid {w.pid}" if w.pid else (w.name or w.id.hex())
