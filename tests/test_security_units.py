"""CURVE settings as the commands and the client read them: no processes, no sockets."""

from __future__ import annotations

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
    KeyFileError,
    Security,
    check_exposure,
    exposed_endpoints,
    load_public_key,
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
