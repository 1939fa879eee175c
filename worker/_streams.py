"""Credit of one stream (SPEC 7.11): how many items the worker may still send.

`StreamGate` is the pure rule, in the manner of `broker._scheduler` (plain counts and
states, the clock injected, tested with a fake one in tests/test_streams.py). The
worker's shell around it is `worker._valve.Valve`: the thread or task that runs a
streaming handler waits there for credit, and the loop thread, which reads the
client's CREDIT, CANCEL and DISCONNECT, wakes it.

The handler is resumed only after a credit was taken, so a consumer that stops
granting leaves the generator paused at its ``yield``: at most ``window`` items are
ever ahead of what the client has read, and the worker's memory stays flat.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["ENDED", "PAUSED", "PRODUCING", "StreamGate"]

PRODUCING, PAUSED, ENDED = "producing", "paused", "ended"


class StreamGate:
    """The credit of one stream: its ``window``, plus every grant, minus the items taken.

    States: PRODUCING while it holds credit (the handler may run to its next item),
    PAUSED once it ran out (since ``paused_at``), ENDED when the stream is over. Not
    thread-safe: `worker._valve.Valve` guards it.
    """

    __slots__ = ("clock", "credit", "items", "paused_at", "paused_s", "state")

    def __init__(self, window: int, clock: Callable[[], float] = time.monotonic) -> None:
        if window < 1:
            raise ValueError(f"a stream's window is at least 1, not {window}")
        self.clock = clock
        self.credit = window
        self.items = 0
        """Items sent so far (the END's ``items``)."""
        self.state = PRODUCING
        self.paused_at = 0.0
        self.paused_s = 0.0
        """Seconds spent paused for want of credit, all together."""

    def take(self) -> bool:
        """Use one credit to produce the next item: True if there was one; else the
        stream is PAUSED until a `grant`."""
        if self.state is ENDED:
            return False
        if self.credit > 0:
            self.credit -= 1
            return True
        if self.state is not PAUSED:
            self.state = PAUSED
            self.paused_at = self.clock()
        return False

    def take_all(self, most: int) -> int:
        """Use the credit there is, up to ``most`` (the producer makes that many items
        before it asks again): how many; 0 leaves the stream PAUSED until a `grant`."""
        if self.state is ENDED:
            return 0
        n = min(self.credit, most)
        if n > 0:
            self.credit -= n
            return n
        if self.state is not PAUSED:
            self.state = PAUSED
            self.paused_at = self.clock()
        return 0

    def grant(self, n: int) -> bool:
        """The client lets ``n`` more items go. True if that resumes a paused stream."""
        if self.state is ENDED or n <= 0:
            return False
        self.credit += n
        if self.state is PAUSED:
            self.state = PRODUCING
            self.paused_s += self.clock() - self.paused_at
            return True
        return False

    def sent(self) -> None:
        """One item went to the client."""
        self.items += 1

    def end(self) -> None:
        """The stream is over (ended, failed or cancelled): no more credit counts."""
        self.state = ENDED
