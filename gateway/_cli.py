"""``zeromesh-gateway`` / ``python -m gateway``: serve the mesh over HTTP until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
from pathlib import Path

from protocol import StartupError
from zmqio import add_client_security, add_log_level, add_resolve_interval, setup_logging

from ._config import MEMORY, GatewayConfig, default_jobs_db, parse_listen, parse_size
from ._gateway import Gateway

__all__ = ["main"]

log = logging.getLogger("zeromesh.gateway")

_EPILOG = f"""\
routes:
  POST   /call/SERVICE.HANDLER   body {{"args": [...], "kwargs": {{...}}}} -> 200 {{"result": ...}}
  POST   /jobs/SERVICE.HANDLER   same body -> 202 {{"id", "status": "queued", "url"}}
  GET    /jobs/ID                status, progress, result or error
  DELETE /jobs/ID                cancel a queued or running job
  GET    /healthz                200 when a worker is ready, else 503

examples:
  zeromesh-gateway --listen 127.0.0.1:8080 --connect tcp://127.0.0.1:5555,tcp://127.0.0.1:5556
  zeromesh-gateway --connect tcp://127.0.0.1:5501-5504 --jobs-db {MEMORY} --debug
  curl -X POST localhost:8080/call/demo.fib -d '{{"args": [20]}}'

The jobs database defaults to {default_jobs_db()}
($XDG_STATE_HOME/zeromesh/gateway-jobs.sqlite3 when XDG_STATE_HOME is set, else the
current directory). Jobs run at least once: a job running when the gateway stops runs
again when it starts.

With --token-file, send SIGHUP to re-read it: removed tokens stop working at once.
Listening beyond loopback needs --token-file (or --insecure).

exit status: 0 after SIGTERM/SIGINT, 2 bad usage or cannot start.
"""

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*\Z")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> float:
    m = _DURATION.match(text)
    if m is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: e.g. 3600, 90s, 30m, 12h, 7d"
        )
    return float(m.group(1)) * _SECONDS[m.group(2)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="zeromesh-gateway",
        description="HTTP gateway to a zeromesh mesh: synchronous calls, background jobs "
        "(kept in SQLite), health.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = GatewayConfig.__dataclass_fields__
    p.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="address to serve HTTP on (default 127.0.0.1:8080; port 0 picks a free one)",
    )
    p.add_argument(
        "--connect",
        metavar="EP[,EP...]",
        help="worker or broker endpoints, comma-separated; tcp://HOST:A-B is a port range "
        "(default $ZEROMESH_ENDPOINTS)",
    )
    p.add_argument(
        "--jobs-db",
        metavar="PATH",
        help=f"SQLite file for jobs, or {MEMORY} (jobs then die with the gateway)",
    )
    p.add_argument(
        "--max-body",
        type=_size,
        default=d["max_body"].default,
        metavar="BYTES",
        help="largest request body; larger gets 413 (default 1M; K, M, G suffixes)",
    )
    p.add_argument(
        "--max-result",
        type=_size,
        default=d["max_result"].default,
        metavar="BYTES",
        help="largest result a call returns or a job keeps (encoded size); a larger one "
        "gets 502 ResultTooLarge (default 16M)",
    )
    p.add_argument(
        "--job-ttl",
        type=_duration,
        default=d["job_ttl"].default,
        metavar="SECONDS",
        help="how long finished jobs stay readable (default 1d; s, m, h, d suffixes)",
    )
    p.add_argument(
        "--call-timeout",
        type=_duration,
        default=d["call_timeout"].default,
        metavar="SECONDS",
        help="timeout of POST /call, and the most ?timeout= may ask for (default 30); "
        "for POST /stream, the longest wait for each item",
    )
    p.add_argument(
        "--stream-timeout",
        type=_duration,
        default=d["stream_timeout"].default,
        metavar="SECONDS",
        help="how long one POST /stream may run, and the most its ?timeout= may ask for "
        "(default 1h)",
    )
    p.add_argument(
        "--job-timeout",
        type=_duration,
        default=d["job_timeout"].default,
        metavar="SECONDS",
        help="how long one job may run on a worker (default 1h)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=d["retries"].default,
        metavar="N",
        help="re-sends of a request whose worker died (default 2; 0: at most once)",
    )
    p.add_argument(
        "--job-concurrency",
        type=int,
        default=0,
        metavar="N",
        help="jobs running at once, of both kinds together (default 0: as many as the "
        "workers run: their threads for plain handlers, their async slots for async ones)",
    )
    p.add_argument(
        "--max-queued-jobs",
        type=int,
        default=d["max_queued_jobs"].default,
        metavar="N",
        help="jobs waiting for a worker before POST /jobs answers 429 (default 10000)",
    )
    p.add_argument(
        "--max-pending",
        type=int,
        default=d["max_pending_calls"].default,
        metavar="N",
        help="calls in progress before POST /call answers 429 (default 1000)",
    )
    add_resolve_interval(p, "--connect endpoint")
    p.add_argument(
        "--wait-for-workers",
        type=_duration,
        default=d["wait_for_workers"].default,
        metavar="SECONDS",
        help="how long a call waits for a ready worker before 503 (default 5)",
    )
    p.add_argument(
        "--drain-timeout",
        type=_duration,
        default=d["drain_timeout"].default,
        metavar="SECONDS",
        help="on SIGTERM, time for calls and jobs in progress to finish (default 10)",
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        help="name:token lines (# comments): every route then needs 'Authorization: "
        "Bearer TOKEN', jobs belong to the token that made them, and GET /healthz "
        "without a token answers only its status; re-read on SIGHUP",
    )
    p.add_argument(
        "--certfile",
        metavar="PEM",
        help="serve HTTPS with this certificate (chain); needs --keyfile",
    )
    p.add_argument("--keyfile", metavar="PEM", help="private key of --certfile")
    p.add_argument(
        "--insecure",
        action="store_true",
        help="listen beyond loopback (0.0.0.0, a LAN address) without --token-file: "
        "anyone who reaches the port can run handlers (refused otherwise)",
    )
    p.add_argument(
        "--debug",
        action="store_true",
        help="include handler tracebacks in error bodies (never in production)",
    )
    add_client_security(p)  # the mesh side: CURVE towards the workers or broker
    add_log_level(p, "info", "log level (default info; debug logs every request)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the gateway until SIGTERM/SIGINT; return the exit status."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        host, port = parse_listen(args.listen)
        jobs_db = args.jobs_db
        if jobs_db is None:
            jobs_db = default_jobs_db()
            Path(jobs_db).parent.mkdir(parents=True, exist_ok=True)
        config = GatewayConfig(
            connect=args.connect,
            host=host,
            port=port,
            jobs_db=jobs_db,
            max_body=args.max_body,
            max_result=args.max_result,
            job_ttl=args.job_ttl,
            call_timeout=args.call_timeout,
            job_timeout=args.job_timeout,
            stream_timeout=args.stream_timeout,
            retries=args.retries,
            job_concurrency=args.job_concurrency,
            max_queued_jobs=args.max_queued_jobs,
            max_pending_calls=args.max_pending,
            wait_for_workers=args.wait_for_workers,
            resolve_interval=args.resolve_interval,
            drain_timeout=args.drain_timeout,
            debug=args.debug,
            token_file=args.token_file,
            curve_secret=args.curve_secret,
            curve_server=args.curve_server,
            certfile=args.certfile,
            keyfile=args.keyfile,
            insecure=args.insecure,
        )
        gateway = Gateway(config)
    except (ValueError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    return asyncio.run(_serve(gateway))


async def _serve(gateway: Gateway) -> int:
    try:
        await gateway.start()
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        log.info("%s: stopping", sig.name)
        stop.set()

    def on_hangup() -> None:
        try:
            n = gateway.reload_tokens()
        except (OSError, ValueError) as exc:
            log.error("SIGHUP: cannot reload the token file, the old tokens stay: %s", exc)
            return
        if n is None:
            log.info("SIGHUP: no --token-file to reload")
        else:
            log.info("SIGHUP: %d token(s) from %s", n, gateway.config.token_file)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        await stop.wait()
    finally:
        await gateway.stop()
    return 0
