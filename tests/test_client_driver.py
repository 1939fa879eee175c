"""`Client`'s driver: whoever waits reads the sockets; nobody waiting must not stall.

Each test drives a real worker over loopback, the way a user's code would: futures
that nobody waits on, callbacks that call the client again, backpressure, cancel,
close while another thread waits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import math
import os
import threading
import time
from collections.abc import Callable

import pytest
from meshkit import Mesh, free_port

from client import AsyncClient, Client, ZeromeshError

pytestmark = pytest.mark.process  # tier 2: starts real processes

TEST_SVC = "testsvc:svc"
TEST_ENV = {"PYTHONPATH": os.path.dirname(__file__)}


def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout:g} s: {what}")
        time.sleep(0.002)


async def until_async(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """`until`, yielding to the event loop between looks."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout:g} s: {what}")
        await asyncio.sleep(0.002)


def test_futures_resolve_when_nobody_waits_on_them(mesh: Mesh) -> None:
    # as_completed and done-callbacks never call result(): the IO thread must read.
    w = mesh.start()
    with Client([w.endpoint]) as c:
        seen = threading.Event()
        futs = [c.submit("math.add", i, i) for i in range(50)]
        futs[-1].add_done_callback(lambda f: seen.set())
        assert seen.wait(10), "a done-callback never ran although nobody waited"
        done = {f.result() for f in cf.as_completed(futs, timeout=10)}
    assert done == {2 * i for i in range(50)}


def test_every_way_of_waiting_wakes_on_futures_made_without_a_condition(mesh: Mesh) -> None:
    # Client futures make their Condition only when someone waits on it: threads that
    # block in result() while another reads, concurrent.futures.wait, as_completed and
    # callbacks added at any moment must all still see every outcome, and a cancel
    # racing the replies must leave each future either cancelled or finished.
    w = mesh.start()
    with Client([w.endpoint], max_in_flight=4000) as c:
        for _ in range(5):
            _wait_every_way(c)


def _wait_every_way(c: Client) -> None:
    futs = [c.submit("math.add", i, 1) for i in range(400)]
    results: dict[int, int] = {}
    called: list[cf.Future[int]] = []
    cancelled = [futs[i].cancel() for i in range(1, 400, 40)]

    def block(first: int) -> None:
        for i in range(first, len(futs), 4):
            if not futs[i].cancelled():
                results[i] = futs[i].result(timeout=10)

    threads = [threading.Thread(target=block, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    with_callback = futs[::7]
    for f in with_callback:
        f.add_done_callback(called.append)
    # (wait() takes a cancel for done only once an executor notified it: leave those out)
    _, pending = cf.wait([f for f in futs if not f.cancelled()], timeout=10)
    assert not pending
    for t in threads:
        t.join(10)
        assert not t.is_alive(), "a thread blocked in result() was never woken"
    for i, f in enumerate(futs):
        assert f.done()
        assert f.cancelled() or results[i] == i + 1
    assert sum(cancelled) == sum(f.cancelled() for f in futs)
    until(lambda: len(called) == len(with_callback), "every done-callback ran")


def test_an_answered_future_is_one_object_for_the_garbage_collector(mesh: Mesh) -> None:
    # A caller holding many futures makes each collector pass walk them all: with four
    # objects each (the future, its instance dict, a waiter list and a callback list),
    # the passes took a quarter of a pipelined client's time. The three are made only
    # for a future somebody waits on in another way than result().
    w = mesh.start()
    with Client([w.endpoint], max_in_flight=1000) as c:
        c.call("math.add", 0, 0)
        gc.collect()
        before = len(gc.get_objects())
        futs = [c.submit("math.add", i, 1) for i in range(5000)]
        assert [f.result() for f in futs] == [i + 1 for i in range(5000)]
        gc.collect()
        per_future = (len(gc.get_objects()) - before) / len(futs)
    assert per_future < 1.5, f"{per_future:.2f} tracked objects per answered future"


def test_done_callback_may_call_the_client_again(mesh: Mesh) -> None:
    # Callbacks run after the driver's lock is released: a nested submit must not hang.
    w = mesh.start()
    with Client([w.endpoint]) as c:
        chained: cf.Future[object] = cf.Future()

        def then(f: cf.Future[object]) -> None:
            chained.set_result(c.call("math.add", f.result(), 100))

        c.submit("math.add", 1, 2).add_done_callback(then)
        assert chained.result(10) == 103


def test_backpressure_reads_replies_to_free_slots(mesh: Mesh) -> None:
    w = mesh.start()
    with Client([w.endpoint], max_in_flight=4) as c:
        futs = [c.submit("math.add", i, 1) for i in range(500)]
        assert [f.result(10) for f in futs] == [i + 1 for i in range(500)]


def test_cancelled_futures_give_their_slot_back(mesh: Mesh) -> None:
    w = mesh.start(service=TEST_SVC, env=TEST_ENV)
    with Client([w.endpoint], max_in_flight=2) as c:
        slow = [c.submit("t.sleep", 5) for _ in range(2)]
        assert all(f.cancel() for f in slow)
        # Both slots are free again: this would block forever if cancel leaked them.
        fut = c.submit("t.echo", "after")
        assert fut.result(10) == "after"


def test_close_fails_a_result_another_thread_waits_for(mesh: Mesh) -> None:
    w = mesh.start(service=TEST_SVC, env=TEST_ENV)
    c = Client([w.endpoint])
    fut = c.submit("t.sleep", 30)
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            fut.result(20)
        except BaseException as exc:  # reported below
            outcome.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    until(lambda: c._io._leader_ident == waiter.ident, "the waiter reads the sockets")
    c.close()
    waiter.join(10)
    assert not waiter.is_alive(), "result() still waits after close()"
    assert len(outcome) == 1
    assert isinstance(outcome[0], ZeromeshError)
    assert "closed" in str(outcome[0])


def test_close_from_a_done_callback_does_not_hang(mesh: Mesh) -> None:
    # The callback runs on the thread reading the sockets; close() must not wait for
    # that thread to step down, since it is the caller.
    w = mesh.start("--concurrency", "2", service=TEST_SVC, env=TEST_ENV)
    c = Client([w.endpoint])
    pending = c.submit("t.sleep", 30)
    fut = c.submit("t.echo", 1)
    fut.add_done_callback(lambda f: c.close())
    assert fut.result(10) == 1  # (a hang fails here or below: result's own timeout)
    with pytest.raises(ZeromeshError, match="closed"):
        pending.result(10)
    with pytest.raises(ZeromeshError, match="closed"):
        c.call("t.echo", 2)


def test_a_waiter_takes_over_from_the_io_thread(mesh: Mesh) -> None:
    # Background futures make the IO thread read; a caller that then waits must not
    # be left waiting on hand-offs forever, and every reply still lands once.
    w = mesh.start()
    with Client([w.endpoint]) as c:
        slow = c.submit("math.wait", 1.0)  # keeps the IO thread leading while it waits
        background = [c.submit("math.add", i, 0) for i in range(200)]
        until(lambda: c._io._io_leads, "the IO thread reads for nobody in particular")
        assert [c.call("math.add", i, 1) for i in range(200)] == [i + 1 for i in range(200)]
        assert [f.result(10) for f in background] == list(range(200))
        assert slow.result(10) == "waited 1.0"


def test_result_timeout_while_another_thread_leads(mesh: Mesh) -> None:
    w = mesh.start(service=TEST_SVC, env=TEST_ENV)
    with Client([w.endpoint]) as c:
        leader = threading.Thread(target=lambda: c.call("t.sleep", 2.0), daemon=True)
        leader.start()
        until(lambda: c._io._leader_ident == leader.ident, "the other thread reads the sockets")
        fut = c.submit("t.sleep", 5)
        with pytest.raises(cf.TimeoutError):
            fut.result(timeout=0.3)
        assert leader.is_alive()  # the follower's timeout did not wait for the leader
        fut.cancel()
        leader.join(10)


# --- AsyncClient: its in-flight bound and cancellation, on the caller's loop --------------


def test_async_backpressure_and_cancel_free_their_slots(mesh: Mesh) -> None:
    w = mesh.start(service=TEST_SVC, env=TEST_ENV)

    async def main() -> None:
        async with AsyncClient([w.endpoint], max_in_flight=2) as ac:
            # Far more calls than slots: the rest wait in line, all complete in order.
            got = await asyncio.gather(*(ac.call("t.echo", i) for i in range(300)))
            assert got == list(range(300))
            # A cancelled awaiting task and a cancelled submit() future both give their
            # slot back; otherwise the next call would wait forever.
            task = asyncio.ensure_future(ac.call("t.sleep", 5))
            fut = await ac.submit("t.sleep", 5)
            await until_async(lambda: ac._in_flight == 2, "the task's call is sent")
            task.cancel()
            fut.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await asyncio.wait_for(ac.call("t.echo", "after"), 10) == "after"
            # A caller cancelled while it waits for a slot does not take one either.
            hogs = [await ac.submit("t.sleep", 5) for _ in range(2)]
            queued = asyncio.ensure_future(ac.call("t.echo", "never"))
            await until_async(lambda: len(ac._slot_waiters) == 1, "the call waits for a slot")
            queued.cancel()
            for h in hogs:
                h.cancel()
            assert await asyncio.wait_for(ac.call("t.echo", "again"), 10) == "again"

    asyncio.run(main())


def test_capacity_is_what_ready_workers_announced(mesh: Mesh) -> None:
    w1 = mesh.start("--concurrency", "3", service=TEST_SVC, env=TEST_ENV)
    w2 = mesh.start(service=TEST_SVC, env=TEST_ENV)
    with Client([w1.endpoint, w2.endpoint]) as c:
        c.workers()  # both have said HELLO
        assert c.capacity() == 4

    async def main() -> int:
        async with AsyncClient([w1.endpoint, w2.endpoint]) as ac:
            await ac.workers()
            return ac.capacity()

    assert asyncio.run(main()) == 4
    with Client([f"tcp://127.0.0.1:{free_port()}"]) as nobody:  # nothing listens there
        assert nobody.capacity() == 0


def test_an_idle_client_notices_a_killed_worker(mesh: Mesh) -> None:
    # Nobody waits on anything: the IO thread's heartbeat tick reads the disconnect.
    w = mesh.start(service=TEST_SVC, env=TEST_ENV)
    with Client([w.endpoint], heartbeat=0.2) as c:
        assert c.call("t.echo", 1) == 1
        io = c._io
        until(lambda: not io._leader and io._park_until < math.inf, "the IO thread parks")
        assert c.capacity() == 1
        w.kill()
        until(lambda: c.capacity() == 0, "the client notices the worker is gone")
