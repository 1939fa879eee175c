"""Test helpers for the brokered mesh: real broker and worker processes, always cleaned up.

Every process runs in its own process group (a test can SIGSTOP or SIGKILL it and all it
started); `BrokeredMesh.close` continues and kills whatever is left. The service ``bk``
below is what the workers serve (started with ``PYTHONPATH`` pointing here).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from meshkit import ChildProcess

from worker import Service

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = {"PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}
HB_MS = 300  # heartbeat in these tests: a lost worker is noticed in ~1 s, not ~3
SERVICE_A = "brokerkit:svc"
SERVICE_B = "testsvc:svc"

svc = Service("bk")


@svc.handler
def pid() -> int:
    """The worker's pid: shows who ran a call."""
    return os.getpid()


@svc.handler
def sleep_pid(seconds: float) -> int:
    """Sleep, then say who did it."""
    time.sleep(seconds)
    return os.getpid()


@svc.handler
def echo(value: Any) -> Any:
    return value


@svc.handler
def die() -> None:
    """A poison request: kills whichever worker runs it."""
    os._exit(1)


class Proc(ChildProcess):
    """One ``python -m broker`` or ``python -m worker`` subprocess and its log."""

    def __init__(self, argv: list[str], log: Path, endpoint: str = "") -> None:
        super().__init__(argv, log, ENV, endpoint)


class BrokeredMesh:
    """Brokers and workers for one test; `close` (run by the fixture) kills them all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []

    def _log(self, kind: str) -> Path:
        return self.tmp / f"{kind}{len(self.procs)}.log"

    def broker(self, *args: str, endpoint: str | None = None) -> Proc:
        ep = endpoint or "tcp://127.0.0.1:0"  # the broker picks the port: read it back
        argv = ["-m", "broker", "--bind", ep, "--heartbeat-ms", str(HB_MS), *args]
        p = Proc(argv, self._log("broker"), ep)
        self.procs.append(p)
        if ep.endswith(":0"):
            p.wait_bound()
        return p

    def worker(self, *brokers: Proc, service: str = SERVICE_A, args: tuple[str, ...] = ()) -> Proc:
        argv = ["-m", "worker", service, "--heartbeat-ms", str(HB_MS), *args]
        for b in brokers:
            argv += ["--broker", b.endpoint]
        p = Proc(argv, self._log("worker"))
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            p.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {' '.join(p.argv)}\n{p.output()}" for p in self.procs)


def status(broker: Proc, timeout: float = 2.0, security: Any = None) -> dict[str, Any]:
    """The broker's status (over CURVE with ``security``, a `zmqio.ClientSecurity`)."""
    from zeromesh._status import fetch_status

    return fetch_status(broker.endpoint, timeout, security)


def wait_for(
    broker: Proc,
    check: Callable[[dict[str, Any]], bool],
    mesh: BrokeredMesh,
    timeout: float = 20.0,
    what: str = "condition",
    security: Any = None,
) -> dict[str, Any]:
    """Poll the broker's status until ``check`` holds; fail the test with the logs if not."""
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if broker.proc.poll() is not None:
            pytest.fail(f"broker exited with {broker.proc.returncode}:\n{mesh.logs()}")
        with contextlib.suppress(TimeoutError):
            st = status(broker, timeout=1.0, security=security)
            if check(st):
                return st
        time.sleep(0.05)
    pytest.fail(f"{what} not reached in {timeout} s; last status {st}\n{mesh.logs()}")


def workers_ready(n: int) -> Callable[[dict[str, Any]], bool]:
    """``n`` workers registered, ready, with their credit granted."""
    return lambda st: (
        sum(1 for w in st["workers"] if w["state"] == "ready" and w["credit"] > 0) == n
    )


@pytest.fixture
def bmesh(short_tmp: Path) -> Iterator[BrokeredMesh]:
    """Start brokers and workers with `BrokeredMesh.broker`/`.worker`; all die at the end."""
    m = BrokeredMesh(short_tmp)
    try:
        yield m
    finally:
        m.close()
