"""Test helpers that start real worker processes and clean them up, whatever happens.

Every worker runs in its own process group (``start_new_session``) so a test can
signal it and everything it started; the `Mesh` fixture kills what is left at the end.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import Client

SERVICE = "examples.mathsvc:svc"


_BOUND = re.compile(r"bound (tcp://[^\s\x22,]+)")  # a text or a JSON log line


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now: for an endpoint nobody listens on.

    Never bind a child on it (another process may take it first): bind
    ``tcp://127.0.0.1:0`` and read the port back with `ChildProcess.wait_bound`.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChildProcess:
    """A ``python ARGV...`` subprocess in its own process group, logging to ``log``.

    The one wrapper the test kits share: workers here, brokers in `brokerkit`, the
    gateway in `gatewaykit`.
    """

    def __init__(
        self,
        argv: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        endpoint: str = "",
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.argv = argv
        self.log = log
        self.endpoint = endpoint
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                # prefix: e.g. `ip netns exec NS`, which execs python in its place
                [*prefix, sys.executable, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_bound(self, timeout: float = 20) -> str:
        """The endpoint the process reports it bound (``bound tcp://...`` in its log).

        Tests bind ``tcp://127.0.0.1:0`` and take the port from the process that bound
        it: a port found free by the test and bound later by the child is a race.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _BOUND.search(self.output())
            if found:
                self.endpoint = found.group(1)
                return self.endpoint
            if self.proc.poll() is not None:
                pytest.fail(f"process exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.02)
        pytest.fail(f"no 'bound' line in {timeout} s:\n{self.output()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)  # a stopped process must not outlive the test
            self.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)


class WorkerProcess(ChildProcess):
    """One ``python -m worker`` subprocess bound to ``endpoint``."""

    def __init__(self, endpoint: str, log: Path, args: list[str], env: dict[str, str] | None):
        self.args = args
        super().__init__(["-m", "worker", *args, "--bind", endpoint], log, env, endpoint)


class Mesh:
    """Starts workers for one test; `close` (run by the fixture) kills them all."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.workers: list[WorkerProcess] = []

    def endpoint(self, transport: str = "tcp") -> str:
        if transport == "ipc":
            return f"ipc://{self.tmp}/w{len(self.workers)}-{time.monotonic_ns() % 10**6}.sock"
        return "tcp://127.0.0.1:0"  # the worker picks the port; `start` reads it back

    def start(
        self,
        *args: str,
        transport: str = "tcp",
        endpoint: str | None = None,
        service: str = SERVICE,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> WorkerProcess:
        ep = endpoint or self.endpoint(transport)
        log = self.tmp / f"worker{len(self.workers)}.log"
        w = WorkerProcess(ep, log, [service, *args], env)
        self.workers.append(w)
        if ep.endswith(":0"):
            w.wait_bound()
        if wait:
            wait_ready([w])
        return w

    def close(self) -> None:
        for w in self.workers:
            w.kill()


def wait_ready(workers: list[WorkerProcess], timeout: float = 20) -> None:
    """Wait until every worker answers a ping (bound and serving, not merely started)."""
    deadline = time.monotonic() + timeout
    with Client([w.endpoint for w in workers]) as c:
        while time.monotonic() < deadline:
            for w in workers:
                if w.proc.poll() is not None:
                    pytest.fail(f"worker exited with {w.proc.returncode}:\n{w.output()}")
            if all(r["state"] == "ready" for r in c.workers(timeout=0.5)):
                return
    pytest.fail("workers not ready in time:\n" + "\n".join(w.output() for w in workers))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp dir: ipc paths must stay under ~107 bytes."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="zm", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mesh(short_tmp: Path) -> Iterator[Mesh]:
    """Start workers with ``mesh.start(...)``; all are killed when the test ends."""
    m = Mesh(short_tmp)
    try:
        yield m
    finally:
        m.close()
