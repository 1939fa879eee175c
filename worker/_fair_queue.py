"""Requests waiting for a free slot: bounded, and fair between the clients that sent them.

A pure data structure (no sockets, no clock, no threads), so its rules are tested on
their own (tests/test_fair_queue.py):

* **Round-robin between clients.** Each client has its own FIFO; `pop` takes the
  oldest request of the next client in turn. A client that sent 200,000 requests
  delays another client's one request by at most one request per free slot, not by
  200,000.
* **Bounded.** At most ``limit`` requests wait. When full, the client that holds the
  most waiting requests pays: a request from it is refused at once, and a request from
  any other client takes the place of that client's newest one, which is refused
  instead. A flood fills the queue but cannot keep anyone else out of it.

The caller answers what `push` hands back (OVERLOADED) and skips what `pop` returns if
it was answered meanwhile (cancelled, drained).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["FairQueue"]

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Waiting items, one FIFO per client, served in turn. Not thread-safe."""

    __slots__ = ("_hog", "_len", "_queues", "limit")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a FairQueue holds at least 1 item, not {limit}")
        self.limit = limit
        # Insertion order is the turn order: pop takes from the first client and moves
        # it to the back if it still has items.
        self._queues: dict[Hashable, deque[T]] = {}
        self._len = 0
        self._hog: Hashable | None = None  # a client believed to hold the most

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[T]:
        for queue in self._queues.values():
            yield from queue

    def waiting(self, client: Hashable) -> int:
        """How many of ``client``'s items wait."""
        queue = self._queues.get(client)
        return len(queue) if queue is not None else 0

    def push(self, client: Hashable, item: T) -> T | None:
        """Add ``client``'s ``item``; when full, return the item refused to make room.

        Returns:
            None if ``item`` was queued and nothing was refused; ``item`` itself if it
            was refused (its client holds the most already); or the newest item of the
            client that holds the most, refused in favour of ``item``.
        """
        queues = self._queues
        queue = queues.get(client)
        if self._len >= self.limit:
            hog = self._find_hog(client)
            if hog == client:
                return item
            hog_queue = queues[hog]
            refused = hog_queue.pop()
            if not hog_queue:
                del queues[hog]
            self._len -= 1
        else:
            refused = None
        if queue is None:
            queue = queues[client] = deque()
        queue.append(item)
        self._len += 1
        hog = self._hog
        if hog is None or hog not in queues or len(queue) > len(queues[hog]):
            self._hog = client
        return refused

    def pop(self) -> T | None:
        """The oldest item of the client whose turn it is, or None if none waits."""
        queues = self._queues
        if not queues:
            return None
        client = next(iter(queues))
        queue = queues.pop(client)
        item = queue.popleft()
        if queue:
            queues[client] = queue  # to the back of the turn order
        self._len -= 1
        return item

    def remove(self, client: Hashable, item: T) -> bool:
        """Take ``item`` out (its request was cancelled); False if it was not waiting."""
        queue = self._queues.get(client)
        if queue is None:
            return False
        try:
            queue.remove(item)
        except ValueError:
            return False
        if not queue:
            del self._queues[client]
        self._len -= 1
        return True

    def _find_hog(self, client: Hashable) -> Hashable:
        """The client holding the most waiting items; ``client`` itself on a tie.

        The remembered hog answers in O(1) while it floods; anyone else pays a scan,
        which happens only while the queue is full.
        """
        queues = self._queues
        if client == self._hog and client in queues:
            return client
        mine = self.waiting(client)
        hog, most = client, mine
        for other, queue in queues.items():
            if len(queue) > most:
                hog, most = other, len(queue)
        self._hog = hog
        return hog
