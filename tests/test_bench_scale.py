"""Smoke test of ``zeromesh bench --scale``: a tiny run end to end, every group of rows
produced and no protocol mistake seen by the simulated peers (no timings checked)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.process  # tier 2: starts real brokers, workers and simulations

ROWS = [
    "Client.submit calls/s, 4 simulated endpoints vs 2",
    "client CPU per call (us), 4 simulated endpoints vs 2",
    "broker idle CPU, 20 workers vs 2",
    "false expiries in",
    "brokered Client.submit calls/s, 20 workers vs 2",
    "broker RSS per worker (KiB), 20 workers vs 2",
    "time until all workers registered (s), 20 vs 2",
    "broker RSS growth idle (MiB/min), 20 workers vs 2",
    "broker CPU per heartbeat (us), 20 workers, above 2",
    "worker RSS growth idle (MiB/min), 20 clients vs 3",
    "zeromesh status wall time (s), 20 workers vs 2",
    "zeromesh top --once wall time (s), 20 workers vs 2",
    "busy clients' calls/s, worker with 20 clients vs 3",
    "worker idle CPU, 20 heartbeating clients vs 3",
    "worker CPU per heartbeat (us), 20 clients, above 3",
    "protocol mistakes seen by the simulated peers",
]


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the bench starts each in a session of
    its own, so killing the bench's group would not reach them)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
    return found


@pytest.fixture
def bench() -> Iterator[list[subprocess.Popen[str]]]:
    """Holds the bench process; whatever happens, it and every process it started are
    killed at the end (brokers and workers by their process groups; the simulated peers
    also exit when the bench's pipes close)."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            for child in _children(p.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child, signal.SIGKILL)
            p.kill()
        p.wait(10)


@pytest.mark.timeout(300)
def test_bench_scale_tiny_runs_every_row(bench, tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "zeromesh", "bench", "--scale", "--tiny", "--json", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    bench.append(proc)
    stdout, stderr = proc.communicate(timeout=280)
    assert proc.returncode == 0, stdout + stderr
    rows = json.loads(out.read_text())
    names = [row["scenario"] for row in rows]
    for expected in ROWS:
        assert any(name.startswith(expected) for name in names), (expected, names)
    for row in rows:
        assert set(row) == {"scenario", "zeromesh", "baseline", "ratio", "target", "unit"}
    mistakes = next(r for r in rows if r["scenario"].startswith("protocol mistakes"))
    assert mistakes["zeromesh"] == 0
    assert "FAILED" not in stderr
    # The simulated peers' own summary: every role ran, none saw a mistake.
    for role in ("endpoints", "workers", "clients"):
        line = next(x for x in stdout.splitlines() if x.strip().startswith(f"{role}:"))
        assert line.endswith("protocol mistakes 0"), line
    # What the simulated peers answered and asked was real traffic, all of it answered.
    calls = next(r for r in rows if r["scenario"].startswith("busy clients"))
    assert calls["zeromesh"] > 0
    assert calls["baseline"] > 0
