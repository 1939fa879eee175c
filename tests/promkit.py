"""A real Prometheus server for tests (Debian's ``prometheus``, installed by .ci/run).

`Prometheus` writes a config scraping the given targets every second, starts the
server on a port it picks itself (``127.0.0.1:0``, read back from its log), and asks
its HTTP query API. The test skips, saying why, only where the package is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

_LISTENING = re.compile(r'msg="Listening on" address=(\S+)')


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("no `prometheus` here (.ci/run installs Debian's package)")
    return path


class Prometheus:
    """One Prometheus scraping ``jobs`` (job name → ``host:port`` targets) every second."""

    def __init__(self, tmp: Path, jobs: dict[str, list[str]]) -> None:
        self.dir = tmp / "prometheus"
        self.dir.mkdir()
        lines = ["global:", "  scrape_interval: 1s", "  evaluation_interval: 1s", "scrape_configs:"]
        for job, targets in jobs.items():
            lines += [
                f"  - job_name: {job}",
                "    static_configs:",
                f"      - targets: {json.dumps(targets)}",
            ]
        config = self.dir / "prometheus.yml"
        config.write_text("\n".join(lines) + "\n")
        self.log = self.dir / "prometheus.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [
                    prometheus_binary(),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    "--web.listen-address=127.0.0.1:0",
                    "--log.level=info",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed whole by close()
            )
        self.url = self._wait_listening()

    def _wait_listening(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _LISTENING.search(self.log.read_text(errors="replace"))
            if found:
                url = f"http://{found.group(1)}"
                if self._get(f"{url}/-/ready") is not None:
                    return url
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited {self.proc.returncode}:\n{self.log.read_text()}")
            time.sleep(0.1)
        pytest.fail(f"prometheus not ready in {timeout} s:\n{self.log.read_text()}")

    @staticmethod
    def _get(url: str) -> bytes | None:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return bytes(r.read())
        except OSError:
            return None

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result vector of an instant query (``/api/v1/query``)."""
        body = self._get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert body is not None, f"prometheus did not answer {expr!r}"
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def targets_up(self) -> dict[str, str]:
        """Each scraped target's health (``up``, ``down`` or ``unknown``), by job/instance."""
        body = self._get(f"{self.url}/api/v1/targets")
        assert body is not None
        active = json.loads(body)["data"]["activeTargets"]
        return {f"{t['labels']['job']}/{t['labels']['instance']}": t["health"] for t in active}

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


_METRICS_AT = re.compile(r"metrics at (http://[^\s\"]+)")


def metrics_url(proc: Any, timeout: float = 20) -> str:
    """The ``metrics at http://...`` URL a process logged (``--metrics HOST:0``);
    ``proc`` has ``output()`` (a kit's child process). Waits for the line."""
    deadline = time.monotonic() + timeout
    while True:
        found = _METRICS_AT.search(proc.output())
        if found:
            return found.group(1)
        assert time.monotonic() < deadline, f"no 'metrics at' line in:\n{proc.output()}"
        time.sleep(0.02)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a ``/metrics`` page: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
