"""Gateway authentication end to end: bearer tokens, job ownership, HTTPS, protected mode.

Real gateway processes in front of a real demo worker; tokens come from a file the
test writes, and SIGHUP re-reads it.
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import ipaddress
import re
import shutil
import signal
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gatewaykit
import pytest
from gatewaykit import DEMO, GatewayProcess, Gateways, Response
from meshkit import Mesh, wait_ready

from gateway import GatewayConfig
from gateway._auth import parse_tokens
from gateway._jobs import JobStore

pytestmark = pytest.mark.process  # tier 2: starts real processes

gateways = gatewaykit.gateways

TOKENS = "# who may call\nalice:tok-alice\n\nbob : tok-bob\n"
ALICE = {"Authorization": "Bearer tok-alice"}
BOB = {"Authorization": "Bearer tok-bob"}


@pytest.fixture(scope="module")
def workers() -> Iterator[str]:
    """The endpoint of one demo worker, for the whole module."""
    tmp = Path(tempfile.mkdtemp(prefix="zma", dir="/tmp"))
    mesh = Mesh(tmp)
    try:
        worker = mesh.start(service=DEMO, wait=False)
        wait_ready([worker])
        yield worker.endpoint
    finally:
        mesh.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def gw(workers: str) -> Iterator[GatewayProcess]:
    """A gateway with alice's and bob's tokens, for the whole module."""
    tmp = Path(tempfile.mkdtemp(prefix="zmt", dir="/tmp"))
    (tmp / "tokens").write_text(TOKENS)
    gws = Gateways(tmp)
    try:
        yield gws.start(
            "--connect", workers, "--jobs-db", ":memory:", "--token-file", str(tmp / "tokens")
        )
    finally:
        gws.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _call(gw: GatewayProcess, headers: dict[str, str] | None = None) -> Response:
    return gw.request("POST", "/call/demo.fib", {"args": [10]}, headers=headers)


def _unauthorized(r: Response) -> dict[str, Any]:
    assert r.status == 401, r.body
    assert r.headers["WWW-Authenticate"].startswith("Bearer"), r.headers
    err = r.error
    assert err["type"] == "Unauthorized"
    assert "tok-" not in r.body.decode()
    return err


# --- tokens ---------------------------------------------------------------------------------


def test_call_needs_a_valid_token(gw: GatewayProcess) -> None:
    assert "Authorization" in _unauthorized(_call(gw))["message"]
    _unauthorized(_call(gw, {"Authorization": "Bearer tok-mallory"}))
    _unauthorized(_call(gw, {"Authorization": "Bearer "}))
    _unauthorized(_call(gw, {"Authorization": "Basic tok-alice"}))
    r = _call(gw, ALICE)
    assert (r.status, r.json) == (200, {"result": 55})
    assert _call(gw, BOB).json == {"result": 55}


def test_a_refused_body_leaves_the_connection_usable(gw: GatewayProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        # The body is read and dropped before the 401 (one over --max-body too): the
        # same keep-alive connection then carries the request with the token.
        for body in (b'{"args": [10]}', b"x" * 2_000_000):
            conn.request("POST", "/call/demo.fib", body=body)
            resp = conn.getresponse()
            assert resp.status == 401
            assert b"Unauthorized" in resp.read()
        conn.request("POST", "/call/demo.fib", body=b'{"args": [10]}', headers=ALICE)
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b'{"result":55}')
    finally:
        conn.close()


def test_streams_need_a_valid_token(gw: GatewayProcess) -> None:
    body = {"args": [3]}
    _unauthorized(gw.request("POST", "/stream/demo.primes", body))
    _unauthorized(gw.request("POST", "/stream/demo.primes", body, headers={"Authorization": "x"}))
    r = gw.request("POST", "/stream/demo.primes", body, headers=ALICE)
    assert r.status == 200, r.body
    assert r.body == b'data: 2\n\ndata: 3\n\ndata: 5\n\nevent: end\ndata: {"items":3}\n\n'


def test_jobs_need_a_valid_token(gw: GatewayProcess) -> None:
    _unauthorized(gw.request("POST", "/jobs/demo.fib", {"args": [5]}))
    _unauthorized(
        gw.request("POST", "/jobs/demo.fib", {"args": [5]}, headers={"Authorization": "Bearer x"})
    )
    r = gw.request("POST", "/jobs/demo.fib", {"args": [5]}, headers=ALICE)
    assert r.status == 202, r.body
    url = r.json["url"]
    _unauthorized(gw.request("GET", url))
    _unauthorized(gw.request("DELETE", url))
    _unauthorized(gw.request("GET", "/nowhere"))  # which routes exist is not told either
    assert gw.request("GET", "/nowhere", headers=ALICE).status == 404


def test_healthz_is_minimal_without_a_token(gw: GatewayProcess) -> None:
    deadline = time.monotonic() + 10
    while (r := gw.request("GET", "/healthz")).status != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (r.status, r.json) == (200, {"status": "ok"})
    assert gw.request("GET", "/healthz", headers={"Authorization": "Bearer no"}).json == {
        "status": "ok"
    }
    full = gw.request("GET", "/healthz", headers=ALICE).json
    assert full["status"] == "ok"
    assert "version" in full["gateway"]
    assert full["workers"]


def test_job_creation_logs_the_token_name_never_the_token(gw: GatewayProcess) -> None:
    r = gw.request("POST", "/jobs/demo.fib", {"args": [6]}, headers=BOB)
    job_id = r.json["id"]
    deadline = time.monotonic() + 10
    while f"job {job_id} (demo.fib) queued for bob" not in gw.output():
        assert time.monotonic() < deadline, gw.output()
        time.sleep(0.02)
    assert "tok-" not in gw.output()


# --- ownership --------------------------------------------------------------------------------


def test_a_job_is_visible_to_its_token_only(gw: GatewayProcess) -> None:
    r = gw.request("POST", "/jobs/demo.fib", {"args": [15]}, headers=ALICE)
    url = r.json["url"]
    deadline = time.monotonic() + 20
    while (view := gw.request("GET", url, headers=ALICE).json)["status"] != "done":
        assert time.monotonic() < deadline, view
        time.sleep(0.02)
    assert view["result"] == 610
    for method in ("GET", "DELETE"):
        other = gw.request(method, url, headers=BOB)
        assert other.status == 404, other.body
        assert other.error["type"] == "UnknownJob"
    # Bob's 404 says exactly what an id that never existed says.
    fake = "/jobs/" + "A" * 22
    assert (
        gw.request("GET", fake, headers=BOB).json["error"]["message"].replace("A" * 22, url[6:])
        == gw.request("GET", url, headers=BOB).json["error"]["message"]
    )
    # Alice can still cancel (409: it finished) and read it.
    assert gw.request("DELETE", url, headers=ALICE).status == 409
    assert gw.request("GET", url, headers=ALICE).status == 200


def test_another_token_cannot_cancel_a_running_job(gw: GatewayProcess) -> None:
    r = gw.request("POST", "/jobs/demo.steps", {"args": [200, 50]}, headers=ALICE)
    url = r.json["url"]
    assert gw.request("DELETE", url, headers=BOB).status == 404
    view = gw.request("GET", url, headers=ALICE).json
    assert view["status"] in ("queued", "running")
    cancelled = gw.request("DELETE", url, headers=ALICE)
    assert (cancelled.status, cancelled.json["status"]) == (200, "cancelled")


def test_a_database_of_schema_1_keeps_working(short_tmp: Path) -> None:
    db = short_tmp / "old.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, target TEXT NOT NULL, payload BLOB, "
            "status TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL, "
            "attempts INTEGER NOT NULL DEFAULT 0, progress TEXT, result BLOB, error TEXT);"
            "INSERT INTO jobs (id, target, status, created) "
            "VALUES ('old', 'demo.fib', 'queued', 1.0);"
            "PRAGMA user_version = 1;"
        )
    conn.close()

    async def use() -> tuple[Any, Any]:
        store = JobStore(str(db))
        await store.open()
        try:
            old = await store.get("old")
            new = await store.create("demo.fib", b"", "alice")
            return old, await store.get(new.id)
        finally:
            await store.close()

    old, new = asyncio.run(use())
    assert (old.target, old.owner) == ("demo.fib", None)
    assert new.owner == "alice"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()


# --- the token file ---------------------------------------------------------------------------


def test_token_file_lines() -> None:
    assert parse_tokens(TOKENS) == {"alice": b"tok-alice", "bob": b"tok-bob"}
    for bad, number in (("alice\n", 1), ("# c\n\n:tok\n", 3), ("a:x\nb:\n", 2), ("a:x y", 1)):
        with pytest.raises(ValueError, match=f"line {number}:"):
            parse_tokens(bad)
    with pytest.raises(ValueError, match="line 2: name 'a' appears twice"):
        parse_tokens("a:x\na:y\n")


def test_a_malformed_token_file_stops_startup(short_tmp: Path) -> None:
    tokens = short_tmp / "tokens"
    tokens.write_text("alice:tok-alice\nno colon here\n")
    r = _run_gateway("--token-file", str(tokens))
    assert r.returncode == 2, r.stderr
    assert f"{tokens} line 2: expected name:token" in r.stderr
    r = _run_gateway("--token-file", str(short_tmp / "missing"))
    assert r.returncode == 2, r.stderr
    assert "missing" in r.stderr


def test_sighup_reloads_the_tokens(workers: str, gateways: Gateways, short_tmp: Path) -> None:
    tokens = short_tmp / "tokens"
    tokens.write_text(TOKENS)
    gw = gateways.start("--connect", workers, "--jobs-db", ":memory:", "--token-file", str(tokens))
    assert _call(gw, BOB).status == 200
    tokens.write_text("alice:tok-alice\ncarol:tok-carol\n")
    gw.signal(signal.SIGHUP)
    carol = {"Authorization": "Bearer tok-carol"}
    _wait_for(lambda: _call(gw, carol).status == 200, gw)
    _unauthorized(_call(gw, BOB))
    assert _call(gw, ALICE).status == 200
    # A broken file keeps the old tokens, and says so.
    tokens.write_text("broken\n")
    gw.signal(signal.SIGHUP)
    _wait_for(lambda: "cannot reload the token file" in gw.output(), gw)
    assert _call(gw, carol).status == 200
    assert gw.proc.poll() is None


def _wait_for(condition: Any, gw: GatewayProcess, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened:\n{gw.output()}")
        time.sleep(0.05)


# --- HTTPS ----------------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor openssl is available")
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
        )
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def test_https(workers: str, gateways: Gateways, short_tmp: Path) -> None:
    cert, key = _self_signed(short_tmp)
    tokens = short_tmp / "tokens"
    tokens.write_text(TOKENS)
    gw = gateways.start(
        "--connect", workers, "--jobs-db", ":memory:", "--token-file", str(tokens),
        "--certfile", str(cert), "--keyfile", str(key),
    )  # fmt: skip
    assert f"listening on https://127.0.0.1:{gw.port}" in gw.output()
    context = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("127.0.0.1", gw.port, context=context, timeout=30)
    try:
        conn.request("POST", "/call/demo.fib", body=b'{"args": [12]}', headers=ALICE)
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (200, b'{"result":144}')
    finally:
        conn.close()
    # Plain HTTP on the same port gets no answer.
    with pytest.raises((http.client.HTTPException, OSError)):
        _call(gw, ALICE)


def test_certfile_and_keyfile_go_together(short_tmp: Path) -> None:
    r = _run_gateway("--certfile", str(short_tmp / "cert.pem"))
    assert r.returncode == 2
    assert "--certfile and --keyfile go together" in r.stderr
    r = _run_gateway("--certfile", str(short_tmp / "no.pem"), "--keyfile", str(short_tmp / "k"))
    assert r.returncode == 2
    assert f"cannot read --certfile {short_tmp / 'no.pem'}" in r.stderr


# --- protected mode ----------------------------------------------------------------------------


def _run_gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "--connect", "tcp://127.0.0.1:9", "--jobs-db",
         ":memory:", "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("host", "exposed"),
    [("127.0.0.1", False), ("127.1.2.3", False), ("::1", False), ("localhost", False),
     ("0.0.0.0", True), ("::", True), ("192.168.1.10", True), ("gateway.example", True)],
)  # fmt: skip
def test_what_counts_as_beyond_loopback(host: str, exposed: bool) -> None:
    config = GatewayConfig(connect=None, host=host, jobs_db=":memory:", insecure=True)
    assert config.exposed is exposed
    if exposed:
        with pytest.raises(ValueError, match="--token-file FILE, or --insecure"):
            GatewayConfig(connect=None, host=host, jobs_db=":memory:")
        GatewayConfig(connect=None, host=host, jobs_db=":memory:", token_file="tokens")


def test_beyond_loopback_needs_a_token_file() -> None:
    r = _run_gateway("--listen", "0.0.0.0:0")
    assert r.returncode == 2, r.stderr
    assert "--token-file" in r.stderr
    assert "--insecure" in r.stderr


def test_insecure_listens_beyond_loopback_with_a_warning(workers: str, gateways: Gateways) -> None:
    gw = gateways.start(
        "--connect", workers, "--jobs-db", ":memory:", "--listen", "0.0.0.0:0", "--insecure",
        wait=False,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not (m := re.search(r"listening on http://0\.0\.0\.0:(\d+)", gw.output())):
        assert gw.proc.poll() is None, gw.output()
        assert time.monotonic() < deadline, gw.output()
        time.sleep(0.02)
    gw.port = int(m.group(1))
    assert "WARNING" in gw.output()
    assert "--insecure" in gw.output()
    assert _call(gw).json == {"result": 55}
