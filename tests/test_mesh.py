"""The direct mesh end to end: real worker processes, real sockets, the public client API."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import multiprocessing
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
import zmq
from meshkit import Mesh, free_port, wait_ready

import protocol
from client import (
    AsyncClient,
    BadArguments,
    Client,
    Executor,
    NoWorkers,
    RemoteError,
    Timeout,
    UnknownHandler,
)
from examples.mathsvc import add

pytestmark = pytest.mark.process  # tier 2: starts real processes

TEST_ENV = {"PYTHONPATH": os.path.dirname(__file__)}


@pytest.fixture(params=["tcp", "ipc"])
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


def until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout:g} s: {what}")
        time.sleep(0.01)


def every_worker_holds_work(c: Client) -> bool:
    """Each endpoint reports at least one request in flight (running or waiting)."""
    return all(row.get("in_flight", 0) >= 1 for row in c.workers(timeout=2.0))


def test_call_submit_map(mesh: Mesh, transport: str) -> None:
    w1 = mesh.start(transport=transport)
    w2 = mesh.start(transport=transport)
    with Client([w1.endpoint, w2.endpoint], timeout=30) as c:
        assert c.call("math.add", 1, 2) == 3
        assert c.call("math.add", a=5, b=6) == 11
        assert c.call("math.add", "ab", "cd") == "abcd"
        futs = [c.submit("math.add", i, i) for i in range(500)]
        assert [f.result() for f in futs] == [2 * i for i in range(500)]
        assert list(c.map("math.add", range(5000), range(5000))) == [2 * i for i in range(5000)]
        # Unknown length (a generator) and chunksize given explicitly.
        gen = (i for i in range(300))
        assert list(c.map("math.add", gen, range(300), chunksize=7)) == [2 * i for i in range(300)]
        pids = {c.call("math.pid") for _ in range(50)}
        assert pids == {w1.pid, w2.pid}


def test_numpy_round_trip_both_ways(mesh: Mesh, transport: str) -> None:
    w = mesh.start(transport=transport)
    with Client([w.endpoint]) as c:
        for dtype in ["float64", "float32", "int8", "uint64", "complex128", "bool"]:
            arr = (np.arange(24) % 3).astype(dtype).reshape(2, 3, 4)
            out = c.call("math.mean", arr)
            np.testing.assert_array_equal(out, arr.mean(axis=0))
            assert out.shape == (3, 4)
        big = np.random.default_rng(0).random((1000, 1000))  # 8 MB: out of band, no copy
        out = c.call("math.scale", big, factor=3.0)
        assert out.dtype == np.float64
        assert out.shape == big.shape
        np.testing.assert_array_equal(out, big * 3.0)
        strided = big[::2, ::3]  # non-contiguous in, contiguous out
        np.testing.assert_array_equal(c.call("math.scale", strided, 1.0), strided)
    nested = {"a": [np.arange(3), {"b": np.float32(2.5)}]}
    with Client([mesh.start(service="testsvc:svc", env=TEST_ENV).endpoint]) as c:
        back = c.call("t.echo", nested)
        np.testing.assert_array_equal(back["a"][0], np.arange(3))
        assert back["a"][1]["b"] == 2.5


def test_remote_errors_are_typed(mesh: Mesh) -> None:
    w = mesh.start()
    with Client([w.endpoint]) as c:
        with pytest.raises(RemoteError) as info:
            c.call("math.fail", "it broke")
        err = info.value
        assert err.remote_type == "ValueError"
        assert err.remote_message == "it broke"
        assert "raise ValueError(message)" in err.remote_traceback
        assert "it broke" in str(err)
        with pytest.raises(UnknownHandler, match=r"math\.nope"):
            c.call("math.nope")
        with pytest.raises(BadArguments, match="missing a required argument"):
            c.call("math.add", 1)
        with pytest.raises(BadArguments, match="unexpected keyword"):
            c.call("math.add", 1, 2, c=3)
        with pytest.raises(ValueError, match=r"service\.handler"):
            c.call("nodot", 1)
        # The worker keeps serving after all of that.
        assert c.call("math.add", 2, 2) == 4


def test_integers_outside_the_wire_range_are_refused_with_the_range(mesh: Mesh) -> None:
    w = mesh.start()
    refused = (
        r"integer 18446744073709551616 is out of range: zeromesh integers are -2\*\*63\.\.2\*\*64-1"
    )
    with Client([w.endpoint]) as c:
        # The client's encoder refuses it; nothing is sent.
        with pytest.raises(protocol.ProtocolError, match=refused):
            c.call("math.add", 2**64, 1)
        # A result out of range is refused by the worker's encoder, and said so.
        with pytest.raises(RemoteError, match=refused) as info:
            c.call("math.add", 2**64 - 1, 1)
        assert info.value.remote_type == "ProtocolError"
        assert c.call("math.add", 2**64 - 2, 1) == protocol.MAX_INT


def test_type_error_inside_handler_is_remote_error(mesh: Mesh) -> None:
    w = mesh.start(service="testsvc:svc", env=TEST_ENV)
    with Client([w.endpoint]) as c, pytest.raises(RemoteError) as info:
        c.call("t.bad_type")
    assert info.value.remote_type == "TypeError"


def test_map_failure_yields_results_before_it(mesh: Mesh) -> None:
    w = mesh.start()
    with Client([w.endpoint]) as c:
        results = c.map("math.add", [1, 2, "x", 4], [1, 2, 3, 4], chunksize=4)
        assert next(results) == 2
        assert next(results) == 4
        with pytest.raises(RemoteError) as info:
            next(results)
        assert info.value.detail is not None
        assert info.value.detail["item"] == 2


# Two worker modes: "math" has an async handler, so sync handlers run in a thread
# beside the loop; "t" is sync only, so they run inline with a watchdog thread.
MODES = [
    pytest.param(("examples.mathsvc:svc", "math", {}), id="threaded"),
    pytest.param(("testsvc:svc", "t", TEST_ENV), id="inline"),
]


@pytest.mark.parametrize("mode", MODES)
def test_timeout_then_worker_still_serves(mesh: Mesh, mode: tuple[str, str, dict]) -> None:
    spec, svc, env = mode
    w = mesh.start(service=spec, env=env)
    with Client([w.endpoint]) as c:
        # (When the deadline fires, and what it says, is tested on the Dispatcher.)
        with pytest.raises(Timeout, match=r"no reply within 0\.5 s"):
            c.options(timeout=0.5).call(f"{svc}.sleep", 30)
        # The timed-out call was cancelled on the worker (its handler checks `cancelled()`),
        # so the next call does not wait 30 s behind it.
        assert c.options(timeout=10).call(f"{svc}.sleep", 0) == "slept 0"


def test_no_workers(short_tmp) -> None:
    dead = f"tcp://127.0.0.1:{free_port()}"
    with Client([dead, f"ipc://{short_tmp}/none.sock"]) as c:
        with pytest.raises(NoWorkers, match="zeromesh ping"):
            c.options(timeout=0.5).call("math.add", 1, 2)
        rows = c.workers(timeout=0.3)
        assert [r["state"] for r in rows] == ["unreachable", "unreachable"]


def test_killed_worker_mid_call_is_answered_by_the_other(mesh: Mesh) -> None:
    w1 = mesh.start(service="testsvc:svc", env=TEST_ENV)
    w2 = mesh.start(service="testsvc:svc", env=TEST_ENV)
    with Client([w1.endpoint, w2.endpoint], timeout=30, retries=2) as c:
        # Both known first, so the least-outstanding pick spreads the requests over both.
        assert all(r["state"] == "ready" for r in c.workers())
        futs = [c.submit("t.slow_pid", 1.0) for _ in range(4)]
        until(lambda: every_worker_holds_work(c), "both workers hold requests")
        w1.signal(signal.SIGKILL)
        # Every request is answered; those w1 held were re-sent to w2.
        assert [f.result() for f in futs] == [w2.pid] * 4

        # Restart on the same endpoint: the client uses it again without a restart.
        w3 = mesh.start(service="testsvc:svc", env=TEST_ENV, endpoint=w1.endpoint)
        deadline = time.monotonic() + 15
        seen: set[int] = set()
        while w3.pid not in seen and time.monotonic() < deadline:
            seen |= {f.result() for f in [c.submit("t.slow_pid", 0.01) for _ in range(20)]}
        assert w3.pid in seen


def test_sigterm_drains_in_flight_work_and_exits_0(mesh: Mesh) -> None:
    w1 = mesh.start(service="testsvc:svc", env=TEST_ENV)
    w2 = mesh.start(service="testsvc:svc", env=TEST_ENV)
    with Client([w1.endpoint, w2.endpoint]) as c:
        # Both HELLOs answered first: calls made before a worker is known go elsewhere.
        assert all(r["state"] == "ready" for r in c.workers())
        assert len({c.call("t.slow_pid", 0) for _ in range(10)}) == 2
        futs = [c.submit("t.slow_pid", 0.5) for _ in range(6)]
        until(lambda: every_worker_holds_work(c), "both workers hold requests")
        w1.signal(signal.SIGTERM)
        results = [f.result(timeout=30) for f in futs]
        assert set(results) <= {w1.pid, w2.pid}
        assert w1.wait(30) == 0
        log = w1.output()
        assert "draining (SIGTERM)" in log
        assert "exiting 0" in log
        # New work goes to the survivor.
        assert {c.call("t.slow_pid", 0) for _ in range(5)} == {w2.pid}


@pytest.mark.parametrize("mode", MODES)
def test_ping_is_answered_during_a_long_cpu_handler(
    mesh: Mesh, mode: tuple[str, str, dict]
) -> None:
    spec, svc, env = mode
    w = mesh.start(service=spec, env=env)
    with Client([w.endpoint]) as c:
        fut = c.submit(f"{svc}.spin", 3.0)
        until(lambda: every_worker_holds_work(c), "the worker runs the handler")
        for _ in range(3):
            (row,) = c.workers(timeout=2.0)
            assert row["state"] == "ready"
            assert row["in_flight"] == 1
        assert fut.result() > 0


def test_threads_share_one_client(mesh: Mesh) -> None:
    w1 = mesh.start()
    w2 = mesh.start()
    errors: list[BaseException] = []
    with Client([w1.endpoint, w2.endpoint]) as c:

        def work(k: int) -> None:
            try:
                for i in range(200):
                    assert c.call("math.add", k, i) == k + i
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k * 1000,), daemon=True) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors


def test_async_client_under_tornado(mesh: Mesh) -> None:
    from tornado.ioloop import IOLoop

    w = mesh.start()

    async def main() -> list[object]:
        async with AsyncClient([w.endpoint]) as ac:
            one = await ac.call("math.add", 1, 2)
            many = await asyncio.gather(*(ac.call("math.add", i, i) for i in range(300)))
            mapped = [r async for r in ac.map("math.add", range(1000), range(1000))]
            mean = await ac.call("math.mean", np.ones((4, 2)))
            with pytest.raises(RemoteError):
                await ac.call("math.fail")
            with pytest.raises(Timeout):
                await ac.options(timeout=0.3).call("math.sleep", 5)
            return [one, list(many), mapped, mean.tolist()]

    one, many, mapped, mean = IOLoop.current().run_sync(main, timeout=60)
    assert one == 3
    assert many == [2 * i for i in range(300)]
    assert mapped == [2 * i for i in range(1000)]
    assert mean == [1.0, 1.0]


def _workload(ex: cf.Executor) -> list[object]:
    singles = [ex.submit(add, i, 10).result() for i in range(10)]
    mapped = list(ex.map(add, range(200), range(200)))
    return [singles, mapped]


def test_executor_gives_the_same_results_as_process_pool(mesh: Mesh) -> None:
    w = mesh.start()
    with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ppe:
        expected = _workload(ppe)
    with Executor([w.endpoint]) as ex:
        assert _workload(ex) == expected
        with pytest.raises(TypeError, match="not a zeromesh handler"):
            ex.submit(print, 1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(add, 1, 2)


def test_load_aware_dispatch_favours_the_fast_worker(mesh: Mesh) -> None:
    fast = mesh.start(service="testsvc:svc", env=TEST_ENV)
    slow = mesh.start(service="testsvc:svc", env={**TEST_ENV, "ZM_TEST_DELAY": "0.05"})
    with Client([fast.endpoint, slow.endpoint], prefetch=2) as c:
        futs = [c.submit("t.delay") for _ in range(200)]
        served = Counter(f.result() for f in futs)
    assert served[fast.pid] > 3 * served[slow.pid], served


def test_garbage_frames_get_error_replies_and_worker_keeps_serving(mesh: Mesh) -> None:
    w = mesh.start()
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(w.endpoint)
    good = protocol.encode(protocol.Request(9, "math.add", [1, 2]))
    bad_version = bytearray(good[0])
    bad_version[2] = 99
    cases = [
        [b"junk"],
        [b"junk", b"more"],
        [bytes(bad_version), good[1]],
        [good[0], b"\xc1"],  # never-used msgpack byte
        [good[0], b"\x92\x91"],  # truncated body
        [good[0], b"\xdd\xff\xff\xff\xff"],  # an array claiming 4 billion items
    ]
    try:
        for frames in cases:
            raw.send_multipart(frames)
            assert raw.poll(5000), f"no answer to {frames!r}"
            reply = protocol.decode(raw.recv_multipart())
            assert isinstance(reply, protocol.Error), reply
            assert reply.code in (
                protocol.ErrorCode.PROTOCOL,
                protocol.ErrorCode.UNSUPPORTED_VERSION,
                protocol.ErrorCode.LIMIT_EXCEEDED,
            )
        raw.send_multipart(good)
        assert raw.poll(5000)
        assert protocol.decode(raw.recv_multipart()) == protocol.Reply(9, 3)
    finally:
        raw.close()
        ctx.term()
    with Client([w.endpoint]) as c:
        assert c.call("math.add", 1, 1) == 2
    assert "malformed message" in w.output()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_close_leaks_no_threads_or_fds(mesh: Mesh) -> None:
    w = mesh.start()
    for _ in range(2):  # warm up imports and lazily created resources
        with Client([w.endpoint]) as c:
            c.call("math.add", 1, 2)
    threads, fds = threading.active_count(), _fds()
    for _ in range(5):
        c = Client([w.endpoint])
        assert c.call("math.add", 1, 2) == 3
        list(c.map("math.add", range(100), range(100)))
        c.close()
        c.close()  # idempotent
    assert threading.active_count() == threads
    assert _fds() == fds
    with pytest.raises(Exception, match="closed"):
        c.call("math.add", 1, 2)


def test_async_handlers_run_concurrently(mesh: Mesh) -> None:
    w = mesh.start()
    with Client([w.endpoint]) as c:
        # 50 x 0.5 s one after another would take 25 s: the later calls would time out.
        futs = [c.options(timeout=15).submit("math.wait", 0.5) for _ in range(50)]
        assert all(f.result() == "waited 0.5" for f in futs)


def test_ipc_path_of_a_live_worker_is_refused_and_stale_one_reused(mesh: Mesh) -> None:
    w1 = mesh.start(transport="ipc")
    second = mesh.start(endpoint=w1.endpoint, wait=False)
    assert second.wait(30) == 2
    assert "is serving on it" in second.output()
    w1.signal(signal.SIGKILL)
    w1.wait()
    path = w1.endpoint[len("ipc://") :]
    assert os.path.exists(path)  # the stale socket file is left behind
    w3 = mesh.start(endpoint=w1.endpoint)
    wait_ready([w3])
    with Client([w3.endpoint]) as c:
        assert c.call("math.pid") == w3.pid


def test_cancel_a_submitted_future(mesh: Mesh) -> None:
    w = mesh.start()
    with Client([w.endpoint]) as c:
        blocker = c.submit("math.sleep", 1.0)
        queued = c.submit("math.sleep", 30)
        # Both at the worker: the cancel must reach it (a call still queued in the
        # client is dropped there; the Dispatcher tests cover that).
        until(lambda: c.workers()[0].get("in_flight") == 2, "the worker holds both requests")
        assert queued.cancel()
        assert blocker.result() == "slept 1.0"
        assert c.options(timeout=10).call("math.add", 1, 2) == 3


def test_progress_reaches_the_client(mesh: Mesh) -> None:
    w = mesh.start(service="testsvc:svc", env=TEST_ENV)
    seen: list[tuple[float, float | None, str]] = []

    async def main() -> int:
        async with AsyncClient([w.endpoint]) as ac:
            on_progress = lambda p: seen.append((p.done, p.total, p.note))  # noqa: E731
            return await ac.options(on_progress=on_progress).call("t.count", 5)

    assert asyncio.run(main()) == 5
    assert seen == [(i + 1, 5, f"step {i + 1}") for i in range(5)]


def test_hard_timeout_inline_answers_timeout_and_exits_70(mesh: Mesh) -> None:
    w = mesh.start("--hard-timeout", "1", service="testsvc:svc", env=TEST_ENV)
    with Client([w.endpoint], retries=0) as c:
        with pytest.raises(Timeout, match="hard timeout"):
            c.call("t.spin", 30)
        assert w.wait(30) == 70
    assert "--hard-timeout 1" in w.output()


def test_max_requests_jitter_recycles_after_a_drawn_count(mesh: Mesh) -> None:
    w = mesh.start(
        "--max-requests",
        "3",
        "--max-requests-jitter",
        "4",
        "--log-level",
        "info",
        service="testsvc:svc",
        env=TEST_ENV,
    )
    m = re.search(
        r"recycling after (\d+) requests \(--max-requests 3 \+ (\d) of --max-requests-jitter 4\)",
        w.output(),
    )
    assert m, w.output()
    n = int(m.group(1))
    assert n == 3 + int(m.group(2))
    assert 3 <= n <= 7
    with Client([w.endpoint], retries=0) as c:
        for i in range(n):
            assert c.call("t.echo", i) == i
    assert w.wait(15) == 0
    assert f"served {n} requests" in w.output()
