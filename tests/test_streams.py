"""Streams (SPEC 7.11, issue 19): generator handlers, credit, and the iterators on the
client, over direct connections.

The pure parts (the worker's `StreamGate`, the client's `StreamReader`) run in the fast
tier with a fake clock. The rest drives real worker processes serving tests/streamsvc.py
and real sockets: what the handler did on the worker is read from files it writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st
from meshkit import Mesh, WorkerProcess
from test_client_dispatch import Rig

import protocol
from client import AsyncClient, Client
from client._credit import StreamReader
from client._dispatch import Call, SendCall
from protocol import Hello, MessageType, RemoteError, Timeout, UnknownHandler, WorkerLost
from worker._streams import ENDED, PAUSED, PRODUCING, StreamGate

HERE = os.path.dirname(os.path.abspath(__file__))
SERVICE = "streamsvc:svc"
SYNC_SERVICE = "streamsvc:sync_svc"  # its plain handlers alone: inline mode at --concurrency 1
# Tests first, then what the caller had: the worker must import this checkout, not the
# editable install's.
ENV = {"PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# --- the worker's credit (fast tier) ---------------------------------------------------------


def test_a_gate_hands_out_its_window_then_pauses_until_a_grant() -> None:
    clock = FakeClock()
    gate = StreamGate(2, clock)
    assert gate.take()
    assert gate.take()
    assert gate.state is PRODUCING
    assert not gate.take()
    assert gate.state is PAUSED
    clock.now += 5
    assert not gate.take()  # still paused since the first refusal
    assert gate.grant(1)  # resumes
    assert gate.state is PRODUCING
    assert gate.paused_s == 5
    assert gate.take()
    assert not gate.take()
    assert not gate.grant(0)


def test_a_grant_while_producing_adds_up_and_resumes_nothing() -> None:
    gate = StreamGate(1, FakeClock())
    assert not gate.grant(3)
    assert [gate.take() for _ in range(5)] == [True, True, True, True, False]


def test_credit_is_taken_in_bulk_up_to_a_bound_then_the_gate_pauses() -> None:
    clock = FakeClock()
    gate = StreamGate(100, clock)
    assert [gate.take_all(64), gate.take_all(64)] == [64, 36]  # (the producer looks in between)
    assert gate.state is PRODUCING
    assert gate.take_all(64) == 0
    assert gate.state is PAUSED
    clock.now += 2.0
    assert gate.grant(5)
    assert gate.paused_s == 2.0
    assert gate.take_all(64) == 5
    gate.end()
    assert gate.take_all(64) == 0


def test_an_ended_gate_takes_no_credit() -> None:
    gate = StreamGate(4, FakeClock())
    gate.sent()
    gate.end()
    assert gate.state is ENDED
    assert not gate.take()
    assert not gate.grant(10)
    assert gate.items == 1
    with pytest.raises(ValueError, match="at least 1"):
        StreamGate(0)


# --- the client's reader (fast tier) ---------------------------------------------------------


@given(
    st.integers(min_value=1, max_value=40),
    st.lists(st.booleans(), max_size=200),
)
def test_at_most_window_items_are_ever_ahead_of_the_consumer(
    window: int, steps: list[bool]
) -> None:
    # A worker that sends whenever it holds credit, and a consumer that reads (True) or
    # does not (False); the worker's credit is what the reader granted.
    reader = StreamReader(window, None, FakeClock())
    credit = window
    for read in steps:
        if credit:  # the worker sends all it may, in one batched ITEM
            reader.push(list(range(reader.received, reader.received + credit)))
            credit = 0
        assert len(reader.items) + credit <= window
        if read and reader.items:
            assert reader.take() == reader.read - 1  # in order
            credit += reader.grant()
    # Nothing is owed beyond the window: what is unread or ungranted is all that is out.
    assert len(reader.items) + reader.ungranted + credit == window


_VALUES = st.recursive(
    st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=40,
)


@given(
    st.lists(st.one_of(_VALUES, st.just(np.arange(3)), st.binary(max_size=70_000)), max_size=40),
    st.sampled_from(list(protocol.Codec)),
)
def test_items_encoded_together_arrive_as_the_same_items_in_order(
    values: list[Any], codec: protocol.Codec
) -> None:
    # What a stream had ready at once, as a worker sends it: plain items joined into
    # batched ITEMs (up to BUNDLE_BYTES each), one with an array (out-of-band frames)
    # alone. The client must read the same items, in the same order.
    if codec is protocol.Codec.JSON:
        values = [v for v in values if not isinstance(v, bytes | np.ndarray)]
    scratch: list[Any] = []  # one list to encode with, as a worker's stream does
    encoded = [protocol.item_body(v, codec, scratch=scratch) for v in values]
    assert scratch == []
    messages = protocol.encode_items(7, encoded, codec)
    got: list[Any] = []
    for frames in messages:
        msg = protocol.decode([bytes(memoryview(f)) for f in frames])
        assert type(msg) is protocol.Item
        assert msg.id == 7
        got += msg.value if msg.batch else [msg.value]
        if msg.batch:
            assert len(frames) == 2
            assert len(frames[1]) <= protocol.BUNDLE_BYTES + 5
    assert len(got) == len(values)
    for a, b in zip(got, values, strict=True):
        if isinstance(b, np.ndarray):
            assert np.array_equal(a, b)
        else:
            assert a == b
    assert len(messages) <= max(1, len(values))


def test_a_batch_of_items_at_the_depth_limit_decodes() -> None:
    # The batch's array is not one of its items' levels (SPEC 7.11): items as deep as
    # a lone ITEM may be sent batched; one level deeper is refused, as it is alone.
    limits = protocol.DEFAULT_LIMITS
    deepest: Any = 1
    for _ in range(limits.max_depth):
        deepest = [deepest]  # max_depth levels, counting the outermost
    ok = protocol.item_body(deepest)
    (joined,) = protocol.encode_items(7, [ok, ok])
    assert protocol.decode(joined) == protocol.Item(7, [deepest, deepest], batch=True)
    (too_deep,) = protocol.encode_items(7, [protocol.item_body([deepest]), ok])
    with pytest.raises(protocol.ProtocolError, match="deeper"):
        protocol.decode(too_deep)


def test_the_reader_grants_once_half_the_window_is_read() -> None:
    reader = StreamReader(8, None, FakeClock())
    reader.push(list(range(8)))
    grants = []
    for _ in range(8):
        reader.take()
        grants.append(reader.grant())
    assert grants == [0, 0, 0, 4, 0, 0, 0, 4]
    one = StreamReader(1, None, FakeClock())
    one.push(["x"])
    one.take()
    assert one.grant() == 1


def test_item_timeout_counts_from_the_first_wait_for_each_item() -> None:
    clock = FakeClock()
    reader = StreamReader(4, 2.0, clock)
    assert reader.wait_left() == 2.0
    clock.now += 1.5
    assert reader.wait_left() == 0.5
    reader.push([1])
    reader.take()  # an item came: the next wait starts afresh
    clock.now += 10
    assert reader.wait_left() == 2.0
    clock.now += 2
    left = reader.wait_left()
    assert left is not None
    assert left <= 0
    assert "item_timeout" in str(reader.item_timeout_error("gen.count"))
    assert StreamReader(4, None, clock).wait_left() is None


# --- the client's dispatcher (fast tier) --------------------------------------------------


def _stream_rig() -> tuple[Rig, Call, list[Any]]:
    """Two workers serving A.x, only w2 streams; a stream call submitted."""
    rig = Rig("w1", "w2")
    rig.hello("w1", threads=2)
    rig.d.hello(
        rig["w2"], Hello(role="worker", services={"A": ["x"]}, capacity=2, threads=2, streams=True)
    )
    got: list[Any] = []
    call = rig.call()
    call.on_item = got.extend
    rig.d.submit(call)
    rig.take()
    return rig, call, got


def test_a_stream_call_goes_only_to_a_worker_that_streams() -> None:
    rig, call, got = _stream_rig()
    assert call.peer is rig["w2"]
    rig.d.item(rig["w2"], call.id, ["a"])
    rig.d.item(rig["w1"], call.id, ["stale"])  # not from the peer holding it: ignored
    rig.d.grant(call.id, 3)
    assert [type(c).__name__ for c in rig.take()] == ["SendCredit"]
    rig.d.end(rig["w2"], call.id, 1)
    assert got == ["a"]
    assert rig.outcomes.value(call.id) == 1
    rig.d.grant(call.id, 3)  # ended: nothing to tell
    assert rig.take() == []


def test_a_stream_lost_after_items_fails_with_the_count_and_is_not_re_sent() -> None:
    rig, call, got = _stream_rig()
    for i in range(3):
        rig.d.item(rig["w2"], call.id, [i])
    rig.d.dropped(rig["w2"])
    exc = rig.outcomes.error(call.id)
    assert isinstance(exc, WorkerLost)
    assert exc.items == 3
    assert "after 3 stream item(s)" in str(exc)
    # Before its first item, a lost stream is re-sent like any call.
    rig.d.hello(
        rig["w2"], Hello(role="worker", services={"A": ["x"]}, capacity=2, threads=2, streams=True)
    )
    again = rig.call()
    again.on_item = got.extend
    rig.d.submit(again)
    rig.take()
    rig.d.dropped(rig["w2"])  # w2 back (streaming) and lost again, with no item sent
    assert again.id not in rig.outcomes.done
    assert again.peer is None  # queued again, waiting for a worker that streams


def test_a_stream_no_streaming_worker_serves_fails_saying_so() -> None:
    rig = Rig("w1")
    rig.hello("w1", threads=2)
    call = rig.call()
    call.on_item = print
    rig.d.submit(call)
    exc = rig.outcomes.error(call.id)
    assert isinstance(exc, UnknownHandler)
    assert "can stream" in str(exc)
    assert "w1" in str(exc)
    assert not [c for c in rig.take() if type(c) is SendCall]  # nothing was sent to it


# --- real workers --------------------------------------------------------------------------


def _start(mesh: Mesh, *args: str) -> WorkerProcess:
    return mesh.start(*args, service=SERVICE, env=ENV)


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 15) -> Any:
    """Poll ``check()`` until it returns something truthy (a file a worker writes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.01)
    pytest.fail(f"{what}: not within {timeout} s")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


@pytest.fixture(params=["inline", "threads"])
def worker(request: pytest.FixtureRequest, mesh: Mesh) -> WorkerProcess:
    """A worker serving streamsvc: in inline mode (its plain handlers alone, one slot:
    streams run on its loop), or with handler threads (and its async handlers)."""
    if request.param == "inline":
        return mesh.start("--concurrency", "1", service=SYNC_SERVICE, env=ENV)
    return _start(mesh, "--concurrency", "3")


def _has_async(worker: WorkerProcess) -> bool:
    return SERVICE in worker.args


@pytest.mark.process
def test_sync_and_async_generators_stream_their_items_in_order(worker: WorkerProcess) -> None:
    with Client(worker.endpoint, timeout=20) as c:
        assert list(c.stream("gen.count", 50, start=3)) == list(range(3, 53))
        assert list(c.options(window=1).stream("gen.count", 7)) == list(range(7))
        assert list(c.options(codec="json").stream("gen.count", 3)) == [0, 1, 2]
        assert list(c.stream("gen.count", 0)) == []
        # Called plainly, a generator handler answers the list of all its items.
        assert c.call("gen.count", 4) == [0, 1, 2, 3]
        if _has_async(worker):
            assert list(c.options(window=1).stream("gen.acount", 7)) == list(range(7))
            assert c.call("gen.acount", 3) == [0, 1, 2]


@pytest.mark.process
def test_numpy_arrays_travel_in_items(worker: WorkerProcess) -> None:
    with Client(worker.endpoint, timeout=20) as c:
        got = list(c.options(window=2).stream("gen.arrays", 5, 20_000))
    assert len(got) == 5
    for i, arr in enumerate(got):
        assert isinstance(arr, np.ndarray)
        assert arr.shape == (20_000,)
        assert (arr == i).all()


@pytest.mark.process
def test_an_error_mid_stream_is_raised_after_the_items_before_it(worker: WorkerProcess) -> None:
    with Client(worker.endpoint, timeout=20) as c:
        got: list[int] = []
        with pytest.raises(RemoteError, match="failed after 3 items") as info:
            _drain(c.stream("gen.fails_after", 3), got)
        assert got == [0, 1, 2]
        assert info.value.remote_type == "ValueError"
        # A stream request to a handler that does not yield is refused, nothing ran.
        with pytest.raises(protocol.BadArguments, match="does not stream"):
            list(c.stream("gen.plain", 1))
        assert list(c.stream("gen.count", 2)) == [0, 1]  # the worker serves on


@pytest.mark.process
def test_leaving_the_loop_early_cancels_the_handler(worker: WorkerProcess, tmp_path: Path) -> None:
    handlers = ["gen.watched", "gen.awatched"] if _has_async(worker) else ["gen.watched"]
    with Client(worker.endpoint, timeout=20) as c:
        for handler in handlers:
            for item in c.options(window=4).stream(handler, 1_000_000, str(tmp_path)):
                if item == 5:
                    break  # the iterator is dropped here: that cancels the stream
            closed = _wait_for("the generator's finally", lambda: _read(tmp_path / "closed"))
            produced, cancelled = closed.split()
            assert cancelled == "cancelled=True"
            assert 6 <= int(produced) <= 6 + 4  # what was read, and at most a window more
            # The slot is free again: in inline mode the stream held the only one.
            assert list(c.stream("gen.count", 2)) == [0, 1]
            (tmp_path / "closed").unlink()
            s = c.stream(handler, 1_000_000, str(tmp_path))
            assert next(s) == 0
            s.close()
            assert "cancelled=True" in _wait_for("closed", lambda: _read(tmp_path / "closed"))
            (tmp_path / "closed").unlink()


@pytest.mark.process
def test_a_slow_consumer_leaves_the_handler_paused_a_window_ahead(
    mesh: Mesh, tmp_path: Path
) -> None:
    w = _start(mesh, "--concurrency", "2")
    window = 4
    produced = tmp_path / "produced"
    with Client(w.endpoint, timeout=30) as c:
        stream = c.options(window=window).stream("gen.watched", 100_000, str(tmp_path))
        for read in range(1, 6):
            next(stream)
            # The handler runs as far as its credit goes: the window, and what the
            # consumer gave back (half a window at a time), and stops there.
            ahead = str(window + read - read % (window // 2))
            _wait_for("the handler to fill the window", lambda a=ahead: _read(produced) == a)
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:
                assert int(_read(produced)) <= read + window
                time.sleep(0.02)
        stream.close()


def _drain(stream: Any, got: list[Any], after_each: Callable[[], Any] | None = None) -> None:
    for item in stream:
        got.append(item)
        if after_each is not None:
            after_each()


async def _adrain(stream: Any, got: list[Any]) -> None:
    async for item in stream:
        got.append(item)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.process
def test_the_workers_memory_stays_flat_under_a_large_slow_stream(mesh: Mesh) -> None:
    # 100,000 items of 64 KiB (6.1 GiB through) read by a consumer slower than the
    # handler: with credit, what waits anywhere is a window of items, not the stream.
    w = _start(mesh, "--concurrency", "2")
    n, size = 100_000, 64 * 1024
    with Client(w.endpoint, timeout=240) as c:
        stream = c.options(window=4).stream("gen.blobs", n, size)
        total = 0
        for i, blob in enumerate(stream):
            if i == 500:
                before = _rss(w.pid)
            total += len(blob)
            if i % 50 == 0:
                time.sleep(0.001)  # a consumer with work of its own
        after = _rss(w.pid)
    assert total == n * size
    assert after - before < 32 * 1024 * 1024, (before, after)


@pytest.mark.process
@pytest.mark.parametrize("service", [SYNC_SERVICE, SERVICE])
def test_a_client_that_grants_without_reading_cannot_fill_the_worker(
    mesh: Mesh, tmp_path: Path, service: str
) -> None:
    # A hostile client asks for a window of a billion 64 KiB items and never reads: the
    # stream stops once its answers pile up past --max-peer-output (1 MiB here), as the
    # worker stops taking requests from a client that does not read. Inline mode
    # (SYNC_SERVICE at --concurrency 1) and a handler thread.
    from hostilekit import raw_dealer

    concurrency = "1" if service == SYNC_SERVICE else "2"
    args = ("--concurrency", concurrency, "--max-peer-output", "1")  # (MB)
    w = mesh.start(*args, service=service, env=ENV)
    produced = tmp_path / "produced"

    def count() -> int:
        return int(_wait_for("a count", lambda: _read(produced)))

    with raw_dealer(w.endpoint) as sock:
        request = protocol.Request(5, "gen.watched", [10**9, str(tmp_path), 65_536], window=10**9)
        sock.send_multipart(protocol.encode(request))
        _wait_for("items", lambda: _read(produced))

        ping = protocol.encode(protocol.Ping(1))

        def read_slowly(seconds: float) -> int:
            """Read a message and send a PING every 50 ms (the connection lives: ZeroMQ
            drops a peer it hears nothing from); the count after."""
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if sock.poll(50):
                    sock.recv_multipart()
                sock.send_multipart(ping)
                time.sleep(0.05)
            return count()

        before, now = 0, read_slowly(1.0)
        for _ in range(10):  # the queues fill up; then it makes what is read
            if now - before < 500:
                break
            before, now = now, read_slowly(1.0)
        before, before_rss = now, _rss(w.pid)
        after = read_slowly(3.0)
        # Made while the client read ~60 messages (a batched ITEM holds up to four of
        # these items): what it read, give or take; not what a billion credits allow
        # (without the check, thousands a second and 100 MB/s more of RSS).
        assert after - before < 2_000, (before, after)
        assert _rss(w.pid) - before_rss < 64 * 1024 * 1024
        with Client(w.endpoint, timeout=10) as c:  # the worker serves others meanwhile
            if concurrency == "2":
                assert c.call("gen.count", 2) == [0, 1]
    closed = _wait_for("the stream's cancel (its client left)", lambda: _read(tmp_path / "closed"))
    assert closed.endswith("cancelled=True")


@pytest.mark.process
def test_a_worker_killed_mid_stream_raises_worker_lost_with_the_count(mesh: Mesh) -> None:
    w = _start(mesh, "--concurrency", "2")
    with Client(w.endpoint, timeout=30, retries=2) as c:
        got = []
        stream = c.options(window=4).stream("gen.count", 10_000_000)
        with pytest.raises(WorkerLost) as info:
            _drain(stream, got, lambda: len(got) == 10 and w.signal(signal.SIGKILL))
        assert info.value.items == len(got) >= 10
        assert got == list(range(len(got)))
        assert "not re-sent" in str(info.value)


CONSUMER = """
import sys
from client import Client
c = Client(sys.argv[1], timeout=60)
s = c.options(window=4).stream("gen.watched", 1_000_000, sys.argv[2])
for _ in range(3):
    next(s)
print("reading", flush=True)
sys.stdin.read()  # stays until killed, holding the stream open and unread
"""


@contextlib.contextmanager
def consumer_killed_mid_stream(endpoint: str, where: Path) -> Iterator[None]:
    """A consumer process reads 3 items of ``gen.watched`` (window 4) from ``endpoint``
    and stops reading; once its handler paused, kill -9 it, then run the block."""
    consumer = subprocess.Popen(
        [sys.executable, "-c", CONSUMER, endpoint, str(where)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, **ENV},
        start_new_session=True,
    )
    try:
        assert consumer.stdout is not None
        assert consumer.stdout.readline().strip() == b"reading"
        _wait_for("the handler to pause", lambda: _read(where / "produced") == "6")
        assert not (where / "closed").exists()
        os.killpg(consumer.pid, signal.SIGKILL)
        consumer.wait(10)
        yield
    finally:
        if consumer.poll() is None:
            os.killpg(consumer.pid, signal.SIGKILL)
            consumer.wait(10)
        for pipe in (consumer.stdin, consumer.stdout):
            if pipe is not None:
                pipe.close()


@pytest.mark.process
def test_a_consumer_killed_mid_stream_cancels_the_handler(mesh: Mesh, tmp_path: Path) -> None:
    w = _start(mesh, "--concurrency", "2")
    with consumer_killed_mid_stream(w.endpoint, tmp_path):
        # Within the liveness window (3 heartbeats of 1 s), and some slack for the probe.
        closed = _wait_for("the stream's cancel", lambda: _read(tmp_path / "closed"), 10)
        assert closed == "6 cancelled=True"  # a window (4) + what 2 reads gave back
    with Client(w.endpoint, timeout=10) as c:  # its slot is free again
        assert list(c.stream("gen.count", 2)) == [0, 1]


@pytest.mark.process
def test_async_client_streams_and_cancels(mesh: Mesh, tmp_path: Path) -> None:
    w = _start(mesh, "--concurrency", "2")

    async def main() -> None:
        async with AsyncClient(w.endpoint, timeout=20) as ac:
            assert [x async for x in ac.stream("gen.count", 30)] == list(range(30))
            assert [x async for x in ac.options(window=1).stream("gen.acount", 4)] == [0, 1, 2, 3]
            got = []
            with pytest.raises(RemoteError, match="failed after 2"):
                await _adrain(ac.stream("gen.fails_after", 2), got)
            assert got == [0, 1]
            stream = ac.options(window=2).stream("gen.awatched", 1_000_000, str(tmp_path))
            async for x in stream:
                if x == 3:
                    break
            await stream.aclose()
            assert await ac.call("gen.count", 2) == [0, 1]

    asyncio.run(main())
    closed = _wait_for("the generator's finally", lambda: _read(tmp_path / "closed"))
    assert closed.endswith("cancelled=True")


@pytest.mark.process
def test_item_timeout_cancels_a_stream_that_stalls(mesh: Mesh, tmp_path: Path) -> None:
    w = _start(mesh, "--concurrency", "2")
    with Client(w.endpoint, timeout=30) as c:
        stream = c.options(item_timeout=0.3).stream("gen.watched", 3, str(tmp_path), 0, 30.0)
        with pytest.raises(Timeout, match=r"no stream item within 0\.3 s"):
            next(stream)
    closed = _wait_for("the cancel", lambda: _read(tmp_path / "closed"))
    assert "cancelled=True" in closed


@pytest.mark.process
def test_items_ready_at_once_travel_batched_and_bundled_only_for_who_takes_it(
    mesh: Mesh,
) -> None:
    from hostilekit import raw_dealer

    w = _start(mesh, "--concurrency", "2")
    n = 3000
    for takes in (True, False):
        with raw_dealer(w.endpoint, rcvhwm=0) as sock:
            sock.send_multipart(protocol.encode(Hello(1, bundle=takes)))
            assert sock.poll(10_000)
            protocol.decode(sock.recv_multipart())
            sock.send_multipart(
                protocol.encode(protocol.Request(2, "gen.count", [n], window=n + 1))
            )
            # window n + 1: the handler learns it is done by being resumed, which takes a
            # credit too (SPEC 7.11), and this client grants none.
            items: list[int] = []
            bundles = batches = 0
            end = None
            while end is None:
                assert sock.poll(10_000), f"{len(items)} items, then silence"
                msg = protocol.decode(sock.recv_multipart())
                inner = [msg]
                if type(msg) is protocol.Bundle:
                    bundles += 1
                    inner = [protocol.decode(list(m)) for m in msg.messages]
                for m in inner:
                    if type(m) is protocol.Item and m.batch:
                        batches += 1
                        items.extend(m.value)
                    elif type(m) is protocol.Item:
                        items.append(m.value)
                    elif type(m) is protocol.End:
                        end = m
        assert items == list(range(n))
        assert end.items == n
        assert batches, f"{n} small items ready fast, and not one batched ITEM"
        if not takes:
            assert not bundles, "a BUNDLE to a client whose HELLO did not ask for them"


@pytest.mark.process
def test_an_item_goes_out_while_the_handler_works_on_the_next(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    # The handler blocks after its first item until the test has read that item: were
    # the item held until the next one is made (inline mode runs the generator on the
    # loop), this would time out.
    with Client(worker.endpoint, timeout=20) as c:
        stream = c.options(window=4).stream("gen.handshake", str(tmp_path))
        assert next(stream) == 1
        (tmp_path / "go").touch()
        assert list(stream) == [2]


@pytest.mark.process
@pytest.mark.parametrize("service", [SYNC_SERVICE, SERVICE])
def test_a_drain_that_runs_out_of_time_closes_a_paused_stream(
    mesh: Mesh, tmp_path: Path, service: str
) -> None:
    # SYNC_SERVICE at --concurrency 1: inline mode, the stream runs on the loop.
    concurrency = "1" if service == SYNC_SERVICE else "2"
    w = mesh.start("--concurrency", concurrency, "--drain-timeout", "0.5", service=service, env=ENV)
    with Client(w.endpoint, timeout=30) as c:
        stream = c.options(window=2).stream("gen.watched", 1_000_000, str(tmp_path))
        got = [next(stream)]  # and one credit back: three items in all, then it pauses
        _wait_for("the handler to pause", lambda: _read(tmp_path / "produced") == "3")
        w.signal(signal.SIGTERM)  # the stream holds its slot; the drain gives up on it
        assert w.wait(20) == 3  # EXIT_DRAIN_TIMEOUT: work abandoned
        with pytest.raises(WorkerLost) as info:
            _drain(stream, got)
    assert info.value.items == len(got) == 3
    assert _read(tmp_path / "closed") == "3 cancelled=True"  # its finally ran


# --- a worker of revision 1.1 --------------------------------------------------------------


def _old_worker(router: zmq.Socket[bytes], stop: threading.Event, seen: list[MessageType]) -> None:
    """Answer HELLO and PING as a 1.1 worker serving gen.count (no `streams` key), and
    note the type of everything that comes."""
    hello = {
        "role": "worker",
        "name": "old",
        "version": "0.0.9",
        "services": {"gen": ["count"]},
        "capacity": 4,
        "heartbeat_ms": 1000,
        "protocol": "1.1",
        "threads": 4,
    }
    while not stop.is_set():
        if not router.poll(50):
            continue
        peer, header, *_ = router.recv_multipart()
        kind = protocol.header_type(header)
        assert kind is not None
        seen.append(kind)
        rid = int.from_bytes(header[6:14], "big")
        if kind is MessageType.HELLO:
            head = protocol.encode(Hello(rid))[0]
            router.send_multipart([peer, head, protocol.encode(protocol.Reply(0, hello))[1]])
        elif kind is MessageType.PING:
            router.send_multipart([peer, *protocol.encode(protocol.Pong(rid))])


@pytest.mark.process
def test_a_stream_to_a_worker_that_cannot_stream_fails_clearly() -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()
    seen: list[MessageType] = []
    serving = threading.Thread(target=_old_worker, args=(router, stop, seen), daemon=True)
    serving.start()
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout=10) as c:
            with pytest.raises(UnknownHandler, match="can stream") as info:
                list(c.stream("gen.count", 3))
            assert "protocol 1.1" in str(info.value)
            assert "call()" in str(info.value)
    finally:
        stop.set()
        serving.join(5)
        router.close()
        ctx.term()
    assert MessageType.HELLO in seen
    assert MessageType.REQUEST not in seen
    assert MessageType.CREDIT not in seen
