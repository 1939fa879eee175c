"""BUNDLE (SPEC 7.10): several small messages sent as one, only to a peer that said so.

The protocol half runs in the fast tier. The rest drives real sockets: a worker that
answers a bundling client in bundles and everyone else one by one, a client that
bundles the requests a batch of answers released, and a CURVE worker that holds each
bundled request to the key its BUNDLE came with.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
import zmq.auth
from brokerkit import BrokeredMesh, wait_for, workers_ready
from hostilekit import raw_dealer
from hypothesis import given
from hypothesis import strategies as st
from meshkit import Mesh
from securekit import HERE, SERVICE, keygen, wait_serving

import protocol
from client import Client
from protocol import (
    BUNDLE_BYTES,
    Bundle,
    Codec,
    Error,
    ErrorCode,
    Hello,
    MessageType,
    Ping,
    ProtocolError,
    Reply,
    Request,
)

# --- the protocol (fast tier) ------------------------------------------------------------


def _request(rid: int, size: int = 1) -> list[Any]:
    return protocol.encode(Request(rid, "math.add", [b"x" * size, 1]))


def _flat(messages: list[list[Any]]) -> list[tuple[bytes, ...]]:
    """Messages as they arrive: each BUNDLE taken apart, in order."""
    out: list[tuple[bytes, ...]] = []
    for frames in messages:
        msg = protocol.decode(frames)
        if type(msg) is Bundle:
            out.extend(msg.messages)
        else:
            out.append(tuple(bytes(memoryview(f)) for f in frames))
    return out


@given(st.lists(st.sampled_from([1, 100, 40_000, 300_000, -1]), max_size=40))
def test_coalesce_keeps_every_message_and_its_order(sizes: list[int]) -> None:
    # -1: a message with an out-of-band frame (an array), which never goes in a bundle
    messages = [
        protocol.encode(Request(i + 1, "math.add", [protocol_array()]))
        if size < 0
        else _request(i + 1, size)
        for i, size in enumerate(sizes)
    ]
    sent = protocol.coalesce(messages)
    assert sum(count for _, count in sent) == len(messages)
    want = [tuple(bytes(memoryview(f)) for f in m) for m in messages]
    assert _flat([frames for frames, _ in sent]) == want
    for frames, count in sent:
        if count > 1:
            assert protocol.header_type(frames[0]) is MessageType.BUNDLE
            assert len(frames) == 2
            assert len(frames[1]) <= BUNDLE_BYTES
        else:  # alone: exactly as encoded, never wrapped
            assert protocol.header_type(frames[0]) is not MessageType.BUNDLE


def protocol_array() -> Any:
    return np.arange(4.0)


def test_a_lone_small_message_is_not_wrapped() -> None:
    one = _request(1)
    assert protocol.coalesce([one]) == [(one, 1)]


def test_bundle_refuses_what_it_cannot_carry() -> None:
    with pytest.raises(ProtocolError, match="at least one"):
        protocol.bundle([])
    with pytest.raises(ProtocolError, match="out-of-band"):
        protocol.bundle([protocol.encode(Request(1, "m.f", [protocol_array()]))])
    inner = protocol.bundle([_request(1)])
    with pytest.raises(ProtocolError, match="another BUNDLE"):
        protocol.bundle([inner])
    with pytest.raises(ProtocolError, match="MessagePack"):
        protocol.encode(Bundle(((b"", b""),), codec=Codec.JSON))
    with pytest.raises(ProtocolError, match=r"the most a BUNDLE may carry") as over:
        protocol.bundle([_request(1, 100_000), _request(2, 100_000), _request(3, 100_000)])
    assert over.value.code == ErrorCode.LIMIT_EXCEEDED


def test_any_receiver_takes_a_bundle_up_to_bundle_bytes_and_none_larger() -> None:
    # A sender cannot know its peer's limits: a receiver whose own are smaller than a
    # BUNDLE still takes it whole (its messages are each checked as if alone, later),
    # and nobody takes a larger one (SPEC 7.10).
    small = protocol.Limits(max_body_bytes=1000, max_array_len=10, max_bin_len=100)
    messages = [_request(i, 500) for i in range(200)]
    for frames, count in protocol.coalesce(messages):
        msg = protocol.decode(frames, small)
        assert type(msg) is Bundle
        assert len(msg.messages) == count
    routed = protocol.coalesce_routed([(b"\x00client", m) for m in messages])
    assert all(type(protocol.decode(f, small)) is Bundle for envelope, f in routed if not envelope)
    flat = [frame for m in messages for frame in m] * 3
    too_big = [protocol.bundle([_request(1)])[0], msgpack.packb(flat)]
    assert len(too_big[1]) > BUNDLE_BYTES
    with pytest.raises(ProtocolError) as refused:
        protocol.decode(too_big)
    assert refused.value.code == ErrorCode.LIMIT_EXCEEDED


def test_a_bundle_has_no_flags_and_id_0() -> None:
    header, body = protocol.bundle([_request(1)])
    flagged = bytearray(header)
    flagged[5] = 0x01  # the batch flag
    with pytest.raises(ProtocolError, match="flags"):
        protocol.decode([bytes(flagged), body])
    with pytest.raises(ProtocolError, match="id 0"):
        protocol.encode(Bundle(((header, body),), id=7))


def test_the_bundle_hello_key_round_trips_and_defaults_to_false() -> None:
    for codec in Codec:
        assert protocol.decode(protocol.encode(Hello(1, bundle=True, codec=codec))).bundle
        hello = protocol.decode([protocol.encode(Hello(1))[0], b"\x80"])
        assert type(hello) is Hello
        assert hello.bundle is False
    with pytest.raises(ProtocolError, match="bool"):
        protocol.encode(Hello(1, bundle=1))  # type: ignore[arg-type]


# --- a real worker ------------------------------------------------------------------------


def _read_all(sock: zmq.Socket[bytes], want: int, timeout: float = 10) -> list[list[bytes]]:
    """Messages from ``sock`` until ``want`` answers arrived (bundles counted by content)."""
    got: list[list[bytes]] = []
    deadline = time.monotonic() + timeout
    while len(_flat(got)) < want:
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(int(left * 1000)):
            pytest.fail(f"{len(_flat(got))} of {want} answers in {timeout} s")
        got.append(sock.recv_multipart())
    return got


def _answers(got: list[list[bytes]]) -> dict[int, Any]:
    out = {}
    for header, body in _flat(got):
        msg = protocol.decode([header, body])
        out[msg.id] = msg
    return out


@pytest.mark.process
@pytest.mark.parametrize("mode", ["inline", "threads"])
def test_a_worker_answers_a_bundle_in_bundles_only_to_a_client_that_takes_them(
    mesh: Mesh, mode: str
) -> None:
    args = ["--concurrency", "1" if mode == "inline" else "4"]
    w = mesh.start(*args)
    requests = [protocol.encode(Request(i, "math.add", [i, 1], {}, 10_000)) for i in range(1, 301)]
    bad = [protocol.encode(Request(999, "math.add", [1], {}, 10_000))[0], b"\x93\x01\x02\x03"]
    for takes in (True, False):
        with raw_dealer(w.endpoint, rcvhwm=0) as sock:
            sock.send_multipart(protocol.encode(Hello(1, bundle=takes)))
            hello = protocol.decode(_read_all(sock, 1)[0])
            assert type(hello) is Hello
            assert hello.bundle
            for start in range(0, 300, 100):
                sock.send_multipart(protocol.bundle([*requests[start : start + 100], bad]))
            got = _read_all(sock, 303)
            answers = _answers(got)
            assert {i: answers[i].result for i in range(1, 301)} == {
                i: i + 1 for i in range(1, 301)
            }
            assert type(answers[999]) is Error
            assert answers[999].code == ErrorCode.PROTOCOL
            bundled = [f for f in got if protocol.header_type(f[0]) is MessageType.BUNDLE]
            if takes:
                assert bundled, "300 quick answers to one client, and not one BUNDLE"
            else:
                assert not bundled, "a BUNDLE to a client whose HELLO did not ask for them"
    assert w.proc.poll() is None


@pytest.mark.process
def test_a_client_bundles_the_requests_a_batch_of_answers_released(short_tmp: Path) -> None:
    # This test is the worker: a ROUTER that says HELLO with 2 threads and bundle, holds
    # the requests it gets, then answers them all at once. The calls queued behind the
    # first two must come in BUNDLEs, and every caller gets its own result.
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    seen: list[str] = []  # the type of each message that came, in order
    try:
        with Client([f"tcp://127.0.0.1:{port}"], prefetch=0, timeout=20) as c:
            futures: list[Any] = []
            held: list[tuple[bytes, Request]] = []
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and sum(f.done() for f in futures) < 60:
                if not futures and seen.count("HELLO"):
                    futures = [c.submit("math.add", i, 1) for i in range(60)]
                if not router.poll(50):
                    for peer, req in held:  # answer everything held, together
                        router.send_multipart(
                            [peer, *protocol.encode(Reply(req.id, req.args[0] + 1))]
                        )
                    held.clear()
                    continue
                peer, *frames = router.recv_multipart()
                msg = protocol.decode(frames)
                seen.append(msg.TYPE.name)
                inner = msg.messages if type(msg) is Bundle else [tuple(frames)]
                for header, body in inner:
                    one = protocol.decode([header, body])
                    if type(one) is Hello:
                        hello = Hello(
                            one.id,
                            role="worker",
                            services={"math": ["add"]},
                            capacity=2,
                            threads=2,
                            bundle=True,
                        )
                        router.send_multipart([peer, *protocol.encode(hello)])
                    elif type(one) is Request:
                        held.append((peer, one))
                    elif type(one) is Ping:
                        router.send_multipart([peer, *protocol.encode(protocol.Pong(one.id))])
            assert [f.result(timeout=1) for f in futures] == [i + 1 for i in range(60)]
    finally:
        router.close()
        ctx.term()
    assert "BUNDLE" in seen, f"no request came in a BUNDLE: {seen}"


@pytest.mark.process
def test_a_bundled_request_is_held_to_the_key_its_bundle_came_with(mesh: Mesh) -> None:
    keys = mesh.tmp / "keys"
    server_pub, server_secret = keygen(keys / "server")
    report_pub, report_secret = keygen(keys / "report", "--services", "math")
    allowed = mesh.tmp / "allowed"
    allowed.mkdir()
    shutil.copy(report_pub, allowed)
    env = {"PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")])}
    w = mesh.start(
        "examples.mathsvc:svc",
        "examples.demosvc:svc",
        "--curve-secret",
        str(server_secret),
        "--curve-allow",
        str(allowed),
        service=SERVICE,
        env=env,
        wait=False,
    )
    wait_serving(w.endpoint, curve_secret=report_secret, curve_server=server_pub)
    public, secret = zmq.auth.load_certificate(report_secret)
    server_key, _ = zmq.auth.load_certificate(server_pub)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server_key
    try:
        sock.connect(w.endpoint)
        calls = [
            protocol.encode(Request(1, "math.add", [1, 2], {}, 10_000)),
            protocol.encode(Request(2, "demo.fib", [10], {}, 10_000)),
        ]
        sock.send_multipart(protocol.bundle(calls))
        answers = _answers(_read_all(sock, 2))
    finally:
        sock.close()
        ctx.term()
    assert type(answers[1]) is Reply
    assert answers[1].result == 3
    assert type(answers[2]) is Error
    assert answers[2].code == ErrorCode.FORBIDDEN
    assert "may not call service 'demo'" in answers[2].message


@pytest.mark.process
def test_a_broker_takes_a_clients_bundles_and_answers_in_bundles_if_asked(
    bmesh: BrokeredMesh,
) -> None:
    b = bmesh.broker()
    bmesh.worker(b, args=("--concurrency", "4", "--broker-prefetch", "64"))
    wait_for(b, workers_ready(1), bmesh)
    requests = [protocol.encode(Request(i, "bk.echo", [i], {}, 10_000)) for i in range(1, 201)]
    for takes in (True, False):
        with raw_dealer(b.endpoint, rcvhwm=0) as sock:
            sock.send_multipart(protocol.encode(Hello(1, bundle=takes)))
            hello = protocol.decode(_read_all(sock, 1)[0])
            assert type(hello) is Hello
            assert hello.role == "broker"
            assert hello.bundle
            sock.send_multipart(protocol.bundle(requests[:100]))
            sock.send_multipart(protocol.bundle(requests[100:]))
            got = _read_all(sock, 200)
            answers = _answers(got)
            assert {i: answers[i].result for i in range(1, 201)} == {i: i for i in range(1, 201)}
            bundled = [f for f in got if protocol.header_type(f[0]) is MessageType.BUNDLE]
            if takes:
                assert bundled, "200 quick answers to one client, and not one BUNDLE"
            else:
                assert not bundled, "a BUNDLE to a client whose HELLO did not ask for them"
    # And the client library through the broker: it bundles, and every call is answered.
    with Client([b.endpoint], timeout=20) as c:
        futures = [c.submit("bk.echo", i) for i in range(2000)]
        assert [f.result() for f in futures] == list(range(2000))


# --- routed BUNDLEs between a broker and its workers (SPEC 7.10, 12.2) --------------------


@given(
    st.lists(
        st.tuples(st.binary(min_size=1, max_size=8), st.integers(0, 3000)),
        min_size=1,
        max_size=40,
    )
)
def test_coalesce_routed_keeps_every_message_its_client_and_its_order(
    spec: list[tuple[bytes, int]],
) -> None:
    messages = [(client, _request(i, size * 40)) for i, (client, size) in enumerate(spec)]
    out = protocol.coalesce_routed(messages)
    got: list[tuple[bytes, tuple[bytes, ...]]] = []
    for envelope, frames in out:
        if envelope:  # a message alone, after its client's id
            got.append((envelope, tuple(frames)))
            continue
        msg = protocol.decode(frames)
        assert type(msg) is Bundle
        assert msg.clients
        assert sum(map(len, msg.messages[0])) <= BUNDLE_BYTES or len(msg.messages) == 1
        got += zip(msg.clients, msg.messages, strict=True)
    assert got == [(client, tuple(frames)) for client, frames in messages]


def test_a_routed_bundle_refuses_client_ids_zeromq_would_not_give() -> None:
    with pytest.raises(ProtocolError, match="1 to 255 bytes"):
        protocol.bundle([_request(1)], clients=[b""])
    with pytest.raises(ProtocolError, match="1 to 255 bytes"):
        protocol.bundle([_request(1)], clients=[b"c" * 256])
    with pytest.raises(ProtocolError, match="one client id per message"):
        protocol.bundle([_request(1), _request(2)], clients=[b"c"])
    header, _ = protocol.bundle([_request(1)], clients=[b"c"])
    assert protocol.decode_header(header).flags == protocol.FLAG_ROUTED


def _link_messages(frames: list[bytes]) -> tuple[bool, list[tuple[bytes, list[bytes]]]]:
    """One message on a broker-worker link (the peer's id already taken off): whether
    it was a routed BUNDLE, and its messages as ``(client, [header, body])``; the
    link's own messages (HELLO, READY, PING...) have client ``b""``."""
    envelope, *rest = frames
    if not envelope and protocol.header_type(rest[0]) is MessageType.BUNDLE:
        msg = protocol.decode(rest)
        assert type(msg) is Bundle
        assert msg.clients, "a BUNDLE in the link's own envelope that is not routed"
        return True, [(c, list(m)) for c, m in zip(msg.clients, msg.messages, strict=True)]
    return False, [(envelope, rest)]


@pytest.mark.process
@pytest.mark.parametrize("takes", [True, False])
def test_a_broker_sends_routed_bundles_only_to_a_worker_that_takes_them(
    bmesh: BrokeredMesh, takes: bool
) -> None:
    # This test is the worker: a bare DEALER that registers with a real broker, lets 60
    # calls queue there, then grants credit for all of them at once. They must come
    # in routed BUNDLEs if its HELLO said bundle (and never otherwise), each with its
    # client's id; its answers, bundled the same way, reach every caller.
    b = bmesh.broker()
    hello = Hello(
        1,
        role="worker",
        name="bare",
        version=protocol.__version__,
        services={"bk": ["echo"]},
        capacity=100,
        threads=100,
        heartbeat_ms=60_000,
        bundle=takes,
    )
    with raw_dealer(b.endpoint, rcvhwm=0) as sock, Client([b.endpoint], timeout=20) as c:
        sock.send_multipart([b"", *protocol.encode(hello)])
        assert sock.poll(10_000), "the broker did not answer the worker's HELLO"
        answer = protocol.decode(sock.recv_multipart()[1:])
        assert type(answer) is Hello
        assert answer.bundle, "the broker's HELLO says it takes routed BUNDLEs"
        futures = [c.submit("bk.echo", i) for i in range(60)]
        wait_for(b, lambda st: st["totals"]["queued"] == 60, bmesh, what="60 calls queued")
        sock.send_multipart([b"", *protocol.encode(protocol.Ready(0, 100))])
        held: list[tuple[bytes, Request]] = []
        bundles = 0
        deadline = time.monotonic() + 20
        while len(held) < 60 and time.monotonic() < deadline:
            if not sock.poll(1000):
                continue
            routed, messages = _link_messages(sock.recv_multipart())
            bundles += routed
            for client, frames in messages:
                msg = protocol.decode(frames)
                if client and type(msg) is Request:
                    held.append((client, msg))
        assert len(held) == 60, f"{len(held)} of 60 requests reached the worker"
        if takes:
            assert bundles, "60 requests dispatched at once, and not one routed BUNDLE"
        else:
            assert not bundles, "a routed BUNDLE to a worker whose HELLO did not ask for them"
        replies = [protocol.encode(Reply(req.id, req.args[0])) for _, req in held]
        if takes:
            bundle = protocol.bundle(replies, clients=[client for client, _ in held])
            sock.send_multipart([b"", *bundle])
        else:
            for (client, _), reply in zip(held, replies, strict=True):
                sock.send_multipart([client, *reply])
        assert [f.result() for f in futures] == list(range(60))


@pytest.mark.process
@pytest.mark.parametrize("mode", ["inline", "threads"])
@pytest.mark.parametrize("takes", [True, False])
def test_a_worker_answers_a_broker_in_routed_bundles_only_if_it_takes_them(
    bmesh: BrokeredMesh, mode: str, takes: bool
) -> None:
    # This test is the broker: a bare ROUTER a real worker joins. It sends 60 requests
    # from two clients (in one routed BUNDLE if it said bundle, else one by one), one
    # of them malformed; every answer must come back to its client, in routed BUNDLEs
    # only to a broker whose HELLO asked for them.
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVHWM, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    concurrency = "1" if mode == "inline" else "4"
    bmesh.worker(
        args=(
            "--broker", f"tcp://127.0.0.1:{port}", "--concurrency", concurrency,
            "--broker-prefetch", "60",
        )
    )  # fmt: skip
    clients = (b"\x00client-a", b"\x00client-b")
    try:
        assert router.poll(20_000), "the worker did not say HELLO"
        wid, *frames = router.recv_multipart()
        _, [(_, hello_frames)] = _link_messages(frames)
        hello = protocol.decode(hello_frames)
        assert type(hello) is Hello
        assert hello.bundle, "a worker says it takes routed BUNDLEs"
        mine = Hello(hello.id, role="broker", name="bare", version="0.1.0", bundle=takes)
        router.send_multipart([wid, b"", *protocol.encode(mine)])
        credit = 0
        deadline = time.monotonic() + 20
        while credit < 60 and time.monotonic() < deadline:
            if router.poll(1000):
                _, [(_, control)] = _link_messages(router.recv_multipart()[1:])
                msg = protocol.decode(control)
                if type(msg) is protocol.Ready:
                    credit += msg.credit
        assert credit >= 60, f"the worker granted {credit} credit"
        routes = [clients[i % 2] for i in range(60)]
        requests = [protocol.encode(Request(i, "bk.echo", [i], {}, 10_000)) for i in range(60)]
        requests[7] = [requests[7][0], b"\x93\x01\x02\x03"]  # a body that is no request
        if takes:
            router.send_multipart([wid, b"", *protocol.bundle(requests, clients=routes)])
        else:
            for client, frames in zip(routes, requests, strict=True):
                router.send_multipart([wid, client, *frames])
        answers: dict[int, tuple[bytes, Any]] = {}
        bundles = 0
        while len(answers) < 60 and time.monotonic() < deadline:
            if not router.poll(1000):
                continue
            routed, messages = _link_messages(router.recv_multipart()[1:])
            bundles += routed
            for client, frames in messages:
                if client:
                    msg = protocol.decode(frames)
                    answers[msg.id] = (client, msg)
        assert len(answers) == 60, f"{len(answers)} of 60 answers came back"
        for i in range(60):
            client, msg = answers[i]
            assert client == routes[i], f"answer {i} went to the wrong client"
            if i == 7:
                assert type(msg) is Error
                assert msg.code == ErrorCode.PROTOCOL
            else:
                assert type(msg) is Reply
                assert msg.result == i
        if takes:
            assert bundles, "60 quick answers to one broker, and not one routed BUNDLE"
        else:
            assert not bundles, "a routed BUNDLE to a broker whose HELLO did not ask for them"
    finally:
        router.close()
        ctx.term()


def test_check_route_holds_routed_bundles_to_broker_worker_links() -> None:
    plain = Bundle((tuple(_request(1)),))  # type: ignore[arg-type]
    routed = Bundle((tuple(_request(1)),), clients=(b"c",))  # type: ignore[arg-type]
    protocol.check_route(plain, link=False)
    protocol.check_route(routed, link=True)
    with pytest.raises(ProtocolError, match="travel only between those two"):
        protocol.check_route(routed, link=False)
    with pytest.raises(ProtocolError, match="send a routed BUNDLE"):
        protocol.check_route(plain, link=True)


@pytest.mark.process
@pytest.mark.parametrize("peer", ["worker", "broker"])
def test_a_routed_bundle_from_a_client_is_refused_and_nothing_in_it_runs(
    mesh: Mesh, bmesh: BrokeredMesh, peer: str
) -> None:
    # A client could otherwise pass requests off as another client's (the ids in a
    # routed BUNDLE say whom each answer goes to).
    if peer == "worker":
        endpoint, target = mesh.start().endpoint, "math.add"
    else:
        b = bmesh.broker()
        bmesh.worker(b)
        wait_for(b, workers_ready(1), bmesh)
        endpoint, target = b.endpoint, "bk.echo"
    smuggled = protocol.encode(Request(1, target, [1, 2] if peer == "worker" else [1], {}))
    with raw_dealer(endpoint, rcvhwm=0) as sock:
        sock.send_multipart(protocol.bundle([smuggled], clients=[b"\x00someone-else"]))
        plain = protocol.encode(Request(2, target, [2, 2] if peer == "worker" else [2], {}))
        sock.send_multipart(plain)
        assert sock.poll(10_000), f"the {peer} answered nothing"
        msg = protocol.decode(sock.recv_multipart())
        assert type(msg) is Reply
        assert msg.id == 2, "the request inside the routed BUNDLE was run"
        assert not sock.poll(500), "more than the one plain request was answered"


@pytest.mark.process
def test_a_worker_with_small_limits_takes_a_brokers_full_bundles(bmesh: BrokeredMesh) -> None:
    # The broker cannot know a worker's limits: its routed BUNDLEs (up to 256 KiB) must
    # reach a worker whose own max_body_bytes is far smaller, which had refused them
    # whole (its calls then never answered, the broker's credit for it lost), and whose
    # max_message_bytes would have had libzmq drop the connection (ZMQ_MAXMSGSIZE).
    from brokerkit import svc

    from worker import Worker, WorkerConfig

    b = bmesh.broker()
    small = 16 * 1024
    limits = protocol.Limits(
        max_body_bytes=small, max_message_bytes=4 * small, max_array_len=64, max_bin_len=small
    )
    config = WorkerConfig(
        binds=[], brokers=[b.endpoint], broker_prefetch=900, limits=limits, heartbeat_ms=300
    )
    w = Worker([svc], config)
    t = threading.Thread(target=w.run, daemon=True)
    payload = "x" * 200  # ~240 bytes a request: 901 of them make a ~220 KiB BUNDLE
    with Client([b.endpoint], max_in_flight=2000, prefetch=2000, timeout=20) as c:
        # Queued before the worker joins, so that its first credit releases them all
        # in one turn of the broker: the largest routed BUNDLEs it makes.
        futures = [c.submit("bk.echo", payload) for _ in range(2000)]
        t.start()
        try:
            assert all(f.result() == payload for f in futures)
        finally:
            w.request_stop("test over")
            t.join(20)
