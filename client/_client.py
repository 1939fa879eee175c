"""`Client`: the blocking, thread-safe facade over one IO thread that owns the sockets.

Callers encode their request (so a value that cannot travel fails in the caller, at
once), append it to a deque and wake the IO thread through an eventfd — only when it
is not already awake, so a burst of submits costs one wake-up. The IO thread runs the
`Core` on its own asyncio loop and resolves ``concurrent.futures.Future`` objects.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import protocol
from protocol import DEFAULT_LIMITS, Codec, Limits, Progress, Request, ZeromeshError

from ._core import Call, Core, WorkerInfo, next_id
from ._endpoints import resolve_endpoints
from ._mapping import run_map

__all__ = ["Client", "Options"]

log = logging.getLogger("zeromesh.client")


@dataclass(frozen=True, slots=True)
class Options:
    """Per-call settings: never mixed with the handler's own keyword arguments."""

    timeout: float = 30.0
    """Seconds to wait for the reply (``Timeout``/``NoWorkers`` after)."""
    retries: int = 2
    """Re-sends when the worker holding a request is lost (at-least-once)."""
    codec: Codec = Codec.MSGPACK
    """Body codec of the requests sent."""
    on_progress: Callable[[Progress], None] | None = None
    """Called with each PROGRESS message a running handler sends (``worker.progress``).
    For `Client` it runs on the IO thread: keep it quick, never block in it."""

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, not {self.timeout!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0, not {self.retries!r}")


def make_request(
    target: str, args: Any, kwargs: dict[str, Any], opts: Options, batch: bool
) -> tuple[int, list[Any]]:
    """Encode a request in the caller's thread: bad targets and values fail here."""
    if not isinstance(target, str) or "." not in target:
        raise ValueError(f"call target {target!r} must be 'service.handler', e.g. 'math.add'")
    rid = next_id()
    ttl = min(int(opts.timeout * 1000), 2**32 - 1)
    return rid, protocol.encode(Request(rid, target, args, kwargs, ttl, opts.codec, batch))


class _Future(cf.Future):  # type: ignore[type-arg]
    """A future that, when cancelled, tells the worker to drop the request."""

    _zm_cancel: Any = None

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled and self._zm_cancel is not None:
            self._zm_cancel()
        return cancelled


class _Calls:
    """``call``/``submit``/``map`` with a fixed set of `Options` (see `Client.options`)."""

    _opts: Options
    _io: _IOThread

    def call(self, target: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``target`` ("service.handler") on a worker and return its result.

        Keyword arguments go to the handler. Raises the handler's failure as
        `RemoteError`, and `Timeout`, `NoWorkers`, `WorkerLost`, `UnknownHandler`,
        `BadArguments`, `ProtocolError` for the rest. Thread-safe.
        """
        return self.submit(target, *args, **kwargs).result()

    def submit(self, target: str, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Send a request; return a `concurrent.futures.Future` for its result.

        Blocks while the client holds ``max_in_flight`` unanswered requests
        (backpressure). numpy arguments are sent without a copy: do not modify them
        until the future is done. Cancelling the future asks the worker to drop it.
        """
        return self._io.submit(target, list(args), kwargs, self._opts, False)

    def map(
        self,
        target: str,
        /,
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        progress: bool = False,
    ) -> Iterator[Any]:
        """Like the builtin ``map``, run on workers: results in order, streamed.

        Items travel ``chunksize`` to a message (default: chosen from the number of
        items and workers). A failing item raises its error after the results before
        it were yielded. ``progress=True`` shows a tqdm progress bar.
        """
        return run_map(self._io, target, iterables, self._opts, chunksize, progress)

    def options(
        self,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        codec: Codec | str | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> _Calls:
        """A cheap view of this client with other per-call settings.

        ``client.options(timeout=0.5, retries=0).call("math.add", 1, 2)``
        """
        view = _Calls()
        view._opts = changed_options(self._opts, timeout, retries, codec, on_progress)
        view._io = self._io
        return view


def changed_options(
    opts: Options,
    timeout: float | None,
    retries: int | None,
    codec: Codec | str | None,
    on_progress: Callable[[Progress], None] | None,
) -> Options:
    """``opts`` with the settings that are not None replaced (validated)."""
    changes: dict[str, Any] = {}
    if on_progress is not None:
        changes["on_progress"] = on_progress
    if timeout is not None:
        changes["timeout"] = timeout
    if retries is not None:
        changes["retries"] = retries
    if codec is not None:
        changes["codec"] = _codec(codec)
    return replace(opts, **changes)


def check_settings(max_in_flight: int, prefetch: int, heartbeat: float) -> None:
    """Validate the constructor settings shared by `Client` and `AsyncClient`."""
    if not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ValueError(f"max_in_flight must be an integer >= 1, not {max_in_flight!r}")
    if not isinstance(prefetch, int) or prefetch < 0:
        raise ValueError(f"prefetch must be an integer >= 0, not {prefetch!r}")
    if not heartbeat >= 0.05:
        raise ValueError(f"heartbeat must be at least 0.05 seconds, not {heartbeat!r}")


def _codec(codec: Codec | str) -> Codec:
    if isinstance(codec, Codec):
        return codec
    try:
        return Codec[str(codec).upper()]
    except KeyError:
        raise ValueError(f"codec {codec!r}: use 'msgpack' or 'json'") from None


class Client(_Calls):
    """Blocking, thread-safe client of a zeromesh mesh.

    ``Client(["tcp://hostA:5555", "ipc:///tmp/zm/w1.sock"])`` connects to every
    endpoint (workers or brokers); requests go to the least busy worker that serves
    them. Endpoints default to ``$ZEROMESH_ENDPOINTS``. Use it as a context manager, or
    call `close`.

    Args:
        endpoints: endpoint strings, or one comma-separated string.
        timeout: default seconds to wait for a reply.
        retries: default re-sends when a worker is lost while holding a request.
            Requests may therefore run more than once: at-least-once delivery.
        max_in_flight: unanswered requests held before `submit` blocks.
        prefetch: requests queued at a worker beyond its capacity, so short calls
            pipeline; 0 for long jobs (none waits behind a busy worker).
        codec: "msgpack" (default) or "json".
        heartbeat: seconds between pings; a worker silent for 3 is lost.
    """

    def __init__(
        self,
        endpoints: str | Iterable[str] | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 2,
        max_in_flight: int = 1000,
        prefetch: int = 100,
        codec: Codec | str = Codec.MSGPACK,
        heartbeat: float = 1.0,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._opts = Options(timeout, retries, _codec(codec))
        check_settings(max_in_flight, prefetch, heartbeat)
        self.endpoints = resolve_endpoints(endpoints)
        self._io = _IOThread(self.endpoints, max_in_flight, prefetch, heartbeat, limits)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.endpoints!r})"

    def close(self) -> None:
        """Fail unanswered requests, close sockets, stop the IO thread. Idempotent."""
        self._io.close()

    def workers(self, timeout: float = 2.0) -> list[WorkerInfo]:
        """Ask every endpoint who it is: one dict per endpoint (state, services, pid...)."""
        return self._io.run(lambda core: core.info(timeout), timeout + 5)


class _IOThread:
    """Owns the `Core` and its loop; everything else reaches it through `_inbox`."""

    def __init__(
        self,
        endpoints: list[str],
        max_in_flight: int,
        prefetch: int,
        heartbeat: float,
        limits: Limits,
    ) -> None:
        self.max_in_flight = max_in_flight
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._inbox: deque[Any] = deque()
        self._awake = False
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._closed = False
        self._close_lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self.core = Core(
            endpoints, heartbeat=heartbeat, prefetch=prefetch, limits=limits, loop=self._loop
        )
        started = cf.Future[None]()
        self._thread = threading.Thread(
            target=self._main, args=(started,), name="zeromesh-client-io", daemon=True
        )
        self._thread.start()
        try:
            started.result()
        except BaseException:
            self._thread.join()
            os.close(self._wake_fd)
            raise

    def _main(self, started: cf.Future[None]) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            self.core.start()
            loop.add_reader(self._wake_fd, self._drain_inbox)
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            return
        started.set_result(None)
        try:
            loop.run_forever()
        finally:
            loop.remove_reader(self._wake_fd)
            self.core.close()
            self._drain_inbox()  # fail what arrived during shutdown
            loop.close()

    # --- the hand-off ------------------------------------------------------------------------

    def _post(self, item: Any) -> None:
        self._inbox.append(item)
        if not self._awake:
            self._awake = True
            fd = self._wake_fd
            if fd >= 0:  # -1 once closed: never write to a number the OS may reuse
                os.eventfd_write(fd, 1)

    def _drain_inbox(self) -> None:
        # Consume the wake-up first, then lower the flag, then drain: an append racing
        # with us either lands before the flag drops (and this drain sees it) or sees
        # the flag down and writes the eventfd again. Lowering the flag before reading
        # the eventfd could swallow that write and leave the flag up forever.
        with contextlib.suppress(BlockingIOError, OSError):
            os.eventfd_read(self._wake_fd)
        self._awake = False
        inbox = self._inbox
        core = self.core
        while inbox:
            item = inbox.popleft()
            if type(item) is Call:
                core.submit(item)
            else:
                item(core)

    # --- API used by the facades -------------------------------------------------------------

    def submit(
        self, target: str, args: Any, kwargs: dict[str, Any], opts: Options, batch: bool
    ) -> cf.Future[Any]:
        if self._closed:
            raise ZeromeshError("the client is closed; create a new Client")
        rid, frames = make_request(target, args, kwargs, opts, batch)
        fut = _Future()
        self._slots.acquire()
        call = Call(target, frames, rid, opts.timeout, opts.retries, fut, self._complete)
        call.on_progress = opts.on_progress
        fut._zm_cancel = lambda: self._post(lambda core: core.cancel(rid))
        self._post(call)
        return fut

    def _complete(self, call: Call, value: Any, exc: BaseException | None) -> None:
        self._slots.release()
        fut = call.future
        if fut.cancelled():
            return
        try:
            if exc is None:
                fut.set_result(value)
            else:
                fut.set_exception(exc)
        except cf.InvalidStateError:  # cancelled between the check and now
            pass

    def run(self, fn: Any, timeout: float) -> Any:
        """Run coroutine ``fn(core)`` on the IO loop and wait for its result."""
        if self._closed:
            raise ZeromeshError("the client is closed")
        result = cf.Future[Any]()

        def start(core: Core) -> None:
            task = self._loop.create_task(fn(core))
            task.add_done_callback(
                lambda t: (
                    result.set_exception(t.exception())
                    if t.exception()
                    else result.set_result(t.result())
                )
            )

        self._post(start)
        return result.result(timeout)

    def capacity(self) -> int:
        return self.core.capacity()

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        if self._thread.is_alive():
            self._post(lambda core: self._loop.stop())
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                log.error("client IO thread did not stop within 10 s")
        fd, self._wake_fd = self._wake_fd, -1
        os.close(fd)
