"""The brokered mesh end to end: real broker and worker processes, real signals."""

from __future__ import annotations

import concurrent.futures as cf
import signal
import threading
import time
from collections import Counter

import numpy as np
import pytest
import zmq
from brokerkit import SERVICE_B, BrokeredMesh, status, wait_for, workers_ready

import protocol
from client import Client, Overloaded, Timeout, UnknownHandler, WorkerLost
from protocol import Error, ErrorCode, Hello, Reply, Request
from zeromesh._cli import main as zeromesh

pytestmark = pytest.mark.process


def held_by(st: dict, pid: int | None = None) -> list[dict]:
    """The workers of a status that hold requests (only the one with ``pid``, if given)."""
    return [w for w in st["workers"] if w["in_flight"] and pid in (None, w["pid"])]


def test_routes_by_service_and_status_shows_it(
    bmesh: BrokeredMesh, capsys: pytest.CaptureFixture[str]
) -> None:
    b = bmesh.broker()
    a1, a2 = bmesh.worker(b), bmesh.worker(b)
    t1 = bmesh.worker(b, service=SERVICE_B)
    wait_for(b, workers_ready(3), bmesh, what="3 workers")
    with Client([b.endpoint], timeout=20) as c:
        assert c.call("bk.echo", [1, "x"]) == [1, "x"]
        pids = Counter(f.result() for f in [c.submit("bk.pid") for _ in range(200)])
        assert set(pids) == {a1.pid, a2.pid}  # both workers of bk, never the t worker
        assert {c.call("t.delay") for _ in range(20)} == {t1.pid}
        with pytest.raises(UnknownHandler, match=r"bk\.nope"):
            c.call("bk.nope")
        assert list(c.map("bk.echo", range(500))) == list(range(500))
        (row,) = c.workers()
        assert row["role"] == "broker"
        assert set(row["services"]) == {"bk", "t"}
    st = status(b)
    assert st["totals"]["workers"] == 3
    assert st["totals"]["in_flight"] == st["totals"]["queued"] == 0
    assert {w["pid"] for w in st["workers"]} == {a1.pid, a2.pid, t1.pid}
    assert st["totals"]["unknown"] == 1
    served = {w["pid"]: w["served"] for w in st["workers"]}
    assert served[t1.pid] == 20

    assert zeromesh(["status", "--connect", b.endpoint]) == 0
    out = capsys.readouterr().out
    assert f"at {b.endpoint}  READY" in out
    assert "workers: 3" in out
    for w in (a1, a2, t1):
        assert f"  {w.pid}  ready  " in out
    assert "queues: empty" in out
    assert "totals: workers=3 " in out
    assert zeromesh(["status", "--connect", b.endpoint, "--json"]) == 0
    assert '"in_flight"' in capsys.readouterr().out


def test_clients_may_come_first_and_cancel_what_waits(bmesh: BrokeredMesh) -> None:
    b = bmesh.broker()
    with Client([b.endpoint], timeout=30) as c:
        (row,) = c.workers()
        assert row["capacity"] == 0  # nobody behind it yet: the client holds its calls
        early = c.submit("bk.pid")
        w = bmesh.worker(b)
        assert early.result() == w.pid  # the broker told the client when a worker came
        busy = c.submit("bk.sleep_pid", 1.0)
        wait_for(b, lambda st: st["totals"]["in_flight"] == 1, bmesh)
        waiting = c.submit("bk.pid")
        wait_for(b, lambda st: st["totals"]["queued"] == 1, bmesh)
        assert waiting.cancel()
        wait_for(b, lambda st: st["totals"]["queued"] == 0, bmesh, what="cancel")
        arr = np.arange(300_000, dtype=np.float64).reshape(1000, 300)  # out-of-band frames
        np.testing.assert_array_equal(c.call("bk.echo", {"a": arr})["a"], arr)
        assert busy.result() == w.pid
    st = status(b)
    assert st["totals"]["cancelled"] == 1
    assert st["workers"][0]["served"] == 3  # the cancelled call never reached it


def test_killed_worker_requests_are_requeued_and_answered(bmesh: BrokeredMesh) -> None:
    b = bmesh.broker()
    w1, w2 = bmesh.worker(b), bmesh.worker(b)
    wait_for(b, workers_ready(2), bmesh)
    with Client([b.endpoint], timeout=30, retries=0) as c:  # the broker re-sends, not us
        futs = [c.submit("bk.sleep_pid", 1.0) for _ in range(2)]
        st = wait_for(b, lambda st: len(held_by(st)) == 2, bmesh, what="both busy")
        victim = w1 if held_by(st, w1.pid) else w2
        survivor = w2 if victim is w1 else w1
        victim.signal(signal.SIGKILL)
        assert [f.result() for f in futs] == [survivor.pid, survivor.pid]
    st = status(b)
    assert st["totals"]["requeued"] == 1
    assert st["totals"]["workers_expired"] == 1
    assert [w["pid"] for w in st["workers"]] == [survivor.pid]


def test_stopped_worker_expires_and_its_late_reply_is_dropped(bmesh: BrokeredMesh) -> None:
    b = bmesh.broker()
    w1, w2 = bmesh.worker(b), bmesh.worker(b)
    wait_for(b, workers_ready(2), bmesh)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)  # a bare client: it sees every message the broker sends
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(b.endpoint)
        sock.send_multipart(protocol.encode(Request(7, "bk.sleep_pid", [1.0], ttl_ms=30_000)))
        st = wait_for(b, lambda st: len(held_by(st)) == 1, bmesh, what="one busy")
        frozen = w1 if held_by(st, w1.pid) else w2
        other = w2 if frozen is w1 else w1
        frozen.signal(signal.SIGSTOP)
        answers = []
        while not answers:  # the broker expires it, re-sends, the other one answers
            assert sock.poll(20_000), "no answer"
            msg = protocol.decode(sock.recv_multipart())
            if msg.id == 7:
                answers.append(msg)
        assert isinstance(answers[0], Reply)
        assert answers[0].result == other.pid
        frozen.signal(signal.SIGCONT)  # it finishes and replies: too late, dropped
        wait_for(b, lambda st: st["totals"]["late_replies"] >= 1, bmesh, what="late reply")
        # ...and it registers again, and serves.
        wait_for(b, workers_ready(2), bmesh, what="frozen worker back")
        while sock.poll(300):
            msg = protocol.decode(sock.recv_multipart())
            assert msg.id != 7, f"a second answer for one request: {msg}"
    finally:
        sock.close(linger=0)
        ctx.term()
    st = status(b)
    assert st["totals"]["workers_expired"] == 1
    assert st["totals"]["requeued"] == 1
    assert st["totals"]["answered"] == 1


def test_full_queue_answers_overloaded_at_once(bmesh: BrokeredMesh) -> None:
    b = bmesh.broker("--max-queue", "2")
    bmesh.worker(b)
    wait_for(b, workers_ready(1), bmesh)
    with Client([b.endpoint], timeout=30, retries=0) as c:
        slow = c.submit("bk.sleep_pid", 2.0)
        wait_for(b, lambda st: st["totals"]["in_flight"] == 1, bmesh)
        quick = [c.submit("bk.echo", i) for i in range(6)]
        refused: list[cf.Future] = []
        while len(refused) < 4 and not slow.done():
            refused = [f for f in quick if f.done() and isinstance(f.exception(), Overloaded)]
            time.sleep(0.01)
        assert len(refused) == 4
        assert not slow.done()  # refused while the queue was full, at once
        assert [f.result() for f in quick if f not in refused] == [0, 1]
        assert slow.result() > 0
    assert status(b)["totals"]["overloaded"] == 4


def test_two_brokers_kill_one_under_load_loses_nothing(bmesh: BrokeredMesh) -> None:
    b1, b2 = bmesh.broker(), bmesh.broker()
    for _ in range(2):
        bmesh.worker(b1, b2, args=("--broker-prefetch", "4"))
    for b in (b1, b2):
        wait_for(b, workers_ready(2), bmesh)
    n = 3000
    with Client([b1.endpoint, b2.endpoint], timeout=30) as c:
        assert [r["state"] for r in c.workers()] == ["ready", "ready"]
        results: list = []
        errors: list = []

        def load() -> None:
            try:
                results.extend(c.map("bk.echo", range(n), chunksize=1))
            except Exception as exc:
                errors.append(exc)

        t = threading.Thread(target=load)
        t.start()
        wait_for(b1, lambda st: st["totals"]["answered"] > 200, bmesh, what="load on b1")
        b1.signal(signal.SIGKILL)
        t.join(60)
        assert not t.is_alive()
        assert errors == []
        assert results == list(range(n))  # every call answered, once, in order
    assert status(b2)["totals"]["answered"] > 0


def test_workers_and_clients_come_back_to_a_restarted_broker(bmesh: BrokeredMesh) -> None:
    b = bmesh.broker(endpoint=f"ipc://{bmesh.tmp}/b.sock")  # ipc, and the path is reused
    w = bmesh.worker(b)
    wait_for(b, workers_ready(1), bmesh)
    with Client([b.endpoint], timeout=30) as c:
        assert c.call("bk.pid") == w.pid
        b.signal(signal.SIGKILL)
        b.wait()
        pending = c.submit("bk.pid")  # held by the client until a broker answers again
        b2 = bmesh.broker(endpoint=b.endpoint)
        assert pending.result() == w.pid
        st = wait_for(b2, workers_ready(1), bmesh)
        assert st["workers"][0]["pid"] == w.pid


def test_poison_request_is_answered_worker_lost(bmesh: BrokeredMesh) -> None:
    b = bmesh.broker("--max-deliveries", "2")
    bmesh.worker(b), bmesh.worker(b)
    wait_for(b, workers_ready(2), bmesh)
    with (
        Client([b.endpoint], timeout=30, retries=0) as c,
        pytest.raises(WorkerLost, match="handed to 2 workers"),
    ):
        c.call("bk.die")
    st = status(b)
    assert st["totals"]["worker_lost"] == 1
    assert st["totals"]["workers"] == 0


def test_draining_worker_finishes_its_work_and_gets_no_more(bmesh: BrokeredMesh) -> None:
    b = bmesh.broker()
    w1, w2 = bmesh.worker(b), bmesh.worker(b)
    wait_for(b, workers_ready(2), bmesh)
    with Client([b.endpoint], timeout=30, retries=0) as c:
        first = [c.submit("bk.sleep_pid", 2.0) for _ in range(2)]
        wait_for(b, lambda st: len(held_by(st)) == 2, bmesh)
        w1.signal(signal.SIGTERM)
        wait_for(
            b,
            lambda st: not any(w["pid"] == w1.pid and w["state"] == "ready" for w in st["workers"]),
            bmesh,
            what="w1 draining",
        )
        later = [c.submit("bk.pid") for _ in range(20)]
        assert sorted(f.result() for f in first) == sorted([w1.pid, w2.pid])  # replies pass
        assert {f.result() for f in later} == {w2.pid}
    assert w1.wait(10) == 0
    wait_for(b, lambda st: [w["pid"] for w in st["workers"]] == [w2.pid], bmesh)


def test_hard_timeout_through_a_broker(bmesh: BrokeredMesh) -> None:
    b = bmesh.broker()
    w = bmesh.worker(b, args=("--hard-timeout", "0.5"))  # inline mode: the watchdog acts
    wait_for(b, workers_ready(1), bmesh)
    with (
        Client([b.endpoint], timeout=30, retries=0) as c,
        pytest.raises(Timeout, match="hard timeout"),
    ):
        c.call("bk.sleep_pid", 5.0)
    assert w.wait(10) == 70
    st = wait_for(b, lambda st: not st["workers"], bmesh, what="worker gone")
    assert st["totals"]["workers_expired"] == 0  # it said goodbye, it was not expired


def test_broker_drains_on_sigterm_and_clients_fail_over(bmesh: BrokeredMesh) -> None:
    b1, b2 = bmesh.broker(), bmesh.broker()
    bmesh.worker(b1, b2)
    for b in (b1, b2):
        wait_for(b, workers_ready(1), bmesh)
    with Client([b1.endpoint, b2.endpoint], timeout=30, retries=0) as c:
        assert [r["state"] for r in c.workers()] == ["ready", "ready"]  # both take work
        futs = [c.submit("bk.sleep_pid", 0.05) for _ in range(40)]
        wait_for(b1, lambda st: st["totals"]["queued"] > 0, bmesh, what="a queue at b1")
        b1.signal(signal.SIGTERM)
        assert b1.wait(15) == 0
        assert len({f.result() for f in futs}) == 1  # all answered: handed back, re-sent
    assert "draining (SIGTERM)" in b1.output()


def test_worker_serves_a_broker_and_direct_clients_at_once(
    bmesh: BrokeredMesh, capsys: pytest.CaptureFixture[str]
) -> None:
    from meshkit import free_port

    b = bmesh.broker()
    direct = f"tcp://127.0.0.1:{free_port()}"
    w = bmesh.worker(b, args=("--bind", direct))
    wait_for(b, workers_ready(1), bmesh)
    with Client([direct], timeout=20) as c1, Client([b.endpoint], timeout=20) as c2:
        f1 = [c1.submit("bk.pid") for _ in range(100)]
        f2 = [c2.submit("bk.pid") for _ in range(100)]
        assert {f.result() for f in f1 + f2} == {w.pid}
    assert zeromesh(["status", "--connect", f"{direct},{b.endpoint}"]) == 1
    out = capsys.readouterr().out
    assert f"{direct}  UNAVAILABLE: it answered" in out
    assert "not a broker" in out
    assert f"at {b.endpoint}  READY" in out


def test_garbage_does_not_hurt_the_broker(bmesh: BrokeredMesh) -> None:
    b = bmesh.broker()
    bmesh.worker(b)
    wait_for(b, workers_ready(1), bmesh)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    good_header = protocol.encode(Request(5, "bk.echo", [1]))[0]
    try:
        sock.connect(b.endpoint)
        answered = [
            [b"junk"],
            [b"ZM" + b"\x00" * 30, b""],
            [b"\x00" * 20, b"", b""],
            [good_header, b"\xc1"],  # a valid header, a body msgpack refuses
            [bytes(good_header[:2]) + b"\x09" + bytes(good_header[3:]), b""],  # version 9
        ]
        for frames in answered:
            sock.send_multipart(frames)
            assert sock.poll(5000), f"no answer to {frames!r}"
            msg = protocol.decode(sock.recv_multipart())
            assert isinstance(msg, Error), frames
            assert msg.code in (ErrorCode.PROTOCOL, ErrorCode.UNSUPPORTED_VERSION), msg
        # Silently counted: what has no one to answer, or is itself an answer.
        for frames in (
            [b"", b"junk"],  # a "worker" envelope with garbage in it
            [b"", *protocol.encode(Hello(1, role="client"))],  # a client posing as a worker
            protocol.encode(Error(0, 1, "an answer")),
            [b"\x00\x01\x02\x03\x04", *protocol.encode(Reply(3, "late"))],  # a stranger's reply
        ):
            sock.send_multipart(frames)
        while sock.poll(500):
            sock.recv_multipart()
    finally:
        sock.close(linger=0)
        ctx.term()
    with Client([b.endpoint], timeout=20) as c:
        assert c.call("bk.echo", "still fine") == "still fine"
    st = status(b)
    assert st["broker"]["protocol_errors"] >= 6
    assert st["totals"]["workers"] == 1
    assert b.proc.poll() is None


def test_broker_cli_rejects_bad_endpoint(bmesh: BrokeredMesh) -> None:
    p = bmesh.broker(endpoint="udp://nowhere")
    assert p.wait(20) == 2
    assert "cannot bind 'udp://nowhere'" in p.output()
    time.sleep(0)
