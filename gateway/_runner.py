"""`JobRunner`: the gateway-side job queue, feeding workers no faster than they can run.

Jobs wait here, in submission order, until the workers have a free slot of the job's
kind; only then are they sent (through an `AsyncClient` with ``prefetch=0``, so no job
waits behind another inside a worker's queue). Jobs of plain handlers run at most as
many at once as the workers have handler threads in all, jobs of ``async`` handlers as
many as their async slots (`client.Slots`), and all together at most
``--job-concurrency`` when set. So ``queued`` means "waiting in the gateway" and
``running`` means "held by a worker". A job whose kind is full does not hold up a
later job of the other kind. The database (`JobStore`) is the record; this class holds
what only a live process can: the queue order, the tasks awaiting replies, and the
latest progress of each running job.

Delivery is at-least-once: a job whose worker dies is re-sent (``retries``), and a job
running when the gateway stops runs again when it starts.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

import msgpack

from client import AsyncClient, Slots
from protocol import NoWorkers, Overloaded, Progress, ZeromeshError
from zmqio import CallStats, outcome_name

from ._errors import RETRY_AFTER_OVERLOADED, ApiError, api_error
from ._jobs import DONE, FAILED, JobRecord, JobStore
from ._render import check_result_size, pack_stored

__all__ = ["JobRunner"]

log = logging.getLogger("zeromesh.gateway")


class JobRunner:
    """Queue, dispatch, progress and cancel of jobs; event-loop thread only.

    ``slots()`` says what the workers run at once right now, of each kind; ``limit``
    caps the jobs running at once of both kinds together (0: no cap of its own).
    `pump` is called whenever that may have changed.
    """

    def __init__(
        self,
        store: JobStore,
        client: AsyncClient,
        *,
        slots: Callable[[], Slots],
        limit: int = 0,
        timeout: float,
        retries: int,
        max_result: int,
        max_queued: int,
        label: Callable[[str], str] = str,
    ) -> None:
        self._store = store
        self.stats = CallStats()
        """Job runs by target (``label(target)``) and outcome, and their run time."""
        self._label = label
        self._client = client
        self._slots = slots
        self._limit = limit
        self._timeout = timeout
        self._retries = retries
        self._max_result = max_result
        self._max_queued = max_queued
        self._admitting = 0  # submits between the queue check and the queue
        # Waiting jobs: id -> (target, place in line); and by target, oldest first, so
        # `pump` looks at one head per handler, not at every waiting job.
        self._queue: dict[str, tuple[str, int]] = {}
        self._lines: dict[str, OrderedDict[str, None]] = {}
        self._places = itertools.count()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._async: set[str] = set()  # running jobs that hold an async slot
        self._progress: dict[str, dict[str, Any]] = {}
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def queued(self) -> int:
        """Jobs waiting in the gateway for a free worker slot."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Jobs held by workers now."""
        return len(self._running)

    async def recover(self) -> int:
        """Queue every job left unfinished by the last run; return how many."""
        ids = await self._store.recover()
        for job_id, target in ids:
            self._enqueue(job_id, target)
        if ids:
            log.info("re-submitting %d unfinished job(s) from the last run", len(ids))
        self.pump()
        return len(ids)

    async def submit(
        self,
        target: str,
        args: list[Any],
        kwargs: dict[str, Any],
        owner: str | None = None,
        trace: str = "",
    ) -> JobRecord:
        """Record a new job belonging to ``owner`` (a token name, or None) and queue it;
        ``trace`` (a W3C traceparent) goes with it to the worker, on every attempt.

        Raises:
            ApiError: 429 when `max_queued` jobs are already waiting.
        """
        # Count the jobs being written too: the write awaits the database, and a burst
        # of submits must not all pass the check before the first one is queued.
        waiting = len(self._queue) + self._admitting
        if waiting >= self._max_queued:
            raise ApiError(
                429,
                "Overloaded",
                f"{waiting} jobs are already queued (--max-queued-jobs); retry later",
                retry_after=RETRY_AFTER_OVERLOADED,
            )
        # [args, kwargs] or [args, kwargs, traceparent]: rows written before traces
        # existed read the same.
        payload = msgpack.packb(
            [args, kwargs, trace] if trace else [args, kwargs], use_bin_type=True
        )
        self._admitting += 1
        try:
            record = await self._store.create(target, payload, owner)
        finally:
            self._admitting -= 1
        self._enqueue(record.id, target)
        self.pump()
        return record

    def progress(self, job_id: str) -> dict[str, Any] | None:
        """The latest progress a running job reported, if any (not yet in the database)."""
        return self._progress.get(job_id)

    async def cancel(self, job_id: str) -> tuple[JobRecord | None, bool]:
        """Cancel a job: a queued one never runs; a running one is told to stop (its
        handler sees ``worker.cancelled()``). The cancel is in the database before this
        returns. Returns ``(record, changed)`` as `JobStore.cancel`."""
        record, changed = await self._store.cancel(job_id, self._progress.get(job_id))
        if changed:
            self._dequeue(job_id)
            task = self._running.get(job_id)
            if task is not None:
                # Cancelling the task awaiting the call sends CANCEL to the worker.
                task.cancel()
            log.info("job %s cancelled", job_id)
        return record, changed

    def pump(self) -> None:
        """Start queued jobs, oldest first, while their kind has free slots."""
        if self._stopping or not self._queue:
            return
        slots = self._slots()
        async_free = slots.async_slots - len(self._async)
        plain_free = slots.threads - (len(self._running) - len(self._async))
        free = self._limit - len(self._running) if self._limit else 1 << 62
        while free > 0 and (plain_free > 0 or async_free > 0):
            oldest: tuple[int, str, bool] | None = None
            for target, line in self._lines.items():
                is_async = target in slots.async_targets
                if (async_free if is_async else plain_free) <= 0:
                    continue
                job_id = next(iter(line))
                place = self._queue[job_id][1]
                if oldest is None or place < oldest[0]:
                    oldest = (place, job_id, is_async)
            if oldest is None:
                return  # what waits is of a kind that is full
            _, job_id, is_async = oldest
            self._dequeue(job_id)
            if is_async:
                self._async.add(job_id)
                async_free -= 1
            else:
                plain_free -= 1
            self._running[job_id] = asyncio.create_task(self._run(job_id))
            self._idle.clear()
            free -= 1

    def _enqueue(self, job_id: str, target: str, first: bool = False) -> None:
        """Put a job in line: last, or ``first`` (one put back: nothing of it ran)."""
        self._queue[job_id] = (target, -1 if first else next(self._places))
        line = self._lines.get(target)
        if line is None:
            line = self._lines[target] = OrderedDict()
        line[job_id] = None
        if first:
            line.move_to_end(job_id, last=False)

    def _dequeue(self, job_id: str) -> None:
        """Take a job out of line (to start it, or cancelled); no-op if not there."""
        found = self._queue.pop(job_id, None)
        if found is None:
            return
        target = found[0]
        line = self._lines[target]
        del line[job_id]
        if not line:
            del self._lines[target]

    def pause(self) -> None:
        """Start no more jobs (on the way to `close`); queued ones stay queued."""
        self._stopping = True

    async def idle(self) -> None:
        """Return once no job is running."""
        await self._idle.wait()

    async def close(self) -> None:
        """Stop dispatching and abandon running jobs, leaving them ``running`` in the
        database: the next start re-submits them."""
        self._stopping = True
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, job_id: str) -> None:
        try:
            loaded = await self._store.start(job_id)
            if loaded is None:
                return  # cancelled between the queue and here
            target, payload = loaded
            args, kwargs, *rest = msgpack.unpackb(payload, raw=False)
            started = time.monotonic()
            calls = self._client.options(
                timeout=self._timeout,
                retries=self._retries,
                on_progress=partial(self._on_progress, job_id),
                trace=rest[0] if rest else None,
            )
            try:
                value = await calls.call(target, *args, **kwargs)
            except (NoWorkers, Overloaded) as exc:
                # Nothing ran: back to the head of the queue, to go when a slot opens.
                # Holding the slot a moment first keeps a refusing mesh from a hot loop.
                await asyncio.sleep(RETRY_AFTER_OVERLOADED)
                if await self._store.requeue(job_id):
                    self._enqueue(job_id, target, first=True)
                    log.warning("job %s (%s) re-queued: %s", job_id, target, exc)
                return
            except ZeromeshError as exc:
                seconds = time.monotonic() - started
                self.stats.observe(self._label(target), outcome_name(exc.code), seconds)
                await self._fail(job_id, target, api_error(exc))
                return
            seconds = time.monotonic() - started
            self.stats.observe(self._label(target), "ok", seconds)
            await self._done(job_id, target, value, seconds)
        except asyncio.CancelledError:
            # Cancelled by DELETE (already recorded) or by shutdown (stays running in
            # the database, so the next start re-submits it).
            raise
        except Exception as exc:
            log.exception("job %s failed in the gateway", job_id)
            await self._fail(job_id, "?", ApiError(500, "GatewayError", f"gateway error: {exc}"))
        finally:
            self._running.pop(job_id, None)
            self._async.discard(job_id)
            self._progress.pop(job_id, None)
            if not self._running:
                self._idle.set()
            self.pump()

    async def _done(self, job_id: str, target: str, value: Any, seconds: float) -> None:
        try:
            check_result_size(value, self._max_result)
        except ApiError as error:
            await self._fail(job_id, target, error)
            return
        blob = pack_stored(value)
        if await self._store.finish(job_id, DONE, result=blob, progress=self._progress.get(job_id)):
            log.info(
                "job %s (%s) done in %.2f s", job_id, target, seconds, extra={"target": target}
            )

    async def _fail(self, job_id: str, target: str, error: ApiError) -> None:
        if await self._store.finish(
            job_id, FAILED, error=error.to_dict(debug=True), progress=self._progress.get(job_id)
        ):
            log.info(
                "job %s (%s) failed: %s: %s",
                job_id,
                target,
                error.type_name,
                error.message,
                extra={"target": target},
            )

    def _on_progress(self, job_id: str, msg: Progress) -> None:
        if job_id in self._running:
            self._progress[job_id] = {"done": msg.done, "total": msg.total, "note": msg.note}
