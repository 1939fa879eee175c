"""`GatewayConfig`: every setting of a gateway, checked once, with errors that say what to type."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from zmqio import DEFAULT_RESOLVE_INTERVAL, exposed_endpoints

__all__ = ["MEMORY", "GatewayConfig", "default_jobs_db", "parse_listen", "parse_size"]

MEMORY = ":memory:"
"""The ``--jobs-db`` value that keeps jobs in memory only (lost when the gateway stops)."""

_KiB = 1024
_MiB = 1024 * _KiB
_SIZE = re.compile(r"\s*(\d+)\s*([kmg]i?b?|b)?\s*\Z", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": _KiB, "m": _MiB, "g": 1024 * _MiB}


def parse_size(text: str) -> int:
    """Bytes from ``"1048576"``, ``"512K"``, ``"1M"``, ``"2GiB"`` (powers of 1024).

    Raises:
        ValueError: not a size.
    """
    m = _SIZE.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a size: use bytes, or a number with K, M or G")
    unit = (m.group(2) or "").lower()[:1]
    return int(m.group(1)) * _UNITS[unit]


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` / ``"[::1]:8080"`` / ``"0.0.0.0:0"`` as ``(host, port)``.

    Port 0 picks a free port (the gateway logs the one it got).

    Raises:
        ValueError: not ``HOST:PORT``.
    """
    host, colon, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(
            f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080 (port 0 picks one)"
        )
    return host, int(port)


def default_jobs_db() -> str:
    """Where jobs live unless told: ``$XDG_STATE_HOME/zeromesh/gateway-jobs.sqlite3`` when
    ``XDG_STATE_HOME`` is set, else ``zeromesh-gateway-jobs.sqlite3`` in the current
    directory."""
    state = os.environ.get("XDG_STATE_HOME", "").strip()
    if state:
        return str(Path(state) / "zeromesh" / "gateway-jobs.sqlite3")
    return str(Path.cwd() / "zeromesh-gateway-jobs.sqlite3")


@dataclass(frozen=True)
class GatewayConfig:
    """Settings of one `Gateway` (the CLI builds one from its flags).

    Raises ``ValueError`` on construction when a setting is out of range.
    """

    connect: list[str] | str | None
    """Worker (or broker) endpoints; a string may list several, comma-separated; None
    reads ``$ZEROMESH_ENDPOINTS``. Checked
    when the `Gateway` is created (``ValueError``), as `client.AsyncClient` checks them."""
    host: str = "127.0.0.1"
    port: int = 8080
    """TCP port to listen on; 0 picks a free one (see `Gateway.port`)."""
    jobs_db: str = field(default_factory=default_jobs_db)
    """SQLite file holding jobs, or ``":memory:"``."""
    max_body: int = 1 * _MiB
    """Largest request body accepted; larger ones get 413."""
    max_result: int = 16 * _MiB
    """Largest result (its stored, msgpack size) a call returns or a job keeps; a larger
    one answers ``POST /call`` with 502 ``ResultTooLarge``, and fails the job so."""
    job_ttl: float = 24 * 3600.0
    """Seconds a finished job stays readable."""
    call_timeout: float = 30.0
    """Default and largest timeout of ``POST /call`` (``?timeout=`` may lower it)."""
    job_timeout: float = 3600.0
    """Seconds one job may run on a worker before it fails with ``Timeout``."""
    stream_timeout: float = 3600.0
    """Default and largest time one ``POST /stream`` may run, first item to last
    (``?timeout=`` may lower it); each item must come within ``call_timeout``."""
    retries: int = 2
    """Re-sends of a request whose worker died (at-least-once; 0 for at-most-once calls)."""
    job_concurrency: int = 0
    """Jobs running at once, of both kinds together; 0: no cap of its own. Either way,
    jobs of plain handlers run at most as many at once as the workers' threads, jobs
    of async handlers as their async slots."""
    max_queued_jobs: int = 10_000
    """Jobs waiting in the gateway's queue before ``POST /jobs`` answers 429."""
    max_pending_calls: int = 1_000
    """``POST /call`` requests in progress before more are answered 429."""
    resolve_interval: float = DEFAULT_RESOLVE_INTERVAL
    """Seconds between lookups of a host name in ``connect``: every address it resolves
    to is joined, vanished ones are drained (0: look up once; see `client.Client`)."""
    wait_for_workers: float = 5.0
    """Seconds a call waits for some worker to be ready before answering 503."""
    curve_secret: str | None = None
    """Our own NAME.key_secret towards CURVE workers and brokers (None: the
    ``$ZEROMESH_CURVE_SECRET`` environment, as `client.AsyncClient` reads it)."""
    curve_server: str | None = None
    """The workers' or broker's public key, a file or Z85 text (None: the
    ``$ZEROMESH_CURVE_SERVER`` environment)."""
    drain_timeout: float = 10.0
    """On shutdown, seconds to let calls and jobs in progress finish."""
    debug: bool = False
    """Show handler tracebacks in error bodies."""
    token_file: str | None = None
    """File of ``name:token`` lines: every route then needs ``Authorization: Bearer``
    (``GET /healthz`` answers a bare status without one). None: no authentication."""
    certfile: str | None = None
    """PEM certificate (chain) to serve HTTPS with; needs ``keyfile``."""
    keyfile: str | None = None
    """PEM private key of ``certfile``."""
    insecure: bool = False
    """Allow listening beyond loopback without ``token_file`` (refused otherwise)."""

    def __post_init__(self) -> None:
        if isinstance(self.connect, str):
            object.__setattr__(self, "connect", self.connect.split(","))
        checks = [
            (0 <= self.port < 65536, f"port {self.port} is not 0-65535"),
            (self.max_body >= 1, "--max-body must be at least 1 byte"),
            (self.max_result >= 1, "--max-result must be at least 1 byte"),
            (self.job_ttl > 0, "--job-ttl must be > 0 seconds"),
            (_positive(self.call_timeout), "--call-timeout must be > 0 seconds"),
            (_positive(self.job_timeout), "--job-timeout must be > 0 seconds"),
            (_positive(self.stream_timeout), "--stream-timeout must be > 0 seconds"),
            (self.retries >= 0, "--retries must be >= 0"),
            (self.job_concurrency >= 0, "--job-concurrency must be >= 0 (0: as the workers run)"),
            (self.max_queued_jobs >= 1, "--max-queued-jobs must be at least 1"),
            (self.max_pending_calls >= 1, "--max-pending must be at least 1"),
            (self.wait_for_workers >= 0, "--wait-for-workers must be >= 0 seconds"),
            (self.resolve_interval >= 0, "--resolve-interval must be >= 0 (0: look up once)"),
            (self.drain_timeout >= 0, "--drain-timeout must be >= 0 seconds"),
            (bool(self.jobs_db), "--jobs-db must not be empty (use :memory: for no file)"),
            (
                bool(self.certfile) == bool(self.keyfile),
                "--certfile and --keyfile go together: give both for HTTPS, or neither",
            ),
            (
                self.token_file is not None or self.insecure or not self.exposed,
                f"--listen {self.host}:{self.port} is reachable beyond loopback and no "
                "--token-file is set: anyone who reaches it could run handlers; give "
                "--token-file FILE, or --insecure to serve it open anyway",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def exposed(self) -> bool:
        """Whether ``host`` listens beyond loopback (127.0.0.0/8, ::1 and localhost do not)."""
        return bool(exposed_endpoints([f"tcp://[{self.host}]:{self.port}"]))


def _positive(seconds: float) -> bool:
    return seconds > 0 and math.isfinite(seconds)
