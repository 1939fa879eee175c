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

import datetime
import ipaddress
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from protocol import NAME_PATTERN

__all__ = [
    "ALLOW_ANY",
    "ENV_CURVE_ALLOW",
    "ENV_CURVE_SECRET",
    "ENV_CURVE_SERVER",
    "ClientSecurity",
    "Gatekeeper",
    "SERVICES_METADATA",
    "Grant",
    "KeyFileError",
    "Security",
    "add_server_security",
    "certificate_services",
    "exposed_endpoints",
    "load_allowed",
    "load_keypair",
    "load_public_key",
    "write_certificates",
]

ENV_CURVE_SECRET = "ZEROMESH_CURVE_SECRET"
ENV_CURVE_ALLOW = "ZEROMESH_CURVE_ALLOW"
ENV_CURVE_SERVER = "ZEROMESH_CURVE_SERVER"
ALLOW_ANY = "any"
"""``--curve-allow any``: encrypt, but admit any client key (CURVE_ALLOW_ANY)."""

SERVICES_METADATA = "services"
"""The certificate metadata naming the services a client key may call (``math,demo``)."""

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


def write_certificates(
    directory: str | os.PathLike[str], name: str, services: Sequence[str] | None = None
) -> tuple[Path, Path]:
    """Make a key pair: ``NAME.key`` (public, mode 0644) and ``NAME.key_secret`` (mode
    0600 from the start), in ZeroMQ's certificate format (czmq's ZPL, which
    `zmq.auth.load_certificate` reads). ``services`` goes into both as metadata (pyzmq's
    own writer puts metadata in the secret file only, but a server reads the public one).

    Raises:
        FileExistsError: either file exists (a key is never overwritten).
        OSError: the directory cannot be written.
    """
    public_key, secret_key = zmq.curve_keypair()
    base = Path(directory) / name
    public_path, secret_path = base.with_name(name + ".key"), base.with_name(name + ".key_secret")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    meta = f'    {SERVICES_METADATA} = "{",".join(services)}"\n' if services is not None else ""

    def write(path: Path, mode: int, intro: str, secret: bytes | None) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(f"#   ZeroMQ CURVE {intro}, made by zeromesh keygen on {stamp}\n#\n")
            f.write(f"metadata\n{meta}curve\n")
            f.write(f'    public-key = "{public_key.decode()}"\n')
            if secret is not None:
                f.write(f'    secret-key = "{secret.decode()}"\n')
        os.chmod(path, mode)  # whatever the umask

    write(secret_path, 0o600, "Secret Certificate: keep it here, never hand it out", secret_key)
    try:
        write(public_path, 0o644, "Public Certificate: hand it to the other side", None)
    except OSError:
        secret_path.unlink()
        raise
    return public_path, secret_path


def certificate_services(path: str | os.PathLike[str]) -> frozenset[str] | None:
    """The services a public certificate limits its key to, or None (no limit).

    Read from the certificate's ``metadata`` section, ``services = "math,demo"``, as
    `zeromesh keygen --services` and czmq write it; quotes optional. It fails closed:
    an empty list allows nothing, and a line that looks like a services limit but is
    not one exactly (another case, ``service``, outside ``metadata``, unindented) is
    an error rather than no limit, since a typo must not open everything.

    Raises:
        OSError: the file cannot be read.
        ValueError: the list names something that is not a service name, or a
            services line is misplaced or misspelt.
    """
    section = ""
    found: frozenset[str] | None = None
    for number, raw in enumerate(
        Path(path).read_text(encoding="utf-8", errors="replace").splitlines(), 1
    ):
        line = raw.split("#", 1)[0].rstrip()
        if not line:
            continue
        name, eq, value = line.strip().partition("=")
        key = name.strip()
        looks_like = key.lower().rstrip("s") == SERVICES_METADATA.rstrip("s")
        if not line[0].isspace() and not eq:
            section = line.strip()
            continue
        if looks_like and (
            key != SERVICES_METADATA or section != "metadata" or not line[0].isspace() or not eq
        ):
            raise ValueError(
                f"{os.fspath(path)}, line {number}: {line.strip()!r} looks like a services "
                f"limit but is not one: write it indented under 'metadata' as "
                f"'    {SERVICES_METADATA} = \"math,demo\"'"
            )
        if section != "metadata" or key != SERVICES_METADATA:
            continue
        if found is not None:
            raise ValueError(f"{os.fspath(path)}, line {number}: a second {SERVICES_METADATA} line")
        names = [n.strip() for n in value.strip().strip("\"'").split(",") if n.strip()]
        bad = [n for n in names if not NAME_PATTERN.match(n)]
        if bad:
            raise ValueError(
                f"{os.fspath(path)}: {SERVICES_METADATA} names {', '.join(map(repr, bad))}, "
                "which are not service names (give them comma-separated, e.g. "
                "'services = \"math,demo\"')"
            )
        found = frozenset(names)
    return found


class Grant(NamedTuple):
    """What one allowed client key may do: its certificate's name (for messages) and
    the services it may call (None: all of them)."""

    name: str
    services: frozenset[str] | None


def load_allowed(directory: str | os.PathLike[str]) -> dict[str, Grant]:
    """The keys of an allow directory (its ``*.key`` files), by Z85 public key text
    (the ZAP User-Id of a connection made with that key).

    Raises:
        OSError, ValueError: the directory, or a certificate in it, cannot be read.
    """
    grants: dict[str, Grant] = {}
    for path in sorted(Path(directory).glob("*.key")):
        public, _ = zmq.auth.load_certificate(path)
        if not public:
            raise ValueError(f"{path}: no public-key in it")
        key = public.decode("ascii")
        grant = Grant(path.stem, certificate_services(path))
        earlier = grants.get(key)
        if earlier is not None and earlier.services != grant.services:
            # Which one wins would depend on file names: refuse, say which two.
            raise ValueError(
                f"{path} and {earlier.name}.key hold the same key with different services: "
                "keep one of them"
            )
        grants[key] = grant
    return grants


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


def _user_id(frame: zmq.Frame) -> str:
    """The ZAP User-Id libzmq attaches to every frame received on a connection: pyzmq's
    authenticator sets it to the client's Z85 public key."""
    return str(frame.get("User-Id"))


class Gatekeeper:
    """The ZAP handler of one process context: admits the client keys in a directory,
    and says per message whether its sender may call a service.

    Runs pyzmq's `ThreadAuthenticator` on its own thread, so a handler blocking the
    event loop (an inline worker) delays no handshake. `reload` re-reads the directory
    (SIGHUP): new handshakes meet the new list, and connections already open are held
    to it too, through `refusal` — a removed key's next request is refused, a narrowed
    key's services shrink at once. A refused key is logged (once per key until the
    next reload), so the operator sees whom to allow.
    """

    def __init__(self, ctx: zmq.Context[Any], security: Security, log: logging.Logger) -> None:
        self.security = security
        self._log = log
        self._auth = ThreadAuthenticator(ctx, log=log.getChild("zap"))
        self._grants: dict[str, Grant] = {}
        self._reported: set[bytes] = set()
        self.checks = False
        """True when messages must be checked (`refusal`): an allow directory, not any."""

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
        # One assignment, read by the ZAP thread: it sees the old dict or the new one.
        self._grants = load_allowed(allow)
        self._reported = set()
        self.checks = True
        self._auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self)
        return len(self._grants)

    def callback(self, domain: str, client_key: bytes) -> bool:
        """pyzmq's credentials-provider hook (ZAP thread): is ``client_key`` allowed?"""
        if client_key.decode("ascii", "replace") in self._grants:
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

    def refusal(self, frame: zmq.Frame, service: str) -> str | None:
        """Why the key the message of ``frame`` came with may not call ``service``, or
        None if it may. Only meaningful when `checks` is true."""
        grant = self._grants.get(_user_id(frame))
        if grant is None:
            return (
                f"this client's key was removed from the server's --curve-allow "
                f"{self.security.allow} (add it back and send SIGHUP to call again)"
            )
        if grant.services is None or service in grant.services:
            return None
        allowed = ", ".join(sorted(grant.services)) or "no service"
        return (
            f"key {grant.name} may not call service {service!r}: its certificate in the "
            f"server's --curve-allow directory allows {allowed} (add {service} to its "
            f"{SERVICES_METADATA} and send SIGHUP)"
        )

    def may_serve(self, frame: zmq.Frame) -> bool:
        """May the key the message of ``frame`` came with join as a worker? Only a key
        allowed everything: a worker receives other clients' requests, so a key limited
        to some services must not be one."""
        if not self.checks:
            return True
        grant = self._grants.get(_user_id(frame))
        return grant is not None and grant.services is None

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
