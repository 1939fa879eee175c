"""The client's dispatch rules alone: a pure state machine driven by method calls and a fake clock.

No sockets: each test plays the workers (HELLO, replies, errors, silence) and carries
out the commands the Dispatcher leaves in its outbox, the way the shell
(`client._core`) does.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from client import NoWorkers, Overloaded, RemoteError, Timeout, UnknownHandler, WorkerLost
from client._dispatch import (
    _MAX_TARGETS,
    LIVENESS,
    OVERLOAD_REST_S,
    Call,
    Dispatcher,
    Peer,
    SendBye,
    SendCall,
    SendCancel,
    SendHello,
    SendPing,
    WakeAt,
)
from protocol import (
    CONNECTING,
    DRAINING,
    READY,
    AuthenticationError,
    Error,
    ErrorCode,
    Hello,
    Progress,
    ProtocolError,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Outcomes:
    """Records each call's completion; a second completion of one call fails the test."""

    def __init__(self) -> None:
        self.done: dict[int, tuple[Any, BaseException | None]] = {}

    def __call__(self, call: Call, value: Any, exc: BaseException | None) -> None:
        assert call.id not in self.done, f"{call} completed twice"
        self.done[call.id] = (value, exc)

    def value(self, rid: int) -> Any:
        value, exc = self.done[rid]
        assert exc is None, exc
        return value

    def error(self, rid: int) -> BaseException:
        _, exc = self.done[rid]
        assert exc is not None
        return exc


class Rig:
    """A Dispatcher, a fake clock, and the shell's half played by the test."""

    def __init__(self, *endpoints: str, prefetch: int = 0, heartbeat: float = 1.0) -> None:
        self.clock = Clock()
        self.d = Dispatcher(heartbeat=heartbeat, prefetch=prefetch, clock=self.clock)
        self.outcomes = Outcomes()
        self.peers = {ep: self.d.add_peer(Peer(ep)) for ep in endpoints}
        self.wake: float | None = None
        self.failing: set[str] = set()  # endpoints whose sends fail
        self._rid = 0

    def __getitem__(self, endpoint: str) -> Peer:
        return self.peers[endpoint]

    def take(self) -> list[Any]:
        """Carry out the outbox as the shell does (failing sends to ``failing`` peers);
        return the commands that were carried out."""
        out = self.d.outbox
        done: list[Any] = []
        i = 0
        while i < len(out):
            cmd = out[i]
            i += 1
            if type(cmd) is SendCall:
                if cmd.call.peer is not cmd.peer:
                    continue
                if cmd.peer.endpoint in self.failing:
                    del out[:i]
                    i = 0
                    self.d.unsent(cmd.peer, cmd.call)
                    continue
            elif type(cmd) is WakeAt:
                self.wake = cmd.when
            done.append(cmd)
        out.clear()
        return done

    def call(self, target: str = "A.x", timeout: float = 10.0, retries: int = 2) -> Call:
        self._rid += 1
        return Call(target, [b"frames"], self._rid, timeout, retries, None, self.outcomes)

    def submit(self, target: str = "A.x", timeout: float = 10.0, retries: int = 2) -> int:
        call = self.call(target, timeout, retries)
        self.d.submit(call)
        return call.id

    def hello(
        self,
        endpoint: str,
        services: dict[str, list[str]] | None = None,
        capacity: int = 1,
        role: str = "worker",
        *,
        threads: int = 0,
        async_slots: int = 0,
        async_handlers: dict[str, list[str]] | None = None,
    ) -> None:
        """``endpoint`` says HELLO: as a 1.0 peer (capacity only) unless ``threads``."""
        if services is None:
            services = {"A": ["x"]}
        msg = Hello(
            role=role,
            services=services,
            capacity=capacity,
            name=endpoint,
            protocol="1.1" if threads else "1.0",
            threads=threads,
            async_slots=async_slots,
            async_handlers=async_handlers or {},
        )
        self.d.hello(self[endpoint], msg)
        self.d.heard(self[endpoint])

    def hello_11(
        self,
        endpoint: str,
        threads: int,
        async_slots: int,
        services: dict[str, list[str]] | None = None,
        role: str = "worker",
    ) -> None:
        """A 1.1 peer serving A.x (plain) and A.y (async) unless told other services."""
        self.hello(
            endpoint,
            services or {"A": ["x", "y"]},
            threads + async_slots,
            role,
            threads=threads,
            async_slots=async_slots,
            async_handlers={"A": ["y"]},
        )

    def reply(self, endpoint: str, rid: int, value: Any = "ok") -> None:
        self.d.reply(self[endpoint], rid, value)
        self.d.heard(self[endpoint])

    def error(self, endpoint: str, rid: int, code: ErrorCode, message: str = "no") -> None:
        self.d.error(self[endpoint], Error(rid, code, message, code.name))
        self.d.heard(self[endpoint])

    def advance(self, seconds: float) -> list[Any]:
        """Time passes; the shell's timer fires if the Dispatcher asked for it.

        Returns the commands carried out meanwhile."""
        self.clock.advance(seconds)
        done: list[Any] = []
        while self.wake is not None and self.wake <= self.clock.now:
            self.wake = None
            self.d.on_timer()
            done += self.take()
        return done


def sent(cmds: list[Any]) -> list[tuple[str, int]]:
    """(endpoint, request id) of each SendCall carried out."""
    return [(c.peer.endpoint, c.call.id) for c in cmds if type(c) is SendCall]


def kinds(cmds: list[Any], kind: type) -> list[str]:
    return [c.peer.endpoint for c in cmds if type(c) is kind]


# --- picking a worker ----------------------------------------------------------------------------


def test_calls_wait_for_a_ready_worker_then_go() -> None:
    r = Rig("w1")
    rid = r.submit()
    assert sent(r.take()) == []
    assert r.d.queued() == 1
    r.hello("w1")
    assert sent(r.take()) == [("w1", rid)]
    r.reply("w1", rid, 42)
    assert r.outcomes.value(rid) == 42
    assert r.d.calls == {}


def test_least_outstanding_with_round_robin_among_equals() -> None:
    r = Rig("w1", "w2", "w3", prefetch=10)
    for ep in ("w1", "w2", "w3"):
        r.hello(ep)
    r.take()
    rids = [r.submit() for _ in range(6)]
    order = [ep for ep, _ in sent(r.take())]
    assert order == ["w1", "w2", "w3", "w1", "w2", "w3"]  # one each before two each
    # w2 answers both of its requests: it is now the least busy and takes the next two.
    r.reply("w2", rids[1])
    r.reply("w2", rids[4])
    r.take()
    r.submit()
    r.submit()
    assert [ep for ep, _ in sent(r.take())] == ["w2", "w2"]


def test_capacity_plus_prefetch_bounds_what_a_worker_holds() -> None:
    r = Rig("w1", prefetch=2)
    r.hello("w1", capacity=3)
    rids = [r.submit() for _ in range(7)]
    assert sent(r.take()) == [("w1", rid) for rid in rids[:5]]
    assert r.d.queued() == 2
    r.reply("w1", rids[0])
    assert sent(r.take()) == [("w1", rids[5])]


def test_plain_calls_bounded_by_threads_async_ones_by_async_slots() -> None:
    # A --concurrency 1 worker with async handlers announces capacity 101: a 1.0 client
    # would send it 101 plain calls at once, of which 100 wait behind the one thread.
    r = Rig("w1", prefetch=0)
    r.hello_11("w1", threads=1, async_slots=100)
    plain = [r.submit("A.x") for _ in range(4)]
    waits = [r.submit("A.y") for _ in range(3)]
    # The async calls do not queue behind the plain ones that wait for the thread.
    assert sent(r.take()) == [("w1", plain[0]), *(("w1", rid) for rid in waits)]
    r.reply("w1", waits[0])
    assert sent(r.take()) == []  # an async slot freed: no plain call goes for it
    r.reply("w1", plain[0])
    assert sent(r.take()) == [("w1", plain[1])]


def test_prefetch_adds_to_each_kind_apart() -> None:
    r = Rig("w1", prefetch=2)
    r.hello_11("w1", threads=1, async_slots=2)
    plain = [r.submit("A.x") for _ in range(5)]
    waits = [r.submit("A.y") for _ in range(6)]
    assert sent(r.take()) == [("w1", rid) for rid in plain[:3] + waits[:4]]
    r.error("w1", waits[0], ErrorCode.REMOTE)
    assert sent(r.take()) == [("w1", waits[4])]
    r.d.dropped(r["w1"])  # lost: what it held goes back, both kinds' counts start over
    r.take()
    assert r["w1"].async_out == set()
    r.hello_11("w1", threads=1, async_slots=2)
    again = sent(r.take())
    assert len(again) == 3 + 4
    assert {rid for _, rid in again} == set(plain[:3] + waits[1:5])


def test_a_one_oh_peer_keeps_one_bound_for_both_kinds() -> None:
    # No `threads` in its HELLO: everything it holds counts against its capacity.
    r = Rig("old", prefetch=1)
    r.hello("old", {"A": ["x", "y"]}, capacity=3)
    rids = [r.submit(t) for t in ("A.x", "A.y", "A.x", "A.y", "A.x", "A.y")]
    assert sent(r.take()) == [("old", rid) for rid in rids[:4]]
    r.reply("old", rids[1])
    assert sent(r.take()) == [("old", rids[4])]


def test_a_one_oh_peer_beside_a_one_one_peer() -> None:
    # The async handler is async at the new worker; at the old one it takes its capacity.
    r = Rig("old", "new", prefetch=0)
    r.hello("old", {"A": ["x", "y"]}, capacity=2)
    r.hello_11("new", threads=1, async_slots=2)
    r.take()
    rids = [r.submit("A.y") for _ in range(5)]
    order = sent(r.take())
    assert sorted(ep for ep, _ in order) == ["new", "new", "old", "old"]
    assert order[0][0] != order[1][0]  # round-robin among equally loaded peers
    assert r.d.queued() == 1
    x = r.submit("A.x")
    assert sent(r.take()) == [("new", x)]  # the old one is full; new has its thread
    assert r.d.calls[rids[4]].peer is None


def test_calls_queued_before_hello_go_by_their_kind_once_it_comes() -> None:
    r = Rig("w1", prefetch=0)
    plain = [r.submit("A.x") for _ in range(3)]
    waits = [r.submit("A.y") for _ in range(2)]
    assert sent(r.take()) == []
    r.hello_11("w1", threads=1, async_slots=5)
    assert sent(r.take()) == [("w1", plain[0]), ("w1", waits[0]), ("w1", waits[1])]


def test_a_broker_is_bounded_like_a_worker_by_what_it_announces() -> None:
    r = Rig("br", prefetch=0)
    r.hello_11("br", threads=2, async_slots=1, services={}, role="broker")
    rids = [r.submit("A.x") for _ in range(3)] + [r.submit("A.y") for _ in range(2)]
    assert sent(r.take()) == [("br", rid) for rid in (rids[0], rids[1], rids[3])]


def test_slots_add_up_ready_peers_by_kind() -> None:
    r = Rig("old", "new", "draining")
    assert r.d.slots() == (0, 0, frozenset())
    r.hello("old", {"A": ["x", "y"]}, capacity=3)
    r.hello_11("new", threads=2, async_slots=10)
    r.hello_11("draining", threads=4, async_slots=4)
    r.hello("draining", {"A": ["x", "y"]}, capacity=0)
    slots = r.d.slots()
    assert slots == (3 + 2, 10, frozenset({"A.y"}))
    assert (slots.for_target("A.x"), slots.for_target("A.y")) == (5, 10)
    row = r.d.info_rows(since=0)[1]
    assert (row["protocol"], row["threads"], row["async_slots"]) == ("1.1", 2, 10)
    assert row["async_handlers"] == {"A": ["y"]}
    assert r.d.info_rows(since=0)[0]["protocol"] == "1.0"


def test_a_call_goes_only_to_a_worker_serving_its_handler() -> None:
    r = Rig("a", "b", prefetch=5)
    r.hello("a", {"A": ["x"]})
    r.hello("b", {"A": ["x", "y"], "B": ["x"]})
    r.take()
    y = [r.submit("A.y") for _ in range(3)]
    bx = r.submit("B.x")
    assert sent(r.take()) == [("b", y[0]), ("b", y[1]), ("b", y[2]), ("b", bx)]


def test_a_broker_serves_every_handler() -> None:
    r = Rig("br")
    r.hello("br", {}, capacity=4, role="broker")
    rid = r.submit("Z.anything")
    assert sent(r.take()) == [("br", rid)]


def test_unknown_handler_fails_once_every_peer_said_hello() -> None:
    r = Rig("w1", "w2")
    r.hello("w1", {"A": ["x"]})
    rid = r.submit("A.nope")
    r.take()
    assert rid not in r.outcomes.done  # w2 may serve it: wait
    behind = r.submit("A.x")
    r.hello("w2", {"A": ["x", "z"]})
    r.take()
    exc = r.outcomes.error(rid)
    assert isinstance(exc, UnknownHandler)
    assert "no worker serves 'A.nope'; served: A.x, A.z" in str(exc)
    assert r.d.calls[behind].peer is not None  # the call behind it went out


def test_a_peer_that_is_not_a_worker_or_broker_is_ignored() -> None:
    r = Rig("c")
    r.hello("c", role="client")
    assert r["c"].state is CONNECTING
    assert r.d.capacity() == 0


# --- deadlines -----------------------------------------------------------------------------------


def test_held_call_times_out_at_its_deadline_and_its_worker_is_told() -> None:
    r = Rig("w1")
    r.hello("w1")
    rid = r.submit(timeout=0.5)
    cmds = r.take()
    assert WakeAt(1000.5) in cmds
    assert r.advance(0.25) == []
    assert rid not in r.outcomes.done
    cmds = r.advance(0.25)
    assert [c for c in cmds if type(c) is SendCancel] == [SendCancel(r["w1"], rid)]
    exc = r.outcomes.error(rid)
    assert isinstance(exc, Timeout)
    assert str(exc) == (
        "A.x: no reply within 0.5 s from w1 (it may still run; raise the timeout with "
        "options(timeout=...))"
    )
    r.reply("w1", rid)  # the late reply changes nothing
    assert len(r.outcomes.done) == 1
    assert r["w1"].outstanding == set()


def test_queued_call_behind_busy_workers_times_out() -> None:
    r = Rig("w1", "w2")
    r.hello("w1")
    r.hello("w2")
    r.submit()
    r.submit()
    rid = r.submit(timeout=2)
    r.take()
    r.advance(2)
    exc = r.outcomes.error(rid)
    assert isinstance(exc, Timeout)
    assert "waited 2 s for a free worker; all 2 are busy" in str(exc)


def test_nobody_ready_is_no_workers_with_a_ping_hint() -> None:
    r = Rig("tcp://h:1", "ipc:///x.sock")
    rid = r.submit(timeout=0.5)
    r.take()
    r.advance(0.6)
    exc = r.outcomes.error(rid)
    assert isinstance(exc, NoWorkers)
    assert str(exc) == (
        "A.x: no worker answered within 0.5 s (not reachable: tcp://h:1, ipc:///x.sock); "
        "is a worker running there? check with "
        "`zeromesh ping --connect tcp://h:1,ipc:///x.sock`"
    )


def test_one_timer_for_many_deadlines_earliest_first() -> None:
    r = Rig("w1")
    a = r.submit(timeout=5)
    assert [c for c in r.take() if type(c) is WakeAt] == [WakeAt(1005.0)]
    b = r.submit(timeout=10)
    assert [c for c in r.take() if type(c) is WakeAt] == []  # later: no new wake-up
    c = r.submit(timeout=1)
    assert [c for c in r.take() if type(c) is WakeAt] == [WakeAt(1001.0)]
    r.advance(1)
    assert list(r.outcomes.done) == [c]
    assert r.wake == 1005.0
    r.advance(4)
    assert list(r.outcomes.done) == [c, a]
    r.advance(5)
    assert list(r.outcomes.done) == [c, a, b]
    assert r.wake is None


# --- retries -------------------------------------------------------------------------------------


def test_lost_worker_calls_go_to_the_other_within_retries() -> None:
    r = Rig("w1", "w2")
    r.hello("w1")
    r.take()
    keep = r.submit(retries=1)
    assert sent(r.take()) == [("w1", keep)]
    r.hello("w2", capacity=5)
    r.d.dropped(r["w1"])
    assert sent(r.take()) == [("w2", keep)]
    assert r["w1"].state is CONNECTING
    r.d.dropped(r["w2"])  # the second loss: its only retry is used up
    r.take()
    exc = r.outcomes.error(keep)
    assert isinstance(exc, WorkerLost)
    assert str(exc) == (
        "A.x: worker at w2 lost (connection closed); no retries left "
        "(raise retries= to re-send more)"
    )


def test_silent_worker_is_lost_after_three_heartbeats() -> None:
    r = Rig("w1", "w2", heartbeat=1.0)
    r.hello("w1")
    r.hello("w2")
    r.take()
    rid = r.submit()
    (first,) = sent(r.take())
    other = "w2" if first[0] == "w1" else "w1"
    for _ in range(LIVENESS):
        r.clock.advance(1.0)
        r.d.heard(r[other])  # the other keeps answering its pings
        r.d.tick()
        r.take()
        assert r[first[0]].state is READY
    r.clock.advance(0.5)
    r.d.heard(r[other])
    r.d.tick()
    assert sent(r.take()) == [(other, rid)]
    assert r[first[0]].state is CONNECTING
    assert r.d.calls[rid].attempts == 2


def test_tick_pings_quiet_peers_and_greets_connecting_and_draining_ones() -> None:
    r = Rig("ready", "draining", "connecting", heartbeat=1.0)
    r.hello("ready")
    r.hello("draining", capacity=0)
    assert r["draining"].state is DRAINING
    r.take()
    r.d.tick()
    cmds = r.take()
    assert kinds(cmds, SendHello) == ["draining", "connecting"]
    assert kinds(cmds, SendPing) == []  # heard just now
    r.clock.advance(0.95)
    r.d.tick()
    assert kinds(r.take(), SendPing) == ["ready"]
    r.clock.advance(0.5)
    r.d.tick()
    assert kinds(r.take(), SendPing) == []  # pinged 0.5 s ago: not again yet


def test_worker_overloaded_rests_it_and_retries_elsewhere() -> None:
    r = Rig("w1", "w2")
    r.hello("w1")
    r.take()
    rid = r.submit(retries=1)
    assert sent(r.take()) == [("w1", rid)]
    r.error("w1", rid, ErrorCode.OVERLOADED)
    assert sent(r.take()) == []  # w1 rests; nobody else yet
    r.hello("w2")
    assert sent(r.take()) == [("w2", rid)]
    other = r.submit()
    assert sent(r.take()) == []  # w2 is full, w1 still rests
    r.advance(OVERLOAD_REST_S)
    assert r["w1"].resting_until == 0.0
    assert r.d.calls[other].peer is r["w1"]
    r.error("w2", rid, ErrorCode.OVERLOADED, "full")  # the last attempt was used
    exc = r.outcomes.error(rid)
    assert isinstance(exc, Overloaded)
    assert "A.x: w2: full; no retries left" in str(exc)


def test_draining_requeues_without_using_an_attempt() -> None:
    r = Rig("w1", "w2")
    r.hello("w1")
    r.take()
    rid = r.submit(retries=0)
    assert sent(r.take()) == [("w1", rid)]
    r.hello("w2")
    r.error("w1", rid, ErrorCode.DRAINING)
    assert r["w1"].state is DRAINING
    assert sent(r.take()) == [("w2", rid)]
    assert r.d.calls[rid].attempts == 1
    r.reply("w2", rid, "done")
    assert r.outcomes.value(rid) == "done"
    r.hello("w1")  # a fresh worker on that endpoint
    assert r["w1"].state is READY


def test_disconnect_sends_nothing_new_but_replies_count() -> None:
    r = Rig("w1")
    r.hello("w1", capacity=2)
    held = r.submit()
    r.take()
    r.d.disconnect(r["w1"], "SIGTERM")
    queued = r.submit()
    assert sent(r.take()) == []
    r.reply("w1", held, 1)
    assert r.outcomes.value(held) == 1
    assert queued in r.d.calls
    assert r.d.capacity() == 0


def test_worker_lost_from_a_worker_is_retried_from_a_broker_it_is_final() -> None:
    r = Rig("w", "br")
    r.hello("w")
    r.take()
    a = r.submit()
    assert sent(r.take()) == [("w", a)]
    r.error("w", a, ErrorCode.WORKER_LOST)
    assert sent(r.take()) == [("w", a)]
    assert r.d.calls[a].attempts == 2
    r.reply("w", a)
    r.d.dropped(r["w"])
    r.hello("br", {}, capacity=5, role="broker")
    b = r.submit()
    assert sent(r.take()) == [("br", b)]
    r.error("br", b, ErrorCode.WORKER_LOST, "handed to 3 workers")
    assert sent(r.take()) == []
    exc = r.outcomes.error(b)
    assert isinstance(exc, WorkerLost)
    assert "handed to 3 workers" in str(exc)
    # A broker's OVERLOADED speaks for all its workers: final too, and no rest.
    c = r.submit()
    r.take()
    r.error("br", c, ErrorCode.OVERLOADED)
    assert isinstance(r.outcomes.error(c), Overloaded)
    assert r["br"].resting_until == 0.0


def test_stale_refusal_from_a_peer_that_no_longer_holds_the_call_is_ignored() -> None:
    r = Rig("w1", "w2")
    r.hello("w1")
    r.take()
    rid = r.submit()
    r.take()
    r.d.dropped(r["w1"])  # re-queued; nobody ready
    r.error("w1", rid, ErrorCode.DRAINING)  # the old worker's late word
    r.error("w1", rid, ErrorCode.WORKER_LOST)
    r.hello("w2")
    assert sent(r.take()) == [("w2", rid)]  # sent once, not twice
    assert r.d.calls[rid].attempts == 2
    r.reply("w1", rid, "late but fine")  # a real answer from anyone completes it
    assert r.outcomes.value(rid) == "late but fine"


def test_remote_error_completes_with_its_detail() -> None:
    r = Rig("w1")
    r.hello("w1")
    rid = r.submit()
    r.take()
    msg = Error(rid, ErrorCode.REMOTE, "bad", "ValueError", detail={"item": 2})
    r.d.error(r["w1"], msg)
    exc = r.outcomes.error(rid)
    assert isinstance(exc, RemoteError)
    assert exc.detail == {"item": 2}


def test_malformed_answer_fails_the_call_it_names() -> None:
    r = Rig("w1")
    r.hello("w1")
    rid = r.submit()
    r.take()
    exc = ProtocolError("garbled")
    exc.request_id = rid
    r.d.bad_message(r["w1"], exc)
    assert r.outcomes.error(rid) is exc
    assert r["w1"].outstanding == set()


def test_failed_send_takes_back_later_sends_without_using_attempts() -> None:
    r = Rig("w1", "w2", prefetch=5)
    r.hello("w1")
    r.take()
    before = r.submit(retries=1)  # really sent: it counts as lost
    assert sent(r.take()) == [("w1", before)]
    r.failing.add("w1")
    rids = [r.call(retries=0) for _ in range(3)]
    for call in rids:
        r.d.submit(call)  # each goes to w1, which cannot take it
        r.take()
    assert r["w1"].state is CONNECTING
    assert r.d.queued() == 4
    r.failing.clear()
    r.hello("w2", capacity=10)
    # The first failed send went back to the head, then what w1 had really received.
    first, *rest = (c.id for c in rids)
    assert sent(r.take()) == [("w2", rid) for rid in (first, before, *rest)]
    assert all(c.attempts == 1 for c in rids)  # retries=0, and still sent
    assert r.d.calls[before].attempts == 1


def test_failed_send_in_a_burst_keeps_the_burst_order() -> None:
    r = Rig("w1", prefetch=5)
    calls = [r.call(retries=0) for _ in range(4)]
    for call in calls:
        r.d.submit(call)  # queued: w1 is not ready
    assert sent(r.take()) == []
    r.failing.add("w1")
    r.hello("w1")  # READY: a burst of four sends, the first of which fails
    assert sent(r.take()) == []
    assert r["w1"].state is CONNECTING
    r.failing.clear()
    r.hello("w1")
    assert sent(r.take()) == [("w1", c.id) for c in calls]
    assert all(c.attempts == 1 for c in calls)


# --- cancel, close, info -------------------------------------------------------------------------


def test_cancel_queued_and_held_calls() -> None:
    r = Rig("w1")
    r.hello("w1")
    held = r.submit()
    queued = r.submit()
    r.take()
    assert r.d.cancel(queued)
    assert r.take() == []
    assert r.d.cancel(held)
    assert [(type(c), c.rid) for c in r.take()] == [(SendCancel, held)]
    assert not r.d.cancel(held)
    assert r.outcomes.done == {}
    r.reply("w1", held)  # its answer comes anyway: ignored
    assert r.outcomes.done == {}


def test_close_fails_pending_calls_and_says_goodbye() -> None:
    r = Rig("w1", "w2")
    r.hello("w1")
    r.take()
    a = r.submit()
    b = r.submit("B.x")
    r.take()
    r.d.close()
    assert kinds(r.take(), SendBye) == ["w1"]  # w2 never connected
    for rid in (a, b):
        assert "closed before a reply came" in str(r.outcomes.error(rid))
    c = r.submit()
    assert "the client is closed" in str(r.outcomes.error(c))
    r.d.close()
    r.d.tick()
    assert r.take() == []
    assert not r.d.wants_hello(r["w2"])


def test_ask_info_waits_for_a_fresh_hello_from_every_peer() -> None:
    r = Rig("w1", "w2")
    r.hello("w1", capacity=2)
    r.take()
    r.clock.advance(1)
    answered: list[bool] = []
    since = r.d.ask_info(lambda: answered.append(True))
    assert kinds(r.take(), SendHello) == ["w1", "w2"]
    r.clock.advance(0.1)
    r.hello("w1", capacity=2)
    assert answered == []
    rows = r.d.info_rows(since)
    assert [row["state"] for row in rows] == ["ready", "unreachable"]
    assert rows[0]["capacity"] == 2
    r.hello("w2", capacity=0)
    assert answered == [True]
    assert [row["state"] for row in r.d.info_rows(since)] == ["ready", "draining"]


def test_progress_reaches_the_pending_call_only() -> None:
    r = Rig("w1")
    r.hello("w1")
    seen: list[Progress] = []
    call = r.call()
    call.on_progress = seen.append
    r.d.submit(call)
    r.take()
    r.d.progress(Progress(call.id, 1, 2))
    r.reply("w1", call.id)
    r.d.progress(Progress(call.id, 2, 2))
    assert [p.done for p in seen] == [1]


# --- random sequences of events: every call answered once, within its rules ----------------------

SERVES = {
    "w1": ("worker", {"A": ["x", "y"]}),
    "w2": ("worker", {"A": ["x", "y"], "B": ["x"]}),
    "br": ("broker", {}),
}
ASYNC = {"w1": {}, "w2": {"A": ["y"]}, "br": {"A": ["y"]}}
"""The async handlers each peer names: w1 speaks 1.0 (it names none, nor threads)."""


def _bounds(peer: Peer, target: str, held: set[int], calls: dict[int, Call]) -> tuple[int, int]:
    """(requests of ``target``'s kind ``peer`` holds, how many it runs at once), by the
    rules of SPEC section 7.2, from what the test saw sent there."""
    hello = peer.hello
    assert hello is not None
    if not hello.threads:
        return len(held), hello.capacity
    async_targets = {f"{s}.{h}" for s, hs in hello.async_handlers.items() for h in hs}
    kind = target in async_targets
    same = sum(1 for rid in held if (calls[rid].target in async_targets) is kind)
    return same, hello.async_slots if kind else hello.threads


TARGETS = ["A.x", "A.y", "B.x", "C.x"]
PREFETCH = 1


class DispatcherMachine(RuleBasedStateMachine):
    """Drives a Dispatcher through random events, playing the shell and the peers."""

    def __init__(self) -> None:
        super().__init__()
        self.rig: Rig | None = None
        self.submitted: dict[int, Call] = {}
        self.cancelled: set[int] = set()
        self.deliveries: Counter[int] = Counter()
        # What each simulated peer holds; what a lost peer held (it may still answer).
        self.held: dict[str, set[int]] = {}
        self.stale: set[tuple[str, int]] = set()
        self.retries: dict[int, int] = {}
        self.completed: dict[int, BaseException | None] = {}
        self.closed = False

    @initialize(with_broker=st.booleans(), prefetch=st.sampled_from([0, PREFETCH]))
    def start(self, with_broker: bool, prefetch: int) -> None:
        eps = ["w1", "w2", "br"] if with_broker else ["w1", "w2"]
        self.rig = Rig(*eps, prefetch=prefetch, heartbeat=1.0)
        self.held = {ep: set() for ep in eps}
        for ep in eps:  # a working mesh to start from
            self._say_hello(ep, 2)

    @property
    def r(self) -> Rig:
        assert self.rig is not None
        return self.rig

    # --- the shell's half -------------------------------------------------------------------

    def _complete(self, call: Call, value: Any, exc: BaseException | None) -> None:
        assert call.id not in self.completed, f"{call} completed twice"
        assert call.id not in self.cancelled, f"{call} completed after cancel() said True"
        now = self.r.clock.now
        if type(exc) in (Timeout, NoWorkers) and not str(exc).startswith("remote"):
            assert now >= call.deadline, f"{call} expired {call.deadline - now:.3f} s early"
        if isinstance(exc, UnknownHandler):
            peers = self.r.d.peers
            assert all(p.hello is not None for p in peers)
            assert not any(p.serves(call.target) for p in peers)
        if exc is not None and "no retries left" in str(exc):
            # Every attempt was used by a delivery that ended without an answer.
            assert self.deliveries[call.id] == self.retries[call.id] + 1
        self.completed[call.id] = exc

    def _run(self) -> None:
        r = self.r
        d = r.d
        out = d.outbox
        self._reconcile()
        i = 0
        while i < len(out):
            cmd = out[i]
            i += 1
            kind = type(cmd)
            if kind is SendCall:
                peer, call = cmd
                if call.peer is not peer:
                    continue
                ep = peer.endpoint
                if ep in r.failing:
                    del out[:i]
                    i = 0
                    d.unsent(peer, call)
                    continue
                assert peer.state is READY, f"{call} sent to {peer}"
                assert peer.serves(call.target), f"{call} sent to {peer}, which does not serve it"
                self._reconcile()
                load, limit = _bounds(peer, call.target, self.held[ep], self.submitted)
                assert load < limit + d.prefetch, f"{call} sent to {peer} at {load}/{limit}"
                assert not any(call.id in h for e, h in self.held.items() if e != ep)
                assert call.id not in self.completed
                self.held[ep].add(call.id)
                self.deliveries[call.id] += 1
                assert self.deliveries[call.id] <= self.retries[call.id] + 1, (
                    f"{call} sent {self.deliveries[call.id]} times"
                )
            elif kind is WakeAt:
                if r.wake is not None:
                    assert cmd.when < r.wake, "a new wake-up is only ever earlier"
                r.wake = cmd.when
            elif kind is SendCancel:
                assert cmd.rid in self.held[cmd.peer.endpoint]
            elif kind is SendBye:
                assert d.closed
        out.clear()
        self._reconcile()

    def _reconcile(self) -> None:
        """What the Dispatcher no longer counts at a peer (lost) may still come late."""
        for ep, held in self.held.items():
            gone = held - self.r[ep].outstanding
            self.stale.update((ep, rid) for rid in gone)
            held -= gone

    def _up(self) -> list[str]:
        return sorted(ep for ep in self.held if ep not in self.r.failing)

    # --- rules -------------------------------------------------------------------------------

    @rule(
        name=st.sampled_from(TARGETS),
        timeout=st.sampled_from([0.5, 2.0, 30.0, 30.0]),
        retries=st.integers(0, 2),
    )
    def submit(self, name: str, timeout: float, retries: int) -> None:
        call = self.r.call(name, timeout, retries)
        call.complete = self._complete
        self.retries[call.id] = retries
        self.submitted[call.id] = call
        self.r.d.submit(call)
        self._run()

    @rule(data=st.data(), capacity=st.sampled_from([0, 1, 2, 2]))
    def hello(self, data: st.DataObject, capacity: int) -> None:
        up = self._up()
        if up:
            self._say_hello(data.draw(st.sampled_from(up)), capacity)

    def _say_hello(self, ep: str, capacity: int) -> None:
        role, services = SERVES[ep]
        peer = self.r[ep]
        if ASYNC[ep]:  # a 1.1 peer: as many threads as async slots
            msg = Hello(
                role=role,
                services=services,
                capacity=2 * capacity,
                name=ep,
                threads=capacity,
                async_slots=capacity,
                async_handlers=ASYNC[ep],
            )
        else:
            msg = Hello(role=role, services=services, capacity=capacity, name=ep, protocol="1.0")
        self.r.d.hello(peer, msg)
        self.r.d.heard(peer)
        self._run()

    def _answerable(self) -> list[tuple[str, int]]:
        """(peer, request id) pairs a connected peer may answer: what it holds, and
        what it held when the client took it for lost (a late answer)."""
        up = self._up()
        held = {(ep, rid) for ep in up for rid in self.held[ep]}
        return sorted(held | {(ep, rid) for ep, rid in self.stale if ep in up})

    @precondition(lambda self: self.rig is not None and self._answerable())
    @rule(data=st.data())
    def reply(self, data: st.DataObject) -> None:
        self._answer(data, "reply")

    @precondition(lambda self: self.rig is not None and self._answerable())
    @rule(
        data=st.data(),
        answer=st.sampled_from(["remote", "overloaded", "draining", "worker_lost", "timeout"]),
    )
    def refuse_or_fail(self, data: st.DataObject, answer: str) -> None:
        self._answer(data, answer)

    def _answer(self, data: st.DataObject, answer: str) -> None:
        ep, rid = data.draw(st.sampled_from(self._answerable()))
        self.held[ep].discard(rid)
        self.stale.discard((ep, rid))
        d = self.r.d
        peer = self.r[ep]
        call = d.calls.get(rid)
        if answer == "reply":
            d.reply(peer, rid, rid)
        else:
            code = {
                "remote": ErrorCode.REMOTE,
                "overloaded": ErrorCode.OVERLOADED,
                "draining": ErrorCode.DRAINING,
                "worker_lost": ErrorCode.WORKER_LOST,
                "timeout": ErrorCode.TIMEOUT,
            }[answer]
            if code == ErrorCode.DRAINING and call is not None and call.peer is peer:
                self.deliveries[rid] -= 1  # not started: it does not count
            d.error(peer, Error(rid, code, f"remote {answer}", code.name))
        d.heard(peer)
        self._run()

    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        up = self._up()
        if up:
            peer = self.r[data.draw(st.sampled_from(up))]
            self.r.d.disconnect(peer, "draining")
            self._run()

    @rule(data=st.data(), noticed=st.booleans())
    def link_breaks(self, data: st.DataObject, noticed: bool) -> None:
        """Sends to a peer fail from now on; the socket monitor may not have said so yet."""
        ep = data.draw(st.sampled_from(sorted(self.held)))
        self.r.failing.add(ep)
        if noticed:
            self.r.d.dropped(self.r[ep])
            self._run()

    @rule(data=st.data())
    def reconnects(self, data: st.DataObject) -> None:
        if self.r.failing:
            self.r.failing.discard(data.draw(st.sampled_from(sorted(self.r.failing))))

    @rule()
    def tick(self) -> None:
        self.r.d.tick()
        self._run()

    @rule(dt=st.sampled_from([0.01, OVERLOAD_REST_S, 0.3, 1.0, 4.0]))
    def time_passes(self, dt: float) -> None:
        r = self.r
        r.clock.advance(dt)
        if dt < 4.0:
            for ep in self._up():  # connected peers answer pings, except across long gaps
                r.d.heard(r[ep])
            self._run()
        while r.wake is not None and r.wake <= r.clock.now:
            r.wake = None
            r.d.on_timer()
            self._run()

    @precondition(lambda self: self.submitted)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.submitted)))
        pending = rid in self.r.d.calls
        assert self.r.d.cancel(rid) == pending
        if pending:
            self.cancelled.add(rid)
        self._run()

    @precondition(lambda self: len(self.submitted) >= 20 and not self.closed)
    @rule()
    def close(self) -> None:
        """Late in a run only: after it, every call fails at once."""
        self.closed = True
        self.r.d.close()
        self._run()

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def every_call_answered_once_or_pending(self) -> None:
        if self.rig is None:
            return
        d = self.r.d
        for rid in self.submitted:
            states = [rid in self.completed, rid in self.cancelled, rid in d.calls]
            assert states.count(True) == 1, (rid, states)
        if self.closed:
            assert d.calls == {}

    @invariant()
    def a_pending_call_is_queued_once_or_held_by_its_peer(self) -> None:
        if self.rig is None:
            return
        d = self.r.d
        queued = Counter(c.id for q in d._queues.values() for c in q)
        for rid, call in d.calls.items():
            if call.peer is None:
                assert queued[rid] == 1, f"{call} queued {queued[rid]} times"
            else:
                assert queued[rid] == 0
                holders = [p.endpoint for p in d.peers if rid in p.outstanding]
                assert holders == [call.peer.endpoint], (call, holders)

    @invariant()
    def deadlines_are_honoured(self) -> None:
        if self.rig is None:
            return
        r = self.r
        for call in r.d.calls.values():
            assert call.deadline > r.clock.now
            assert r.wake is not None
            assert r.wake <= call.deadline

    @invariant()
    def no_idle_worker_beside_a_waiting_call(self) -> None:
        if self.rig is None:
            return
        d = self.r.d
        now = self.r.clock.now
        for q in d._queues.values():
            head = next((c for c in q if c.id in d.calls), None)
            if head is None:
                continue
            for p in d.peers:
                free = (
                    p.state is READY
                    and p.serves(head.target)
                    and not (p.resting_until and now < p.resting_until)
                )
                if free:
                    load, limit = _bounds(p, head.target, self.held[p.endpoint], self.submitted)
                    free = load < limit + d.prefetch
                assert not free, f"{head} waits while {p} could take it"

    @invariant()
    def the_heartbeat_order_agrees_with_the_peers(self) -> None:
        if self.rig is not None:
            _check_heartbeat_order(self.r.d)

    @invariant()
    def retries_never_exceed_attempts(self) -> None:
        if self.rig is None:
            return
        for rid, call in self.r.d.calls.items():
            assert call.attempts >= 1
            assert self.deliveries[rid] <= self.retries[rid] + 1


def _check_heartbeat_order(d: Dispatcher) -> None:
    """The peers a tick looks at: all but the CONNECTING ones, least lately heard first;
    the ones it greets: the CONNECTING and DRAINING ones."""
    order = list(d._heard)
    assert set(order) == {p for p in d.peers if p.state is not CONNECTING}
    seen = [p.last_seen for p in order]
    assert seen == sorted(seen)
    assert set(d._greet) == {p for p in d.peers if p.state is not READY}


TestDispatcherMachine = DispatcherMachine.TestCase
TestDispatcherMachine.settings = settings(max_examples=150, stateful_step_count=50)


def test_peer_repr_and_call_repr() -> None:
    r = Rig("w1")
    assert "w1" in repr(r["w1"])
    assert "A.x" in repr(r.call())


@pytest.mark.parametrize("capacity", [0, 3])
def test_capacity_counts_ready_peers_only(capacity: int) -> None:
    r = Rig("w1", "w2")
    r.hello("w1", capacity=capacity)
    r.hello("w2", capacity=2)
    assert r.d.capacity() == capacity + 2


def test_refused_by_every_peer_fails_at_once_with_authentication_error() -> None:
    rig = Rig("tcp://w1", "tcp://w2")
    waiting = rig.submit()
    rig.d.refused(rig["tcp://w1"], "tcp://w1 refused our key: add web1.key to its --curve-allow")
    assert not rig.outcomes.done  # w2 may still let us in
    rig.d.refused(rig["tcp://w2"], "tcp://w2 refused our key: add web1.key to its --curve-allow")
    err = rig.outcomes.error(waiting)
    assert isinstance(err, AuthenticationError)
    assert "tcp://w1 refused our key" in str(err)
    assert "tcp://w2 refused our key" in str(err)
    rows = {r["endpoint"]: r for r in rig.d.info_rows(since=-1)}
    assert rows["tcp://w1"]["refused"].startswith("tcp://w1 refused")


def test_a_refusal_is_forgotten_after_a_good_handshake() -> None:
    rig = Rig("tcp://w1", "tcp://w2")
    rig.d.refused(rig["tcp://w1"], "tcp://w1 refused our key")
    rig.hello("tcp://w2")
    rid = rig.submit()
    assert sent(rig.take()) == [("tcp://w2", rid)]  # the one that let us in serves it
    rig.d.refused(rig["tcp://w2"], "tcp://w2 refused our key")
    rig.d.handshake(rig["tcp://w1"])  # the key was added: w1 lets us in now
    late = rig.submit()
    assert late not in rig.outcomes.done  # not every peer refuses now: it waits
    # Expiring with nobody ready and nobody refusing any more: a plain NoWorkers.
    rig.d.handshake(rig["tcp://w2"])
    rig.d.dropped(rig["tcp://w2"])
    rig.advance(11)
    assert isinstance(rig.outcomes.error(late), NoWorkers)


# --- many peers: the index behind the pick (module docstring, "What it costs") -------------------


def _held_by(r: Rig) -> Counter[str]:
    """How many requests each peer holds now."""
    return Counter({ep: len(p.outstanding) for ep, p in r.peers.items()})


def _many(n: int, prefetch: int = 0, **hello: Any) -> tuple[Rig, list[str]]:
    """A Rig over ``n`` peers, each READY with ``hello`` (`Rig.hello`'s keywords)."""
    eps = [f"w{i:03d}" for i in range(n)]
    r = Rig(*eps, prefetch=prefetch)
    for ep in eps:
        r.hello(ep, **hello)
    r.take()
    return r, eps


def test_round_robin_among_many_equally_loaded_peers() -> None:
    r, eps = _many(50, prefetch=10)
    first = [r.submit() for _ in range(50)]
    assert [ep for ep, _ in sent(r.take())] == eps  # one each, in the order they came
    [r.submit() for _ in range(50)]
    assert [ep for ep, _ in sent(r.take())] == eps  # then a second each, the same order
    # w007 answers its first: it alone holds fewer, so it takes the next one.
    r.reply("w007", first[7])
    r.take()
    r.submit()
    assert sent(r.take())[0][0] == "w007"
    # Equals again (two each): the next round starts with whoever has held two longest.
    [r.submit() for _ in range(50)]
    order = [ep for ep, _ in sent(r.take())]
    assert sorted(order) == eps
    assert order[-1] == "w007"  # it came to two last


def test_many_peers_spread_by_kind_plain_against_threads_async_against_slots() -> None:
    r, _ = _many(
        100, services={"A": ["x", "y"]}, threads=1, async_slots=2, async_handlers={"A": ["y"]}
    )
    [r.submit("A.x") for _ in range(120)]
    [r.submit("A.y") for _ in range(220)]
    r.take()
    for p in r.peers.values():
        assert len(p.outstanding) - len(p.async_out) == 1  # one plain each: its thread
        assert len(p.async_out) == 2  # two async each: its slots
    assert r.d.queued() == 20 + 20


def test_a_resting_peer_among_many_is_passed_over_until_its_rest_ends() -> None:
    r, _ = _many(100, prefetch=5, capacity=2)
    rids = [r.submit(retries=5) for _ in range(100)]
    holders = {rid: ep for ep, rid in sent(r.take())}
    for rid in rids[:99]:  # all but one of them answer OVERLOADED (in one batch): each rests
        r.d.error(r[holders[rid]], Error(rid, ErrorCode.OVERLOADED, "full", "Overloaded"))
    idle = holders[rids[99]]
    r.d.heard(r[idle])
    retried = sent(r.take())
    assert {ep for ep, _ in retried} == {idle}  # the only one not resting takes them all
    assert len(retried) == 2 + 5 - 1  # up to its bound + prefetch; the rest wait
    r.advance(OVERLOAD_REST_S)
    later = sent(r.take())
    assert idle not in {ep for ep, _ in later}  # the rested ones hold less now
    assert r.d.queued() == 0


def test_peers_leave_and_join_and_the_pick_follows() -> None:
    r, eps = _many(60, prefetch=10)
    [r.submit(retries=60) for _ in range(120)]
    r.take()
    assert set(_held_by(r).values()) == {2}
    for ep in eps[:30]:
        r.d.dropped(r[ep])  # what each held goes to the least loaded of those left
    r.take()
    held = _held_by(r)
    assert all(held[ep] == 0 for ep in eps[:30])
    assert all(held[ep] == 4 for ep in eps[30:])  # 120 over 30, evenly
    assert r.d.capacity() == 30
    for ep in eps[:30]:
        r.hello(ep, capacity=1)  # back: they hold nothing, so new calls go there first
    r.take()
    assert r.d.capacity() == 60
    [r.submit() for _ in range(60)]
    new = Counter(ep for ep, _ in sent(r.take()))
    assert new == Counter(dict.fromkeys(eps[:30], 2))
    # One changes what it serves (a profile of its own): B.x goes there alone.
    r.hello("w059", {"A": ["x"], "B": ["x"]}, capacity=1)
    r.take()
    assert [ep for ep, _ in sent(r.take())] == []
    b = [r.submit("B.x") for _ in range(3)]
    assert sent(r.take()) == [("w059", rid) for rid in b]  # prefetch 10: room for them
    r.submit()
    assert sent(r.take())[0][0] in eps[:30]  # A.x still to the least loaded


def test_remembered_targets_are_bounded() -> None:
    r = Rig("br")
    r.hello("br", {}, capacity=10**6, role="broker")
    for i in range(_MAX_TARGETS + 10):
        r.submit(f"made.up{i}")
    assert len(r.d._pools) <= _MAX_TARGETS
    assert len(sent(r.take())) == _MAX_TARGETS + 10


def test_heard_peers_are_never_lost_and_only_quiet_ones_are_pinged() -> None:
    r, eps = _many(200)
    talking, quiet = eps[::2], eps[1::2]
    pinged: Counter[str] = Counter()
    for _ in range(LIVENESS):
        for _ in range(4):
            r.clock.advance(0.25)
            for ep in talking:
                r.d.heard(r[ep])
        r.d.tick()
        cmds = r.take()
        assert kinds(cmds, SendHello) == []
        pinged.update(kinds(cmds, SendPing))
    assert set(pinged) == set(quiet)  # each quiet one, once a heartbeat
    assert all(r[ep].state is READY for ep in eps)
    r.clock.advance(0.5)
    r.d.tick()
    cmds = r.take()
    assert all(r[ep].state is READY for ep in talking)
    assert all(r[ep].state is CONNECTING for ep in quiet)  # silent for LIVENESS intervals
    assert kinds(cmds, SendHello) == []  # lost this tick: greeted from the next one
    r.clock.advance(1.0)
    for ep in talking:
        r.d.heard(r[ep])
    r.d.tick()
    assert kinds(r.take(), SendHello) == quiet


# A mesh of 200 peers of several kinds: the pick, checked against a brute-force reference.

MESH: list[tuple[str, str, dict[str, list[str]], int, int, int, dict[str, list[str]]]] = [
    # (endpoint, role, services, capacity, threads, async slots, async handlers)
    *(
        (f"n{i:03d}", "worker", {"A": ["x", "y"]}, 0, 1 + i % 3, 1 + i % 4, {"A": ["y"]})
        for i in range(120)
    ),
    *((f"o{i:03d}", "worker", {"A": ["x", "y"]}, 1 + i % 3, 0, 0, {}) for i in range(40)),
    *((f"b{i:03d}", "worker", {"A": ["x"], "B": ["x"]}, 0, 2, 0, {}) for i in range(30)),
    *((f"k{i:03d}", "broker", {}, 0, 4, 4, {"A": ["y"]}) for i in range(8)),
    ("silent0", "worker", {"A": ["x"]}, 0, 1, 0, {}),
    ("silent1", "worker", {"A": ["x"]}, 0, 1, 0, {}),
]
"""Peers: 1.1 workers, 1.0 workers (threads 0: capacity alone), workers of another
service, brokers, and two that never say HELLO."""
MESH_TARGETS = ["A.x", "A.y", "B.x", "C.x"]


def _is_async(hello: Hello, target: str) -> bool:
    """Whether ``hello`` names ``target`` an async handler."""
    return any(f"{s}.{h}" == target for s, hs in hello.async_handlers.items() for h in hs)


def _mesh_hello(r: Rig, ep: str, scale: int = 1, like: str = "") -> None:
    """``ep`` says HELLO as its row of `MESH` says (or ``like``'s row: it changed what
    it serves), its bounds times ``scale``."""
    spec = next(m for m in MESH if m[0] == (like or ep))
    _, role, services, capacity, threads, slots, handlers = spec
    threads, slots, capacity = threads * scale, slots * scale, capacity * scale
    msg = Hello(
        role=role,
        services=services,
        capacity=(threads + slots) if threads else capacity,
        name=ep,
        protocol="1.1" if threads else "1.0",
        threads=threads,
        async_slots=slots,
        async_handlers=handlers if threads else {},
    )
    r.d.hello(r[ep], msg)
    r.d.heard(r[ep])


class PickMachine(RuleBasedStateMachine):
    """200 peers of several kinds: every pick goes to a peer that serves the call, has
    room, does not rest, and holds no more of the call's kind than any other such peer
    (recomputed by brute force from what each peer holds); the index agrees."""

    def __init__(self) -> None:
        super().__init__()
        self.r = Rig(*(m[0] for m in MESH), prefetch=1)
        for ep, *_ in MESH[:-2]:
            _mesh_hello(self.r, ep)
        self.r.take()

    def _loads(self) -> dict[str, int]:
        """What each peer holds now, by request id."""
        return {ep: len(p.outstanding) for ep, p in self.r.peers.items()}

    def _free(self, peer: Peer, target: str, held: dict[int, bool]) -> int | None:
        """``peer``'s load of ``target``'s kind if it may take it now, else None.

        ``held``: the requests it holds, each with whether it was sent to an async slot
        (what the kind of a request is when the peer's HELLO changes it meanwhile)."""
        d = self.r.d
        now = self.r.clock.now
        if peer.state is not READY or not peer.serves(target):
            return None
        if peer.resting_until and now < peer.resting_until:
            return None
        hello = peer.hello
        assert hello is not None
        if not hello.threads:
            load, bound = len(held), hello.capacity
        else:
            kind = _is_async(hello, target)
            load = sum(1 for was_async in held.values() if was_async is kind)
            bound = hello.async_slots if kind else hello.threads
        return load if load < bound + d.prefetch else None

    @staticmethod
    def _holds(peer: Peer) -> dict[int, bool]:
        """What ``peer`` holds, each with whether it went to an async slot."""
        return {rid: rid in peer.async_out for rid in peer.outstanding}

    def _checked(self, act: Any) -> None:
        """Run ``act`` (it may only send), checking each send against the reference."""
        r = self.r
        held = {ep: self._holds(p) for ep, p in r.peers.items()}
        act()
        for cmd in r.d.outbox:
            if type(cmd) is not SendCall:
                continue
            call, peer = cmd.call, cmd.peer
            loads = {
                ep: load
                for ep, p in r.peers.items()
                if (load := self._free(p, call.target, held[ep])) is not None
            }
            chosen = loads.get(peer.endpoint)
            assert chosen is not None, f"{call} sent to {peer}, which may not take it"
            assert chosen == min(loads.values()), (call, peer, chosen, min(loads.values()))
            hello = peer.hello
            assert hello is not None
            held[peer.endpoint][call.id] = bool(hello.threads) and _is_async(hello, call.target)
        r.take()

    @rule(name=st.sampled_from(MESH_TARGETS), n=st.integers(1, 40))
    def submit(self, name: str, n: int) -> None:
        def act() -> None:
            for _ in range(n):
                call = self.r.call(name, timeout=1000.0, retries=3)
                self.r.d.submit(call)

        self._checked(act)

    def _held(self) -> list[tuple[str, int]]:
        return sorted((ep, rid) for ep, p in self.r.peers.items() for rid in p.outstanding)

    @precondition(lambda self: self._held())
    @rule(data=st.data(), answer=st.sampled_from(["reply", "reply", "reply", "overloaded"]))
    def answer(self, data: st.DataObject, answer: str) -> None:
        r = self.r
        pairs = data.draw(st.lists(st.sampled_from(self._held()), min_size=1, max_size=30))
        for ep, rid in dict.fromkeys(pairs):
            if rid not in r[ep].outstanding:
                continue
            if answer == "reply":
                r.d.reply(r[ep], rid, None)
            else:
                r.d.error(r[ep], Error(rid, ErrorCode.OVERLOADED, "full", "Overloaded"))
        r.take()  # (error re-queues, and dispatches nothing)
        ep = pairs[0][0]
        self._checked(lambda: r.d.heard(r[ep]))

    @rule(
        data=st.data(),
        what=st.sampled_from(["dropped", "disconnect", "hello", "bigger", "changed"]),
    )
    def peer_changes(self, data: st.DataObject, what: str) -> None:
        r = self.r
        names = [m[0] for m in MESH[:-2]]
        ep = data.draw(st.sampled_from(names))
        if what == "dropped":
            r.d.dropped(r[ep])
        elif what == "disconnect":
            r.d.disconnect(r[ep], "draining")
        elif what == "changed":  # it serves what another kind of peer does (a new profile)
            _mesh_hello(r, ep, like=data.draw(st.sampled_from(names)))
        else:
            _mesh_hello(r, ep, 2 if what == "bigger" else 1)
        r.take()

    @rule(dt=st.sampled_from([0.01, OVERLOAD_REST_S]))
    def time_passes(self, dt: float) -> None:
        r = self.r
        r.clock.advance(dt)
        ep = next(iter(r.peers))
        self._checked(lambda: r.d.heard(r[ep]))  # (rests may end here, before the timer)
        r.advance(0)

    @invariant()
    def the_index_agrees_with_the_peers(self) -> None:
        d = self.r.d
        for pool in d._pools_by_kinds.values():
            members = [
                (p, kind)
                for prof, kind in next(k for k, v in d._pools_by_kinds.items() if v is pool)
                for p in prof.peers
                if p.state is READY
            ]
            assert pool.ready == len(members)
            want = {}
            for p, kind in members:
                load, bound = {
                    0: (len(p.outstanding) - len(p.async_out), p.threads),
                    1: (len(p.async_out), p.async_slots),
                    2: (len(p.outstanding), p.capacity),
                }[kind]
                if load < bound + d.prefetch and not p.resting_until:
                    want[p] = load
            assert pool.at == want
            assert {p: b for b, q in pool.buckets.items() for p in q} == want
            assert pool.low == (min(want.values()) if want else -1)
        assert d.capacity() == sum(p.capacity for p in d.peers if p.state is READY)
        _check_heartbeat_order(d)

    @invariant()
    def no_free_peer_beside_a_waiting_call(self) -> None:
        r = self.r
        for q in r.d._queues.values():
            head = next((c for c in q if c.id in r.d.calls), None)
            if head is None:
                continue
            for p in r.peers.values():
                assert self._free(p, head.target, self._holds(p)) is None, (head, p)


TestPickMachine = PickMachine.TestCase
TestPickMachine.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)
