"""The one exception tree of zeromesh, and the error codes that carry it on the wire.

Every error a zeromesh user can meet is a `ZeromeshError`. Errors cross the wire as
data (an `ERROR` message with a numeric code, the remote type name, a message and
traceback text) and are rebuilt on the receiving side by `error_from_wire`, so a
`Timeout` raised in a broker arrives as a `Timeout` in the client.

The numeric codes are part of the wire protocol (protocol/SPEC.md): never renumber.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from ._codec import Codec

__all__ = [
    "AuthenticationError",
    "BadArguments",
    "Cancelled",
    "ErrorCode",
    "Forbidden",
    "NoWorkers",
    "Overloaded",
    "ProtocolError",
    "RemoteError",
    "StartupError",
    "Timeout",
    "UnknownHandler",
    "WorkerLost",
    "ZeromeshError",
    "error_from_wire",
    "error_name",
]


class ErrorCode(IntEnum):
    """Stable error codes carried in an ERROR message's body (``code``)."""

    PROTOCOL = 1
    """The peer sent a frame sequence that is not a valid message."""
    UNSUPPORTED_VERSION = 2
    """The header names a protocol version this peer does not speak."""
    LIMIT_EXCEEDED = 3
    """A frame, body, nesting depth or length limit was exceeded."""
    UNKNOWN_HANDLER = 10
    """No handler of that ``service.handler`` name is served here."""
    BAD_ARGUMENTS = 11
    """The arguments do not fit the handler's signature."""
    FORBIDDEN = 12
    """The caller's key may not call that service here; nothing ran."""
    TIMEOUT = 20
    """The request's deadline passed before a reply."""
    NO_WORKERS = 21
    """No worker serving that handler could be reached."""
    WORKER_LOST = 22
    """The worker(s) holding the request died before replying."""
    OVERLOADED = 23
    """The receiver's queue is full; retry later."""
    CANCELLED = 24
    """The request was cancelled."""
    DRAINING = 25
    """The worker is shutting down and did not start the request: send it elsewhere."""
    REMOTE = 30
    """The handler raised an exception."""


class ZeromeshError(Exception):
    """Root of every error zeromesh raises; catch this to catch them all.

    ``detail`` holds extra data the remote side sent, if any: for a failed item of a
    batch (``Client.map``), ``{"index": i, "results": [...before it...]}``.
    """

    code: ErrorCode = ErrorCode.PROTOCOL
    detail: dict[str, Any] | None = None


class ProtocolError(ZeromeshError):
    """A message broke the wire protocol: malformed, unknown version, or over a limit.

    Raised by the decoder for anything it will not accept, and by the encoder for a
    value it cannot put on the wire. ``code`` tells which (see `ErrorCode`);
    ``request_id`` is the offending message's id when its header could be read, else 0;
    ``codec`` is the offending message's codec when its header could be read (a known
    version and codec), else MSGPACK: answer the ERROR in it, so a JSON-only peer can
    read the answer.
    """

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = 0
        self.codec = Codec.MSGPACK


class UnknownHandler(ZeromeshError, LookupError):
    """The called ``service.handler`` is not served by the worker that got it."""

    code = ErrorCode.UNKNOWN_HANDLER


class BadArguments(ZeromeshError, TypeError):
    """The arguments do not match the handler's signature; nothing ran."""

    code = ErrorCode.BAD_ARGUMENTS


class Forbidden(ZeromeshError, PermissionError):
    """The server's allow list does not let our key call that service; nothing ran.

    The message names the key's certificate and the services it may call: the server's
    operator adds the service to the certificate's ``services`` metadata (or removes
    the limit) in its ``--curve-allow`` directory and sends SIGHUP.
    """

    code = ErrorCode.FORBIDDEN


class Timeout(ZeromeshError, TimeoutError):
    """No reply came before the request's deadline.

    The request may still have run (or may still be running) on a worker.
    """

    code = ErrorCode.TIMEOUT


class NoWorkers(ZeromeshError):
    """No worker answered: none is listening on the given endpoints, or all are gone."""

    code = ErrorCode.NO_WORKERS


class WorkerLost(ZeromeshError):
    """The worker(s) holding the request died before replying, and retries ran out.

    For a stream, ``items`` is how many of its items arrived before the worker was lost:
    a stream that delivered items is never re-sent (they were consumed already).
    """

    code = ErrorCode.WORKER_LOST
    items: int = 0


class Overloaded(ZeromeshError):
    """The receiver's queue is full; the request was refused without running."""

    code = ErrorCode.OVERLOADED


class Cancelled(ZeromeshError):
    """The request was cancelled before it finished."""

    code = ErrorCode.CANCELLED


class RemoteError(ZeromeshError):
    """The handler raised an exception on the worker.

    Attributes:
        remote_type: the exception's qualified type name on the worker, e.g. ``ValueError``.
        remote_message: ``str()`` of the exception.
        remote_traceback: the formatted traceback text from the worker.
    """

    code = ErrorCode.REMOTE

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = f"{self.remote_type}: {self.remote_message}"
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


class AuthenticationError(ZeromeshError):
    """A CURVE handshake failed: the server refused our key, or we were given the wrong
    server key, or only one side runs CURVE. The message names the endpoint and what to
    change. Decided by the client from its socket monitor, so it never crosses the wire
    (no wire code)."""


class StartupError(ZeromeshError):
    """A worker, broker or gateway cannot start; the message says why and what to change.

    A bad endpoint, an address in use, an ipc path a live worker owns, a service that
    cannot be imported, an unusable jobs database. Raised before anything is served, so
    it never crosses the wire (it has no wire code of its own).
    """


_BY_CODE: dict[int, type[ZeromeshError]] = {
    ErrorCode.UNKNOWN_HANDLER: UnknownHandler,
    ErrorCode.BAD_ARGUMENTS: BadArguments,
    ErrorCode.FORBIDDEN: Forbidden,
    ErrorCode.TIMEOUT: Timeout,
    ErrorCode.NO_WORKERS: NoWorkers,
    ErrorCode.WORKER_LOST: WorkerLost,
    ErrorCode.OVERLOADED: Overloaded,
    ErrorCode.CANCELLED: Cancelled,
    # A client re-sends a DRAINING refusal elsewhere; if it still surfaces, the
    # request found no live worker to take it.
    ErrorCode.DRAINING: WorkerLost,
}


def error_name(code: int) -> str:
    """The Python exception name a receiver raises for ``code`` (an ERROR's ``type``)."""
    if code in (ErrorCode.PROTOCOL, ErrorCode.UNSUPPORTED_VERSION, ErrorCode.LIMIT_EXCEEDED):
        return ProtocolError.__name__
    cls = _BY_CODE.get(code)
    return cls.__name__ if cls is not None else RemoteError.__name__


def error_from_wire(
    code: int, type_name: str, message: str, traceback: str = "", **_: Any
) -> ZeromeshError:
    """Rebuild the exception an ERROR message describes.

    Unknown codes (from a newer peer) become `RemoteError`, so a client never fails
    to report an error because it does not know its code.
    """
    if code == ErrorCode.REMOTE:
        return RemoteError(type_name, message, traceback)
    if code in (ErrorCode.PROTOCOL, ErrorCode.UNSUPPORTED_VERSION, ErrorCode.LIMIT_EXCEEDED):
        return ProtocolError(f"peer reported: {message}", ErrorCode(code))
    cls = _BY_CODE.get(code)
    if cls is None:
        return RemoteError(type_name or f"error {code}", message, traceback)
    return cls(message)
