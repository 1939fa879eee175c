"""Endpoints from DNS, for real: a host name that resolves to several addresses.

A network namespace with its own /etc/hosts stands for a Kubernetes headless service
or round-robin DNS; the test adds and removes addresses of a name in that file while a
client (or a worker) inside the namespace runs. Workers and brokers bind 127.0.X.Y
addresses there (all of 127.0.0.0/8 is loopback), all on the same port, so the name
alone says where they are. Skips, saying why, only where namespaces cannot be created.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from meshkit import ChildProcess
from netkit import NamedHost, Probe

pytestmark = pytest.mark.process

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = {"PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}
RESOLVE_S = "0.2"  # look names up every 0.2 s: a change is seen at once


def until(condition: Callable[[], bool], shows: Probe | Procs, timeout: float = 15) -> None:
    """Poll ``condition`` until it holds; fail with the logs of ``shows`` if it does not."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            text = shows.output() if isinstance(shows, Probe) else shows.logs()
            pytest.fail(f"not true within {timeout:g} s:\n{text}")
        time.sleep(0.02)


class Procs:
    """Every process a test started in the namespace; all killed at the end."""

    def __init__(self, host: NamedHost, tmp: Path) -> None:
        self.host = host
        self.tmp = tmp
        self.procs: list[ChildProcess] = []

    def start(self, argv: list[str], endpoint: str = "") -> ChildProcess:
        log = self.tmp / f"p{len(self.procs)}.log"
        p = ChildProcess(argv, log, ENV, endpoint, prefix=self.host.prefix)
        self.procs.append(p)
        if endpoint:
            p.wait_bound()
        return p

    def worker(self, address: str, port: int | str = 0) -> ChildProcess:
        """A worker serving testsvc on ``address`` (port 0: it picks one; read it back)."""
        ep = f"tcp://{address}:{port}"
        return self.start(["-m", "worker", "testsvc:svc", "--bind", ep], ep)

    def logs(self) -> str:
        return "\n".join(f"--- {' '.join(p.argv)}\n{p.output()}" for p in self.procs)

    def close(self) -> None:
        for p in self.procs:
            p.kill()


@pytest.fixture
def procs(named_host: NamedHost, short_tmp: Path) -> Iterator[Procs]:
    ps = Procs(named_host, short_tmp)
    try:
        yield ps
    finally:
        ps.close()


def test_a_client_follows_a_name_in_the_hosts_file(
    named_host: NamedHost, procs: Procs, short_tmp: Path
) -> None:
    w1 = procs.worker("127.0.1.1")
    port = w1.endpoint.rpartition(":")[2]
    w2 = procs.worker("127.0.1.2", port)
    w3 = procs.worker("127.0.1.3", port)
    e1, e2, e3 = w1.endpoint, w2.endpoint, w3.endpoint
    named_host.write_hosts({"workers.test": ["127.0.1.1", "127.0.1.2"]})
    name = f"tcp://workers.test:{port}"
    probe = Probe(named_host.prefix, short_tmp / "probe.log", "--resolve-interval", RESOLVE_S)
    try:
        assert probe.ask(op="ready", connect=name, want=[e1, e2])["ok"], probe.output()
        got = probe.ask(op="call", connect=name, target="t.delay", n=60)
        assert got["errors"] == []
        assert set(got["pids"]) == {str(w1.pid), str(w2.pid)}

        # A third address for the name: the client joins it, and calls reach it.
        named_host.write_hosts({"workers.test": ["127.0.1.1", "127.0.1.2", "127.0.1.3"]})
        assert probe.ask(op="ready", connect=name, want=[e1, e2, e3])["ok"], probe.output()
        got = probe.ask(op="call", connect=name, target="t.delay", n=90)
        assert got["errors"] == []
        assert set(got["pids"]) == {str(w1.pid), str(w2.pid), str(w3.pid)}

        # Each worker runs two 1.5 s calls, one after the other; meanwhile its address
        # leaves the name. The client sends it nothing new, and what it holds finishes
        # there: no call fails, none is sent twice.
        probe.ask(op="submit", connect=name, target="t.slow_pid", args=[1.5], n=6, key="slow")
        named_host.write_hosts({"workers.test": ["127.0.1.1", "127.0.1.2"]})
        assert probe.ask(op="ready", connect=name, want=[e1, e2])["ok"], probe.output()
        got = probe.ask(op="call", connect=name, target="t.delay", n=60)
        assert got["errors"] == []
        assert set(got["pids"]) == {str(w1.pid), str(w2.pid)}  # nothing new to w3
        slow = probe.ask(op="results", key="slow")
        assert slow["errors"] == []
        assert slow["pids"] == {str(w.pid): 2 for w in (w1, w2, w3)}  # w3 finished its two
        assert probe.ask(op="retried", connect=name) == {"overloaded": 0, "worker_lost": 0}

        # AsyncClient shares the client's core: the same name, the same two workers.
        got = probe.ask(op="async", connect=name, want=[e1, e2], target="t.delay", n=40, timeout=20)
        assert got["errors"] == []
        assert got["have"] == sorted([e1, e2])
        assert set(got["pids"]) == {str(w1.pid), str(w2.pid)}
        until(lambda: f"closed the connection to {e3} (it left DNS)" in probe.output(), probe)
    finally:
        probe.close()
    log = probe.output()
    assert f"{e3} left DNS: sending it nothing new" in log, log
    assert "lost" not in log, log


def test_a_worker_joins_every_broker_a_name_resolves_to(
    named_host: NamedHost, procs: Procs, short_tmp: Path
) -> None:
    hb = ["--heartbeat-ms", "300"]
    b1 = procs.start(["-m", "broker", "--bind", "tcp://127.0.2.1:0", *hb], "tcp://127.0.2.1:0")
    port = b1.endpoint.rpartition(":")[2]
    ep2 = f"tcp://127.0.2.2:{port}"
    b2 = procs.start(["-m", "broker", "--bind", ep2, *hb], ep2)
    named_host.write_hosts({"brokers.test": ["127.0.2.1"]})
    w = procs.start(
        [
            "-m",
            "worker",
            "testsvc:svc",
            "--broker",
            f"tcp://brokers.test:{port}",
            "--resolve-interval",
            RESOLVE_S,
            *hb,
        ]
    )
    probe = Probe(named_host.prefix, short_tmp / "probe.log", "--heartbeat", "0.3")
    try:
        got = probe.ask(op="call", connect=b1.endpoint, target="t.delay", n=10, timeout=20)
        assert got == {"pids": {str(w.pid): 10}, "errors": []}, procs.logs()

        # The name gains the second broker's address: the worker joins it too.
        named_host.write_hosts({"brokers.test": ["127.0.2.1", "127.0.2.2"]})
        got = probe.ask(op="call", connect=b2.endpoint, target="t.delay", n=10, timeout=20)
        assert got == {"pids": {str(w.pid): 10}, "errors": []}, procs.logs()

        # The first broker's address leaves the name while the worker runs a call from
        # it: the call finishes, then the worker leaves that broker; the other still
        # gets its work.
        probe.ask(op="submit", connect=b1.endpoint, target="t.slow_pid", args=[1.5], n=1, key="s")
        named_host.write_hosts({"brokers.test": ["127.0.2.2"]})
        assert probe.ask(op="results", key="s") == {"pids": {str(w.pid): 1}, "errors": []}
        got = probe.ask(op="call", connect=b2.endpoint, target="t.delay", n=10, timeout=20)
        assert got == {"pids": {str(w.pid): 10}, "errors": []}
        got = probe.ask(op="call", connect=b1.endpoint, target="t.delay", n=1, timeout=3)
        assert got["pids"] == {}, procs.logs()  # b1 no longer has this worker
        until(lambda: "left (worker left this broker)" in b1.output(), procs)
    finally:
        probe.close()
    logs = procs.logs()
    assert f"broker {b1.endpoint} left DNS" in w.output(), logs
    assert f"closed the link to broker {b1.endpoint} (it left DNS)" in w.output(), logs
    assert "left (worker left this broker)" in b1.output(), logs
    assert "left DNS" not in b2.output()
