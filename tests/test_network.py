"""The mesh over real network conditions: four hosts behind links with delay and loss.

Four network namespaces each run a worker; a fifth runs a client (`tests/meshprobe.py`)
that keeps 64 calls in flight to all four. Their links (`tests/linkemu.py`: TUN
interfaces and a process that delays and drops packets, since ``tc netem`` is not in
every kernel) go through three conditions, after a few seconds with neither delay nor
loss for reference:

1. 5 ms each way and 1% loss on every link: calls keep succeeding, and TCP's
   retransmissions keep every worker alive (no heartbeat expires on 1% loss).
2. A 2 s blackout of one host (loss 1): it is declared lost after LIVENESS heartbeats
   (0.5 s each here), the calls it held are re-sent to the others, none fails, and the
   worker rejoins once its link is back.
3. One host 50 ms away (each way) while the others stay at 5 ms: least-outstanding
   dispatch sends it fewer calls than any near host (a blind round-robin would send it
   as many, and they would wait in its queue).

Figures (calls/s, p50/p99, re-sends, calls per host) are printed; run with ``-s`` to
see them. No timing is asserted. Skips, saying why, only where namespaces or TUN
interfaces cannot be made.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshkit import ChildProcess
from netkit import Probe, Star, star_hosts

pytestmark = pytest.mark.process

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = {"PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", "")}
NEAR_S, LOSS, FAR_S = 0.005, 0.01, 0.05


@pytest.fixture
def star() -> Iterator[Star]:
    yield from star_hosts(4)


def show(phase: str, got: dict[str, Any], hosts: dict[str, str]) -> None:
    per_host = {hosts.get(pid, pid): n for pid, n in sorted(got["pids"].items())}
    print(
        f"\n{phase}: {got['calls']} calls in {got['seconds']} s = {got['calls_per_s']} calls/s, "
        f"p50 {got['p50_ms']} ms, p99 {got['p99_ms']} ms, max {got['max_ms']} ms, "
        f"errors {got['error_count']}, re-sent {got['resent']}, calls per host {per_host}"
    )


def test_calls_survive_delay_loss_and_a_blackout(star: Star, short_tmp: Path) -> None:
    workers: list[ChildProcess] = []
    probe: Probe | None = None
    try:
        for i, (ns, address) in enumerate(star.hosts):
            ep = f"tcp://{address}:5555"
            argv = ["-m", "worker", "testsvc:svc", "--bind", ep, "--insecure"]
            argv += ["--heartbeat-ms", "500"]
            w = ChildProcess(argv, short_tmp / f"w{i}.log", ENV, ep, prefix=star.prefix(ns))
            workers.append(w)
        for w in workers:
            w.wait_bound()
        names = {str(w.pid): f"host{i + 1}" for i, w in enumerate(workers)}
        endpoints = [w.endpoint for w in workers]
        far = workers[3]
        probe = Probe(
            star.prefix(star.client_ns),
            short_tmp / "probe.log",
            *("--heartbeat", "0.5", "--prefetch", "4", "--retries", "5"),
        )
        connect = ",".join(endpoints)
        assert probe.ask(op="ready", connect=connect, want=endpoints)["ok"], probe.output()
        probe.ask(op="load", connect=connect, target="t.delay", window=64)

        # 0. For reference: the same links with no delay and no loss.
        time.sleep(3)
        show("no delay, no loss (reference)", probe.ask(op="mark"), names)

        # 1. 5 ms each way, 1% loss, on every link.
        for _, address in star.hosts:
            star.set_link(address, NEAR_S, LOSS)
        probe.ask(op="mark")
        time.sleep(5)
        lossy = probe.ask(op="mark")
        show("5 ms + 1% loss", lossy, names)
        assert lossy["error_count"] == 0, lossy["errors"]
        assert lossy["resent"]["worker_lost"] == 0, probe.output()  # nobody expired
        assert set(lossy["pids"]) == set(names)

        # 2. host4 goes dark for 2 s, then comes back.
        far_addr = star.hosts[3][1]
        star.set_link(far_addr, NEAR_S, 1.0)
        time.sleep(2)
        star.set_link(far_addr, NEAR_S, LOSS)
        blackout = probe.ask(op="mark")
        show("2 s blackout of host4", blackout, names)
        # Until host4 answers again: its link is back, its worker rejoins.
        back_at = time.monotonic()
        after: list[dict[str, Any]] = []
        while not after or str(far.pid) not in after[-1]["pids"]:
            if time.monotonic() > back_at + 25:
                pytest.fail(f"host4 did not rejoin within 25 s:\n{probe.output()}")
            time.sleep(0.25)
            after.append(probe.ask(op="mark"))
        print(f"host4 answered again {time.monotonic() - back_at:.2f} s after its link came back")
        errors = blackout["errors"] + [e for m in after for e in m["errors"]]
        resent = blackout["resent"]["worker_lost"] + sum(m["resent"]["worker_lost"] for m in after)
        assert errors == [], errors
        assert resent > 0, probe.output()  # what it held was sent to the others
        log = probe.output()
        assert f"worker at {far.endpoint} lost" in log, log

        # 3. host4 is far: 50 ms each way; the others stay near.
        star.set_link(far_addr, FAR_S, LOSS)
        probe.ask(op="mark")
        time.sleep(5)
        uneven = probe.ask(op="mark")
        show("host4 50 ms away, the rest 5 ms", uneven, names)
        assert uneven["error_count"] == 0, uneven["errors"]
        counts = uneven["pids"]
        near = [counts.get(str(w.pid), 0) for w in workers[:3]]
        assert counts.get(str(far.pid), 0) < min(near), counts
    finally:
        if probe is not None:
            probe.close()
        for w in workers:
            w.kill()
