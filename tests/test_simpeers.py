"""The scale bench's simulated peers against real sockets, in one process.

Each test plays the other side of the session by hand (a ROUTER as the broker or the
worker, a DEALER as the client) with `protocol`'s own messages, and drives the
simulated peers' loop with `step`: what they answer, and that they count a protocol
mistake for what SPEC forbids, which is what makes the bench fail loudly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

import protocol
from protocol import Error, ErrorCode, Hello, Ping, Pong, Ready, Reply, Request
from zeromesh._bench.scale import ScaleSizes, raise_fd_limit, summary
from zeromesh._bench.simpeers import READY, SimClients, SimEndpoints, SimPeers, SimWorkers


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    c: zmq.Context[Any] = zmq.Context()
    yield c
    c.destroy(linger=0)


def _router(ctx: zmq.Context[Any]) -> tuple[zmq.Socket[Any], str]:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return sock, f"tcp://127.0.0.1:{port}"


def _recv(sim: SimPeers, sock: zmq.Socket[Any], timeout: float = 5.0) -> list[bytes]:
    """Step ``sim`` until ``sock`` has a message; return its frames."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sim.step(0.01)
        if sock.poll(10):
            return sock.recv_multipart()
    raise AssertionError("nothing arrived")


def _next(
    sim: SimPeers, sock: zmq.Socket[Any], kind: type, envelope: int
) -> tuple[list[bytes], Any]:
    """The next message of type ``kind`` (after ``envelope`` frames), skipping the
    greetings and heartbeats in between; returns (envelope, message)."""
    while True:
        frames = _recv(sim, sock)
        msg = protocol.decode(frames[envelope:])
        if isinstance(msg, kind):
            return frames[:envelope], msg
        assert isinstance(msg, Hello | Ping), msg


def _until(sim: SimPeers, done: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the simulated peers never got there"
        sim.step(0.01)


def _no_mistakes(sim: SimPeers) -> None:
    assert sum(sim.mistakes.values()) == 0, sim.examples


# --- simulated workers, the test as their broker ---------------------------------------------


@pytest.fixture
def workers(ctx: zmq.Context[Any]) -> Iterator[tuple[SimWorkers, zmq.Socket[Any]]]:
    broker, endpoint = _router(ctx)
    sim = SimWorkers(endpoint, 1, credit=2, heartbeat_ms=100)
    yield sim, broker
    sim.close()


def _register(sim: SimWorkers, broker: zmq.Socket[Any]) -> bytes:
    """Answer the worker's HELLO; return its routing id once it granted its credit."""
    (wid, empty), hello = _next(sim, broker, Hello, 2)
    assert empty == b""
    assert hello.role == "worker"
    assert hello.services == {"bench": ["echo"]}
    assert hello.capacity == 2
    assert hello.heartbeat_ms == 100
    broker.send_multipart([wid, b"", *protocol.encode(Hello(hello.id, role="broker"))])
    envelope, ready = _next(sim, broker, Ready, 2)
    assert envelope == [wid, b""]
    assert ready.credit == 2
    return wid


def test_a_worker_registers_pings_and_echoes(workers) -> None:
    sim, broker = workers
    wid = _register(sim, broker)
    client = b"\x00client"
    request = Request(7, "bench.echo", ["hi"], ttl_ms=1000)
    broker.send_multipart([wid, client, *protocol.encode(request)])
    envelope, reply = _next(sim, broker, Reply, 2)
    assert envelope == [wid, client]
    assert reply == Reply(7, "hi")
    envelope, ready = _next(sim, broker, Ready, 2)
    assert (envelope, ready) == ([wid, b""], Ready(0, 1))  # the credit it used, given back

    # Heartbeats: a PING in the empty envelope, answered by the broker.
    envelope, ping = _next(sim, broker, Ping, 2)
    assert envelope == [wid, b""]
    broker.send_multipart([wid, b"", *protocol.encode(Pong(ping.id))])
    _until(sim, lambda: sim.counts["pongs"] == 1)
    assert sim.stats()["ready"] == 1
    _no_mistakes(sim)


def test_a_worker_told_it_is_forgotten_registers_again(workers) -> None:
    sim, broker = workers
    wid = _register(sim, broker)
    broker.send_multipart([wid, b"", *protocol.encode(Hello(0, role="broker"))])
    _until(sim, lambda: sim.counts["forgotten"] == 1)
    _, hello = _next(sim, broker, Hello, 2)
    assert hello.role == "worker"
    assert sim.counts["forgotten"] == 1
    _no_mistakes(sim)


def test_a_worker_counts_what_a_broker_must_not_send(workers) -> None:
    sim, broker = workers
    wid = _register(sim, broker)
    client = b"\x00client"
    broker.send_multipart([wid, b"", *protocol.encode(Pong(99))])  # no PING 99 was sent
    broker.send_multipart([wid, b"", b"garbage", b""])
    broker.send_multipart([wid, client, *protocol.encode(Reply(5, 1))])  # not for a worker
    _until(sim, lambda: sum(sim.mistakes.values()) == 3)
    assert sim.mistakes == {"undecodable": 1, "unexpected": 1, "unasked": 1, "refused": 0}
    assert len(sim.examples) == 3


def test_a_worker_counts_a_request_beyond_its_credit(workers) -> None:
    sim, broker = workers
    wid = _register(sim, broker)
    # Forgotten, it greets again and grants nothing until answered: credit 2 stays all.
    broker.send_multipart([wid, b"", *protocol.encode(Hello(0, role="broker"))])
    _until(sim, lambda: sim.counts["forgotten"] == 1)
    for rid in (1, 2, 3):
        broker.send_multipart([wid, b"\x00c", *protocol.encode(Request(rid, "bench.echo", [rid]))])
    _until(sim, lambda: sim.counts["requests"] == 3)
    assert sim.mistakes["unasked"] == 1
    assert "no credit left" in sim.examples[0]


def test_a_worker_counts_an_error_refusing_its_messages(workers) -> None:
    sim, broker = workers
    wid = _register(sim, broker)
    refusal = Error(0, ErrorCode.PROTOCOL, "bad READY")
    broker.send_multipart([wid, b"", *protocol.encode(refusal)])
    _until(sim, lambda: sim.mistakes["refused"] == 1)


# --- simulated endpoints, the test as their client ----------------------------------------------


@pytest.fixture
def endpoint(ctx: zmq.Context[Any]) -> Iterator[tuple[SimEndpoints, zmq.Socket[Any]]]:
    sim = SimEndpoints(1, threads=50)
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(sim.endpoints[0])
    yield sim, dealer
    sim.close()


def test_an_endpoint_answers_hello_ping_and_requests(endpoint) -> None:
    sim, dealer = endpoint
    dealer.send_multipart(protocol.encode(Hello(3, codec=protocol.Codec.JSON)))
    hello = protocol.decode(_recv(sim, dealer))
    assert isinstance(hello, Hello)
    assert (hello.id, hello.role, hello.threads, hello.codec) == (3, "worker", 50, 1)
    dealer.send_multipart(protocol.encode(Ping(4)))
    assert protocol.decode(_recv(sim, dealer)) == Pong(4)
    dealer.send_multipart(protocol.encode(Request(5, "bench.echo", [[1, 2]])))
    assert protocol.decode(_recv(sim, dealer)) == Reply(5, [1, 2])
    batch = Request(6, "bench.echo", [[1], [2], [3]], batch=True)
    dealer.send_multipart(protocol.encode(batch))
    assert protocol.decode(_recv(sim, dealer)) == Reply(6, [1, 2, 3], batch=True)
    _no_mistakes(sim)


def test_an_endpoint_answers_and_counts_a_bad_message(endpoint) -> None:
    sim, dealer = endpoint
    dealer.send_multipart([b"ZM\x01\x01", b""])  # a header cut short
    answer = protocol.decode(_recv(sim, dealer))
    assert isinstance(answer, Error)
    assert answer.code == ErrorCode.PROTOCOL
    dealer.send_multipart(protocol.encode(Reply(1, 2)))  # a client sends no REPLY
    _until(sim, lambda: sim.mistakes["unexpected"] == 1)
    assert sim.mistakes["undecodable"] == 1


# --- simulated clients, the test as their worker ------------------------------------------------


@pytest.fixture
def clients(ctx: zmq.Context[Any]) -> Iterator[tuple[SimClients, zmq.Socket[Any]]]:
    worker, ep = _router(ctx)
    sim = SimClients(ep, 2, busy=1, window=3)
    yield sim, worker
    sim.close()


def _greet_clients(sim: SimClients, worker: zmq.Socket[Any]) -> list[bytes]:
    peers = []
    while len(peers) < 2:
        (peer,), hello = _next(sim, worker, Hello, 1)
        assert hello.role == "client"
        if peer in peers:
            continue  # a second HELLO of the same greeting
        answer = Hello(hello.id, role="worker", capacity=1, threads=1, heartbeat_ms=100)
        worker.send_multipart([peer, *protocol.encode(answer)])
        peers.append(peer)
    _until(sim, lambda: all(s.state == READY for s in sim.sessions))
    return peers


def test_busy_clients_pipeline_and_count_their_calls(clients) -> None:
    sim, worker = clients
    _greet_clients(sim, worker)
    reports: list[dict[str, Any]] = []
    sim.start_busy(0.3, reports.append)
    answered = 0
    while not reports:
        sim.step(0.01)
        while worker.poll(0):
            peer, *frames = worker.recv_multipart()
            msg = protocol.decode(frames)
            if isinstance(msg, Request):
                assert len(sim.busy_sessions[0].outstanding) <= 3  # the window
                worker.send_multipart([peer, *protocol.encode(Reply(msg.id, msg.args[0]))])
                answered += 1
            elif isinstance(msg, Ping):
                worker.send_multipart([peer, *protocol.encode(Pong(msg.id))])
    assert reports[0]["calls"] > 0
    assert reports[0]["unanswered"] == 0
    assert sim.counts["replies"] == answered
    _no_mistakes(sim)


def test_a_client_counts_a_wrong_echo_and_an_answer_to_nothing(clients) -> None:
    sim, worker = clients
    _greet_clients(sim, worker)
    sim.start_busy(10, lambda report: None)
    peer, *frames = _recv(sim, worker)
    while not isinstance(msg := protocol.decode(frames), Request):
        peer, *frames = _recv(sim, worker)
    worker.send_multipart([peer, *protocol.encode(Reply(msg.id, "not the echo"))])
    worker.send_multipart([peer, *protocol.encode(Reply(10**9, 0))])
    worker.send_multipart([peer, *protocol.encode(Hello(10**9, role="worker"))])
    _until(sim, lambda: sim.mistakes["unasked"] == 3)


# --- what the bench makes of the counters ------------------------------------------------------


def test_the_bench_fails_on_any_mistake_and_shows_it() -> None:
    clean = {"role": "workers", "count": 3, "mistakes": {"unasked": 0}, "examples": []}
    seen = {
        "role": "workers",
        "count": 2,
        "received": 10,
        "max_lag": 0.002,
        "mistakes": {"unasked": 1, "undecodable": 0},
        "examples": ["workers 1: unasked: PONG id 9"],
    }
    text, mistakes = summary([clean, seen, {"role": "brokers", "mistakes": {"refused": 2}}])
    assert mistakes == 3
    assert "workers: 5 in 2 process(es)" in text
    assert "protocol mistakes 1" in text
    assert "workers 1: unasked: PONG id 9" in text
    assert "the brokers counted 2 protocol error(s)" in text
    assert summary([clean])[1] == 0


def test_too_few_file_descriptors_is_a_clear_error(monkeypatch) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (1024, 4096))
    monkeypatch.setattr(resource, "setrlimit", lambda *_: None)
    with pytest.raises(SystemExit, match=r"needs about 5256 open files.*hard limit is 4096"):
        raise_fd_limit(ScaleSizes())
    assert "1024 -> 4096" in raise_fd_limit(ScaleSizes(broker_workers=(10, 1000)))


def test_an_unanswered_worker_greets_again_as_the_real_one_does(workers) -> None:
    sim, broker = workers  # the Dialer's chain: HELLO again after 5 ms, 10, 20...
    hellos = [_next(sim, broker, Hello, 2)[1].id for _ in range(3)]
    assert len(set(hellos)) == 1  # one chain, one id (the broker only echoes it)
    assert sim.stats()["ready"] == 0
