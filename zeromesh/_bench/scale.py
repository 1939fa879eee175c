"""``zeromesh bench --scale``: the mesh with thousands of peers beside the same mesh
with a handful, in one run.

The many peers are simulated (`simpeers`: a few processes holding hundreds of sockets
each, speaking the wire protocol through `protocol` and checking everything they
receive); the parts measured are the real ones:

* the real `client.Client` over 2 / 20 / 200 simulated worker endpoints: pipelined
  calls/s and the client's CPU per call;
* the real broker (``python -m broker``) with 10 / 1,000 / 5,000 simulated workers:
  its idle CPU over a window, false expiries in that window, dispatch calls/s with a
  real `Client`, its memory per worker, and ``zeromesh status`` / ``zeromesh top
  --once`` against it;
* one real worker (``python -m worker``, the bench's echo service) with 10 / 1,000
  simulated clients, all heartbeating, two of them busy: the worker's CPU for the
  heartbeats, and the busy clients' calls/s.

Each figure stands beside the smallest size's (the first of each list), measured in
the same run: the sizes of a group run side by side and are measured in alternating
rounds (the median round reported), so a busy neighbour slows all of them. The run
fails (exit status 1) if a simulated peer saw a protocol mistake.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import re
import resource
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import zmq

from client import Client
from protocol import ZeromeshError

from .._status import fetch_status
from .mesh import Row, _Children, _iter_rows, _ready, _rss_mib, render
from .raw import WINDOW

__all__ = ["ScaleSizes", "main"]

SIM_MODULE = "zeromesh._bench.simpeers"
_EXPIRED = re.compile(r"(\d+) worker\(s\) expired")  # the broker's warning
TARGET_AT = 1000
"""The targets are stated for 1,000 workers or clients; larger sizes are information."""
BUSY_CLIENTS = 2
BUSY_WINDOW = 100  # the real Client's default prefetch: what one client keeps at a worker
TOP_INTERVAL = 0.2  # `top --once` waits this long between its two samples, on purpose

Log = Callable[[str], None]


@dataclass(frozen=True)
class ScaleSizes:
    """What the scale bench runs. The first size of each list is the counterpart."""

    endpoints: tuple[int, ...] = (2, 20, 200)
    broker_workers: tuple[int, ...] = (10, 1000, 5000)
    worker_clients: tuple[int, ...] = (10, 1000)
    idle_window: float = 60.0
    rounds: int = 5
    calls: int = 20_000
    busy_seconds: float = 5.0
    per_process: int = 1000
    status_runs: int = 3

    @classmethod
    def pick(cls, quick: bool, tiny: bool) -> ScaleSizes:
        if tiny:
            return cls(
                endpoints=(2, 4),
                broker_workers=(2, 20),
                worker_clients=(3, 20),
                idle_window=1.0,
                rounds=1,
                calls=500,
                busy_seconds=0.5,
                per_process=10,
                status_runs=1,
            )
        if quick:
            return cls(idle_window=10.0, rounds=3, calls=10_000, busy_seconds=3.0)
        return cls()


# --- simulated peers' processes ------------------------------------------------------------


def _split(n: int, parts: int) -> list[int]:
    """``n`` peers over ``parts`` processes, as evenly as can be (no empty process)."""
    parts = max(1, min(parts, n))
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _per_process(n: int, per_process: int) -> list[int]:
    return _split(n, math.ceil(n / per_process)) if n else []


class SimProc:
    """One `simpeers` process: commands in on its stdin, JSON lines out on its stdout."""

    def __init__(self, kids: _Children, ledger: list[dict[str, Any]], role: str, *args: str):
        self.role = role
        self.ledger = ledger
        self.log_path = os.path.join(kids.dir, f"sim{len(kids.procs)}-{role}.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", SIM_MODULE, role, *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        kids.procs.append(self.proc)  # stopped with the others, whatever happens
        self._buffer = b""
        self.last: dict[str, Any] = {}
        self.closed = False

    def read(self, timeout: float) -> dict[str, Any]:
        """The next JSON line the process writes."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(
                    f"bench: simulated {self.role} (pid {self.proc.pid}) said nothing for "
                    f"{timeout:g} s; its log: {self.log_path}"
                )
            if select.select([fd], [], [], left)[0]:
                data = os.read(fd, 65536)
                if not data:
                    raise SystemExit(
                        f"bench: simulated {self.role} (pid {self.proc.pid}) exited "
                        f"({self.proc.wait()}); its log:\n{_tail(self.log_path)}"
                    )
                self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        out: dict[str, Any] = json.loads(line)
        if out.get("event") == "stats":
            self.last = out
        return out

    def ask(self, command: str, timeout: float = 30.0) -> dict[str, Any]:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(command.encode() + b"\n")
        stdin.flush()
        return self.read(timeout)

    def close(self) -> None:
        """Final counters into the ledger, then quit."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(SystemExit, OSError):
            self.ask("stats", 10)
        if self.last:
            self.ledger.append(self.last)
        with contextlib.suppress(OSError):
            self.ask_nothing("quit")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)

    def ask_nothing(self, command: str) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        stdin.write(command.encode() + b"\n")
        stdin.close()


def _tail(path: str, lines: int = 20) -> str:
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        return "".join(f.readlines()[-lines:])
    return ""


@dataclass
class SimGroup:
    """The processes simulating one set of peers; counters summed over them."""

    procs: list[SimProc] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        return _sum([p.ask("stats") for p in self.procs])

    def close(self) -> None:
        for p in self.procs:
            p.close()


def _sum(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Counters of several processes as one: sums, the largest lag, every example."""
    out: dict[str, Any] = {"mistakes": {}, "examples": [], "max_lag": 0.0, "processes": 0}
    for s in stats:
        out["processes"] += 1
        for key, value in s.items():
            if key == "mistakes":
                for kind, n in value.items():
                    out["mistakes"][kind] = out["mistakes"].get(kind, 0) + n
            elif key == "examples":
                out["examples"] += value
            elif key in ("max_lag", "register_max"):
                out[key] = max(out.get(key, 0.0), value)
            elif isinstance(value, int | float) and key != "pid":
                out[key] = out.get(key, 0) + value
    return out


@dataclass
class Run:
    """What the groups of rows share: the child processes (all stopped at the end),
    the progress log, and the ledger of every simulation process's final counters."""

    kids: _Children
    log: Log
    ledger: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def sim(self, role: str, *args: str) -> SimProc:
        return SimProc(self.kids, self.ledger, role, *args)

    def note(self, text: str) -> None:
        """Something the table cannot say (a broker that stopped answering...): logged
        now, printed again under the table."""
        if text not in self.notes:  # said once, however often it happens
            self.log(f"  NOTE: {text}")
            self.notes.append(text)


def _delta(after: dict[str, Any], before: dict[str, Any], key: str) -> int:
    return int(after.get(key, 0) - before.get(key, 0))


# --- measuring processes -------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _client(endpoints: list[str]) -> Client:
    """A `Client` over ``endpoints``, or a clear stop if it cannot have that many."""
    try:
        return Client(endpoints, max_in_flight=WINDOW)
    except zmq.ZMQError as exc:
        raise SystemExit(
            f"bench: Client over {len(endpoints)} endpoints failed: {exc}. A zmq.Context "
            "holds 1,023 sockets unless told otherwise, and Client takes three per "
            "endpoint (its DEALER and the two ends of its socket monitor)"
        ) from exc


def _pipelined(c: Client, n: int) -> tuple[float, float]:
    """Calls/s of ``n`` pipelined calls, and this process's CPU µs per call."""
    cpu = time.process_time()
    start = time.perf_counter()
    futs = [c.submit("bench.echo", i) for i in range(n)]
    for i, f in enumerate(futs):
        if f.result() != i:
            raise SystemExit(f"bench: call {i} came back as {f.result()!r}")
    elapsed = time.perf_counter() - start
    return n / elapsed, (time.process_time() - cpu) / n * 1e6


def _rounds(sizes: tuple[int, ...], rounds: int, fn: Callable[[int], Any]) -> dict[int, list[Any]]:
    """``fn(size)`` for every size, ``rounds`` times, the order rotated each round."""
    out: dict[int, list[Any]] = {n: [] for n in sizes}
    for r in range(rounds):
        k = r % len(sizes)
        for n in sizes[k:] + sizes[:k]:
            out[n].append(fn(n))
    return out


def _wait(what: str, ok: Callable[[], bool], timeout: float, log: Log) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} did not happen within {timeout:.0f} s")
        time.sleep(0.5)
    log(f"  {what}")


def _wait_capacity(c: Client, capacity: int, timeout: float = 30.0) -> None:
    """Until every endpoint behind ``c`` said HELLO (or a broker announced them all)."""
    c.options(timeout=timeout).call("bench.echo", 0)
    deadline = time.monotonic() + timeout
    while c.capacity() < capacity and time.monotonic() < deadline:
        time.sleep(0.1)


def _status(endpoint: str) -> dict[str, Any]:
    return fetch_status(endpoint, 10.0)


def _ok(met: bool, applies: bool) -> bool | None:
    return met if applies else None


# --- the client over many worker endpoints ------------------------------------------------


def client_rows(sizes: ScaleSizes, run: Run) -> list[Row]:
    """The real `Client` over N simulated endpoints, each announcing ``WINDOW`` slots,
    so the client's own window (1,000 in flight) binds at every size. Two processes
    of endpoints per size, so that sizes differ only in the count."""
    counts = sizes.endpoints
    run.log(f"client over {', '.join(map(str, counts))} simulated worker endpoints")
    groups: dict[int, SimGroup] = {}
    endpoints: dict[int, list[str]] = {}
    try:
        for n in counts:
            group = SimGroup(
                [
                    run.sim("endpoints", "--count", str(k), "--threads", str(WINDOW))
                    for k in _split(n, 2)
                ]
            )
            groups[n] = group
            endpoints[n] = [ep for p in group.procs for ep in p.read(60)["endpoints"]]
        with contextlib.ExitStack() as stack:
            clients = {n: stack.enter_context(_client(endpoints[n])) for n in counts}
            for n, c in clients.items():
                _wait_capacity(c, n * WINDOW)
                _pipelined(c, min(sizes.calls, 2000))  # warm-up
            run.log(f"  {sizes.rounds} round(s) of {sizes.calls:,} pipelined calls each")
            got = _rounds(counts, sizes.rounds, lambda n: _pipelined(clients[n], sizes.calls))
    finally:
        for g in groups.values():
            g.close()
    small = counts[0]
    rate = {n: statistics.median(r for r, _ in got[n]) for n in counts}
    cpu = {n: statistics.median(u for _, u in got[n]) for n in counts}
    rows = []
    for n in counts[1:]:
        rows.append(
            _as_fast(f"Client.submit calls/s, {n} simulated endpoints vs {small}", rate, n, small)
        )
        rows.append(
            Row(
                f"client CPU per call (us), {n} simulated endpoints vs {small}",
                cpu[n],
                cpu[small],
                cpu[n] / cpu[small],
                "<= 1.11x",
                "us",
                cpu[n] <= cpu[small] / 0.9,
            )
        )
    return rows


# --- the broker with many workers ------------------------------------------------------------


class BrokerMesh:
    """A real broker and its simulated workers (credit ``WINDOW / N`` each, at least 1,
    so every size offers the client's whole window).

    An overloaded broker is a result, not a failure of the run: a status it does not
    answer in time is None, and the figures that needed it say so."""

    def __init__(self, run: Run, n: int, per_process: int) -> None:
        self.run = run
        self.n = n
        self.credit = max(1, math.ceil(WINDOW / n))
        self.endpoint = run.kids.endpoint()
        self.log_path = os.path.join(run.kids.dir, f"{len(run.kids.procs)}.log")
        self.proc = run.kids.spawn(
            "-m", "broker", "--bind", self.endpoint, "--log-level", "warning"
        )
        _wait(f"broker for {n} up", functools.partial(_answers, self.endpoint), 30, run.log)
        self.rss0 = _rss_mib(self.proc.pid)
        self.group = SimGroup(
            [
                run.sim(
                    "workers",
                    "--connect",
                    self.endpoint,
                    "--count",
                    str(k),
                    "--credit",
                    str(self.credit),
                    "--name",
                    f"w{n}.{j}",
                )
                for j, k in enumerate(_per_process(n, per_process))
            ]
        )
        self.started = time.monotonic()
        self.registered = 0
        self.register_s = 0.0

    def wait_registered(self) -> None:
        """Until the broker holds every worker and every worker holds its credit, or
        a time that grows with N; short of it, the run goes on and says so."""
        timeout = 60 + self.n / 50
        while True:
            st = self.status()
            if st is not None:
                self.registered = st["totals"]["workers"]
            if self.registered == self.n and self.group.stats()["ready"] == self.n:
                self.register_s = time.monotonic() - self.started
                self.run.log(f"  {self.n} simulated workers registered in {self.register_s:.1f} s")
                return
            if time.monotonic() - self.started > timeout:
                self.register_s = time.monotonic() - self.started
                self.run.note(
                    f"broker with {self.n} workers: only {self.registered} registered after "
                    f"{self.register_s:.0f} s (measured anyway)"
                )
                return
            time.sleep(0.5)

    def settle(self, timeout: float = 60.0) -> None:
        """Until the broker keeps up (its workers registered and fewer than 1% of their
        PINGs unanswered, twice in a row): after a registration it may still be working
        through the HELLOs the workers repeated meanwhile, and that is not idle."""
        start = time.monotonic()
        calm = 0
        slack = max(2, self.n // 100)
        while calm < 2:
            stats = self.group.stats()
            behind = stats.get("pings", 0) - stats.get("pongs", 0)
            ready = stats.get("ready", 0)
            calm = calm + 1 if behind <= slack and ready >= self.n - slack else 0
            if time.monotonic() - start > timeout:
                self.run.note(
                    f"broker with {self.n} workers: not settled after {timeout:.0f} s "
                    f"({ready} workers ready, {behind} PINGs unanswered; measured anyway)"
                )
                return
            time.sleep(1.0)
        self.run.log(f"  broker with {self.n} workers settled in {time.monotonic() - start:.0f} s")

    def status(self) -> dict[str, Any] | None:
        """``_broker.status``, or None if the broker did not answer within 10 s."""
        try:
            return fetch_status(self.endpoint, 10.0)
        except ZeromeshError as exc:
            self.run.note(f"broker with {self.n} workers: _broker.status failed: {exc}")
            return None

    def sample(self) -> tuple[float, float, float, dict[str, Any] | None, dict[str, Any], int]:
        """When, CPU seconds so far, RSS (MiB), ``_broker.status``, the workers'
        counters, and the workers its log says it expired (it logs them even when too
        busy to answer a status, which may take its whole timeout)."""
        pid = self.proc.pid
        when, cpu, rss = time.monotonic(), _cpu_seconds(pid), _rss_mib(pid)
        return when, cpu, rss, self.status(), self.group.stats(), self.expired_logged()

    def expired_logged(self) -> int:
        with open(self.log_path, errors="replace") as f:
            return sum(int(m.group(1)) for m in _EXPIRED.finditer(f.read()))

    def stop(self) -> None:
        st = self.status()
        errors = st["broker"]["protocol_errors"] if st is not None else 0
        if errors:
            self.run.note(f"broker with {self.n} workers counted {errors} protocol error(s)")
            self.run.ledger.append({"role": "brokers", "mistakes": {"refused": errors}})
        self.group.close()
        self.run.kids.stop(self.proc)


@dataclass
class _BrokerFigures:
    """One broker's figures in one phase (beside its counterpart)."""

    n: int
    registered: int = 0
    register_s: float = 0.0
    rss_per_worker: float = 0.0
    idle_cpu: float = 0.0
    idle_cpu_s: float = 0.0  # CPU seconds over the window
    pongs: int = 0  # heartbeats it answered in the window
    rss_growth: float = 0.0  # MiB a minute over the window
    window: float = 0.0
    expiries: int = 0
    dispatch: float = 0.0
    status_s: float = 0.0
    top_s: float = 0.0
    failed: set[str] = field(default_factory=set)  # which figures a failure stands behind


def broker_rows(sizes: ScaleSizes, run: Run) -> list[Row]:
    """A real broker with each number of simulated workers. The counterpart (the first
    size) stays up throughout; each larger broker has a phase of its own beside it, so
    the load of 5,000 workers does not weigh on the 1,000-worker figures, and both of a
    phase's brokers are measured over the same window and in alternating rounds."""
    counts = sizes.broker_workers
    run.log(f"brokers with {', '.join(map(str, counts))} simulated workers")
    phases: list[tuple[_BrokerFigures, _BrokerFigures]] = []
    base = BrokerMesh(run, counts[0], sizes.per_process)
    try:
        base.wait_registered()
        for n in counts[1:]:
            run.log(f"  phase: {n} workers beside {counts[0]}")
            big = BrokerMesh(run, n, sizes.per_process)
            try:
                big.wait_registered()
                phases.append(_broker_phase(sizes, run, base, big))
            finally:
                big.stop()
    finally:
        base.stop()

    rows = []
    small = counts[0]

    def add(
        label: str,
        key: str,
        target: str,
        unit: str,
        met: Callable[[float, float], bool] | None,
    ) -> None:
        for f_small, f in phases:
            applies = f.n <= TARGET_AT and met is not None
            a, b = getattr(f, key), getattr(f_small, key)
            failed = key in f.failed or key in f_small.failed
            rows.append(
                Row(
                    label.format(n=f.n, small=small, window=f.window)
                    + (" (FAILED: see notes)" if failed else ""),
                    a,
                    b,
                    _ratio(a, b),
                    target if applies or failed else "-",
                    unit,
                    False if failed else met(a, b) if applies and met is not None else None,
                )
            )

    add(
        "broker idle CPU, {n} workers vs {small} (% of a core, {window:.0f} s)",
        "idle_cpu", "<= 3%", "%", lambda a, b: a <= 3.0,
    )  # fmt: skip
    for f_small, f in phases:  # a target at every size: no worker is falsely expired
        rows.append(
            Row(
                f"false expiries in {f.window:.0f} s idle, {f.n} workers vs {small}",
                f.expiries,
                f_small.expiries,
                None,
                "0",
                "workers",
                f.expiries == 0 and f_small.expiries == 0,
            )
        )
    add(
        "brokered Client.submit calls/s, {n} workers vs {small}",
        "dispatch", ">= 0.9x", "calls/s", lambda a, b: a >= 0.9 * b,
    )  # fmt: skip
    add("broker RSS per worker (KiB), {n} workers vs {small}", "rss_per_worker", "-", "KiB", None)
    add(
        "broker RSS growth idle (MiB/min), {n} workers vs {small}",
        "rss_growth", "-", "MiB/min", None,
    )  # fmt: skip
    for f_small, f in phases:
        rows.append(
            _marginal(
                f"broker CPU per heartbeat (us), {f.n} workers, above {small}'s",
                f.idle_cpu_s - f_small.idle_cpu_s,
                f.pongs - f_small.pongs,
            )
        )
    add("time until all workers registered (s), {n} vs {small}", "register_s", "-", "s", None)
    add(
        "zeromesh status wall time (s), {n} workers vs {small}",
        "status_s", "<= 1 s", "s", lambda a, b: a <= 1.0,
    )  # fmt: skip
    add(
        "zeromesh top --once wall time (s), {n} workers vs {small}",
        "top_s", "<= 1 s", "s", lambda a, b: a <= 1.0,
    )  # fmt: skip
    for f_small, f in phases:
        if f.registered < f.n:
            rows.append(
                Row(
                    f"simulated workers registered, {f.n} vs {small}",
                    f.registered,
                    f_small.registered,
                    None,
                    "all",
                    "workers",
                    False,
                )
            )
    return rows


def _broker_phase(
    sizes: ScaleSizes, run: Run, base: BrokerMesh, big: BrokerMesh
) -> tuple[_BrokerFigures, _BrokerFigures]:
    meshes = {base.n: base, big.n: big}
    figures = {m.n: _BrokerFigures(m.n, m.registered, m.register_s) for m in meshes.values()}
    for m in meshes.values():
        if m.registered:
            figures[m.n].rss_per_worker = (_rss_mib(m.proc.pid) - m.rss0) * 1024 / m.registered

    for m in meshes.values():
        m.settle()
    run.log(f"  idle for {sizes.idle_window:g} s")
    before = {n: m.sample() for n, m in meshes.items()}
    start = time.monotonic()
    time.sleep(sizes.idle_window)
    after = {n: m.sample() for n, m in meshes.items()}
    window = time.monotonic() - start
    for n, f in figures.items():
        (t0, c0, r0, st0, s0, log0), (t1, c1, r1, st1, s1, log1) = before[n], after[n]
        f.window = window
        f.idle_cpu_s = (c1 - c0) * window / (t1 - t0)  # over the window, pro rata
        f.idle_cpu = (c1 - c0) / (t1 - t0) * 100
        f.pongs = _delta(s1, s0, "pongs")
        f.rss_growth = (r1 - r0) / (t1 - t0) * 60
        expired: int | None = None
        if st0 is not None and st1 is not None:
            expired = st1["totals"]["workers_expired"] - st0["totals"]["workers_expired"]
        noticed = _delta(s1, s0, "forgotten")
        f.expiries = max(expired or 0, noticed, log1 - log0)
        _sims_cpu(run, f"the broker with {n} workers", s0, s1, window)
        run.log(
            f"  {n} workers: broker CPU {f.idle_cpu:.2f}% of a core, expired "
            f"{'?' if expired is None else expired} (the workers noticed {noticed}), pings "
            f"{_delta(s1, s0, 'pings')} pongs {_delta(s1, s0, 'pongs')}, late heartbeats "
            f"{_delta(s1, s0, 'hb_late')} (worst {s1['max_lag'] * 1000:.0f} ms), logged "
            f"{log1 - log0} expired, broker "
            f"silent {_delta(s1, s0, 'silent')}; RSS {r0:.0f} -> {r1:.0f} MiB; the simulated "
            f"workers used {(s1['cpu'] - s0['cpu']) / window * 100:.1f}% of a core"
        )

    run.log("  dispatch through each broker with a real Client")
    with contextlib.ExitStack() as stack:
        clients = {
            n: stack.enter_context(Client([m.endpoint], max_in_flight=WINDOW, retries=0))
            for n, m in meshes.items()
        }

        def dispatch(n: int) -> float:
            if "dispatch" in figures[n].failed:
                return 0.0
            try:
                return _pipelined(clients[n], sizes.calls)[0]
            except ZeromeshError as exc:
                figures[n].failed.add("dispatch")
                run.note(f"broker with {n} workers: pipelined calls failed: {exc!r}")
                return 0.0

        for n, c in clients.items():
            try:
                _wait_capacity(c, meshes[n].registered * meshes[n].credit)
                _pipelined(c, min(sizes.calls, 2000))
            except ZeromeshError as exc:
                figures[n].failed.add("dispatch")
                run.note(f"broker with {n} workers: the first calls failed: {exc!r}")
        got = _rounds(tuple(meshes), sizes.rounds, dispatch)
    for n, f in figures.items():
        f.dispatch = statistics.median(got[n])

    run.log("  zeromesh status and zeromesh top --once against each broker")

    def tools(n: int) -> tuple[float, float]:
        status_s, top_s, failures = _tools(meshes[n].endpoint)
        for what, why in failures.items():
            figures[n].failed.add(what)
            run.note(f"broker with {n} workers: zeromesh {why}")
        return status_s, top_s

    walls = _rounds(tuple(meshes), sizes.status_runs, tools)
    for n, f in figures.items():
        f.status_s = statistics.median(s for s, _ in walls[n])
        f.top_s = statistics.median(t for _, t in walls[n])
    return figures[base.n], figures[big.n]


def _answers(endpoint: str) -> bool:
    try:
        fetch_status(endpoint, 1.0)
    except ZeromeshError:
        return False
    return True


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _tools(endpoint: str) -> tuple[float, float, dict[str, str]]:
    """Wall seconds of ``zeromesh status`` and of ``zeromesh top --once`` (less the
    interval it waits between its two samples), each a fresh process, as typed; and
    what failed (``status_s``/``top_s`` -> why)."""
    cmd = [sys.executable, "-m", "zeromesh"]
    failures = {}
    start = time.perf_counter()
    st = subprocess.run(
        [*cmd, "status", "-c", endpoint, "--timeout", "10"], capture_output=True, text=True
    )
    status_s = time.perf_counter() - start
    if st.returncode or "workers:" not in st.stdout:
        failures["status_s"] = f"status exited {st.returncode}: {_said(st)}"
    start = time.perf_counter()
    top = subprocess.run(
        [*cmd, "top", "--once", "--interval", str(TOP_INTERVAL), "-c", endpoint, "--timeout", "10"],
        capture_output=True,
        text=True,
    )
    top_s = time.perf_counter() - start - TOP_INTERVAL
    if top.returncode:
        # top draws its table (endpoints unreachable) and says nothing on stderr
        why = (top.stderr.strip() and _said(top)) or "it showed the broker unreachable"
        failures["top_s"] = f"top exited {top.returncode}: {why}"
    return status_s, top_s, failures


def _said(proc: subprocess.CompletedProcess[str]) -> str:
    """The last words of a tool that failed (its errors go to stderr or stdout)."""
    return " ".join((proc.stderr.strip() or proc.stdout.strip()).split())[-300:]


# --- one worker with many clients ------------------------------------------------------------


def worker_rows(sizes: ScaleSizes, run: Run) -> list[Row]:
    """One real worker per size, all at once, each with N simulated clients that
    heartbeat; two of them pipeline requests in the busy rounds (one worker at a time)."""
    counts = sizes.worker_clients
    run.log(f"a worker with {', '.join(map(str, counts))} simulated clients")
    endpoints: dict[int, str] = {}
    pids: dict[int, int] = {}
    busy: dict[int, SimProc] = {}
    groups: dict[int, SimGroup] = {}
    try:
        for n in counts:
            endpoints[n] = run.kids.worker()
            pids[n] = run.kids.procs[-1].pid
        _ready(list(endpoints.values()))
        for n in counts:
            busy[n] = run.sim(
                "clients", "--connect", endpoints[n], "--count", str(BUSY_CLIENTS),
                "--busy", str(BUSY_CLIENTS), "--window", str(BUSY_WINDOW),
            )  # fmt: skip
            groups[n] = SimGroup(
                [
                    busy[n],
                    *(
                        run.sim("clients", "--connect", endpoints[n], "--count", str(k))
                        for k in _per_process(n - BUSY_CLIENTS, sizes.per_process)
                    ),
                ]
            )

        def greeted(n: int) -> bool:
            return groups[n].stats()["ready"] == n

        for n in counts:
            _wait(
                f"{n} simulated clients greeted",
                functools.partial(greeted, n),
                60 + n / 50,
                run.log,
            )
        run.log(f"  idle for {sizes.idle_window:g} s")

        def sample(n: int) -> tuple[float, float, dict[str, Any]]:
            return _cpu_seconds(pids[n]), _rss_mib(pids[n]), groups[n].stats()

        before = {n: sample(n) for n in counts}
        start = time.monotonic()
        time.sleep(sizes.idle_window)
        after = {n: sample(n) for n in counts}
        window = time.monotonic() - start
        cpu = {n: after[n][0] - before[n][0] for n in counts}
        growth = {n: (after[n][1] - before[n][1]) / window * 60 for n in counts}
        pongs = {n: _delta(after[n][2], before[n][2], "pongs") for n in counts}
        for n in counts:
            s0, s1 = before[n][2], after[n][2]
            _sims_cpu(run, f"the worker with {n} clients", s0, s1, window)
            run.log(
                f"  {n} clients: worker CPU {cpu[n] / window * 100:.2f}% of a core, "
                f"{pongs[n]} pongs, late heartbeats {_delta(s1, s0, 'hb_late')}, "
                f"worker silent {_delta(s1, s0, 'silent')}; RSS {before[n][1]:.0f} -> "
                f"{after[n][1]:.0f} MiB; the simulated clients used "
                f"{(s1['cpu'] - s0['cpu']) / window * 100:.1f}% of a core"
            )

        run.log(f"  {sizes.rounds} busy round(s) of {sizes.busy_seconds:g} s")

        def busy_round(n: int) -> float:
            report = busy[n].ask(f"busy {sizes.busy_seconds}", sizes.busy_seconds + 60)
            if report.get("unanswered") or report.get("errors"):
                run.note(f"a busy round with {n} clients: {report}")
            return float(report["calls"]) / float(report["seconds"])

        got = _rounds(counts, sizes.rounds, busy_round)
    finally:
        for g in groups.values():
            g.close()

    small = counts[0]
    rate = {n: statistics.median(got[n]) for n in counts}
    idle = {n: cpu[n] / window * 100 for n in counts}
    rows = []
    for n in counts[1:]:
        label = f"busy clients' calls/s, worker with {n} clients vs {small}"
        rows.append(_as_fast(label, rate, n, small))
        label = f"worker idle CPU, {n} heartbeating clients vs {small} (% of a core)"
        rows.append(_information(label, idle, n, small, "%"))
        label = f"worker RSS growth idle (MiB/min), {n} clients vs {small}"
        rows.append(_information(label, growth, n, small, "MiB/min"))
        label = f"worker CPU per heartbeat (us), {n} clients, above {small}'s"
        rows.append(_marginal(label, cpu[n] - cpu[small], pongs[n] - pongs[small]))
    return rows


def _as_fast(label: str, rate: dict[int, float], n: int, small: int) -> Row:
    """Calls/s at ``n`` against ``small``'s: the target is 0.9x."""
    a, b = rate[n], rate[small]
    return Row(label, a, b, _ratio(a, b), ">= 0.9x", "calls/s", a >= 0.9 * b)


def _marginal(label: str, cpu_s: float, heartbeats: int) -> Row:
    """CPU µs per heartbeat of a large mesh above its counterpart: what each added
    peer's heartbeat costs, without the fixed costs (timers) that dominate a small one."""
    if heartbeats <= 0:
        return Row(label + " (no heartbeats answered)", 0.0, None, None, "-", "us", None)
    return Row(label, cpu_s / heartbeats * 1e6, None, None, "-", "us", None)


def _sims_cpu(run: Run, what: str, s0: dict[str, Any], s1: dict[str, Any], window: float) -> None:
    """Note it when the simulated peers took much of the 2 cores the measured process
    shares with them: its figures are then pessimistic (real peers run elsewhere)."""
    share = (s1["cpu"] - s0["cpu"]) / window * 100
    if share > 50:
        run.note(
            f"{what}: its simulated peers used {share:.0f}% of a core in the idle window, "
            "on the machine it runs on: its figures there are pessimistic"
        )


def _information(label: str, values: dict[int, float], n: int, small: int, unit: str) -> Row:
    a, b = values[n], values[small]
    return Row(label, a, b, _ratio(a, b), "-", unit, None)


# --- the run ------------------------------------------------------------------------------------


def raise_fd_limit(sizes: ScaleSizes) -> str:
    """Raise this process's soft limit on open files to the hard limit (children
    inherit it) and check it covers the largest process of the run.

    Raises:
        SystemExit: the hard limit is too low, with what to change.
    """
    need = 256 + max(
        max(sizes.broker_workers),  # the broker: one connection per worker
        2 * min(sizes.per_process, max(sizes.broker_workers)),  # a simulation process
        5 * sum(sizes.endpoints),  # this process: every endpoint's sockets, all clients
        max(sizes.worker_clients),  # the worker: one connection per client
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 4 * need)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < need:
        raise SystemExit(
            f"bench: the largest process of this run needs about {need} open files, and "
            f"the hard limit is {hard} (`ulimit -Hn`): raise it (limits.conf, systemd's "
            "LimitNOFILE, or `ulimit -n` as root), or run smaller sizes"
        )
    return f"open files: soft limit {soft} -> {target} (hard {hard}), about {need} needed"


def summary(ledger: list[dict[str, Any]]) -> tuple[str, int]:
    """The simulated peers' totals by role, and how many protocol mistakes they saw."""
    lines = ["simulated peers (totals over the run):"]
    mistakes = 0
    by_role: dict[str, list[dict[str, Any]]] = {}
    for s in ledger:
        by_role.setdefault(s.get("role", "?"), []).append(s)
    for role, stats in by_role.items():
        t = _sum(stats)
        n = sum(t["mistakes"].values())
        mistakes += n
        if role == "brokers":
            lines.append(f"  the brokers counted {n} protocol error(s) from simulated workers")
            continue
        extra = {
            "workers": f"broker expiries noticed {t.get('forgotten', 0)}, "
            f"broker silent {t.get('silent', 0)}, requests {t.get('requests', 0):,}",
            "endpoints": f"requests {t.get('requests', 0):,}, HELLOs {t.get('hellos', 0):,}",
            "clients": f"replies {t.get('replies', 0):,}, error answers {t.get('errors', 0)}, "
            f"worker silent {t.get('silent', 0)}",
        }.get(role, "")
        lines.append(
            f"  {role}: {t.get('count', 0):,} in {t['processes']} process(es); received "
            f"{t.get('received', 0):,}, dropped sends {t.get('dropped', 0)}, late heartbeats "
            f"{t.get('hb_late', 0)} (worst {t['max_lag'] * 1000:.0f} ms); {extra}; "
            f"protocol mistakes {n}"
        )
        for example in t["examples"][:5]:
            lines.append(f"    {example}")
    return "\n".join(lines), mistakes


def run_all(sizes: ScaleSizes, log: Log) -> tuple[list[Row], Run]:
    """Every group of rows, and the run (its ledger of the simulated peers' final
    counters, its notes)."""
    rows: list[Row] = []
    run = Run(_Children("tcp"), log)
    try:
        rows += client_rows(sizes, run)
        rows += broker_rows(sizes, run)
        rows += worker_rows(sizes, run)
    finally:
        run.kids.close()
    return rows, run


def _sizes(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(","))
    if len(values) < 2 or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError("give two sizes or more, the counterpart first: 10,1000")
    return values


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="zeromesh bench --scale",
        description="The mesh with thousands of simulated peers beside the same mesh with a "
        "handful, in one run: a client over many worker endpoints, a broker with many "
        "workers, a worker with many clients. Prints the ratios against the targets.",
    )
    p.add_argument("--quick", action="store_true", help="a 10 s idle window, fewer rounds")
    p.add_argument("--tiny", action="store_true", help="minimal sizes (the test suite's run)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    p.add_argument("--idle-window", type=float, metavar="S", help="seconds idle (default 60)")
    p.add_argument("--endpoints", type=_sizes, metavar="N,N", help="default 2,20,200")
    p.add_argument("--broker-workers", type=_sizes, metavar="N,N", help="default 10,1000,5000")
    p.add_argument("--worker-clients", type=_sizes, metavar="N,N", help="default 10,1000")
    p.add_argument("--rounds", type=int, metavar="N", help="alternating rounds (default 5)")
    p.add_argument("--calls", type=int, metavar="N", help="pipelined calls a round (20000)")
    p.add_argument(
        "--per-process", type=int, metavar="N", help="simulated peers per process (1000)"
    )
    args = p.parse_args(argv)
    sizes = ScaleSizes.pick(args.quick, args.tiny)
    overrides = {
        "idle_window": args.idle_window,
        "endpoints": args.endpoints,
        "broker_workers": args.broker_workers,
        "worker_clients": args.worker_clients,
        "rounds": args.rounds,
        "calls": args.calls,
        "per_process": args.per_process,
    }
    sizes = ScaleSizes(
        **{**sizes.__dict__, **{k: v for k, v in overrides.items() if v is not None}}
    )
    if min(sizes.worker_clients) < BUSY_CLIENTS + 1:
        p.error(f"--worker-clients: at least {BUSY_CLIENTS + 1} (two of them are busy)")

    def log(msg: str) -> None:
        print(f"... {msg}", file=sys.stderr, flush=True)

    log(raise_fd_limit(sizes))
    # A SIGTERM (a `timeout`, a CI runner) ends the run like Ctrl-C does, through the
    # `finally` that stops the brokers, workers and simulations it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    start = time.perf_counter()
    rows, run = run_all(sizes, log)
    ledger = run.ledger
    text, mistakes = summary(ledger)
    rows.append(
        Row(
            f"protocol mistakes seen by the simulated peers ({len(ledger)} processes)",
            mistakes,
            0,
            None,
            "0",
            "messages",
            mistakes == 0,
        )
    )
    print(render(rows))
    print()
    print(text)
    if run.notes:
        print("\nnotes:")
        for note in run.notes:
            print(f"  {note}")
    elapsed = time.perf_counter() - start
    print(
        f"\n{len(rows)} rows in {elapsed:.0f} s, {os.cpu_count()} cores, tcp; idle windows "
        f"{sizes.idle_window:g} s; sizes: endpoints {_list(sizes.endpoints)}, broker workers "
        f"{_list(sizes.broker_workers)}, worker clients {_list(sizes.worker_clients)}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(list(_iter_rows(rows)), f, indent=2)
    if mistakes:
        print(
            f"\nFAILED: the simulated peers saw {mistakes} protocol mistake(s); the first "
            "of each process are listed above",
            file=sys.stderr,
        )
        return 1
    return 0


def _list(values: tuple[int, ...]) -> str:
    return " / ".join(f"{v:,}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
