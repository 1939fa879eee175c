"""Session rules of SPEC sections 2, 6 and 7, checked against live workers and brokers
over bare DEALER sockets: what is answered, what gets silence, and when."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import zmq
from brokerkit import BrokeredMesh
from hostilekit import raw_dealer
from meshkit import Mesh

import protocol
from protocol import Codec, Disconnect, Error, ErrorCode, Reply, Request

pytestmark = pytest.mark.process

TEST_ENV = {"PYTHONPATH": os.path.dirname(__file__)}


def _receive(sock: zmq.Socket[bytes], n: int, timeout: float) -> list[tuple[float, Any]]:
    """Up to ``n`` messages, decoded, each with the time it arrived."""
    got: list[tuple[float, Any]] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
        got.append((time.monotonic(), protocol.decode(sock.recv_multipart())))
    return got


@pytest.mark.parametrize(
    ("service", "mode"), [("testsvc:svc", "inline"), ("examples.mathsvc:svc", "threaded")]
)
def test_a_request_queued_past_its_ttl_is_answered_timeout_at_its_deadline(
    mesh: Mesh, service: str, mode: str
) -> None:
    """SPEC section 2: a request still waiting at its deadline is answered TIMEOUT then,
    not when a slot frees; it never runs. Inline workers (one thread, no async
    handlers) and threaded ones alike."""
    w = mesh.start(service=service, env=TEST_ENV)
    target = "t.sleep" if mode == "inline" else "math.sleep"
    with raw_dealer(w.endpoint) as sock:
        sock.send_multipart(protocol.encode(Request(1, target, [2.0], {}, ttl_ms=10_000)))
        time.sleep(0.1)  # it runs: the next one waits behind it
        sent = time.monotonic()
        sock.send_multipart(protocol.encode(Request(2, target, [0.0], {}, ttl_ms=200)))
        got = _receive(sock, 2, timeout=10)
    assert [type(m).__name__ for _, m in got] == ["Error", "Reply"], got
    (timed_out_at, timeout), (_, reply) = got
    assert (timeout.id, timeout.code) == (2, ErrorCode.TIMEOUT)
    assert "expired after waiting" in timeout.message
    assert "it did not run" in timeout.message
    assert reply.id == 1
    # How late after the deadline, for the record (no timing assertion: shared machines).
    print(f"{mode}: TIMEOUT {1000 * (timed_out_at - sent - 0.2):+.0f} ms after the deadline")


@pytest.mark.parametrize("server", ["worker", "broker"])
def test_undecodable_errors_and_other_answers_get_silence(
    mesh: Mesh, short_tmp: Any, server: str
) -> None:
    """SPEC section 6: a message whose header says it is an answer (ERROR, REPLY, PONG,
    PROGRESS) is never answered, whatever else is wrong with it; the server serves on."""
    bm = BrokeredMesh(short_tmp)
    try:
        if server == "worker":
            ep = mesh.start().endpoint
        else:
            b = bm.broker()
            bm.worker(b)
            ep = b.endpoint
        error = bytes.fromhex("5a4d010300000000000000000063000000000000")
        id100 = error[:6] + (100).to_bytes(8, "big") + error[14:]
        bad_codec = error[:4] + b"\x09" + error[5:]
        silent = [
            [error, bytes.fromhex("c1c1c1")],  # the body does not decode
            [id100, bytes.fromhex("80")],  # an empty map: no 'code'
            [bad_codec, b""],  # an unknown codec
            [error[:19], b""],  # a header cut short
            protocol.encode(Error(7, ErrorCode.REMOTE, "a valid ERROR")),
            protocol.encode(Reply(8, "a REPLY nobody asked for")),
            [protocol.encode(Reply(9, 1))[0], b"\xc1"],  # a REPLY that does not decode
        ]
        with raw_dealer(ep) as sock:
            for frames in silent:
                sock.send_multipart(frames)
            # A REQUEST after them is still served: the server read past them all.
            target = "math.add" if server == "worker" else "bk.pid"
            args = [1, 2] if server == "worker" else []
            sock.send_multipart(protocol.encode(Request(10, target, args, {}, ttl_ms=10_000)))
            got = _receive(sock, 2, timeout=10)
        assert [(type(m).__name__, m.id) for _, m in got] == [("Reply", 10)], got
    finally:
        bm.close()


def test_a_client_s_disconnect_cancels_what_it_left_waiting(mesh: Mesh) -> None:
    """SPEC section 7.6: after a client's DISCONNECT (id 0) the worker drops that client's
    waiting requests unanswered (it is gone) and cancels its running one."""
    w = mesh.start(service="testsvc:svc", env=TEST_ENV)
    with raw_dealer(w.endpoint) as sock:
        sock.send_multipart(protocol.encode(Request(1, "t.sleep", [5.0], {}, ttl_ms=30_000)))
        for rid in range(2, 6):
            sock.send_multipart(protocol.encode(Request(rid, "t.slow_pid", [5.0], {})))
        time.sleep(0.2)
        sock.send_multipart(protocol.encode(Disconnect(0, "client closing", Codec.MSGPACK)))
        got = _receive(sock, 5, timeout=3)
    # t.sleep checks cancelled() and returns early; the waiting ones never ran (slow_pid
    # would have taken 5 s each). Whatever the worker still sends goes nowhere.
    assert all(m.id == 1 for _, m in got), got
    with raw_dealer(w.endpoint) as sock:
        sock.send_multipart(protocol.encode(Request(6, "t.slow_pid", [0.0], {}, ttl_ms=10_000)))
        (_, answer), *_ = _receive(sock, 1, timeout=3)  # served at once: nothing queued
    assert isinstance(answer, Reply)
    assert answer.result == w.pid


def test_a_batch_stops_at_the_first_failed_item_and_says_which(mesh: Mesh) -> None:
    """SPEC section 7.9: items run in order; the first failure ends the batch with one
    ERROR whose detail holds its index and the results before it."""
    w = mesh.start()
    with raw_dealer(w.endpoint) as sock:
        for rid, items, code, index in [
            (1, [[1, 2], [3], [4, 5]], ErrorCode.BAD_ARGUMENTS, 1),  # item 1 lacks an argument
            (2, [[1, 2], [3, 4], ["x", 5]], ErrorCode.REMOTE, 2),  # item 2 raises TypeError
        ]:
            req = Request(rid, "math.add", items, {}, ttl_ms=10_000, batch=True)
            sock.send_multipart(protocol.encode(req))
            ((_, err),) = _receive(sock, 1, timeout=10)
            assert isinstance(err, Error)
            assert (err.id, err.code) == (rid, code), err
            assert err.detail is not None
            assert err.detail["index"] == index
            assert err.detail["results"] == [3, 7][:index]  # none ran after the failed one
            assert err.type in ("BadArguments", "TypeError")


def test_an_async_request_cancelled_before_it_started_gives_its_slot_back(mesh: Mesh) -> None:
    """A REQUEST for an async handler and the client's DISCONNECT (or CANCEL) in the same
    batch: the task is cancelled before its first step, and its slot must come back."""
    w = mesh.start("--max-async", "2")
    with raw_dealer(w.endpoint) as sock:
        for rid in range(1, 4):
            req = Request(rid, "math.wait", [0.5], {}, ttl_ms=10_000)
            sock.send_multipart(protocol.encode(req))
            if rid == 2:
                sock.send_multipart(protocol.encode(protocol.Cancel(rid)))
            else:
                sock.send_multipart(protocol.encode(Disconnect(0, "gone", Codec.MSGPACK)))
        time.sleep(0.2)
    with raw_dealer(w.endpoint) as sock:
        sock.send_multipart(protocol.encode(Request(9, "math.wait", [0.0], {}, ttl_ms=10_000)))
        ((_, answer),) = _receive(sock, 1, timeout=5)
        assert isinstance(answer, Reply), answer  # served at once: both slots free again
        sock.send_multipart(protocol.encode(protocol.Hello(10, role="client")))
        ((_, hello),) = _receive(sock, 1, timeout=5)
    assert hello.in_flight == 0  # nothing left held
