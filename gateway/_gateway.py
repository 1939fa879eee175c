"""`Gateway`: one HTTP server in front of the mesh — calls, jobs, health — and its lifecycle.

It is a client of the mesh like any other (two `AsyncClient`s on tornado's loop: one
for calls, one with ``prefetch=0`` for jobs), so it runs on any host, and scaling it
out is running more of it, each with its own jobs database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from tornado.httpserver import HTTPServer

import protocol
from client import AsyncClient, AsyncStream, ZeromeshError
from protocol import OTHER_NAME, StartupError
from zmqio import CallStats, exposition, gauge, labelled, outcome_name

from ._app import drain_limit, make_app
from ._auth import TokenFile
from ._config import GatewayConfig
from ._errors import RETRY_AFTER_NO_WORKERS, RETRY_AFTER_OVERLOADED, ApiError, api_error
from ._jobs import DONE, FAILED, JobRecord, JobStore, StoreError
from ._render import NeedsConversion, check_result_size, render, unpack_stored
from ._runner import JobRunner

__all__ = ["Gateway"]

log = logging.getLogger("zeromesh.gateway")

_TICK = 0.1  # seconds between looks at the workers' capacity
_TARGETS_EVERY = 2.0  # seconds between refreshes of what the workers serve
_HEALTH_TIMEOUT = 0.5  # seconds /healthz waits for workers to answer
# The client's advice is for Python callers; say it in HTTP terms.
_CALL_ADVICE = (("options(timeout=...)", "?timeout= (at most --call-timeout)"),)
_STREAM_ADVICE = (
    ("options(timeout=...)", "?timeout= (at most --stream-timeout)"),
    ("options(item_timeout=...)", "?item_timeout= (at most --call-timeout)"),
)


class Gateway:
    """An HTTP gateway serving ``config`` once `start` has run, until `stop`.

    ``await gw.start()`` opens the jobs database, listens, connects to the workers and
    re-submits unfinished jobs; ``await gw.stop()`` undoes all that. Use it from one
    event loop (tornado's IOLoop is one).

    Raises:
        ValueError: on creation, when an endpoint in ``config.connect`` is malformed or
            a line of the token file is.
        OSError: on creation, the token file, certificate or key cannot be read.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.tokens = TokenFile(config.token_file) if config.token_file else None
        self._ssl: ssl.SSLContext | None = None
        if config.certfile and config.keyfile:
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                self._ssl.load_cert_chain(config.certfile, config.keyfile)
            except ssl.SSLError as exc:
                raise ValueError(
                    f"--certfile {config.certfile} / --keyfile {config.keyfile}: not a "
                    f"PEM certificate and its key ({exc.reason or exc})"
                ) from exc
            except OSError as exc:
                raise ValueError(
                    f"cannot read --certfile {config.certfile} / --keyfile "
                    f"{config.keyfile}: {exc.strerror or exc}"
                ) from exc
        self._calls = AsyncClient(
            config.connect,
            timeout=config.call_timeout,
            retries=config.retries,
            max_in_flight=config.max_pending_calls,
            curve_secret=config.curve_secret,
            curve_server=config.curve_server,
            resolve_interval=config.resolve_interval,
        )
        # prefetch=0: a job goes to a worker only when it has a free slot, so "running"
        # means a worker holds it and no job waits behind another inside a worker.
        self._job_client = AsyncClient(
            config.connect,
            timeout=config.job_timeout,
            retries=config.retries,
            prefetch=0,
            curve_secret=config.curve_secret,
            curve_server=config.curve_server,
            resolve_interval=config.resolve_interval,
        )
        self.endpoints = self._calls.endpoints
        self.store = JobStore(config.jobs_db)
        self.jobs = JobRunner(
            self.store,
            self._job_client,
            slots=self._job_client.slots,
            limit=config.job_concurrency,
            timeout=config.job_timeout,
            retries=config.retries,
            max_result=config.max_result,
            max_queued=config.max_queued_jobs,
            label=self._label,
        )
        self.http = CallStats()
        """HTTP requests by route and status, and how long they took (`metrics_text`)."""
        self.calls = CallStats()
        """The mesh calls ``/call`` made, by target and outcome."""
        self.streams = CallStats()
        """The mesh streams ``/stream`` made, by target and outcome (and how long each
        ran)."""
        self.port = config.port
        self._server: HTTPServer | None = None
        self._render_pool = ThreadPoolExecutor(2, thread_name_prefix="zeromesh-gateway-render")
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._workers_ready = asyncio.Event()
        self._targets: frozenset[str] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = time.monotonic()
        self._stopped = False

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (``https://`` with a certificate) of the listening socket."""
        host = self.config.host
        scheme = "https" if self._ssl is not None else "http"
        return (
            f"{scheme}://[{host}]:{self.port}" if ":" in host else f"{scheme}://{host}:{self.port}"
        )

    def reload_tokens(self) -> int | None:
        """Re-read ``--token-file`` (SIGHUP); the number of tokens, or None without one.
        Requests already answered keep their answer; the next ones meet the new list.

        Raises:
            OSError, ValueError: the file cannot be read or is malformed (the old
                tokens stay).
        """
        return None if self.tokens is None else self.tokens.reload()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the jobs database, listen, connect, and queue unfinished jobs.

        Raises:
            StartupError: the database cannot be used or the address cannot be bound.
        """
        cfg = self.config
        try:
            await self.store.open()
        except StoreError as exc:
            await self.store.close()
            raise StartupError(str(exc)) from exc
        try:
            sock = _listen(cfg.host, self.port)
        except (OSError, ValueError) as exc:
            await self.store.close()
            errno = getattr(exc, "errno", None)
            if isinstance(exc, socket.gaierror):
                why = f"cannot resolve {cfg.host!r}: {exc.strerror}"
            else:
                # Not exc.strerror: create_server() appends the address to it.
                why = os.strerror(errno) if errno else str(exc)
            raise StartupError(
                f"cannot listen on {cfg.host}:{cfg.port}: {why} (pick another --listen)"
            ) from exc
        self.port = sock.getsockname()[1]
        self._server = HTTPServer(
            make_app(self),
            max_body_size=drain_limit(cfg.max_body),
            ssl_options=self._ssl,
            # Slow or stalled clients must not hold connections forever.
            idle_connection_timeout=60,
            body_timeout=120,
        )
        self._server.add_socket(sock)
        await self._calls.__aenter__()
        await self._job_client.__aenter__()
        await self.jobs.recover()
        loop = asyncio.get_running_loop()
        for coro in (self._watch_capacity(), self._watch_targets(), self._purge_expired()):
            self._tasks.append(loop.create_task(coro))
        if self.tokens is not None:
            log.info("tokens required: %d from %s", len(self.tokens), cfg.token_file)
            if cfg.exposed and self._ssl is None:
                log.warning(
                    "tokens cross the network in clear on %s: give --certfile/--keyfile, "
                    "or put a TLS proxy in front",
                    self.url,
                )
        elif cfg.exposed:
            log.warning(
                "--insecure: %s is reachable beyond loopback without --token-file; "
                "anyone who reaches it can run handlers",
                self.url,
            )
        log.info(
            "listening on %s; workers at %s; jobs in %s",
            self.url,
            ",".join(self.endpoints),
            cfg.jobs_db,
        )

    async def stop(self) -> None:
        """Stop listening and starting jobs; let calls and jobs in progress finish for up
        to ``drain_timeout``; then cancel what is left (running jobs stay recorded as
        running, so the next start runs them again) and close everything. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            self._server.stop()
        self.jobs.pause()
        if self._pending or self.jobs.running:
            log.info(
                "stopping: waiting up to %g s for %d call(s) and %d job(s) in progress",
                self.config.drain_timeout,
                self._pending,
                self.jobs.running,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(self._idle.wait(), self.jobs.idle()),
                    self.config.drain_timeout,
                )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        running = self.jobs.running
        await self.jobs.close()
        if running:
            log.info("stopping: %d job(s) still running will run again on the next start", running)
        self._calls.close()
        self._job_client.close()
        if self._server is not None:
            await self._server.close_all_connections()
        await self.store.close()
        self._render_pool.shutdown(wait=False)
        log.info("stopped")

    # --- calls ----------------------------------------------------------------------------

    async def call(
        self,
        target: str,
        args: list[Any],
        kwargs: dict[str, Any],
        timeout: float,
        on_sent: Callable[[asyncio.Future[Any]], None] | None = None,
        trace: str = "",
    ) -> Any:
        """Run ``target`` on a worker and return its result.

        ``on_sent`` gets the reply's future once the request is on its way: cancelling
        that future tells the worker to drop the request. ``trace``: the HTTP caller's
        W3C traceparent, sent on with the request.

        Raises:
            ApiError: the HTTP answer for whatever went wrong (see `_errors`); 502
                ``ResultTooLarge`` for a result over ``--max-result``.
        """
        async with self._metered(target, timeout, self.calls, _CALL_ADVICE) as left:
            view: Any = self._calls
            if left != self.config.call_timeout or trace:
                view = self._calls.options(timeout=left, trace=trace or None)
            reply = await view.submit(target, *args, **kwargs)
            if on_sent is not None:
                on_sent(reply)
            value = await reply
        # Before rendering: an oversized result is refused, not turned into JSON.
        check_result_size(value, self.config.max_result)
        return value

    async def stream(
        self,
        target: str,
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        timeout: float,
        item_timeout: float,
        window: int,
        on_open: Callable[[AsyncStream], None] | None = None,
        trace: str = "",
    ) -> AsyncGenerator[Any, None]:
        """The items of generator handler ``target`` as it yields them (SPEC 7.11).

        ``timeout`` bounds the whole stream, ``item_timeout`` the wait for each item;
        ``window`` items at most are ever ahead of the caller, so one that reads slowly
        pauses the handler. ``on_open`` gets the mesh stream: closing it (the HTTP
        caller left) cancels the handler and ends this iteration. Closing this
        iterator early cancels it too.

        Raises:
            ApiError: as `call`, before or after any number of items; 502
                ``ResultTooLarge`` for an item over ``--max-result``.
        """
        async with self._metered(target, timeout, self.streams, _STREAM_ADVICE) as left:
            view = self._calls.options(
                timeout=left, item_timeout=item_timeout, window=window, trace=trace or None
            )
            items = view.stream(target, *args, **kwargs)
            if on_open is not None:
                on_open(items)
            try:
                async for value in items:
                    check_result_size(value, self.config.max_result)
                    yield value
            finally:
                await items.aclose()

    @contextlib.asynccontextmanager
    async def _metered(
        self, target: str, timeout: float, stats: CallStats, advice: tuple[tuple[str, str], ...]
    ) -> AsyncIterator[float]:
        """One mesh call or stream made for an HTTP caller: refused 429 past
        ``--max-pending``, waiting for workers when none is ready (the seconds of
        ``timeout`` left are what it yields), counted in ``stats``, and its mesh error
        raised as the `ApiError` to answer, with the Python advice in ``advice`` put in
        HTTP terms."""
        if self._pending >= self.config.max_pending_calls:
            raise ApiError(
                429,
                "Overloaded",
                f"{self._pending} calls and streams are in progress (--max-pending); retry later",
                retry_after=RETRY_AFTER_OVERLOADED,
            )
        self._pending += 1
        self._idle.clear()
        began_call = time.monotonic()
        outcome = "ok"
        try:
            if self._calls.capacity() == 0:
                began = time.monotonic()
                await self._wait_for_workers(min(timeout, self.config.wait_for_workers))
                timeout = max(timeout - (time.monotonic() - began), 0.001)
            yield timeout
        except ZeromeshError as exc:
            outcome = outcome_name(exc.code)
            error = api_error(exc)
            for python, http in advice:
                error.message = error.message.replace(python, http)
            raise error from exc
        finally:
            self._pending -= 1
            if not self._pending:
                self._idle.set()
            stats.observe(self._label(target), outcome, time.monotonic() - began_call)

    def _label(self, target: str) -> str:
        """``target`` as a metrics label: itself if a worker serves it, else `OTHER_NAME`
        (an HTTP caller can name any target; labels must stay few)."""
        served = self._targets
        return target if served is not None and target in served else OTHER_NAME

    async def metrics_text(self) -> tuple[bytes, str]:
        """``GET /metrics``: the gateway's metrics in Prometheus's text format."""
        counts = await self.store.counts()
        running = self.jobs.running
        families = [
            *self.http.families(
                "zeromesh_gateway_http_requests",
                "HTTP requests by route and status",
                "HTTP request latency by route",
                labels=("route", "status"),
            ),
            *self.calls.families(
                "zeromesh_gateway_calls",
                "Mesh calls made for POST /call, by target and outcome",
                "Mesh call latency for POST /call, by target",
            ),
            *self.streams.families(
                "zeromesh_gateway_streams",
                "Mesh streams made for POST /stream, by target and outcome",
                "How long POST /stream streams ran, first request to last item, by target",
            ),
            *self.jobs.stats.families(
                "zeromesh_gateway_job_runs",
                "Job runs by target and outcome",
                "Job run time (the mesh call) by target",
            ),
            labelled(
                "gauge",
                "zeromesh_gateway_jobs",
                "Jobs in the database, by state",
                ["state"],
                (([state], n) for state, n in counts.items()),
            ),
            gauge("zeromesh_gateway_jobs_running_here", "Jobs this gateway runs now", running),
            gauge(
                "zeromesh_gateway_calls_in_progress",
                "POST /call and POST /stream requests in progress",
                self._pending,
            ),
        ]
        return exposition(lambda: families)

    async def _wait_for_workers(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._workers_ready.wait(), seconds)
        except TimeoutError:
            raise ApiError(
                503,
                "NoWorkers",
                f"no worker is ready at {','.join(self.endpoints)} (waited {seconds:g} s); "
                "retry later",
                retry_after=RETRY_AFTER_NO_WORKERS,
            ) from None

    async def render(self, value: Any, as_msgpack: bool) -> tuple[bytes, str]:
        """``value`` as a response body; slow conversions (numpy to JSON) run off the loop."""
        try:
            return render(value, as_msgpack, convert=False)
        except NeedsConversion:
            pass
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._render_pool, render, value, as_msgpack, True)

    # --- jobs ------------------------------------------------------------------------------

    async def submit_job(
        self,
        target: str,
        args: list[Any],
        kwargs: dict[str, Any],
        owner: str | None = None,
        trace: str = "",
    ) -> JobRecord:
        """Record and queue a job belonging to ``owner`` (the caller's token name, None
        without tokens). Raises `ApiError` 404 when the workers are known and none
        serves ``target``, 429 when the queue is full."""
        served = self._targets
        if served is not None and target not in served:
            raise ApiError(
                404,
                "UnknownHandler",
                f"no worker serves {target!r}; served: {', '.join(sorted(served)) or 'nothing'}",
            )
        record = await self.jobs.submit(target, args, kwargs, owner, trace)
        if owner is None:
            log.info("job %s (%s) queued", record.id, target, extra=_job_fields(target, trace))
        else:
            log.info(
                "job %s (%s) queued for %s",
                record.id,
                target,
                owner,
                extra=_job_fields(target, trace),
            )
        return record

    async def job(self, job_id: str, caller: str | None = None) -> dict[str, Any]:
        """The job's public view. Raises `ApiError` 404 for an unknown or expired id,
        and for another token's job (``caller``: the asking token's name)."""
        record = await self.store.get(job_id)
        if record is None or not self._visible(record, caller):
            raise _unknown_job(job_id)
        return await self._view(record)

    async def cancel_job(self, job_id: str, caller: str | None = None) -> dict[str, Any]:
        """Cancel a queued or running job; return its view. Raises `ApiError` 404 for an
        unknown id or another token's job, 409 for a job that finished first.
        Cancelling twice is harmless."""
        if self.tokens is not None:
            # The owner never changes: checking before the cancel is enough.
            found = await self.store.get(job_id)
            if found is None or not self._visible(found, caller):
                raise _unknown_job(job_id)
        record, changed = await self.jobs.cancel(job_id)
        if record is None:
            raise _unknown_job(job_id)
        if not changed and record.status in (DONE, FAILED):
            raise ApiError(409, "Conflict", f"job {job_id} is already {record.status}")
        return await self._view(record)

    async def _view(self, record: JobRecord) -> dict[str, Any]:
        progress = record.progress
        if record.status == "running":
            progress = self.jobs.progress(record.id) or progress
        error = None
        if record.error is not None:
            error = ApiError.from_dict(record.error).to_dict(self.config.debug)
        result = None
        if record.status == DONE and record.result is not None:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._render_pool, unpack_stored, record.result)
        return {
            "id": record.id,
            "url": f"/jobs/{record.id}",
            "target": record.target,
            "status": record.status,
            "created": _iso(record.created),
            "started": _iso(record.started),
            "finished": _iso(record.finished),
            "attempts": record.attempts,
            "progress": progress,
            "result": result,
            "error": error,
        }

    def _visible(self, record: JobRecord, caller: str | None) -> bool:
        """Without ``--token-file`` every job is visible; with it, only the caller's own
        (no caller sees none; a job from before the token file belongs to no token)."""
        if self.tokens is None:
            return True
        return caller is not None and record.owner == caller

    # --- health ----------------------------------------------------------------------------

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """``(healthy, body)``: healthy when at least one worker is ready."""
        rows = await self._calls.workers(timeout=_HEALTH_TIMEOUT)
        keys = ("endpoint", "state", "name", "host", "pid", "version", "services")
        workers = []
        for row in rows:
            view = {k: row[k] for k in keys if k in row}
            for k in ("capacity", "in_flight", "uptime"):
                if k in row:
                    view[k] = row[k]
            workers.append(view)
        ready = sum(1 for w in workers if w["state"] == "ready")
        body = {
            "status": "ok" if ready else "unavailable",
            "workers_ready": ready,
            "workers_reachable": sum(1 for w in workers if w["state"] != "unreachable"),
            "in_flight": sum(int(w.get("in_flight", 0)) for w in workers),
            "workers": workers,
            "gateway": {
                "version": protocol.__version__,
                "pid": os.getpid(),
                "uptime": round(time.monotonic() - self._started, 3),
                "calls_in_progress": self._pending,
                "jobs_queued": self.jobs.queued,
                "jobs_running": self.jobs.running,
            },
        }
        return ready > 0, body

    # --- background --------------------------------------------------------------------------

    async def _watch_capacity(self) -> None:
        """Follow the workers' capacity: wake waiting calls, start queued jobs."""
        while True:
            if self._calls.capacity() > 0:
                self._workers_ready.set()
            else:
                self._workers_ready.clear()
            self.jobs.pump()
            await asyncio.sleep(_TICK)

    async def _watch_targets(self) -> None:
        """Keep the set of served handlers, to refuse a job nobody can run at submit."""
        while True:
            try:
                rows = await self._calls.workers(timeout=1.0)
            except ZeromeshError:
                rows = []
            known = bool(rows) and all(
                r["state"] != "unreachable" and r.get("role") == "worker" for r in rows
            )
            self._targets = (
                frozenset(f"{s}.{h}" for r in rows for s, hs in r["services"].items() for h in hs)
                if known
                else None
            )
            await asyncio.sleep(_TARGETS_EVERY)

    async def _purge_expired(self) -> None:
        """Delete finished jobs older than ``job_ttl``, now and then."""
        ttl = self.config.job_ttl
        every = min(max(ttl / 4, 0.05), 300.0)
        while True:
            try:
                n = await self.store.purge(time.time() - ttl)
            except StoreError:
                return  # closed under us: stopping
            if n:
                log.info("removed %d finished job(s) older than %g s", n, ttl)
            await asyncio.sleep(every)


def _listen(host: str, port: int) -> socket.socket:
    """A listening, non-blocking socket on the first address ``host`` resolves to.

    Not tornado's ``bind_sockets``: it leaks the socket when the bind fails.
    """
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    # A deep backlog: a burst of new connections must queue, not see SYNs dropped.
    sock = socket.create_server(address, family=family, backlog=1024)
    sock.setblocking(False)
    return sock


def _unknown_job(job_id: str) -> ApiError:
    return ApiError(
        404, "UnknownJob", f"no job {job_id!r} (never submitted, or finished and expired)"
    )


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _job_fields(target: str, trace: str) -> dict[str, str]:
    """The JSON log fields of a line about a job (``--log-format json``)."""
    fields = {"target": target}
    if trace:
        fields["trace_id"] = protocol.trace_id_of(trace)
    return fields
