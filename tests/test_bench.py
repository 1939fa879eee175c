"""Smoke test of the benchmark: it runs end to end and writes valid JSON (no timings checked)."""

from __future__ import annotations

import json
import subprocess

import pytest

pytestmark = pytest.mark.process  # tier 2: starts real processes


@pytest.mark.timeout(300)
def test_bench_tiny_runs_and_writes_json(tmp_path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        ["zeromesh", "bench", "--tiny", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "RTT p50" in proc.stdout
    rows = json.loads(out.read_text())
    assert len(rows) >= 6
    scenarios = {row["scenario"].split(":")[0] for row in rows}
    assert "metrics on vs off" in scenarios
    # The ceilings the unmet targets are read against (README "Performance").
    assert "asyncio alone" in scenarios
    assert "one request at a time, 1 / raw RTT p50, vs direct" in scenarios
    for row in rows:
        assert set(row) == {"scenario", "zeromesh", "baseline", "ratio", "target", "unit"}
        assert row["zeromesh"] > 0
        assert row["baseline"] > 0
