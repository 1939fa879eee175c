"""`Client`'s engine: the `Core` on a small loop that any thread may drive.

Handing each request to an IO thread and each reply back costs two thread wake-ups
per call, and on a small machine that is more than ZeroMQ's own round trip (measured:
a bare DEALER behind an IO thread answers in 1.8x the time of one used directly). So
the thread that waits for a reply reads the sockets itself: it becomes the *leader*,
polls, handles whatever arrives (its own reply and other threads' too), and steps
down once its future is done. Sends never wait for a leader: any thread takes the
lock for a moment, hands the request to the `Core`, which sends it, and goes on.

The IO thread leads only when nobody else does and something needs it: a timer is due
(heartbeats, deadlines, HELLO retries), or requests are outstanding and no thread has
touched the sockets for `_GRACE_S` (their callers are not waiting in ``result()``:
``as_completed``, done-callbacks). Between those it sleeps, so a sequential caller
never shares the CPU with it, and input nobody waits for (a PONG, a worker's
disconnect) stays in ZeroMQ's queue until the next heartbeat tick reads it. When a
caller starts waiting while the IO thread reads, the IO thread steps down for it.

Rules that keep this correct:

- ``lock`` guards the Core, the loop and every socket. The leader polls *without* it,
  on the sockets' file descriptors (an OS poll, safe beside another thread's send),
  and takes it to read.
- ZeroMQ's descriptor signals only new activity, so every thread that touches a
  socket also drains it before letting go (the input check each `zmqio.Dialer`
  queues after a send, run by `SyncLoop.run_due` before the lock is released). A
  leader's poll thus never sleeps on a message already delivered.
- Futures are resolved after the lock is released: their done-callbacks may call the
  client again.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import heapq
import logging
import math
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from protocol import Limits, Progress, ZeromeshError
from zmqio import DEFAULT_RESOLVE_INTERVAL, ClientSecurity

from ._core import Core
from ._dispatch import Call, Slots, WorkerInfo
from ._metrics import ClientMetrics
from ._options import Options, make_request

__all__ = ["Driver", "SyncLoop"]

log = logging.getLogger("zeromesh.client")

_GRACE_S = 0.002
"""How long outstanding requests may go unread before the IO thread reads them."""
_MAX_PARK_S = 0.1
"""Longest the IO thread sleeps while a caller reads (it announces a long session's end)."""


class _Timer:
    __slots__ = ("args", "cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: _Timer) -> bool:
        return self.when < other.when


class SyncLoop:
    """The few asyncio-loop methods the `Core` uses, run by whoever holds the lock.

    Time is `time.monotonic`. ``on_timer_added(when)`` lets the driver wake a poll
    or a parked IO thread that would otherwise sleep past a new, earlier timer.
    """

    def __init__(self, on_timer_added: Callable[[float], None]) -> None:
        self._readers: dict[int, tuple[Callable[..., Any], tuple[Any, ...]]] = {}
        self._poller = select.poll()
        self._ready: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._timers: list[_Timer] = []
        self._on_timer_added = on_timer_added

    # --- the asyncio subset ----------------------------------------------------------------

    def time(self) -> float:
        return time.monotonic()

    def add_reader(self, fd: int, fn: Callable[..., Any], *args: Any) -> None:
        self._readers[fd] = (fn, args)
        self._poller.register(fd, select.POLLIN)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._poller.unregister(fd)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self._ready.append((fn, args))

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> _Timer:
        return self.call_at(time.monotonic() + delay, fn, *args)

    def call_at(self, when: float, fn: Callable[..., Any], *args: Any) -> _Timer:
        timer = _Timer(when, fn, args)
        heapq.heappush(self._timers, timer)
        self._on_timer_added(when)
        return timer

    # --- driving -------------------------------------------------------------------------------

    def timeout(self) -> float:
        """Seconds until there is work to do (0: now; inf: only on input)."""
        if self._ready:
            return 0.0
        timers = self._timers
        while timers and timers[0].cancelled:
            heapq.heappop(timers)
        if not timers:
            return math.inf
        return max(0.0, timers[0].when - time.monotonic())

    def run_due(self) -> None:
        """Run the timers that are due, then the callbacks queued before this call."""
        timers = self._timers
        if timers:
            now = time.monotonic()
            while timers and (timers[0].cancelled or timers[0].when <= now):
                timer = heapq.heappop(timers)
                if not timer.cancelled:
                    self._ready.append((timer.fn, timer.args))
        ready = self._ready
        for _ in range(len(ready)):
            fn, args = ready.popleft()
            _run(fn, args)

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        """Wait for input on the readers' descriptors. Called without the lock."""
        if timeout == math.inf:
            return self._poller.poll()
        return self._poller.poll(math.ceil(timeout * 1000))

    def dispatch(self, events: list[tuple[int, int]]) -> None:
        readers = self._readers
        for fd, _ in events:
            reader = readers.get(fd)
            if reader is not None:
                _run(reader[0], reader[1])


def _run(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Run one callback; a bug in one must not kill the thread that reads the sockets
    (asyncio's loop logs and goes on in the same way)."""
    try:
        fn(*args)
    except Exception:
        log.exception("client callback %r failed", fn)


_PENDING = cf._base.PENDING
_RUNNING = cf._base.RUNNING
_FINISHED = cf._base.FINISHED
_CANCELLED = cf._base.CANCELLED
_CANCELLED_STATES = frozenset((_CANCELLED, cf._base.CANCELLED_AND_NOTIFIED))
_DONE_STATES = _CANCELLED_STATES | {_FINISHED}
_condition_made = threading.Lock()  # one Condition per future, however many threads ask
_ANNOUNCE = object()
"""In `Driver._finished`: the future is settled already, only its waiters need telling."""


class _Future(cf.Future):
    """A future that reads the sockets while its caller waits, and cancels remotely.

    Cheap to make: the stock `concurrent.futures.Future` builds a ``Condition`` (an
    RLock and a dozen bound methods) for every call, which measured as the largest
    single cost of a small pipelined call. Most futures never need one: their caller
    reads the reply itself (`Driver.wait`), and ``done``/a finished ``result`` only read
    ``_state``. So the Condition is made on first use (``__getattr__``): by
    `concurrent.futures.wait`, ``as_completed``, a done-callback, or a thread that
    blocks in ``result`` while another reads.

    How that stays correct: a future's state moves only under the driver's lock (`Driver`
    finishes futures as their answers are read, ``cancel`` here takes the lock), and
    the making of a Condition and a move of the state exclude each other (both hold
    `_condition_made` for that moment). A move that finds no Condition needs to tell
    nobody: whoever makes one later reads the final state. A move that finds one is
    made while holding it and wakes its waiters there, as the stock future does, so a
    `concurrent.futures.wait` that is installing its waiter never counts one outcome
    twice. Done-callbacks run later, outside the driver's lock (`_announce`).
    """

    _zm_driver: Driver
    _zm_id: int
    _zm_cond: threading.Condition | None
    """The Condition once made (``_condition`` then holds it too); None before."""

    def __init__(self, driver: Driver, rid: int) -> None:  # no super(): no Condition yet
        self._state = _PENDING
        self._result = None
        self._exception: BaseException | None = None
        self._zm_driver = driver
        self._zm_id = rid
        self._zm_cond = None

    def __getattr__(self, name: str) -> Any:
        """Make the Condition, with the waiter and callback lists that only matter
        beside it, on first use (stock code touches none of the three before
        ``_condition``). Three objects fewer per future for the garbage collector
        to walk while a caller holds thousands of them: a quarter of a pipelined
        client's time went to its passes."""
        if name not in ("_condition", "_waiters", "_done_callbacks"):
            raise AttributeError(name)
        with _condition_made:
            if self._zm_cond is None:
                self._waiters: list[Any] = []
                self._done_callbacks: list[Callable[[cf.Future[Any]], object]] = []
                cond = threading.Condition()
                self._condition = cond
                self._zm_cond = cond
        return getattr(self, name)

    def done(self) -> bool:
        return self._state in _DONE_STATES

    def cancelled(self) -> bool:
        return self._state in _CANCELLED_STATES

    def result(self, timeout: float | None = None) -> Any:
        if self._state is not _FINISHED:
            if not self.done():
                self._zm_driver.wait(self.done, timeout, lambda: self._follow(timeout))
            if self._state is not _FINISHED:  # cancelled, or not done in time
                return super().result(timeout=0 if self.done() else timeout)
        if self._exception is not None:
            raise self._exception
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if not self.done():
            self._zm_driver.wait(self.done, timeout, lambda: self._follow(timeout))
        return super().exception(timeout=0 if self.done() else timeout)

    def cancel(self) -> bool:
        with self._zm_driver.lock:  # the state moves under the driver's lock only
            if self._state in (_RUNNING, _FINISHED):
                return False
            if self._state in _CANCELLED_STATES:
                return True
            self._move(_CANCELLED, None, None)
        self._announce()
        self._zm_driver.cancel(self._zm_id)
        return True

    def set_result(self, result: Any) -> None:
        self._settle(result, None)

    def set_exception(self, exception: BaseException | None) -> None:
        self._settle(None, exception)

    def _settle(self, result: Any, exc: BaseException | None) -> None:
        """The stock setters' contract (InvalidStateError once done), on our locking."""
        with self._zm_driver.lock:
            if not self._finish(result, exc):
                raise cf.InvalidStateError(f"{self._state}: {self!r}")
        self._announce()

    def _finish(self, result: Any, exc: BaseException | None) -> bool:
        """Under the driver's lock: the outcome, unless cancelled. Then `_announce` if
        it has done-callbacks."""
        if self._state is not _PENDING:
            return False
        self._move(_FINISHED, result, exc)
        return True

    def _move(self, state: str, result: Any, exc: BaseException | None) -> None:
        """Under the driver's lock: take ``state`` (and the outcome), waking whoever
        waits on the Condition if there is one (the class docstring says why so)."""
        with _condition_made:
            cond = self._zm_cond
            if cond is None:
                self._result = result
                self._exception = exc
                self._state = state
                return
        with cond:  # (never the other order: nobody takes the driver's lock holding it)
            self._result = result
            self._exception = exc
            self._state = state
            if state is _FINISHED:
                for waiter in self._waiters:
                    if exc is None:
                        waiter.add_result(self)
                    else:
                        waiter.add_exception(self)
            cond.notify_all()

    def _announce(self) -> None:
        """After the state moved, outside the driver's lock: run the done-callbacks
        (they may call the client again)."""
        if self._zm_cond is not None and self._done_callbacks:
            self._invoke_callbacks()

    def _follow(self, timeout: float | None) -> None:
        """Another thread reads the sockets: wait until it (or the IO thread) resolves us."""
        with contextlib.suppress(cf.TimeoutError, cf.CancelledError):
            cf.Future.exception(self, timeout)


class Driver:
    """Owns the `Core`, its `SyncLoop`, the lock and the IO thread (see the module doc)."""

    def __init__(
        self,
        endpoints: list[str],
        max_in_flight: int,
        prefetch: int,
        heartbeat: float,
        limits: Limits,
        security: ClientSecurity | None = None,
        metrics: ClientMetrics | None = None,
        resolve_interval: float = DEFAULT_RESOLVE_INTERVAL,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.lock = threading.Lock()
        self._idle = threading.Condition(self.lock)  # where the IO thread parks
        self._handover = threading.Condition(self.lock)  # callers taking over from it
        self._slot_freed = threading.Condition(self.lock)  # submitters waiting for room
        self._slot_waiters = 0
        self._in_flight = 0  # requests sent or queued and not yet completed
        self._leader = False
        self._leader_ident: int | None = None  # the thread reading the sockets now
        self._lead_started = 0.0
        self._io_leads = False
        self._want_lead = False  # a waiting caller asks the IO thread to step down
        self._followers = 0  # threads waiting for a result while another leads
        self._urgent = False  # a follower needs the IO thread to lead now
        self._closing = False
        self._last_drive = 0.0
        self._poll_until = math.inf  # when the leader's current poll ends
        self._park_until = math.inf  # when the parked IO thread wakes by itself
        self._finished: list[tuple[_Future, Any, BaseException | None]] = []
        self._progress: list[tuple[Callable[[Progress], None], Progress]] = []
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.loop = SyncLoop(self._timer_added)
        self.core = Core(
            endpoints,
            heartbeat=heartbeat,
            prefetch=prefetch,
            limits=limits,
            loop=self.loop,
            security=security,
            metrics=metrics,
            resolve_interval=resolve_interval,
        )
        try:
            with self.lock:
                self.core.start()
                self.loop.add_reader(self._wake_fd, self._read_wake)
        except BaseException:
            os.close(self._wake_fd)
            raise
        self._thread = threading.Thread(target=self._main, name="zeromesh-client-io", daemon=True)
        self._thread.start()

    # --- the API used by Client ------------------------------------------------------------------

    def request(
        self,
        target: str,
        args: Any,
        kwargs: dict[str, Any],
        opts: Options,
        batch: bool,
        waiting: bool,
        on_item: Callable[[list[Any]], None] | None = None,
    ) -> cf.Future[Any]:
        """Encode and send one request; return its future.

        Blocks while ``max_in_flight`` requests are unanswered (reading the sockets
        meanwhile if nobody else does). ``waiting``: the caller reads the reply itself
        right away (``call``, ``map``), so the IO thread need not be woken for it.
        ``on_item``: a stream request (``opts.window``); its items' values go there (a
        list per ITEM), under the lock, and the future completes with the item count at its end.
        """
        if self._closing:
            raise ZeromeshError("the client is closed; create a new Client")
        stream = on_item is not None
        rid, frames = make_request(target, args, kwargs, opts, batch, self.core.limits, stream)
        fut = _Future(self, rid)
        call = Call(target, frames, rid, opts.timeout, opts.retries, fut, self._complete)
        call.on_item = on_item
        if opts.on_progress is not None:
            call.on_progress = self._defer_progress(opts.on_progress)
        lock = self.lock
        while True:
            with lock:
                if self._closing:
                    raise ZeromeshError("the client is closed; create a new Client")
                if self._in_flight < self.max_in_flight:
                    self._in_flight += 1
                    break
            # Backpressure: read replies until one frees a slot (or let the leader do it).
            self.wait(self._slot_free_or_closing, None, self._block_for_slot)
        with lock:
            self.core.submit(call)
            self.loop.run_due()  # sends go with a look at the input (see the module doc)
            now = self._last_drive = time.monotonic()
            if not waiting and not self._leader and self._park_until > now + _GRACE_S:
                self._idle.notify()  # the IO thread sleeps long: reads nobody awaits
            done = self._take_done()
        self._resolve(done)
        return fut

    def _slot_free_or_closing(self) -> bool:
        return self._in_flight < self.max_in_flight or self._closing

    def _block_for_slot(self) -> None:
        with self.lock:
            self._slot_waiters += 1
            try:
                while self._in_flight >= self.max_in_flight and not self._closing:
                    self._slot_freed.wait()
            finally:
                self._slot_waiters -= 1

    def _release_slot(self) -> None:
        """Under the lock: one request less in flight."""
        self._in_flight -= 1
        if self._slot_waiters:
            self._slot_freed.notify()

    def cancel(self, rid: int) -> None:
        with self.lock:
            if self.core.cancel(rid):
                self._release_slot()  # its completion will never come
            self.loop.run_due()
            done = self._take_done()
        self._resolve(done)

    def grant(self, rid: int, credit: int) -> None:
        """The consumer of stream ``rid`` read ``credit`` more items (any thread)."""
        with self.lock:
            self.core.grant(rid, credit)
            self.loop.run_due()
            done = self._take_done()
        self._resolve(done)

    def capacity(self) -> int:
        return self.core.capacity()

    def slots(self) -> Slots:
        return self.core.slots()

    def workers(self, timeout: float) -> list[WorkerInfo]:
        answered = threading.Event()
        with self.lock:
            if self._closing:
                raise ZeromeshError("the client is closed")
            since = self.core.ask_info(answered.set)
            self.loop.run_due()
        self.wait(answered.is_set, timeout, lambda: answered.wait(timeout))
        with self.lock:
            return self.core.info_rows(since)

    def wait(
        self,
        done: Callable[[], bool],
        timeout: float | None,
        block: Callable[[], Any] | None = None,
    ) -> None:
        """Lead until ``done()`` or ``timeout``; if another thread leads, let it serve us.

        ``block`` is how a follower waits (default: it returns at once and the caller
        waits on its future). Followers make a resigning leader hand over to the IO
        thread at once.
        """
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        me = threading.get_ident()
        if self._leader_ident == me:
            # Called back from inside our own reading (a done-callback or on_progress
            # that calls the client): we are the leader already, so read on.
            self._lead(done, deadline)
            return
        with self.lock:
            while self._io_leads and not self._closing:
                # The IO thread reads for nobody in particular; a caller that waits
                # reads faster itself (no hand-off per reply), so take over.
                self._want_lead = True
                self._wake_poll()
                self._handover.wait()
            if self._leader:
                self._followers += 1
                lead = False
            else:
                self._leader = lead = True
                self._leader_ident = me
                self._lead_started = time.monotonic()
        if not lead:
            try:
                if block is not None:
                    block()
            finally:
                with self.lock:
                    self._followers -= 1
            return
        try:
            self._lead(done, deadline)
        finally:
            self._resign()

    def close(self) -> None:
        """Fail what is pending, close the sockets, stop the IO thread. Idempotent."""
        with self.lock:
            if self._closing:
                return
            self._closing = True
            self._idle.notify()
            self._slot_freed.notify_all()
            self._wake_poll()
        # Not from the IO thread, nor from a callback of the thread that is reading
        # (the IO thread waits for that one to step down, after this returns).
        me = threading.get_ident()
        if threading.current_thread() is not self._thread and self._leader_ident != me:
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                log.error("client IO thread did not stop within 10 s")

    # --- leading -----------------------------------------------------------------------------

    def _lead(self, done: Callable[[], bool], deadline: float, look: bool = False) -> None:
        """Poll and handle input until ``done()``, the deadline, or closing. No lock held.

        ``look``: read whatever waits at least once before returning (the IO thread,
        woken by a timer while nobody reads: a worker's disconnect, a PONG).
        """
        loop = self.loop
        lock = self.lock
        events: list[tuple[int, int]] = []
        while True:
            with lock:
                if events:
                    loop.dispatch(events)
                loop.run_due()
                finished = self._take_done()
                wait = loop.timeout()
                now = self._last_drive = time.monotonic()
                wait = min(wait, deadline - now)
                self._poll_until = now + wait
            self._resolve(finished)
            if done() or self._closing or (wait <= 0 and now >= deadline):
                if not look or self._closing:
                    return
                look = False
                events = loop.poll(0)
                continue
            events = loop.poll(max(wait, 0.0))

    def _resign(self) -> None:
        with self.lock:
            self._leader = False
            self._leader_ident = None
            self._poll_until = math.inf
            if self._io_leads:
                self._io_leads = self._want_lead = False
                self._handover.notify_all()
            if self._followers or self._closing:
                self._urgent = True
                self._idle.notify()
            elif self.core.calls and time.monotonic() - self._lead_started > _GRACE_S:
                self._idle.notify()  # the IO thread may be parked long: others' replies

    def _main(self) -> None:
        """The IO thread: lead when nobody does and something is due; park otherwise."""
        lock = self.lock
        while True:
            with lock:
                while not self._closing and not self._io_should_lead():
                    left = self._park_until - time.monotonic()
                    self._idle.wait(None if left == math.inf else max(0.0, left))
                self._park_until = math.inf
                if self._closing:
                    while self._leader:  # a caller still reads: it stops at its next wake
                        self._idle.wait()
                    break
                self._leader = self._io_leads = True
                self._leader_ident = threading.get_ident()
                self._lead_started = time.monotonic()
                self._urgent = False
            try:
                self._lead(self._io_done, math.inf, look=True)
            finally:
                self._resign()
        with lock:
            self.core.close()
            self.loop.remove_reader(self._wake_fd)
            fd, self._wake_fd = self._wake_fd, -1
            done = self._take_done()
        os.close(fd)
        self._resolve(done)

    def _io_should_lead(self) -> bool:
        """Under the lock: should the IO thread lead now? Sets ``_park_until`` if not."""
        if self._leader:
            # Someone reads; look again soon in case they stop. A short session (a
            # pipelined caller) ends unannounced, so look within the grace; the longer
            # it lasts, the rarer the look (a caller waiting 30 s on one result must
            # not cost 15,000 wake-ups). A long session announces its end (`_resign`).
            now = time.monotonic()
            self._park_until = now + min(_MAX_PARK_S, max(_GRACE_S, (now - self._lead_started) / 2))
            return False
        wait = self.loop.timeout()
        if wait <= 0:
            return True
        if self.core.calls:
            if self._urgent:
                return True
            unread = time.monotonic() - self._last_drive
            if unread >= _GRACE_S:
                return True
            wait = min(wait, _GRACE_S - unread)
        self._park_until = time.monotonic() + wait
        return False

    def _io_done(self) -> bool:
        return self._want_lead or (not self.core.calls and self.loop.timeout() > 0)

    # --- wake-ups ------------------------------------------------------------------------------

    def _timer_added(self, when: float) -> None:
        """Under the lock: a timer was added; wake whoever would sleep past it."""
        if when < self._poll_until:
            self._wake_poll()
        if when < self._park_until:
            self._idle.notify()

    def _wake_poll(self) -> None:
        if self._poll_until != math.inf and self._wake_fd >= 0:
            os.eventfd_write(self._wake_fd, 1)

    def _read_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._wake_fd)

    # --- completions (resolved outside the lock) ----------------------------------------------

    def _complete(self, call: Call, value: Any, exc: BaseException | None) -> None:
        """Under the lock: ``call`` is answered. Its future takes the outcome now (a
        waiting caller's ``done()`` turns true); who must be told is told by
        `_resolve`, outside the lock. Progress reported before the answer is delivered
        first, so the outcome waits for `_resolve` while any is pending."""
        self._release_slot()
        fut: _Future = call.future
        if self._progress:
            self._finished.append((fut, value, exc))
        elif fut._finish(value, exc) and fut._zm_cond is not None and fut._done_callbacks:
            self._finished.append((fut, _ANNOUNCE, None))

    def _defer_progress(self, fn: Callable[[Progress], None]) -> Callable[[Progress], None]:
        return lambda msg: self._progress.append((fn, msg))

    def _take_done(self) -> tuple[list[Any], list[Any]] | None:
        if not self._finished and not self._progress:
            return None
        done = (self._finished, self._progress)
        self._finished = []
        self._progress = []
        return done

    def _resolve(self, done: tuple[list[Any], list[Any]] | None) -> None:
        """Outside the lock: run progress callbacks, then settle and announce futures."""
        if done is None:
            return
        finished, progress = done
        for fn, msg in progress:
            try:
                fn(msg)
            except Exception:
                log.exception("on_progress callback failed")
        lock = self.lock
        for fut, value, exc in finished:
            if value is not _ANNOUNCE:
                with lock:
                    settled = fut._finish(value, exc)
                if not settled:
                    continue  # cancelled meanwhile
            fut._announce()
