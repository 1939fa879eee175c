"""Test helpers for the HTTP gateway: a real gateway process, and a small HTTP client.

`GatewayProcess` runs ``python -m gateway`` on a free port (``--listen 127.0.0.1:0``;
the port is read from its log) in its own process group; the `gateways` fixture kills
every one it started when the test ends.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from meshkit import ChildProcess

DEMO = "examples.demosvc:svc"

_LISTENING = re.compile(r"listening on https?://127\.0\.0\.1:(\d+)")


@dataclass
class Response:
    """One HTTP response, read whole."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        """The ``error`` object of an error response, checked for its documented shape."""
        assert self.headers["Content-Type"] == "application/json", self.body
        err = self.json["error"]
        assert {"type", "message", "code"} <= set(err), err
        assert err["code"] == self.status, err
        return err


def http_request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> Response:
    """Send one request on a fresh connection. ``body`` may be bytes or a JSON value."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


class GatewayProcess(ChildProcess):
    """``python -m gateway`` with ``args``, listening on a free port of 127.0.0.1."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.port = 0
        super().__init__(["-m", "gateway", "--listen", "127.0.0.1:0", *args], log, env)

    def wait_listening(self, timeout: float = 20) -> GatewayProcess:
        """Wait for the "listening on" log line; fail the test if the gateway exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = _LISTENING.search(self.output())
            if m:
                self.port = int(m.group(1))
                return self
            if self.proc.poll() is not None:
                pytest.fail(f"gateway exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.02)
        pytest.fail(f"gateway not listening after {timeout} s:\n{self.output()}")

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Response:
        return http_request(self.port, method, path, body, **kw)

    def call(self, target: str, *args: Any, **kwargs: Any) -> Response:
        return self.request("POST", f"/call/{target}", {"args": list(args), "kwargs": kwargs})

    def submit(self, target: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Submit a job; return the 202 body."""
        r = self.request("POST", f"/jobs/{target}", {"args": list(args), "kwargs": kwargs})
        assert r.status == 202, r.body
        assert r.headers["Location"] == r.json["url"]
        return r.json

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.request("GET", f"/jobs/{job_id}")
        assert r.status == 200, r.body
        return r.json

    def wait_job(
        self, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 20
    ) -> dict[str, Any]:
        """Poll the job until ``until(view)`` holds; return that view."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.job(job_id)
            if until(view):
                return view
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} never got there; last seen: {view}\n{self.output()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, and the exit status."""
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def finished(view: dict[str, Any]) -> bool:
    return view["status"] in ("done", "failed", "cancelled")


class Gateways:
    """Starts gateways for one test (or module); `close` kills them all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started: list[GatewayProcess] = []

    def start(
        self, *args: str, env: dict[str, str] | None = None, wait: bool = True
    ) -> GatewayProcess:
        log = self.tmp / f"gateway{len(self.started)}.log"
        gw = GatewayProcess(list(args), log, env)
        self.started.append(gw)
        return gw.wait_listening() if wait else gw

    def close(self) -> None:
        for gw in self.started:
            gw.kill()


@pytest.fixture
def gateways(short_tmp: Path) -> Iterator[Gateways]:
    """Start gateways with ``gateways.start(*args)``; all are killed when the test ends."""
    g = Gateways(short_tmp)
    try:
        yield g
    finally:
        g.close()
