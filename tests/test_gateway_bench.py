"""Smoke test of the gateway benchmark: it runs end to end and writes valid JSON.

No timing is checked (benchmarks own speed); only that every request was answered.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.process  # tier 2: starts real processes


@pytest.mark.timeout(120)
def test_gateway_bench_tiny_runs_and_writes_json(tmp_path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gateway", "--tiny", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gateway + 2 workers" in proc.stdout
    rows = json.loads(out.read_text())
    assert len(rows) == 5
    for row in rows:
        assert row["requests"] > 0
        assert row["errors"] == 0
        assert row["rps"] > 0
