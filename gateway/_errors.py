"""HTTP errors as data: every failure becomes a status and ``{"error": {type, message, code}}``.

One table maps the zeromesh error tree (`protocol.errors`) onto HTTP statuses, so a
call and a job that fail the same way report the same ``code``.
"""

from __future__ import annotations

from typing import Any

from protocol import (
    BadArguments,
    Cancelled,
    Forbidden,
    NoWorkers,
    Overloaded,
    ProtocolError,
    RemoteError,
    Timeout,
    UnknownHandler,
    WorkerLost,
    ZeromeshError,
)

__all__ = ["ApiError", "api_error"]

RETRY_AFTER_OVERLOADED = 1
"""Seconds a client should wait before retrying a 429."""
RETRY_AFTER_NO_WORKERS = 2
"""Seconds before retrying a 503: about what a supervised worker takes to come back."""

# (status, Retry-After) per zeromesh error; subclasses are looked up through the MRO.
_STATUS: dict[type[ZeromeshError], tuple[int, int | None]] = {
    UnknownHandler: (404, None),
    BadArguments: (422, None),
    Forbidden: (403, None),  # the gateway's own mesh key may not call it
    Overloaded: (429, RETRY_AFTER_OVERLOADED),
    RemoteError: (500, None),
    WorkerLost: (502, None),
    ProtocolError: (502, None),
    NoWorkers: (503, RETRY_AFTER_NO_WORKERS),
    Cancelled: (503, RETRY_AFTER_OVERLOADED),
    Timeout: (504, None),
    ZeromeshError: (503, RETRY_AFTER_NO_WORKERS),
}


class ApiError(Exception):
    """An HTTP error answer: ``status``, a ``type`` name and a human ``message``.

    ``retry_after`` (seconds) becomes a ``Retry-After`` header; ``traceback`` (a
    handler's, from the worker) is shown only when the gateway runs with ``--debug``.
    """

    def __init__(
        self,
        status: int,
        type_name: str,
        message: str,
        *,
        retry_after: int | None = None,
        traceback: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type_name = type_name
        self.message = message
        self.retry_after = retry_after
        self.traceback = traceback

    def to_dict(self, debug: bool) -> dict[str, Any]:
        """The ``error`` object of the response body (the job record stores the same)."""
        body: dict[str, Any] = {
            "type": self.type_name,
            "message": self.message,
            "code": self.status,
        }
        if debug and self.traceback:
            body["traceback"] = self.traceback
        return body

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ApiError:
        """Rebuild from `to_dict` output (a stored job error)."""
        return cls(
            int(data.get("code", 500)),
            str(data.get("type", "Error")),
            str(data.get("message", "")),
            traceback=str(data.get("traceback", "")),
        )


def api_error(exc: ZeromeshError) -> ApiError:
    """The HTTP answer for an error the mesh raised (see the table in this module)."""
    for cls in type(exc).__mro__:
        entry = _STATUS.get(cls)
        if entry is not None:
            break
    else:  # unreachable: ZeromeshError is in every MRO here
        entry = (503, RETRY_AFTER_NO_WORKERS)
    status, retry_after = entry
    if isinstance(exc, RemoteError):
        return ApiError(status, exc.remote_type, exc.remote_message, traceback=exc.remote_traceback)
    return ApiError(status, type(exc).__name__, str(exc), retry_after=retry_after)
