"""Where a streaming handler waits for credit: the shell around `StreamGate`.

A plain generator runs on a handler thread, which blocks here; an async generator
runs in a task on the loop, which awaits here. The loop thread reads the client's
CREDIT, CANCEL and DISCONNECT and wakes the waiter (SPEC 7.11).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from ._streams import StreamGate

__all__ = ["Valve"]


class Valve:
    """A `StreamGate` and the producer that waits at it: a handler thread (a plain
    generator) or a task on the loop (an async generator).

    ``send(frames)`` posts one ITEM to the client (set by the worker when it admits the
    stream). `grant` and `wake` run on the loop thread; `wait` on the handler's thread,
    `wait_async` in its task.
    """

    __slots__ = ("_cond", "_event", "gate", "send")

    def __init__(self, window: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.gate = StreamGate(window, clock)
        self.send: Callable[[list[Any]], None] = _unset
        self._cond = threading.Condition()
        self._event: asyncio.Event | None = None

    def grant(self, n: int) -> None:
        """A CREDIT came: let the producer go on if it waits."""
        with self._cond:
            if self.gate.grant(n):
                self._cond.notify()
        if self._event is not None:
            self._event.set()

    def wake(self) -> None:
        """The stream was cancelled: the waiting producer looks at ``cancelled`` again."""
        with self._cond:
            self._cond.notify()
        if self._event is not None:
            self._event.set()

    def wait(self, cancelled: Callable[[], bool]) -> bool:
        """Block until a credit is taken (True) or ``cancelled()`` (False)."""
        with self._cond:
            while not cancelled():
                if self.gate.take():
                    return True
                self._cond.wait()
            return False

    async def wait_async(self, cancelled: Callable[[], bool]) -> bool:
        """`wait` for a producer on the loop (grants come on the same thread)."""
        while not cancelled():
            if self.gate.take():
                return True
            if self._event is None:
                self._event = asyncio.Event()
            self._event.clear()
            await self._event.wait()
        return False


def _unset(frames: list[Any]) -> None:
    raise RuntimeError("Valve.send was not set: the worker posts a stream's items")
