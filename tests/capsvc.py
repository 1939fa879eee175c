"""A service with both kinds of handler, for the tests of what a worker runs at once.

``cap.hold`` is plain: it takes one of the worker's handler threads until the test
lets it go. ``cap.meet`` is ``async def``: it returns only once enough of its calls run
at the same moment, so a call that comes back proves they ran side by side. Neither
measures time: the tests stay free of timing assertions.
"""

from __future__ import annotations

import asyncio
import os
import time

from worker import Service, cancelled

svc = Service("cap")


@svc.handler
def hold(path: str, within: float = 20.0) -> int:
    """Wait in a handler thread until the file ``path`` exists; return the worker's pid.

    Raises:
        TimeoutError: ``path`` did not appear within ``within`` seconds (or the call
            was cancelled): the test that should have made it is gone.
    """
    deadline = time.monotonic() + within
    while not os.path.exists(path):
        if cancelled() or time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {within:g} s")
        time.sleep(0.01)
    return os.getpid()


_arrived = 0
_all_here: asyncio.Event | None = None


@svc.handler
async def meet(n: int, within: float = 20.0) -> int:
    """Return once ``n`` calls of `meet` have arrived on this worker and run together
    (one meeting per worker process); return how many arrived by then.

    Raises:
        TimeoutError: fewer than ``n`` ran at once within ``within`` seconds.
    """
    global _arrived, _all_here
    if _all_here is None:
        _all_here = asyncio.Event()
    _arrived += 1
    if _arrived >= n:
        _all_here.set()
    await asyncio.wait_for(_all_here.wait(), within)
    return _arrived
