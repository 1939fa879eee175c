"""Host names in endpoints, looked up off the loop: the shell around `zmqio._names`.

`NameWatch` keeps an owner's connections (a client's peers, a worker's broker links) in
step with what its endpoints' host names resolve to. Lookups use the standard
library's resolver (``socket.getaddrinfo``: /etc/hosts, DNS, whatever nsswitch says) on
one daemon thread, so a slow or dead DNS server never blocks a loop or a call; the
answers are picked up by a timer on the owner's loop while lookups run. The policy
(what joined, what vanished, when to look again, what to warn about) is
`zmqio._names.NameTable`'s.
"""

from __future__ import annotations

import argparse
import logging
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ._names import DEFAULT_RESOLVE_INTERVAL, NameTable, NameUpdate

__all__ = ["Lookup", "NameWatch", "add_resolve_interval", "lookup_ipv4"]

Lookup = Callable[[str, int], list[str]]
"""``lookup(host, port)`` -> IP address strings; raises OSError when the name does not
resolve."""

_POLL_FIRST_S = 0.002
_POLL_MAX_S = 0.25


def lookup_ipv4(host: str, port: int) -> list[str]:
    """The IPv4 addresses ``host`` resolves to (``socket.getaddrinfo``), in its order.

    IPv4 only: zeromesh's sockets leave ZeroMQ's IPv6 option off, as ZeroMQ's own
    lookup of a name in an endpoint does.
    """
    infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def add_resolve_interval(p: argparse.ArgumentParser, what: str = "endpoint") -> None:
    """The ``--resolve-interval`` option of the commands that connect to endpoints."""
    p.add_argument(
        "--resolve-interval",
        type=float,
        default=DEFAULT_RESOLVE_INTERVAL,
        metavar="S",
        help=f"seconds between lookups of a host name in an {what}: every address it "
        "resolves to is joined, vanished ones are drained "
        f"(default {DEFAULT_RESOLVE_INTERVAL:g}; 0: look up once)",
    )


class _Resolver:
    """One daemon thread that runs lookups in turn; answers wait in `results`."""

    def __init__(self, lookup: Lookup) -> None:
        self._lookup = lookup
        self._requests: queue.SimpleQueue[tuple[str, str, int] | None] = queue.SimpleQueue()
        self.results: deque[tuple[str, list[str] | None, str]] = deque()
        self._thread: threading.Thread | None = None

    def submit(self, key: str, host: str, port: int) -> None:
        if self._thread is None:
            # Daemon: a lookup stuck on a dead DNS server must not keep a process alive.
            self._thread = threading.Thread(target=self._main, name="zeromesh-resolver")
            self._thread.daemon = True
            self._thread.start()
        self._requests.put((key, host, port))

    def close(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._requests.put(None)
        if thread is not threading.current_thread():
            thread.join(timeout=0.5)  # at once unless a lookup hangs; it is a daemon then

    def _main(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            key, host, port = request
            try:
                self.results.append((key, self._lookup(host, port), ""))
            except (OSError, UnicodeError, ValueError) as exc:
                self.results.append((key, None, str(exc) or type(exc).__name__))


class NameWatch:
    """Looks up the names of ``table`` now and every interval; reports what changed.

    ``on_join(address, name)``: connect to the address endpoint ``address``, which the
    endpoint ``name`` now stands for. ``on_leave(address)``: no name stands for
    ``address`` any more; send it nothing new (what it holds may finish).
    ``on_change()``: after every answer, so the owner can read ``table.unresolved()``.
    Messages go to ``log`` (the owner's logger). ``loop`` needs only ``call_later``
    (asyncio's loop, or the sync client's). Loop thread only.
    """

    def __init__(
        self,
        table: NameTable,
        loop: Any,
        *,
        log: logging.Logger,
        on_join: Callable[[str, str], None],
        on_leave: Callable[[str], None],
        on_change: Callable[[], None] | None = None,
        lookup: Lookup = lookup_ipv4,
    ) -> None:
        self.table = table
        self._loop = loop
        self._log = log
        self._on_join = on_join
        self._on_leave = on_leave
        self._on_change = on_change
        self._resolver = _Resolver(lookup)
        self._timer: Any = None
        self._in_flight = 0
        self._poll_s = _POLL_FIRST_S
        self._closed = False

    def start(self) -> None:
        """Look up every name now (the answers come in on the loop)."""
        self._look_up()

    def close(self) -> None:
        """Stop looking up. Idempotent."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._resolver.close()

    def _look_up(self) -> None:
        """Hand the due lookups to the thread; poll for their answers."""
        self._timer = None
        if self._closed:
            return
        for key, host, port in self.table.due():
            self._resolver.submit(key, host, port)
            self._in_flight += 1
        self._poll_s = _POLL_FIRST_S
        self._arm()

    def _arm(self) -> None:
        if self._closed:
            return
        if self._in_flight:
            delay = self._poll_s
            self._poll_s = min(self._poll_s * 2, _POLL_MAX_S)
            self._timer = self._loop.call_later(delay, self._poll)
            return
        due = self.table.next_due()
        if due is not None:
            self._timer = self._loop.call_later(max(0.0, due - time.monotonic()), self._look_up)

    def _poll(self) -> None:
        self._timer = None
        if self._closed:
            return
        results = self._resolver.results
        got = False
        while results:
            key, addresses, why = results.popleft()
            self._in_flight -= 1
            got = True
            if addresses is None:
                self._apply(key, self.table.failed(key, why))
            else:
                self._apply(key, self.table.resolved(key, addresses))
        if got and self._on_change is not None:
            self._on_change()
        if not self._in_flight:
            self._look_up()  # anything due meanwhile (a retry), else sleep until due
        else:
            self._arm()

    def _apply(self, name: str, update: NameUpdate) -> None:
        if update.warning:
            self._log.warning("%s", update.warning)
        if update.note:
            self._log.info("%s", update.note)
        for address in update.joined:
            try:
                self._on_join(address, name)
            except Exception:  # one bad address must not stop the others
                self._log.exception("cannot connect to %s (from %s)", address, name)
        for address in update.vanished:
            try:
                self._on_leave(address)
            except Exception:
                self._log.exception("cannot drain %s (it left %s)", address, name)
