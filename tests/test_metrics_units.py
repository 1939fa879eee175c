"""The metrics core on its own: counting, quantiles over a window, the families a scrape
builds, and the HTTP endpoint (in this process, on loopback)."""

from __future__ import annotations

import logging
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from protocol import ErrorCode
from zmqio import CallStats, StatsCollector, gauge, outcome_name, serve_metrics


def test_outcomes_are_ok_or_the_error_code_s_name() -> None:
    assert outcome_name(None) == "ok"
    assert outcome_name(ErrorCode.TIMEOUT) == "timeout"
    assert outcome_name(ErrorCode.REMOTE) == "remote"
    assert outcome_name(77) == "error_77"


def test_calls_are_counted_by_target_and_outcome() -> None:
    stats = CallStats()
    for _ in range(3):
        stats.observe("math.add", "ok", 0.0004)
    stats.observe("math.add", "remote", 0.002)
    stats.observe("math.mean", "ok", 1.5)
    assert stats.count() == 5
    assert stats.count("math.add") == 4
    assert stats.count("math.add", "ok") == 3
    assert stats.count(outcome="ok") == 4
    assert stats.count("nope") == 0


def test_a_scrape_builds_counter_and_histogram_families() -> None:
    stats = CallStats()
    stats.observe("math.add", "ok", 0.0004)
    stats.observe("math.add", "ok", 0.0004)
    stats.observe("math.add", "timeout", 99.0)  # beyond the last bound: +Inf
    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        StatsCollector(
            lambda: [
                *stats.families("zm_requests", "requests", "handler time"),
                gauge("zm_in_flight", "held now", 3),
            ]
        )
    )
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("zm_requests_total", (("outcome", "ok"), ("target", "math.add")))] == 2
    assert samples[("zm_requests_total", (("outcome", "timeout"), ("target", "math.add")))] == 1
    hist = "zm_requests_duration_seconds"
    assert samples[(f"{hist}_bucket", (("le", "0.0005"), ("target", "math.add")))] == 2
    assert samples[(f"{hist}_bucket", (("le", "60.0"), ("target", "math.add")))] == 2
    assert samples[(f"{hist}_bucket", (("le", "+Inf"), ("target", "math.add")))] == 3
    assert samples[(f"{hist}_count", (("target", "math.add"),))] == 3
    assert samples[(f"{hist}_sum", (("target", "math.add"),))] == pytest.approx(99.0008)
    assert samples[("zm_in_flight", ())] == 3


def test_recent_rates_and_quantiles_over_the_window() -> None:
    stats = CallStats()
    assert stats.recent(now=100.0) == {
        "calls_per_s": 0.0,
        "errors_per_s": 0.0,
        "p50": None,
        "p99": None,
    }
    for _ in range(98):
        stats.observe("t.x", "ok", 0.0007)  # in the (0.0005, 0.001] bucket
    stats.observe("t.x", "remote", 0.2)  # (0.1, 0.25]
    stats.observe("t.x", "ok", 0.2)
    got = stats.recent(now=102.0)
    assert got["calls_per_s"] == 50.0
    assert got["errors_per_s"] == 0.5
    assert 0.0005 < got["p50"] <= 0.001
    assert 0.1 < got["p99"] <= 0.25
    # Ten seconds later with nothing new, the old calls have left the window.
    stats.recent(now=111.0)
    assert stats.recent(now=112.0)["calls_per_s"] == 0.0


def test_serve_metrics_picks_a_port_and_serves_the_families(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stats = CallStats()
    stats.observe("math.add", "ok", 0.001)
    with caplog.at_level(logging.INFO):
        url = serve_metrics(
            "127.0.0.1:0", lambda: stats.families("zm_t", "c", "s"), logging.getLogger("t")
        )
    assert url.startswith("http://127.0.0.1:")
    assert not url.startswith("http://127.0.0.1:0/")
    assert f"metrics at {url}" in caplog.text
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    assert 'zm_t_total{outcome="ok",target="math.add"} 1.0' in text
    assert "process_resident_memory_bytes" in text  # the standard process collector
    with pytest.raises(ValueError, match="give HOST:PORT"):
        serve_metrics("9100", list, logging.getLogger("t"))
    port = url.split(":")[2].split("/")[0]
    with pytest.raises(ValueError, match="cannot listen there"):
        serve_metrics(f"127.0.0.1:{port}", list, logging.getLogger("t"))
