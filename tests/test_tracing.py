"""W3C trace context end to end: a call carries a traceparent (given, or OpenTelemetry's
current span's), the worker hands it to the handler and starts a child span, a 1.0
peer is sent the request without it, and a broker passes it through.

The OpenTelemetry SDK is a test dependency only: zeromesh runs without it."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import gatewaykit
import pytest
import zmq
from brokerkit import BrokeredMesh
from meshkit import Mesh
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import protocol
from client import Client
from client._dispatch import Call, Peer
from client._options import Options, current_traceparent, make_request
from protocol import DEFAULT_LIMITS, FLAG_META, Hello, Reply
from worker import Service, Worker, WorkerConfig, trace_id, traceparent

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TEST_ENV = {"PYTHONPATH": os.path.dirname(__file__)}

_exporter = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(_exporter))
trace.set_tracer_provider(_provider)  # process-wide, once: the worker below uses it


def test_a_trace_option_must_be_a_traceparent() -> None:
    assert Options(trace=TRACEPARENT).trace == TRACEPARENT
    assert Options(trace="").trace == ""
    with pytest.raises(ValueError, match="must be a W3C traceparent"):
        Options(trace="0af7651916cd43dd")


def test_a_traced_request_goes_to_a_1_0_peer_without_its_trace() -> None:
    rid, frames = make_request("t.x", [1], {}, Options(trace=TRACEPARENT), False, DEFAULT_LIMITS)
    assert frames[0][5] & FLAG_META
    assert protocol.decode(frames).trace == TRACEPARENT
    call = Call("t.x", frames, rid, 30.0, 0, None, lambda *_: None)
    old, new = Peer("tcp://old:1"), Peer("tcp://new:1")
    old.hello = Hello(role="worker", protocol="1.0")
    new.hello = Hello(role="worker")
    assert call.frames_for(new) is frames
    plain = call.frames_for(old)
    assert not plain[0][5] & FLAG_META
    assert protocol.decode(plain).trace == ""
    assert protocol.decode(plain).args == [1]
    assert call.frames_for(old) is plain  # made once
    _, untraced = make_request("t.x", [1], {}, Options(), False, DEFAULT_LIMITS)
    assert not untraced[0][5] & FLAG_META


def test_without_a_trace_option_a_call_carries_the_current_span() -> None:
    assert current_traceparent() == ""  # no span recorded here
    with _provider.get_tracer("test").start_as_current_span("caller") as span:
        ctx = span.get_span_context()
        expected = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
        assert current_traceparent() == expected
        _, frames = make_request("t.x", [], {}, Options(), False, DEFAULT_LIMITS)
        assert protocol.decode(frames).trace == expected
        _, frames = make_request("t.x", [], {}, Options(trace=""), False, DEFAULT_LIMITS)
        assert protocol.decode(frames).trace == ""  # "" turns it off


svc = Service("tr")


@svc.handler
def seen() -> list[str]:
    span = trace.get_current_span().get_span_context()
    return [traceparent(), trace_id(), f"{span.span_id:016x}"]


@svc.handler
def fails() -> None:
    raise ValueError("traced failure")


@pytest.fixture
def embedded(short_tmp: Any) -> Iterator[str]:
    """A worker in this process (so its spans reach the in-memory exporter)."""
    w = Worker([svc], WorkerConfig(binds=["tcp://127.0.0.1:0"], concurrency=2))
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    while not w.endpoints and t.is_alive():
        t.join(0.01)
    try:
        yield w.endpoints[0]
    finally:
        w.request_stop("test over")
        t.join(20)


def test_the_worker_runs_a_traced_request_in_a_child_span(embedded: str) -> None:
    _exporter.clear()
    with Client([embedded]) as c:
        got = c.options(trace=TRACEPARENT).call("tr.seen")
        with pytest.raises(Exception, match="traced failure"):
            c.options(trace=TRACEPARENT).call("tr.fails")
        assert c.options(trace="").call("tr.seen")[:2] == ["", ""]
    caller, tid, span_id = got
    assert (caller, tid) == (TRACEPARENT, TRACE_ID)
    spans = {s.name: s for s in _exporter.get_finished_spans()}
    child = spans["tr.seen"]
    assert f"{child.context.trace_id:032x}" == TRACE_ID
    assert f"{child.parent.span_id:016x}" == "b7ad6b7169203331"  # the caller's span
    assert f"{child.context.span_id:016x}" == span_id  # current inside the handler
    assert child.kind is trace.SpanKind.SERVER
    assert child.attributes["rpc.method"] == "tr.seen"
    failed = spans["tr.fails"]
    assert not failed.status.is_ok
    assert any(e.name == "exception" for e in failed.events)
    assert len(_exporter.get_finished_spans()) == 2  # the untraced call made none


def test_a_1_0_peer_is_sent_the_request_without_its_trace() -> None:
    """A hand-made 1.0 worker: a ROUTER that answers HELLO without a protocol key. The
    client must not send it the meta flag (a 1.0 receiver refuses it)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    old = Hello(0, role="worker", services={"t": ["x"]}, capacity=1, protocol="1.0")
    body = protocol.encode(old)[1]
    hello_1_0 = protocol.decode([protocol.encode(old)[0], _without_key(body, "protocol")])
    assert hello_1_0.protocol == "1.0"
    got: list[Any] = []

    def serve() -> None:
        while router.poll(10_000):
            peer, *frames = router.recv_multipart()
            msg = protocol.decode(frames)
            if isinstance(msg, Hello):
                answer = protocol.encode(
                    Hello(msg.id, role="worker", services={"t": ["x"]}, capacity=1)
                )
                router.send_multipart([peer, answer[0], _without_key(answer[1], "protocol")])
            elif isinstance(msg, protocol.Request):
                got.append((frames[0][5], msg.trace))
                router.send_multipart([peer, *protocol.encode(Reply(msg.id, "ok"))])
                return

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with Client([f"tcp://127.0.0.1:{port}"], timeout=10) as c:
            assert c.options(trace=TRACEPARENT).call("t.x") == "ok"
    finally:
        t.join(10)
        router.close(0)
        ctx.term()
    assert got == [(0, "")]


def _without_key(body: bytes, key: str) -> bytes:
    import msgpack

    value = msgpack.unpackb(body)
    value.pop(key, None)
    return bytes(msgpack.packb(value))


@pytest.mark.process
def test_a_broker_passes_the_trace_to_its_worker(short_tmp: Any) -> None:
    bm = BrokeredMesh(short_tmp)
    try:
        b = bm.broker()
        bm.worker(b, service="testsvc:svc")
        with Client([b.endpoint], timeout=20) as c:
            assert c.options(trace=TRACEPARENT).call("t.trace") == [TRACEPARENT, TRACE_ID]
    finally:
        bm.close()


@pytest.mark.process
def test_a_worker_process_without_a_tracing_sdk_still_sees_the_trace(mesh: Mesh) -> None:
    w = mesh.start(service="testsvc:svc", env=TEST_ENV)
    with Client([w.endpoint]) as c:
        assert c.options(trace=TRACEPARENT).call("t.trace") == [TRACEPARENT, TRACE_ID]


@pytest.mark.process
def test_a_broker_sends_a_1_0_worker_the_request_without_its_trace(short_tmp: Any) -> None:
    """A hand-made 1.0 worker behind a real broker: it registers with a HELLO that has
    no protocol key, and must receive the traced request without the meta flag."""
    bm = BrokeredMesh(short_tmp)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    got: list[Any] = []
    try:
        b = bm.broker()
        dealer.connect(b.endpoint)
        hello = protocol.encode(Hello(1, role="worker", services={"t": ["x"]}, capacity=1))
        dealer.send_multipart([b"", hello[0], _without_key(hello[1], "protocol")])
        dealer.send_multipart([b"", *protocol.encode(protocol.Ready(0, credit=1))])

        def serve() -> None:
            while dealer.poll(15_000):
                first, *rest = dealer.recv_multipart()
                if not first:
                    continue  # the broker's own messages (HELLO answer, PING...)
                header, *body = rest
                msg = protocol.decode([header, *body])
                got.append((header[5], msg.trace))
                dealer.send_multipart([first, *protocol.encode(Reply(msg.id, "ok"))])
                return

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        with Client([b.endpoint], timeout=15) as c:
            assert c.options(trace=TRACEPARENT).call("t.x") == "ok"
        t.join(10)
    finally:
        dealer.close(0)
        ctx.term()
        bm.close()
    assert got == [(0, "")]


gateways = gatewaykit.gateways


@pytest.mark.process
def test_a_traceparent_header_at_the_gateway_reaches_the_handler(
    mesh: Mesh, gateways: gatewaykit.Gateways
) -> None:
    w = mesh.start(service="testsvc:svc", env=TEST_ENV)
    gw = gateways.start("--connect", w.endpoint, "--jobs-db", ":memory:")
    body = {"args": [], "kwargs": {}}
    traced = {"traceparent": TRACEPARENT}
    r = gw.request("POST", "/call/t.trace", body, headers=traced)
    assert (r.status, r.json) == (200, {"result": [TRACEPARENT, TRACE_ID]})
    r = gw.request("POST", "/call/t.trace", body, headers={"traceparent": "not-a-trace"})
    assert (r.status, r.json) == (200, {"result": ["", ""]})  # ignored, not refused
    r = gw.request("POST", "/jobs/t.trace", body, headers=traced)
    assert r.status == 202
    view = gw.wait_job(r.json["id"], lambda v: v["status"] == "done")
    assert view["result"] == [TRACEPARENT, TRACE_ID]
