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
from collections import deque
from collections.abc import Callable
from typing import Any

import protocol
from protocol import Codec

from ._streams import PAUSED, StreamGate

__all__ = ["BLOCKED_RECHECK_S", "Item", "Valve"]

BLOCKED_RECHECK_S = 0.01
"""How often a stream held back by a client that does not read looks again."""
CREDIT_TAKEN = 64
"""Credit a producer takes at once: it looks whether its client reads every that many
items (a window of a billion must not mean a billion items before it looks)."""

Item = bytes | tuple[bytes, list[Any]]
"""An item as the producer leaves it, encoded (`protocol.item_body`)."""


class Valve:
    """A `StreamGate` and the producer that waits at it: a handler thread (a plain
    generator), the loop itself (inline mode), or a task on the loop (an async
    generator).

    The producer takes credit in bulk (`take_credit`), makes that many items, and
    `leave`s each one; ``post()`` (set by the worker when it admits the stream) asks
    the loop to `take_items`, from any thread, once per batch. Out of credit it
    `wait`s (or `wait_async`s) for a grant; in inline mode ``resume`` (set by the
    worker) is called on a grant or a cancel instead, to go on. `grant`, `wake` and
    `take_items` run on the loop thread (or the inline watchdog's, holding the socket
    lock).
    """

    __slots__ = (
        "_back",
        "_cond",
        "_event",
        "_items",
        "_lock",
        "_posted",
        "blocked",
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
        self.blocked: Callable[[], bool] | None = None
        """Set by the worker: whether the client's answers pile up unread (its output
        is over ``max_peer_output``). The stream then makes nothing, credit or not: a
        client that grants without reading must not fill the worker's memory."""
        self.steps: Any = None
        """Inline mode: the stream's steps (`worker._runners.stream_steps`), run on
        the loop a slice at a time."""
        # Guards the gate (credit) between the producer and the loop; `_cond` waits on it.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._event: asyncio.Event | None = None
        # Items made and not taken yet. No lock: a deque's append and popleft are
        # atomic, and `_posted` is cleared before the loop takes, so an item left while
        # it takes is either taken then or asks again (at worst a spare post).
        self._items: deque[Item] = deque()
        self._posted = False
        self._back: list[list[Any]] = []  # ITEMs taken and not sent (`put_back`)

    def leave(self, item: Item) -> None:
        """Producer: one item made, for the loop to send."""
        self.gate.sent()
        self._items.append(item)
        if not self._posted:
            self._posted = True
            self.post()

    def take_items(self) -> list[list[Any]]:
        """The ITEMs to send for the items left so far, in order (those `put_back`
        first). Its callers hold the worker's socket lock: one takes at a time."""
        self._posted = False
        back, self._back = self._back, []
        items = self._items
        if not items:
            return back
        taken = [items.popleft() for _ in range(len(items))]
        return back + protocol.encode_items(self.rid, taken, self.codec)

    def put_back(self, messages: list[list[Any]]) -> None:
        """ITEMs taken that could not be sent (the inline watchdog found the pipe
        full): the next `take_items` returns them first; the loop is asked to."""
        self._back = messages + self._back
        self._posted = True
        self.post()

    def waiting(self) -> bool:
        """Whether items were left (or put back) and not taken yet."""
        return bool(self._items or self._back)

    def take_credit(self) -> int:
        """Producer: the credit there is, up to `CREDIT_TAKEN` (`StreamGate.take_all`);
        0: `wait` (for a grant, or for the client to read what waits for it)."""
        if self.blocked is not None and self.blocked():
            return 0
        with self._lock:
            return self.gate.take_all(CREDIT_TAKEN)

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

    def wait(self, cancelled: Callable[[], bool]) -> None:
        """Producer thread: block until a grant came (the gate produces again) and the
        client reads, or ``cancelled()``."""
        with self._lock:
            while not cancelled():
                if self.blocked is not None and self.blocked():
                    self._cond.wait(BLOCKED_RECHECK_S)
                elif self.gate.state is PAUSED:
                    self._cond.wait()
                else:
                    return

    async def wait_async(self, cancelled: Callable[[], bool]) -> None:
        """`wait` for a producer on the loop (grants come on the same thread)."""
        while not cancelled():
            if self.blocked is not None and self.blocked():
                await asyncio.sleep(BLOCKED_RECHECK_S)
            elif self.gate.state is PAUSED:
                if self._event is None:
                    self._event = asyncio.Event()
                self._event.clear()
                await self._event.wait()
            else:
                return


def _unset() -> None:
    raise RuntimeError("Valve.post was not set: the worker posts a stream's items")
