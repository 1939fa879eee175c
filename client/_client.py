"""`Client`: the blocking, thread-safe facade over the `Driver`.

Callers encode their request in their own thread (so a value that cannot travel fails
at the call, at once) and send it themselves under the driver's lock; a caller that
waits for a result reads the sockets itself while it waits (see `_driver`).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from protocol import DEFAULT_LIMITS, Codec, Limits, Progress
from zmqio import DEFAULT_RESOLVE_INTERVAL, ClientSecurity

from ._credit import StreamReader
from ._dispatch import Slots, WorkerInfo
from ._driver import Driver
from ._endpoints import resolve_endpoints
from ._mapping import run_map
from ._metrics import metrics_for
from ._options import Options, changed_options, check_settings, parse_codec
from ._stream import Stream

__all__ = ["Client", "Options"]

log = logging.getLogger("zeromesh.client")


class _Calls:
    """``call``/``submit``/``map`` with a fixed set of `Options` (see `Client.options`)."""

    _opts: Options
    _io: Driver

    def call(self, target: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``target`` ("service.handler") on a worker and return its result.

        Keyword arguments go to the handler. Raises the handler's failure as
        `RemoteError`, and `Timeout`, `NoWorkers`, `WorkerLost`, `UnknownHandler`,
        `BadArguments`, `ProtocolError` for the rest. Thread-safe.
        """
        return self._io.request(target, list(args), kwargs, self._opts, False, True).result()

    def submit(self, target: str, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Send a request; return a `concurrent.futures.Future` for its result.

        Blocks while the client holds ``max_in_flight`` unanswered requests
        (backpressure). numpy arguments are sent without a copy: do not modify them
        until the future is done. Cancelling the future asks the worker to drop it.
        """
        return self._io.request(target, list(args), kwargs, self._opts, False, False)

    def map(
        self,
        target: str,
        /,
        *iterables: Iterable[Any],
        chunksize: int | None = None,
        progress: bool = False,
    ) -> Iterator[Any]:
        """Like the builtin ``map``, run on workers: results in order, streamed.

        Items travel ``chunksize`` to a message (default: chosen from the number of
        items and workers). A failing item raises its error after the results before
        it were yielded. ``progress=True`` shows a tqdm progress bar.
        """
        return run_map(self._io, target, iterables, self._opts, chunksize, progress)

    def stream(self, target: str, /, *args: Any, **kwargs: Any) -> Stream:
        """Call a generator handler and iterate over its items as it yields them.

        ``for row in c.stream("db.rows", query): ...``. At most ``window`` items (see
        `options`, default 16) are ever ahead of what the loop has read: the handler
        waits on the worker while the loop does not read. Leaving the loop early
        (``break``, an exception, ``close()``) cancels the handler on the worker (its
        ``finally`` runs). Raises the handler's error after the items before it;
        `Timeout` past ``timeout`` (the whole stream) or ``item_timeout`` (one item);
        `WorkerLost` (with ``.items``, how many arrived) if the worker dies mid-stream,
        never re-sent once items arrived; `UnknownHandler` if no worker serving it
        can stream. Use `map` for many independent calls; `stream` for one call whose
        result is a sequence you want item by item.
        """
        opts = self._opts
        reader = StreamReader(opts.window, opts.item_timeout)
        stream = Stream(self._io, target, reader)
        arrived = stream.arrived

        def on_item(values: list[Any]) -> None:
            reader.push(values)
            if not arrived.is_set():  # (setting it again would take its lock for nothing)
                arrived.set()

        fut = self._io.request(target, list(args), kwargs, opts, False, True, on_item)
        fut.add_done_callback(lambda _: arrived.set())
        stream.future = fut
        return stream

    def options(
        self,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        codec: Codec | str | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        trace: str | None = None,
        window: int | None = None,
        item_timeout: float | None = None,
    ) -> _Calls:
        """A cheap view of this client with other per-call settings.

        ``client.options(timeout=0.5, retries=0).call("math.add", 1, 2)``;
        ``options(trace=traceparent)`` sends a W3C traceparent with each call (by
        default, OpenTelemetry's current span's when OpenTelemetry is installed).
        For `stream`: ``window`` (items ahead, default 16), ``item_timeout`` (seconds
        for each next item); ``timeout`` bounds the whole stream.
        """
        view = _Calls()
        view._opts = changed_options(
            self._opts, timeout, retries, codec, on_progress, trace, window, item_timeout
        )
        view._io = self._io
        return view


class Client(_Calls):
    """Blocking, thread-safe client of a zeromesh mesh.

    ``Client(["tcp://hostA:5555", "ipc:///tmp/zm/w1.sock"])`` connects to every
    endpoint (workers or brokers); requests go to the least busy worker that serves
    them. Endpoints default to ``$ZEROMESH_ENDPOINTS``. Use it as a context manager, or
    call `close`.

    Args:
        endpoints: endpoint strings, or one comma-separated string.
        timeout: default seconds to wait for a reply.
        retries: default re-sends when a worker is lost while holding a request.
            Requests may therefore run more than once: at-least-once delivery.
        max_in_flight: unanswered requests held before `submit` blocks.
        prefetch: requests queued at a worker beyond what it runs at once (its
            threads for plain handlers, its async slots for async ones, each kind
            apart), so short calls pipeline; 0 for long jobs (none waits behind a
            busy worker).
        codec: "msgpack" (default) or "json".
        heartbeat: seconds between pings; a worker silent for 3 is lost.
        curve_secret: our certificate (``NAME.key_secret`` from ``zeromesh keygen``)
            for servers running CURVE (default ``$ZEROMESH_CURVE_SECRET``; without it a
            fresh key pair, enough for a server started ``--curve-allow any``).
        curve_server: the server's public key, a ``NAME.key`` file or its 40-character
            Z85 text, or a mapping endpoint -> key (default ``$ZEROMESH_CURVE_SERVER``).
            Given, every connection runs CURVE; a refused key fails calls with
            `AuthenticationError`.
        metrics: count this client's calls in prometheus-client's default registry
            (``zeromesh_client_calls_total{target,outcome}``, their latency, retries,
            in flight), for the program's own ``/metrics``. Off by default.
        resolve_interval: seconds between lookups of a host name in an endpoint
            (``tcp://workers.internal:5555``). The client connects to every address
            the name resolves to, joins new ones and drains vanished ones; lookups run
            on a background thread, never in a call. 0 looks each name up once.
            Literal addresses and ``ipc://`` are used as written.

    Raises:
        ValueError: a bad setting or endpoint, a key file that cannot be read.
    """

    def __init__(
        self,
        endpoints: str | Iterable[str] | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 2,
        max_in_flight: int = 1000,
        prefetch: int = 100,
        codec: Codec | str = Codec.MSGPACK,
        heartbeat: float = 1.0,
        limits: Limits = DEFAULT_LIMITS,
        curve_secret: str | os.PathLike[str] | None = None,
        curve_server: str | bytes | os.PathLike[str] | Mapping[str, Any] | None = None,
        metrics: bool = False,
        resolve_interval: float = DEFAULT_RESOLVE_INTERVAL,
    ) -> None:
        self._opts = Options(timeout, retries, parse_codec(codec))
        check_settings(max_in_flight, prefetch, heartbeat, resolve_interval)
        self.endpoints = resolve_endpoints(endpoints)
        security = ClientSecurity.from_settings(curve_secret, curve_server)
        self._metrics = metrics_for(metrics)
        self._io = Driver(
            self.endpoints,
            max_in_flight,
            prefetch,
            heartbeat,
            limits,
            security,
            self._metrics,
            resolve_interval=resolve_interval,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.endpoints!r})"

    def close(self) -> None:
        """Fail unanswered requests, close sockets, stop the IO thread. Idempotent."""
        self._io.close()
        if self._metrics is not None:
            self._metrics.unregister()

    def capacity(self) -> int:
        """Requests the ready workers said they run at once, summed (0 while none is
        ready). Brokers count with the capacity they announce."""
        return self._io.capacity()

    def slots(self) -> Slots:
        """Requests the ready workers run at once, by kind, summed: ``threads`` (plain
        handlers), ``async_slots`` (``async def`` handlers) and ``async_targets`` (the
        handlers that are async); ``slots().for_target(name)`` is the one that bounds
        calls to ``name``. A worker older than protocol 1.1 counts its whole capacity
        as threads."""
        return self._io.slots()

    def workers(self, timeout: float = 2.0) -> list[WorkerInfo]:
        """Ask every endpoint who it is: one dict per endpoint (state, services, pid...)."""
        return self._io.workers(timeout)
