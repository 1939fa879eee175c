"""Metrics: cheap counting on the hot path, Prometheus families built at scrape time.

A call's outcome and duration are recorded with a dict lookup, a list increment and a
``bisect`` (`CallStats.observe`, well under a microsecond), by the one thread that
answers calls. Nothing is locked or allocated per call: `prometheus-client` objects
with labels cost several microseconds each, a large share of a small call. Instead
each process registers a collector (`StatsCollector`) whose ``collect`` reads these
plain numbers when Prometheus scrapes, and the same numbers feed ``zeromesh top``
through the status a process already answers (`CallStats.recent`).

Labels stay bounded: a target label is only ever a target the process serves or
calls on purpose (`CallStats.observe` is given ``"_other"`` for anything else, e.g. an
unknown handler a client made up); outcomes are ``ok`` and the error code names.

`serve_metrics` starts the HTTP endpoint (``--metrics HOST:PORT``; port 0 picks one and
logs it) on a thread of its own.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from protocol import OTHER_NAME, ErrorCode

if TYPE_CHECKING:
    from prometheus_client.core import Metric

# prometheus_client is imported where it is used (a scrape, `serve_metrics`), not here:
# every zeromesh process imports zmqio, and most never serve metrics.

__all__ = [
    "LATENCY_BUCKETS",
    "OTHER_TARGET",
    "CallStats",
    "StatsCollector",
    "add_metrics_option",
    "counter",
    "exposition",
    "gauge",
    "labelled",
    "outcome_name",
    "process_usage",
    "quantile",
    "serve_metrics",
]

LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Upper bounds (seconds) of the latency histograms: 100 µs (a tiny call on loopback)
to a minute (a long job); +Inf beyond."""

OTHER_TARGET = OTHER_NAME
"""The target label of calls to a target the process does not serve or know."""

_OUTCOMES = {int(code): code.name.lower() for code in ErrorCode}


def outcome_name(code: int | None) -> str:
    """``ok`` for a reply (None), else the error code's name (``timeout``, ``remote``
    ...), ``error_<n>`` for a code this version does not know."""
    if code is None:
        return "ok"
    return _OUTCOMES.get(code) or f"error_{code}"


class _TargetStats:
    __slots__ = ("buckets", "outcomes", "total")

    def __init__(self, nbuckets: int) -> None:
        self.outcomes: dict[str, int] = {}
        self.buckets = [0] * (nbuckets + 1)  # the last one is +Inf
        self.total = 0.0


class CallStats:
    """Calls by target: how many ended each way, and how long they took.

    One writer (the thread that answers calls) calls `observe`; a scrape (any thread)
    reads the numbers, which are only ever incremented: a scrape may see a count one
    call ahead of a histogram, never a number going back.
    """

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = buckets
        self.targets: dict[str, _TargetStats] = {}
        self._history: deque[tuple[float, list[int], int, int]] = deque(maxlen=64)

    def observe(self, target: str, outcome: str, seconds: float | None) -> None:
        """One call to ``target`` ended with ``outcome`` after ``seconds`` (None: it
        never ran, e.g. refused: counted, left out of the latency histogram)."""
        stats = self.targets.get(target)
        if stats is None:
            stats = self.targets[target] = _TargetStats(len(self.bounds))
        stats.outcomes[outcome] = stats.outcomes.get(outcome, 0) + 1
        if seconds is not None:
            stats.buckets[bisect.bisect_left(self.bounds, seconds)] += 1
            stats.total += seconds

    def add(self, other: CallStats) -> None:
        """Add ``other``'s counts to these (to report several together)."""
        for target, theirs in list(other.targets.items()):
            ours = self.targets.get(target)
            if ours is None:
                ours = self.targets[target] = _TargetStats(len(self.bounds))
            for outcome, n in list(theirs.outcomes.items()):
                ours.outcomes[outcome] = ours.outcomes.get(outcome, 0) + n
            for i, n in enumerate(theirs.buckets):
                ours.buckets[i] += n
            ours.total += theirs.total

    def count(self, target: str | None = None, outcome: str | None = None) -> int:
        """Calls so far (of ``target``, ending with ``outcome``; None: any)."""
        rows = self.targets.values() if target is None else [self.targets.get(target)]
        return sum(
            n
            for s in rows
            if s is not None
            for o, n in s.outcomes.items()
            if outcome is None or o == outcome
        )

    def summary(self) -> dict[str, Any]:
        """The running totals a worker's HELLO carries (``stats``, SPEC 7.2): ``calls``
        answered, ``errors`` among them, and the latency histogram (``bounds`` in
        seconds, ``buckets`` counts per bound plus one beyond the last). A monitor
        takes two and divides the difference by the time between them."""
        buckets, calls, errors = self._totals()
        return {"calls": calls, "errors": errors, "bounds": list(self.bounds), "buckets": buckets}

    def _totals(self) -> tuple[list[int], int, int]:
        """Over all targets: the latency buckets, calls, and calls that failed."""
        buckets = [0] * (len(self.bounds) + 1)
        calls = errors = 0
        for s in list(self.targets.values()):
            for i, n in enumerate(s.buckets):
                buckets[i] += n
            for o, n in list(s.outcomes.items()):
                calls += n
                if o != "ok":
                    errors += n
        return buckets, calls, errors

    def recent(self, now: float | None = None, window: float = 10.0) -> dict[str, Any]:
        """Calls/s, errors/s and p50/p99 latency (seconds, None without calls) over about
        the last ``window`` seconds, all targets together: what ``zeromesh top`` shows.

        Each call takes a snapshot; rates come from the oldest snapshot still inside
        the window (``top`` asks once a second, so the window fills as it watches).
        """
        now = time.monotonic() if now is None else now
        buckets, calls, errors = self._totals()
        history = self._history
        while history and now - history[0][0] > window:
            history.popleft()
        base = history[0] if history else None
        history.append((now, buckets, calls, errors))
        if base is None or now - base[0] <= 0:
            return {"calls_per_s": 0.0, "errors_per_s": 0.0, "p50": None, "p99": None}
        span = now - base[0]
        delta = [b - a for a, b in zip(base[1], buckets, strict=True)]
        return {
            "calls_per_s": round((calls - base[2]) / span, 3),
            "errors_per_s": round((errors - base[3]) / span, 3),
            "p50": self._quantile(delta, 0.5),
            "p99": self._quantile(delta, 0.99),
        }

    def _quantile(self, counts: list[int], q: float) -> float | None:
        return quantile(self.bounds, counts, q)

    def families(
        self,
        prefix: str,
        help_calls: str,
        help_seconds: str,
        labels: tuple[str, str] = ("target", "outcome"),
    ) -> Iterator[Metric]:
        """``<prefix>_total{target,outcome}`` and ``<prefix>_duration_seconds{target}``
        (``labels`` renames the two: the gateway counts HTTP routes and statuses)."""
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        calls = CounterMetricFamily(prefix, help_calls, labels=list(labels))
        seconds = HistogramMetricFamily(
            f"{prefix}_duration_seconds", help_seconds, labels=[labels[0]]
        )
        for target, s in sorted(self.targets.items()):
            for outcome, n in sorted(s.outcomes.items()):
                calls.add_metric([target, outcome], n)
            cumulative, running = [], 0
            for bound, n in zip((*self.bounds, float("inf")), s.buckets, strict=True):
                running += n
                cumulative.append((_bound_text(bound), running))
            seconds.add_metric([target], cumulative, s.total)
        yield calls
        yield seconds


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile of a histogram: ``counts`` per upper bound in ``bounds`` plus
    one beyond the last; interpolated within its bucket, as Prometheus's
    histogram_quantile does (the last bound when it falls beyond). None: no counts."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if seen + n >= rank and n:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * (rank - seen) / n
        seen += n
    return bounds[-1]


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class StatsCollector:
    """A `prometheus_client` collector whose ``collect`` calls ``families()``: the
    process builds its metric families from plain numbers at scrape time."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return list(self._families())

    def describe(self) -> Iterable[Metric]:
        return []  # built at scrape time: nothing to check at registration


def gauge(name: str, help: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    """A one-sample gauge family (``labels``: label → value of that sample)."""
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(name, help, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def process_usage() -> dict[str, float]:
    """This process's resident memory (``rss``, bytes) and CPU time so far (``cpu``,
    seconds, all threads), for status answers (``zeromesh top``)."""
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        rss = 0
    return {"rss": rss, "cpu": round(time.process_time(), 3)}


def labelled(
    kind: str, name: str, help: str, labels: list[str], samples: Iterable[tuple[list[str], float]]
) -> Metric:
    """A ``kind`` ("gauge" or "counter") family with one sample per (label values,
    value) of ``samples``."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    family = family_type(name, help, labels=labels)
    for values, value in samples:
        family.add_metric(values, value)
    return family


def counter(name: str, help: str, value: float) -> Metric:
    """A one-sample counter family (``name`` without ``_total``; it is added)."""
    from prometheus_client.core import CounterMetricFamily

    return CounterMetricFamily(name, help, value=value)


def add_metrics_option(parser: Any) -> None:
    """``--metrics HOST:PORT``: serve Prometheus metrics there."""
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        default=None,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (port 0: pick a free "
        "one and log it; default: off)",
    )


def exposition(families: Callable[[], Iterable[Metric]]) -> tuple[bytes, str]:
    """``families()`` and the standard process metrics in Prometheus's text format, and
    its content type: for a process that serves ``/metrics`` itself (the gateway)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector
    from prometheus_client.exposition import generate_latest

    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    registry.register(StatsCollector(families))
    return generate_latest(registry), CONTENT_TYPE_LATEST


def serve_metrics(
    address: str, families: Callable[[], Iterable[Metric]], log: logging.Logger
) -> str:
    """Serve ``families()`` and the standard process metrics (CPU, memory, open files)
    at ``http://address/metrics`` on a thread of its own; returns the URL (the port
    resolved when 0 was asked).

    Raises:
        ValueError: ``address`` is not HOST:PORT, or cannot be bound (in use...).
    """
    from prometheus_client import CollectorRegistry, ProcessCollector
    from prometheus_client.exposition import start_http_server

    host, sep, port_text = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(
            f"--metrics {address!r}: give HOST:PORT, e.g. 127.0.0.1:9100 (port 0 picks one)"
        )
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    registry.register(StatsCollector(families))
    try:
        server, _thread = start_http_server(int(port_text), host, registry)
    except OSError as exc:
        raise ValueError(f"--metrics {address}: cannot listen there: {exc.strerror}") from exc
    url = f"http://{host}:{server.server_port}/metrics"
    log.info("metrics at %s", url)
    return url
