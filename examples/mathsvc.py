"""The example service: small arithmetic, numpy, a failing handler, slow and async ones.

Serve it with ``zeromesh-worker examples.mathsvc:svc --bind tcp://127.0.0.1:5555``.
"""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np

from zeromesh import Service, cancelled, progress

svc = Service("math")


@svc.handler
def add(a, b):
    """a + b: the smallest useful handler."""
    return a + b


@svc.handler("mean")
def _mean(arr: np.ndarray) -> np.ndarray:
    """Column means: numpy in, numpy out, no copies on the wire."""
    return arr.mean(axis=0)


@svc.handler
def scale(arr: np.ndarray, factor: float = 2.0) -> np.ndarray:
    """The array times ``factor``."""
    return arr * factor


@svc.handler
def fail(message: str = "boom"):
    """Raise ValueError: shows how a handler's exception reaches the caller."""
    raise ValueError(message)


@svc.handler
def sleep(seconds: float) -> str:
    """Block the handler thread (not the worker's socket loop) for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cancelled():
            return "cancelled"
        time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
    return f"slept {seconds}"


@svc.handler
def spin(seconds: float) -> int:
    """Pure-Python CPU work holding the GIL for ``seconds``; returns loop count."""
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return n


@svc.handler
def fib(n: int) -> int:
    """Naive Fibonacci: CPU-heavy on purpose, reports progress on the way."""
    if n > 25:
        progress(0, n, "computing")

    def f(k: int) -> int:
        return k if k < 2 else f(k - 1) + f(k - 2)

    result = f(n)
    if n > 25:
        progress(n, n, "done")
    return result


@svc.handler
def pid() -> int:
    """The serving process's pid: shows which worker answered."""
    return os.getpid()


@svc.handler
async def wait(seconds: float) -> str:
    """Sleep asynchronously: hundreds of these run at once on one worker."""
    await asyncio.sleep(seconds)
    return f"waited {seconds}"
