"""CURVE for zeromesh: key files, the settings a socket is secured with, and ZAP.

Keys are ZeroMQ certificates as `zmq.auth.create_certificates` writes them: ``NAME.key``
holds the public key, ``NAME.key_secret`` the public and the secret key. A server
(worker, broker) binds with its secret certificate and admits the clients whose
public certificates sit in its allow directory, checked by a ZAP handler (pyzmq's
`ThreadAuthenticator`, one per process context); a client dials with its own
certificate and the server's public key, so both ends are authenticated.

The options themselves are set in `_sockets` (`bind_router`, `Dialer`); this module
only turns files and flags into the frozen values those take.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

__all__ = [
    "ALLOW_ANY",
    "ENV_CURVE_ALLOW",
    "ENV_CURVE_SECRET",
    "ENV_CURVE_SERVER",
    "ClientSecurity",
    "Gatekeeper",
    "KeyFileError",
    "Security",
    "add_server_security",
    "exposed_endpoints",
    "load_keypair",
    "load_public_key",
]

ENV_CURVE_SECRET = "ZEROMESH_CURVE_SECRET"
ENV_CURVE_ALLOW = "ZEROMESH_CURVE_ALLOW"
ENV_CURVE_SERVER = "ZEROMESH_CURVE_SERVER"
ALLOW_ANY = "any"
"""``--curve-allow any``: encrypt, but admit any client key (CURVE_ALLOW_ANY)."""

_Z85_KEY_LEN = 40
ZAP_DOMAIN = "zeromesh"


class KeyFileError(ValueError):
    """A key file or key setting cannot be used; the message says what to do."""


def load_keypair(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``NAME.key_secret`` certificate.

    Raises:
        KeyFileError: missing, unreadable, or no secret key in it (a public ``.key``).
    """
    p = Path(path)
    try:
        public, secret = zmq.auth.load_certificate(p)
    except (OSError, ValueError) as exc:
        raise KeyFileError(
            f"cannot read secret key file {str(p)!r}: {exc} (make one with "
            "`zeromesh keygen DIR/NAME`, then pass DIR/NAME.key_secret)"
        ) from exc
    if not secret:
        raise KeyFileError(
            f"{str(p)!r} holds no secret key: pass the NAME.key_secret file, not NAME.key"
        )
    return public, secret


def load_public_key(value: str | bytes | os.PathLike[str]) -> bytes:
    """A server's public key: a 40-character Z85 key, or a certificate file holding it.

    Raises:
        KeyFileError: neither a Z85 key nor a readable certificate.
    """
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    text = os.fspath(value)
    if len(text) == _Z85_KEY_LEN and not os.path.exists(text):
        try:
            if len(z85.decode(text)) == 32:
                return text.encode("ascii")
        except (ValueError, KeyError):  # pyzmq's z85 raises KeyError on a bad character
            pass
    try:
        public, _ = zmq.auth.load_certificate(text)
    except (OSError, ValueError) as exc:
        raise KeyFileError(
            f"server key {text!r} is neither a 40-character Z85 public key nor a "
            f"readable certificate file ({exc}); pass the server's NAME.key file"
        ) from exc
    return public


@dataclass(frozen=True)
class Security:
    """How a worker or broker secures the ROUTER it binds. Off by default.

    ``public_key``/``secret_key`` (Z85) turn CURVE on for every endpoint; ``allow`` is
    the directory of admitted client certificates or `ALLOW_ANY`; ``insecure`` lets a
    server without CURVE bind beyond loopback.
    """

    public_key: bytes = b""
    secret_key: bytes = b""
    allow: str = ""
    insecure: bool = False
    key_file: str = ""
    """Where the keys came from (for messages)."""

    @property
    def curve(self) -> bool:
        return bool(self.secret_key)

    @classmethod
    def from_settings(
        cls,
        secret_file: str | None = None,
        allow: str | None = None,
        *,
        insecure: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> Security:
        """Settings from ``--curve-secret``/``--curve-allow`` (else the environment).

        Raises:
            KeyFileError: a key file cannot be read, an allow directory is missing, or
                only one of the two is given.
        """
        env = os.environ if env is None else env
        secret_file = secret_file or env.get(ENV_CURVE_SECRET) or None
        allow = allow or env.get(ENV_CURVE_ALLOW) or None
        if secret_file is None:
            if allow is not None:
                raise KeyFileError(
                    "--curve-allow needs --curve-secret FILE too (this server's own "
                    "NAME.key_secret, made by `zeromesh keygen`)"
                )
            return cls(insecure=insecure)
        if allow is None:
            raise KeyFileError(
                f"--curve-secret {secret_file} needs --curve-allow too: a directory of "
                f"the clients' public NAME.key files (or ${ENV_CURVE_ALLOW}), or "
                "--curve-allow any to admit any client key"
            )
        public, secret = load_keypair(secret_file)
        if allow != ALLOW_ANY and not Path(allow).is_dir():
            raise KeyFileError(
                f"--curve-allow {allow!r} is not a directory: give a directory holding "
                "the allowed clients' NAME.key files, or 'any'"
            )
        return cls(public, secret, allow, insecure, str(secret_file))


def _public_key_label(secret_file: str) -> str:
    """How to name our public key in an error: NAME.key beside the secret if it is
    there, else just its file name (it was handed out, the secret kept)."""
    public = secret_file.removesuffix("_secret")
    return public if os.path.exists(public) else os.path.basename(public)


@dataclass(frozen=True)
class ClientSecurity:
    """How a client (or a worker's broker link) dials: its own keys and the server's.

    ``server_key`` is used for every endpoint not in ``server_keys``. With no secret
    file given, the client makes a fresh key pair (enough for a server that admits
    any key).
    """

    public_key: bytes
    secret_key: bytes
    server_key: bytes = b""
    server_keys: Mapping[str, bytes] = field(default_factory=dict)
    key_file: str = ""
    """Our public certificate's path, to name in an error (``NAME.key``)."""

    def for_endpoint(self, endpoint: str) -> tuple[bytes, bytes, bytes] | None:
        """(server key, our public key, our secret key) for ``endpoint``, or None."""
        server = self.server_keys.get(endpoint, self.server_key)
        if not server:
            return None
        return server, self.public_key, self.secret_key

    @classmethod
    def from_settings(
        cls,
        secret_file: str | os.PathLike[str] | None = None,
        server: str | bytes | os.PathLike[str] | Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> ClientSecurity | None:
        """Settings from ``curve_secret``/``curve_server`` (else the environment);
        None when no server key is given anywhere (plain connections).

        Raises:
            KeyFileError: a key cannot be read, or a secret file without a server key.
        """
        env = os.environ if env is None else env
        if server is None and env.get(ENV_CURVE_SERVER):
            server = env[ENV_CURVE_SERVER]
        if server is None or server == "" or (isinstance(server, Mapping) and not server):
            if secret_file:  # given here, not just in the environment a server shares
                raise KeyFileError(
                    "a client secret key needs the server's public key too: pass "
                    f"curve_server=FILE (--curve-server, ${ENV_CURVE_SERVER})"
                )
            return None
        if secret_file is None and env.get(ENV_CURVE_SECRET):
            secret_file = env[ENV_CURVE_SECRET]
        default = b""
        per_endpoint: dict[str, bytes] = {}
        if isinstance(server, Mapping):
            per_endpoint = {str(ep): load_public_key(key) for ep, key in server.items()}
        else:
            default = load_public_key(server)
        if secret_file:
            public, secret = load_keypair(secret_file)
            label = _public_key_label(os.fspath(secret_file))
        else:
            public, secret = zmq.curve_keypair()
            label = ""
        return cls(public, secret, default, per_endpoint, label)


def exposed_endpoints(endpoints: list[str] | tuple[str, ...]) -> list[str]:
    """The tcp endpoints that listen beyond loopback (``*``, 0.0.0.0, a public address,
    a host name other than localhost). ipc:// and 127.0.0.0/8, ::1, localhost are not."""
    exposed = []
    for endpoint in endpoints:
        scheme, _, rest = endpoint.partition("://")
        if scheme != "tcp":
            continue
        host = rest.rpartition(":")[0].strip("[]")
        if host == "localhost":
            continue
        try:
            if ipaddress.ip_address(host).is_loopback:
                continue
        except ValueError:
            pass  # '*', an interface or host name: may well be reachable
        exposed.append(endpoint)
    return exposed


class Gatekeeper:
    """The ZAP handler of one process context: admits the client keys in a directory.

    Runs pyzmq's `ThreadAuthenticator` on its own thread, so a handler blocking the
    event loop (an inline worker) delays no handshake. `reload` re-reads the directory
    (SIGHUP); connections already admitted stay up, new ones meet the new list. A
    refused key is logged (once per key until the next reload), so the operator sees
    whom to allow.
    """

    def __init__(self, ctx: zmq.Context[Any], security: Security, log: logging.Logger) -> None:
        self.security = security
        self._log = log
        self._auth = ThreadAuthenticator(ctx, log=log.getChild("zap"))
        self._allowed: frozenset[bytes] = frozenset()
        self._reported: set[bytes] = set()

    def start(self) -> None:
        self._auth.start()
        self.reload()

    def reload(self) -> int:
        """Re-read the allow directory; returns the number of keys admitted (-1: any).

        Raises:
            OSError, ValueError: the directory or a key in it cannot be read (the old
                list stays).
        """
        allow = self.security.allow
        if allow == ALLOW_ANY:
            self._auth.configure_curve(domain=ZAP_DOMAIN, location=zmq.auth.CURVE_ALLOW_ANY)
            return -1
        allowed = frozenset(zmq.auth.load_certificates(allow))
        # One assignment, read by the ZAP thread: it sees the old set or the new one.
        self._allowed = allowed
        self._reported = set()
        self._auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self)
        return len(allowed)

    def callback(self, domain: str, client_key: bytes) -> bool:
        """pyzmq's credentials-provider hook (ZAP thread): is ``client_key`` allowed?"""
        if client_key in self._allowed:
            return True
        if client_key not in self._reported:
            self._reported.add(client_key)
            self._log.warning(
                "refused a client key not in --curve-allow %s: %s (add its NAME.key "
                "there and send SIGHUP to let it in)",
                self.security.allow,
                client_key.decode("ascii", "replace"),
            )
        return False

    def stop(self) -> None:
        self._auth.stop()


def add_client_security(parser: Any) -> None:
    """Add ``--curve-server`` and ``--curve-secret`` (the zeromesh commands, the gateway's
    mesh side): how a client proves itself to CURVE workers and brokers."""
    parser.add_argument(
        "--curve-server",
        metavar="FILE|KEY",
        default=None,
        help="the server's public key (its NAME.key, or the Z85 text): connect with "
        f"CURVE (default ${ENV_CURVE_SERVER})",
    )
    parser.add_argument(
        "--curve-secret",
        metavar="FILE",
        default=None,
        help="our own NAME.key_secret, whose NAME.key the server allows (default "
        f"${ENV_CURVE_SECRET}; without one, a throw-away key)",
    )


def add_server_security(parser: Any) -> None:
    """Add ``--curve-secret``, ``--curve-allow`` and ``--insecure`` (worker, broker)."""
    parser.add_argument(
        "--curve-secret",
        metavar="FILE",
        default=None,
        help="this process's NAME.key_secret (from `zeromesh keygen`): CURVE on every "
        f"--bind endpoint (default ${ENV_CURVE_SECRET}); needs --curve-allow",
    )
    parser.add_argument(
        "--curve-allow",
        metavar="DIR|any",
        default=None,
        help="directory of the public NAME.key files of the clients (and, for a broker, "
        "workers) let in, re-read on SIGHUP; 'any' admits every key, encrypted "
        f"(default ${ENV_CURVE_ALLOW})",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="bind beyond loopback (tcp://*, 0.0.0.0, a LAN address) without CURVE: "
        "anyone who reaches the port can run handlers (refused otherwise)",
    )
