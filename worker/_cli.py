"""``zeromesh-worker`` / ``python -m worker``: serve services on ZeroMQ endpoints."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading

from zmqio import (
    ENV_CURVE_SERVER,
    ClientSecurity,
    KeyFileError,
    Security,
    add_log_level,
    add_max_peer_output,
    add_metrics_option,
    add_resolve_interval,
    add_server_security,
    freeze_startup_heap,
    setup_logging,
)

from ._loader import load_services
from ._server import StartupError, Worker, WorkerConfig

__all__ = ["main"]

DEFAULT_BIND = "tcp://127.0.0.1:5555"

_EPILOG = """\
examples:
  zeromesh-worker mysvc:svc --bind tcp://127.0.0.1:5555
  zeromesh-worker mysvc:svc --bind tcp://127.0.0.1:5555 --bind ipc:///tmp/zm/w1.sock
  zeromesh-worker mysvc:svc --broker tcp://b1:5600 --broker tcp://b2:5600
  python -m worker examples.mathsvc:svc --concurrency 4 --log-level debug
  zeromesh-worker mysvc:svc --bind tcp://*:5555 \\
      --curve-secret keys/w1.key_secret --curve-allow keys/clients
  zeromesh-worker mysvc:svc --broker tcp://b1:5600 \\
      --curve-secret keys/w1.key_secret --broker-curve-server keys/broker.key

security: binding beyond loopback (tcp://*, 0.0.0.0, a LAN address) needs CURVE
  (--curve-secret + --curve-allow) or --insecure; SIGHUP re-reads --curve-allow.

exit status: 0 after a clean drain (SIGTERM/SIGINT, --max-requests, --max-rss),
  2 bad usage or cannot start, 3 drain timeout passed with work abandoned,
  70 a handler overran --hard-timeout (let supervisord restart the worker).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zeromesh-worker",
        description="Serve zeromesh handlers on ROUTER sockets until SIGTERM, then drain.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "services",
        nargs="+",
        metavar="MODULE:ATTR",
        help="the Service to serve, e.g. mysvc:svc (a bare module serves all its Services)",
    )
    p.add_argument(
        "--bind",
        action="append",
        metavar="ENDPOINT",
        help=f"endpoint to bind, repeatable: tcp://HOST:PORT or ipc:///PATH "
        f"(default: $ZEROMESH_BIND, or {DEFAULT_BIND} unless --broker is given)",
    )
    p.add_argument(
        "--broker",
        action="append",
        metavar="ENDPOINT",
        help="connect out to this broker and take work from it, repeatable; a host name "
        "joins every broker address it resolves to (see --resolve-interval); with --bind "
        "too, the worker serves both at once",
    )
    add_resolve_interval(p, "--broker endpoint")
    p.add_argument(
        "--broker-prefetch",
        type=int,
        default=0,
        metavar="N",
        help="credit offered to brokers beyond --concurrency, so short calls pipeline "
        "(default 0: exact credit, no request waits behind a busy handler; at most "
        "--max-pending minus the worker's slots)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="sync handlers run at once, in threads (default 1: scale CPU with processes)",
    )
    p.add_argument(
        "--max-async",
        type=int,
        default=100,
        help="async handlers run at once on the event loop (default 100)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to finish in-flight work after SIGTERM (default 10)",
    )
    p.add_argument(
        "--max-requests",
        type=int,
        default=0,
        metavar="N",
        help="drain and exit 0 after N requests, for supervisord to restart (default: off)",
    )
    p.add_argument(
        "--max-requests-jitter",
        type=int,
        default=0,
        metavar="J",
        help="add a random 0..J to --max-requests in each process, so workers started "
        "together do not all recycle at once (default 0)",
    )
    p.add_argument(
        "--max-rss",
        type=float,
        default=0,
        metavar="MB",
        help="drain and exit 0 once resident memory passes MB (default: off)",
    )
    p.add_argument(
        "--hard-timeout",
        type=float,
        default=0,
        metavar="S",
        help="a sync handler running over S seconds is answered Timeout and the worker "
        "exits 70 (default: off)",
    )
    p.add_argument(
        "--max-pending",
        type=int,
        default=0,
        metavar="N",
        help="requests that may wait for a free slot; beyond, the client holding the most "
        "is answered OVERLOADED (default: capacity + 1000)",
    )
    add_max_peer_output(p)
    add_metrics_option(p)
    add_server_security(p)
    p.add_argument(
        "--broker-curve-server",
        metavar="FILE|KEY",
        default=None,
        help="the brokers' public key (their NAME.key, or its Z85 text): CURVE on the "
        "--broker links, this worker known by --curve-secret "
        f"(default ${ENV_CURVE_SERVER})",
    )
    p.add_argument("--heartbeat-ms", type=int, default=1000, help="heartbeat interval (1000)")
    p.add_argument("--name", default="", help="name shown by zeromesh ping (default host:pid)")
    add_log_level(p, os.environ.get("ZEROMESH_LOG_LEVEL", "info"), "log verbosity (default info)")
    return p


def _security(args: argparse.Namespace, binds: list[str]) -> tuple[Security, ClientSecurity | None]:
    """CURVE for the bound endpoints (as a server) and the broker links (as a client).

    Raises:
        StartupError: a key file cannot be read, or a flag is missing.
    """
    try:
        security = (
            Security.from_settings(args.curve_secret, args.curve_allow, insecure=args.insecure)
            if binds
            else Security()
        )
        broker = (
            ClientSecurity.from_settings(args.curve_secret, args.broker_curve_server)
            if args.broker
            else None
        )
    except KeyFileError as exc:
        raise StartupError(str(exc)) from exc
    return security, broker


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    log = logging.getLogger("zeromesh.worker")
    binds = args.bind or [os.environ.get("ZEROMESH_BIND") or DEFAULT_BIND]
    if args.broker and not args.bind and not os.environ.get("ZEROMESH_BIND"):
        binds = []  # brokers only: nothing to bind
    try:
        services = [svc for spec in args.services for svc in load_services(spec)]
        security, broker_security = _security(args, binds)
        config = WorkerConfig(
            binds=binds,
            concurrency=args.concurrency,
            max_async=args.max_async,
            drain_timeout=args.drain_timeout,
            heartbeat_ms=args.heartbeat_ms,
            name=args.name,
            max_requests=args.max_requests,
            max_requests_jitter=args.max_requests_jitter,
            max_rss_mb=args.max_rss,
            hard_timeout=args.hard_timeout,
            brokers=args.broker or (),
            broker_prefetch=args.broker_prefetch,
            resolve_interval=args.resolve_interval,
            max_pending=args.max_pending,
            max_peer_output=int(args.max_peer_output * 2**20),
            security=security,
            broker_security=broker_security,
            metrics=args.metrics or "",
        )
        worker = Worker(services, config)
        freeze_startup_heap()
        code = worker.run()
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 2
    logging.shutdown()
    if any(t.is_alive() and t.daemon for t in threading.enumerate()):
        # A handler thread is stuck (hard timeout, drain timeout): it cannot be joined,
        # and interpreter shutdown would wait on it. Leave now with the status we owe.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
