"""The iterators ``stream()`` returns (SPEC 7.11): `Stream` for `Client`, `AsyncStream`
for `AsyncClient`, each around a `client._credit.StreamReader` (the pure part: items
in, credit out). Leaving one early (``break``, an exception, `close`, or dropping
it) cancels the stream on the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from ._credit import StreamReader

__all__ = ["AsyncStream", "Stream", "Wakeup"]


class Stream:
    """The iterator `Client.stream` returns: ``for item in c.stream(...)``.

    Blocks for each next item, reading the sockets meanwhile if nobody else does.
    Raises the handler's error (after the items before it), `Timeout` (the whole
    ``timeout``, or ``item_timeout`` for one item), `WorkerLost` (with ``items``, how
    many arrived) and the other call errors. `close` (or leaving a ``with`` block, or
    dropping the iterator) cancels it on the worker. Use it from one thread.
    """

    def __init__(self, driver: Any, target: str, reader: StreamReader) -> None:
        self._driver = driver
        self._target = target
        self._reader = reader
        self.arrived = threading.Event()
        """Set (under the driver's lock) when an item comes or the stream ends: what a
        consumer waits on while another thread reads the sockets."""
        self.future: Any = None  # the call's future, set once the request is submitted
        self._closed = False

    def __iter__(self) -> Stream:
        return self

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __next__(self) -> Any:
        reader, fut, driver = self._reader, self.future, self._driver

        def ready() -> bool:
            return bool(reader.items) or fut.done()

        while True:
            with driver.lock:
                have = bool(reader.items)
                if have:
                    value = reader.take()
                    credit = reader.grant()
                else:
                    self.arrived.clear()  # (items come under this lock: no wake-up lost)
            if have:
                if credit:
                    driver.grant(fut._zm_id, credit)
                return value
            left = _wait_left(self, fut, StopIteration)
            driver.wait(ready, left, functools.partial(self.arrived.wait, left))

    def close(self) -> None:
        """Stop reading: cancel the stream on the worker if it has not ended. Idempotent."""
        if self._closed:
            return
        self._closed = True
        fut = self.future
        if fut is not None and not fut.done():
            fut.cancel()

    def __del__(self) -> None:
        # Dropped while open (a `break` out of a for loop): cancel it. Never block on
        # the driver's lock here: this thread may hold it (a collection in a callback).
        if self._closed or self.future is None:
            return
        lock = self._driver.lock
        if lock.acquire(blocking=False):
            lock.release()
            with contextlib.suppress(Exception):
                self.close()
        else:
            threading.Thread(target=self.close, name="zeromesh-stream-close", daemon=True).start()


class Wakeup:
    """What an `AsyncStream` waits on: set when an item comes or the stream ends. Apart
    from the stream, so the pending call does not keep the stream alive."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[None] | None = None

    def wake(self, *_: Any) -> None:
        f = self.future
        if f is not None and not f.done():
            f.set_result(None)


class AsyncStream:
    """The async iterator `AsyncClient.stream` returns: ``async for item in ac.stream(...)``.

    As `Stream`, on the client's loop: ``aclose()`` (or ``async with``, or dropping it)
    cancels it on the worker. The request goes out at the first ``__anext__``.
    """

    def __init__(
        self,
        owner: Any,
        target: str,
        reader: StreamReader,
        wakeup: Wakeup,
        start: Callable[[], Awaitable[asyncio.Future[Any]]],
    ) -> None:
        self._owner = owner
        self._target = target
        self._reader = reader
        self._wakeup = wakeup
        self._start: Callable[[], Awaitable[asyncio.Future[Any]]] | None = start
        self._future: asyncio.Future[Any] | None = None
        self._closed = False

    def __aiter__(self) -> AsyncStream:
        return self

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def __anext__(self) -> Any:
        if self._start is not None:
            start, self._start = self._start, None
            started = await start()
            if self._closed:  # closed while the request waited for a slot: cancel it
                self._owner._forget(started)
                started.cancel()
                raise StopAsyncIteration
            self._future = started
            started.add_done_callback(self._wakeup.wake)
        reader, fut = self._reader, self._future
        while True:
            if reader.items:
                value = reader.take()
                credit = reader.grant()
                if credit and fut is not None:
                    self._owner._grant(fut, credit)
                return value
            left = _wait_left(self, fut, StopAsyncIteration)
            self._wakeup.future = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._wakeup.future, left)
            except TimeoutError:
                pass
            except asyncio.CancelledError:
                self.close()
                raise

    async def aclose(self) -> None:
        """Stop reading: cancel the stream on the worker if it has not ended. Idempotent."""
        self.close()

    def close(self) -> None:
        """`aclose` for code that cannot await (on the client's loop)."""
        if self._closed:
            return
        self._closed = True
        self._start = None
        fut = self._future
        if fut is not None and not fut.done():
            self._owner._forget(fut)
            fut.cancel()

    def __del__(self) -> None:
        if self._closed or self._future is None or self._future.done():
            return
        core = self._owner._core
        if core is None or self._owner._closed:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to cancel
            core.loop.call_soon_threadsafe(self.close)


def _wait_left(stream: Stream | AsyncStream, fut: Any, stop: type[Exception]) -> float | None:
    """No item is there to hand out: raise ``stop`` (or the stream's error) if the
    stream is over, `Timeout` (cancelling it) if the item timeout passed, else return
    the seconds the consumer may still wait (None: no item bound)."""
    if stream._closed or fut is None:
        raise stop
    if fut.done():
        stream._closed = True
        exc = fut.exception()
        if exc is not None:
            raise exc
        raise stop
    left = stream._reader.wait_left()
    if left is not None and left <= 0:
        stream.close()
        raise stream._reader.item_timeout_error(stream._target)
    return left
