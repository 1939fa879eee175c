"""``zeromesh top``: a live view of the mesh, from what its processes already answer.

Workers answer HELLO with their running totals (SPEC 7.2 ``stats``: calls, errors, a
latency histogram, memory, CPU); brokers answer ``_broker.status`` (their workers,
queues and totals). Both are totals since start, so `Top` keeps the samples of the
last ``window`` seconds per process and shows differences: calls/s, errors/s, and
p50/p99 of the requests answered in that window. No Prometheus needed.

The pure part (`Top.update`, `Top.rows`) takes samples and a clock reading, so it is
tested without sockets; `run_top` asks the endpoints and draws with ``rich``.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from protocol import ProtocolError, Timeout, UnknownHandler, ZeromeshError
from zmqio import ClientSecurity, quantile

__all__ = ["SORT_KEYS", "Row", "Top", "run_top"]

SORT_KEYS = ("name", "calls", "p99", "errors", "load")
"""`Top.rows` orders: ``zeromesh top --sort``."""


@dataclass
class Row:
    """One process as ``top`` shows it (rates over the window; None: not known)."""

    key: str
    name: str
    role: str
    host: str = ""
    pid: int = 0
    state: str = ""
    services: str = ""
    in_flight: int = 0
    capacity: int = 0
    calls_per_s: float | None = None
    errors_per_s: float | None = None
    p50: float | None = None
    p99: float | None = None
    rss: int | None = None
    uptime: float | None = None
    note: str = ""

    @property
    def load(self) -> float:
        """In flight over capacity (saturation); 0 for a process that takes nothing."""
        return self.in_flight / self.capacity if self.capacity else 0.0


@dataclass
class _Totals:
    when: float
    calls: int
    errors: int
    buckets: list[int] = field(default_factory=list)
    pid: int = 0


class Top:
    """Rates and latency from successive total samples, per process."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._history: dict[str, deque[_Totals]] = {}
        self._bounds: dict[str, list[float]] = {}
        self.queues: list[tuple[str, str, int, float | None]] = []
        """(broker, service, queued, oldest wait s) from the last brokers' answers."""
        self._rows: list[Row] = []

    def update(self, hellos: list[dict[str, Any]], statuses: dict[str, Any], now: float) -> None:
        """Take one round of answers: ``hellos`` as `Client.workers` gives them (one
        per endpoint), ``statuses`` the ``_broker.status`` maps of the brokers among
        them (endpoint -> map, or {"error": text})."""
        rows: list[Row] = []
        queues: list[tuple[str, str, int, float | None]] = []
        for h in hellos:
            endpoint = h["endpoint"]
            if h.get("state") == "unreachable":
                note = h.get("refused") or "nothing answered"
                rows.append(Row(endpoint, endpoint, "?", state="unreachable", note=note))
                continue
            if h.get("role") == "broker":
                rows.extend(self._broker_rows(endpoint, h, statuses.get(endpoint, {}), now))
                st = statuses.get(endpoint, {})
                ages = st.get("oldest", {})
                for service, n in st.get("queues", {}).items():
                    queues.append((h.get("name") or endpoint, service, n, ages.get(service)))
                continue
            rows.append(self._worker_row(endpoint, h, now))
        self._rows = rows
        self.queues = queues

    def _worker_row(self, endpoint: str, h: dict[str, Any], now: float) -> Row:
        stats = h.get("stats") or {}
        row = Row(
            endpoint,
            h.get("name") or endpoint,
            "worker",
            h.get("host", ""),
            h.get("pid", 0),
            h.get("state", ""),
            ",".join(sorted(h.get("services", {}))),
            h.get("in_flight", 0),
            h.get("capacity", 0),
            rss=stats.get("rss"),
            uptime=h.get("uptime"),
        )
        if "calls" in stats:  # a 1.0 worker sends no stats: rates unknown
            self._bounds[endpoint] = list(stats.get("bounds", []))
            sample = _Totals(now, stats["calls"], stats.get("errors", 0), stats.get("buckets", []))
            self._rates(endpoint, sample, row)
        return row

    def _broker_rows(
        self, endpoint: str, h: dict[str, Any], st: dict[str, Any], now: float
    ) -> list[Row]:
        b = st.get("broker", {})
        totals = st.get("totals", {})
        row = Row(
            endpoint,
            h.get("name") or endpoint,
            "broker",
            h.get("host", ""),
            h.get("pid", 0),
            b.get("state", h.get("state", "")),
            ",".join(sorted(h.get("services", {}))),
            totals.get("in_flight", h.get("in_flight", 0)),
            totals.get("capacity", h.get("capacity", 0)),
            rss=b.get("rss"),
            uptime=b.get("uptime", h.get("uptime")),
            note=st.get("error", ""),
        )
        if totals:
            errors = sum(
                totals.get(k, 0)
                for k in ("overloaded", "expired_in_queue", "worker_lost", "unknown")
            )
            self._rates(endpoint, _Totals(now, totals.get("answered", 0), errors), row)
        rows = [row]
        for w in st.get("workers", []):
            key = f"{endpoint}/{w.get('id', '')}"
            wrow = Row(
                key,
                w.get("name") or key,
                "worker*",  # behind the broker: what the broker knows of it
                w.get("host", ""),
                w.get("pid", 0),
                w.get("state", ""),
                ",".join(sorted(w.get("services", {}))),
                w.get("in_flight", 0),
                w.get("capacity", 0),
                uptime=w.get("connected"),
            )
            self._rates(key, _Totals(now, w.get("served", 0), 0), wrow)
            wrow.errors_per_s = None  # a broker does not count a worker's errors
            rows.append(wrow)
        return rows

    def _rates(self, key: str, sample: _Totals, row: Row) -> None:
        history = self._history.setdefault(key, deque())
        if history and (
            sample.calls < history[-1].calls
            or sample.errors < history[-1].errors
            or row.pid != history[-1].pid
        ):
            history.clear()  # a new process on that endpoint (restarted): start over
        sample.pid = row.pid
        while history and sample.when - history[0].when > self.window:
            history.popleft()
        history.append(sample)
        base = history[0]
        span = sample.when - base.when
        if span <= 0:
            return
        row.calls_per_s = (sample.calls - base.calls) / span
        row.errors_per_s = (sample.errors - base.errors) / span
        bounds = self._bounds.get(key)
        if bounds and len(sample.buckets) == len(base.buckets) == len(bounds) + 1:
            delta = [b - a for a, b in zip(base.buckets, sample.buckets, strict=True)]
            row.p50 = quantile(bounds, delta, 0.5)
            row.p99 = quantile(bounds, delta, 0.99)

    def rows(self, sort: str = "name") -> list[Row]:
        """The rows of the last update, sorted (busiest first for the rates)."""
        keys = {
            "name": lambda r: (r.role != "broker", r.name),
            "calls": lambda r: -(r.calls_per_s or 0.0),
            "p99": lambda r: -(r.p99 or 0.0),
            "errors": lambda r: -(r.errors_per_s or 0.0),
            "load": lambda r: -r.load,
        }
        return sorted(self._rows, key=keys[sort])


# --- drawing -------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}ms"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}MiB"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def render(top: Top, sort: str, title: str) -> Any:
    """The frame: a table of processes, and one of the brokers' queues if any."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", expand=False)
    for name, justify in [
        ("NAME", "left"),
        ("ROLE", "left"),
        ("HOST", "left"),
        ("PID", "right"),
        ("STATE", "left"),
        ("SERVICES", "left"),
        ("IN-FLIGHT/CAP", "right"),
        ("CALLS/S", "right"),
        ("P50", "right"),
        ("P99", "right"),
        ("ERR/S", "right"),
        ("RSS", "right"),
        ("UP", "right"),
    ]:
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for r in top.rows(sort):
        load_style = "red" if r.load >= 1 else "yellow" if r.load >= 0.75 else ""
        err_style = "red" if r.errors_per_s else ""
        state_style = (
            "red" if r.state == "unreachable" else "yellow" if r.state == "draining" else ""
        )
        table.add_row(
            r.name,
            r.role,
            r.host,
            str(r.pid or "-"),
            Text(r.state + (f" ({r.note})" if r.note else ""), style=state_style),
            r.services,
            Text(f"{r.in_flight}/{r.capacity}", style=load_style),
            _rate(r.calls_per_s),
            _ms(r.p50),
            _ms(r.p99),
            Text(_rate(r.errors_per_s), style=err_style),
            _mib(r.rss),
            _ago(r.uptime),
        )
    parts: list[Any] = [table]
    if top.queues:
        queues = Table(title="broker queues", title_justify="left")
        for name in ("BROKER", "SERVICE", "QUEUED", "OLDEST"):
            queues.add_column(name, no_wrap=True)
        for broker, service, n, age in top.queues:
            queues.add_row(broker, service, Text(str(n), style="yellow" if n else ""), _ms(age))
        parts.append(queues)
    return Group(*parts)


def _sample(
    client: Any, endpoints: list[str], timeout: float, security: ClientSecurity | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from ._status import fetch_status

    hellos = [dict(row) for row in client.workers(timeout=timeout)]
    statuses: dict[str, Any] = {}
    for h in hellos:
        if h.get("role") == "broker":
            try:
                statuses[h["endpoint"]] = fetch_status(h["endpoint"], timeout, security)
            except (Timeout, UnknownHandler, ProtocolError, ZeromeshError) as exc:
                statuses[h["endpoint"]] = {"error": str(exc)}
    return hellos, statuses


def run_top(
    endpoints: list[str],
    *,
    interval: float,
    once: bool,
    sort: str,
    timeout: float,
    security: ClientSecurity | None,
    client_options: dict[str, Any],
) -> int:
    """Draw the mesh every ``interval`` seconds until Ctrl-C (``once``: one frame, after
    two samples ``interval`` apart so rates have something to divide). Returns 1 if
    no endpoint answered in the last frame, else 0."""
    from rich.console import Console
    from rich.live import Live

    from client import Client

    top = Top()
    console = Console()
    with Client(endpoints, **client_options) as client:

        def frame() -> Any:
            hellos, statuses = _sample(client, endpoints, timeout, security)
            top.update(hellos, statuses, time.monotonic())
            when = time.strftime("%H:%M:%S")
            title = f"zeromesh top  {when}  {len(endpoints)} endpoint(s), sorted by {sort}"
            return render(top, sort, title)

        if once:
            frame()
            time.sleep(interval)
            console.print(frame())
        else:
            try:
                with Live(frame(), console=console, refresh_per_second=4, screen=False) as live:
                    while True:
                        time.sleep(interval)
                        live.update(frame())
            except KeyboardInterrupt:
                pass
    return 0 if any(r.state != "unreachable" for r in top.rows()) else 1
