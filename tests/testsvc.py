"""A service for tests: handlers whose behaviour a test sets per worker via environment."""

from __future__ import annotations

import logging
import os
import time

from worker import Service, cancelled, progress

svc = Service("t")

# Seconds every `delay` call sleeps on this worker (a "slow worker" is started with it set).
_DELAY = float(os.environ.get("ZM_TEST_DELAY", "0"))


@svc.handler
def delay() -> int:
    """Sleep this worker's configured delay; return its pid."""
    if _DELAY:
        time.sleep(_DELAY)
    return os.getpid()


@svc.handler
def slow_pid(seconds: float) -> int:
    """Sleep ``seconds``; return the pid that did it."""
    time.sleep(seconds)
    return os.getpid()


# `echo` calls this worker ran: a test asks `echoes` to prove a request never arrived.
_echoes = 0


@svc.handler
def echo(value):
    """Return ``value`` unchanged."""
    global _echoes
    _echoes += 1
    return value


@svc.handler
def echoes() -> int:
    """How many `echo` calls this worker has run."""
    return _echoes


@svc.handler
def big(n: int) -> str:
    """A string of ``n`` bytes: a result as large as the caller asks."""
    return "x" * n


@svc.handler
def bad_type():
    """Raise a TypeError from inside the handler: must not look like bad arguments."""
    return len(5)  # type: ignore[arg-type]


@svc.handler
def spin(seconds: float) -> int:
    """Hold the GIL in pure Python for ``seconds``."""
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return n


@svc.handler
def sleep(seconds: float) -> str:
    """Sleep in small steps, returning early once the caller cancels."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cancelled():
            return "cancelled"
        time.sleep(0.01)
    return f"slept {seconds}"


@svc.handler
def count(n: int) -> int:
    """Report progress n times."""
    for i in range(n):
        progress(i + 1, n, f"step {i + 1}")
        time.sleep(0.01)
    return n


@svc.handler
def log(text: str) -> str:
    """Log ``text`` at warning level from inside the handler; return it."""
    logging.getLogger("testsvc").warning("handler says %s", text)
    return text


@svc.handler
def trace() -> list[str]:
    """The running request's traceparent and trace id, as the handler sees them."""
    from worker import trace_id, traceparent

    logging.getLogger("testsvc").warning("tracing")
    return [traceparent(), trace_id()]
