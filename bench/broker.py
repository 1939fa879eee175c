"""Brokered vs direct, in one run: pipelined calls/s and the round trip the broker adds.

One worker serves both topologies at once (``--bind`` and ``--broker``), so the two
figures come from the same process, measured back to back, alternating, best of
``--repeats``. Run outside the test suite:

    python -m bench.broker                    # default worker: exact credit
    python -m bench.broker --prefetch 0 32    # also with --broker-prefetch 32
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

from client import Client

WINDOW = 1000


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args, "--log-level", "warning"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
    )


def _rate(c: Client, n: int) -> float:
    t = time.perf_counter()
    futs = [c.submit("bench.echo", i) for i in range(n)]
    for f in futs:
        f.result()
    return n / (time.perf_counter() - t)


def _rtt_p50(c: Client, n: int) -> float:
    times = []
    for i in range(n):
        t = time.perf_counter()
        c.call("bench.echo", i)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def _wait(c: Client) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            c.options(timeout=1).call("bench.echo", 0)
            return
        except Exception:  # the worker may not have registered with the broker yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def measure(prefetch: int, calls: int, rtts: int, repeats: int) -> dict[str, float]:
    bep, wep = _port(), _port()
    procs = [
        _spawn("-m", "broker", "--bind", bep),
        _spawn(
            "-m",
            "worker",
            "zeromesh._bench.echosvc:svc",
            "--bind",
            wep,
            "--broker",
            bep,
            "--broker-prefetch",
            str(prefetch),
        ),
    ]
    try:
        with (
            Client([wep], max_in_flight=WINDOW) as direct,
            Client([bep], max_in_flight=WINDOW) as brokered,
        ):
            _wait(direct)
            _wait(brokered)
            d_rate = b_rate = 0.0
            d_rtt = b_rtt = float("inf")
            for _ in range(repeats):  # alternate, so both see the same background load
                d_rate = max(d_rate, _rate(direct, calls))
                b_rate = max(b_rate, _rate(brokered, calls))
                d_rtt = min(d_rtt, _rtt_p50(direct, rtts))
                b_rtt = min(b_rtt, _rtt_p50(brokered, rtts))
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return {"direct": d_rate, "brokered": b_rate, "direct_rtt": d_rtt, "brokered_rtt": b_rtt}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.broker", description=__doc__)
    p.add_argument("--prefetch", type=int, nargs="+", default=[0], help="--broker-prefetch")
    p.add_argument("--calls", type=int, default=20_000, help="pipelined calls per run")
    p.add_argument("--rtts", type=int, default=2_000, help="sequential calls per run")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    print(
        f"{'broker-prefetch':>15} {'direct/s':>10} {'brokered/s':>11} {'ratio':>6} "
        f"{'direct p50 us':>14} {'brokered p50 us':>16} {'added us':>9}"
    )
    for prefetch in args.prefetch:
        r = measure(prefetch, args.calls, args.rtts, args.repeats)
        print(
            f"{prefetch:>15} {r['direct']:>10,.0f} {r['brokered']:>11,.0f} "
            f"{r['brokered'] / r['direct']:>5.2f}x {r['direct_rtt']:>14.0f} "
            f"{r['brokered_rtt']:>16.0f} {r['brokered_rtt'] - r['direct_rtt']:>9.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
