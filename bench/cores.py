"""The pure cores at mesh sizes: what one request, one tick, costs as the mesh grows.

No sockets and no processes: the client's `Dispatcher` and the broker's `Scheduler`
driven by method calls with a fake clock, the way their shells drive them. Each figure
is set beside the same figure for the small mesh, measured in the same run, so the
ratio says what the size of the mesh adds (issue 18: nothing per request). Runs
outside the test suite:

    python -m bench.cores            # about a minute of CPU
    python -m bench.cores --quick    # a few seconds

Rows:

* client, pipelined: `Dispatcher.submit` + `reply` (+ `heard` once per batch of 16
  replies from a peer, + `on_timer` whenever the wake-up it asked for has come) with
  1,000 calls in flight (most wait in the client's queue over 2 peers) and with 8
  (none waits) over 2 / 20 / 200 READY peers, in µs per call, once the deadlines of
  answered calls pass (as they do in a long run).
* client, tick: one `Dispatcher.tick` over those peers, all heard from just now (busy)
  and all quiet for a heartbeat (idle: every one is pinged).
* broker, idle: a second of `Scheduler.tick` every 50 ms (the shell's ticker) with
  10 / 1,000 / 5,000 registered workers, each heard once a second (`heard`, for its
  PING), in ms of CPU per second of clock: the share of a core the scheduler's
  heartbeat work takes (not the shell's: decoding and answering the PINGs).
* broker, joining: `register` + `ready` per worker, and what the broker's HELLO
  answer to it says (capacity, threads, async slots, in flight, services, async
  handlers of all the serving workers), µs per worker as 10 / 1,000 / 5,000 join.
* broker, dispatch: `submit` + `finish` + `ready(1)` per request over those workers.
"""

from __future__ import annotations

import argparse
import functools
import gc
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from broker import Scheduler
from broker._scheduler import Dispatch
from client._dispatch import Call, Dispatcher, Peer, SendCall, WakeAt
from protocol import Hello

WINDOW = 1000
PREFETCH = 100  # the Client's default
STEP = 20e-6  # a call every 20 µs of fake clock
TIMEOUT = 0.1
"""Each call's timeout: short, so that the bench soon reaches the steady state of a
long run, where answered calls' deadlines pass all the time and `on_timer` runs."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _done(call: Call, value: Any, exc: BaseException | None) -> None:
    pass


def _best(fn: Callable[[], float], repeat: int) -> float:
    """The least of ``repeat`` runs of ``fn`` (each returns its own figure)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        best = min(best, fn())
    return best


def client_rig(n: int) -> tuple[Dispatcher, FakeClock, list[Peer]]:
    """A Dispatcher over ``n`` READY 1.1 workers (2 threads each), outbox cleared."""
    clock = FakeClock()
    d = Dispatcher(heartbeat=1.0, prefetch=PREFETCH, clock=clock)
    peers = [d.add_peer(Peer(f"tcp://10.0.{i // 250}.{i % 250}:5555")) for i in range(n)]
    for p in peers:
        d.hello(
            p,
            Hello(
                role="worker",
                services={"bench": ["echo"]},
                capacity=2,
                name=p.endpoint,
                threads=2,
                async_slots=0,
            ),
        )
        d.heard(p)
    d.outbox.clear()
    return d, clock, peers


def client_pipelined(n: int, calls: int, window: int = WINDOW) -> float:
    """µs per call: submit, reply, a share of heard and on_timer, ``window`` in flight."""
    d, clock, _ = client_rig(n)
    held: deque[tuple[Peer, int]] = deque()  # (peer, id) in the order they were sent
    out = d.outbox
    wake = [0.0]
    rid = [0]

    def run_outbox() -> None:
        for cmd in out:
            if type(cmd) is SendCall:
                held.append((cmd.peer, cmd.call.id))
            elif type(cmd) is WakeAt:
                wake[0] = cmd.when
        out.clear()

    def submit() -> None:
        rid[0] += 1
        d.submit(Call("bench.echo", [], rid[0], TIMEOUT, 0, None, _done))

    for _ in range(window):
        submit()
    run_outbox()
    batch: dict[Peer, int] = {}
    warm = int(TIMEOUT / STEP) + window  # until the first deadlines have passed
    start = 0.0
    for i in range(warm + calls):
        if i == warm:
            start = time.process_time()
        clock.now += STEP
        peer, r = held.popleft()
        d.reply(peer, r, None)
        k = batch.get(peer, 0) + 1
        if k == 16:  # the shell reads a batch, then says `heard` once
            d.heard(peer)
            k = 0
        batch[peer] = k
        submit()
        if wake[0] and wake[0] <= clock.now:
            wake[0] = 0.0
            d.on_timer()
        run_outbox()
    return (time.process_time() - start) / calls * 1e6


def client_tick_only(n: int, busy: bool) -> float:
    """µs per `tick` alone (the `heard` between ticks is not counted)."""
    d, clock, peers = client_rig(n)
    rounds = 200
    total = 0.0
    for _ in range(rounds):
        clock.now += 1.0
        for p in peers:
            if busy:
                d.heard(p)
            else:
                # Their PONGs came a heartbeat ago (set directly: `heard` would dispatch).
                p.last_seen = clock.now - 1.0
        d.outbox.clear()
        t = time.process_time()
        d.tick()
        total += time.process_time() - t
        d.outbox.clear()
    return total / rounds * 1e6


def broker_rig(n: int) -> tuple[Scheduler, FakeClock, list[bytes]]:
    clock = FakeClock()
    s = Scheduler(clock=clock, grace=0.0)
    wids = [b"w%05d" % i for i in range(n)]
    for w in wids:
        s.register(w, services={"bench": ["echo"]}, capacity=10, heartbeat=1.0)
        s.ready(w, 10)
    s.outbox.clear()
    return s, clock, wids


def broker_idle(n: int, seconds: int) -> float:
    """ms of the scheduler's heartbeat work per second of clock: `heard` for each
    worker's PING (once a second, spread over it as real pings are) and a `tick`
    every 50 ms."""
    s, clock, wids = broker_rig(n)
    ticks = 20
    per_tick = [wids[i::ticks] for i in range(ticks)]
    total = 0.0
    for _ in range(seconds):
        for group in per_tick:
            clock.now += 1.0 / ticks
            t = time.process_time()
            for w in group:
                s.heard(w)
            s.tick()
            total += time.process_time() - t
            assert len(s.workers) == n, "a worker that was heard expired"
    return total / seconds * 1e3


def broker_join(n: int) -> float:
    """µs per worker joining: `register`, `ready`, and what the broker's HELLO answer to
    it says (the totals and unions of every serving worker)."""
    clock = FakeClock()
    s = Scheduler(clock=clock, grace=0.0)
    start = time.process_time()
    for i in range(n):
        w = b"w%05d" % i
        s.register(w, services={"bench": ["echo", "wait"]}, capacity=10, heartbeat=1.0)
        s.ready(w, 10)
        (s.capacity, s.threads, s.async_slots, s.in_flight, s.services(), s.async_handlers())
    return (time.process_time() - start) / n * 1e6


def broker_dispatch(n: int, requests: int) -> float:
    """µs per request: submit (sent at once: credit is free), finish, READY 1."""
    s, _, _ = broker_rig(n)
    c = b"client"
    out = s.outbox
    start = time.process_time()
    for rid in range(1, requests + 1):
        s.submit(c, rid, "bench.echo", 10_000, None)
        (cmd,) = out
        out.clear()
        assert isinstance(cmd, Dispatch)
        w = cmd.worker
        s.finish(w, c, rid)
        s.ready(w, 1)
    return (time.process_time() - start) / requests * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    args = ap.parse_args(argv)
    repeat = 3 if args.quick else 5
    calls = 10_000 if args.quick else 50_000
    seconds = 2 if args.quick else 5

    for window in (WINDOW, 8):
        print(f"client (Dispatcher), pipelined, {window:,} in flight: µs per call")
        base = 0.0
        for n in (2, 20, 200):
            us = _best(functools.partial(client_pipelined, n, calls, window), repeat)
            base = base or us
            print(f"  {n:>5} peers  {us:7.2f} µs   {us / base:5.2f}x of 2 peers")
    print("client (Dispatcher), one tick: µs (busy: all heard just now; idle: all pinged)")
    for n in (2, 20, 200):
        busy = _best(functools.partial(client_tick_only, n, True), repeat)
        idle = _best(functools.partial(client_tick_only, n, False), repeat)
        print(f"  {n:>5} peers  busy {busy:8.2f} µs   idle {idle:8.2f} µs")
    print("broker (Scheduler), idle, a tick every 50 ms: ms of CPU per second (% of a core)")
    for n in (10, 1000, 5000):
        ms = _best(functools.partial(broker_idle, n, seconds), repeat)
        print(f"  {n:>5} workers {ms:8.3f} ms/s  ({ms / 10:.3f}% of a core)")
    print("broker (Scheduler), workers joining: µs per worker (register, ready, HELLO's totals)")
    base = 0.0
    for n in (10, 1000, 5000):
        us = _best(functools.partial(broker_join, n), repeat)
        base = base or us
        print(f"  {n:>5} workers {us:7.2f} µs   {us / base:5.2f}x of 10 workers")
    print("broker (Scheduler), dispatch: µs per request (submit + finish + ready)")
    base = 0.0
    for n in (10, 1000, 5000):
        us = _best(functools.partial(broker_dispatch, n, calls), repeat)
        base = base or us
        print(f"  {n:>5} workers {us:7.2f} µs   {us / base:5.2f}x of 10 workers")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
