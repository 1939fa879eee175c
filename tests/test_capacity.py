"""Threads and async slots apart (protocol 1.1, SPEC section 7.2), end to end.

A ``--concurrency 1`` worker of a service with a plain and an async handler announces
capacity 101: 1 thread and 100 async slots, which it says apart, as a broker says the
sums of its workers. A client that does not prefetch must still send it only one plain
request at a time, while its async handlers run many at once; the gateway likewise runs
one plain job at a time there. Real workers, brokers and gateways; `capsvc` handlers
that wait for the test (``cap.hold``) or for each other (``cap.meet``), so nothing
depends on timing.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import gatewaykit
import pytest
from brokerkit import ENV, SERVICE_B, BrokeredMesh, wait_for, workers_ready
from gatewaykit import Gateways, finished
from meshkit import Mesh

from client import Client
from protocol import PROTOCOL_REVISION

pytestmark = pytest.mark.process  # tier 2: starts real processes

CAP = "capsvc:svc"

gateways = gatewaykit.gateways


def _hello(endpoint: str) -> dict:
    """What ``endpoint`` says of itself now, asked by a fresh client.

    Fresh each time: a client's `workers` may answer with a HELLO it read late, sent
    before the asking (its greeting's answer), which would show the past.
    """
    with Client([endpoint]) as c:
        (row,) = c.workers()
    return row


def _until(endpoint: str, check: Callable[[dict], bool], what: str) -> dict:
    """Ask ``endpoint`` who it is until ``check(row)`` holds; return that row."""
    deadline = time.monotonic() + 20
    while not check(row := _hello(endpoint)):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not in 20 s; last seen {row}")
    return row


def test_a_worker_announces_threads_and_async_slots(mesh: Mesh) -> None:
    w = mesh.start("--concurrency", "1", "--max-async", "7", service=CAP, env=ENV)
    with Client([w.endpoint]) as c:
        (row,) = c.workers()
        assert row["protocol"] == PROTOCOL_REVISION
        assert (row["capacity"], row["threads"], row["async_slots"]) == (8, 1, 7)
        assert row["async_handlers"] == {"cap": ["meet"]}
        assert c.slots() == (1, 7, frozenset({"cap.meet"}))
        assert c.slots().for_target("cap.hold") == 1


def test_one_plain_call_at_a_time_while_async_calls_run_together(
    mesh: Mesh, short_tmp: Path
) -> None:
    w = mesh.start(service=CAP, env=ENV)  # --concurrency 1, --max-async 100
    gate = short_tmp / "open"
    with Client([w.endpoint], prefetch=0, timeout=30) as c:
        holds = [c.submit("cap.hold", str(gate)) for _ in range(4)]
        meets = [c.submit("cap.meet", 3) for _ in range(3)]
        # The async calls went out beside the one plain call that holds the thread
        # (not behind the plain ones waiting for it), and ran at the same time.
        assert [f.result() >= 3 for f in meets] == [True] * 3
        # The worker holds one request: the plain call running. The other three wait
        # in the client, not in the worker's queue behind it.
        for _ in range(5):
            assert _hello(w.endpoint)["in_flight"] == 1
        assert not any(f.done() for f in holds)
        gate.touch()
        assert {f.result() for f in holds} == {w.pid}


def test_a_draining_worker_announces_nothing_of_either_kind(mesh: Mesh, short_tmp: Path) -> None:
    w = mesh.start(service=CAP, env=ENV)
    gate = short_tmp / "open"
    with Client([w.endpoint], timeout=30) as c:
        held = c.submit("cap.hold", str(gate))
        _until(w.endpoint, lambda r: r["in_flight"] == 1, "the call reaches the worker")
        w.signal(signal.SIGTERM)  # it drains: the running call still finishes
        row = _until(w.endpoint, lambda r: r["state"] == "draining", "the worker drains")
        assert (row["capacity"], row["threads"], row["async_slots"]) == (0, 0, 0)
        gate.touch()
        assert held.result() == w.pid
    assert w.wait() == 0


def test_a_broker_announces_the_sums_of_its_workers(short_tmp: Path) -> None:
    bmesh = BrokeredMesh(short_tmp)
    try:
        b = bmesh.broker()
        bmesh.worker(b, service=CAP, args=("--max-async", "7"))
        bmesh.worker(b, service=SERVICE_B, args=("--concurrency", "2"))  # plain only
        wait_for(b, workers_ready(2), bmesh, what="2 workers")
        row = _hello(b.endpoint)
        assert (row["role"], row["protocol"]) == ("broker", PROTOCOL_REVISION)
        assert (row["capacity"], row["threads"], row["async_slots"]) == (1 + 7 + 2, 3, 7)
        assert row["async_handlers"] == {"cap": ["meet"]}
    finally:
        bmesh.close()


def test_the_gateway_runs_one_plain_job_per_thread(
    mesh: Mesh, gateways: Gateways, short_tmp: Path
) -> None:
    w = mesh.start(service=CAP, env=ENV)  # --concurrency 1
    gw = gateways.start("--connect", w.endpoint, "--jobs-db", ":memory:")
    gate = short_tmp / "open"
    holds = [gw.submit("cap.hold", str(gate))["id"] for _ in range(3)]
    gw.wait_job(holds[0], lambda v: v["status"] == "running")
    # Async jobs are not held up by the plain ones waiting, and run side by side.
    meets = [gw.submit("cap.meet", 3)["id"] for _ in range(3)]
    for job_id in meets:
        view = gw.wait_job(job_id, finished)
        assert view["status"] == "done", view
    # One thread: one plain job running, the others queued in the gateway.
    for _ in range(5):
        assert [gw.job(j)["status"] for j in holds] == ["running", "queued", "queued"]
    gate.touch()
    for job_id in holds:
        assert gw.wait_job(job_id, finished)["result"] == w.pid
