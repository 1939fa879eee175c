"""`Executor`: a `concurrent.futures.Executor` whose work runs on zeromesh workers."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from protocol import TARGET_ATTRIBUTE

from ._client import Client

__all__ = ["Executor"]

# Set by worker.Service.handler on each decorated function (the worker package is not
# imported here: clients and workers depend on protocol only).


def target_of(fn: Callable[..., Any] | str) -> str:
    """The ``service.handler`` name to send for ``fn``.

    Raises:
        TypeError: ``fn`` is neither a name nor a function registered with a Service.
    """
    if isinstance(fn, str):
        return fn
    target = getattr(fn, TARGET_ATTRIBUTE, None)
    if not isinstance(target, str):
        name = getattr(fn, "__qualname__", repr(fn))
        raise TypeError(
            f"{name} is not a zeromesh handler: the Executor sends a handler's name, never "
            "its code. Decorate it with @svc.handler in a module the workers serve, or "
            "pass the name, e.g. 'math.add'"
        )
    return target


class Executor(cf.Executor):
    """Run registered handlers on a zeromesh mesh through the standard Executor API.

    Code written for ``ProcessPoolExecutor`` scales out by changing one line:
    ``with Executor(["tcp://hostA:5555"]) as ex: ex.submit(add, 1, 2)`` where ``add``
    is a ``@svc.handler`` function (or a name such as ``"math.add"``). Keyword
    arguments are those of `Client`.
    """

    def __init__(self, endpoints: str | Iterable[str] | None = None, **client_options: Any):
        self._client = Client(endpoints, **client_options)
        self._shutdown = False
        self._lock = threading.Lock()
        self._pending: set[cf.Future[Any]] = set()

    def submit(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` on a worker; returns a Future."""
        target = target_of(fn)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        fut = self._client.submit(target, *args, **kwargs)
        with self._lock:
            self._pending.add(fut)
        fut.add_done_callback(self._forget)
        return fut

    def _forget(self, fut: cf.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(fut)

    def map(
        self,
        fn: Callable[..., Any] | str,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """Like ``Executor.map``; results in order.

        ``chunksize`` is how many items travel per message; at the default 1 zeromesh
        picks a size from the number of items and workers (many small messages are the
        slow path). ``timeout`` bounds the whole map, as in concurrent.futures.
        """
        target = target_of(fn)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        results = self._client.map(
            target, *iterables, chunksize=chunksize if chunksize > 1 else None
        )
        if timeout is None:
            return results
        return _bounded(results, time.monotonic() + timeout)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; optionally wait for (or cancel) what is pending; close."""
        with self._lock:
            self._shutdown = True
            pending = list(self._pending)
        if cancel_futures:
            for fut in pending:
                fut.cancel()
        if wait:
            cf.wait(pending)
        self._client.close()


def _bounded(results: Iterator[Any], deadline: float) -> Iterator[Any]:
    for r in results:
        if time.monotonic() > deadline:
            raise TimeoutError("Executor.map did not finish within its timeout")
        yield r
