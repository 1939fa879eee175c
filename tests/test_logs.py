"""``--log-format json``: one JSON object a line, with the request's fields inside a
handler; the text format unchanged. A formatter test, then real worker, broker and
gateway processes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from brokerkit import BrokeredMesh
from hostilekit import raw_dealer
from meshkit import Mesh

import protocol
from client import Client
from protocol import Reply, Request
from zmqio import JsonFormatter, add_log_fields

TEST_ENV = {"PYTHONPATH": os.path.dirname(__file__)}


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("zeromesh.test", logging.WARNING, __file__, 1, msg, (), None)
    record.__dict__.update(extra)
    return record


def test_a_json_line_has_the_fixed_keys_and_the_request_fields() -> None:
    line = json.loads(JsonFormatter().format(_record("hello %s")))
    assert set(line) == {"time", "level", "logger", "message", "pid"}
    assert (line["level"], line["logger"], line["message"]) == (
        "warning",
        "zeromesh.test",
        "hello %s",
    )
    assert line["time"].endswith("Z")
    assert line["pid"] == os.getpid()
    line = json.loads(JsonFormatter().format(_record("x", target="math.add", request_id=7)))
    assert (line["target"], line["request_id"]) == ("math.add", 7)
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(JsonFormatter().format(record))["exception"]


def test_providers_add_fields_to_every_line() -> None:
    current: dict[str, object] = {}
    add_log_fields(lambda: current or None)
    assert "trace_id" not in json.loads(JsonFormatter().format(_record("idle")))
    current.update(target="t.log", request_id=3, trace_id="0af7651916cd43dd8448eb211c80319c")
    line = json.loads(JsonFormatter().format(_record("busy")))
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    current.clear()


@pytest.mark.process
def test_a_worker_logs_json_lines_with_the_request_of_the_handler(mesh: Mesh) -> None:
    w = mesh.start("--log-format", "json", service="testsvc:svc", env=TEST_ENV)
    with Client([w.endpoint]) as c:
        assert c.call("t.log", "inside") == "inside"
    lines = [json.loads(line) for line in w.output().splitlines() if line.strip()]
    assert lines, "the worker logged nothing"
    inside = [line for line in lines if line["message"] == "handler says inside"]
    assert len(inside) == 1, lines
    assert inside[0]["target"] == "t.log"
    assert inside[0]["logger"] == "testsvc"
    assert isinstance(inside[0]["request_id"], int)
    serving = [line for line in lines if line["message"].startswith("worker ")]
    assert serving
    assert "target" not in serving[0]  # not inside a request


@pytest.mark.process
def test_a_broker_logs_json_lines(short_tmp: Path) -> None:
    bm = BrokeredMesh(short_tmp)
    try:
        b = bm.broker("--log-format", "json")
        lines = [json.loads(line) for line in b.output().splitlines() if line.strip()]
    finally:
        bm.close()
    assert any(line["message"].startswith("bound tcp://") for line in lines), lines
    assert all(line["logger"].startswith("zeromesh") for line in lines)


@pytest.mark.process
@pytest.mark.parametrize("module", ["gateway", "zeromesh", "worker", "broker"])
def test_every_command_offers_log_format(module: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "--log-format {text,json}" in out.stdout


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.process
def test_the_handler_and_its_log_lines_see_the_caller_s_trace(mesh: Mesh) -> None:
    w = mesh.start("--log-format", "json", service="testsvc:svc", env=TEST_ENV)
    with raw_dealer(w.endpoint) as sock:
        sock.send_multipart(
            protocol.encode(Request(1, "t.trace", [], {}, 10_000, trace=TRACEPARENT))
        )
        sock.send_multipart(protocol.encode(Request(2, "t.trace", [], {}, 10_000)))
        assert sock.poll(10_000)
        first = protocol.decode(sock.recv_multipart())
        assert sock.poll(10_000)
        second = protocol.decode(sock.recv_multipart())
    assert isinstance(first, Reply)
    assert first.result == [TRACEPARENT, "0af7651916cd43dd8448eb211c80319c"]
    assert isinstance(second, Reply)
    assert second.result == ["", ""]  # no trace sent: none made up
    lines = [json.loads(line) for line in w.output().splitlines() if line.strip()]
    tracing = [line for line in lines if line["message"] == "tracing"]
    assert [line.get("trace_id") for line in tracing] == ["0af7651916cd43dd8448eb211c80319c", None]
