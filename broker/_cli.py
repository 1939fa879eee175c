"""``zeromesh-broker`` / ``python -m broker``: balance clients' requests over workers."""

from __future__ import annotations

import argparse
import logging
import os

from zmqio import (
    KeyFileError,
    Security,
    add_log_level,
    add_max_peer_output,
    add_metrics_option,
    add_server_security,
    freeze_startup_heap,
    setup_logging,
)

from ._server import Broker, BrokerConfig, StartupError

__all__ = ["main"]

DEFAULT_BIND = "tcp://127.0.0.1:5600"

_EPILOG = """\
examples:
  zeromesh-broker --bind tcp://127.0.0.1:5600
  zeromesh-broker --bind tcp://0.0.0.0:5600 --bind ipc:///tmp/zm/broker.sock --insecure
      (beyond loopback without CURVE: a private network only)
  zeromesh-broker --bind tcp://*:5600 --curve-secret keys/broker.key_secret \\
      --curve-allow keys/allowed      (client and worker public keys alike)

then:
  zeromesh-worker mysvc:svc --broker tcp://BROKER-HOST:5600     (on any host, any number)
  Client(["tcp://BROKER-HOST:5600"])                          (the same client API)
  zeromesh status --connect tcp://BROKER-HOST:5600

exit status: 0 after a clean drain (SIGTERM/SIGINT), 2 bad usage or cannot start,
  3 the drain timeout passed with requests still in flight (answered WorkerLost).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zeromesh-broker",
        description="Dispatch clients' requests to the workers that connect to this broker: "
        "by service, to the least recently used worker with free credit, with a bounded "
        "queue, heartbeats and re-queueing of a lost worker's requests.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--bind",
        action="append",
        metavar="ENDPOINT",
        help="endpoint for clients and workers alike, repeatable: tcp://HOST:PORT or "
        f"ipc:///PATH (default: $ZEROMESH_BROKER_BIND or {DEFAULT_BIND})",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=10_000,
        metavar="N",
        help="requests queued per service before new ones are refused Overloaded (default 10000)",
    )
    p.add_argument(
        "--max-deliveries",
        type=int,
        default=3,
        metavar="N",
        help="workers a request may be handed to, all lost, before it is answered "
        "WorkerLost (default 3)",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for in-flight replies after SIGTERM (default 10)",
    )
    add_max_peer_output(p)
    add_metrics_option(p)
    add_server_security(p)
    p.add_argument("--heartbeat-ms", type=int, default=1000, help="heartbeat interval (1000)")
    p.add_argument("--name", default="", help="name shown by zeromesh status (default host:pid)")
    add_log_level(p, os.environ.get("ZEROMESH_LOG_LEVEL", "info"), "log verbosity (default info)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    log = logging.getLogger("zeromesh.broker")
    binds = args.bind or [os.environ.get("ZEROMESH_BROKER_BIND") or DEFAULT_BIND]
    try:
        try:
            security = Security.from_settings(
                args.curve_secret, args.curve_allow, insecure=args.insecure
            )
        except KeyFileError as exc:
            raise StartupError(str(exc)) from exc
        config = BrokerConfig(
            binds=binds,
            max_queue=args.max_queue,
            max_deliveries=args.max_deliveries,
            heartbeat_ms=args.heartbeat_ms,
            drain_timeout=args.drain_timeout,
            name=args.name,
            max_peer_output=int(args.max_peer_output * 2**20),
            security=security,
            metrics=args.metrics or "",
        )
        broker = Broker(config)
        freeze_startup_heap()
        code = broker.run()
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 2
    logging.shutdown()
    return code
