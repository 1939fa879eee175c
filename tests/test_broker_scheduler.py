"""The broker's scheduler alone: a pure state machine driven by method calls and a fake clock."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from broker import Scheduler, _scheduler
from broker._scheduler import DONE, IN_FLIGHT, QUEUED, Answer, CancelAt, Dispatch, WorkerRecord
from protocol import ErrorCode


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(**kw: Any) -> tuple[Scheduler, Clock]:
    clock = Clock()
    return Scheduler(clock=clock, **kw), clock


def take(s: Scheduler) -> list[Any]:
    out, s.outbox[:] = list(s.outbox), []
    return out


def hello(s: Scheduler, wid: bytes, services: dict[str, list[str]], capacity: int = 1) -> None:
    s.register(wid, services=services, capacity=capacity, heartbeat=1.0, name=wid.decode())


def sent(cmds: list[Any]) -> list[tuple[bytes, int]]:
    """(worker, request id) of each Dispatch."""
    return [(c.worker, c.job.id) for c in cmds if isinstance(c, Dispatch)]


def answers(cmds: list[Any]) -> list[tuple[int, ErrorCode]]:
    return [(c.job.id, c.code) for c in cmds if isinstance(c, Answer)]


C = b"client-1"


def test_routes_by_service_to_workers_with_credit() -> None:
    s, _ = make()
    hello(s, b"a1", {"A": ["x"]})
    hello(s, b"b1", {"B": ["x"]})
    s.ready(b"a1", 1)
    s.ready(b"b1", 1)
    s.submit(C, 1, "B.x", 0, None)
    s.submit(C, 2, "A.x", 0, None)
    s.submit(C, 3, "A.x", 0, None)  # a1 has no credit left: queued
    assert sent(take(s)) == [(b"b1", 1), (b"a1", 2)]
    assert s.queue_depths() == {"A": 1}
    assert s.finish(b"a1", C, 2)
    assert take(s) == []  # the reply alone gives no credit: READY does
    s.ready(b"a1", 1)
    assert sent(take(s)) == [(b"a1", 3)]
    assert s.queue_depths() == {}


def test_least_recently_used_worker_first() -> None:
    s, _ = make()
    for w in (b"w1", b"w2", b"w3"):
        hello(s, w, {"A": ["x"]}, capacity=5)
        s.ready(w, 5)
    for rid in range(1, 7):
        s.submit(C, rid, "A.x", 0, None)
    order = [w for w, _ in sent(take(s))]
    assert order == [b"w1", b"w2", b"w3", b"w1", b"w2", b"w3"]
    # w2 gets credit back after the others were used: it is still behind them in line.
    s.ready(b"w2", 1)
    s.submit(C, 7, "A.x", 0, None)
    assert sent(take(s)) == [(b"w1", 7)]


def test_credit_is_exact_no_prefetch() -> None:
    s, _ = make()
    hello(s, b"w", {"A": ["x"]}, capacity=2)
    s.ready(b"w", 2)
    for rid in range(1, 6):
        s.submit(C, rid, "A.x", 0, None)
    assert sent(take(s)) == [(b"w", 1), (b"w", 2)]
    assert s.workers[b"w"].credit == 0
    assert s.queue_depths() == {"A": 3}
    # An idle second worker takes the queue head at once: nothing waits behind w.
    hello(s, b"v", {"A": ["x"]})
    s.ready(b"v", 1)
    assert sent(take(s)) == [(b"v", 3)]


def test_ready_feeds_oldest_request_across_services() -> None:
    s, clock = make()
    hello(s, b"ab", {"A": ["x"], "B": ["x"]})
    s.submit(C, 1, "B.x", 0, None)
    clock.advance(0.1)
    s.submit(C, 2, "A.x", 0, None)
    s.ready(b"ab", 1)
    assert sent(take(s)) == [(b"ab", 1)]


def test_bounded_queue_answers_overloaded_at_once() -> None:
    s, _ = make(max_queue=2)
    hello(s, b"w", {"A": ["x"]})
    s.ready(b"w", 1)
    for rid in range(1, 5):
        s.submit(C, rid, "A.x", 0, None)
    cmds = take(s)
    assert sent(cmds) == [(b"w", 1)]
    assert answers(cmds) == [(4, ErrorCode.OVERLOADED)]
    assert s.queue_depths() == {"A": 2}
    assert s.counters["overloaded"] == 1


def test_ttl_expiry_in_queue_answers_timeout_and_never_runs() -> None:
    s, clock = make()
    hello(s, b"w", {"A": ["x"]})
    s.submit(C, 1, "A.x", 500, None)
    s.submit(C, 2, "A.x", 0, None)  # no deadline
    clock.advance(0.4)
    s.tick()
    assert take(s) == []
    clock.advance(0.2)
    assert s.next_wakeup() is not None
    s.tick()
    assert answers(take(s)) == [(1, ErrorCode.TIMEOUT)]
    s.ready(b"w", 5)
    assert sent(take(s)) == [(b"w", 2)]  # 1 never ran


def test_expired_head_is_skipped_even_between_ticks() -> None:
    s, clock = make()
    hello(s, b"w", {"A": ["x"]})
    s.submit(C, 1, "A.x", 100, None)
    s.submit(C, 2, "A.x", 10_000, None)
    clock.advance(0.2)  # no tick: the dispatch itself notices
    s.ready(b"w", 2)
    cmds = take(s)
    assert answers(cmds) == [(1, ErrorCode.TIMEOUT)]
    assert sent(cmds) == [(b"w", 2)]


def test_no_worker_for_a_known_service_answers_no_workers_at_ttl() -> None:
    s, clock = make()
    hello(s, b"w", {"A": ["x"]})
    s.remove(b"w", "gone")
    s.submit(C, 1, "A.x", 1000, None)
    clock.advance(2)
    s.tick()
    assert answers(take(s)) == [(1, ErrorCode.NO_WORKERS)]


def test_unknown_handler_and_unknown_service_after_grace() -> None:
    s, clock = make(grace=3.0)
    s.submit(C, 1, "Z.x", 0, None)  # within grace: waits for a worker of Z
    assert take(s) == []
    assert s.queue_depths() == {"Z": 1}
    hello(s, b"w", {"A": ["x"]})
    s.submit(C, 2, "A.nope", 0, None)
    assert answers(take(s)) == [(2, ErrorCode.UNKNOWN_HANDLER)]
    clock.advance(5)
    s.submit(C, 3, "Q.x", 0, None)
    (answer,) = take(s)
    assert answer.code == ErrorCode.UNKNOWN_HANDLER
    assert "A.x" in answer.message


def test_expired_worker_work_is_requeued_and_late_reply_dropped() -> None:
    s, clock = make()
    hello(s, b"w1", {"A": ["x"]})
    hello(s, b"w2", {"A": ["x"]})
    s.ready(b"w1", 1)
    s.submit(C, 1, "A.x", 0, None)
    assert sent(take(s)) == [(b"w1", 1)]
    clock.advance(2.0)
    s.heard(b"w2")
    clock.advance(1.5)  # w1 silent 3.5 s > 3 heartbeats
    s.tick()
    assert b"w1" not in s.workers
    assert s.counters["requeued"] == 1
    s.ready(b"w2", 1)
    assert sent(take(s)) == [(b"w2", 1)]
    assert not s.finish(b"w1", C, 1)  # the frozen worker wakes up: dropped
    assert s.counters["late_replies"] == 1
    assert s.finish(b"w2", C, 1)
    assert not s.finish(b"w2", C, 1)  # never two answers for one request


def test_delivery_cap_answers_worker_lost() -> None:
    s, _ = make(max_deliveries=3)
    s.submit(C, 1, "A.x", 0, None)
    for n in range(3):
        wid = b"w%d" % n
        hello(s, wid, {"A": ["x"]})
        s.ready(wid, 1)
        assert sent(take(s)) == [(wid, 1)]
        s.remove(wid, "killed")
    assert answers(take(s)) == [(1, ErrorCode.WORKER_LOST)]
    assert s.jobs == {}


def test_refusal_requeues_without_counting_a_delivery() -> None:
    s, _ = make(max_deliveries=1)
    hello(s, b"w1", {"A": ["x"]})
    hello(s, b"w2", {"A": ["x"]})
    s.ready(b"w1", 1)
    s.submit(C, 1, "A.x", 0, None)
    take(s)
    s.refused(b"w1", C, 1)
    assert s.workers[b"w1"].credit == 0
    s.ready(b"w2", 1)
    assert sent(take(s)) == [(b"w2", 1)]
    s.remove(b"w2", "killed")  # first real delivery lost: cap 1 reached
    assert answers(take(s)) == [(1, ErrorCode.WORKER_LOST)]


def test_graceful_disconnect_gets_no_new_work_but_replies_pass() -> None:
    s, _ = make()
    hello(s, b"w", {"A": ["x"]}, capacity=2)
    s.ready(b"w", 2)
    s.submit(C, 1, "A.x", 0, None)
    take(s)
    s.disconnect(b"w")
    s.ready(b"w", 5)  # ignored while draining
    s.submit(C, 2, "A.x", 0, None)
    assert take(s) == []
    assert s.finish(b"w", C, 1)
    assert s.capacity == 0
    assert s.queue_depths() == {"A": 1}


def test_threads_and_async_slots_add_up_over_ready_workers() -> None:
    s, _ = make()
    s.register(
        b"a",
        services={"A": ["x", "y"]},
        capacity=101,
        heartbeat=1.0,
        threads=1,
        async_slots=100,
        async_handlers={"A": ["y"]},
    )
    s.register(
        b"b",
        services={"A": ["x", "y"], "B": ["z"]},
        capacity=6,
        heartbeat=1.0,
        threads=2,
        async_slots=4,
        async_handlers={"A": ["y"], "B": ["z"]},
    )
    hello(s, b"old", {"A": ["x"]}, capacity=3)  # a 1.0 worker: all of it counts as threads
    assert (s.capacity, s.threads, s.async_slots) == (110, 6, 104)
    assert s.async_handlers() == {"A": ["y"], "B": ["z"]}
    s.disconnect(b"b")  # draining: no longer counted
    assert (s.capacity, s.threads, s.async_slots) == (104, 4, 100)
    assert s.async_handlers() == {"A": ["y"]}


def test_cancel_and_client_disconnect_drop_queued_work() -> None:
    s, _ = make()
    hello(s, b"w", {"A": ["x"]})
    s.ready(b"w", 1)
    for rid in (1, 2, 3):
        s.submit(C, rid, "A.x", 0, None)
    s.submit(b"other", 9, "A.x", 0, None)
    take(s)
    s.cancel(C, 2)
    s.cancel(C, 1)  # in flight: its worker is told
    assert [(type(c), c.job.id) for c in take(s)] == [(CancelAt, 1)]
    s.forget_client(C)
    assert [(type(c), c.job.id) for c in take(s)] == [(CancelAt, 1)]
    assert s.queue_depths() == {"A": 1}  # only the other client's
    assert s.finish(b"w", C, 1)
    s.ready(b"w", 1)
    assert sent(take(s)) == [(b"w", 9)]


def test_drain_answers_queued_draining_and_refuses_new() -> None:
    s, _ = make()
    hello(s, b"w", {"A": ["x"]})
    s.ready(b"w", 1)
    s.submit(C, 1, "A.x", 0, None)
    s.submit(C, 2, "A.x", 0, None)
    take(s)
    s.drain()
    s.submit(C, 3, "A.x", 0, None)
    assert answers(take(s)) == [(2, ErrorCode.DRAINING), (3, ErrorCode.DRAINING)]
    assert s.finish(b"w", C, 1)
    s.abandon("bye")
    assert take(s) == []


def test_reregistration_resets_credit_keeps_in_flight() -> None:
    s, _ = make()
    hello(s, b"w", {"A": ["x"]}, capacity=3)
    s.ready(b"w", 3)
    s.submit(C, 1, "A.x", 0, None)
    take(s)
    hello(s, b"w", {"A": ["x"]}, capacity=3)
    assert s.workers[b"w"].credit == 0
    s.submit(C, 2, "A.x", 0, None)
    assert take(s) == []
    assert s.finish(b"w", C, 1)
    assert s.status()["totals"]["in_flight"] == 0


def test_status_lists_workers_queues_and_totals() -> None:
    s, clock = make()
    hello(s, b"w", {"A": ["x", "y"]}, capacity=2)
    s.ready(b"w", 1)
    s.submit(C, 1, "A.x", 0, None)
    s.submit(C, 2, "A.y", 0, None)
    clock.advance(0.5)
    st_ = s.status()
    (w,) = st_["workers"]
    assert w["services"] == {"A": ["x", "y"]}
    assert (w["credit"], w["in_flight"], w["last_seen"]) == (0, 1, 0.5)
    assert st_["queues"] == {"A": 1}
    assert st_["totals"]["workers"] == 1
    assert st_["totals"]["queued"] == 1
    assert s.services() == {"A": ["x", "y"]}


# --- random sequences of events: nothing lost, nothing doubled, credit never negative --------

WORKERS = {
    b"a1": {"A": ["x"]},
    b"a2": {"A": ["x", "y"]},
    b"b1": {"B": ["x"]},
    b"ab": {"A": ["x"], "B": ["x"]},
}
CLIENTS = [b"c1", b"c2"]


class SchedulerMachine(RuleBasedStateMachine):
    """Drives a scheduler through random events, playing the workers and clients."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.s = Scheduler(max_queue=4, max_deliveries=2, grace=1e9, clock=self.clock)
        self.rid = 0
        self.submitted: set[tuple[bytes, int]] = set()
        self.outcomes: Counter[tuple[bytes, int]] = Counter()
        self.cancelled: set[tuple[bytes, int]] = set()
        # What each simulated worker holds and the credit it has granted but not seen used.
        self.held: dict[bytes, set[tuple[bytes, int]]] = {w: set() for w in WORKERS}
        # Requests a removed worker still runs: its replies come late and must be dropped.
        self.stale: set[tuple[bytes, tuple[bytes, int]]] = set()
        self.granted: dict[bytes, int] = dict.fromkeys(WORKERS, 0)

    def _collect(self) -> None:
        for cmd in take(self.s):
            if isinstance(cmd, Dispatch):
                key = cmd.job.key
                w = cmd.worker
                assert self.granted[w] > 0, "sent to a worker without credit"
                self.granted[w] -= 1
                assert key not in self.held[w]
                assert not any(key in h for h in self.held.values() if h is not self.held[w])
                self.held[w].add(key)
                assert cmd.job.target in {f"{s}.{h}" for s, hs in WORKERS[w].items() for h in hs}, (
                    "routed to a worker that does not serve it"
                )
            elif isinstance(cmd, Answer):
                self.outcomes[cmd.job.key] += 1
            else:
                assert isinstance(cmd, CancelAt)
                assert cmd.job.key in self.held[cmd.worker]

    @rule(
        w=st.sampled_from(sorted(WORKERS)),
        heartbeat=st.sampled_from([1.0, 1.0, 0.5]),
        threads=st.sampled_from([0, 1, 2]),
        async_slots=st.sampled_from([0, 3]),
    )
    def register(self, w: bytes, heartbeat: float, threads: int, async_slots: int) -> None:
        services = WORKERS[w]
        first = next(iter(services))
        self.s.register(
            w,
            services=services,
            capacity=2,
            heartbeat=heartbeat,
            threads=threads,
            async_slots=async_slots,
            async_handlers={first: services[first][:1]} if async_slots else {},
        )
        self.granted[w] = 0
        self._collect()

    @rule(w=st.sampled_from(sorted(WORKERS)), n=st.integers(1, 3))
    def ready(self, w: bytes, n: int) -> None:
        if self.s.ready(w, n) and not self.s.workers[w].draining:
            self.granted[w] += n
        self._collect()

    @rule(
        c=st.sampled_from(CLIENTS),
        name=st.sampled_from(["A.x", "A.y", "B.x", "C.x"]),
        ttl=st.sampled_from([0, 0, 500, 3000]),
    )
    def submit(self, c: bytes, name: str, ttl: int) -> None:
        self.rid += 1
        self.submitted.add((c, self.rid))
        self.s.submit(c, self.rid, name, ttl, None)
        self._collect()

    @precondition(lambda self: any(self.held.values()))
    @rule(data=st.data(), refuse=st.booleans())
    def worker_answers(self, data: st.DataObject, refuse: bool) -> None:
        w = data.draw(st.sampled_from(sorted(w for w, h in self.held.items() if h)))
        key = data.draw(st.sampled_from(sorted(self.held[w])))
        self.held[w].discard(key)
        if refuse:
            if w in self.s.workers:
                self.granted[w] = 0
            self.s.refused(w, *key)
        elif self.s.finish(w, *key):
            self.outcomes[key] += 1
        self._collect()

    @rule(w=st.sampled_from(sorted(WORKERS)))
    def disconnect(self, w: bytes) -> None:
        self.s.disconnect(w)
        self._collect()

    @rule(w=st.sampled_from(sorted(WORKERS)))
    def remove(self, w: bytes) -> None:
        self.s.remove(w, "killed")
        self._forget(w)
        self._collect()

    def _forget(self, w: bytes) -> None:
        """The scheduler dropped ``w``: what it runs can only come back late."""
        self.granted[w] = 0  # a worker that comes back registers afresh
        self.stale.update((w, key) for key in self.held[w])
        self.held[w] = set()

    @precondition(lambda self: self.stale)
    @rule(data=st.data())
    def late_reply(self, data: st.DataObject) -> None:
        w, key = data.draw(st.sampled_from(sorted(self.stale)))
        self.stale.discard((w, key))
        if key not in self.held[w]:  # (the same id held again by w is a new delivery)
            assert not self.s.finish(w, *key)
        self._collect()

    @precondition(lambda self: self.submitted)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.submitted)))
        self.s.cancel(*key)
        self.cancelled.add(key)
        self._collect()

    @rule(c=st.sampled_from(CLIENTS))
    def client_leaves(self, c: bytes) -> None:
        self.s.forget_client(c)
        self.cancelled.update(k for k in self.submitted if k[0] == c)
        self._collect()

    @rule(dt=st.sampled_from([0.1, 0.6, 1.5, 4.0]), data=st.data())
    def time_passes(self, dt: float, data: st.DataObject) -> None:
        self.clock.advance(dt)
        if dt < 4.0:  # live workers keep talking, except across long gaps; some fall silent
            quiet = data.draw(st.sets(st.sampled_from(sorted(WORKERS))))
            for w in self.s.workers:
                if w not in quiet:
                    self.s.heard(w)
        seen = {w: (r.last_seen, r.liveness) for w, r in self.s.workers.items()}
        self.s.tick()
        now = self.clock.now
        for w, (last, liveness) in seen.items():  # the silent ones expire, and they alone
            assert (w not in self.s.workers) == (now - last > liveness), w
        for w in seen.keys() - set(self.s.workers):
            self._forget(w)
        self._collect()

    @invariant()
    def nothing_doubled_nothing_lost(self) -> None:
        s = self.s
        assert all(n == 1 for n in self.outcomes.values()), self.outcomes
        for key in self.submitted:
            if self.outcomes[key] == 0 and key not in self.cancelled:
                job = s.jobs.get(key)
                assert job is not None, f"request {key} lost"
                assert job.state in (QUEUED, IN_FLIGHT)
        for key, job in s.jobs.items():
            assert job.key == key
            assert job.state != DONE
            assert self.outcomes[key] == 0

    @invariant()
    def credit_and_queues_consistent(self) -> None:
        s = self.s
        for w in s.workers.values():
            assert w.credit >= 0
            assert w.credit <= self.granted[w.id]
            if w.draining:
                assert w.credit == 0
            for key, job in w.in_flight.items():
                assert job.state == IN_FLIGHT
                assert job.worker == w.id
                assert s.jobs[key] is job
        queued = sum(1 for j in s.jobs.values() if j.state == QUEUED)
        assert queued == sum(s.queue_depths().values())
        in_flight = sum(1 for j in s.jobs.values() if j.state == IN_FLIGHT)
        assert in_flight == s.in_flight

    @invariant()
    def totals_are_those_of_the_serving_workers(self) -> None:
        s = self.s
        serving = [w for w in s.workers.values() if not w.draining]
        assert s.capacity == sum(w.capacity for w in serving)
        assert s.threads == sum(w.threads or w.capacity for w in serving)
        assert s.async_slots == sum(w.async_slots for w in serving)
        assert s.in_flight == sum(len(w.in_flight) for w in s.workers.values())
        for got, field in ((s.services(), "services"), (s.async_handlers(), "async_handlers")):
            want: dict[str, set[str]] = {}
            for w in serving:
                for service, handlers in getattr(w, field).items():
                    want.setdefault(service, set()).update(handlers)
            assert got == {k: sorted(v) for k, v in sorted(want.items())}

    @invariant()
    def workers_stand_in_the_order_they_were_heard(self) -> None:
        s = self.s
        queued = [w for queue in s._silence.values() for w in queue.values()]
        assert sorted(w.id for w in queued) == sorted(s.workers)
        for liveness, queue in s._silence.items():
            assert queue
            seen = [w.last_seen for w in queue.values()]
            assert seen == sorted(seen)
            assert all(w.liveness == liveness for w in queue.values())

    @invariant()
    def no_idle_worker_beside_a_waiting_request(self) -> None:
        s = self.s
        for job in s.jobs.values():
            if job.state != QUEUED or (job.deadline and job.deadline <= self.clock.now):
                continue
            for w in s.workers.values():
                if w.credit > 0 and job.target in w.targets:
                    # Allowed only behind an older request of the same queue (head of line).
                    q_heads = [
                        j
                        for j in s.jobs.values()
                        if j.state == QUEUED and j.service == job.service and j.seq < job.seq
                    ]
                    assert q_heads, f"{job} waits while {w.name or w.id!r} has credit"


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(max_examples=60, stateful_step_count=40)


def test_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Scheduler(max_queue=0)


# --- many workers: the heartbeat work follows what expires (module docstring) --------------------


class CountedRecord(WorkerRecord):
    """A worker record that counts the reads of its ``last_seen``: how many workers a
    `tick` looked at."""

    __slots__ = ()
    reads = 0

    def __getattribute__(self, name: str) -> Any:
        if name == "last_seen":
            CountedRecord.reads += 1
        return super().__getattribute__(name)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[[], None]], int]:
    """Workers registered from now on count; ``counted(act)``: the reads in ``act``."""
    monkeypatch.setattr(_scheduler, "WorkerRecord", CountedRecord)

    def looks(act: Callable[[], None]) -> int:
        CountedRecord.reads = 0
        act()
        return CountedRecord.reads

    return looks


def test_an_idle_broker_looks_at_one_worker_a_tick(
    counted: Callable[[Callable[[], None]], int],
) -> None:
    s, clock = make()
    wids = [b"w%04d" % i for i in range(1000)]
    for i, wid in enumerate(wids):  # they join over a second, as they would
        clock.now = 1000.0 + i / 1000
        hello(s, wid, {"A": ["x"]})
    looks = 0
    for tick in range(1, 20 * 10 + 1):  # ten seconds of ticks every 50 ms
        clock.now = 1001.0 + tick * 0.05
        for i in range(tick % 20, 1000, 20):  # each worker's PING, once a second
            s.heard(wids[i])
        looks += counted(s.tick)
    assert len(s.workers) == 1000  # heard from: none expired
    assert s.counters["workers_expired"] == 0
    assert looks == 200  # the least lately heard, once a tick: not 1,000 a tick


def test_a_tick_looks_at_the_silent_workers_and_the_first_live_one(
    counted: Callable[[Callable[[], None]], int],
) -> None:
    s, clock = make()
    early = [b"e%03d" % i for i in range(100)]
    late = [b"l%03d" % i for i in range(900)]
    for wid in early:
        hello(s, wid, {"A": ["x"]})
    clock.advance(1.0)
    for wid in late:
        hello(s, wid, {"A": ["x"]})
    clock.advance(2.0)  # silent 3 s: not more, so not expired
    assert counted(s.tick) == 1
    assert len(s.workers) == 1000
    clock.advance(0.05)
    for wid in early[:50]:
        s.heard(wid)
    assert counted(s.tick) == 50 + 1  # the silent half expires; the next one is alive
    assert set(s.workers) == set(early[:50]) | set(late)
    assert s.counters["workers_expired"] == 50


def test_workers_of_different_heartbeats_expire_each_on_its_own() -> None:
    s, clock = make()
    s.register(b"slow", services={"A": ["x"]}, capacity=1, heartbeat=5.0)
    s.register(b"fast", services={"A": ["x"]}, capacity=1, heartbeat=1.0)
    clock.advance(3.01)
    s.tick()
    assert set(s.workers) == {b"slow"}
    s.register(b"slow", services={"A": ["x"]}, capacity=1, heartbeat=1.0)  # now 1 s too
    clock.advance(3.01)
    s.tick()
    assert s.workers == {}
    assert s.next_wakeup() is None


def test_next_wakeup_is_the_earliest_silence_as_heard_now() -> None:
    s, clock = make()
    hello(s, b"a", {"A": ["x"]})
    hello(s, b"b", {"A": ["x"]})
    start = clock.now
    assert s.next_wakeup() == start + 3.0
    clock.advance(1.0)
    s.heard(b"a")
    assert s.next_wakeup() == start + 3.0  # b, silent since the start
    clock.advance(1.0)
    s.heard(b"b")
    assert s.next_wakeup() == start + 4.0  # a, heard a second in
    s.remove(b"a", "gone")
    assert s.next_wakeup() == start + 5.0
    s.remove(b"b", "gone")
    assert s.next_wakeup() is None


def test_in_flight_follows_every_way_a_request_leaves_a_worker() -> None:
    s, _ = make(max_deliveries=5)
    for w in (b"w1", b"w2", b"w3"):
        hello(s, w, {"A": ["x"]}, capacity=4)
        s.ready(w, 4)
    for rid in range(1, 10):
        s.submit(C, rid, "A.x", 0, None)
    held = {c.job.id: c.worker for c in take(s) if isinstance(c, Dispatch)}
    assert s.in_flight == 9
    assert s.finish(held[1], C, 1)
    assert s.in_flight == 8
    s.refused(held[2], C, 2)  # back to the queue, and out again to a worker with credit
    assert s.in_flight == sum(1 for j in s.jobs.values() if j.state is IN_FLIGHT)
    s.remove(b"w3", "killed")
    assert s.in_flight == sum(1 for j in s.jobs.values() if j.state is IN_FLIGHT)
    s.abandon("bye")
    assert s.in_flight == 0
