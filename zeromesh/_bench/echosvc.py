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
def count(n: int):
    """0 .. n-1, streamed: the stream row's items."""
    yield from range(n)


@svc.handler
def cpu(loops: int) -> int:
    """Burn CPU in pure Python (holding the GIL): ``loops`` turns of a tiny loop.

    The bench sizes ``loops`` once, in its own process (`loops_per_ms`), so every worker
    does the same work per call: a worker that timed itself while the machine was busy
    would do less per "millisecond" than one that timed itself on a quiet machine.
    """
    total = 0
    for i in range(loops):
        total += i * i
    return total


def loops_per_ms(sample: int = 200_000) -> float:
    """How many `cpu` loops take a millisecond here (best of three samples)."""
    import time

    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        cpu(sample)
        best = min(best, time.perf_counter() - start)
    return sample / (best * 1000)
