"""A service of generator handlers for the streaming tests (tests/test_streams.py).

Handlers that must show what happened on the worker (how far a generator ran, that
its ``finally`` ran, that it saw the cancel) write it to files under the directory
the test passes, since the test runs in another process.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import numpy as np

from worker import Service, cancelled

svc = Service("gen")


@svc.handler
def count(n: int, start: int = 0):
    """``start``, ``start + 1`` ... ``start + n - 1``."""
    yield from range(start, start + n)


@svc.handler
async def acount(n: int):
    """`count`, as an async generator (it yields to the loop between items)."""
    for i in range(n):
        await asyncio.sleep(0)
        yield i


@svc.handler
def arrays(n: int, size: int):
    """``n`` float64 arrays of ``size`` items, the i-th filled with i."""
    for i in range(n):
        yield np.full(size, float(i))


@svc.handler
def fails_after(n: int):
    """``n`` items, then a ValueError."""
    yield from range(n)
    raise ValueError(f"failed after {n} items")


@svc.handler
def plain(x: int) -> int:
    """Not a generator: a stream request to it is refused."""
    return x


def _write(path: str, text: str) -> None:
    Path(path).write_text(text)


def _pause(seconds: float) -> None:
    """Sleep ``seconds`` in small steps, cut short once the caller cancels."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not cancelled():
        time.sleep(0.01)


@svc.handler
def watched(n: int, where: str, size: int = 0, pause: float = 0.0):
    """``n`` items (``size`` bytes each when set, else their index), writing how many it
    produced to ``where``/produced as it goes, and ``where``/closed (with whether it
    saw ``cancelled()``) when its ``finally`` runs. ``pause``: seconds before each."""
    produced = 0
    try:
        for i in range(n):
            _pause(pause)
            produced += 1
            _write(os.path.join(where, "produced"), str(produced))
            yield bytes(size) if size else i
    finally:
        _write(os.path.join(where, "closed"), f"{produced} cancelled={cancelled()}")


@svc.handler
async def awatched(n: int, where: str):
    """`watched` as an async generator."""
    produced = 0
    try:
        for i in range(n):
            await asyncio.sleep(0)
            produced += 1
            _write(os.path.join(where, "produced"), str(produced))
            yield i
    finally:
        _write(os.path.join(where, "closed"), f"{produced} cancelled={cancelled()}")


@svc.handler
def blobs(n: int, size: int):
    """``n`` fresh byte strings of ``size`` bytes (a large stream, for memory checks)."""
    for _ in range(n):
        yield bytes(size)


@svc.handler
def handshake(where: str):
    """Yields 1, then waits (up to 60 s, or until cancelled) for ``where``/go, which the
    test writes only once it read the 1; then yields 2. An item held back until the
    next one is made would never arrive."""
    yield 1
    go = Path(where) / "go"
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline and not cancelled():
        time.sleep(0.01)
    yield 2


sync_svc = Service("gen")
"""The plain (not ``async``) handlers alone: a worker serving only these with
``--concurrency 1`` runs in inline mode, its streams on its loop."""
for _fn in (count, arrays, fails_after, plain, watched, blobs, handshake):
    sync_svc.handler(_fn)
