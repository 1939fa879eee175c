"""Hostile load end to end (issue 13): floods, peers that never read, slow HTTP clients.

Real worker and gateway processes and real sockets; the hostile peers are raw pyzmq
sockets and raw TCP connections (tests/hostilekit.py). Memory bounds are the point of
these tests; time bounds are generous and only tell "answered" from "starved".
"""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import itertools
import json
import os
import resource
import socket
import threading
import time
from collections.abc import Iterator

import gatewaykit
import pytest
from gatewaykit import DEMO, Gateways, Response, http_request
from hostilekit import Flooder, KiB, PeakRss, answers, raw_dealer, requests, rss_mb
from meshkit import ChildProcess, Mesh

import protocol
from client import Client

pytestmark = pytest.mark.process  # tier 2: starts real processes

gateways = gatewaykit.gateways

TEST_ENV = {"PYTHONPATH": os.path.dirname(__file__)}


def wait_for_log(proc: ChildProcess, word: str, timeout: float) -> str:
    """Poll ``proc``'s log until a line contains ``word``; return that line."""
    deadline = time.monotonic() + timeout
    while True:
        for line in proc.output().splitlines():
            if word in line:
                return line
        if time.monotonic() > deadline:
            pytest.fail(f"no {word!r} in the log within {timeout} s:\n{proc.output()[-3000:]}")
        time.sleep(0.05)


# --- fairness and bounded pending work ----------------------------------------------------

FLOOD = 200_000
FLOOD_GROWTH_MB = 80
"""What a worker may grow by while a flood waits on it. Holding all of a 200,000-request
flood costs a worker ~135 MB; within ``--max-pending`` it holds ~1,100 requests."""


def test_a_flood_from_one_client_neither_starves_others_nor_grows_the_worker(mesh: Mesh) -> None:
    w = mesh.start()  # examples.mathsvc: --concurrency 1, default --max-pending (capacity + 1000)
    flood = requests("math.sleep", [0.001], FLOOD)  # tiny messages, ~1 ms of work each
    # RCVHWM 0: the flooder takes every answer off the wire (it reads them afterwards), so
    # only the worker's intake is under test here, not its output.
    with Client([w.endpoint]) as c, raw_dealer(w.endpoint, rcvhwm=0) as raw:
        assert c.call("math.add", 0, 0) == 0
        base = rss_mb(w.pid)
        with PeakRss(w.pid) as mem, Flooder(raw, flood) as flooder:
            deadline = time.monotonic() + 30
            calls = 0
            while (flooder.is_alive() and time.monotonic() < deadline) or calls < 10:
                # Behind the whole flood this would wait minutes: Timeout.
                assert c.options(timeout=5).call("math.add", calls, 1) == calls + 1
                calls += 1
            assert flooder.sent == FLOOD, "the worker stopped taking messages"
        grown = mem.peak - base
        assert grown < FLOOD_GROWTH_MB, f"the worker grew {grown:.0f} MiB holding a flood"
        seen = answers(raw, FLOOD)
    # Refused at once beyond --max-pending: most of the flood, and nothing else.
    assert seen["OVERLOADED"] > FLOOD // 2, seen
    assert set(seen) <= {"REPLY", "OVERLOADED"}, seen


def test_a_full_worker_refuses_overloaded_and_the_client_tries_another(mesh: Mesh) -> None:
    # The client's own burst fills the worker, not a raw flooder: a worker that is fair to
    # a light client beside a heavy one rightly admits the light one.
    full = mesh.start("--max-pending", "2", service="testsvc:svc", env=TEST_ENV)
    other = mesh.start(service="testsvc:svc", env=TEST_ENV)
    with Client([full.endpoint, other.endpoint], timeout=30) as c:
        assert [r["state"] for r in c.workers()] == ["ready", "ready"]
        futs = [c.submit("t.slow_pid", 0.2) for _ in range(12)]
        pids = [f.result() for f in futs]  # none raises: what one refused, the other ran
    assert set(pids) <= {full.pid, other.pid}
    assert pids.count(other.pid) >= 7, pids

    # Handlers that outlast the client's retries (3 tries 50 ms apart): what the worker
    # refused stays refused.
    with Client([full.endpoint], timeout=30) as c:
        futs = [c.submit("t.slow_pid", 1.0) for _ in range(6)]
        errors = [f.exception() for f in futs]
    refused = [e for e in errors if isinstance(e, protocol.Overloaded)]
    assert refused, errors
    assert all(e is None or isinstance(e, protocol.Overloaded) for e in errors), errors
    assert sum(e is None for e in errors) >= 2, errors  # what it took, it ran


# --- bounded output per peer --------------------------------------------------------------

UNREAD = 50_000
UNREAD_RSS_MB = 600
"""A worker's memory while a client that never reads is owed 3.2 GB of answers (queued
without a bound, they took a worker to 3.6 GB)."""


def test_a_client_that_never_reads_cannot_grow_a_worker_without_bound(mesh: Mesh) -> None:
    w = mesh.start(service="testsvc:svc", env=TEST_ENV)
    flood = requests("t.echo", [b"x" * (64 * KiB)], UNREAD)  # 64 KiB back for each
    with Client([w.endpoint]) as c:
        assert c.call("t.echo", 0) == 0
        with (
            raw_dealer(w.endpoint) as raw,  # stops taking answers off the wire at once
            PeakRss(w.pid) as mem,
            Flooder(raw, flood) as flooder,
        ):
            deadline = time.monotonic() + 40
            calls = 0
            while flooder.is_alive() and mem.peak < UNREAD_RSS_MB and time.monotonic() < deadline:
                assert c.options(timeout=5).call("t.echo", calls) == calls
                calls += 1
        assert mem.peak < UNREAD_RSS_MB, f"the worker reached {mem.peak:.0f} MiB"
        assert calls >= 3, "the flood ended before other calls were made"
        # The raw client is gone: the worker says how many answers it could not deliver.
        line = wait_for_log(w, "undeliverable", 15)
        assert any(ch.isdigit() for ch in line), line
        assert c.call("t.echo", 1) == 1


# --- what must stay true ------------------------------------------------------------------

SUBMITS = 300_000
CLIENT_GROWTH_MB = 15
"""A client's memory growth over `SUBMITS` submits: ~0 when it keeps only what is in
flight; ~35 MB when every call leaves ~130 bytes behind until its timeout passes.
(300,000 rather than 500,000 keeps the test near 30 s on two cores.)"""


def test_client_memory_stays_bounded_over_many_submits(mesh: Mesh) -> None:
    w = mesh.start(service="testsvc:svc", env=TEST_ENV)
    done = itertools.count(1)  # next() on it is atomic: callbacks run on several threads
    failed: list[BaseException] = []
    finished = threading.Event()

    def on_done(fut: cf.Future[int]) -> None:
        exc = fut.exception()
        if exc is not None:
            failed.append(exc)
        if next(done) == SUBMITS:
            finished.set()

    # A timeout longer than the test: what a call leaves behind until then must be nothing.
    with Client([w.endpoint], max_in_flight=1000, timeout=300) as c:
        for f in [c.submit("t.echo", i) for i in range(5000)]:  # warm up to steady state
            f.result()
        base = rss_mb()
        for i in range(SUBMITS):  # the futures are dropped; submit blocks at 1000 unanswered
            c.submit("t.echo", i).add_done_callback(on_done)
        assert finished.wait(60), "not every submit was answered"
        grown = rss_mb() - base
    assert not failed, failed[:3]
    assert grown < CLIENT_GROWTH_MB, f"the client grew {grown:.0f} MiB over {SUBMITS} submits"


def test_a_job_flood_at_the_gateway_is_refused_429_with_retry_after(
    mesh: Mesh, gateways: Gateways
) -> None:
    w = mesh.start(service=DEMO)
    gw = gateways.start(
        "--connect",
        w.endpoint,
        "--jobs-db",
        ":memory:",
        "--job-concurrency",
        "1",
        "--max-queued-jobs",
        "10",
    )
    # An async handler: the jobs wait 30 s each without holding the thread calls run on.
    body = json.dumps({"args": [30_000]}).encode()
    submit = (
        b"POST /jobs/demo.wait HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    conns = [socket.create_connection(("127.0.0.1", gw.port), timeout=30) for _ in range(300)]
    try:
        for s in conns:  # all at once: the bound must hold for submits that overlap
            s.sendall(submit)
        replies = [read_response(s) for s in conns]
    finally:
        for s in conns:
            s.close()
    accepted = [r for r in replies if r.status == 202]
    refused = [r for r in replies if r.status == 429]
    assert len(accepted) + len(refused) == len(replies), {r.status for r in replies}
    assert 10 <= len(accepted) <= 11, len(accepted)  # the queue, and the one running
    for r in refused:
        assert r.error["type"] == "Overloaded"
        assert int(r.headers["Retry-After"]) >= 1
    r = gw.call("demo.fib", 15)
    assert (r.status, r.json) == (200, {"result": 610})
    assert gw.request("GET", "/healthz").json["gateway"]["jobs_queued"] <= 10


def read_response(sock: socket.socket) -> Response:
    """The HTTP response waiting on ``sock``, read whole."""
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    return Response(resp.status, resp.headers, resp.read())


SLOW_CLIENTS = 2000


@pytest.fixture
def many_fds() -> Iterator[None]:
    """Room for `SLOW_CLIENTS` sockets here and in the processes the test starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * SLOW_CLIENTS + 512
    if soft >= need:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("many_fds")
def test_slow_http_clients_do_not_slow_a_normal_call(mesh: Mesh, gateways: Gateways) -> None:
    w = mesh.start(service=DEMO)
    gw = gateways.start("--connect", w.endpoint, "--jobs-db", ":memory:")
    body = b'{"args": [15]}'
    slow = [
        # Headers that never end, and a body that never comes: half of each.
        b"POST /call/demo.fib HTTP/1.1\r\nHost: x\r\nContent-Length: 14\r\n",
        b"POST /call/demo.fib HTTP/1.1\r\nHost: x\r\nContent-Length: 14\r\n\r\n" + body[:3],
    ]
    conns: list[socket.socket] = []
    try:
        for i in range(SLOW_CLIENTS):
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            conns.append(s)
            s.sendall(slow[i % 2])
        start = time.monotonic()
        r = http_request(gw.port, "POST", "/call/demo.fib", body, timeout=10)
        assert (r.status, r.json) == (200, {"result": 610})
        assert time.monotonic() - start < 5, "a normal call waited on the slow clients"
    finally:
        for s in conns:
            s.close()
    assert gw.proc.poll() is None
    assert gw.call("demo.fib", 10).json == {"result": 55}
