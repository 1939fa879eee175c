"""`JobRunner`: the gateway-side job queue, feeding workers no faster than they can run.

Jobs wait here, in submission order, until the workers have a free slot; only then are
they sent (through an `AsyncClient` with ``prefetch=0``, so no job waits behind another
inside a worker's queue). So ``queued`` means "waiting in the gateway" and ``running``
means "held by a worker". The database (`JobStore`) is the record; this class holds
what only a live process can: the queue order, the tasks awaiting replies, and the
latest progress of each running job.

Delivery is at-least-once: a job whose worker dies is re-sent (``retries``), and a job
running when the gateway stops runs again when it starts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

import msgpack

from client import AsyncClient
from protocol import NoWorkers, Overloaded, Progress, ZeromeshError

from ._errors import RETRY_AFTER_OVERLOADED, ApiError, api_error
from ._jobs import DONE, FAILED, JobRecord, JobStore
from ._render import check_result_size, pack_stored

__all__ = ["JobRunner"]

log = logging.getLogger("zeromesh.gateway")


class JobRunner:
    """Queue, dispatch, progress and cancel of jobs; event-loop thread only.

    ``slots()`` says how many jobs may run at once right now (the workers' free
    capacity, or a fixed limit); `pump` is called whenever that may have changed.
    """

    def __init__(
        self,
        store: JobStore,
        client: AsyncClient,
        *,
        slots: Callable[[], int],
        timeout: float,
        retries: int,
        max_result: int,
        max_queued: int,
    ) -> None:
        self._store = store
        self._client = client
        self._slots = slots
        self._timeout = timeout
        self._retries = retries
        self._max_result = max_result
        self._max_queued = max_queued
        self._admitting = 0  # submits between the queue check and the queue
        self._queue: OrderedDict[str, None] = OrderedDict()
        self._running: dict[str, asyncio.Task[None]] = {}
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
        for job_id in ids:
            self._queue[job_id] = None
        if ids:
            log.info("re-submitting %d unfinished job(s) from the last run", len(ids))
        self.pump()
        return len(ids)

    async def submit(
        self, target: str, args: list[Any], kwargs: dict[str, Any], owner: str | None = None
    ) -> JobRecord:
        """Record a new job belonging to ``owner`` (a token name, or None) and queue it.

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
        payload = msgpack.packb([args, kwargs], use_bin_type=True)
        self._admitting += 1
        try:
            record = await self._store.create(target, payload, owner)
        finally:
            self._admitting -= 1
        self._queue[record.id] = None
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
            self._queue.pop(job_id, None)
            task = self._running.get(job_id)
            if task is not None:
                # Cancelling the task awaiting the call sends CANCEL to the worker.
                task.cancel()
            log.info("job %s cancelled", job_id)
        return record, changed

    def pump(self) -> None:
        """Start queued jobs while there are free slots."""
        if self._stopping:
            return
        free = self._slots() - len(self._running)
        while free > 0 and self._queue:
            job_id, _ = self._queue.popitem(last=False)
            self._running[job_id] = asyncio.create_task(self._run(job_id))
            self._idle.clear()
            free -= 1

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
            args, kwargs = msgpack.unpackb(payload, raw=False)
            started = time.monotonic()
            calls = self._client.options(
                timeout=self._timeout,
                retries=self._retries,
                on_progress=partial(self._on_progress, job_id),
            )
            try:
                value = await calls.call(target, *args, **kwargs)
            except (NoWorkers, Overloaded) as exc:
                # Nothing ran: back to the head of the queue, to go when a slot opens.
                # Holding the slot a moment first keeps a refusing mesh from a hot loop.
                await asyncio.sleep(RETRY_AFTER_OVERLOADED)
                if await self._store.requeue(job_id):
                    self._queue[job_id] = None
                    self._queue.move_to_end(job_id, last=False)
                    log.warning("job %s (%s) re-queued: %s", job_id, target, exc)
                return
            except ZeromeshError as exc:
                await self._fail(job_id, target, api_error(exc))
                return
            await self._done(job_id, target, value, time.monotonic() - started)
        except asyncio.CancelledError:
            # Cancelled by DELETE (already recorded) or by shutdown (stays running in
            # the database, so the next start re-submits it).
            raise
        except Exception as exc:
            log.exception("job %s failed in the gateway", job_id)
            await self._fail(job_id, "?", ApiError(500, "GatewayError", f"gateway error: {exc}"))
        finally:
            self._running.pop(job_id, None)
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
            log.info("job %s (%s) done in %.2f s", job_id, target, seconds)

    async def _fail(self, job_id: str, target: str, error: ApiError) -> None:
        if await self._store.finish(
            job_id, FAILED, error=error.to_dict(debug=True), progress=self._progress.get(job_id)
        ):
            log.info("job %s (%s) failed: %s: %s", job_id, target, error.type_name, error.message)

    def _on_progress(self, job_id: str, msg: Progress) -> None:
        if job_id in self._running:
            self._progress[job_id] = {"done": msg.done, "total": msg.total, "note": msg.note}
