"""Per-call settings and request encoding, shared by `Client` and `AsyncClient`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import protocol
from protocol import Codec, Limits, Progress, encode_request

from ._dispatch import next_id

__all__ = [
    "Options",
    "changed_options",
    "check_settings",
    "current_traceparent",
    "make_request",
    "parse_codec",
]

_otel_propagate: Any = None
_otel_trace: Any = None
try:  # optional: with OpenTelemetry, calls carry the caller's current span
    import opentelemetry.propagate as _otel_propagate
    import opentelemetry.trace as _otel_trace
except ImportError:  # pragma: no cover - depends on what is installed
    pass


def current_traceparent() -> str:
    """The W3C traceparent of OpenTelemetry's current span, or "" (no OpenTelemetry
    installed, or no span being recorded)."""
    if _otel_trace is None or not _otel_trace.get_current_span().get_span_context().is_valid:
        return ""
    carrier: dict[str, str] = {}
    _otel_propagate.inject(carrier)
    return carrier.get("traceparent", "")


@dataclass(frozen=True, slots=True)
class Options:
    """Per-call settings: never mixed with the handler's own keyword arguments."""

    timeout: float = 30.0
    """Seconds to wait for the reply (``Timeout``/``NoWorkers`` after)."""
    retries: int = 2
    """Re-sends when the worker holding a request is lost (at-least-once)."""
    codec: Codec = Codec.MSGPACK
    """Body codec of the requests sent."""
    on_progress: Callable[[Progress], None] | None = None
    """Called with each PROGRESS message a running handler sends (``worker.progress``).
    For `Client` it runs on whichever thread is reading the sockets (a caller waiting
    for a result, or the IO thread): keep it quick, never block in it."""
    trace: str | None = None
    """The W3C ``traceparent`` sent with each request, for the handler
    (``worker.trace_id()``), its logs and spans. None: OpenTelemetry's current span's,
    if OpenTelemetry is installed and a span is recorded; "": none."""
    window: int = 16
    """``stream`` only: items the worker may send ahead of what the consumer has read
    (its credit, SPEC 7.11); 1 means strictly one item ahead."""
    item_timeout: float | None = None
    """``stream`` only: seconds to wait for each next item (`Timeout` after, and the
    stream is cancelled); None: only ``timeout`` bounds it (the whole stream)."""

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, not {self.timeout!r}")
        if self.trace and not protocol.is_traceparent(self.trace):
            raise ValueError(
                f"trace must be a W3C traceparent such as "
                f"'00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', not {self.trace!r}"
            )
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0, not {self.retries!r}")
        if type(self.window) is not int or self.window < 1:
            raise ValueError(f"window must be an integer >= 1 (items ahead), not {self.window!r}")
        if self.item_timeout is not None and not self.item_timeout > 0:
            raise ValueError(
                f"item_timeout must be > 0 seconds (or None), not {self.item_timeout!r}"
            )


def make_request(
    target: str,
    args: Any,
    kwargs: dict[str, Any],
    opts: Options,
    batch: bool,
    limits: Limits,
    stream: bool = False,
) -> tuple[int, list[Any]]:
    """Encode a request in the caller's thread: bad targets and values fail here, and so
    does a request over ``limits`` (`ProtocolError`, code ``LIMIT_EXCEEDED``), before
    anything is sent.

    Returns (id, frames). With a trace the frames carry it (revision 1.1); a 1.0 peer
    gets them without it (`Call.frames_for`). ``stream``: a stream request with
    ``opts.window`` (revision 1.2, SPEC 7.11).
    """
    if not isinstance(target, str) or "." not in target:
        raise ValueError(f"call target {target!r} must be 'service.handler', e.g. 'math.add'")
    rid = next_id()
    ttl = min(int(opts.timeout * 1000), 2**32 - 1)
    trace = opts.trace if opts.trace is not None else current_traceparent()
    window = opts.window if stream else 0
    frames = encode_request(
        rid, target, args, kwargs, ttl, opts.codec, batch, trace, limits, window
    )
    return rid, frames


def changed_options(
    opts: Options,
    timeout: float | None,
    retries: int | None,
    codec: Codec | str | None,
    on_progress: Callable[[Progress], None] | None,
    trace: str | None = None,
    window: int | None = None,
    item_timeout: float | None = None,
) -> Options:
    """``opts`` with the settings that are not None replaced (validated)."""
    changes: dict[str, Any] = {}
    if window is not None:
        changes["window"] = window
    if item_timeout is not None:
        changes["item_timeout"] = item_timeout
    if trace is not None:
        changes["trace"] = trace
    if on_progress is not None:
        changes["on_progress"] = on_progress
    if timeout is not None:
        changes["timeout"] = timeout
    if retries is not None:
        changes["retries"] = retries
    if codec is not None:
        changes["codec"] = parse_codec(codec)
    return replace(opts, **changes)


def check_settings(
    max_in_flight: int, prefetch: int, heartbeat: float, resolve_interval: float = 30.0
) -> None:
    """Validate the constructor settings shared by `Client` and `AsyncClient`."""
    if not isinstance(max_in_flight, int) or max_in_flight < 1:
        raise ValueError(f"max_in_flight must be an integer >= 1, not {max_in_flight!r}")
    if not isinstance(prefetch, int) or prefetch < 0:
        raise ValueError(f"prefetch must be an integer >= 0, not {prefetch!r}")
    if not heartbeat >= 0.05:
        raise ValueError(f"heartbeat must be at least 0.05 seconds, not {heartbeat!r}")
    if not resolve_interval >= 0:
        raise ValueError(
            f"resolve_interval must be >= 0 seconds (0: look host names up once), not "
            f"{resolve_interval!r}"
        )


def parse_codec(codec: Codec | str) -> Codec:
    if isinstance(codec, Codec):
        return codec
    try:
        return Codec[str(codec).upper()]
    except KeyError:
        raise ValueError(f"codec {codec!r}: use 'msgpack' or 'json'") from None
