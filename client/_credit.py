"""A stream's credit on the client (SPEC 7.11): the items received and not yet read, and
the credit owed to the worker. A pure core (a clock injected, tested with a fake one in
tests/test_streams.py); the iterators in `client._stream` drive it.

The consumer's reads are what grant credit, so at most ``window`` items are ever ahead
of it: received and unread, or on their way, or allowed and not yet made. The reader
grants what was read once half the window has been read, so a consumer that keeps up
rarely leaves the worker waiting, at one CREDIT per half window.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from protocol import Timeout

__all__ = ["StreamReader"]


class StreamReader:
    """What one stream's consumer has received, read, and owes the worker in credit.

    ``window``: items allowed ahead of the consumer. ``item_timeout``: seconds the
    consumer waits for each next item (None: no bound of its own). Not thread-safe:
    `Client` touches it under its driver's lock, `AsyncClient` on its loop.
    """

    __slots__ = (
        "clock",
        "item_timeout",
        "items",
        "read",
        "received",
        "threshold",
        "ungranted",
        "waiting_since",
        "window",
    )

    def __init__(
        self, window: int, item_timeout: float | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self.item_timeout = item_timeout
        self.clock = clock
        self.items: deque[Any] = deque()
        self.received = 0
        """Items that arrived (`WorkerLost.items` when the worker is lost)."""
        self.read = 0
        self.ungranted = 0
        """Items read and not yet given back to the worker as credit."""
        self.threshold = max(1, window // 2)
        self.waiting_since = 0.0

    def push(self, values: list[Any]) -> None:
        """An ITEM arrived, with these items (one, or several batched)."""
        self.items.extend(values)
        self.received += len(values)

    def take(self) -> Any:
        """The next item (there is one: check `items` first), read by the consumer."""
        self.read += 1
        self.ungranted += 1
        self.waiting_since = 0.0
        return self.items.popleft()

    def grant(self) -> int:
        """Credit to send the worker now (0: not yet, less than half a window read)."""
        if self.ungranted < self.threshold:
            return 0
        n, self.ungranted = self.ungranted, 0
        return n

    def wait_left(self) -> float | None:
        """Seconds the consumer may still wait for the next item (None: no item bound;
        at most 0 once it waited ``item_timeout``). The wait starts at the first ask."""
        if self.item_timeout is None:
            return None
        now = self.clock()
        if not self.waiting_since:
            self.waiting_since = now
        return self.item_timeout - (now - self.waiting_since)

    def item_timeout_error(self, target: str) -> Timeout:
        return Timeout(
            f"{target}: no stream item within {self.item_timeout:g} s (after {self.received} "
            "item(s)); the stream was cancelled (raise it with options(item_timeout=...))"
        )
