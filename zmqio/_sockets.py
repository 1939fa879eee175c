"""The ROUTER and DEALER sockets of zeromesh, set up in one place.

Every option zeromesh sets on a socket is here, once: a second copy in a shell is how
the worker came to cap incoming frames at 64 MiB while the broker allowed 1 GiB, so a
65 MiB reply cut a client off for good. Security settings (CURVE) belong here too.

* `bind_router`: the ROUTER a worker or broker binds on its endpoints.
* `Dialer`: a DEALER a client or a worker's broker link connects to one endpoint, with
  the socket monitor that reports the handshake and disconnects, and a fresh socket
  whenever libzmq gives a connection up for good.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
from collections.abc import Callable, Sequence
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from protocol import LIVENESS, AuthenticationError, Limits

from ._frames import has_input, send_message
from ._security import ZAP_DOMAIN, ClientSecurity, Security, exposed_endpoints

__all__ = [
    "SERVER_SNDHWM",
    "BindError",
    "Dialer",
    "HandshakeWatch",
    "bind_router",
    "check_endpoint",
    "check_exposure",
    "handshake_refusal",
    "new_context",
    "secure_client",
]

_MAX_SOCKETS_CAP = 65536


def new_context() -> zmq.Context[zmq.Socket[bytes]]:
    """A ZeroMQ context that may open as many sockets as the process may open files.

    libzmq's own default is 1023 sockets per context, and a `Client` uses three per
    endpoint (DEALER, monitor pair): past about 340 endpoints (one DNS name can stand
    for that many) it failed with "Too many open files" though the process had
    descriptors to spare. Each socket needs a descriptor, so the file limit
    (``ulimit -n``) is the real bound: raise that for more.
    """
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft > _MAX_SOCKETS_CAP:
        soft = _MAX_SOCKETS_CAP
    ctx.set(zmq.MAX_SOCKETS, max(1023, soft))
    return ctx


SERVER_SNDHWM = 1000
"""Messages libzmq queues for one peer of a worker or broker before a send raises
``zmq.Again`` and zeromesh's own outbox (which counts bytes) takes over. It bounds what
a peer that stops reading costs: libzmq's queue holds messages, whatever their size."""

_CLIENT_HWM = 100_000  # a client queues its own requests; its memory is its own
_RECONNECT_IVL_MS = 100
_RECONNECT_IVL_MAX_MS = 2000
_MONITOR_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_ZAP_REFUSED = 400  # the ZAP status code of a key not on the server's allow list
# A hang-up in the middle of a handshake is a refusal only if it happens again: once may
# be a peer that was stopping. A ZAP refusal is definite at once.
_HANGUPS_FOR_REFUSAL = 2
_MAX_IPC_PATH = 100  # unix sockets allow ~107 bytes; keep a margin


class BindError(Exception):
    """An endpoint cannot be bound or connected; the message says why and what to do."""


def check_endpoint(endpoint: str, action: str = "bind") -> tuple[str, str]:
    """Split ``endpoint`` into (scheme, address), refusing what zeromesh cannot use.

    Raises:
        BindError: not ``tcp://HOST:PORT`` or ``ipc:///path``, or an ipc path too long.
    """
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme not in ("tcp", "ipc") or not rest:
        raise BindError(
            f"cannot {action} {endpoint!r}: use tcp://HOST:PORT (e.g. "
            "tcp://127.0.0.1:5555, tcp://*:5555) or ipc:///path/to/socket"
        )
    if scheme == "ipc" and len(rest.encode()) > _MAX_IPC_PATH:
        raise BindError(
            f"ipc path {rest!r} is {len(rest.encode())} bytes; unix sockets "
            "allow ~107, use a shorter path"
        )
    return scheme, rest


def _common(sock: zmq.Socket[Any], limits: Limits, heartbeat_ms: int, timeout_ms: int) -> None:
    # One size rule for every socket: libzmq drops a frame over MAXMSGSIZE before
    # Python sees it, and no frame of a valid message is larger than the whole message
    # (or than a BUNDLE, which any receiver takes whatever its limits).
    sock.setsockopt(zmq.MAXMSGSIZE, limits.largest_frame)
    sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, timeout_ms)
    sock.setsockopt(zmq.LINGER, 0)  # a dead peer must not hang close(); callers may override


def _secure_server(sock: zmq.Socket[Any], security: Security) -> None:
    if not security.curve:
        return
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, security.public_key)
    sock.setsockopt(zmq.CURVE_SECRETKEY, security.secret_key)
    sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())


def secure_client(sock: zmq.Socket[Any], endpoint: str, security: ClientSecurity | None) -> bool:
    """Set CURVE on a connecting socket for ``endpoint`` (if ``security`` has a server
    key for it). For the one-shot sockets of tools; a `Dialer` does it itself. Returns
    True if CURVE is on."""
    keys = security.for_endpoint(endpoint) if security is not None else None
    if keys is None:
        return False
    server, public, secret = keys
    sock.setsockopt(zmq.CURVE_SERVERKEY, server)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    return True


def handshake_refusal(endpoint: str, kind: int, value: int, curve: bool, key_file: str) -> str:
    """What a failed handshake (monitor event ``kind`` with ``value``) means, in words
    that say what to change. ``key_file``: our public key's file, to name."""
    if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        ours = key_file or "this client's public key file"
        if value == _ZAP_REFUSED:
            return f"{endpoint} refused our key: add {ours} to its --curve-allow directory"
        return f"{endpoint} refused our key (ZAP status {value}): is {ours} allowed there?"
    if not curve:
        return (
            f"{endpoint} hung up during the handshake: it may require CURVE (pass the "
            "server's public key: curve_server=FILE, --curve-server)"
        )
    return (
        f"{endpoint} hung up during the CURVE handshake: the server key we were given "
        "(curve_server, --curve-server) is not that server's, or it does not run CURVE"
    )


class HandshakeWatch:
    """The handshake monitor of a one-shot tool socket (``zeromesh status``), so that a
    refused key is an `AuthenticationError` at once, as from a `Dialer`, not a timeout.

    Poll `monitor` beside the socket; when it is readable, call `check`.
    """

    def __init__(
        self, sock: zmq.Socket[Any], endpoint: str, security: ClientSecurity | None
    ) -> None:
        self.endpoint = endpoint
        self._curve = security is not None and security.for_endpoint(endpoint) is not None
        self._key_file = security.key_file if security is not None else ""
        self._sock = sock
        self.monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
        self._failed = 0

    def check(self) -> None:
        """Read the events that arrived.

        Raises:
            AuthenticationError: the server refused our key, or hung up the handshake
                again and again (a wrong server key; CURVE on one side only).
        """
        while True:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._failed = 0
            elif kind != zmq.EVENT_DISCONNECTED:
                self._failed += 1
                if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH or self._failed >= _HANGUPS_FOR_REFUSAL:
                    raise AuthenticationError(
                        handshake_refusal(
                            self.endpoint, kind, event["value"], self._curve, self._key_file
                        )
                    )

    def close(self) -> None:
        self._sock.disable_monitor()
        self.monitor.close(linger=0)


def check_exposure(endpoints: Sequence[str], security: Security, log: logging.Logger) -> None:
    """Protected mode: refuse to listen beyond loopback without CURVE unless told
    ``--insecure`` (then warn).

    Raises:
        BindError: a non-loopback tcp endpoint, no CURVE and no ``insecure``.
    """
    if security.curve:
        return
    exposed = exposed_endpoints(list(endpoints))
    if not exposed:
        return
    if security.insecure:
        log.warning(
            "listening beyond loopback WITHOUT CURVE on %s (--insecure): anyone who can "
            "reach it can run its handlers and read the traffic",
            " ".join(exposed),
        )
        return
    raise BindError(
        f"refusing to listen on {' '.join(exposed)} without CURVE: anyone who can reach "
        "it could run handlers and read the traffic. Either secure it: `zeromesh keygen "
        "keys/server` (and one key per client), then --curve-secret keys/server.key_secret "
        "--curve-allow DIR-OF-CLIENT-KEYS; or bind 127.0.0.1 / ipc://; or pass --insecure "
        "to accept the risk"
    )


def bind_router(
    ctx: zmq.Context[Any],
    endpoints: Sequence[str],
    *,
    limits: Limits,
    heartbeat_ms: int,
    heartbeat_timeout_ms: int,
    check_ipc: Callable[[str, str], None] | None = None,
    security: Security | None = None,
    log: logging.Logger,
) -> tuple[zmq.Socket[Any], list[str]]:
    """A ROUTER bound on every endpoint, set up as worker and broker both need it.

    ``check_ipc(endpoint, path)`` runs before an ipc bind (the worker refuses a path a
    live worker answers on) and may raise. Returns the socket and the endpoints
    actually bound (``tcp://*:0`` resolved). ``security`` turns CURVE on for every
    endpoint (the caller runs the ZAP handler, `Gatekeeper`); without it, an endpoint
    beyond loopback is refused unless ``security.insecure`` (`check_exposure`).

    Raises:
        BindError: a malformed endpoint, an address in use, a missing directory, an
            unsecured endpoint beyond loopback.
    """
    security = security or Security()
    for endpoint in endpoints:
        check_endpoint(endpoint)
    check_exposure(endpoints, security, log)
    sock = ctx.socket(zmq.ROUTER)
    # A send to a peer that left must fail at once (EHOSTUNREACH), not vanish silently;
    # a send to a peer whose queue is full raises zmq.Again instead of dropping.
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    sock.setsockopt(zmq.SNDHWM, SERVER_SNDHWM)
    sock.setsockopt(zmq.RCVHWM, SERVER_SNDHWM)
    _common(sock, limits, heartbeat_ms, heartbeat_timeout_ms)
    _secure_server(sock, security)
    bound: list[str] = []
    try:
        for endpoint in endpoints:
            scheme, rest = check_endpoint(endpoint)
            if scheme == "ipc" and check_ipc is not None:
                check_ipc(endpoint, rest)
            # An ipc socket is guarded by its file's mode: owner only (0700), so another
            # user of the host cannot connect, with or without keys.
            umask = os.umask(0o077) if scheme == "ipc" else None
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                hint = ""
                if exc.errno == zmq.EADDRINUSE:
                    hint = ": the address is in use (another worker or broker on it?)"
                elif exc.errno == errno.ENOENT:
                    hint = ": the directory does not exist"
                raise BindError(f"cannot bind {endpoint}: {exc.strerror}{hint}") from exc
            finally:
                if umask is not None:
                    os.umask(umask)
            last = sock.getsockopt_string(zmq.LAST_ENDPOINT)
            bound.append(last)
            log.info("bound %s", last)
    except BaseException:
        sock.close(linger=0)
        raise
    return sock, bound


class Dialer:
    """A DEALER connected to one endpoint that stays connectable, whatever the peer sends.

    libzmq reconnects a connecting socket after a network error or a heartbeat timeout,
    but not after a protocol error, such as a frame over ``MAXMSGSIZE`` or a greeting it
    does not understand: that connection stays dead, and a client would never reach its
    worker again. So on every disconnect the Dialer closes its socket and dials a fresh
    one (at once after a working connection, backing off to 2 s while the peer keeps
    hanging up during the handshake).

    ``on_input()`` runs when the socket is readable (the owner drains it);
    ``on_connected()`` after each handshake (send a greeting); ``on_disconnected()``
    when the connection dropped, while the old socket can still be read (take the
    replies that arrived before it closed); ``on_refused(reason)`` when a handshake
    failed (our key refused, a wrong server key, CURVE on one side only), with a
    sentence that says what to fix. ``security`` dials with CURVE, with the server key
    given for ``name`` (the endpoint as the user wrote it, when ``endpoint`` is one of
    the addresses its host name resolved to; default ``endpoint``). The owner reads
    `sock` afresh each time: it changes on every redial. Loop thread only.

    IMMEDIATE: a send raises ``zmq.Again`` while no peer is connected, instead of
    queueing a message for a peer that may never come back.
    """

    def __init__(
        self,
        ctx: zmq.Context[Any],
        endpoint: str,
        loop: Any,
        *,
        limits: Limits,
        heartbeat_ms: int,
        on_input: Callable[[], None],
        on_connected: Callable[[], None],
        on_disconnected: Callable[[], None],
        on_refused: Callable[[str], None] | None = None,
        security: ClientSecurity | None = None,
        name: str = "",
    ) -> None:
        self.endpoint = endpoint
        self.name = name or endpoint
        self.sock: zmq.Socket[Any] = None  # type: ignore[assignment]  # set by open()
        self.redials = 0
        self._ctx = ctx
        self._loop = loop
        self._limits = limits
        self._heartbeat_ms = heartbeat_ms
        self._on_input = on_input
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._on_refused = on_refused
        self._security = security
        self._curve = security.for_endpoint(self.name) if security is not None else None
        self._key_file = security.key_file if security is not None else ""
        self._monitor: zmq.Socket[Any] | None = None
        self._shook_hands = False
        self._failed_handshakes = 0
        self._backoff = 0.0
        self._timer: Any = None
        self._timer_greet: Any = None
        self._check_pending = False
        self._closed = False

    def open(self) -> None:
        """Create the socket and connect it (libzmq keeps retrying until the peer is up).

        Raises:
            BindError: the endpoint is malformed.
        """
        check_endpoint(self.endpoint, "connect to")
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, _CLIENT_HWM)
        sock.setsockopt(zmq.RCVHWM, _CLIENT_HWM)
        sock.setsockopt(zmq.RECONNECT_IVL, _RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, _RECONNECT_IVL_MAX_MS)
        _common(sock, self._limits, self._heartbeat_ms, LIVENESS * self._heartbeat_ms)
        secure_client(sock, self.name, self._security)
        monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)
            raise BindError(f"cannot connect to {self.endpoint}: {exc.strerror}") from exc
        self.sock, self._monitor = sock, monitor
        self._shook_hands = False
        self._loop.add_reader(sock.FD, self._on_input)
        self._loop.add_reader(monitor.FD, self._read_events)
        # The FD is edge-triggered: events queued before add_reader raise no new edge.
        self._loop.call_soon(self._read_events)

    def close(self, linger: int = 0, *, on_loop: bool = True) -> None:
        """Close the socket (``linger`` ms for queued messages to leave). Idempotent.

        ``on_loop=False`` from another thread, when the process exits next (a worker's
        hard timeout): the loop's readers and timers are left alone.
        """
        self._closed = True
        if on_loop:
            for timer in (self._timer, self._timer_greet):
                if timer is not None:
                    timer.cancel()
            self._timer = self._timer_greet = None
        self._close_socket(linger, on_loop)

    def send(self, frames: Sequence[Any]) -> bool:
        """Send without blocking; False if nothing is connected or the pipe is full.

        ZeroMQ's FD is edge-triggered, and a send may consume the edge of a message
        that arrived meanwhile: once this burst of sends is over, `on_input` runs if
        anything is waiting, so no reply sits unread until the next message.
        """
        sock = self.sock
        if sock is None or sock.closed:
            return False
        try:
            send_message(sock, frames)
        except zmq.Again:
            return False
        self.watch_input()
        return True

    def watch_input(self) -> None:
        """After sending on `sock` by other means (an `Outbox`): run `on_input` soon if a
        message is waiting, since the send may have consumed the FD's edge."""
        if not self._check_pending:
            self._check_pending = True
            self._loop.call_soon(self._check_input)

    def _check_input(self) -> None:
        self._check_pending = False
        sock = self.sock
        if sock is not None and has_input(sock):
            self._on_input()

    def greet(self, greeting: Callable[[], Sequence[Any] | None], delay: float = 0.005) -> None:
        """Send ``greeting()`` (a HELLO) until the peer answers it.

        Right after the handshake the pipe may not take messages yet (IMMEDIATE), and a
        greeting is harmless to repeat, so it is sent again after ``delay``, doubling up
        to the heartbeat interval; past that the owner's heartbeat resends it.
        ``greeting()`` is called for every attempt and returns None once no greeting is
        wanted (answered, closing).
        """
        if self._closed or self.sock is None or self.sock.closed:
            return
        frames = greeting()
        if frames is None:
            return
        self.send(frames)
        if delay < self._heartbeat_ms / 1000:
            self._timer_greet = self._loop.call_later(delay, self.greet, greeting, 2 * delay)

    def _close_socket(self, linger: int, on_loop: bool = True) -> None:
        sock, monitor = self.sock, self._monitor
        if sock is None or sock.closed:
            return
        if on_loop and not getattr(self._loop, "is_closed", lambda: False)():
            self._loop.remove_reader(sock.FD)
            if monitor is not None and not monitor.closed:
                self._loop.remove_reader(monitor.FD)
        sock.disable_monitor()
        if monitor is not None:
            monitor.close(linger=0)
        sock.close(linger=linger)

    def _read_events(self) -> None:
        while not self._closed:
            monitor = self._monitor
            if monitor is None or monitor.closed:
                return
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._shook_hands = True
                self._failed_handshakes = 0
                self._backoff = 0.0
                self._on_connected()
            elif kind == zmq.EVENT_DISCONNECTED:
                self._on_disconnected()
                self._redial()
                return  # the old monitor is closed; the new one has its own reader
            else:
                self._failed_handshakes += 1
                definite = kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH
                if self._on_refused is not None and (
                    definite or self._failed_handshakes >= _HANGUPS_FOR_REFUSAL
                ):
                    self._on_refused(self._refusal(kind, event["value"]))

    def _refusal(self, kind: int, value: int) -> str:
        curve = self._curve is not None
        return handshake_refusal(self.endpoint, kind, value, curve, self._key_file)

    def _redial(self) -> None:
        """Replace the socket: libzmq may have given this connection up for good."""
        if self._closed:
            return
        if not self._shook_hands:
            # It hung up during the handshake (wrong protocol, refused): back off.
            self._backoff = min(max(0.1, 2 * self._backoff), _RECONNECT_IVL_MAX_MS / 1000)
        self._close_socket(0)
        self.redials += 1
        if self._backoff:
            self._timer = self._loop.call_later(self._backoff, self._reopen)
        else:
            self.open()

    def _reopen(self) -> None:
        self._timer = None
        if not self._closed:
            self.open()
