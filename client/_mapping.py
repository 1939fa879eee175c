"""``map`` over the mesh: many items per message, results in order, streamed."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from protocol import ZeromeshError

if TYPE_CHECKING:
    from ._driver import Driver
    from ._options import Options

__all__ = ["auto_chunksize", "results_before_failure", "run_map"]

_MAX_CHUNK = 1024
_UNKNOWN_LENGTH_CHUNK = 64


def auto_chunksize(total: int | None, capacity: int) -> int:
    """Items per message: ~8 messages per worker slot, so the load spreads, capped at 1024.

    With an unknown length (a generator), a fixed 64 keeps per-message overhead low
    while short streams still spread over several workers.
    """
    if total is None:
        return _UNKNOWN_LENGTH_CHUNK
    per_slot = -(-total // (8 * max(capacity, 1)))
    return max(1, min(_MAX_CHUNK, per_slot))


def results_before_failure(exc: ZeromeshError, first: int) -> list[Any]:
    """The results a failed batch computed before its failing item (builtin map yields
    those before raising); records the failing item's overall index in ``exc.detail``.
    """
    detail = exc.detail
    if not isinstance(detail, dict) or not isinstance(detail.get("index"), int):
        return []
    detail["item"] = first + detail["index"]
    results = detail.get("results")
    return list(results) if isinstance(results, list) else []


def run_map(
    io: Driver,
    target: str,
    iterables: tuple[Iterable[Any], ...],
    opts: Options,
    chunksize: int | None,
    progress: bool,
) -> Iterator[Any]:
    """Validate now (errors at the call, not at the first ``next``), then stream."""
    if not iterables:
        raise TypeError("map() needs at least one iterable of arguments")
    if chunksize is not None and chunksize < 1:
        raise ValueError("chunksize must be at least 1")
    total = _length(iterables)
    size = chunksize or auto_chunksize(total, io.capacity())
    return _stream(io, target, zip(*iterables, strict=False), total, size, opts, progress)


def _length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None


def _stream(
    io: Driver,
    target: str,
    items: Iterator[tuple[Any, ...]],
    total: int | None,
    size: int,
    opts: Options,
    progress: bool,
) -> Iterator[Any]:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="item", unit_scale=True, desc=target, dynamic_ncols=True)
    window: deque[tuple[Any, int]] = deque()  # (future, index of its first item)
    sent = 0
    exhausted = False
    try:
        while True:
            # Enough chunks in flight to keep every worker slot busy, bounded by the
            # client's own in-flight limit.
            limit = min(max(4, 2 * io.capacity()), io.max_in_flight)
            while not exhausted and len(window) < limit:
                chunk = list(itertools.islice(items, size))
                if not chunk:
                    exhausted = True
                    break
                window.append((io.request(target, chunk, {}, opts, True, True), sent))
                sent += len(chunk)
            if not window:
                return
            fut, first = window.popleft()
            try:
                results = fut.result()
            except ZeromeshError as exc:
                yield from results_before_failure(exc, first)
                raise
            if bar is not None:
                bar.update(len(results))
            yield from results
    finally:
        for fut, _ in window:
            fut.cancel()
        if bar is not None:
            bar.close()
