"""How a worker runs: its settings, checked once, and the exit statuses it uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from protocol import DEFAULT_LIMITS, Limits, StartupError
from zmqio import DEFAULT_PEER_OUTPUT, DEFAULT_RESOLVE_INTERVAL, ClientSecurity, Security

__all__ = ["EXIT_DRAIN_TIMEOUT", "EXIT_HARD_TIMEOUT", "StartupError", "WorkerConfig"]

EXIT_DRAIN_TIMEOUT = 3
"""Exit status when in-flight work was abandoned because the drain took too long."""
EXIT_HARD_TIMEOUT = 70
"""Exit status after a handler overran ``hard_timeout`` (EX_SOFTWARE): restart me."""


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker runs. Defaults suit a CPU-bound service, one process per core."""

    binds: Sequence[str]
    concurrency: int = 1
    """Sync handlers running at once (threads). CPU scale comes from more processes.
    Announced in HELLO as ``threads``: a client keeps at most that many plain requests
    (plus its prefetch) at this worker."""
    max_async: int = 100
    """``async def`` handlers running at once on the loop (IO-bound work). Announced in
    HELLO as ``async_slots`` when a served handler is ``async def`` (else 0)."""
    drain_timeout: float = 10.0
    """Seconds to finish in-flight work after SIGTERM before giving up on it."""
    heartbeat_ms: int = 1000
    """Ping interval clients should use; also the ZMTP heartbeat interval."""
    name: str = ""
    max_requests: int = 0
    """Drain and exit 0 after this many requests (0: never); supervisord starts a fresh one."""
    max_requests_jitter: int = 0
    """Add a random 0..N to ``max_requests`` per process, so workers started together do
    not all recycle at the same moment."""
    max_rss_mb: float = 0
    """Drain and exit 0 once resident memory passes this (0: never)."""
    hard_timeout: float = 0
    """A sync handler running longer gets a Timeout reply; the worker exits 70 (0: off)."""
    limits: Limits = field(default=DEFAULT_LIMITS)
    brokers: Sequence[str] = ()
    """Brokers to connect out to and take work from (worker/_broker_link.py). A host
    name stands for every address it resolves to (`resolve_interval`)."""
    resolve_interval: float = DEFAULT_RESOLVE_INTERVAL
    """Seconds between lookups of a host name in ``brokers``: the worker joins every
    broker address the name resolves to and drains those that vanish (0: look up
    once)."""
    broker_prefetch: int = 0
    """Credit offered to brokers beyond capacity (0: exact; short calls pipeline with more)."""
    max_pending: int = 0
    """Requests held at once, running and waiting (0: capacity + 1000). Beyond it a
    request is answered OVERLOADED at once, taken from the client that holds the most."""
    max_peer_output: int = DEFAULT_PEER_OUTPUT
    """Bytes of answers waiting for one client that does not read; past it the worker
    takes no more requests from that client until it reads."""
    security: Security = field(default_factory=Security)
    """CURVE on the bound endpoints and the allowed client keys; ``insecure`` to bind
    beyond loopback without it."""
    broker_security: ClientSecurity | None = None
    """CURVE on the links to brokers: this worker's keys and the brokers' public key."""
    metrics: str = ""
    """``HOST:PORT`` to serve Prometheus metrics at (``/metrics``; port 0 picks one); ""
    for none."""

    def __post_init__(self) -> None:
        if not self.binds and not self.brokers:
            raise StartupError("nothing to serve on: give at least one --bind or --broker")
        for endpoint in self.brokers:
            scheme, sep, rest = endpoint.partition("://")
            if not sep or scheme not in ("tcp", "ipc") or not rest:
                raise StartupError(
                    f"cannot connect to broker {endpoint!r}: use tcp://HOST:PORT or "
                    "ipc:///path/to/socket"
                )
        checks = [
            (self.concurrency >= 1, "--concurrency must be at least 1"),
            (self.max_async >= 1, "--max-async must be at least 1"),
            (self.drain_timeout >= 0, "--drain-timeout must be >= 0"),
            (self.heartbeat_ms >= 100, "heartbeat must be at least 100 ms"),
            (self.max_requests >= 0, "--max-requests must be >= 0"),
            (self.max_requests_jitter >= 0, "--max-requests-jitter must be >= 0"),
            (
                not self.max_requests_jitter or self.max_requests > 0,
                "--max-requests-jitter needs --max-requests",
            ),
            (self.max_rss_mb >= 0, "--max-rss must be >= 0"),
            (self.hard_timeout >= 0, "--hard-timeout must be >= 0"),
            (self.broker_prefetch >= 0, "--broker-prefetch must be >= 0"),
            (self.resolve_interval >= 0, "--resolve-interval must be >= 0 (0: look up once)"),
            (self.max_pending >= 0, "--max-pending must be >= 0"),
            (self.max_peer_output >= 1, "--max-peer-output must be at least 1 byte"),
        ]
        for ok, message in checks:
            if not ok:
                raise StartupError(message)
