"""CURVE end to end: keygen, allow-lists checked by ZAP, SIGHUP, refused keys as clear
errors, protected mode. Real worker and broker processes, real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import gatewaykit
import pytest
import zmq.auth
from brokerkit import BrokeredMesh, status, wait_for, workers_ready
from meshkit import ChildProcess, Mesh
from securekit import ENV_RECORD, HERE, SERVICE, keygen, records, wait_serving

from client import AsyncClient, AuthenticationError, Client, Executor, Forbidden
from zmqio import ClientSecurity

pytestmark = pytest.mark.process


@pytest.fixture
def keys(short_tmp: Path) -> dict[str, tuple[Path, Path]]:
    """server, its allowed client 'web1', an unknown 'stranger', a second server."""
    (short_tmp / "allowed").mkdir()
    made = {
        "server": keygen(short_tmp / "keys" / "server"),
        "web1": keygen(short_tmp / "allowed" / "web1"),
        "web2": keygen(short_tmp / "allowed" / "web2"),
        "stranger": keygen(short_tmp / "keys" / "stranger"),
        "other": keygen(short_tmp / "keys" / "other"),
    }
    # The allow directory holds public keys only: the secrets live elsewhere.
    for name in ("web1", "web2"):
        secret = made[name][1]
        moved = short_tmp / "keys" / secret.name
        shutil.move(secret, moved)
        made[name] = (made[name][0], moved)
    return made


def _env(short_tmp: Path) -> dict[str, str]:
    return {
        "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", ""),
        ENV_RECORD: str(short_tmp / "ran.txt"),
    }


def _curve_worker(mesh: Mesh, keys: dict[str, tuple[Path, Path]], allow: str) -> str:
    w = mesh.start(
        "--curve-secret",
        str(keys["server"][1]),
        "--curve-allow",
        allow,
        service=SERVICE,
        env=_env(mesh.tmp),
        wait=False,
    )
    wait_serving(w.endpoint, curve_secret=keys["web1"][1], curve_server=keys["server"][0])
    return w.endpoint


def test_keygen_writes_a_pair_in_zeromq_format_and_refuses_to_overwrite(short_tmp: Path) -> None:
    public, secret = keygen(short_tmp / "k" / "w1")
    assert public.read_text().count("public-key") == 1
    assert "secret-key" in secret.read_text()
    assert "secret-key" not in public.read_text()
    assert secret.stat().st_mode & 0o777 == 0o600
    assert public.stat().st_mode & 0o077 == 0o044  # others may read a public key
    before = secret.read_bytes()
    again = subprocess.run(
        [sys.executable, "-m", "zeromesh", "keygen", str(short_tmp / "k" / "w1")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr
    assert secret.read_bytes() == before
    helped = subprocess.run(
        [sys.executable, "-m", "zeromesh", "keygen", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert helped.returncode == 0
    assert "NAME.key_secret" in helped.stdout
    assert "--services" in helped.stdout

    limited, _ = keygen(short_tmp / "k" / "report", "--services", "math,demo")
    assert 'services = "math,demo"' in limited.read_text()
    assert zmq.auth.load_certificate(limited)[0]  # still a certificate pyzmq reads
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "zeromesh",
            "keygen",
            str(short_tmp / "k" / "x"),
            "--services",
            "a b",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2
    assert "give service names separated by commas" in bad.stderr
    assert not (short_tmp / "k" / "x.key").exists()


def test_allowed_client_is_served_unknown_and_plain_clients_get_a_clear_error(
    mesh: Mesh, keys: dict[str, tuple[Path, Path]]
) -> None:
    ep = _curve_worker(mesh, keys, str(mesh.tmp / "allowed"))
    ran = mesh.tmp / "ran.txt"
    with Client([ep], curve_secret=keys["web1"][1], curve_server=keys["server"][0]) as c:
        assert c.call("sec.record", "allowed") == "allowed"

    stranger = {"curve_secret": keys["stranger"][1], "curve_server": keys["server"][0]}
    with (
        Client([ep], **stranger) as c,  # type: ignore[arg-type]
        pytest.raises(AuthenticationError) as refused,
    ):
        c.options(timeout=10).call("sec.record", "stranger")
    assert "refused our key" in str(refused.value)
    assert "stranger.key" in str(refused.value)
    assert "--curve-allow" in str(refused.value)
    assert ep in str(refused.value)

    with Client([ep]) as c, pytest.raises(AuthenticationError, match="may require CURVE"):
        c.options(timeout=10).call("sec.record", "plain")
    pinged = subprocess.run(
        [sys.executable, "-m", "zeromesh", "ping", "-c", ep, "--timeout", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pinged.returncode == 1
    assert f"{ep}  REFUSED: {ep} hung up during the handshake" in pinged.stdout
    assert records(ran) == ["allowed"]
    stranger_key = keys["stranger"][0].read_text().split('public-key = "')[1].split('"')[0]
    assert f"refused a client key not in --curve-allow {mesh.tmp / 'allowed'}" in (
        mesh.workers[0].output()
    )
    assert stranger_key in mesh.workers[0].output()


def test_async_client_and_executor_take_the_same_keys(
    mesh: Mesh, keys: dict[str, tuple[Path, Path]]
) -> None:
    ep = _curve_worker(mesh, keys, str(mesh.tmp / "allowed"))
    allowed = {"curve_secret": keys["web1"][1], "curve_server": keys["server"][0]}
    stranger = {"curve_secret": keys["stranger"][1], "curve_server": keys["server"][0]}

    async def calls() -> tuple[str, BaseException]:
        async with AsyncClient([ep], **allowed) as ac:  # type: ignore[arg-type]
            ok = await ac.call("sec.record", "async")
        async with AsyncClient([ep], **stranger) as ac:  # type: ignore[arg-type]
            try:
                await ac.options(timeout=10).call("sec.record", "async-stranger")
            except AuthenticationError as exc:
                return ok, exc
        raise AssertionError("the stranger's call ran")

    ok, refused = asyncio.run(calls())
    assert ok == "async"
    assert "refused our key" in str(refused)
    with Executor([ep], **allowed) as ex:  # type: ignore[arg-type]
        assert ex.submit("sec.record", "executor").result(timeout=30) == "executor"
    assert records(mesh.tmp / "ran.txt") == ["async", "executor"]


def test_a_wrong_server_key_is_a_clear_error_and_nothing_runs(
    mesh: Mesh, keys: dict[str, tuple[Path, Path]]
) -> None:
    ep = _curve_worker(mesh, keys, str(mesh.tmp / "allowed"))
    wrong = {"curve_secret": keys["web1"][1], "curve_server": keys["other"][0]}
    with (
        Client([ep], **wrong) as c,  # type: ignore[arg-type]
        pytest.raises(AuthenticationError, match="is not that server's"),
    ):
        c.options(timeout=10).call("sec.record", "wrong-server")
    assert records(mesh.tmp / "ran.txt") == []


def test_sighup_rereads_the_allow_list_and_keeps_allowed_clients(
    mesh: Mesh, keys: dict[str, tuple[Path, Path]]
) -> None:
    ep = _curve_worker(mesh, keys, str(mesh.tmp / "allowed"))
    web1 = {"curve_secret": keys["web1"][1], "curve_server": keys["server"][0]}
    web2 = {"curve_secret": keys["web2"][1], "curve_server": keys["server"][0]}
    with Client([ep], **web1) as kept:  # type: ignore[arg-type]
        assert kept.call("sec.record", "before") == "before"
        with Client([ep], **web2) as c:  # type: ignore[arg-type]
            assert c.call("sec.record", "web2-before") == "web2-before"
        keys["web2"][0].unlink()
        worker = mesh.workers[0]
        worker.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "SIGHUP: re-read" not in worker.output() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "1 client key(s) allowed" in worker.output()
        with (
            Client([ep], **web2) as c,  # type: ignore[arg-type]
            pytest.raises(AuthenticationError, match="refused our key"),
        ):
            c.options(timeout=10).call("sec.record", "web2-after")
        assert kept.call("sec.record", "after") == "after"  # its connection stayed up
        with Client([ep], **web1) as c:  # type: ignore[arg-type]
            assert c.call("sec.record", "new") == "new"  # and its key is still let in
    assert worker.proc.poll() is None
    assert records(mesh.tmp / "ran.txt") == ["before", "web2-before", "after", "new"]


def test_a_key_limited_to_some_services_gets_forbidden_elsewhere_and_nothing_runs(
    mesh: Mesh, keys: dict[str, tuple[Path, Path]]
) -> None:
    allowed = mesh.tmp / "allowed"
    report_pub, report_secret = keygen(mesh.tmp / "keys" / "report", "--services", "math")
    shutil.copy(report_pub, allowed)
    w = mesh.start(
        "examples.mathsvc:svc",
        "examples.demosvc:svc",
        "--curve-secret",
        str(keys["server"][1]),
        "--curve-allow",
        str(allowed),
        service=SERVICE,
        env=_env(mesh.tmp),
        wait=False,
    )
    server = keys["server"][0]
    wait_serving(w.endpoint, curve_secret=keys["web1"][1], curve_server=server)
    with Client([w.endpoint], curve_secret=report_secret, curve_server=server) as c:
        assert c.call("math.add", 1, 2) == 3
        for target, args in [("demo.fib", (20,)), ("sec.record", ("report",))]:
            with pytest.raises(Forbidden) as refused:
                c.options(timeout=10).call(target, *args)
            service = target.split(".")[0]
            assert f"key report may not call service {service!r}" in str(refused.value)
            assert "allows math" in str(refused.value)
        assert c.call("math.add", 2, 2) == 4  # the connection is still good
        # Forbidden is final: the same answer from every worker, nothing to retry.
        futures = [c.submit("demo.fib", 5) for _ in range(3)]
        assert all(isinstance(f.exception(timeout=10), Forbidden) for f in futures)

    # The whole list is re-read on SIGHUP, and open connections are held to it.
    with Client([w.endpoint], curve_secret=keys["web1"][1], curve_server=server) as web1:
        assert web1.call("demo.fib", 10) == 55
        keys["web1"][0].unlink()
        w.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "SIGHUP: re-read" not in w.output() and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(Forbidden, match="removed from the server's --curve-allow"):
            web1.options(timeout=10).call("sec.record", "web1-removed")
    assert records(mesh.tmp / "ran.txt") == []  # the refused handler never ran
    assert "refused a call of sec.record: key report may not call" in w.output()
    assert w.proc.poll() is None


def test_curve_allow_any_encrypts_but_admits_any_key(
    mesh: Mesh, keys: dict[str, tuple[Path, Path]]
) -> None:
    ep = _curve_worker(mesh, keys, "any")
    with Client([ep], curve_server=keys["server"][0]) as c:  # a throw-away key pair
        assert c.call("sec.record", "anyone") == "anyone"
    with Client([ep]) as c, pytest.raises(AuthenticationError):
        c.options(timeout=10).call("sec.record", "plain")
    assert "ANY client key" in mesh.workers[0].output()
    assert records(mesh.tmp / "ran.txt") == ["anyone"]


def test_garbage_at_a_curve_port_leaves_the_worker_serving(
    mesh: Mesh, keys: dict[str, tuple[Path, Path]]
) -> None:
    ep = _curve_worker(mesh, keys, str(mesh.tmp / "allowed"))
    host, _, port = ep.removeprefix("tcp://").rpartition(":")
    junk = [
        b"GET / HTTP/1.1\r\n\r\n",
        b"\xff" + bytes(8) + b"\x7f\x03\x00CURVE" + bytes(15) + bytes(32) + os.urandom(300),
        os.urandom(4096),
    ]
    for payload in junk:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(payload)
            s.settimeout(0.5)
            with contextlib.suppress(TimeoutError, ConnectionResetError):
                s.recv(1024)
    with Client([ep], curve_secret=keys["web1"][1], curve_server=keys["server"][0]) as c:
        assert c.call("sec.record", "still") == "still"
    assert mesh.workers[0].proc.poll() is None


_CURVE_GREETING = b"\xff" + bytes(8) + b"\x7f\x03\x00CURVE" + bytes(15) + b"\x00" + bytes(31)


def _half_handshakes(host: str, port: int, n: int) -> list[socket.socket]:
    """``n`` connections that start a ZMTP handshake and stop: a third after the first
    11 bytes of the greeting, a third after the whole greeting, a third after the
    greeting and a CURVE HELLO command cut short."""
    conns = []
    for i in range(n):
        s = socket.create_connection((host, port), timeout=5)
        part = [_CURVE_GREETING[:11], _CURVE_GREETING, _CURVE_GREETING + b"\x04\xc8\x05HELLO"]
        s.sendall(part[i % 3])
        conns.append(s)
    return conns


@pytest.mark.parametrize("server", ["worker", "broker"])
def test_half_finished_handshakes_leave_a_curve_server_serving_with_memory_flat(
    server: str, mesh: Mesh, keys: dict[str, tuple[Path, Path]], short_tmp: Path
) -> None:
    from hostilekit import rss_mb

    secret, public = keys["server"][1], keys["server"][0]
    client = ClientSecurity.from_settings(keys["web1"][1], public)
    bm = BrokeredMesh(short_tmp)
    try:
        if server == "worker":
            ep = _curve_worker(mesh, keys, str(short_tmp / "allowed"))
            pid = mesh.workers[0].pid

            def serving() -> None:
                with Client([ep], curve_secret=keys["web1"][1], curve_server=public) as c:
                    assert c.options(timeout=10).call("sec.record", "served") == "served"
        else:
            b = bm.broker(
                "--curve-secret", str(secret), "--curve-allow", str(short_tmp / "allowed")
            )
            ep, pid = b.endpoint, b.pid

            def serving() -> None:
                assert status(b, security=client)["broker"]["pid"] == pid

        host, _, port = ep.removeprefix("tcp://").rpartition(":")
        for conn in _half_handshakes(host, int(port), 150):  # warm up: first-use allocations
            conn.close()
        serving()
        before = rss_mb(pid)
        for _ in range(4):
            held = _half_handshakes(host, int(port), 150)
            serving()  # while 150 handshakes hang half-done
            for conn in held:
                conn.close()
        serving()
        grown = rss_mb(pid) - before
        assert grown < 8, f"{server} grew {grown:.1f} MiB over 600 half-finished handshakes"
    finally:
        bm.close()


@pytest.fixture
def brokered(short_tmp: Path):  # type: ignore[no-untyped-def]
    m = BrokeredMesh(short_tmp)
    try:
        yield m
    finally:
        m.close()


def test_a_worker_whose_key_is_not_allowed_cannot_join_a_broker(
    brokered: BrokeredMesh, keys: dict[str, tuple[Path, Path]], short_tmp: Path
) -> None:
    broker_pub, broker_secret = keys["server"]
    allowed = short_tmp / "allowed"
    w_ok_pub, w_ok_secret = keygen(short_tmp / "keys" / "w-ok")
    shutil.copy(w_ok_pub, allowed / w_ok_pub.name)
    b = brokered.broker("--curve-secret", str(broker_secret), "--curve-allow", str(allowed))
    admin = ClientSecurity.from_settings(keys["web1"][1], broker_pub)

    def curve_worker(secret: Path) -> ChildProcess:
        return brokered.worker(
            b,
            args=("--curve-secret", str(secret), "--broker-curve-server", str(broker_pub)),
        )

    outsider = curve_worker(keys["stranger"][1])
    deadline = time.monotonic() + 20
    while "refused our key" not in outsider.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "cannot join broker" in outsider.output()
    assert "refused our key" in outsider.output()
    assert status(b, security=admin)["workers"] == []

    insider = curve_worker(w_ok_secret)
    wait_for(b, workers_ready(1), brokered, security=admin)
    with Client([b.endpoint], curve_secret=keys["web1"][1], curve_server=broker_pub) as c:
        assert c.call("bk.pid") == insider.pid
    assert len(status(b, security=admin)["workers"]) == 1
    stranger = {"curve_secret": keys["stranger"][1], "curve_server": broker_pub}
    with (
        Client([b.endpoint], **stranger) as c,  # type: ignore[arg-type]
        pytest.raises(AuthenticationError, match="refused our key"),
    ):
        c.options(timeout=10).call("bk.pid")


def test_a_broker_holds_clients_and_workers_to_their_keys_services(
    brokered: BrokeredMesh, keys: dict[str, tuple[Path, Path]], short_tmp: Path
) -> None:
    broker_pub, broker_secret = keys["server"]
    allowed = short_tmp / "allowed"
    bk_pub, bk_secret = keygen(short_tmp / "keys" / "bk-only", "--services", "bk")
    math_pub, math_secret = keygen(short_tmp / "keys" / "math-only", "--services", "math")
    for pub in (bk_pub, math_pub):
        shutil.copy(pub, allowed)
    b = brokered.broker("--curve-secret", str(broker_secret), "--curve-allow", str(allowed))
    admin = ClientSecurity.from_settings(keys["web1"][1], broker_pub)
    # A key limited to some services may not serve: a worker reads every client's calls.
    limited = brokered.worker(
        b, args=("--curve-secret", str(bk_secret), "--broker-curve-server", str(broker_pub))
    )
    worker = brokered.worker(
        b, args=("--curve-secret", str(keys["web2"][1]), "--broker-curve-server", str(broker_pub))
    )
    wait_for(b, workers_ready(1), brokered, security=admin)
    deadline = time.monotonic() + 20
    while "may not serve as a worker" not in limited.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "cannot join broker" in limited.output()
    assert [w["pid"] for w in status(b, security=admin)["workers"]] == [worker.pid]

    with Client([b.endpoint], curve_secret=bk_secret, curve_server=broker_pub) as c:
        assert c.call("bk.pid") == worker.pid
        with pytest.raises(Forbidden, match="may not call service '_broker'"):
            c.options(timeout=10).call("_broker.status")  # the broker's own service is one too
    with (
        Client([b.endpoint], curve_secret=math_secret, curve_server=broker_pub) as c,
        pytest.raises(Forbidden, match="key math-only may not call service 'bk'"),
    ):
        c.options(timeout=10).call("bk.pid")
    totals = status(b, security=admin)["totals"]
    assert totals["dispatched"] == 1  # the refused calls never reached a worker
    for secret, error in [(bk_secret, "Forbidden"), (keys["stranger"][1], "refused our key")]:
        shown = subprocess.run(
            [sys.executable, "-m", "zeromesh", "status", "-c", b.endpoint, "--timeout", "10",
             "--curve-server", str(broker_pub), "--curve-secret", str(secret)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert shown.returncode == 1, shown
        assert error in shown.stdout + shown.stderr
    assert "refused a call of bk.pid" in b.output()


def _start(short_tmp: Path, *argv: str) -> ChildProcess:
    return ChildProcess(list(argv), short_tmp / f"p{time.monotonic_ns()}.log")


@pytest.mark.parametrize("program", ["worker", "broker"])
def test_protected_mode_refuses_an_open_bind_without_curve(short_tmp: Path, program: str) -> None:
    svc = ["examples.mathsvc:svc"] if program == "worker" else []
    for bind in ("tcp://0.0.0.0:0", "tcp://*:0"):
        p = _start(short_tmp, "-m", program, *svc, "--bind", bind)
        assert p.wait(30) == 2
        out = p.output()
        assert "without CURVE" in out
        assert "zeromesh keygen" in out
        assert "--insecure" in out
        assert "bound" not in out

    p = _start(short_tmp, "-m", program, *svc, "--bind", "tcp://0.0.0.0:0", "--insecure")
    try:
        p.wait_bound()
        assert "WITHOUT CURVE" in p.output()
    finally:
        p.kill()


def test_curve_secret_without_an_allow_list_is_a_startup_error(
    short_tmp: Path, keys: dict[str, tuple[Path, Path]]
) -> None:
    p = _start(
        short_tmp,
        "-m",
        "worker",
        "examples.mathsvc:svc",
        "--bind",
        "tcp://127.0.0.1:0",
        "--curve-secret",
        str(keys["server"][1]),
    )
    assert p.wait(30) == 2
    assert "needs --curve-allow" in p.output()

    bad = short_tmp / "bad-allow"
    bad.mkdir()
    (bad / "broken.key").write_text("not a certificate\n")
    p = _start(
        short_tmp,
        "-m",
        "broker",
        "--bind",
        "tcp://127.0.0.1:0",
        "--curve-secret",
        str(keys["server"][1]),
        "--curve-allow",
        str(bad),
    )
    assert p.wait(30) == 2
    assert "cannot read --curve-allow" in p.output()
    assert "broken.key" in p.output()


def test_a_curve_worker_s_ipc_path_is_not_taken_over(
    mesh: Mesh, keys: dict[str, tuple[Path, Path]]
) -> None:
    ep = f"ipc://{mesh.tmp}/cw.sock"
    curve = ("--curve-secret", str(keys["server"][1]), "--curve-allow", "any")
    mesh.start(*curve, endpoint=ep, wait=False)
    wait_serving(ep, curve_server=keys["server"][0])
    second = mesh.start(*curve, endpoint=ep, wait=False)
    assert second.wait(30) == 2
    assert "a live process listens on it" in second.output()
    wait_serving(ep, curve_server=keys["server"][0])  # the first still serves


def test_loopback_and_ipc_need_no_keys(mesh: Mesh) -> None:
    mesh.start()  # tcp://127.0.0.1:0
    w = mesh.start(transport="ipc")
    assert all("WITHOUT CURVE" not in w.output() for w in mesh.workers)
    # Guarded by its mode instead: only this user may connect (whatever the umask).
    path = w.endpoint.removeprefix("ipc://")
    assert os.stat(path).st_mode & 0o777 == 0o700


def _capture(port: int, out: Path) -> subprocess.Popen[bytes] | None:
    tcpdump = shutil.which("tcpdump")
    if tcpdump is None:
        return None
    proc = subprocess.Popen(
        [tcpdump, "-i", "lo", "-U", "--immediate-mode", "-n", "-w", str(out), f"tcp port {port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()  # "listening on lo, ..." once it captures
    if b"listening" not in line:
        proc.kill()
        proc.communicate(timeout=10)
        return None
    return proc


def test_curve_hides_the_payload_on_the_wire(
    mesh: Mesh, keys: dict[str, tuple[Path, Path]]
) -> None:
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed")
    marker = "zeromesh-plaintext-marker-7f3a"
    plain = mesh.start(service=SERVICE, env=_env(mesh.tmp))
    secure = _curve_worker(mesh, keys, str(mesh.tmp / "allowed"))
    seen = {}
    for label, ep, curve in (
        ("plain", plain.endpoint, {}),
        ("curve", secure, {"curve_secret": keys["web1"][1], "curve_server": keys["server"][0]}),
    ):
        port = int(ep.rpartition(":")[2])
        pcap = mesh.tmp / f"{label}.pcap"
        cap = _capture(port, pcap)
        if cap is None:
            pytest.skip("tcpdump cannot capture on lo here (not root?)")
        try:
            with Client([ep], **curve) as c:  # type: ignore[arg-type]
                assert c.call("sec.record", marker) == marker
            time.sleep(0.5)  # let tcpdump write the last packets
        finally:
            cap.send_signal(signal.SIGINT)
            cap.communicate(timeout=10)  # reads and closes its stderr too
        seen[label] = marker.encode() in pcap.read_bytes()
    assert seen == {"plain": True, "curve": False}


gateways = gatewaykit.gateways


def test_the_gateway_reaches_curve_workers_with_its_own_key(
    mesh: Mesh, keys: dict[str, tuple[Path, Path]], gateways: gatewaykit.Gateways
) -> None:
    ep = _curve_worker(mesh, keys, str(mesh.tmp / "allowed"))
    gw = gateways.start(
        "--connect",
        ep,
        "--jobs-db",
        ":memory:",
        "--curve-secret",
        str(keys["web1"][1]),
        "--curve-server",
        str(keys["server"][0]),
    )
    r = gw.call("sec.record", "via the gateway")
    assert (r.status, r.json) == (200, {"result": "via the gateway"})
    # Without keys the gateway cannot reach the worker, and says so; nothing runs.
    plain = gateways.start("--connect", ep, "--jobs-db", ":memory:", "--wait-for-workers", "2")
    r = plain.call("sec.record", "plain gateway")
    assert r.status >= 500, (r.status, r.json)
    assert "plain gateway" not in records(mesh.tmp / "ran.txt")
