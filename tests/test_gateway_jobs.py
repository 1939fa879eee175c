"""Background jobs through the gateway: lifecycle, progress, cancel, restart, expiry.

Real gateway processes, real demo workers, real HTTP. ``--job-concurrency 1`` makes
"queued" observable with a single worker: one job runs, the next waits in the gateway.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import gatewaykit
import pytest
from gatewaykit import DEMO, Gateways, finished
from meshkit import Mesh

pytestmark = pytest.mark.process  # tier 2: starts real processes

gateways = gatewaykit.gateways


def _running_with_progress(view: dict) -> bool:
    return view["status"] == "running" and bool(view["progress"]) and view["progress"]["done"] >= 1


def test_job_lifecycle_queued_running_done_failed(mesh: Mesh, gateways: Gateways) -> None:
    w = mesh.start(service=DEMO)
    gw = gateways.start(
        "--connect", w.endpoint, "--jobs-db", ":memory:", "--job-concurrency", "1", "--debug"
    )
    long = gw.submit("demo.steps", 8, ms=100)
    assert long["status"] == "queued"
    assert long["url"] == f"/jobs/{long['id']}"
    assert len(long["id"]) == 22
    quick = gw.submit("demo.fib", 20)
    bad = gw.submit("demo.fib", -1)

    view = gw.wait_job(long["id"], _running_with_progress)
    assert view["progress"]["total"] == 8
    assert view["progress"]["note"].startswith("step ")
    assert view["started"] is not None
    assert view["attempts"] == 1
    # One slot, held by the long job: the others wait in the gateway.
    for job in (quick, bad):
        waiting = gw.job(job["id"])
        assert (waiting["status"], waiting["started"], waiting["progress"]) == (
            "queued",
            None,
            None,
        )

    view = gw.wait_job(long["id"], finished)
    assert (view["status"], view["result"], view["error"]) == ("done", 8, None)
    assert view["progress"] == {"done": 8, "total": 8, "note": "step 8 of 8"}
    assert view["finished"] >= view["started"] >= view["created"]

    view = gw.wait_job(quick["id"], finished)
    assert (view["status"], view["result"]) == ("done", 6765)

    view = gw.wait_job(bad["id"], finished)
    assert view["status"] == "failed"
    assert view["result"] is None
    error = view["error"]
    assert (error["type"], error["code"]) == ("ValueError", 500)
    assert "n must be an integer" in error["message"]
    assert "raise ValueError" in error["traceback"]  # --debug

    # A handler no worker serves is refused at submit, once the gateway knows the workers.
    r = gw.request("POST", "/jobs/demo.nope", {"args": []})
    assert (r.status, r.error["type"]) == (404, "UnknownHandler")
    # The job's result in msgpack, on request.
    r = gw.request("GET", f"/jobs/{quick['id']}", headers={"Accept": "application/msgpack"})
    assert r.headers["Content-Type"] == "application/msgpack"


def test_cancel_a_queued_and_a_running_job(mesh: Mesh, gateways: Gateways) -> None:
    w = mesh.start(service=DEMO)
    gw = gateways.start("--connect", w.endpoint, "--jobs-db", ":memory:", "--job-concurrency", "1")
    running = gw.submit("demo.steps", 400, ms=25)  # 10 s unless cancelled
    queued = gw.submit("demo.fib", 10)
    gw.wait_job(running["id"], _running_with_progress)

    r = gw.request("DELETE", f"/jobs/{queued['id']}")
    assert r.status == 200
    assert (r.json["status"], r.json["started"], r.json["attempts"]) == ("cancelled", None, 0)

    r = gw.request("DELETE", f"/jobs/{running['id']}")
    assert r.status == 200
    assert r.json["status"] == "cancelled"
    assert r.json["progress"]["done"] >= 1  # how far it got

    # The worker's only handler thread is free again at once: the handler saw
    # cancelled() and returned. Had it gone on, this call would wait ~10 s and time out.
    r = gw.request("POST", "/call/demo.fib?timeout=5", {"args": [10]})
    assert (r.status, r.json) == (200, {"result": 55})

    # Cancelled stays cancelled; the queued job never ran.
    view = gw.job(queued["id"])
    assert (view["status"], view["started"], view["attempts"]) == ("cancelled", None, 0)
    assert gw.job(running["id"])["status"] == "cancelled"
    # Cancelling again is harmless; cancelling a finished job is a conflict.
    assert gw.request("DELETE", f"/jobs/{queued['id']}").json["status"] == "cancelled"
    done = gw.submit("demo.fib", 5)
    gw.wait_job(done["id"], finished)
    r = gw.request("DELETE", f"/jobs/{done['id']}")
    assert (r.status, r.error["type"]) == (409, "Conflict")


def test_restart_resubmits_unfinished_jobs(mesh: Mesh, gateways: Gateways, short_tmp: Path) -> None:
    w = mesh.start(service=DEMO)
    db = str(short_tmp / "jobs.db")
    args = ("--connect", w.endpoint, "--jobs-db", db, "--job-concurrency", "1")
    first = gateways.start(*args)
    running = first.submit("demo.steps", 10, ms=50)
    queued = first.submit("demo.fib", 15)
    cancelled = first.submit("demo.fib", 16)
    assert first.request("DELETE", f"/jobs/{cancelled['id']}").json["status"] == "cancelled"
    first.wait_job(running["id"], _running_with_progress)
    first.signal(signal.SIGKILL)  # a crash: no goodbye, the database as it was
    first.proc.wait(10)

    second = gateways.start(*args)
    assert "re-submitting 2 unfinished job(s)" in second.output()
    view = second.wait_job(running["id"], finished)
    assert (view["status"], view["result"], view["attempts"]) == ("done", 10, 2)
    view = second.wait_job(queued["id"], finished)
    assert (view["status"], view["result"], view["attempts"]) == ("done", 610, 1)
    # The cancel survived the restart: that job never ran.
    view = second.job(cancelled["id"])
    assert (view["status"], view["attempts"]) == ("cancelled", 0)

    # SIGTERM lets a running job finish (within --drain-timeout) before exiting.
    draining = second.submit("demo.steps", 5, ms=100)
    second.wait_job(draining["id"], _running_with_progress)
    assert second.stop() == 0
    assert "waiting up to 10 s for 0 call(s) and 1 job(s)" in second.output()
    third = gateways.start(*args)
    view = third.job(draining["id"])
    assert (view["status"], view["result"], view["attempts"]) == ("done", 5, 1)
    assert third.stop() == 0


def test_finished_jobs_expire_and_results_are_bounded(mesh: Mesh, gateways: Gateways) -> None:
    w = mesh.start(service=DEMO)
    gw = gateways.start(
        "--connect", w.endpoint, "--jobs-db", ":memory:", "--job-ttl", "1", "--max-result", "2K"
    )
    big = gw.submit("demo.histogram", [1.0, 2.0, 3.0], bins=1000)  # ~16 KB of edges
    small = gw.submit("demo.histogram", [1.0, 2.0, 3.0], bins=2)
    view = gw.wait_job(big["id"], finished)
    assert view["status"] == "failed"
    assert (view["error"]["type"], view["error"]["code"]) == ("ResultTooLarge", 502)
    assert "--max-result 2048" in view["error"]["message"]
    view = gw.wait_job(small["id"], finished)
    assert view["status"] == "done"
    assert view["result"]["counts"] == {"dtype": "int64", "shape": [2], "data": [1, 2]}

    # Readable until the TTL has passed, then gone.
    deadline = time.monotonic() + 10
    while gw.request("GET", f"/jobs/{small['id']}").status == 200:
        assert time.monotonic() < deadline, "finished job never expired"
        time.sleep(0.05)
    r = gw.request("GET", f"/jobs/{small['id']}")
    assert (r.status, r.error["type"]) == (404, "UnknownJob")
