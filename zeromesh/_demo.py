"""``zeromesh demo``: a whole mesh on this machine in a few seconds, then gone.

Starts worker subprocesses of the service shipped for it (`zeromesh._demo_service`, a
``math`` service), exercises the client and stops the workers — also on Ctrl-C or an
error.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

from client import Client
from protocol import RemoteError

__all__ = ["run_demo", "start_workers", "stop_workers"]

SERVICE = "zeromesh._demo_service:svc"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_workers(
    count: int, transport: str, rundir: str, extra: list[str] | None = None
) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    """Start ``count`` workers of the demo's service; return the processes and endpoints."""
    procs: list[subprocess.Popen[bytes]] = []
    endpoints = []
    for i in range(count):
        if transport == "ipc":
            ep = f"ipc://{rundir}/w{i}.sock"
        else:
            ep = f"tcp://127.0.0.1:{_free_port()}"
        log = open(os.path.join(rundir, f"worker{i}.log"), "wb")  # noqa: SIM115 - owned by the child
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "worker",
                    SERVICE,
                    "--bind",
                    ep,
                    *(extra or []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
            )
        )
        log.close()
        endpoints.append(ep)
    return procs, endpoints


def stop_workers(procs: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    """SIGTERM (graceful drain), then SIGKILL whatever is still there after ``timeout``."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_demo(workers: int = 2, items: int = 100_000, transport: str = "tcp") -> int:
    """Run the demo; returns an exit status."""
    rundir = tempfile.mkdtemp(prefix="zm-demo-")
    print(f"starting {workers} workers of the math service over {transport} (logs in {rundir})")
    procs, endpoints = start_workers(workers, transport, rundir)
    try:
        with Client(endpoints, timeout=30) as c:
            _wait_ready(c, procs, rundir)
            print(f"workers ready on {', '.join(endpoints)}")

            print(f'\n>>> c.call("math.add", 1, 2)\n{c.call("math.add", 1, 2)}')

            arr = np.arange(12, dtype=np.float64).reshape(4, 3)
            print(f'\n>>> c.call("math.mean", arr)   # arr.shape == {arr.shape}, no copies')
            print(c.call("math.mean", arr))

            print('\n>>> c.call("math.fail", "something broke")')
            try:
                c.call("math.fail", "something broke")
            except RemoteError as exc:
                print(f"RemoteError: {exc.remote_type}: {exc.remote_message}")
                print("  (the worker's traceback travels too: exc.remote_traceback)")

            pids = {c.call("math.pid") for _ in range(20)}
            print(f"\n20 calls of math.pid were served by {len(pids)} worker process(es)")

            print(f'\n>>> c.map("math.add", range({items}), range({items}), progress=True)')
            start = time.perf_counter()
            total = 0
            for i, r in enumerate(c.map("math.add", range(items), range(items), progress=True)):
                if r != 2 * i:
                    print(f"wrong result at {i}: {r}", file=sys.stderr)
                    return 1
                total += 1
            elapsed = time.perf_counter() - start
            print(f"{total} items in {elapsed:.2f} s: {total / elapsed:,.0f} items/s")
    except KeyboardInterrupt:
        print("\ninterrupted: stopping workers")
        return 130
    finally:
        stop_workers(procs)
        print("workers stopped")
    return 0


def _wait_ready(c: Client, procs: list[subprocess.Popen[bytes]], rundir: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"a worker exited with status {p.returncode}; see {rundir}")
        rows = c.workers(timeout=1.0)
        if all(r["state"] == "ready" for r in rows):
            return
    raise SystemExit(f"workers did not become ready within 20 s; see logs in {rundir}")
