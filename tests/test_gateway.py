"""The HTTP gateway end to end: a real gateway process, real workers, real HTTP requests.

Most tests share one mesh (two demo workers) and one gateway, started once for the
module; tests that need another configuration start their own.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import gatewaykit
import msgpack
import numpy as np
import pytest
from gatewaykit import DEMO, GatewayProcess, Gateways, Response, http_request
from meshkit import Mesh, free_port, wait_ready

from examples.demosvc import fib

pytestmark = pytest.mark.process  # tier 2: starts real processes

gateways = gatewaykit.gateways

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayProcess]:
    """One gateway in front of two demo workers, for the whole module."""
    tmp = Path(tempfile.mkdtemp(prefix="zmg", dir="/tmp"))
    mesh = Mesh(tmp)
    gws = Gateways(tmp)
    try:
        workers = [mesh.start(service=DEMO, wait=False) for _ in range(2)]
        wait_ready(workers)
        endpoints = ",".join(w.endpoint for w in workers)
        yield gws.start("--connect", endpoints, "--jobs-db", ":memory:", "--max-body", "64K")
    finally:
        gws.close()
        mesh.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


# --- calls --------------------------------------------------------------------------------


def test_call_returns_the_result(gw: GatewayProcess) -> None:
    r = gw.call("demo.fib", 20)
    assert (r.status, r.json) == (200, {"result": 6765})
    assert r.headers["Content-Type"] == "application/json"
    assert gw.call("demo.fib", n=10).json == {"result": 55}
    assert gw.call("demo.wait", 5).json == {"result": 5}
    # curl -d sends a form content type: the body is still read as JSON.
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    r = gw.request("POST", "/call/demo.fib", b'{"args": [12]}', headers=form)
    assert r.json == {"result": 144}
    # A msgpack body works too.
    packed = msgpack.packb({"args": [11]})
    r = gw.request(
        "POST", "/call/demo.fib", packed, headers={"Content-Type": "application/msgpack"}
    )
    assert r.json == {"result": 89}


def test_numpy_results_as_json_and_as_msgpack(gw: GatewayProcess) -> None:
    values = [1.0, 2.0, 2.5, 4.0, 9.0]
    body = {"args": [values], "kwargs": {"bins": 4}}
    counts, edges = np.histogram(values, bins=4)
    r = gw.request("POST", "/call/demo.histogram", body)
    assert r.status == 200
    result = r.json["result"]
    assert result["counts"] == {"dtype": "int64", "shape": [4], "data": counts.tolist()}
    assert result["edges"] == {"dtype": "float64", "shape": [5], "data": edges.tolist()}

    r = gw.request("POST", "/call/demo.histogram", body, headers={"Accept": "application/msgpack"})
    assert r.status == 200
    assert r.headers["Content-Type"] == "application/msgpack"
    result = msgpack.unpackb(r.body)["result"]
    got = np.frombuffer(result["edges"]["data"], dtype="<f8").reshape(result["edges"]["shape"])
    np.testing.assert_array_equal(got, edges)
    assert result["counts"]["dtype"] == "int64"
    np.testing.assert_array_equal(np.frombuffer(result["counts"]["data"], "<i8"), counts)


# Each row: what to send, and the status and error type that must come back.
ERRORS = [
    pytest.param("POST", "/call/demo.nope", {"args": []}, 404, "UnknownHandler", id="unknown"),
    pytest.param("POST", "/call/nodot", {}, 404, "UnknownHandler", id="not-a-target"),
    pytest.param("GET", "/nowhere", None, 404, "NotFound", id="no-route"),
    pytest.param("GET", "/jobs/AAAAAAAAAAAAAAAAAAAAAA", None, 404, "UnknownJob", id="no-job"),
    pytest.param("DELETE", "/jobs/not-an-id", None, 404, "UnknownJob", id="bad-job-id"),
    pytest.param("PUT", "/call/demo.fib", b"{}", 405, "MethodNotAllowed", id="method"),
    pytest.param("POST", "/call/demo.fib", b'{"args": [1', 400, "BadRequest", id="bad-json"),
    pytest.param("POST", "/call/demo.fib", b"\xff\xfe", 400, "BadRequest", id="not-utf8"),
    pytest.param("POST", "/call/demo.fib", [1, 2], 400, "BadRequest", id="not-object"),
    pytest.param("POST", "/call/demo.fib", {"args": 5}, 400, "BadRequest", id="args-not-list"),
    pytest.param("POST", "/call/demo.fib", {"kwargs": []}, 400, "BadRequest", id="kwargs-list"),
    pytest.param("POST", "/call/demo.fib", {"arg": [1]}, 400, "BadRequest", id="unknown-key"),
    pytest.param(
        "POST", "/call/demo.fib?timeout=x", {"args": [1]}, 400, "BadRequest", id="bad-timeout"
    ),
    pytest.param(
        "POST", "/call/demo.fib", {"args": [_nested(40)]}, 400, "BadRequest", id="too-deep"
    ),
    pytest.param("POST", "/call/demo.fib", {"args": []}, 422, "BadArguments", id="missing-arg"),
    pytest.param(
        "POST", "/call/demo.fib", {"args": [1], "kwargs": {"x": 1}}, 422, "BadArguments", id="extra"
    ),
    pytest.param("POST", "/call/demo.fib", {"args": [-1]}, 500, "ValueError", id="handler-raised"),
    pytest.param(
        "POST", "/call/demo.wait?timeout=0.2", {"args": [5000]}, 504, "Timeout", id="timeout"
    ),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "kind"), ERRORS)
def test_errors_map_to_http(
    gw: GatewayProcess, method: str, path: str, body: Any, status: int, kind: str
) -> None:
    r = gw.request(method, path, body)
    assert r.status == status, r.body
    err = r.error
    assert err["type"] == kind
    assert err["message"]
    assert "traceback" not in err  # only with --debug


def test_handler_error_carries_the_remote_message(gw: GatewayProcess) -> None:
    err = gw.call("demo.fib", -1).error
    assert err == {
        "type": "ValueError",
        "message": "n must be an integer from 0 to 60, not -1",
        "code": 500,
    }


def test_timeout_advice_is_in_http_terms(gw: GatewayProcess) -> None:
    err = gw.request("POST", "/call/demo.wait?timeout=0.2", {"args": [2000]}).error
    assert "no reply within 0.2 s" in err["message"]
    assert "?timeout=" in err["message"]
    assert "options(" not in err["message"]


def test_deepest_allowed_arguments_reach_the_worker(gw: GatewayProcess) -> None:
    from gateway._app import MAX_ARGUMENT_DEPTH

    # The worker decodes it (no 502 ProtocolError) and the handler rejects the value.
    deepest = _nested(MAX_ARGUMENT_DEPTH - 1)  # args itself is one level
    r = gw.request("POST", "/call/demo.fib", {"args": [deepest]})
    assert (r.status, r.error["type"]) == (500, "ValueError")
    r = gw.request("POST", "/call/demo.fib", {"args": [[deepest]]})
    assert (r.status, r.error["type"]) == (400, "BadRequest")


# Python's json reads all of these, but the wire does not carry them (SPEC section 4).
# 1e999 used to reach the handler as inf (math.add answered 200 {"result": null}); an
# integer over 64 bits got 502 on /call and 500 on /jobs.
BAD_NUMBERS = [
    pytest.param(b'{"args": [1e999]}', "JSON number 1e999 is out of the float64 range", id="1e999"),
    pytest.param(
        b'{"args": [-1e999]}', "JSON number -1e999 is out of the float64 range", id="-1e999"
    ),
    pytest.param(b'{"args": [NaN]}', "NaN is not a JSON number", id="NaN"),
    pytest.param(b'{"kwargs": {"ms": Infinity}}', "Infinity is not a JSON number", id="Infinity"),
    pytest.param(
        b'{"args": [18446744073709551616]}',
        "integer 18446744073709551616 is out of range: zeromesh integers are -2**63..2**64-1",
        id="2**64",
    ),
    pytest.param(
        b'{"args": [-9223372036854775809]}',
        "integer -9223372036854775809 is out of range: zeromesh integers are -2**63..2**64-1",
        id="-2**63-1",
    ),
]


@pytest.mark.parametrize("route", ["/call/demo.wait", "/jobs/demo.wait"])
@pytest.mark.parametrize(("body", "named"), BAD_NUMBERS)
def test_numbers_the_wire_does_not_carry_are_400(
    gw: GatewayProcess, route: str, body: bytes, named: str
) -> None:
    r = gw.request("POST", route, body)
    assert r.status == 400, r.body
    err = r.error
    assert err["type"] == "BadRequest"
    assert named in err["message"], err


def test_integers_at_the_ends_of_the_range_reach_the_worker(gw: GatewayProcess) -> None:
    # Not refused by the gateway (400) nor by the encoder (502): the handler sees them.
    for n in (2**64 - 1, -(2**63)):
        r = gw.call("demo.fib", n)
        assert (r.status, r.error["type"]) == (500, "ValueError"), r.body
        assert f"not {n}" in r.error["message"]
    view = gw.submit("demo.fib", 2**64 - 1)
    assert gw.wait_job(view["id"], gatewaykit.finished)["error"]["type"] == "ValueError"


def test_call_result_over_max_result_is_refused_before_rendering(
    gw: GatewayProcess, gateways: Gateways
) -> None:
    from gateway._render import result_size

    connect = gw.args[gw.args.index("--connect") + 1]
    small = gateways.start("--connect", connect, "--jobs-db", ":memory:", "--max-result", "2K")
    values = [1.0, 2.0, 3.0]
    big = {"args": [values], "kwargs": {"bins": 1000}}  # ~16 KB of counts and edges
    counts, edges = np.histogram(values, bins=1000)
    size = result_size({"counts": counts, "edges": edges})
    for accept in ("application/json", "application/msgpack"):
        r = small.request("POST", "/call/demo.histogram", big, headers={"Accept": accept})
        assert r.status == 502, r.body
        err = r.error
        assert err["type"] == "ResultTooLarge"
        assert f"the result takes {size} bytes" in err["message"]
        assert "(--max-result 2048)" in err["message"]
        assert "return less" in err["message"]
    # A result under the limit passes; the default limit (16 MiB) lets the big one by.
    r = small.request("POST", "/call/demo.histogram", {"args": [values], "kwargs": {"bins": 2}})
    assert (r.status, r.json["result"]["counts"]["data"]) == (200, [1, 2])
    assert gw.request("POST", "/call/demo.histogram", big).status == 200


def test_oversized_body_gets_413_and_nothing_else_is_affected(gw: GatewayProcess) -> None:
    # A call in flight all along must be answered normally.
    slow: list[Response] = []
    t = threading.Thread(target=lambda: slow.append(gw.call("demo.wait", 400)))
    t.start()

    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        # Sent whole (no Expect): read and dropped, then a JSON 413 ...
        conn.request("POST", "/call/demo.fib", body=b"x" * (MAX_BODY + 1))
        resp = conn.getresponse()
        r = Response(resp.status, resp.headers, resp.read())
        assert r.status == 413
        assert r.error["type"] == "PayloadTooLarge"
        assert str(MAX_BODY) in r.error["message"]
        # ... and the same keep-alive connection still serves.
        conn.request("POST", "/call/demo.fib", body=json.dumps({"args": [15]}))
        resp = conn.getresponse()
        assert (resp.status, json.loads(resp.read())) == (200, {"result": 610})
        # Chunked (no Content-Length): counted as it arrives.
        chunks = iter([b"[" * 1000] * (MAX_BODY // 1000 + 2))
        conn.request("POST", "/call/demo.fib", body=chunks, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 413
        assert json.loads(resp.read())["error"]["type"] == "PayloadTooLarge"
    finally:
        conn.close()

    # A client that waits for "100 Continue" gets the 413 without sending 10 GB.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        s.sendall(
            b"POST /call/demo.fib HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        reply = b""
        while b"}}" not in reply:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), reply
    assert json.loads(body)["error"]["code"] == 413

    # A body just at the limit is fine.
    padded = json.dumps({"args": [9]}).encode()
    padded = padded[:-1] + b" " * (MAX_BODY - len(padded)) + b"}"
    assert len(padded) == MAX_BODY
    assert gw.request("POST", "/call/demo.fib", padded).json == {"result": 34}

    t.join(10)
    assert slow[0].status == 200
    assert slow[0].json == {"result": 400}


def test_200_concurrent_requests_all_answered(gw: GatewayProcess) -> None:
    n = 200
    start = threading.Barrier(n)

    def one(i: int) -> tuple[int, Any, Any]:
        if i % 2:
            target, arg, want = "demo.fib", i % 22, fib(i % 22)
        else:
            target, arg, want = "demo.wait", 50, 50
        start.wait(30)
        r = http_request(gw.port, "POST", f"/call/{target}", {"args": [arg]}, timeout=60)
        return r.status, r.json, {"result": want}

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    assert [status for status, _, _ in results] == [200] * n
    assert all(got == want for _, got, want in results)


def test_hanging_up_cancels_the_call_on_the_worker(gw: GatewayProcess) -> None:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
        body = json.dumps({"args": [500], "kwargs": {"ms": 20}}).encode()  # 10 s of steps
        s.sendall(
            b"POST /call/demo.steps HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        _wait_in_flight(gw, lambda n: n >= 1)
    # The gateway sent CANCEL; the handler checks cancelled() every step and stops.
    _wait_in_flight(gw, lambda n: n == 0, timeout=5)


def _wait_in_flight(gw: GatewayProcess, ok: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        n = gw.request("GET", "/healthz").json["in_flight"]
        if ok(n):
            return
        assert time.monotonic() < deadline, f"workers' in-flight count stuck at {n}"
        time.sleep(0.02)


def test_healthz_reports_workers(gw: GatewayProcess) -> None:
    r = gw.request("GET", "/healthz")
    assert r.status == 200
    h = r.json
    assert h["status"] == "ok"
    assert h["workers_ready"] == 2
    for w in h["workers"]:
        assert w["state"] == "ready"
        assert w["services"] == {"demo": ["fib", "histogram", "primes", "steps", "wait"]}
        assert w["version"]
        assert w["pid"] > 0
        assert "in_flight" in w
    assert h["gateway"]["jobs_queued"] == 0


# --- without workers --------------------------------------------------------------------------


def test_no_workers_503_and_overload_429(gateways: Gateways) -> None:
    dead = f"tcp://127.0.0.1:{free_port()}"
    gw = gateways.start(
        "--connect",
        dead,
        "--jobs-db",
        ":memory:",
        "--wait-for-workers",
        "1.5",
        "--max-pending",
        "2",
        "--max-queued-jobs",
        "1",
    )
    r = gw.request("GET", "/healthz")
    assert (r.status, r.json["status"]) == (503, "unavailable")
    assert r.json["workers"][0]["state"] == "unreachable"

    with ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(gw.call, "demo.fib", 5) for _ in range(2)]
        deadline = time.monotonic() + 10
        while gw.request("GET", "/healthz").json["gateway"]["calls_in_progress"] < 2:
            assert time.monotonic() < deadline
        r = gw.call("demo.fib", 5)
        assert (r.status, r.error["type"]) == (429, "Overloaded")
        assert r.headers["Retry-After"] == "1"
        for fut in waiting:
            r = fut.result(30)
            assert (r.status, r.error["type"]) == (503, "NoWorkers")
            assert int(r.headers["Retry-After"]) >= 1

    # Jobs wait for workers in the gateway's queue, which is bounded.
    job = gw.submit("demo.fib", 5)
    assert gw.job(job["id"])["status"] == "queued"
    r = gw.request("POST", "/jobs/demo.fib", {"args": [6]})
    assert (r.status, r.error["type"]) == (429, "Overloaded")
    assert r.headers["Retry-After"] == "1"
    assert gw.stop() == 0


# --- command line -------------------------------------------------------------------------


def _run_gateway(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**{k: v for k, v in os.environ.items() if k != "ZEROMESH_ENDPOINTS"}, **(env or {})},
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_cli_help() -> None:
    code, out = _run_gateway("--help")
    assert code == 0
    for word in ("--listen", "--connect", "--jobs-db", "--max-body", "/healthz", "at least once"):
        assert word in out


def test_cli_startup_errors_are_clear(
    short_tmp: Path, gateways: Gateways, caplog: pytest.LogCaptureFixture, monkeypatch
) -> None:
    from gateway import main

    monkeypatch.delenv("ZEROMESH_ENDPOINTS", raising=False)

    def refused(*args: str) -> str:
        caplog.clear()
        assert main(list(args)) == 2
        (record,) = [r for r in caplog.records if r.name == "zeromesh.gateway"]
        assert record.getMessage().startswith("cannot start: ")
        return record.getMessage()

    mem = ["--listen", "127.0.0.1:0", "--jobs-db", ":memory:"]
    ep = ["--connect", "tcp://127.0.0.1:5555"]
    assert "no endpoints" in refused(*mem)
    assert "bind address" in refused("--connect", "tcp://*:5555", *mem)
    assert "expected HOST:PORT" in refused(*ep, "--listen", "localhost")
    assert "--max-pending must be at least 1" in refused(*ep, *mem, "--max-pending", "0")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        message = refused(*ep, "--listen", f"127.0.0.1:{port}", "--jobs-db", ":memory:")
    assert f"cannot listen on 127.0.0.1:{port}" in message

    junk = short_tmp / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    assert "not a usable jobs database" in refused(
        *ep, "--listen", "127.0.0.1:0", "--jobs-db", str(junk)
    )
    missing = refused(*ep, "--listen", "127.0.0.1:0", "--jobs-db", "/nonexistent/dir/j.db")
    assert "/nonexistent/dir does not exist" in missing

    # One database, one gateway: a second one is refused while the first runs.
    db = str(short_tmp / "jobs.db")
    first = gateways.start(*ep, "--jobs-db", db)
    message = refused(*ep, "--listen", "127.0.0.1:0", "--jobs-db", db)
    assert f"in use by gateway pid {first.proc.pid}" in message
    assert first.stop() == 0
    assert "stopped" in first.output()

    # Bad flag values are usage errors from argparse (exit 2 too).
    code, out = _run_gateway(*ep, "--max-body", "lots")
    assert code == 2
    assert "not a size" in out


def test_jobs_db_defaults_to_xdg_state_home(short_tmp: Path, gateways: Gateways) -> None:
    gw = gateways.start(
        "--connect", "tcp://127.0.0.1:5555", env={"XDG_STATE_HOME": str(short_tmp / "state")}
    )
    assert (short_tmp / "state" / "zeromesh" / "gateway-jobs.sqlite3").exists()
    assert gw.stop() == 0


def test_gateway_runs_in_process() -> None:
    """The public API: a `Gateway` on the caller's own event loop."""
    import asyncio

    from tornado.httpclient import AsyncHTTPClient

    from gateway import MEMORY, Gateway, GatewayConfig

    async def scenario() -> None:
        dead = f"tcp://127.0.0.1:{free_port()}"
        gw = Gateway(GatewayConfig(dead, port=0, jobs_db=MEMORY, wait_for_workers=0.1))
        await gw.start()
        http = AsyncHTTPClient(force_instance=True)
        try:
            assert gw.port != 0
            r = await http.fetch(f"{gw.url}/healthz", raise_error=False)
            assert r.code == 503
            r = await http.fetch(
                f"{gw.url}/call/demo.fib", method="POST", body=b"{}", raise_error=False
            )
            assert (r.code, json.loads(r.body)["error"]["type"]) == (503, "NoWorkers")
        finally:
            http.close()
            await gw.stop()

    asyncio.run(scenario())


def test_readme_curl_examples_work_as_written(gw: GatewayProcess) -> None:
    """README's "From Flask/Celery to zeromesh": each ``$ curl`` runs, with this
    gateway's port and the live job id, and answers as shown."""
    import re
    import subprocess

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.partition("\n## From Flask/Celery to zeromesh\n")[2].partition("\n## ")[0]
    # Each "$ curl ..." line and the output shown under it, up to the next one.
    shown = dict(re.findall(r"^\$ (curl [^\n]*)\n(.*?)(?=^\$ |^```)", section, re.M | re.S))
    commands = list(shown)
    assert len(commands) == 5, commands
    shown_id = re.search(r'"id":"([A-Za-z0-9_-]{22})"', section).group(1)  # type: ignore[union-attr]

    def run(command: str, job_id: str = "") -> str:
        command = command.replace("localhost:8080", f"127.0.0.1:{gw.port}")
        if job_id:
            command = command.replace(shown_id, job_id)
        out = subprocess.run(
            ["bash", "-c", command + " --silent --show-error"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return out.stdout

    assert run(commands[0]) == '{"result":75025}'
    submitted = json.loads(run(commands[1]))
    assert submitted["status"] == "queued"
    view = json.loads(run(commands[2], submitted["id"]))
    assert set(view) == set(json.loads(shown[commands[2]]))
    assert view["status"] in ("queued", "running")
    assert json.loads(run(commands[3], submitted["id"]))["status"] == "cancelled"
    head, _, body = run(commands[4]).partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 500 Internal Server Error")
    assert "Content-Type: application/json" in head
    assert body in section
