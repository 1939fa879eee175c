"""What a running handler may ask about its own request: report progress, check cancel.

The current request lives in a context variable: async handlers each run in their own
task's context, sync handlers in a context copied into their thread, so the functions
below always see the request of the handler that calls them.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol

from protocol import trace_id_of

__all__ = ["RequestContext", "cancelled", "current", "progress", "trace_id", "traceparent"]


class RequestContext(Protocol):
    """The worker's side of a running request (implemented by the worker's job record)."""

    cancelled: bool

    @property
    def trace(self) -> str: ...

    def report_progress(self, done: float, total: float | None, note: str) -> None: ...


current: ContextVar[RequestContext | None] = ContextVar("zeromesh_request", default=None)


def progress(done: float, total: float | None = None, note: str = "") -> None:
    """Tell the caller how far the running handler has got: ``done`` of ``total``.

    Sent to the client as a PROGRESS message (the HTTP gateway shows it on the job).
    Cheap enough to call often; outside a handler it does nothing.
    """
    ctx = current.get()
    if ctx is not None:
        ctx.report_progress(done, total, note)


def cancelled() -> bool:
    """True once the caller has cancelled the running request.

    A thread cannot be stopped from outside: a long handler should check this now and
    then and return (or raise) early. Outside a handler it is always False.
    """
    ctx = current.get()
    return ctx is not None and ctx.cancelled


def traceparent() -> str:
    """The W3C ``traceparent`` the caller sent with the running request, or "".

    Pass it on (``Client.options(trace=traceparent())``) when the handler calls other
    services, so their work shows in the same trace.
    """
    ctx = current.get()
    return ctx.trace if ctx is not None else ""


def trace_id() -> str:
    """The 32-hex-digit trace id of the running request's ``traceparent``, or "" when the
    caller sent none: for the handler's own logs and spans."""
    return trace_id_of(traceparent())
