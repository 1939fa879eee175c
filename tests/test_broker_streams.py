"""Streams through a broker (SPEC 12.8, issue 19).

The scheduler's rules run in the fast tier with a fake clock; the rest drives a real
broker and real workers serving tests/streamsvc.py (what a handler did on its worker
is read from files it writes).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from brokerkit import BrokeredMesh, Proc, status, wait_for, workers_ready
from test_broker_scheduler import C, answers, make, sent, take
from test_streams import _drain, _read, consumer_killed_mid_stream

import protocol
from broker._scheduler import CancelAt
from client import AsyncClient, Client
from protocol import ErrorCode, Hello, RemoteError, UnknownHandler, WorkerLost

STREAMS = "streamsvc:svc"


def streaming(s: Any, wid: bytes, streams: bool = True, credit: int = 1) -> None:
    """Register ``wid`` serving gen.count (streaming or not) and grant ``credit``."""
    s.register(wid, services={"gen": ["count"]}, capacity=credit, heartbeat=1.0, streams=streams)
    s.ready(wid, credit)


# --- the scheduler's rules --------------------------------------------------------------


def test_a_stream_goes_only_to_a_worker_that_streams() -> None:
    s, _ = make()
    streaming(s, b"old", streams=False)
    streaming(s, b"new")
    s.submit(C, 1, "gen.count", 0, None, stream=True)  # old waited longest: passed over
    s.submit(C, 2, "gen.count", 0, None)
    assert sent(take(s)) == [(b"new", 1), (b"old", 2)]
    s.submit(C, 3, "gen.count", 0, None, stream=True)
    assert take(s) == []  # queued: only a streaming worker may take it
    assert s.ready(b"old", 1)
    assert take(s) == []
    assert s.finish(b"new", C, 1)
    s.ready(b"new", 1)
    assert sent(take(s)) == [(b"new", 3)]


def test_a_stream_no_streaming_worker_serves_is_refused_at_once_saying_so() -> None:
    s, _ = make()
    streaming(s, b"old", streams=False)
    s.submit(C, 1, "gen.count", 0, None, stream=True)
    out = take(s)
    assert answers(out) == [(1, ErrorCode.UNKNOWN_HANDLER)]
    assert "cannot stream" in out[0].message
    assert "call()" in out[0].message


def test_items_are_counted_and_a_worker_lost_after_one_fails_the_stream_at_once() -> None:
    s, _ = make()
    streaming(s, b"w1")
    streaming(s, b"w2")
    s.submit(C, 1, "gen.count", 0, None, stream=True)
    assert sent(take(s)) == [(b"w1", 1)]
    assert not s.item(b"w2", C, 1)  # not its stream: dropped
    assert all(s.item(b"w1", C, 1) for _ in range(3))
    assert s.status()["totals"]["items"] == 3
    s.remove(b"w1", "unreachable")
    out = take(s)
    assert sent(out) == []  # w2 is free, but the items were consumed: not sent again
    assert answers(out) == [(1, ErrorCode.WORKER_LOST)]
    assert "after it had sent 3 ITEM message(s)" in out[0].message


def test_a_worker_lost_before_the_first_item_sends_the_stream_elsewhere() -> None:
    s, _ = make()
    streaming(s, b"w1")
    streaming(s, b"w2")
    s.submit(C, 1, "gen.count", 0, None, stream=True)
    assert sent(take(s)) == [(b"w1", 1)]
    s.remove(b"w1", "unreachable")
    assert sent(take(s)) == [(b"w2", 1)]


def test_a_stream_its_client_gave_up_on_is_not_sent_again_when_its_worker_is_lost() -> None:
    s, _ = make()
    streaming(s, b"w1")
    streaming(s, b"w2")
    s.submit(C, 1, "gen.count", 0, None, stream=True)
    s.submit(b"client-2", 1, "gen.count", 0, None, stream=True)
    assert sent(take(s)) == [(b"w1", 1), (b"w2", 1)]
    s.cancel(C, 1)
    s.forget_client(b"client-2")
    take(s)  # the CANCELs
    s.remove(b"w1", "unreachable")
    s.remove(b"w2", "unreachable")
    streaming(s, b"w3", credit=2)
    assert take(s) == []  # nobody would read them: dropped, not run again
    assert s.open_streams() == {}
    assert s.in_flight == 0


def test_credit_goes_to_the_worker_holding_the_stream_and_nowhere_else() -> None:
    s, _ = make()
    streaming(s, b"w1")
    s.submit(C, 1, "gen.count", 0, None, stream=True)
    s.submit(C, 2, "gen.count", 0, None, stream=True)  # queued: w1 has no credit left
    s.submit(C, 3, "gen.count", 0, None)
    take(s)
    assert s.holder(C, 1) == b"w1"
    assert s.holder(C, 2) is None  # queued
    assert s.holder(C, 3) is None  # not a stream
    assert s.holder(b"other", 1) is None
    assert s.finish(b"w1", C, 1)  # its END
    assert s.holder(C, 1) is None


def test_the_status_shows_open_streams_and_a_gone_client_cancels_its_own() -> None:
    s, _ = make()
    streaming(s, b"w1", credit=2)
    s.submit(C, 1, "gen.count", 0, None, stream=True)
    s.submit(b"client-2", 1, "gen.count", 0, None, stream=True)
    s.submit(C, 2, "gen.count", 0, None, stream=True)  # queued
    take(s)
    st = s.status()
    assert (st["totals"]["open_streams"], st["totals"]["streams"]) == (3, 3)
    assert st["workers"][0]["streams"] == 2
    assert set(s.open_streams()) == {(C, 1), (b"client-2", 1), (C, 2)}
    s.forget_client(C)
    out = take(s)
    assert [(c.worker, c.job.id) for c in out if isinstance(c, CancelAt)] == [(b"w1", 1)]
    assert s.finish(b"w1", C, 1)  # its ERROR CANCELLED
    assert set(s.open_streams()) == {(b"client-2", 1)}


# --- a real broker ----------------------------------------------------------------------


def _mesh(bmesh: BrokeredMesh, *worker_args: str, workers: int = 1) -> Proc:
    broker = bmesh.broker()
    for _ in range(workers):
        bmesh.worker(broker, service=STREAMS, args=worker_args)
    wait_for(broker, workers_ready(workers), bmesh, what=f"{workers} worker(s)")
    return broker


def _wait_file(path: Path, want: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while _read(path) != want:
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name}: {_read(path)!r}, not {want!r} within {timeout} s")
        time.sleep(0.01)


@pytest.mark.process
def test_streams_pass_through_a_broker_with_their_credit(
    bmesh: BrokeredMesh, short_tmp: Path
) -> None:
    broker = _mesh(bmesh, "--concurrency", "2")
    with Client(broker.endpoint, timeout=20) as c:
        assert list(c.stream("gen.count", 1000)) == list(range(1000))
        arrays = list(c.stream("gen.arrays", 3, 1000))
        assert [float(a[0]) for a in arrays] == [0.0, 1.0, 2.0]
        got: list[Any] = []
        with pytest.raises(RemoteError, match="failed after 5"):
            _drain(c.stream("gen.fails_after", 5), got)
        assert got == [0, 1, 2, 3, 4]
        assert c.call("gen.count", 3) == [0, 1, 2]  # a plain call: the list

        # A consumer that stops reading: the handler pauses a window ahead, and the
        # broker's status shows the stream open at its worker.
        where = short_tmp / "slow"
        where.mkdir()
        stream = c.options(window=4).stream("gen.watched", 1_000, str(where))
        assert [next(stream) for _ in range(2)] == [0, 1]
        _wait_file(where / "produced", "6")  # a window, and the 2 reads given back
        st = status(broker)
        assert st["totals"]["open_streams"] == 1
        assert sum(w["streams"] for w in st["workers"]) == 1
        time.sleep(0.3)
        assert _read(where / "produced") == "6"  # still paused
        stream.close()  # leaving early cancels it on the worker, through the broker
        _wait_file(where / "closed", "6 cancelled=True")
        st = wait_for(
            broker, lambda st: st["totals"]["open_streams"] == 0, bmesh, what="no open stream"
        )
    assert st["totals"]["streams"] == 4
    assert 4 <= st["totals"]["items"] <= 1000 + 3 + 5 + 6  # ITEM messages: some batched


@pytest.mark.process
def test_async_streams_pass_through_a_broker(bmesh: BrokeredMesh) -> None:
    import asyncio

    broker = _mesh(bmesh)

    async def main() -> list[int]:
        async with AsyncClient(broker.endpoint, timeout=20) as ac:
            return [x async for x in ac.options(window=2).stream("gen.acount", 50)]

    assert asyncio.run(main()) == list(range(50))


@pytest.mark.process
def test_a_worker_killed_mid_stream_behind_a_broker_raises_worker_lost(
    bmesh: BrokeredMesh,
) -> None:
    broker = _mesh(bmesh, "--concurrency", "2", workers=2)
    with Client(broker.endpoint, timeout=30) as c:
        got: list[Any] = []

        def kill_the_holder() -> None:
            if len(got) == 10:
                (holder,) = [w for w in status(broker)["workers"] if w["streams"]]
                os.killpg(holder["pid"], signal.SIGKILL)

        with pytest.raises(WorkerLost) as info:
            _drain(c.options(window=4).stream("gen.count", 10_000_000), got, kill_the_holder)
        assert info.value.items == len(got) >= 10
        assert got == list(range(len(got)))
        assert "not sent again" in str(info.value)
        # The other worker still streams.
        assert list(c.stream("gen.count", 3)) == [0, 1, 2]


@pytest.mark.process
def test_a_consumer_killed_mid_stream_behind_a_broker_cancels_the_handler(
    bmesh: BrokeredMesh, short_tmp: Path
) -> None:
    broker = _mesh(bmesh, "--concurrency", "2")
    with consumer_killed_mid_stream(broker.endpoint, short_tmp):
        # The broker's probe finds the client gone within a heartbeat or two (300 ms).
        _wait_file(short_tmp / "closed", "6 cancelled=True", timeout=10)
    wait_for(broker, lambda st: st["totals"]["open_streams"] == 0, bmesh, what="stream closed")
    with Client(broker.endpoint, timeout=10) as c:  # the slot is free again
        assert list(c.stream("gen.count", 2)) == [0, 1]


@pytest.mark.process
def test_a_broker_cuts_a_stream_whose_client_does_not_read(
    bmesh: BrokeredMesh, short_tmp: Path
) -> None:
    # A hostile client asks for a window of a billion 64 KiB items and reads slowly (a
    # PING with each read keeps it connected): the broker, which would queue them,
    # ends the stream LIMIT_EXCEEDED once a megabyte waits, and cancels it at the worker.
    from hostilekit import raw_dealer

    broker = bmesh.broker("--max-peer-output", "1")
    bmesh.worker(broker, service=STREAMS, args=("--concurrency", "2"))
    wait_for(broker, workers_ready(1), bmesh, what="a worker")
    with raw_dealer(broker.endpoint) as sock:
        request = protocol.Request(5, "gen.watched", [10**9, str(short_tmp), 65_536], window=10**9)
        sock.send_multipart(protocol.encode(Hello(1, streams=True)))
        sock.send_multipart(protocol.encode(request))
        ping = protocol.encode(protocol.Ping(2))
        deadline = time.monotonic() + 30
        while not _read(short_tmp / "closed") and time.monotonic() < deadline:
            if sock.poll(50):
                sock.recv_multipart()
            sock.send_multipart(ping)
            time.sleep(0.05)
        assert _read(short_tmp / "closed").endswith("cancelled=True")
        end = None
        while end is None and time.monotonic() < deadline + 30:  # now read it all
            assert sock.poll(10_000)
            msg = protocol.decode(sock.recv_multipart())
            if isinstance(msg, protocol.Error) and msg.id == 5:
                end = msg
    assert end.code == protocol.ErrorCode.LIMIT_EXCEEDED
    assert "read the stream as it comes" in end.message
    st = status(broker)
    assert st["broker"]["streams_cut"] == 1
    assert st["totals"]["open_streams"] == 0


@pytest.mark.process
def test_a_stream_to_a_handler_that_is_not_a_generator_is_refused_through_a_broker(
    bmesh: BrokeredMesh,
) -> None:
    broker = _mesh(bmesh)
    with Client(broker.endpoint, timeout=10) as c:
        with pytest.raises(Exception, match=r"not a generator|does not produce|stream") as info:
            list(c.stream("gen.plain", 1))
        assert not isinstance(info.value, UnknownHandler)
        assert c.call("gen.plain", 4) == 4
