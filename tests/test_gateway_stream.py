"""``POST /stream`` at the HTTP gateway (issue 19): Server-Sent Events and NDJSON from
generator handlers, read by real HTTP clients (tornado's, curl, a bare socket).

One gateway, for the module, in front of a demo worker and a worker serving
tests/streamsvc.py (whose handlers write what they did to files the test reads).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gatewaykit import DEMO, GatewayProcess, Gateways
from meshkit import Mesh, wait_ready
from test_streams import ENV, SERVICE, _read, _wait_for

pytestmark = pytest.mark.process  # tier 2: starts real processes


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayProcess]:
    tmp = Path(tempfile.mkdtemp(prefix="zms", dir="/tmp"))
    mesh = Mesh(tmp)
    gws = Gateways(tmp)
    try:
        workers = [
            mesh.start(service=DEMO, wait=False),
            mesh.start("--concurrency", "4", service=SERVICE, env=ENV, wait=False),
        ]
        wait_ready(workers)
        endpoints = ",".join(w.endpoint for w in workers)
        yield gws.start("--connect", endpoints, "--jobs-db", ":memory:")
    finally:
        gws.close()
        mesh.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _events(text: str) -> list[tuple[str, Any]]:
    """Server-Sent Events as (event name, parsed data); "message" when unnamed."""
    out = []
    for block in text.split("\n\n"):
        if not block:
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((fields.get("event", "message"), json.loads(fields["data"])))
    return out


def _fetch(gw: GatewayProcess, path: str, body: Any, accept: str = "") -> tuple[Any, list[bytes]]:
    """POST with tornado's AsyncHTTPClient, collecting the body chunk by chunk as a
    streaming reader does; returns the response and the chunks."""
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest

    chunks: list[bytes] = []

    async def go() -> Any:
        http = AsyncHTTPClient(force_instance=True)
        try:
            request = HTTPRequest(
                f"http://127.0.0.1:{gw.port}{path}",
                method="POST",
                body=json.dumps(body),
                headers={"Accept": accept} if accept else {},
                streaming_callback=chunks.append,
                request_timeout=60,
            )
            return await http.fetch(request, raise_error=False)
        finally:
            http.close()

    return asyncio.run(go()), chunks


def test_items_arrive_as_server_sent_events(gw: GatewayProcess) -> None:
    r, chunks = _fetch(gw, "/stream/gen.count", {"args": [200]})
    assert r.code == 200
    assert r.headers["Content-Type"] == "text/event-stream"
    assert r.headers["Cache-Control"] == "no-store"
    events = _events(b"".join(chunks).decode())
    assert events == [("message", i) for i in range(200)] + [("end", {"items": 200})]
    assert len(chunks) > 1  # written as they came, not as one body at the end


def test_ndjson_when_asked_with_arrays_as_json(gw: GatewayProcess) -> None:
    r, chunks = _fetch(gw, "/stream/gen.arrays", {"args": [3, 2]}, "application/x-ndjson")
    assert r.code == 200
    assert r.headers["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in b"".join(chunks).decode().splitlines()]
    assert lines == [
        {"item": {"dtype": "float64", "shape": [2], "data": [float(i), float(i)]}} for i in range(3)
    ] + [{"end": {"items": 3}}]


def test_an_error_mid_stream_is_the_last_event_after_the_items(gw: GatewayProcess) -> None:
    r, chunks = _fetch(gw, "/stream/gen.fails_after", {"args": [3]})
    assert r.code == 200  # sent with the first item
    events = _events(b"".join(chunks).decode())
    assert events[:3] == [("message", 0), ("message", 1), ("message", 2)]
    assert len(events) == 4
    kind, error = events[3]
    assert kind == "error"
    assert (error["type"], error["code"]) == ("ValueError", 500)
    assert "failed after 3 items" in error["message"]
    r, chunks = _fetch(gw, "/stream/gen.fails_after", {"args": [1]}, "application/x-ndjson")
    last = json.loads(b"".join(chunks).decode().splitlines()[-1])
    assert last["error"]["type"] == "ValueError"


@pytest.mark.parametrize(
    ("path", "status", "kind"),
    [
        ("/stream/gen.nothere", 404, "UnknownHandler"),
        ("/stream/gen.plain", 422, "BadArguments"),  # not a generator: nothing ran
        ("/stream/gen.count?window=0", 400, "BadRequest"),
        ("/stream/gen.count?window=x", 400, "BadRequest"),
        ("/stream/gen.count?item_timeout=-1", 400, "BadRequest"),
        ("/stream/nodots", 404, "UnknownHandler"),
    ],
)
def test_an_error_before_the_first_item_is_an_ordinary_http_error(
    gw: GatewayProcess, path: str, status: int, kind: str
) -> None:
    r = gw.request("POST", path, {"args": [1]})
    assert r.status == status, r.body
    assert r.error["type"] == kind


def test_an_empty_stream_ends_at_once(gw: GatewayProcess) -> None:
    r = gw.request("POST", "/stream/gen.count", {"args": [0]})
    assert (r.status, r.body) == (200, b'event: end\ndata: {"items":0}\n\n')


def _open_stream(gw: GatewayProcess, path: str, body: Any) -> socket.socket:
    """Send a POST on a bare socket and return it unread (a client that reads slowly,
    or not at all)."""
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    data = json.dumps(body).encode()
    s.sendall(
        b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        % (path.encode(), len(data), data)
    )
    return s


def test_hanging_up_cancels_the_stream_on_the_worker(gw: GatewayProcess) -> None:
    where = Path(tempfile.mkdtemp(prefix="zmh", dir="/tmp"))
    try:
        s = _open_stream(gw, "/stream/gen.watched", {"args": [100_000, str(where)]})
        with s:
            assert s.recv(100).startswith(b"HTTP/1.1 200 OK")
        closed = _wait_for("the handler's finally", lambda: _read(where / "closed"))
        assert closed.endswith("cancelled=True")
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_a_caller_that_stops_reading_pauses_the_handler(gw: GatewayProcess) -> None:
    # 64 KiB items (about 87 KiB as base64 JSON) to a caller that reads nothing: once
    # the sockets' buffers are full the gateway stops taking items, its credit runs
    # out, and the handler stays paused: it does not run through its 10,000 items.
    where = Path(tempfile.mkdtemp(prefix="zmp", dir="/tmp"))
    try:
        s = _open_stream(gw, "/stream/gen.watched?window=2", {"args": [10_000, str(where), 65_536]})
        with s:

            def produced() -> int:  # (the file is rewritten as the handler goes)
                return int(_wait_for("a count", lambda: _read(where / "produced")))

            _wait_for("some items", lambda: produced() > 2)
            before, now = -1, produced()
            while now != before:  # until it stops moving
                before = now
                time.sleep(0.5)
                now = produced()
            assert now < 500, now
            assert not (where / "closed").exists()
            # Reading again lets it go on.
            s.settimeout(10)
            got = 0
            while got < 200 * 65_536:
                data = s.recv(1 << 20)
                assert data, "the gateway closed the connection"
                got += len(data)
            _wait_for("more items", lambda: produced() > now)
        _wait_for("the cancel", lambda: _read(where / "closed"))
    finally:
        shutil.rmtree(where, ignore_errors=True)


def test_curl_reads_the_stream_as_it_comes(gw: GatewayProcess) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed (.ci/run installs it)")
    out = subprocess.run(
        [
            "curl",
            "-N",
            "--silent",
            "--show-error",
            "-X",
            "POST",
            f"http://127.0.0.1:{gw.port}/stream/demo.primes",
            "-d",
            '{"args": [5]}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert out.stdout == (
        'data: 2\n\ndata: 3\n\ndata: 5\n\ndata: 7\n\ndata: 11\n\nevent: end\ndata: {"items":5}\n\n'
    )


def test_streams_show_in_the_gateways_metrics(gw: GatewayProcess) -> None:
    gw.request("POST", "/stream/gen.count", {"args": [2]})
    text = gw.request("GET", "/metrics").body.decode()
    assert 'zeromesh_gateway_streams_total{outcome="ok",target="gen.count"}' in text
    assert 'zeromesh_gateway_http_requests_total{route="stream",status="200"}' in text


def test_the_readme_stream_examples_work_as_written(gw: GatewayProcess) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.partition("\n### Streaming\n")[2].partition("\n## ")[0]
    shown = [line[2:] for line in section.splitlines() if line.startswith("$ curl")]
    assert len(shown) == 2, shown
    for command in shown:
        command = command.replace("localhost:8080", f"127.0.0.1:{gw.port}")
        out = subprocess.run(
            ["bash", "-c", command + " --silent --show-error"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            env={**os.environ},
        )
        expected = section.partition(command.replace(f"127.0.0.1:{gw.port}", "localhost:8080"))[
            2
        ].partition("```")[0]
        assert out.stdout.strip() == expected.strip(), (command, out.stdout)
