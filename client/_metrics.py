"""Opt-in Prometheus metrics of a client: ``Client(..., metrics=True)``.

The calls this process makes, by target and outcome, their latency (submit to answer,
retries included), re-sends and calls in flight, registered in prometheus-client's
default registry so the program's own ``/metrics`` (``start_http_server``, a web
framework's exporter) shows them beside its other metrics. Off by default: counting
costs two clock reads and a histogram update per call.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from protocol import ZeromeshError
from zmqio import CallStats, StatsCollector, gauge, labelled, outcome_name

if TYPE_CHECKING:
    from ._core import Core
    from ._dispatch import Call

__all__ = ["ClientMetrics"]


class ClientMetrics:
    """What one client counts. Every client with metrics in the process reports through
    one collector in the default registry (`_report`), summed: two collectors would
    repeat the same metric names, which Prometheus refuses."""

    def __init__(self) -> None:
        self.stats = CallStats()
        self.core: Core | None = None
        """The client's core, once it exists (an AsyncClient makes it on first use)."""
        self._count = self._counted  # one bound method for every call (`watch`)

    def watch(self, call: Call) -> None:
        """Count ``call`` when it completes (the core's thread; called at submit). No
        closure per call: the start and the completion to pass on go in the call's
        own slots, and one bound method counts them all."""
        call.metered_at = time.monotonic()
        call.metered_then = call.complete
        call.complete = self._count

    def _counted(self, c: Call, value: Any, exc: BaseException | None) -> None:
        if exc is None:
            outcome = "ok"
        elif isinstance(exc, ZeromeshError):
            outcome = outcome_name(exc.code)
        else:
            outcome = "error"
        self.stats.observe(c.target, outcome, time.monotonic() - c.metered_at)
        c.metered_then(c, value, exc)

    def register(self) -> ClientMetrics:
        """Report this client's counts (in prometheus-client's default registry)."""
        global _collector
        with _lock:
            _clients.add(self)
            if _collector is None:
                from prometheus_client import REGISTRY

                _collector = StatsCollector(_report)
                REGISTRY.register(_collector)
        return self

    def unregister(self) -> None:
        """Stop reporting this client (it closed): its counts leave the sums."""
        with _lock:
            _clients.discard(self)


_lock = threading.Lock()
_clients: weakref.WeakSet[ClientMetrics] = weakref.WeakSet()
_collector: StatsCollector | None = None


def _report() -> list[Any]:
    """The families of every client with metrics in this process, summed."""
    with _lock:
        clients = list(_clients)
    stats = CallStats()
    retried: dict[str, int] = {"overloaded": 0, "worker_lost": 0}
    in_flight = 0
    for m in clients:
        stats.add(m.stats)
        core = m.core
        if core is not None:
            for why, n in list(core.dispatcher.retried.items()):
                retried[why] = retried.get(why, 0) + n
            in_flight += len(core.calls)
    return [
        *stats.families(
            "zeromesh_client_calls",
            "Calls answered, by target and outcome (ok, or the error's code name)",
            "Time from submit to answer, retries included, by target",
        ),
        labelled(
            "counter",
            "zeromesh_client_retries",
            "Calls sent again: a worker was full (overloaded) or lost (worker_lost)",
            ["why"],
            (([why], n) for why, n in retried.items()),
        ),
        gauge("zeromesh_client_in_flight", "Calls not answered yet", in_flight),
    ]


def metrics_for(enabled: bool) -> ClientMetrics | None:
    """A registered `ClientMetrics` if ``enabled``, else None."""
    return ClientMetrics().register() if enabled else None
