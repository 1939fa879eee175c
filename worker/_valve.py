"""Where a streaming handler waits for credit: the shell around `StreamGate`.

A plain generator runs on a handler thread, which blocks here; an async generator
runs in a task on the loop, which awaits here. The loop thread reads the client's
CREDIT, CANCEL and DISCONNECT and wakes the waiter (SPEC 7.11).

Items go the other way through the valve too: the producer leaves each one there,
encoded, and the loop takes all that are there when it gets to them, so those made
while it was busy leave together (batched ITEMs, `protocol.encode_items`), and the
loop is woken once for them, not once per item.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import protocol
from protocol import Codec

from ._streams import PAUSED, StreamGate

__all__ = ["Item", "Valve"]

Item = tuple[bytes, list[Any]]
"""An item as the producer leaves it: its encoded body and out-of-band frames
(`protocol.item_body`)."""


class Valve:
    """A `StreamGate` and the producer that waits at it: a handler thread (a plain
    generator) or a task on the loop (an async generator).

    `offer` leaves an item for the loop, which `take_items` them; ``post()`` (set by
    the worker when it admits the stream) asks the loop to, from any thread. `grant`,
    `wake` and `take_items` run on the loop thread; `offer` and `wait` on the
    producer's thread (a handler thread, or the loop itself in inline mode, which sets
    ``resume``: called on a grant or a cancel, to go on), `step_async` in its task.
    """

    __slots__ = (
        "_cond",
        "_event",
        "_items",
        "_lock",
        "codec",
        "gate",
        "post",
        "resume",
        "rid",
        "steps",
    )

    def __init__(
        self,
        window: int,
        rid: int = 0,
        codec: Codec = Codec.MSGPACK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rid = rid  # the stream's request id and codec: its ITEMs'
        self.codec = codec
        self.gate = StreamGate(window, clock)
        self.post: Callable[[], None] = _unset
        self.resume: Callable[[], None] | None = None
        self.steps: Any = None
        """Inline mode: the stream's steps (`worker._runners.stream_steps`), run on
        the loop a slice at a time."""
        # Taken with `with self._lock` (in C) once per item; `_cond` waits on it.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._event: asyncio.Event | None = None
        self._items: list[Item] = []

    def _leave(self, item: Item) -> None:
        """(Lock held.) One item sent, as the gate counts; the loop is asked only when
        no item was waiting: it takes them all at once."""
        self.gate.sent()
        items = self._items
        items.append(item)
        if len(items) == 1:
            self.post()

    def take_items(self) -> list[list[Any]]:
        """The ITEMs to send for the items left since the last take, in order."""
        with self._lock:
            items, self._items = self._items, []
        return protocol.encode_items(self.rid, items, self.codec)

    def grant(self, n: int) -> None:
        """A CREDIT came: let the producer go on if it waits."""
        with self._lock:
            resumed = self.gate.grant(n)
            if resumed:
                self._cond.notify()
        if self._event is not None:
            self._event.set()
        if resumed and self.resume is not None:
            self.resume()

    def wake(self) -> None:
        """The stream was cancelled: the waiting producer looks at ``cancelled`` again."""
        with self._lock:
            self._cond.notify()
        if self._event is not None:
            self._event.set()
        if self.resume is not None:
            self.resume()

    def offer(self, item: Item | None) -> bool:
        """Leave ``item`` (the last one made; None: none yet) for the loop to send, and
        take a credit for the next: True if there was one, False if not (then `wait`,
        or be resumed). One lock for both: this runs once per item."""
        with self._lock:
            if item is not None:
                self._leave(item)
            return self.gate.take()

    def wait(self, cancelled: Callable[[], bool]) -> None:
        """Block until a grant came (the gate produces again) or ``cancelled()``."""
        with self._lock:
            while not cancelled() and self.gate.state is PAUSED:
                self._cond.wait()

    async def step_async(self, item: Item | None, cancelled: Callable[[], bool]) -> bool:
        """`step` for a producer on the loop (grants come on the same thread)."""
        if item is not None:
            with self._lock:
                self._leave(item)
        while not cancelled():
            if self.gate.take():
                return True
            if self._event is None:
                self._event = asyncio.Event()
            self._event.clear()
            await self._event.wait()
        return False


def _unset() -> None:
    raise RuntimeError("Valve.post was not set: the worker posts a stream's items")
