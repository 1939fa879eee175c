"""CURVE settings as the commands and the client read them: no processes, no sockets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import zmq
import zmq.auth

from zmqio import (
    ALLOW_ANY,
    ENV_CURVE_ALLOW,
    ENV_CURVE_SECRET,
    ENV_CURVE_SERVER,
    BindError,
    ClientSecurity,
    Gatekeeper,
    Grant,
    KeyFileError,
    Security,
    certificate_services,
    check_exposure,
    exposed_endpoints,
    load_allowed,
    load_public_key,
    write_certificates,
)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    zmq.auth.create_certificates(tmp_path, "srv")
    zmq.auth.create_certificates(tmp_path, "cli")
    (tmp_path / "allowed").mkdir()
    return tmp_path


def test_server_settings_need_both_flags_and_readable_files(certs: Path) -> None:
    secret = str(certs / "srv.key_secret")
    assert not Security.from_settings(env={}).curve
    with pytest.raises(KeyFileError, match="needs --curve-allow"):
        Security.from_settings(secret, env={})
    with pytest.raises(KeyFileError, match="needs --curve-secret"):
        Security.from_settings(None, str(certs / "allowed"), env={})
    with pytest.raises(KeyFileError, match="not a directory"):
        Security.from_settings(secret, str(certs / "nope"), env={})
    with pytest.raises(KeyFileError, match="holds no secret key"):
        Security.from_settings(str(certs / "srv.key"), ALLOW_ANY, env={})
    with pytest.raises(KeyFileError, match="zeromesh keygen"):
        Security.from_settings(str(certs / "missing.key_secret"), ALLOW_ANY, env={})
    sec = Security.from_settings(secret, str(certs / "allowed"), env={})
    public, private = zmq.auth.load_certificate(certs / "srv.key_secret")
    assert sec.curve
    assert (sec.public_key, sec.secret_key) == (public, private)
    env = {ENV_CURVE_SECRET: secret, ENV_CURVE_ALLOW: ALLOW_ANY}
    assert Security.from_settings(env=env).allow == ALLOW_ANY


def test_client_settings_take_files_z85_text_mappings_and_the_environment(certs: Path) -> None:
    server_pub, _ = zmq.auth.load_certificate(certs / "srv.key")
    assert ClientSecurity.from_settings(env={}) is None
    with pytest.raises(KeyFileError, match="server's public key"):
        ClientSecurity.from_settings(certs / "cli.key_secret", env={})
    by_file = ClientSecurity.from_settings(certs / "cli.key_secret", certs / "srv.key", env={})
    assert by_file is not None
    assert by_file.server_key == server_pub
    assert by_file.key_file.endswith("cli.key")
    by_text = ClientSecurity.from_settings(None, server_pub.decode(), env={})
    assert by_text is not None
    assert by_text.server_key == server_pub
    assert by_text.secret_key
    mapped = ClientSecurity.from_settings(None, {"tcp://a:1": server_pub}, env={})
    assert mapped is not None
    assert mapped.for_endpoint("tcp://a:1") is not None
    assert mapped.for_endpoint("tcp://b:1") is None
    env = {
        ENV_CURVE_SERVER: str(certs / "srv.key"),
        ENV_CURVE_SECRET: str(certs / "cli.key_secret"),
    }
    from_env = ClientSecurity.from_settings(env=env)
    assert from_env is not None
    assert from_env.key_file.endswith("cli.key")
    with pytest.raises(KeyFileError, match="neither a 40-character Z85"):
        load_public_key("not-a-key")


def test_protected_mode_counts_wildcards_and_lan_addresses_as_exposed() -> None:
    endpoints = [
        "tcp://127.0.0.1:5555",
        "tcp://127.9.9.9:1",
        "tcp://localhost:5555",
        "tcp://[::1]:5555",
        "ipc:///tmp/zm/w.sock",
        "tcp://*:5555",
        "tcp://0.0.0.0:5555",
        "tcp://10.1.2.3:5555",
        "tcp://eth0:5555",
    ]
    assert exposed_endpoints(endpoints) == endpoints[5:]
    import logging

    log = logging.getLogger("test")
    check_exposure(endpoints[:5], Security(), log)
    with pytest.raises(BindError, match="--insecure"):
        check_exposure(["tcp://*:5555"], Security(), log)
    check_exposure(["tcp://*:5555"], Security(insecure=True), log)
    check_exposure(["tcp://*:5555"], Security(b"p" * 40, b"s" * 40, ALLOW_ANY), log)


def test_a_certificate_s_services_metadata_limits_its_key(tmp_path: Path) -> None:
    # As `zeromesh keygen --services` writes it (quoted), unquoted with spaces (as
    # pyzmq writes metadata), none at all, an empty list (allows nothing), a bad name.
    write_certificates(tmp_path, "mine", ["math", "demo"])
    write_certificates(tmp_path, "all")
    for name, line in [("loose", "services = math, demo"), ("none", 'services = ""')]:
        write_certificates(tmp_path, name)
        text = (tmp_path / f"{name}.key").read_text()
        (tmp_path / f"{name}.key").write_text(text.replace("metadata\n", f"metadata\n  {line}\n"))
    assert certificate_services(tmp_path / "mine.key") == {"math", "demo"}
    assert certificate_services(tmp_path / "mine.key_secret") == {"math", "demo"}
    assert certificate_services(tmp_path / "loose.key") == {"math", "demo"}
    assert certificate_services(tmp_path / "all.key") is None
    assert certificate_services(tmp_path / "none.key") == frozenset()
    # pyzmq reads the files: the format is ZeroMQ's.
    public, secret = zmq.auth.load_certificate(tmp_path / "mine.key_secret")
    assert zmq.auth.load_certificate(tmp_path / "mine.key") == (public, None)
    assert zmq.curve_public(secret) == public
    assert (tmp_path / "mine.key_secret").stat().st_mode & 0o777 == 0o600

    grants = load_allowed(tmp_path)  # the *.key files only
    assert grants[public.decode()] == Grant("mine", frozenset({"math", "demo"}))
    assert sorted(g.name for g in grants.values()) == ["all", "loose", "mine", "none"]

    with pytest.raises(FileExistsError):
        write_certificates(tmp_path, "mine")
    write_certificates(tmp_path, "bad", ["math", "a b"])
    with pytest.raises(ValueError, match=r"'a b'.*not service names"):
        load_allowed(tmp_path)


def test_the_gatekeeper_checks_each_message_s_key_against_the_list(tmp_path: Path) -> None:
    """Real CURVE sockets on loopback: the ZAP User-Id of each received message tells
    the gatekeeper whose key sent it; a SIGHUP-style reload applies to open links."""
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    server_pub, server_sec = zmq.auth.load_certificate(write_certificates(tmp_path, "server")[1])
    write_certificates(allowed, "full")
    write_certificates(allowed, "mathonly", ["math"])
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    assert server_sec is not None
    gate = Gatekeeper(ctx, Security(server_pub, server_sec, str(allowed)), logging.getLogger())
    gate.start()
    try:
        router = ctx.socket(zmq.ROUTER)
        router.curve_server = True
        router.curve_publickey, router.curve_secretkey = server_pub, server_sec
        router.zap_domain = b"zeromesh"
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealers = []

        def first_frame(name: str) -> zmq.Frame:
            dealer = ctx.socket(zmq.DEALER)
            dealers.append(dealer)  # closed by ctx.destroy, not by the garbage collector
            dealer.linger = 0
            dealer.curve_serverkey = server_pub
            pub, sec = zmq.auth.load_certificate(allowed / f"{name}.key_secret")
            dealer.curve_publickey, dealer.curve_secretkey = pub, sec
            dealer.connect(f"tcp://127.0.0.1:{port}")
            dealer.send(b"hi")
            assert router.poll(5000), "no message through CURVE"
            return router.recv_multipart(copy=False)[1]

        full, math = first_frame("full"), first_frame("mathonly")
        assert gate.checks
        assert gate.refusal(full, "demo") is None
        assert gate.refusal(math, "math") is None
        refusal = gate.refusal(math, "demo")
        assert refusal is not None
        assert "key mathonly may not call service 'demo'" in refusal
        assert "allows math" in refusal
        assert gate.may_serve(full)
        assert not gate.may_serve(math)

        (allowed / "full.key").unlink()  # removed, then SIGHUP: its open link is cut off
        gate.reload()
        refusal = gate.refusal(full, "demo")
        assert refusal is not None
        assert "removed" in refusal
        assert not gate.may_serve(full)
    finally:
        gate.stop()
        ctx.destroy(linger=0)


@pytest.mark.parametrize(
    "line",
    [
        ("metadata\n", 'metadata\nServices = "math"\n'),  # unindented
        ("metadata\n", 'metadata\n    Services = "math"\n'),  # another case
        ("metadata\n", 'metadata\n    service = "math"\n'),  # singular
        ("curve\n", 'curve\n    services = "math"\n'),  # outside metadata
        ("metadata\n", 'metadata\n    services = "math"\n    services = "demo"\n'),  # twice
    ],
)
def test_a_near_miss_services_line_fails_closed(tmp_path: Path, line: tuple[str, str]) -> None:
    write_certificates(tmp_path, "k")
    path = tmp_path / "k.key"
    path.write_text(path.read_text().replace(*line, 1))
    with pytest.raises(ValueError, match="services"):
        certificate_services(path)


def test_one_key_in_two_files_with_different_services_is_refused(tmp_path: Path) -> None:
    write_certificates(tmp_path, "web", ["math"])
    text = (tmp_path / "web.key").read_text()
    (tmp_path / "copy.key").write_text(text.replace('services = "math"', 'services = "math,demo"'))
    with pytest.raises(ValueError, match="same key with different services"):
        load_allowed(tmp_path)
    (tmp_path / "copy.key").write_text(text)  # the same grant twice is harmless
    assert len(load_allowed(tmp_path)) == 1
