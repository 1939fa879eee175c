"""`AsyncClient`: the same client as coroutines, on the running asyncio loop (tornado too).

No IO thread: the `Core` runs on the caller's loop, so a request costs no thread
hand-off. Create it anywhere; it binds to the loop that first uses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from protocol import DEFAULT_LIMITS, Codec, Limits, Progress, ZeromeshError
from zmqio import DEFAULT_RESOLVE_INTERVAL, ClientSecurity

from ._core import Core
from ._credit import StreamReader
from ._dispatch import Call, Slots, WorkerInfo
from ._endpoints import resolve_endpoints
from ._mapping import auto_chunksize, results_before_failure
from ._metrics import metrics_for
from ._options import Options, changed_options, check_settings, make_request, parse_codec
from ._stream import AsyncStream, Wakeup

__all__ = ["AsyncClient"]


class _AsyncCalls:
    """``call``/``submit``/``map`` with fixed `Options` (see `AsyncClient.options`)."""

    _opts: Options
    _owner: AsyncClient

    async def call(self, target: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``target`` on a worker and return its result (see `Client.call`).

        Waits for a free slot when ``max_in_flight`` requests are unanswered.
        Cancelling the awaiting task asks the worker to drop the request.
        """
        # `_start` inlined: one coroutine object less per call (with thousands of calls
        # awaiting, each is also one more for the garbage collector to walk).
        owner = self._owner
        opts = self._opts
        core = owner._core_started()
        rid, frames = make_request(target, list(args), kwargs, opts, False, owner._limits)
        if owner._in_flight >= owner.max_in_flight:
            await owner._slot_free()
        fut = owner._issue(core, target, rid, frames, opts, False)
        try:
            return await fut
        except asyncio.CancelledError:
            owner._forget(fut)
            raise

    async def submit(self, target: str, /, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        """Send a request now and return a future for its result, without awaiting it."""
        return await self._owner._start(target, list(args), kwargs, self._opts, False, True)

    async def map(
        self, target: str, /, *iterables: Iterable[Any], chunksize: int | None = None
    ) -> AsyncIterator[Any]:
        """Async ``map``: ``async for r in ac.map("math.add", xs, ys)``; results in order."""
        if not iterables:
            raise TypeError("map() needs at least one iterable of arguments")
        owner = self._owner
        core = owner._core_started()
        try:
            total: int | None = min(len(it) for it in iterables)  # type: ignore[arg-type]
        except TypeError:
            total = None
        size = chunksize or auto_chunksize(total, core.capacity())
        items = zip(*iterables, strict=False)
        window: deque[tuple[asyncio.Future[Any], int]] = deque()
        sent = 0
        exhausted = False
        try:
            while True:
                limit = min(max(4, 2 * core.capacity()), owner.max_in_flight)
                while not exhausted and len(window) < limit:
                    chunk = list(itertools.islice(items, size))
                    if not chunk:
                        exhausted = True
                        break
                    fut = await owner._start(target, chunk, {}, self._opts, True, True)
                    window.append((fut, sent))
                    sent += len(chunk)
                if not window:
                    return
                fut, first = window.popleft()
                try:
                    results = await fut
                except ZeromeshError as exc:
                    for r in results_before_failure(exc, first):
                        yield r
                    raise
                for r in results:
                    yield r
        finally:
            for fut, _ in window:
                fut.cancel()

    def stream(self, target: str, /, *args: Any, **kwargs: Any) -> AsyncStream:
        """``async for item in ac.stream("svc.gen", ...)``: a generator handler's items
        as it yields them, with flow control (see `Client.stream`). The request goes out
        when the loop first asks for an item; ``aclose()``, leaving the loop early or
        dropping the iterator cancels it on the worker."""
        opts = self._opts
        owner = self._owner
        reader = StreamReader(opts.window, opts.item_timeout)
        wakeup = Wakeup()

        def on_item(values: list[Any]) -> None:
            reader.push(values)
            wakeup.wake()

        def start() -> Any:
            return owner._start(target, list(args), kwargs, opts, False, False, on_item)

        return AsyncStream(owner, target, reader, wakeup, start)

    def options(
        self,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        codec: Codec | str | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        trace: str | None = None,
        window: int | None = None,
        item_timeout: float | None = None,
    ) -> _AsyncCalls:
        """A cheap view with other per-call settings (see `Client.options`)."""
        view = _AsyncCalls()
        view._opts = changed_options(
            self._opts, timeout, retries, codec, on_progress, trace, window, item_timeout
        )
        view._owner = self._owner
        return view


class AsyncClient(_AsyncCalls):
    """asyncio client of a zeromesh mesh; same arguments as `Client` (host names in
    endpoints included: they are looked up on a background thread, never on the loop).

    ``async with AsyncClient([...]) as ac: await ac.call("math.add", 1, 2)``.
    Use it from one event loop only (tornado's IOLoop is an asyncio loop).
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
        curve_secret: str | os.PathLike[str] | None = None,
        curve_server: str | bytes | os.PathLike[str] | Mapping[str, Any] | None = None,
        metrics: bool = False,
        resolve_interval: float = DEFAULT_RESOLVE_INTERVAL,
    ) -> None:
        self._opts = Options(timeout, retries, parse_codec(codec))
        check_settings(max_in_flight, prefetch, heartbeat, resolve_interval)
        self._resolve_interval = resolve_interval
        self.endpoints = resolve_endpoints(endpoints)
        self.max_in_flight = max_in_flight
        self._owner = self
        self._prefetch = prefetch
        self._heartbeat = heartbeat
        self._limits = limits
        self._security = ClientSecurity.from_settings(curve_secret, curve_server)
        self._metrics = metrics_for(metrics)
        self._core: Core | None = None
        self._in_flight = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        self._core_started()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AsyncClient({self.endpoints!r})"

    def close(self) -> None:
        """Fail unanswered requests and close the sockets. Idempotent."""
        self._closed = True
        if self._core is not None:
            self._core.close()
        if self._metrics is not None:
            self._metrics.unregister()

    def capacity(self) -> int:
        """Requests the ready workers said they run at once, summed (0 while none is
        ready; see `Client.capacity`). Call it on the client's loop."""
        return self._core_started().capacity()

    def slots(self) -> Slots:
        """Requests the ready workers run at once, plain and async apart (see
        `Client.slots`). Call it on the client's loop."""
        return self._core_started().slots()

    async def workers(self, timeout: float = 2.0) -> list[WorkerInfo]:
        """Ask every endpoint who it is (see `Client.workers`)."""
        core = self._core_started()
        answered: asyncio.Future[None] = core.loop.create_future()

        def on_done() -> None:
            if not answered.done():
                answered.set_result(None)

        since = core.ask_info(on_done)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answered, timeout)
        return core.info_rows(since)

    def _core_started(self) -> Core:
        if self._closed:
            raise ZeromeshError("the client is closed; create a new AsyncClient")
        core = self._core
        loop = asyncio.get_running_loop()
        if core is None:
            core = Core(
                self.endpoints,
                heartbeat=self._heartbeat,
                prefetch=self._prefetch,
                limits=self._limits,
                loop=loop,
                security=self._security,
                metrics=self._metrics,
                resolve_interval=self._resolve_interval,
            )
            core.start()
            self._core = core
        elif core.loop is not loop:
            raise ZeromeshError(
                "this AsyncClient belongs to another event loop; create one per loop"
            )
        return core

    async def _start(
        self,
        target: str,
        args: Any,
        kwargs: dict[str, Any],
        opts: Options,
        batch: bool,
        watch_cancel: bool,
        on_item: Callable[[list[Any]], None] | None = None,
    ) -> asyncio.Future[Any]:
        """Send one request once a slot is free; return its future.

        ``watch_cancel``: the future goes to the user, who may cancel it directly
        (``call`` handles its own cancellation without a callback per request).
        ``on_item``: a stream request; its items' values go there, a list per ITEM.
        """
        core = self._core_started()
        stream = on_item is not None
        rid, frames = make_request(target, args, kwargs, opts, batch, self._limits, stream)
        if self._in_flight >= self.max_in_flight:
            await self._slot_free()
        return self._issue(core, target, rid, frames, opts, watch_cancel, on_item)

    async def _slot_free(self) -> None:
        """Wait in line until fewer than ``max_in_flight`` requests are unanswered.

        A counter and a queue of futures, not an asyncio.Semaphore, whose release
        scans its waiters (O(n) per call with a thousand of them queued). Returns
        with a slot free: the caller takes it (`_issue`) before it next awaits."""
        loop = asyncio.get_running_loop()
        while self._in_flight >= self.max_in_flight:
            waiter: asyncio.Future[None] = loop.create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_next()  # we were handed a slot we will not use
                raise

    def _issue(
        self,
        core: Core,
        target: str,
        rid: int,
        frames: list[Any],
        opts: Options,
        watch_cancel: bool,
        on_item: Callable[[list[Any]], None] | None = None,
    ) -> asyncio.Future[Any]:
        """Take a slot and send the encoded request: its future."""
        self._in_flight += 1
        fut: asyncio.Future[Any] = core.loop.create_future()
        call = Call(target, frames, rid, opts.timeout, opts.retries, fut, self._complete)
        call.on_progress = opts.on_progress
        call.on_item = on_item
        fut._zm_id = rid  # type: ignore[attr-defined]
        if watch_cancel:
            fut.add_done_callback(self._on_done)
        core.submit(call)
        return fut

    def _complete(self, call: Call, value: Any, exc: BaseException | None) -> None:
        """The Core finished ``call`` (each call exactly once, unless forgotten)."""
        self._release()
        fut = call.future
        if fut.done():
            return
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)

    def _grant(self, fut: asyncio.Future[Any], credit: int) -> None:
        """The consumer of a stream read ``credit`` more items: tell its worker."""
        core = self._core
        if core is not None:
            core.grant(fut._zm_id, credit)  # type: ignore[attr-defined]

    def _on_done(self, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            self._forget(fut)

    def _forget(self, fut: asyncio.Future[Any]) -> None:
        """The caller cancelled ``fut``: tell the worker, and free its slot."""
        core = self._core
        if core is not None and core.cancel(fut._zm_id):  # type: ignore[attr-defined]
            self._release()  # its completion will never come

    def _release(self) -> None:
        self._in_flight -= 1
        self._wake_next()

    def _wake_next(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
