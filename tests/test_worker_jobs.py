"""The worker's job table on its own: admission, claims, deadlines and hard timeouts on a
fake clock, with no sockets and no sleeping; then a hypothesis state machine."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from protocol import ErrorCode, Request
from worker import Service
from worker._jobs import DONE, QUEUED, RUNNING, Capacity, Job, JobTable, Refusal

svc = Service("t")


@svc.handler
def work(x: int) -> int:
    return x


@svc.handler
async def later(x: int) -> int:
    return x


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def table(clock: Clock, max_pending: int = 10) -> JobTable:
    handlers = {h.target: h for h in svc.handlers.values()}
    return JobTable(handlers, max_pending=max_pending, name="w1", clock=clock)


def req(rid: int, target: str = "t.work", ttl_ms: int = 0) -> Request:
    return Request(rid, target, [rid], {}, ttl_ms=ttl_ms)


def admit(t: JobTable, peer: bytes, r: Request) -> Job:
    job = t.admit(peer, r)
    assert isinstance(job, Job)
    return job


def test_admission_refusals(clock: Clock) -> None:
    t = table(clock)
    admit(t, b"a", req(1))
    dup = t.admit(b"a", req(1))
    assert dup == Refusal(ErrorCode.PROTOCOL, "request id 1 is already in flight")
    assert isinstance(t.admit(b"b", req(1)), Job)  # the same id from another client is fine
    unknown = t.admit(b"a", req(2, "t.nope"))
    assert isinstance(unknown, Refusal)
    assert unknown.code == ErrorCode.UNKNOWN_HANDLER
    assert "t.later, t.work" in unknown.message
    t.draining = True
    assert t.admit(b"a", req(3)).code == ErrorCode.DRAINING  # type: ignore[union-attr]
    assert len(t) == 2


def test_capacity_counts_threads_and_async_slots_apart() -> None:
    both = Capacity.of(svc.handlers.values(), concurrency=1, max_async=100)
    assert both == Capacity(1, 100, 101, {"t": ["later"]})
    plain = Capacity.of([svc.handlers["work"]], concurrency=4, max_async=100)
    assert plain == Capacity(4, 0, 4, {})  # no async handler: no async slots
    # Only async handlers: the threads are still there, but run nothing a 1.0 client
    # could send, so `capacity` leaves them out.
    only_async = Capacity.of([svc.handlers["later"]], concurrency=2, max_async=7)
    assert only_async == Capacity(2, 7, 7, {"t": ["later"]})
    assert both.announced(draining=False) is both
    assert both.announced(draining=True) == Capacity(0, 0, 0, {"t": ["later"]})


def test_exactly_one_party_claims_each_step(clock: Clock) -> None:
    t = table(clock)
    job = admit(t, b"a", req(1))
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def race(name: str) -> None:
        barrier.wait()
        if t.claim(job, QUEUED):
            wins.append(name)

    threads = [threading.Thread(target=race, args=(f"t{i}",)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(wins) == 1
    assert job.state == RUNNING
    assert job.started == clock.now
    assert not t.refuse_unstarted(job)  # too late: it runs
    assert t.claim(job, RUNNING)
    assert not t.claim(job, RUNNING)  # the drain or the hard timeout lost the race
    assert job.state == DONE


def test_a_job_that_waited_past_its_deadline_does_not_run(clock: Clock) -> None:
    t = table(clock)
    job = admit(t, b"a", req(1, ttl_ms=2000))
    clock.now += 1.5
    assert t.claim(job, QUEUED)
    assert t.refusal_on_start(job) is None
    late = admit(t, b"a", req(2, ttl_ms=2000))
    clock.now += 2.5
    assert t.claim(late, QUEUED)
    refusal = t.refusal_on_start(late)
    assert refusal is not None
    assert refusal.code == ErrorCode.TIMEOUT
    assert "expired after waiting 2.500 s" in refusal.message
    never = admit(t, b"a", req(3))  # no ttl: no deadline
    clock.now += 1e6
    assert t.claim(never, QUEUED)
    assert t.refusal_on_start(never) is None


def test_waiting_jobs_are_answered_timeout_at_their_deadline(clock: Clock) -> None:
    t = table(clock)
    assert t.next_expiry() == 0.0
    short = admit(t, b"a", req(1, ttl_ms=200))
    long = admit(t, b"b", req(2, ttl_ms=5000))
    lazy = admit(t, b"c", req(3, "t.later", ttl_ms=300))  # async jobs wait too
    none = admit(t, b"c", req(4))  # no ttl: never expires
    for job in (short, long, lazy, none):
        assert t.enqueue(job) is None
    assert t.next_expiry() == pytest.approx(100.2)
    assert t.expire() == []  # not yet
    clock.now = 100.25
    assert t.expire() == [short]
    assert short.state == DONE
    refusal = t.expired(short, clock.now)
    assert refusal.code == ErrorCode.TIMEOUT
    assert "expired after waiting 0.250 s in the worker (ttl 200 ms)" in refusal.message
    assert t.next_expiry() == pytest.approx(100.3)
    clock.now = 101.0
    assert t.expire() == [lazy]
    assert list(t.async_waiting) == []
    # A job that started before its deadline is skipped, not answered twice.
    job = t.waiting.pop()
    assert job is long
    assert t.claim(long, QUEUED)
    clock.now = 200.0
    assert t.expire() == []
    assert t.next_expiry() == 0.0
    assert list(t.waiting) == [none]


def test_the_expiry_heap_stays_proportional_to_what_waits(clock: Clock) -> None:
    t = table(clock, max_pending=1000)
    for rid in range(1, 5001):  # each starts at once: its heap entry goes stale
        job = admit(t, b"a", req(rid, ttl_ms=60_000))
        t.enqueue(job)
        started = t.waiting.pop()
        assert started is job
        assert t.claim(job, QUEUED)
        t.finish(job)
    assert len(t._expiries) <= 130


def test_overdue_names_running_sync_jobs_past_the_limit(clock: Clock) -> None:
    t = table(clock)
    a, b, c = (admit(t, b"a", req(i)) for i in (1, 2, 3))
    slow_async = admit(t, b"a", req(4, "t.later"))
    for job in (a, b, slow_async):
        assert t.claim(job, QUEUED)
    clock.now += 0.4
    assert t.claim(c, QUEUED)
    clock.now += 0.7
    assert t.overdue(1.0) == [a, b]  # c ran 0.7 s; async handlers are not hard-timed
    assert t.claim(a, RUNNING)
    assert t.overdue(1.0) == [b]


def test_cancel(clock: Clock) -> None:
    t = table(clock)
    waiting_async = admit(t, b"a", req(1, "t.later"))
    assert t.enqueue(waiting_async) is None
    assert t.cancel(b"a", 1) is waiting_async  # answer CANCELLED now
    assert waiting_async.state == DONE
    assert not t.async_waiting
    sync = admit(t, b"a", req(2))
    assert t.cancel(b"a", 2) is None  # flagged: its thread answers when it picks it up
    assert sync.cancelled
    assert t.claim(sync, QUEUED)
    assert t.refusal_on_start(sync) == Refusal(ErrorCode.CANCELLED, "cancelled")
    assert t.cancel(b"a", 99) is None


def test_full_queue_refuses_the_hogs_newest(clock: Clock) -> None:
    t = table(clock, max_pending=2)
    hog = [admit(t, b"hog", req(i)) for i in (1, 2, 3)]
    assert t.enqueue(hog[0]) is None
    assert t.enqueue(hog[1]) is None
    assert t.enqueue(hog[2]) is hog[2]  # its own: refused, claimed for the answer
    assert hog[2].state == DONE
    light = admit(t, b"light", req(1))
    assert t.enqueue(light) is hog[1]  # the hog's newest makes room
    assert t.overloaded().code == ErrorCode.OVERLOADED
    t.wake()  # the loop does this once per batch
    assert [t.next_sync(), t.next_sync()] == [hog[0], light]


def test_abandon_and_finish(clock: Clock) -> None:
    t = table(clock)
    waiting = admit(t, b"a", req(1))
    running = admit(t, b"a", req(2))
    assert t.claim(running, QUEUED)
    out = t.abandon("drain timeout (1 s) passed")
    assert [(j, r.code, was) for j, r, was in out] == [
        (waiting, ErrorCode.DRAINING, False),
        (running, ErrorCode.WORKER_LOST, True),
    ]
    assert t.finish(waiting)
    assert not t.finish(waiting)  # a late second answer is dropped
    assert not t.claim(running, RUNNING)  # its handler's late result loses


def test_next_sync_returns_none_once_closed(clock: Clock) -> None:
    t = table(clock)
    got: list[Job | None] = []
    th = threading.Thread(target=lambda: got.append(t.next_sync()))
    th.start()
    t.close(1)
    th.join(5)
    assert got == [None]


class JobTableMachine(RuleBasedStateMachine):
    """Random arrivals, starts, finishes, cancels and time: every admitted request is
    answered exactly once, and nothing waits beyond the bound."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.t = table(self.clock, max_pending=4)
        self.answered: Counter[tuple[bytes, int]] = Counter()
        self.running: list[Job] = []
        self.next_id = 0

    def answer(self, job: Job) -> None:
        self.answered[job.key] += 1
        self.t.finish(job)

    @rule(
        peer=st.sampled_from([b"a", b"b", b"c"]),
        async_=st.booleans(),
        ttl=st.sampled_from([0, 500]),
    )
    def arrive(self, peer: bytes, async_: bool, ttl: int) -> None:
        self.next_id += 1
        job = self.t.admit(peer, req(self.next_id, "t.later" if async_ else "t.work", ttl))
        if isinstance(job, Refusal):
            assert self.t.draining
            return
        refused = self.t.enqueue(job)
        if refused is not None:
            assert refused.state == DONE
            self.answer(refused)

    @rule(async_=st.booleans())
    def start_next(self, async_: bool) -> None:
        queue = self.t.async_waiting if async_ else self.t.waiting
        job = queue.pop()
        if job is None or not self.t.claim(job, QUEUED):
            return  # nothing waits, or it was answered meanwhile (cancel, drain)
        if self.t.refusal_on_start(job) is not None:
            job.state = DONE
            self.answer(job)
        else:
            self.running.append(job)

    @rule(data=st.data())
    def finish_one(self, data: st.DataObject) -> None:
        if self.running:
            job = self.running.pop(data.draw(st.integers(0, len(self.running) - 1)))
            if self.t.claim(job, RUNNING):  # else the hard timeout or the drain answered it
                self.answer(job)

    @rule(data=st.data())
    def cancel_one(self, data: st.DataObject) -> None:
        if self.t.jobs:
            peer, rid = data.draw(st.sampled_from(sorted(self.t.jobs, key=repr)))
            job = self.t.cancel(peer, rid)
            if job is not None:
                self.answer(job)

    @rule(seconds=st.floats(0, 1))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(peer=st.sampled_from([b"a", b"b", b"c"]))
    def client_leaves(self, peer: bytes) -> None:
        held = {k for k, j in self.t.jobs.items() if j.peer == peer and j.state == QUEUED}
        self.t.forget_peer(peer)
        for key in held:  # dropped unanswered: the client is gone
            assert key not in self.t.jobs
            self.answered[key] += 1
        assert all(j.cancelled for j in self.t.jobs.values() if j.peer == peer)

    @rule()
    def expiry_timer(self) -> None:
        for job in self.t.expire():
            assert job.state == DONE
            self.answer(job)
        at = self.t.next_expiry()
        assert not at or at > self.clock.now

    @rule()
    def hard_timeout(self) -> None:
        for job in self.t.overdue(0.8):
            if self.t.claim(job, RUNNING):
                self.answer(job)
                for other in self.t.unstarted_sync():
                    self.answer(other)

    @rule()
    def drain_gives_up(self) -> None:
        self.t.draining = True
        for job, _refusal, _was_running in self.t.abandon("test"):
            self.answer(job)

    @invariant()
    def bounded_and_answered_once(self) -> None:
        assert len(self.t.waiting) <= 4
        assert len(self.t.async_waiting) <= 4
        assert all(n == 1 for n in self.answered.values()), self.answered
        assert not set(self.t.jobs) & set(self.answered)  # answered means forgotten

    def teardown(self) -> None:
        # Whatever is still held can always be answered, once.
        for job, _refusal, _was_running in self.t.abandon("end"):
            self.answer(job)
        assert not self.t.jobs
        assert all(n == 1 for n in self.answered.values())


TestJobTableMachine = JobTableMachine.TestCase
TestJobTableMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_a_finished_job_is_not_kept_alive_by_its_deadline(clock: Clock) -> None:
    import gc
    import weakref

    class Payload:  # stands for a request's numpy arrays
        pass

    t = table(clock)
    payload = Payload()
    job = t.admit(b"a", Request(1, "t.work", [payload], {}, ttl_ms=60_000))
    assert isinstance(job, Job)
    t.enqueue(job)
    assert t.waiting.pop() is job
    assert t.claim(job, QUEUED)
    assert t.claim(job, RUNNING)
    t.finish(job)
    alive = weakref.ref(payload)
    del job, payload
    gc.collect()
    assert alive() is None  # the expiry heap holds a key, not the job
    assert t.next_expiry() > 0  # its entry is still there, to be skipped when due
    clock.now += 61
    assert t.expire() == []
