"""Running a handler: call it, and turn what it returned or raised into its answer.

No sockets and no scheduling here: the worker's shell decides when a job runs and on
which thread (`worker._server`), and sends the frames these functions return.

* A result becomes a REPLY; one over the message limit becomes a small ERROR
  ``LIMIT_EXCEEDED`` instead (the receiver would refuse it, and the connection with
  it); one that cannot be encoded becomes ERROR ``REMOTE`` naming the value.
* An exception becomes ERROR ``REMOTE`` with the handler's traceback (not ours), or
  ``BAD_ARGUMENTS`` when the call did not fit the handler's signature; a failed batch
  item carries its index and the results before it.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from dataclasses import replace
from typing import Any

import protocol
from protocol import Error, ErrorCode, Limits, ProtocolError

from ._jobs import Job

__all__ = ["handler_error", "reply_frames", "run_async", "run_sync"]

log = logging.getLogger("zeromesh.worker")

_otel_propagate: Any = None
_otel_trace: Any = None
try:  # optional: with OpenTelemetry, a traced request runs in a child span
    import opentelemetry.propagate as _otel_propagate
    import opentelemetry.trace as _otel_trace
except ImportError:  # pragma: no cover - depends on what is installed
    pass


def _span(job: Job) -> Any:
    """A SERVER span named after the target, child of the caller's traceparent: the
    handler's own spans and the calls it makes join the caller's trace."""
    req = job.request
    parent = _otel_propagate.extract({"traceparent": req.trace})
    return _otel_trace.get_tracer("zeromesh.worker").start_as_current_span(
        req.target,
        context=parent,
        kind=_otel_trace.SpanKind.SERVER,
        attributes={"rpc.system": "zeromesh", "rpc.method": req.target, "zeromesh.id": req.id},
    )


def run_sync(job: Job, limits: Limits) -> list[Any]:
    """Run a plain function handler on this thread; the frames of its answer."""
    if job.request.trace and _otel_trace is not None:
        with _span(job):
            return _run_sync(job, limits)
    return _run_sync(job, limits)


def _run_sync(job: Job, limits: Limits) -> list[Any]:
    job.ran = True
    req = job.request
    fn = job.handler.fn
    results: list[Any] = []
    try:
        if req.batch:
            # The map hot loop: one call per item, nothing else per item. On a failure,
            # len(results) is the index of the item that failed.
            kwargs = req.kwargs
            append = results.append
            if kwargs:
                for item in req.args:
                    append(fn(*item, **kwargs))
            else:
                for item in req.args:
                    append(fn(*item))
            result: Any = results
        else:
            result = fn(*req.args, **req.kwargs)
    except (Exception, SystemExit) as exc:
        return handler_error(job, exc, len(results), results)
    return reply_frames(job, result, limits)


async def run_async(job: Job, limits: Limits) -> list[Any]:
    """Run an ``async def`` handler in this task; the frames of its answer. Cancelling
    the task (the client's CANCEL) answers ``CANCELLED``."""
    if job.request.trace and _otel_trace is not None:
        with _span(job):
            return await _run_async(job, limits)
    return await _run_async(job, limits)


async def _run_async(job: Job, limits: Limits) -> list[Any]:
    job.ran = True
    req = job.request
    fn = job.handler.fn
    index = 0
    results: list[Any] = []
    try:
        if req.batch:
            for index, item in enumerate(req.args):  # noqa: B007
                results.append(await fn(*item, **req.kwargs))
            result: Any = results
        else:
            result = await fn(*req.args, **req.kwargs)
    except asyncio.CancelledError:
        return protocol.encode(
            Error(req.id, ErrorCode.CANCELLED, "cancelled by the caller", codec=req.codec)
        )
    except (Exception, SystemExit) as exc:
        return handler_error(job, exc, index, results)
    return reply_frames(job, result, limits)


def reply_frames(job: Job, result: Any, limits: Limits) -> list[Any]:
    """The REPLY carrying ``result``, or the ERROR that says why it cannot be sent."""
    req = job.request
    try:
        return protocol.encode_reply(req.id, result, req.codec, req.batch, limits)
    except ProtocolError as exc:
        if exc.code == ErrorCode.LIMIT_EXCEEDED:
            log.warning("%s (id %d): not sent: %s", req.target, req.id, exc)
            return protocol.encode(
                Error(req.id, exc.code, f"{req.target}: {exc}", "ProtocolError", codec=req.codec)
            )
        return protocol.encode(
            Error(
                req.id,
                ErrorCode.REMOTE,
                f"{req.target} returned a value that cannot be sent: {exc}",
                type="ProtocolError",
                codec=req.codec,
            )
        )


def handler_error(job: Job, exc: BaseException, index: int, results: list[Any]) -> list[Any]:
    """The ERROR for an exception the handler raised (at batch item ``index``)."""
    req = job.request
    if req.trace and _otel_trace is not None:
        span = _otel_trace.get_current_span()
        span.record_exception(exc)
        span.set_status(_otel_trace.Status(_otel_trace.StatusCode.ERROR, str(exc)))
    args = req.args[index] if req.batch else req.args
    # A batch stops at the item that failed (SPEC 7.9): say which, and what came before.
    detail = {"index": index, "results": results} if req.batch else None
    if isinstance(exc, TypeError):
        problem = job.handler.arguments_error(list(args), req.kwargs)
        if problem is not None:
            err = Error(req.id, ErrorCode.BAD_ARGUMENTS, problem, codec=req.codec, detail=detail)
            return _encode_error(err)
    # Drop our own frame: the caller wants the handler's traceback, not ours.
    tb = exc.__traceback__.tb_next if exc.__traceback__ else None
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    err = Error.from_exception(req.id, exc, req.codec, traceback=text, detail=detail)
    return _encode_error(err)


def _encode_error(err: Error) -> list[Any]:
    try:
        return protocol.encode(err)
    except ProtocolError:  # the results before a failed item do not encode: the index only
        if err.detail is None:
            raise
        return protocol.encode(replace(err, detail={"index": err.detail["index"]}))
