"""A service for tests: handlers whose behaviour a test sets per worker via environment."""

from __future__ import annotations

import os
import time

from worker import Service

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


@svc.handler
def echo(value):
    """Return ``value`` unchanged."""
    return value


@svc.handler
def bad_type():
    """Raise a TypeError from inside the handler: must not look like bad arguments."""
    return len(5)  # type: ignore[arg-type]
