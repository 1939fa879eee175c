"""``zeromesh top``: the pure view on samples with a fake clock, then ``--once`` against
live workers and a broker under traffic."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from brokerkit import BrokeredMesh
from meshkit import Mesh

from client import Client
from zeromesh._top import Top

BOUNDS = [0.001, 0.01, 0.1]


def _worker(
    endpoint: str, calls: int, errors: int, buckets: list[int], **kw: Any
) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "state": "ready",
        "role": "worker",
        "name": endpoint[-2:],
        "host": "h",
        "pid": 7,
        "services": {"math": ["add"]},
        "capacity": 4,
        "in_flight": kw.get("in_flight", 0),
        "uptime": 30.0,
        "stats": {
            "calls": calls,
            "errors": errors,
            "bounds": BOUNDS,
            "buckets": buckets,
            "rss": 2**26,
        },
    }


def test_rates_and_quantiles_come_from_the_difference_of_two_samples() -> None:
    top = Top(window=10)
    top.update([_worker("tcp://w:01", 100, 1, [50, 50, 0, 0])], {}, now=0.0)
    (row,) = top.rows()
    assert row.calls_per_s is None  # one sample: nothing to divide yet
    top.update([_worker("tcp://w:01", 300, 3, [50, 150, 100, 0], in_flight=4)], {}, now=2.0)
    (row,) = top.rows()
    assert row.calls_per_s == 100.0
    assert row.errors_per_s == 1.0
    # 200 new answers: 100 in (1, 10] ms, 100 in (10, 100] ms; interpolated within.
    assert row.p50 == pytest.approx(0.01)
    assert row.p99 == pytest.approx(0.01 + 0.09 * 98 / 100)
    assert row.load == 1.0
    assert row.rss == 2**26
    # The window slides: the sample of t=0 is dropped; since t=2 nothing new came.
    top.update([_worker("tcp://w:01", 300, 3, [50, 150, 100, 0])], {}, now=11.0)
    (row,) = top.rows()
    assert row.calls_per_s == 0.0
    assert row.p50 is None


def test_brokers_unreachable_endpoints_and_sorting() -> None:
    top = Top()
    status = {
        "broker": {"name": "b1", "state": "ready", "uptime": 5.0, "rss": 2**25},
        "totals": {"answered": 10, "in_flight": 1, "capacity": 2, "overloaded": 0},
        "workers": [{"id": "ab", "name": "w9", "served": 10, "in_flight": 1, "capacity": 2}],
        "queues": {"math": 3},
        "oldest": {"math": 0.25},
    }
    broker = {"endpoint": "tcp://b:1", "state": "ready", "role": "broker", "name": "b1"}
    hellos = [
        _worker("tcp://w:02", 0, 0, [0, 0, 0, 0]),
        broker,
        {"endpoint": "tcp://x:3", "state": "unreachable", "refused": "refused our key"},
    ]
    top.update(hellos, {"tcp://b:1": status}, now=0.0)
    status["totals"]["answered"] = 30
    status["workers"][0]["served"] = 30
    top.update(hellos, {"tcp://b:1": status}, now=1.0)
    rows = {r.name: r for r in top.rows()}
    assert rows["b1"].role == "broker"
    assert rows["b1"].calls_per_s == 20.0
    assert rows["w9"].role == "worker*"
    assert rows["w9"].calls_per_s == 20.0
    assert rows["tcp://x:3"].state == "unreachable"
    assert rows["tcp://x:3"].note == "refused our key"
    assert top.queues == [("b1", "math", 3, 0.25)]
    assert [r.name for r in top.rows("calls")][:2] in (["b1", "w9"], ["w9", "b1"])
    assert top.rows("name")[0].role == "broker"


@pytest.mark.process
def test_top_once_shows_live_workers_and_a_broker(mesh: Mesh, short_tmp: Path) -> None:
    bm = BrokeredMesh(short_tmp)
    stop = threading.Event()
    try:
        b = bm.broker()
        workers = [mesh.start("--broker", b.endpoint) for _ in range(2)]
        endpoints = [w.endpoint for w in workers]

        def traffic() -> None:
            with Client(endpoints) as c:
                while not stop.is_set():
                    [f.result() for f in [c.submit("math.sleep", 0.002) for _ in range(8)]]

        t = threading.Thread(target=traffic, daemon=True)
        t.start()
        out = subprocess.run(
            [sys.executable, "-m", "zeromesh", "top", "--once", "--sort", "calls",
             "-c", ",".join([b.endpoint, *endpoints])],
            capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": ""},
        )  # fmt: skip
    finally:
        stop.set()
        bm.close()
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for w in workers:
        assert re.search(rf"│ \S+ +│ worker +│ \S+ +│ +{w.pid} │ ready", text), text
    assert "│ broker " in text
    rates = [float(m) for m in re.findall(r"│ worker +│.*?│ +(\d[\d,]*\.\d) │ +\d", text)]
    assert rates, text
    assert max(rates) > 0, text  # calls/s under the traffic
    assert re.search(r"\d+\.\dms", text), text  # a latency figure


def test_a_restarted_worker_starts_its_rates_over() -> None:
    top = Top()
    top.update([_worker("tcp://w:01", 500, 5, [100, 400, 0, 0])], {}, now=0.0)
    restarted = _worker("tcp://w:01", 20, 0, [20, 0, 0, 0])
    restarted["pid"] = 8
    top.update([restarted], {}, now=1.0)
    (row,) = top.rows()
    assert row.calls_per_s is None  # not (20 - 500) / 1
    top.update([{**restarted, "stats": {**restarted["stats"], "calls": 70}}], {}, now=2.0)
    (row,) = top.rows()
    assert row.calls_per_s == 50.0
