"""``zeromesh bench``: zeromesh beside raw pyzmq and ProcessPoolExecutor, in one run.

Every scenario measures zeromesh and its baseline back to back on the same machine,
so the ratio means something on a shared, noisy box even when the absolute figures
do not. Workers and the raw echo server run as child processes, as in production.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import zmq.auth

from client import AsyncClient, Client

from .echosvc import add, loops_per_ms
from .raw import WINDOW, ProtocolClient, RawClient

__all__ = ["main"]

# What the child processes run: modules of this package, so a plain install runs the
# bench from any directory.
ECHO_SERVICE = "zeromesh._bench.echosvc:svc"
RAW_MODULE = "zeromesh._bench.raw"

_MiB = 1024 * 1024


@dataclass
class Row:
    """One line of the table (and one object of the JSON output)."""

    scenario: str
    zeromesh: float
    baseline: float | None  # None: a figure with no counterpart (a marginal cost)
    ratio: float | None  # None: a ratio means nothing here (counts that should be 0)
    target: str
    unit: str
    met: bool | None

    def cells(self) -> list[str]:
        verdict = {True: "pass", False: "MISS", None: "-"}[self.met]
        return [
            self.scenario,
            f"{self.zeromesh:,.1f}",
            "-" if self.baseline is None else f"{self.baseline:,.1f}",
            "-" if self.ratio is None else f"{self.ratio:.2f}x",
            self.target,
            verdict,
        ]


@dataclass(frozen=True)
class Sizes:
    """Work per round; every scenario runs ``rounds`` rounds, alternating zeromesh and
    its baseline, and reports the median round of each."""

    rounds: int
    rtt_calls: int
    pipelined_calls: int
    array_mib: int
    array_repeats: int
    map_items: int
    cpu_calls: int
    memory_calls: int

    @classmethod
    def pick(cls, quick: bool, tiny: bool) -> Sizes:
        if tiny:
            return cls(1, 200, 2_000, 4, 1, 20_000, 8, 20_000)
        if quick:
            return cls(3, 1_000, 10_000, 64, 2, 200_000, 40, 200_000)
        return cls(5, 4_000, 40_000, 64, 3, 1_000_000, 100, 1_000_000)


# --- processes ---------------------------------------------------------------------------


class _Children:
    """Child processes of the run; all stopped on exit, also on Ctrl-C or an error."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.dir = tempfile.mkdtemp(prefix="zmb-", dir="/tmp")
        self.procs: list[subprocess.Popen[bytes]] = []

    def endpoint(self) -> str:
        if self.transport == "ipc":
            return f"ipc://{self.dir}/{len(self.procs)}.sock"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return f"tcp://127.0.0.1:{s.getsockname()[1]}"

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        log = open(os.path.join(self.dir, f"{len(self.procs)}.log"), "wb")  # noqa: SIM115
        p = subprocess.Popen(
            [sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.procs.append(p)
        return p

    def worker(self, *extra: str) -> str:
        ep = self.endpoint()
        self.spawn("-m", "worker", ECHO_SERVICE, "--bind", ep, "--log-level", "warning", *extra)
        return ep

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def close(self) -> None:
        for p in self.procs:
            self.stop(p)
        shutil.rmtree(self.dir, ignore_errors=True)


def _ready(endpoints: list[str], timeout: float = 30, **client_kw: Any) -> None:
    deadline = time.monotonic() + timeout
    with Client(endpoints, **client_kw) as c:
        while time.monotonic() < deadline:
            if all(r["state"] == "ready" for r in c.workers(timeout=1.0)):
                return
    raise SystemExit(f"bench: workers on {endpoints} did not become ready")


# --- scenarios -----------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _zm_rtts(c: Client, n: int) -> list[float]:
    call = c.call
    out = []
    for i in range(n):
        t = time.perf_counter()
        call("bench.echo", i)
        out.append(time.perf_counter() - t)
    return out


def _zm_submit_rate(c: Client, n: int) -> float:
    start = time.perf_counter()
    futs = [c.submit("bench.echo", i) for i in range(n)]
    for f in futs:
        f.result()
    return n / (time.perf_counter() - start)


def _zm_async_rate(endpoints: list[str], n: int) -> float:
    async def run() -> float:
        async with AsyncClient(endpoints, max_in_flight=WINDOW) as ac:
            await ac.call("bench.echo", 0)
            start = time.perf_counter()
            await asyncio.gather(*(ac.call("bench.echo", i) for i in range(n)))
            return n / (time.perf_counter() - start)

    return asyncio.run(run())


def _asyncio_floor_rate(n: int) -> float:
    """What the AsyncClient row's pattern costs asyncio alone: ``n`` coroutines under
    ``gather``, at most `WINDOW` awaiting at once (a counter and a queue of waiters,
    as `AsyncClient` keeps), each awaiting a future that a loop callback resolves, in
    batches, as answers would arrive. No sockets, no encoding: the ceiling of any
    asyncio client of this shape on this interpreter."""

    async def run() -> float:
        loop = asyncio.get_running_loop()
        pending: deque[asyncio.Future[int]] = deque()
        waiters: deque[asyncio.Future[None]] = deque()
        in_flight = 0

        async def call() -> int:
            nonlocal in_flight
            while in_flight >= WINDOW:
                waiter = loop.create_future()
                waiters.append(waiter)
                await waiter
            in_flight += 1
            fut: asyncio.Future[int] = loop.create_future()
            pending.append(fut)
            return await fut

        def answer() -> None:
            nonlocal in_flight
            for _ in range(min(len(pending), 256)):
                pending.popleft().set_result(1)
                in_flight -= 1
                if waiters:
                    waiters.popleft().set_result(None)
            if not done:
                loop.call_soon(answer)

        done = False
        loop.call_soon(answer)
        start = time.perf_counter()
        await asyncio.gather(*(call() for _ in range(n)))
        elapsed = time.perf_counter() - start
        done = True
        return n / elapsed

    return asyncio.run(run())


def _map_rate(c: Client, n: int) -> float:
    """Items/s of ``c.map`` over ``n`` additions."""
    t = time.perf_counter()
    out = list(c.map("bench.add", range(n), range(n)))
    rate = n / (time.perf_counter() - t)
    assert out[-1] == 2 * (n - 1)
    return rate


def _best(fn: Callable[[], float], repeats: int) -> float:
    return min(fn() for _ in range(repeats))


def _alternate(
    rounds: int, zm: Callable[[], Any], base: Callable[[], Any]
) -> tuple[list[Any], list[Any]]:
    """Run ``zm`` and ``base`` in alternating rounds: a busy neighbour (these machines
    are shared) then slows both sides of a ratio, not one."""
    zs, bs = [], []
    for i in range(rounds):
        first, second = (zm, base) if i % 2 == 0 else (base, zm)
        a, b = first(), second()
        zs.append(a if first is zm else b)
        bs.append(b if first is zm else a)
    return zs, bs


def _median(values: list[float]) -> float:
    return statistics.median(values)


def run_scenarios(sizes: Sizes, transport: str, log: Callable[[str], None]) -> list[Row]:
    rows: list[Row] = []
    kids = _Children(transport)
    rounds = sizes.rounds
    try:
        raw_ep = kids.endpoint()
        kids.spawn("-m", RAW_MODULE, raw_ep)
        proto_ep = kids.endpoint()
        kids.spawn("-m", RAW_MODULE, proto_ep, "--protocol")
        w1 = kids.worker()
        _ready([w1])
        raw = RawClient(raw_ep)
        raw.call(0, 0)  # connected and warm
        proto = ProtocolClient(proto_ep)
        proto.rtts(10)
        try:
            with Client([w1], max_in_flight=WINDOW) as c:
                c.call("bench.echo", 0)
                log("sequential round trips")
                _zm_rtts(c, 200)
                raw.rtts(200)
                proto.rtts(200)
                n = sizes.rtt_calls
                zms, raws = _alternate(rounds, lambda: _zm_rtts(c, n), lambda: raw.rtts(n))
                zp50 = _median([statistics.median(r) for r in zms]) * 1e6
                rp50 = raw_rtt = _median([statistics.median(r) for r in raws]) * 1e6
                rows.append(
                    Row(
                        f"RTT p50 {transport} (us)",
                        zp50,
                        rp50,
                        zp50 / rp50,
                        "<= 1.25x",
                        "us",
                        zp50 <= 1.25 * rp50,
                    )
                )
                zp99 = _median([_percentile(r, 0.99) for r in zms]) * 1e6
                rp99 = _median([_percentile(r, 0.99) for r in raws]) * 1e6
                rows.append(
                    Row(f"RTT p99 {transport} (us)", zp99, rp99, zp99 / rp99, "-", "us", None)
                )
                wire, raws = _alternate(rounds, lambda: proto.rtts(n), lambda: raw.rtts(n))
                wp50 = _median([statistics.median(r) for r in wire]) * 1e6
                rp50 = _median([statistics.median(r) for r in raws]) * 1e6
                rows.append(
                    Row(
                        "RTT p50, bare pyzmq speaking the wire format (us)",
                        wp50,
                        rp50,
                        wp50 / rp50,
                        "-",
                        "us",
                        None,
                    )
                )

                log("pipelined calls")
                n = sizes.pipelined_calls
                subs, raws = _alternate(
                    rounds, lambda: _zm_submit_rate(c, n), lambda: raw.pipelined(n)
                )
                sub_rate, raw_rate = _median(subs), _median(raws)
                rows.append(
                    Row(
                        f"Client.submit calls/s, {WINDOW} in flight",
                        sub_rate,
                        raw_rate,
                        sub_rate / raw_rate,
                        ">= 0.8x",
                        "calls/s",
                        sub_rate >= 0.8 * raw_rate,
                    )
                )
                asyncs, raws = _alternate(
                    rounds, lambda: _zm_async_rate([w1], n), lambda: raw.pipelined(n)
                )
                async_rate, raw_rate = _median(asyncs), _median(raws)
                rows.append(
                    Row(
                        f"AsyncClient calls/s, {WINDOW} in flight",
                        async_rate,
                        raw_rate,
                        async_rate / raw_rate,
                        ">= 0.8x",
                        "calls/s",
                        async_rate >= 0.8 * raw_rate,
                    )
                )

                floors, raws = _alternate(
                    rounds, lambda: _asyncio_floor_rate(n), lambda: raw.pipelined(n)
                )
                floor, raw_rate = _median(floors), _median(raws)
                rows.append(
                    Row(
                        f"asyncio alone: gather of awaits, {WINDOW} in flight, no I/O",
                        floor,
                        raw_rate,
                        floor / raw_rate,
                        "-",
                        "calls/s",
                        None,
                    )
                )

                log(f"{sizes.array_mib} MiB array round trips")
                arr = np.random.default_rng(0).random(sizes.array_mib * _MiB // 8)
                gb = 2 * arr.nbytes / 1e9

                def zm_array() -> float:
                    t = time.perf_counter()
                    back = c.call("bench.echo", arr)
                    elapsed = time.perf_counter() - t
                    assert back.nbytes == arr.nbytes
                    return elapsed

                zts, rts = _alternate(
                    rounds,
                    lambda: _best(zm_array, sizes.array_repeats),
                    lambda: _best(lambda: raw.array_round_trip(arr), sizes.array_repeats),
                )
                zt, rt = _median(zts), _median(rts)
                rows.append(
                    Row(
                        f"{sizes.array_mib} MiB float64 round trip (GB/s)",
                        gb / zt,
                        gb / rt,
                        rt / zt,
                        ">= 0.9x",
                        "GB/s",
                        rt / zt >= 0.9,
                    )
                )
        finally:
            raw.close()
            proto.close()

        rows.extend(_streams(sizes, w1, log))

        log("map, 2 workers vs ProcessPoolExecutor(2)")
        w2 = kids.worker()
        _ready([w1, w2])
        n = sizes.map_items
        with (
            Client([w1, w2]) as c,
            cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ppe,
        ):
            list(c.map("bench.add", range(1000), range(1000)))
            list(ppe.map(add, range(2000), range(2000), chunksize=1000))  # start the pool

            def ppe_map() -> float:
                t = time.perf_counter()
                list(ppe.map(add, range(n), range(n), chunksize=1000))
                return n / (time.perf_counter() - t)

            zms, ppes = _alternate(max(1, rounds - 2), lambda: _map_rate(c, n), ppe_map)
        zm_rate, ppe_rate = _median(zms), _median(ppes)
        rows.append(
            Row(
                f"map of {n:,} items (items/s)",
                zm_rate,
                ppe_rate,
                zm_rate / ppe_rate,
                ">= 1x and 200k/s",
                "items/s",
                zm_rate >= ppe_rate and zm_rate >= 200_000,
            )
        )

        log("CPU-bound handler (10 ms): 2 workers vs 1")
        cpu_loops = int(10 * loops_per_ms())

        def cpu_rate(endpoints: list[str]) -> float:
            with Client(endpoints, prefetch=0) as c:
                c.call("bench.cpu", 1)
                t = time.perf_counter()
                futs = [c.submit("bench.cpu", cpu_loops) for _ in range(sizes.cpu_calls)]
                for f in futs:
                    f.result()
                return sizes.cpu_calls / (time.perf_counter() - t)

        twos, ones = _alternate(rounds, lambda: cpu_rate([w1, w2]), lambda: cpu_rate([w1]))
        two, one = _median(twos), _median(ones)
        rows.append(
            Row(
                "CPU-bound 10 ms calls/s, 2 workers vs 1",
                two,
                one,
                two / one,
                ">= 1.8x",
                "calls/s",
                two >= 1.8 * one,
            )
        )

        rows.extend(_curve(kids, sizes, w1, log))
        rows.append(_metrics_row(kids, sizes, w1, log))

        rows.extend(_brokered(kids, sizes, w1, raw_rtt, log))
        rows.extend(_memory(kids, sizes, log))
    finally:
        kids.close()
    return rows


STREAM_WINDOW = 1024
"""The stream row's window: a stream gets at most a window of items per round trip
of credit (the default, 16, is for large items: ~30k small items/s here)."""


def _streams(sizes: Sizes, worker: str, log: Callable[[str], None]) -> list[Row]:
    """A stream of small items from one worker (window `STREAM_WINDOW`) vs ``map`` of
    as many items over the same worker, and the time to a stream's first item vs a
    plain call's round trip (issue 19)."""
    rows = []
    n = sizes.map_items
    with Client([worker]) as c:
        log("stream of small items vs map, one worker")
        wide = c.options(window=STREAM_WINDOW)
        list(wide.stream("bench.count", 1000))
        list(c.map("bench.add", range(1000), range(1000)))

        def streamed() -> float:
            t = time.perf_counter()
            last = deque(wide.stream("bench.count", n), maxlen=1)  # (read at C speed)
            rate = n / (time.perf_counter() - t)
            assert list(last) == [n - 1]
            return rate

        zms, maps = _alternate(max(1, sizes.rounds - 2), streamed, lambda: _map_rate(c, n))
        rate, map_rate = _median(zms), _median(maps)
        rows.append(
            Row(
                f"stream of {n:,} items (window {STREAM_WINDOW}) vs map, 1 worker (items/s)",
                rate,
                map_rate,
                rate / map_rate,
                ">= 0.5x",
                "items/s",
                rate >= 0.5 * map_rate,
            )
        )

        log("time to a stream's first item vs a call's round trip")

        def firsts(k: int) -> list[float]:
            out = []
            for _ in range(k):
                t = time.perf_counter()
                stream = c.stream("bench.count", 1)
                next(stream)
                out.append(time.perf_counter() - t)
                for _ in stream:  # its END
                    pass
            return out

        k = max(100, sizes.rtt_calls // 4)
        firsts(50)
        zms, rtts = _alternate(sizes.rounds, lambda: firsts(k), lambda: _zm_rtts(c, k))
        first = _median([statistics.median(r) for r in zms]) * 1e6
        rtt = _median([statistics.median(r) for r in rtts]) * 1e6
        rows.append(
            Row(
                "stream's first item p50 vs call RTT p50 (us)",
                first,
                rtt,
                first / rtt,
                "<= 1.5x",
                "us",
                first <= 1.5 * rtt,
            )
        )
    return rows


def _metrics_row(kids: _Children, sizes: Sizes, plain: str, log: Callable[[str], None]) -> Row:
    """Pipelined calls with every metric on (a worker serving --metrics, scraped each
    second as Prometheus would, and ``Client(metrics=True)``) vs off (worker ``plain``,
    a plain client). Workers count answers either way (HELLO stats feed zeromesh top):
    the row shows what serving, scraping and client-side counting add."""
    log("metrics on vs off")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metered = kids.worker("--metrics", f"127.0.0.1:{port}")
    _ready([metered])
    url = f"http://127.0.0.1:{port}/metrics"
    stop = threading.Event()

    def scraper() -> None:
        while not stop.wait(1.0):
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as r:
                r.read()

    t = threading.Thread(target=scraper, daemon=True)
    t.start()
    try:
        with (
            Client([metered], max_in_flight=WINDOW, metrics=True) as on,
            Client([plain], max_in_flight=WINDOW) as off,
        ):
            on.call("bench.echo", 0)
            off.call("bench.echo", 0)
            n = sizes.pipelined_calls
            ons, offs = _alternate(
                sizes.rounds, lambda: _zm_submit_rate(on, n), lambda: _zm_submit_rate(off, n)
            )
    finally:
        stop.set()
        t.join(5)
    rate_on, rate_off = _median(ons), _median(offs)
    return Row(
        f"metrics on vs off: Client.submit calls/s, {WINDOW} in flight",
        rate_on,
        rate_off,
        rate_on / rate_off,
        ">= 0.9x",
        "calls/s",
        rate_on >= 0.9 * rate_off,
    )


def _curve(kids: _Children, sizes: Sizes, plain: str, log: Callable[[str], None]) -> list[Row]:
    """CURVE-encrypted calls vs plain ones (worker ``plain``): a CURVE worker started
    here with keys made in the run's temporary directory (removed with it)."""
    log("CURVE vs plain")
    keys = os.path.join(kids.dir, "keys")
    allowed = os.path.join(keys, "clients")
    os.makedirs(allowed)
    zmq.auth.create_certificates(keys, "server")
    zmq.auth.create_certificates(keys, "client")
    shutil.copy(os.path.join(keys, "client.key"), allowed)
    server_secret = os.path.join(keys, "server.key_secret")
    curve_kw: dict[str, Any] = {
        "curve_secret": os.path.join(keys, "client.key_secret"),
        "curve_server": os.path.join(keys, "server.key"),
    }
    wc = kids.worker("--curve-secret", server_secret, "--curve-allow", allowed)
    _ready([wc], **curve_kw)
    rows: list[Row] = []
    rounds = sizes.rounds
    with (
        Client([plain], max_in_flight=WINDOW) as p,
        Client([wc], max_in_flight=WINDOW, **curve_kw) as s,
    ):
        p.call("bench.echo", 0)
        s.call("bench.echo", 0)
        _zm_rtts(p, 200)
        _zm_rtts(s, 200)
        n = sizes.rtt_calls
        srtts, prtts = _alternate(rounds, lambda: _zm_rtts(s, n), lambda: _zm_rtts(p, n))
        s50 = _median([statistics.median(r) for r in srtts]) * 1e6
        p50 = _median([statistics.median(r) for r in prtts]) * 1e6
        rows.append(Row("CURVE RTT p50 vs plain (us)", s50, p50, s50 / p50, "-", "us", None))

        n = sizes.pipelined_calls
        srates, prates = _alternate(
            rounds, lambda: _zm_submit_rate(s, n), lambda: _zm_submit_rate(p, n)
        )
        srate, prate = _median(srates), _median(prates)
        rows.append(
            Row(
                f"CURVE Client.submit calls/s vs plain, {WINDOW} in flight",
                srate,
                prate,
                srate / prate,
                ">= 0.8x",
                "calls/s",
                srate >= 0.8 * prate,
            )
        )

        arr = np.random.default_rng(0).random(sizes.array_mib * _MiB // 8)
        gb = 2 * arr.nbytes / 1e9

        def array_time(c: Client) -> float:
            t = time.perf_counter()
            back = c.call("bench.echo", arr)
            elapsed = time.perf_counter() - t
            assert back.nbytes == arr.nbytes
            return elapsed

        sts, pts = _alternate(
            rounds,
            lambda: _best(lambda: array_time(s), sizes.array_repeats),
            lambda: _best(lambda: array_time(p), sizes.array_repeats),
        )
        st, pt = _median(sts), _median(pts)
        rows.append(
            Row(
                f"CURVE {sizes.array_mib} MiB float64 round trip vs plain (GB/s)",
                gb / st,
                gb / pt,
                pt / st,
                ">= 0.5x",
                "GB/s",
                pt / st >= 0.5,
            )
        )
    return rows


def _brokered(
    kids: _Children, sizes: Sizes, direct: str, raw_rtt_us: float, log: Callable[[str], None]
) -> list[Row]:
    """Brokered pipelined calls/s vs direct (worker ``direct``): with exact credit (the
    default: no request waits behind a busy handler) and with ``--broker-prefetch 32``
    (what a throughput user picks). A broker and a worker each, started from this
    interpreter's installation (``python -m broker``), whatever is on PATH.

    Exact credit gives a one-slot worker one request at a time: each waits for the
    last one's answer to reach the broker. No design does that faster than one raw
    round trip per call, so the row after it shows that ceiling, ``1 / raw RTT p50``,
    against the same direct rate."""
    rows = []
    n = sizes.pipelined_calls
    for prefetch, target in ((0, 0.3), (32, 0.7)):
        log(f"brokered pipelined calls, --broker-prefetch {prefetch}")
        bep = kids.endpoint()
        kids.spawn("-m", "broker", "--bind", bep, "--log-level", "warning")
        wep = kids.endpoint()
        kids.spawn(
            "-m", "worker", ECHO_SERVICE, "--broker", bep, "--broker-prefetch", str(prefetch),
            "--bind", wep, "--log-level", "warning",
        )  # fmt: skip
        _ready([bep, wep])
        with (
            Client([bep], max_in_flight=WINDOW) as b,
            Client([direct], max_in_flight=WINDOW) as d,
        ):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    b.options(timeout=1).call("bench.echo", 0)
                    break
                except Exception:  # the worker may not have registered with the broker yet
                    time.sleep(0.1)
            d.call("bench.echo", 0)
            brokered, direct_rates = _alternate(
                sizes.rounds, lambda: _zm_submit_rate(b, n), lambda: _zm_submit_rate(d, n)
            )
        rate, direct_rate = _median(brokered), _median(direct_rates)
        credit = "exact credit" if not prefetch else f"prefetch {prefetch}"
        rows.append(
            Row(
                f"brokered ({credit}) calls/s vs direct",
                rate,
                direct_rate,
                rate / direct_rate,
                f">= {target}x",
                "calls/s",
                rate >= target * direct_rate,
            )
        )
        if not prefetch:
            ceiling = 1e6 / raw_rtt_us
            rows.append(
                Row(
                    "one request at a time, 1 / raw RTT p50, vs direct",
                    ceiling,
                    direct_rate,
                    ceiling / direct_rate,
                    "-",
                    "calls/s",
                    None,
                )
            )
    return rows


def _rss_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _memory(kids: _Children, sizes: Sizes, log: Callable[[str], None]) -> list[Row]:
    """Memory stays flat: a worker's RSS, and this client's (1,000 calls in flight),
    after ``memory_calls`` more calls vs once warmed up by one batch of them.
    Reported in MiB; the ratio is end / start."""
    log(f"memory over {sizes.memory_calls:,} calls")
    ep = kids.endpoint()
    worker = kids.spawn("-m", "worker", ECHO_SERVICE, "--bind", ep, "--log-level", "warning")
    _ready([ep])
    # Every batch the same size, the warm-up one too: a batch's futures are alive
    # together, and the allocator keeps that peak; growth beyond it would be a leak.
    batch = min(50_000, sizes.memory_calls // 4)
    with Client([ep], max_in_flight=WINDOW) as c:
        idle = _rss_mib(worker.pid)
        _zm_submit_rate(c, batch)  # warm-up: first-use allocations, caches, pools
        worker_start, client_start = _rss_mib(worker.pid), _rss_mib()
        for _ in range(sizes.memory_calls // batch):
            _zm_submit_rate(c, batch)
        worker_end, client_end = _rss_mib(worker.pid), _rss_mib()
    log(f"worker RSS idle {idle:.1f} MiB")
    return [
        Row(
            f"worker RSS after {sizes.memory_calls:,} more calls vs warmed up (MiB)",
            worker_end,
            worker_start,
            worker_end / worker_start,
            "<= 1.1x",
            "MiB",
            worker_end <= 1.1 * worker_start,
        ),
        Row(
            f"client RSS, {WINDOW} in flight, after {sizes.memory_calls:,} more calls (MiB)",
            client_end,
            client_start,
            client_end / client_start,
            "<= 1.1x",
            "MiB",
            client_end <= 1.1 * client_start,
        ),
    ]


# --- output ---------------------------------------------------------------------------------


def render(rows: list[Row]) -> str:
    head = ["scenario", "zeromesh", "baseline", "ratio", "target", "result"]
    table = [head, *[r.cells() for r in rows]]
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = []
    for k, line in enumerate(table):
        lines.append(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _iter_rows(rows: list[Row]) -> Iterator[dict[str, Any]]:
    for r in rows:
        d = asdict(r)
        d.pop("met")
        yield d


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--scale" in argv:
        from .scale import main as scale_main

        return scale_main([a for a in argv if a != "--scale"])
    p = argparse.ArgumentParser(
        prog="zeromesh bench",
        description="Run zeromesh beside raw pyzmq and ProcessPoolExecutor in one run and "
        "print the ratios against the targets.",
    )
    p.add_argument(
        "--scale",
        action="store_true",
        help="run the scale benchmark instead: thousands of simulated peers beside a "
        "handful (its options: zeromesh bench --scale --help)",
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes: under a minute")
    p.add_argument("--tiny", action="store_true", help="minimal sizes (the test suite's smoke run)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    p.add_argument("--transport", choices=["tcp", "ipc"], default="tcp")
    args = p.parse_args(argv)
    sizes = Sizes.pick(args.quick, args.tiny)

    def log(msg: str) -> None:
        print(f"... {msg}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    rows = run_scenarios(sizes, args.transport, log)
    print(render(rows))
    elapsed = time.perf_counter() - start
    print(f"\n{len(rows)} scenarios in {elapsed:.0f} s, {os.cpu_count()} cores, {args.transport}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(list(_iter_rows(rows)), f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
