"""A client process a test drives line by line: ``python tests/meshprobe.py``.

Tests that run the mesh in network namespaces start this inside one (the test process
itself stays outside, where it cannot reach the namespace's addresses) and send it one
JSON command per line on stdin; it answers each with one JSON line on stdout, and logs
the client's own lines (zeromesh.client) on stderr. Commands (``op``):

* ``ready``: wait until the client of ``connect`` has exactly the READY peers ``want``.
* ``call``: ``n`` calls of ``target`` with ``args``; answers how many each pid ran, and
  the errors.
* ``submit`` / ``results``: send ``n`` calls and keep their futures under ``key``; later,
  wait for them.
* ``retried``: the client's re-send counters.
* ``async``: the same as ``ready`` then ``call``, from an `AsyncClient`.
* ``load`` / ``mark``: keep ``window`` calls in flight from a background thread; each
  ``mark`` answers what happened since the last one: calls/s, p50/p99 latency, errors,
  calls per pid, re-sends.
* ``quit``.

Clients are made on first use, one per ``connect`` string, with the settings given on
the command line (``--resolve-interval``, ``--heartbeat``, ``--prefetch``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import threading
import time
from collections import Counter
from typing import Any

from client import AsyncClient, Client

_clients: dict[str, Client] = {}
_kept: dict[str, list[Any]] = {}
_opts: dict[str, Any] = {}


def client(connect: str) -> Client:
    c = _clients.get(connect)
    if c is None:
        c = _clients[connect] = Client(connect, **_opts)
    return c


def ready(c: Client, want: list[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        rows = c.workers(timeout=0.5)
        have = sorted(r["endpoint"] for r in rows if r["state"] == "ready")
        if have == sorted(want) or time.monotonic() > deadline:
            return {"ok": have == sorted(want), "have": have}
        time.sleep(0.05)


def outcomes(futures: list[Any]) -> dict[str, Any]:
    pids: Counter[int] = Counter()
    errors = []
    for f in futures:
        try:
            pids[f.result()] += 1
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return {"pids": {str(k): v for k, v in pids.items()}, "errors": errors}


class Load:
    """``window`` calls in flight from one thread, every outcome recorded."""

    def __init__(self, c: Client, target: str, window: int) -> None:
        self.c = c
        self.target = target
        self.slots = threading.Semaphore(window)
        self.lock = threading.Lock()
        self.records: list[tuple[float, int | None, str]] = []  # latency, pid, error
        self.stopping = False
        self.since = time.monotonic()
        self.retried = dict(c._io.core.dispatcher.retried)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            self.slots.acquire()
            started = time.monotonic()
            fut = self.c.submit(self.target)
            fut.add_done_callback(lambda f, t=started: self._done(f, t))

    def _done(self, fut: Any, started: float) -> None:
        latency = time.monotonic() - started
        try:
            record = (latency, fut.result(), "")
        except Exception as exc:
            record = (latency, None, f"{type(exc).__name__}: {exc}")
        with self.lock:
            self.records.append(record)
        self.slots.release()

    def mark(self) -> dict[str, Any]:
        now = time.monotonic()
        with self.lock:
            records, self.records = self.records, []
        retried = dict(self.c._io.core.dispatcher.retried)
        delta = {k: v - self.retried.get(k, 0) for k, v in retried.items()}
        self.retried = retried
        seconds, self.since = now - self.since, now
        latencies = sorted(r[0] for r in records)

        def quantile(q: float) -> float:
            if not latencies:
                return 0.0
            return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

        return {
            "seconds": round(seconds, 2),
            "calls": len(records),
            "calls_per_s": round(len(records) / seconds, 1) if seconds else 0.0,
            "p50_ms": round(quantile(0.5), 2),
            "p99_ms": round(quantile(0.99), 2),
            "max_ms": round(latencies[-1] * 1000, 2) if latencies else 0.0,
            "errors": [r[2] for r in records if r[2]][:5],
            "error_count": sum(1 for r in records if r[2]),
            "pids": dict(Counter(str(r[1]) for r in records if r[1] is not None)),
            "resent": delta,
        }


async def async_calls(cmd: dict[str, Any]) -> dict[str, Any]:
    async with AsyncClient(cmd["connect"], **_opts) as ac:
        deadline = time.monotonic() + cmd.get("timeout", 20)
        have: list[str] = []
        while time.monotonic() < deadline:
            rows = await ac.workers(timeout=0.5)
            have = sorted(r["endpoint"] for r in rows if r["state"] == "ready")
            if have == sorted(cmd["want"]):
                break
            await asyncio.sleep(0.05)
        results = await asyncio.gather(
            *(ac.call(cmd["target"], *cmd.get("args", [])) for _ in range(cmd["n"])),
            return_exceptions=True,
        )
    pids = Counter(str(r) for r in results if not isinstance(r, BaseException))
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    return {"have": have, "pids": dict(pids), "errors": errors}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--resolve-interval", type=float, default=30.0)
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--prefetch", type=int, default=100)
    p.add_argument("--retries", type=int, default=2)
    args = p.parse_args()
    _opts.update(
        resolve_interval=args.resolve_interval,
        heartbeat=args.heartbeat,
        prefetch=args.prefetch,
        retries=args.retries,
        timeout=30,
    )
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    load: Load | None = None
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "ready":
            out = ready(client(cmd["connect"]), cmd["want"], cmd.get("timeout", 20))
        elif op == "call":
            c = client(cmd["connect"]).options(timeout=cmd.get("timeout", 30))
            futures = [c.submit(cmd["target"], *cmd.get("args", [])) for _ in range(cmd["n"])]
            out = outcomes(futures)
        elif op == "submit":
            c = client(cmd["connect"]).options(timeout=cmd.get("timeout", 30))
            _kept[cmd["key"]] = [
                c.submit(cmd["target"], *cmd.get("args", [])) for _ in range(cmd["n"])
            ]
            out = {"sent": cmd["n"]}
        elif op == "results":
            out = outcomes(_kept.pop(cmd["key"]))
        elif op == "retried":
            out = dict(client(cmd["connect"])._io.core.dispatcher.retried)
        elif op == "async":
            out = asyncio.run(async_calls(cmd))
        elif op == "load":
            load = Load(client(cmd["connect"]), cmd["target"], cmd["window"])
            out = {"started": True}
        elif op == "mark":
            assert load is not None
            out = load.mark()
        elif op == "quit":
            if load is not None:
                load.stopping = True
            for c in _clients.values():
                c.close()
            print(json.dumps({"bye": True}), flush=True)
            return
        else:
            out = {"error": f"unknown op {op!r}"}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
