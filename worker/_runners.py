"""Running a handler: call it, and turn what it returned or raised into its answer.

No sockets and no scheduling here: the worker's shell decides when a job runs and on
which thread (`worker._server`), and sends the frames these functions return.

* A result becomes a REPLY; one over the message limit becomes a small ERROR
  ``LIMIT_EXCEEDED`` instead (the receiver would refuse it, and the connection with
  it); one that cannot be encoded becomes ERROR ``REMOTE`` naming the value.
* An exception becomes ERROR ``REMOTE`` with the handler's traceback (not ours), or
  ``BAD_ARGUMENTS`` when the call did not fit the handler's signature; a failed batch
  item carries its index and the results before it.
* A generator handler called as a stream (SPEC 7.11) is resumed once per credit its
  `Valve` hands out; each item it yields becomes an ITEM, its end an END, and a
  cancel closes it (its ``finally`` runs) and answers ``CANCELLED``. Called plainly,
  its answer is the list of all its items.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Generator
from dataclasses import replace
from typing import Any

import protocol
from protocol import End, Error, ErrorCode, Limits, ProtocolError

from ._jobs import Job
from ._valve import Item

__all__ = [
    "handler_error",
    "reply_frames",
    "run_async",
    "run_stream",
    "run_stream_async",
    "run_sync",
]

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
    if job.handler.streams:  # a generator called plainly: all its items, as one list
        fn = _all_items(fn)
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
    if job.handler.streams:  # an async generator called plainly: all its items
        fn = _all_async_items(fn)
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
        return _cancelled(job)
    except (Exception, SystemExit) as exc:
        return handler_error(job, exc, index, results)
    return reply_frames(job, result, limits)


def _all_items(fn: Any) -> Any:
    def all_items(*args: Any, **kwargs: Any) -> list[Any]:
        return list(fn(*args, **kwargs))

    return all_items


def _all_async_items(fn: Any) -> Any:
    async def all_items(*args: Any, **kwargs: Any) -> list[Any]:
        return [item async for item in fn(*args, **kwargs)]

    return all_items


def reply_frames(job: Job, result: Any, limits: Limits) -> list[Any]:
    """The REPLY carrying ``result``, or the ERROR that says why it cannot be sent."""
    req = job.request
    try:
        return protocol.encode_reply(req.id, result, req.codec, req.batch, limits)
    except ProtocolError as exc:
        return _unsendable(job, exc, "returned")


def _unsendable(job: Job, exc: ProtocolError, verb: str) -> list[Any]:
    """The ERROR for a value the handler ``verb`` that cannot travel: too large
    (``LIMIT_EXCEEDED``), or of a type the codec cannot carry (``REMOTE``)."""
    req = job.request
    if exc.code == ErrorCode.LIMIT_EXCEEDED:
        log.warning("%s (id %d): not sent: %s", req.target, req.id, exc)
        return protocol.encode(
            Error(req.id, exc.code, f"{req.target}: {exc}", "ProtocolError", codec=req.codec)
        )
    return protocol.encode(
        Error(
            req.id,
            ErrorCode.REMOTE,
            f"{req.target} {verb} a value that cannot be sent: {exc}",
            type="ProtocolError",
            codec=req.codec,
        )
    )


def _encoded(job: Job, value: Any, limits: Limits, scratch: list[Any]) -> Item | list[Any]:
    """One item encoded, for the valve (`protocol.item_body`, with the stream's
    ``scratch`` list); or the ERROR that ends the stream when it cannot travel."""
    req = job.request
    try:
        return protocol.item_body(value, req.codec, limits, scratch)
    except ProtocolError as exc:
        job.valve.gate.end()
        return _unsendable(job, exc, "yielded")


def _stream_end(job: Job, ended: bool) -> list[Any]:
    """END if the handler ``ended``, else (cancelled) ``CANCELLED``."""
    req = job.request
    valve = job.valve
    valve.gate.end()
    if not ended:
        return _cancelled(job)
    return protocol.encode(End(req.id, valve.gate.items, req.codec))


def _cancelled(job: Job) -> list[Any]:
    req = job.request
    return protocol.encode(
        Error(req.id, ErrorCode.CANCELLED, "cancelled by the caller", codec=req.codec)
    )


def _open(job: Job) -> tuple[Any, Any]:
    """Call a generator handler: (its valve, the generator), or (its valve, the ERROR
    frames) when the call itself failed (bad arguments)."""
    job.ran = True
    req = job.request
    try:
        return job.valve, job.handler.fn(*req.args, **req.kwargs)
    except (Exception, SystemExit) as exc:
        return job.valve, _failed(job, exc)


def _failed(job: Job, exc: BaseException) -> list[Any]:
    """The ERROR that ends a stream whose handler raised ``exc``."""
    job.valve.gate.end()
    return handler_error(job, exc, 0, [])


def run_stream(job: Job, limits: Limits) -> list[Any]:
    """Run a generator handler as a stream on this (a handler) thread: each item goes
    out through the job's valve as credit allows; returns the final answer's frames
    (END, or the ERROR that ended it). The thread waits while there is no credit."""
    steps = stream_steps(job, limits)
    valve = job.valve
    cancelled = _cancel_check(job)
    try:
        while True:
            if not next(steps):
                valve.wait(cancelled)
    except StopIteration as stop:
        return stop.value


def stream_steps(job: Job, limits: Limits) -> Generator[bool, None, list[Any]]:
    """A generator handler run as a stream, one item at a time: yields True after each
    item it made (left at the job's valve for the loop), False when it has no credit
    for the next (whoever drives it waits for a grant or a cancel, then goes on);
    returns the final answer's frames (END, or the ERROR that ended it). Driven by a
    handler thread (`run_stream`) or, in inline mode, by the loop itself."""
    valve, gen = _open(job)
    if type(gen) is list:
        return gen
    credit = 0  # taken from the valve in bulk, one per item (and one to learn the end)
    scratch: list[Any] = []  # (what `protocol.item_body` encodes with)
    try:
        while not job.cancelled:
            if not credit:
                credit = valve.take_credit()
                if not credit:
                    yield False  # (no credit, or the client is not reading)
                    continue
            try:
                item = next(gen)
            except StopIteration:
                return _stream_end(job, True)
            encoded = _encoded(job, item, limits, scratch)
            if type(encoded) is list:
                return encoded  # the ERROR: it cannot travel
            credit -= 1
            valve.leave(encoded)
            yield True
    except (Exception, SystemExit) as exc:
        return _failed(job, exc)
    finally:
        gen.close()  # a stream cut short: the generator's `finally` runs now
    return _stream_end(job, False)


async def run_stream_async(job: Job, limits: Limits) -> list[Any]:
    """`run_stream` for an async generator handler, in its task on the loop; cancelling
    the task (the client's CANCEL) closes the generator and answers ``CANCELLED``."""
    valve, agen = _open(job)
    if type(agen) is list:
        return agen
    cancelled = _cancel_check(job)
    credit = 0
    scratch: list[Any] = []
    try:
        while not job.cancelled:
            if not credit:
                credit = valve.take_credit()
                if not credit:
                    await valve.wait_async(cancelled)
                    continue
            try:
                item = await agen.__anext__()
            except StopAsyncIteration:
                return _stream_end(job, True)
            encoded = _encoded(job, item, limits, scratch)
            if type(encoded) is list:
                return encoded
            credit -= 1
            valve.leave(encoded)
    except asyncio.CancelledError:
        return _stream_end(job, False)
    except (Exception, SystemExit) as exc:
        return _failed(job, exc)
    finally:
        await agen.aclose()
    return _stream_end(job, False)


def _cancel_check(job: Job) -> Any:
    return lambda: job.cancelled


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
