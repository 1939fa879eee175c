"""A bug in a server's background task must not leave it serving without its timers.

The broker's ticker expires silent workers and queued deadlines; the worker's
housekeeping pings streaming clients and enforces --max-rss. Either one raising would
otherwise end quietly while the socket loop went on. Real servers on real ipc sockets,
in this process; the only stand-in is the failing timer step itself (the bug).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from broker import Broker, BrokerConfig
from worker import Service, Worker, WorkerConfig
from zmqio import EXIT_INTERNAL_ERROR


class _BuggyBroker(Broker):
    def _probe_streaming_clients(self) -> None:  # runs on the ticker, every heartbeat
        raise RuntimeError("a bug in the ticker")


class _BuggyWorker(Worker):
    def _probe_streaming_clients(self) -> None:  # runs on the housekeeping task
        raise RuntimeError("a bug in housekeeping")


def _run_until_exit(server: Broker | Worker) -> int:
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(server.run()), daemon=True)
    t.start()
    t.join(20)
    if t.is_alive():
        server.request_stop("test over")
        t.join(20)
        pytest.fail("the server went on serving after its background task failed")
    return result[0]


@pytest.mark.timeout(60)
def test_a_broker_whose_ticker_fails_drains_and_exits_with_an_internal_error(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = BrokerConfig(binds=[f"ipc://{short_tmp}/b.sock"], heartbeat_ms=100, drain_timeout=2)
    with caplog.at_level(logging.CRITICAL, logger="zeromesh.broker"):
        code = _run_until_exit(_BuggyBroker(config))
    assert code == EXIT_INTERNAL_ERROR
    assert "internal error: the broker's ticker stopped (RuntimeError: a bug in the ticker)" in (
        caplog.text
    )


@pytest.mark.timeout(60)
def test_a_worker_whose_housekeeping_fails_drains_and_exits_with_an_internal_error(
    short_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    svc = Service("ie")

    @svc.handler
    def ping() -> str:
        return "pong"

    config = WorkerConfig(binds=[f"ipc://{short_tmp}/w.sock"], heartbeat_ms=100, drain_timeout=2)
    with caplog.at_level(logging.CRITICAL, logger="zeromesh.worker"):
        code = _run_until_exit(_BuggyWorker([svc], config))
    assert code == EXIT_INTERNAL_ERROR
    assert "the worker's housekeeping stopped (RuntimeError: a bug in housekeeping)" in caplog.text
