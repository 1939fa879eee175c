"""The shell a worker and a broker share: a ROUTER on an asyncio loop, from bind to exit.

Both bind one ROUTER on their endpoints (with CURVE and a ZAP handler when configured),
drain it in batches when its FD is readable, answer through an `Outbox`, re-read the
allowed client keys on SIGHUP, start a graceful drain on SIGTERM/SIGINT (or
`request_stop` from any thread), wait a bounded time for what they hold, give clients
a moment to read the last answers, and close. `RouterServer` does that once; the
worker and the broker fill in what they do with messages (`pump`) and what a drain
means for them (`_begin_drain`, `_drain`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from protocol import Limits, StartupError

from ._frames import has_input
from ._outbox import Outbox
from ._security import ALLOW_ANY, Gatekeeper, Security
from ._sockets import BindError, bind_router, new_context

__all__ = ["EXIT_INTERNAL_ERROR", "HANGUP_GRACE_S", "RouterServer", "freeze_startup_heap"]

EXIT_INTERNAL_ERROR = 4
"""Exit status after a background task failed (a bug in zeromesh): beside 2 (cannot
start), 3 (drain timed out) and the worker's 70 (a handler overran --hard-timeout)."""

HANGUP_GRACE_S = 0.2
"""After a drain: time for clients to read our last messages. Clients connect with
IMMEDIATE=1, and when we hang up their libzmq drops what it received but they had not
read yet (the last replies, the DISCONNECT, a hard-timeout Timeout)."""

_CLOSE_LINGER_MS = 2000  # let the last answers leave; a dead peer cannot hang exit


def freeze_startup_heap() -> None:
    """For a process that is a server (the ``zeromesh-worker`` and ``zeromesh-broker``
    commands, just before they serve): collect, then freeze what is left (modules, the
    services, the configuration) out of the garbage collector's passes. Those objects
    live as long as the process, and each full pass walked them all: a worker running
    ``map`` batches, whose argument lists live long enough to be promoted, spent a
    fifth of its time there (``map`` of 500k additions over 2 workers: 1.14-1.22M to
    1.41-1.52M items/s). Not for a library's caller: it would keep that program's
    startup garbage cycles forever."""
    gc.collect()
    gc.freeze()


class RouterServer:
    """Lifecycle of one ROUTER-based process. Loop thread only, apart from
    `request_stop`, which any thread (or a signal handler) may call.

    Subclasses implement `pump` (drain the socket and act), `_bind` (call
    `_bind_router`), `_begin_drain` and `_drain`, and may override `_start` (more
    sockets, threads, timers; return tasks to cancel at the end) and `_close`.
    """

    def __init__(self, log: logging.Logger) -> None:
        self.endpoints: list[str] = []
        self.exit_code = 0
        self._log = log
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._outbox: Outbox = None  # type: ignore[assignment]  # set by _bind_router
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._pump_scheduled = False
        self._gatekeeper: Gatekeeper | None = None
        self.forbidden = 0
        """Requests refused because the sender's key may not call the service."""

    # --- what subclasses fill in ----------------------------------------------------------

    def pump(self) -> None:
        """Drain the socket in a batch and act on what arrived."""
        raise NotImplementedError

    def _bind(self) -> None:
        raise NotImplementedError

    def _start(self, loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
        """After the bind, before serving: start what else runs; tasks are cancelled
        at the end. May raise `StartupError`."""
        return []

    def _begin_drain(self, reason: str) -> None:
        raise NotImplementedError

    async def _drain(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        """Before the ROUTER closes: stop threads, close other sockets."""

    # --- lifecycle -------------------------------------------------------------------------

    def run(self) -> int:
        """Serve on a new event loop until drained; returns the exit status."""
        return asyncio.run(self.serve())

    async def serve(self) -> int:
        """Bind, serve until SIGTERM/SIGINT or `request_stop`, drain, close.

        Returns the exit status (`exit_code`, 0 after a clean drain).

        Raises:
            StartupError: an endpoint cannot be bound, or the process cannot start.
        """
        self._loop = loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._ctx = new_context()
        try:
            self._bind()
            tasks = self._start(loop)
            for task in tasks:
                task.add_done_callback(self._task_ended)
        except BaseException:
            self._stop_gatekeeper()
            self._ctx.destroy(linger=0)  # closes every socket made so far
            raise
        sock = self._sock
        assert sock is not None
        loop.add_reader(sock.FD, self.pump)
        installed = self._install_signals(loop)
        loop.call_soon(self.pump)
        try:
            await self._stopped.wait()
            await self._drain()
        finally:
            for task in tasks:
                task.cancel()
            for sig in installed:
                loop.remove_signal_handler(sig)
            loop.remove_reader(sock.FD)
            self._close()
            sock.close(linger=_CLOSE_LINGER_MS)
            self._stop_gatekeeper()
            self._ctx.term()
        return self.exit_code

    def _task_ended(self, task: asyncio.Task[Any]) -> None:
        """A background task (the broker's ticker, the worker's housekeeping) runs until
        cancelled; one that raised would leave the server serving without its timers
        (no expiry, no deadlines, no heartbeats) and nothing would say so. Say so and
        drain, with `EXIT_INTERNAL_ERROR`, so that supervisord starts a fresh one."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self._log.critical(
            "internal error: %s stopped (%s: %s); draining to exit with status %d so "
            "that the process is restarted; please report this with the traceback below",
            task.get_name(),
            type(exc).__name__,
            exc,
            EXIT_INTERNAL_ERROR,
            exc_info=exc,
        )
        if not self.exit_code:
            self.exit_code = EXIT_INTERNAL_ERROR
        try:
            self._begin_drain(f"internal error in {task.get_name()}")
        finally:
            self._wake()  # even if the drain's start fails the same way: serve must end

    def request_stop(self, reason: str = "stop requested") -> None:
        """Begin a graceful drain. Safe from any thread."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._begin_drain, reason)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[int]:
        if threading.current_thread() is not threading.main_thread():
            return []  # embedded in a program's thread: its signals are its own
        installed: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._begin_drain, signal.Signals(sig).name)
            installed.append(int(sig))
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        installed.append(int(signal.SIGHUP))
        return installed

    def reload(self) -> None:
        """SIGHUP: re-read the allowed client keys (``--curve-allow DIR``). New
        handshakes meet the new list, and so do the requests of peers connected before
        (a removed key's next request is FORBIDDEN; the connection itself stays until
        it closes). Loop thread only."""
        gate = self._gatekeeper
        if gate is None:
            self._log.info("SIGHUP: nothing to reload (no --curve-allow directory)")
            return
        try:
            n = gate.reload()
        except (OSError, ValueError) as exc:  # unreadable directory, malformed key file
            self._log.error(
                "SIGHUP: cannot re-read %s, keeping the old list: %s", gate.security.allow, exc
            )
            return
        if n < 0:
            self._log.info("SIGHUP: any client key is allowed (--curve-allow any)")
        else:
            self._log.info("SIGHUP: re-read %s: %d client key(s) allowed", gate.security.allow, n)

    def _forbidden(self, frame: zmq.Frame, target: str) -> str | None:
        """Why the sender of a request (any ``frame`` of it) may not call ``target``,
        by its key's grant in the allow directory: answer FORBIDDEN with it. None when
        it may, or when nothing is checked (no CURVE, or ``--curve-allow any``)."""
        gate = self._gatekeeper
        if gate is None or not gate.checks:
            return None
        why = gate.refusal(frame, target.partition(".")[0])
        if why is not None:
            self.forbidden += 1
            n = self.forbidden
            if n <= 10 or n % 1000 == 0:  # a flood must not flood the log too
                self._log.warning("refused a call of %s: %s [%d so far]", target, why, n)
        return why

    def _stop_gatekeeper(self) -> None:
        if self._gatekeeper is not None:
            self._gatekeeper.stop()
            self._gatekeeper = None

    def _bind_router(
        self,
        binds: Sequence[str],
        *,
        limits: Limits,
        heartbeat_ms: int,
        heartbeat_timeout_ms: int,
        max_peer_output: int,
        peer_kind: str = "peer",
        check_ipc: Callable[[str, str], None] | None = None,
        on_gone: Callable[[bytes], None] | None = None,
        security: Security | None = None,
    ) -> None:
        """Bind the ROUTER (`bind_router`) and its `Outbox`; with CURVE, start the
        context's ZAP handler first (`Gatekeeper`), so no handshake goes unchecked.

        Raises:
            StartupError: an endpoint cannot be bound (or not without CURVE).
        """
        assert self._ctx is not None
        assert self._loop is not None
        if security is not None and security.curve and binds and self._gatekeeper is None:
            self._gatekeeper = Gatekeeper(self._ctx, security, self._log)
            try:
                self._gatekeeper.start()
            except (OSError, ValueError) as exc:  # unreadable directory, malformed key file
                raise StartupError(f"cannot read --curve-allow {security.allow}: {exc}") from exc
            if security.allow == ALLOW_ANY:
                self._log.warning("CURVE on, admitting ANY client key (--curve-allow any)")
        try:
            self._sock, bound = bind_router(
                self._ctx,
                binds,
                limits=limits,
                heartbeat_ms=heartbeat_ms,
                heartbeat_timeout_ms=heartbeat_timeout_ms,
                check_ipc=check_ipc,
                security=security,
                log=self._log,
            )
        except BindError as exc:
            raise StartupError(str(exc)) from exc.__cause__
        self.endpoints.extend(bound)
        self._outbox = Outbox(
            self._sock,
            self._loop,
            max_bytes=max_peer_output,
            log=self._log,
            peer_kind=peer_kind,
            on_gone=on_gone,
        )

    # --- helpers for the loop and the drain ------------------------------------------------

    def _schedule_pump(self) -> None:
        """Pump again soon (more input may wait, or a send consumed the FD's edge)."""
        if not self._pump_scheduled:
            self._pump_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self.pump)

    def _look_for_input(self) -> None:
        """Call after sending outside a pump (timers: heartbeats, PINGs, expiries). ZeroMQ's
        descriptor is edge-triggered, and a send may consume the edge of a message that
        arrived meanwhile; nothing else would wake the loop for it. A CREDIT left unread
        so had paused a stream for good (its client waited for items, its worker for
        the credit). `pump` makes the same check after its own sends."""
        sock = self._sock
        if sock is not None and not sock.closed and has_input(sock):
            self._schedule_pump()

    def _wake(self) -> None:
        """Wake `serve` (to start draining) or `_wait_while` (to look again)."""
        assert self._stopped is not None
        self._stopped.set()

    async def _wait_while(self, busy: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``busy()`` is false (checked whenever `_wake` is called), at most
        ``timeout`` seconds. Returns True if it still is."""
        assert self._stopped is not None
        deadline = time.monotonic() + timeout
        while busy() and time.monotonic() < deadline:
            self._stopped.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), deadline - time.monotonic())
        return busy()

    async def _hang_up_grace(self) -> None:
        """Stay connected a moment so clients read what we sent last (`HANGUP_GRACE_S`)."""
        await asyncio.sleep(HANGUP_GRACE_S)
