"""The web demo's service: the heavy work a Flask or Celery app would do, moved to workers.

Serve it and put the HTTP gateway in front::

    zeromesh-worker examples.demosvc:svc --bind tcp://127.0.0.1:5555
    zeromesh-gateway --listen 127.0.0.1:8080 --connect tcp://127.0.0.1:5555

- ``demo.fib(n)``: CPU-bound pure Python (naive Fibonacci); reports progress and stops
  early when cancelled. ``fib(23)`` takes about 10 ms on a 2020s core.
- ``demo.wait(ms)``: an ``async`` handler awaiting ``ms`` milliseconds, standing in for a
  database or HTTP call; one worker runs up to ``--max-async`` of them at once.
- ``demo.steps(n, ms)``: a long batch job of ``n`` steps of ``ms`` each, with progress
  after every step and a check for cancellation before each.
- ``demo.histogram(values, bins)``: numpy in the handler, numpy arrays in the result.
- ``demo.primes(n, ms)``: a generator, so it streams: the first ``n`` primes, each as
  it is found (``POST /stream/demo.primes`` at the gateway).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np

from zeromesh import Service, cancelled, progress

__all__ = ["Stopped", "fib", "histogram", "primes", "steps", "svc", "wait"]

svc = Service("demo")

MAX_FIB = 60
"""Largest ``n`` fib accepts: fib(40) already takes about a minute in pure Python."""

_LEAF = 20  # subtrees this small run without bookkeeping (about 2 ms each)
_PROGRESS_EVERY = 0.1  # seconds between progress reports


class Stopped(Exception):
    """The caller cancelled the request; the handler gave up early."""


@svc.handler
def fib(n: int) -> int:
    """The ``n``-th Fibonacci number, computed the slow way (exponential recursion).

    Raises:
        ValueError: ``n`` is not an integer from 0 to `MAX_FIB`.
        Stopped: the caller cancelled the request.
    """
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_FIB:
        raise ValueError(f"n must be an integer from 0 to {MAX_FIB}, not {n!r}")
    if n <= _LEAF:
        return _naive(n)
    total = _calls(n)
    done = 0
    last = start = time.monotonic()

    def tracked(k: int) -> int:
        # The top of the call tree reports and checks cancel; its leaves run bare.
        nonlocal done, last
        if k > _LEAF:
            return tracked(k - 1) + tracked(k - 2)
        if cancelled():
            raise Stopped(f"fib({n}) cancelled")
        value = _naive(k)
        done += _calls(k)
        now = time.monotonic()
        if now - last >= _PROGRESS_EVERY:
            last = now
            progress(done, total, f"fib({n})")
        return value

    result = tracked(n)
    if last > start:  # progress was shown: end it at 100% (short calls send none)
        progress(total, total, f"fib({n})")
    return result


def _naive(k: int) -> int:
    return k if k < 2 else _naive(k - 1) + _naive(k - 2)


def _calls(k: int) -> int:
    """How many calls `_naive` makes for ``k``: 2 * F(k + 1) - 1."""
    a, b = 0, 1
    for _ in range(k + 1):
        a, b = b, a + b
    return 2 * a - 1


@svc.handler
async def wait(ms: float) -> float:
    """Await ``ms`` milliseconds (a stand-in for a database query); return ``ms``."""
    if isinstance(ms, bool) or not isinstance(ms, int | float) or not 0 <= ms <= 3_600_000:
        raise ValueError(f"ms must be a number from 0 to 3600000, not {ms!r}")
    await asyncio.sleep(ms / 1000)
    return ms


@svc.handler
def steps(n: int, ms: float = 100) -> int:
    """A long job: ``n`` steps of ``ms`` milliseconds each; returns ``n``.

    Reports ``progress(i, n)`` after each step and checks ``cancelled()`` before each,
    so a cancel stops it within one step.

    Raises:
        Stopped: the caller cancelled the request.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, not {n!r}")
    for i in range(n):
        if cancelled():
            raise Stopped(f"steps cancelled after {i} of {n}")
        time.sleep(ms / 1000)
        progress(i + 1, n, f"step {i + 1} of {n}")
    return n


@svc.handler
def histogram(values: list[float], bins: int = 10) -> dict[str, np.ndarray]:
    """``numpy.histogram`` of ``values``: ``{"counts": int64 array, "edges": float64 array}``."""
    counts, edges = np.histogram(np.asarray(values, dtype=np.float64), bins=bins)
    return {"counts": counts, "edges": edges}


@svc.handler
def primes(n: int, ms: float = 0) -> Iterator[int]:
    """The first ``n`` primes, yielded one at a time as they are found (a streaming
    handler); ``ms``: milliseconds to pause before each, to stand in for slow work."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, not {n!r}")
    found: list[int] = []
    candidate = 2
    while len(found) < n:
        if all(candidate % p for p in found if p * p <= candidate):
            found.append(candidate)
            if ms:
                time.sleep(ms / 1000)
            yield candidate
        candidate += 1
