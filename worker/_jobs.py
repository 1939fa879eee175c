"""The worker's job table: every accepted request from arrival until its answer is sent.

A pure core in the manner of `broker._scheduler` (no sockets, no event loop; the clock
is injected), so its rules are tested with a fake clock (tests/test_worker_jobs.py):

* **Admission**: a request is refused at once while draining (``DRAINING``), for an
  unknown handler (``UNKNOWN_HANDLER``) or a duplicate id (``PROTOCOL``); otherwise it
  becomes a `Job` that waits in a fair, bounded queue (`FairQueue`), and when that is
  full, the job that makes room is refused ``OVERLOADED``.
* **Claims**: a job moves QUEUED → RUNNING → DONE, each step claimed under one lock,
  so exactly one party answers it — its handler, a cancel, the drain, or the hard
  timeout — whichever thread gets there first.
* **Decisions over time**: a job still waiting at its deadline is refused ``TIMEOUT``
  then (`expire`, on a timer the shell sets for `next_expiry`), or when it would
  start if that comes first; `overdue` names the running jobs past the hard timeout;
  `abandon` answers everything still held when a drain runs out of time.

The worker's shell sends the answers this table decides; handler threads take their
next job with `next_sync`. `Capacity` is what the worker announces it runs at once.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any, NamedTuple

from protocol import ErrorCode, Request

from ._fair_queue import FairQueue
from ._service import Handler

__all__ = [
    "DONE",
    "QUEUED",
    "RUNNING",
    "Capacity",
    "Job",
    "JobTable",
    "Refusal",
    "expired_refusal",
]

QUEUED, RUNNING, DONE = 0, 1, 2


class Refusal(NamedTuple):
    """Why a request is answered with an error instead of running."""

    code: ErrorCode
    message: str


class Capacity(NamedTuple):
    """What a worker runs at once, as its HELLO announces it (SPEC section 7.2)."""

    threads: int
    """Plain (``def``) requests at once: ``--concurrency`` handler threads."""
    async_slots: int
    """``async def`` requests at once beside them: ``--max-async``, or 0 without any."""
    capacity: int
    """Both together, for 1.0 clients that read only this: ``threads`` (left out when
    no plain handler is served) + ``async_slots``."""
    async_handlers: dict[str, list[str]]
    """Service name -> its ``async def`` handlers (the ones ``async_slots`` run)."""

    @classmethod
    def of(cls, handlers: Iterable[Handler], concurrency: int, max_async: int) -> Capacity:
        """The capacity of a worker serving ``handlers`` with those settings."""
        async_handlers: dict[str, list[str]] = {}
        has_sync = False
        for h in handlers:
            if h.is_async:
                async_handlers.setdefault(h.service, []).append(h.name)
            else:
                has_sync = True
        async_slots = max_async if async_handlers else 0
        return cls(
            concurrency,
            async_slots,
            (concurrency if has_sync else 0) + async_slots,
            {s: sorted(names) for s, names in sorted(async_handlers.items())},
        )

    def announced(self, draining: bool) -> Capacity:
        """What to announce now: a draining worker takes nothing, of either kind."""
        return self._replace(threads=0, async_slots=0, capacity=0) if draining else self


Reporter = Callable[["Job", float, float | None, str], None]
"""Sends a PROGRESS for a running job: ``report(job, done, total, note)``."""


class Job:
    """One accepted request, from arrival until its answer is sent.

    ``peer`` is where the answer goes (a direct client's routing id, or a broker
    link's `Via`); ``task`` is the asyncio task of a running ``async def`` handler;
    ``report`` sends a PROGRESS for it (set by the shell).
    """

    __slots__ = (
        "cancelled",
        "deadline",
        "handler",
        "peer",
        "ran",
        "report",
        "request",
        "started",
        "state",
        "task",
        "valve",
    )

    def __init__(
        self,
        peer: Hashable,
        request: Request,
        handler: Handler,
        now: float,
        report: Reporter | None = None,
    ) -> None:
        self.peer = peer
        self.request = request
        self.handler = handler
        self.deadline = now + request.ttl_ms / 1000 if request.ttl_ms else 0.0
        self.cancelled = False
        self.ran = False
        """Its handler was called (set by the runner): the job's time counts as handler time."""
        self.started = 0.0
        self.state = QUEUED
        self.task: Any = None
        self.report = report
        self.valve: Any = None
        """A stream request's credit and waiter (SPEC 7.11), set by the worker's shell
        when it takes the job; None for a plain request."""

    @property
    def key(self) -> tuple[Hashable, int]:
        return (self.peer, self.request.id)

    @property
    def trace(self) -> str:
        """The caller's W3C traceparent ("" for none)."""
        return self.request.trace

    def report_progress(self, done: float, total: float | None, note: str) -> None:
        """`worker.progress()` inside the handler: tell the caller, while it runs."""
        if self.state == RUNNING and self.report is not None:
            self.report(self, done, total, note)


def expired_refusal(target: str, waited: float, ttl_ms: int) -> Refusal:
    """The TIMEOUT for a request that waited ``waited`` seconds, past its ttl, and never
    ran (the one wording, whether it waited in the queue or behind an inline handler)."""
    return Refusal(
        ErrorCode.TIMEOUT,
        f"{target} expired after waiting {waited:.3f} s in the worker (ttl {ttl_ms} ms); "
        "it did not run",
    )


class JobTable:
    """Jobs by (peer, request id), the queues they wait in, and who may answer them.

    Thread-safe where handler threads need it (`claim`, `next_sync`, `close`); the rest
    runs on the worker's loop thread.
    """

    def __init__(
        self,
        handlers: dict[str, Handler],
        *,
        max_pending: int,
        name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handlers = handlers
        self.max_pending = max_pending
        self.name = name
        self.clock = clock
        self.jobs: dict[tuple[Hashable, int], Job] = {}
        self.reporter: Reporter | None = None
        """Given to every new job: how it reports progress (set by the worker)."""
        self.draining = False
        self.closing = False
        self.waiting: FairQueue[Job] = FairQueue(max_pending)
        """Sync jobs waiting for a handler thread (or the inline runner)."""
        self.async_waiting: FairQueue[Job] = FairQueue(max_pending)
        """``async def`` jobs waiting for one of the ``max_async`` slots."""
        self._lock = threading.Lock()
        # Handler threads block on this queue, one token per sync job put in line: a
        # SimpleQueue's get and put are C calls, far cheaper per job than a Condition's
        # wait and notify. A token may find its job taken already (made room for
        # another client's): the thread takes the next token.
        self._tokens: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._unannounced = 0
        # Waiting jobs with a deadline, soonest first, by key (not the job: a finished
        # job's arguments, arrays maybe, must not stay alive in here). Entries of jobs
        # that started are skipped when they come up; `_compact` drops them when they
        # outnumber the rest.
        self._expiries: list[tuple[float, int, tuple[Hashable, int]]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self.jobs)

    # --- arrival -------------------------------------------------------------------------

    def admit(self, peer: Hashable, req: Request, arrived: float = 0.0) -> Job | Refusal:
        """A new `Job` for ``req`` (held from now on), or why it is refused at once.
        ``arrived``: when it was read off the socket, if earlier than now (its deadline
        counts from then, SPEC section 2)."""
        if self.draining:
            return Refusal(ErrorCode.DRAINING, f"worker {self.name} is draining")
        handler = self.handlers.get(req.target)
        if handler is None:
            served = ", ".join(sorted(self.handlers))
            return Refusal(
                ErrorCode.UNKNOWN_HANDLER,
                f"no handler {req.target!r} on worker {self.name}; it serves: {served}",
            )
        if req.window and not handler.streams:
            return Refusal(
                ErrorCode.BAD_ARGUMENTS,
                f"{req.target} does not stream (it does not yield): call it with call() or "
                "submit(), or make it a generator",
            )
        key = (peer, req.id)
        if key in self.jobs:
            return Refusal(ErrorCode.PROTOCOL, f"request id {req.id} is already in flight")
        job = self.jobs[key] = Job(peer, req, handler, arrived or self.clock(), self.reporter)
        return job

    def enqueue(self, job: Job) -> Job | None:
        """Put ``job`` in line for a slot; returns the job refused to make room, if any
        (claimed already: answer it `overloaded`)."""
        if job.handler.is_async:
            refused = self.async_waiting.push(job.peer, job)
        else:
            with self._lock:
                refused = self.waiting.push(job.peer, job)
            if refused is not job:
                self._unannounced += 1
        if job.deadline and refused is not job:
            heap = self._expiries
            heapq.heappush(heap, (job.deadline, next(self._order), job.key))
            if len(heap) > 64 and len(heap) > 2 * (len(self.waiting) + len(self.async_waiting)):
                self._compact()
        if refused is not None and self.claim(refused, QUEUED):
            refused.state = DONE
            return refused
        return None

    def next_expiry(self) -> float:
        """When the soonest waiting job's deadline passes (clock time), or 0.0 if no
        waiting job has one. May name a job that started since: `expire` skips it."""
        heap = self._expiries
        return heap[0][0] if heap else 0.0

    def expire(self) -> list[Job]:
        """Claim the waiting jobs whose deadline has passed: answer them `expired` now.
        They never run (SPEC section 2: a request is answered TIMEOUT at its deadline)."""
        now = self.clock()
        heap = self._expiries
        out = []
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            job = self.jobs.get(key)
            if job is None or job.deadline != deadline:
                continue  # finished, or a later request that reused the id
            if job.state != QUEUED or not self.refuse_unstarted(job):
                continue  # started, or answered otherwise
            if job.handler.is_async:
                self.async_waiting.remove(job.peer, job)
            else:
                with self._lock:
                    self.waiting.remove(job.peer, job)
            out.append(job)
        return out

    def expired(self, job: Job, now: float) -> Refusal:
        """The TIMEOUT for ``job``, whose deadline passed before it started."""
        req = job.request
        return expired_refusal(req.target, now - (job.deadline - req.ttl_ms / 1000), req.ttl_ms)

    def _compact(self) -> None:
        """Rebuild the expiry heap from the jobs still waiting (amortised O(1) a job)."""
        jobs = self.jobs
        live = [
            e for e in self._expiries if (j := jobs.get(e[2])) is not None and j.state == QUEUED
        ]
        heapq.heapify(live)
        self._expiries = live

    def overloaded(self) -> Refusal:
        return Refusal(
            ErrorCode.OVERLOADED,
            f"worker {self.name} has {self.max_pending} requests waiting (--max-pending) "
            "and this client sent the most of them: retry later, or add workers",
        )

    # --- claims --------------------------------------------------------------------------

    def claim(self, job: Job, expected: int) -> bool:
        """Move ``job`` from ``expected`` to the next state if nobody else did first.

        The one who claims QUEUED → RUNNING runs it (``started`` is set); the one who
        claims RUNNING → DONE answers it. Any thread.
        """
        with self._lock:
            if job.state != expected:
                return False
            if expected == QUEUED:
                job.state = RUNNING
                job.started = self.clock()
            else:
                job.state = DONE
            return True

    def refuse_unstarted(self, job: Job) -> bool:
        """Claim a job that has not started, to answer it without running it."""
        if self.claim(job, QUEUED):
            job.state = DONE
            return True
        return False

    def next_sync(self) -> Job | None:
        """A handler thread's next job, fairly chosen; blocks; None once closing."""
        get = self._tokens.get
        while get():
            with self._lock:
                job = self.waiting.pop()
            if job is not None:
                return job
        return None

    def wake(self) -> None:
        """Let handler threads take the sync jobs put in line since the last call (once
        per batch, not per job: a woken thread competes for the GIL at once)."""
        put = self._tokens.put
        for _ in range(self._unannounced):
            put(True)
        self._unannounced = 0

    def close(self, threads: int) -> None:
        """The ``threads`` handler threads return from `next_sync`."""
        self.closing = True
        for _ in range(threads):
            self._tokens.put(False)

    # --- answers -------------------------------------------------------------------------

    def refusal_on_start(self, job: Job) -> Refusal | None:
        """Why a job that just got a slot must not run (cancelled, expired), or None."""
        if job.cancelled:
            return Refusal(ErrorCode.CANCELLED, "cancelled")
        if job.deadline and job.started > job.deadline:
            return self.expired(job, job.started)
        return None

    def cancel(self, peer: Hashable, rid: int) -> Job | None:
        """``peer`` gave up on ``rid``: flag it (a running handler sees `cancelled`).

        Returns the job if it should be answered CANCELLED now (an ``async def`` job
        that had not started); a waiting sync job is answered by the thread that picks
        it up, a running one by its handler.
        """
        job = self.jobs.get((peer, rid))
        if job is None:
            return None  # already answered: nothing to cancel
        job.cancelled = True
        if job.task is not None:
            # Not started yet (its task had no turn): answer it now, the task returns
            # at once; started: cancelling the task ends the handler with CANCELLED.
            started = not self.refuse_unstarted(job)
            job.task.cancel()
            return None if started else job
        if job.handler.is_async and self.refuse_unstarted(job):
            self.async_waiting.remove(peer, job)
            return job
        return None

    def forget_peer(self, peer: Hashable) -> int:
        """``peer`` said DISCONNECT: drop its waiting jobs unanswered (it is gone) and
        flag its running ones cancelled. Returns how many were dropped."""
        dropped = 0
        for job in [j for j in self.jobs.values() if j.peer == peer]:
            job.cancelled = True
            if job.task is not None:
                if self.refuse_unstarted(job):  # its task had no turn yet: drop it
                    self.jobs.pop(job.key, None)
                    dropped += 1
                job.task.cancel()
            elif self.refuse_unstarted(job):
                if job.handler.is_async:
                    self.async_waiting.remove(peer, job)
                else:
                    with self._lock:
                        self.waiting.remove(peer, job)
                self.jobs.pop(job.key, None)
                dropped += 1
        return dropped

    def finish(self, job: Job) -> bool:
        """``job``'s final answer is being sent: forget it. False if it was already
        answered (a late result after the hard timeout or the drain answered it)."""
        return self.jobs.pop(job.key, None) is not None

    # --- decisions over time -------------------------------------------------------------

    def overdue(self, limit: float) -> list[Job]:
        """Running sync jobs that have run longer than ``limit`` seconds (streams run as
        long as their consumer reads: the hard timeout is not theirs, SPEC 7.11)."""
        now = self.clock()
        return [
            job
            for job in self.jobs.values()
            if job.state == RUNNING
            and not job.handler.is_async
            and not job.request.window
            and now - job.started > limit
        ]

    def streams_of(self, peer: Hashable) -> list[Job]:
        """``peer``'s stream jobs (to wake when they are cancelled, or probe its link)."""
        return [j for j in self.jobs.values() if j.request.window and j.peer == peer]

    def unstarted_sync(self) -> list[Job]:
        """Claim every waiting sync job (its thread is stuck): answer them DRAINING."""
        return [
            job
            for job in list(self.jobs.values())
            if not job.handler.is_async and self.refuse_unstarted(job)
        ]

    def abandon(self, why: str) -> list[tuple[Job, Refusal, bool]]:
        """Claim everything still held (a drain ran out of time).

        Returns (job, refusal, was_running): unstarted jobs are answered DRAINING (the
        client re-sends them elsewhere), running ones WORKER_LOST.
        """
        out = []
        for job in list(self.jobs.values()):
            if self.refuse_unstarted(job):
                refusal = Refusal(ErrorCode.DRAINING, f"worker {self.name} stopped: {why}")
                out.append((job, refusal, False))
            elif self.claim(job, RUNNING):
                refusal = Refusal(ErrorCode.WORKER_LOST, f"worker {self.name} gave up on it: {why}")
                out.append((job, refusal, True))
        return out
