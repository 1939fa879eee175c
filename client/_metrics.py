"""Opt-in Prometheus metrics of a client: ``Client(..., metrics=True)``.

The calls this process makes, by target and outcome, their latency (submit to answer,
retries included), re-sends and calls in flight, registered in prometheus-client's
default registry so the program's own ``/metrics`` (``start_http_server``, a web
framework's exporter) shows them beside its other metrics. Off by default: counting
costs a closure and a clock read per call.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from protocol import ZeromeshError
from zmqio import CallStats, StatsCollector, gauge, labelled, outcome_name

if TYPE_CHECKING:
    from ._core import Core
    from ._dispatch import Call

__all__ = ["ClientMetrics"]


class ClientMetrics:
    """What one client counts, and its collector in the default registry."""

    def __init__(self) -> None:
        self.stats = CallStats()
        self.core: Core | None = None
        """The client's core, once it exists (an AsyncClient makes it on first use)."""
        self._collector: StatsCollector | None = None

    def watch(self, call: Call) -> None:
        """Count ``call`` when it completes (the core's thread; called at submit)."""
        started = time.monotonic()
        complete = call.complete
        stats = self.stats

        def counted(c: Call, value: Any, exc: BaseException | None) -> None:
            if exc is None:
                outcome = "ok"
            elif isinstance(exc, ZeromeshError):
                outcome = outcome_name(exc.code)
            else:
                outcome = "error"
            stats.observe(c.target, outcome, time.monotonic() - started)
            complete(c, value, exc)

        call.complete = counted

    def families(self) -> list[Any]:
        families = list(
            self.stats.families(
                "zeromesh_client_calls",
                "Calls answered, by target and outcome (ok, or the error's code name)",
                "Time from submit to answer, retries included, by target",
            )
        )
        core = self.core
        if core is not None:
            retried = dict(core.dispatcher.retried)
            families.append(
                labelled(
                    "counter",
                    "zeromesh_client_retries",
                    "Calls sent again: a worker was full (overloaded) or lost (worker_lost)",
                    ["why"],
                    (([why], n) for why, n in retried.items()),
                )
            )
            pending = len(core.calls)
            families.append(gauge("zeromesh_client_in_flight", "Calls not answered yet", pending))
        return families

    def register(self) -> ClientMetrics:
        """Add this client's collector to prometheus-client's default registry."""
        from prometheus_client import REGISTRY

        self._collector = StatsCollector(self.families)
        REGISTRY.register(self._collector)
        return self

    def unregister(self) -> None:
        from prometheus_client import REGISTRY

        if self._collector is not None:
            REGISTRY.unregister(self._collector)
            self._collector = None


def metrics_for(enabled: bool) -> ClientMetrics | None:
    """A registered `ClientMetrics` if ``enabled``, else None."""
    return ClientMetrics().register() if enabled else None
