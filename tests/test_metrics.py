"""Prometheus metrics from real processes: counters move by exactly the calls made
(``/metrics`` read before and after), and a real Prometheus server scrapes two
workers, a broker and the gateway and computes rates and a latency quantile."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import gatewaykit
import pytest
from brokerkit import BrokeredMesh
from hostilekit import raw_dealer
from meshkit import Mesh
from opskit import REPO
from promkit import Prometheus, metrics_url, prometheus_binary, scrape

import protocol
from client import Client, RemoteError
from protocol import ErrorCode, Request

pytestmark = pytest.mark.process

Sample = tuple[str, tuple[tuple[str, str], ...]]


def _requests(target: str, outcome: str) -> Sample:
    return ("zeromesh_worker_requests_total", (("outcome", outcome), ("target", target)))


def _delta(before: dict[Sample, float], after: dict[Sample, float], key: Sample) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_worker_counters_move_by_exactly_the_calls_made(mesh: Mesh) -> None:
    w = mesh.start("--metrics", "127.0.0.1:0")
    url = metrics_url(w)
    before = scrape(url)
    with Client([w.endpoint]) as c:
        for i in range(5):
            assert c.call("math.add", i, 1) == i + 1
        for _ in range(2):
            with pytest.raises(RemoteError):
                c.call("math.fail", "on purpose")
    with raw_dealer(w.endpoint) as sock:  # a Client would refuse it itself
        sock.send_multipart(protocol.encode(Request(1, "math.nope", [], {})))
        assert sock.poll(10_000)
        answer = protocol.decode(sock.recv_multipart())
        assert answer.code == ErrorCode.UNKNOWN_HANDLER
    after = scrape(url)
    assert _delta(before, after, _requests("math.add", "ok")) == 5
    assert _delta(before, after, _requests("math.fail", "remote")) == 2
    # A target nobody serves is not a label of its own (a client could make up many).
    assert _delta(before, after, _requests("_other", "unknown_handler")) == 1
    assert not [k for k in after if ("target", "math.nope") in k[1]]
    count = ("zeromesh_worker_requests_duration_seconds_count", (("target", "math.add"),))
    assert _delta(before, after, count) == 5
    bucket = (
        "zeromesh_worker_requests_duration_seconds_bucket",
        (("le", "+Inf"), ("target", "math.add")),
    )
    assert _delta(before, after, bucket) == 5
    assert after[("zeromesh_worker_threads", ())] == 1
    assert after[("zeromesh_worker_in_flight", ())] == 0
    assert after[("zeromesh_worker_clients", ())] >= 1
    assert after[("process_resident_memory_bytes", ())] > 10e6  # the process collector
    info = [k for k in after if k[0] == "zeromesh_worker_info"]
    assert len(info) == 1
    assert dict(info[0][1])["name"]


def test_a_worker_refuses_a_bad_metrics_address(mesh: Mesh) -> None:
    w = mesh.start("--metrics", "9100", wait=False)
    assert w.proc.wait(30) == 2
    assert "--metrics '9100': give HOST:PORT" in w.output()


def test_broker_counters_by_service(short_tmp: Path) -> None:
    bm = BrokeredMesh(short_tmp)
    try:
        b = bm.broker("--metrics", "127.0.0.1:0")
        bm.worker(b)
        url = metrics_url(b)
        with Client([b.endpoint], timeout=20) as c:
            pids = {c.call("bk.pid") for _ in range(4)}
        after = scrape(url)
    finally:
        bm.close()
    assert len(pids) == 1
    for event in ("accepted", "dispatched"):
        key = ("zeromesh_broker_requests_total", (("event", event), ("service", "bk")))
        assert after[key] == 4, event
    assert after[("zeromesh_broker_answered_total", ())] == 4
    assert after[("zeromesh_broker_workers", (("state", "ready"),))] == 1
    assert after[("zeromesh_broker_in_flight", ())] == 0
    (info,) = [k for k in after if k[0] == "zeromesh_broker_info"]
    assert dict(info[1])["version"] == protocol.__version__


def test_a_client_with_metrics_counts_its_calls_in_the_default_registry(mesh: Mesh) -> None:
    from prometheus_client import REGISTRY

    w = mesh.start()

    def sample(name: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    ok = {"target": "math.add", "outcome": "ok"}
    with Client([w.endpoint], metrics=True) as c:
        for i in range(3):
            c.call("math.add", i, i)
        with pytest.raises(RemoteError):
            c.call("math.fail")
        assert sample("zeromesh_client_calls_total", ok) == 3
        assert (
            sample("zeromesh_client_calls_total", {"target": "math.fail", "outcome": "remote"}) == 1
        )
        assert sample("zeromesh_client_calls_duration_seconds_count", {"target": "math.add"}) == 3
        assert sample("zeromesh_client_in_flight", {}) == 0
        assert sample("zeromesh_client_retries_total", {"why": "worker_lost"}) == 0
    # Closed: its collector left the registry (a new client starts from zero).
    assert sample("zeromesh_client_calls_total", ok) == 0
    with Client([w.endpoint]) as plain:
        plain.call("math.add", 1, 1)
    assert sample("zeromesh_client_calls_total", ok) == 0  # off by default


gateways = gatewaykit.gateways


def test_the_gateway_serves_its_metrics(mesh: Mesh, gateways: gatewaykit.Gateways) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    w = mesh.start()
    gw = gateways.start("--connect", w.endpoint, "--jobs-db", ":memory:")

    def samples() -> dict[Sample, float]:
        r = gw.request("GET", "/metrics")
        assert r.status == 200, r.body
        assert r.headers["Content-Type"].startswith("text/plain")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(r.body.decode())
            for s in f.samples
        }

    before = samples()
    for i in range(3):
        assert gw.call("math.add", i, 1).json == {"result": i + 1}
    assert gw.call("math.nope").status == 404  # refused at the gateway: made-up target
    job = gw.submit("math.add", 2, 2)
    gw.wait_job(job["id"], gatewaykit.finished)
    after = samples()

    def delta(key: Sample) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    http = "zeromesh_gateway_http_requests_total"
    assert delta((http, (("route", "call"), ("status", "200")))) == 3
    assert delta((http, (("route", "call"), ("status", "404")))) == 1
    assert delta((http, (("route", "jobs"), ("status", "202")))) == 1
    assert delta(("zeromesh_gateway_calls_total", (("outcome", "ok"), ("target", "math.add")))) == 3
    assert (
        delta(("zeromesh_gateway_job_runs_total", (("outcome", "ok"), ("target", "math.add")))) == 1
    )
    assert after[("zeromesh_gateway_jobs", (("state", "done"),))] == 1
    assert not [k for k in after if ("target", "math.nope") in k[1]]
    assert ("process_cpu_seconds_total", ()) in after


def test_a_real_prometheus_scrapes_workers_broker_and_gateway(
    mesh: Mesh, gateways: gatewaykit.Gateways, short_tmp: Path
) -> None:
    """Debian's Prometheus scrapes two workers, a broker and the gateway every second;
    its query API must see exactly the calls made, their rate, and a latency quantile
    where the handler's sleep puts it."""
    prometheus_binary()
    bm = BrokeredMesh(short_tmp)
    prom: Prometheus | None = None
    try:
        b = bm.broker("--metrics", "127.0.0.1:0")
        workers = [mesh.start("--broker", b.endpoint, "--metrics", "127.0.0.1:0") for _ in range(2)]
        gw = gateways.start("--connect", b.endpoint, "--jobs-db", ":memory:")
        hostport = lambda url: url.split("/")[2]  # noqa: E731
        prom = Prometheus(
            short_tmp,
            {
                "zeromesh-worker": [hostport(metrics_url(w)) for w in workers],
                "zeromesh-broker": [hostport(metrics_url(b))],
                "zeromesh-gateway": [f"127.0.0.1:{gw.port}"],
            },
        )
        _wait(lambda: set(prom.targets_up().values()) == {"up"}, "every target up")

        def value(expr: str) -> float:
            result = prom.query(expr)
            return float(result[0]["value"][1]) if result else -1.0

        ok = 'zeromesh_worker_requests_total{target="math.sleep",outcome="ok"}'
        with Client([b.endpoint], timeout=30) as c:
            # First one call each way, scraped: rate() and increase() count from a
            # series' second sample, so the series must exist before the traffic.
            for w in workers:
                with Client([w.endpoint]) as direct:
                    assert direct.call("math.sleep", 0.02) == "slept 0.02"
            assert gw.call("math.add", 0, 0).status == 200
            _wait(lambda: value(f"count({ok})") == 2, "both workers' series")
            calls_200 = 'zeromesh_gateway_http_requests_total{route="call",status="200"}'
            _wait(lambda: value(f"sum({calls_200})") == 1, "the gateway's series")
            futures = [c.submit("math.sleep", 0.02) for _ in range(40)]
            assert all(f.result() == "slept 0.02" for f in futures)
        for i in range(5):
            assert gw.call("math.add", i, i).status == 200
        _wait(lambda: value(f"sum({ok})") == 42, "the 42 sleeps counted across both workers")
        assert value(f"count({ok} > 0)") == 2  # both workers took some
        _wait(
            lambda: (
                value('zeromesh_broker_requests_total{service="math",event="dispatched"}') == 46
            ),
            "the broker dispatched all 46 (40 calls, the gateway's 6)",
        )
        _wait(
            lambda: value(f"sum({calls_200})") == 6,
            "the gateway's 6 calls",
        )
        rate = value(f"sum(rate({ok}[1m]))")
        assert rate > 0, "a rate over the last minute"
        p50 = value(
            "histogram_quantile(0.5, sum by (le) (rate("
            'zeromesh_worker_requests_duration_seconds_bucket{target="math.sleep"}[1m])))'
        )
        assert 0.01 < p50 <= 0.05, p50  # 20 ms sleeps: the (10, 25] ms bucket
        # Every query of the shipped Grafana dashboard runs, and those that need only
        # the traffic above find data (errors, overload and queues may well be empty).
        for title, expr in _dashboard_queries():
            result = prom.query(expr.replace("$__rate_interval", "1m"))
            if not any(word in title for word in ("Errors", "queue", "expired")):
                assert result, f"dashboard panel {title!r}: no data for {expr}"
    finally:
        if prom is not None:
            prom.close()
        bm.close()


def _wait(ok: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"Prometheus never saw {what}"
        time.sleep(0.25)


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((REPO / "deploy" / "grafana-zeromesh.json").read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def test_the_shipped_prometheus_config_is_valid_and_scrapes_the_conf_s_ports() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no `promtool` (it comes with Debian's prometheus, which .ci/run installs)")
    config = REPO / "deploy" / "prometheus.yml"
    checked = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    text = config.read_text()
    conf = (REPO / "supervisord.conf").read_text()
    assert "--metrics %(ENV_ZEROMESH_HOST)s:96%(process_num)02d" in conf
    assert '"127.0.0.1:9601"' in text
    assert "s:9600" in conf
    assert '"127.0.0.1:9600"' in text


def test_two_clients_with_metrics_are_summed_in_one_family(mesh: Mesh) -> None:
    from prometheus_client import REGISTRY, generate_latest

    w = mesh.start()
    with Client([w.endpoint], metrics=True) as a, Client([w.endpoint], metrics=True) as b:
        a.call("math.add", 1, 1)
        b.call("math.add", 2, 2)
        b.call("math.add", 3, 3)
        text = generate_latest(REGISTRY).decode()
        assert text.count("# TYPE zeromesh_client_calls_total counter") == 1
        ok = {"target": "math.add", "outcome": "ok"}
        assert REGISTRY.get_sample_value("zeromesh_client_calls_total", ok) == 3
