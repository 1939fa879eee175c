"""The handlers the benchmarks call: as small as a handler can be, and one CPU-bound."""

from __future__ import annotations

from worker import Service

svc = Service("bench")


@svc.handler
def echo(value):
    """Return ``value``: the round trip is all there is to time."""
    return value


@svc.handler
def add(a, b):
    """a + b: the ``map`` item."""
    return a + b


@svc.handler
def cpu(ms: float) -> int:
    """Burn about ``ms`` milliseconds of pure-Python CPU (holding the GIL)."""
    n = int(ms * _LOOPS_PER_MS)
    total = 0
    for i in range(n):
        total += i * i
    return total


def _calibrate() -> float:
    import time

    start = time.perf_counter()
    total = 0
    for i in range(200_000):
        total += i * i
    return 200_000 / ((time.perf_counter() - start) * 1000)


_LOOPS_PER_MS = _calibrate()
