"""``zeromesh``: command-line tools for a mesh — call, ping, status, keygen, demo, rollout,
bench.

They sit above the library: they use `client` (and start workers as processes), so
the client library itself never imports a tool, the benchmark or a worker.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from client import ENV_ENDPOINTS, Client
from protocol import NAME_PATTERN, RemoteError, ZeromeshError
from zmqio import (
    ClientSecurity,
    add_client_security,
    add_log_level,
    add_resolve_interval,
    setup_logging,
    write_certificates,
)

from ._top import SORT_KEYS

__all__ = ["main"]


def _json_default(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    raise TypeError(f"cannot show a {type(value).__name__} as JSON")


def _parse_value(text: str) -> Any:
    """JSON if it parses (1, 2.5, "s", [1,2], {"a":1}, true, null); else the raw string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _add_connect(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--connect",
        "-c",
        metavar="EP[,EP...]",
        default=None,  # resolve_endpoints reads the environment, and says so if empty
        help=f"worker or broker endpoints, comma-separated (default: ${ENV_ENDPOINTS})",
    )


def _add_query_options(p: argparse.ArgumentParser) -> None:
    """The options `ping` and `status` share: where to ask, how long, how to print."""
    _add_connect(p)
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait (default 2)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    add_client_security(p)


def _curve(args: argparse.Namespace) -> dict[str, Any]:
    """Client keyword arguments for the CURVE flags (None: the environment decides)."""
    return {"curve_secret": args.curve_secret, "curve_server": args.curve_server}


def _cmd_keygen(args: argparse.Namespace) -> int:
    target = Path(args.path)
    name = target.name
    if not name or name in (".", "..") or args.path.endswith(("/", os.sep)):
        print(f"error: {args.path!r}: give DIR/NAME, e.g. keys/worker1", file=sys.stderr)
        return 2
    if name.endswith((".key", ".key_secret")):
        name = name.rsplit(".", 1)[0]
    services = None
    if args.services is not None:
        services = [n.strip() for n in args.services.split(",") if n.strip()]
        if not services or not all(NAME_PATTERN.match(n) for n in services):
            print(
                f"error: --services {args.services!r}: give service names separated by "
                "commas, e.g. --services math,demo",
                file=sys.stderr,
            )
            return 2
    directory = target.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        public, secret = write_certificates(directory, name, services)
    except FileExistsError as exc:
        print(
            f"error: {exc.filename} already exists: refusing to overwrite a key (remove "
            "it first, or pick another NAME)",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:
        print(f"error: cannot write keys in {str(directory)!r}: {exc}", file=sys.stderr)
        return 2
    print(f"public key: {public}  (give it to the other side: --curve-allow DIR / --curve-server)")
    print(f"secret key: {secret}  (mode 0600; keep it here: --curve-secret)")
    if services is not None:
        print(
            f"services:   {','.join(services)}  (a server holding {public.name} lets it "
            "call only these)"
        )
    return 0


def _cmd_call(args: argparse.Namespace) -> int:
    kwargs: dict[str, Any] = {}
    for item in args.kw or ():
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SystemExit(f"zeromesh call: --kw expects KEY=VALUE, got {item!r}")
        kwargs[key] = _parse_value(value)
    values = [_parse_value(a) for a in args.args]
    with Client(
        args.connect, timeout=args.timeout, retries=args.retries, codec=args.codec, **_curve(args)
    ) as c:
        result = c.call(args.target, *values, **kwargs)
    print(json.dumps(result, default=_json_default))
    return 0


def _cmd_ping(args: argparse.Namespace) -> int:
    with Client(args.connect, **_curve(args)) as c:
        rows = c.workers(timeout=args.timeout)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            if row["state"] == "unreachable" and row.get("refused"):
                print(f"{row['endpoint']}  REFUSED: {row['refused']}")
                continue
            if row["state"] == "unreachable" and row.get("unresolved"):
                print(f"{row['endpoint']}  UNRESOLVED: {row['unresolved']}")
                continue
            if row["state"] == "unreachable":
                print(
                    f"{row['endpoint']}  UNREACHABLE (nothing answered within {args.timeout:g} s)"
                )
                continue
            is_async = row["async_handlers"]
            handlers = ", ".join(
                f"{svc}.{h}" + (" (async)" if h in is_async.get(svc, ()) else "")
                for svc, hs in sorted(row["services"].items())
                for h in hs
            )
            # A 1.0 peer says only its capacity; a 1.1 one also how it splits.
            kinds = (
                f" threads={row['threads']} async_slots={row['async_slots']}"
                if row["threads"]
                else ""
            )
            print(
                f"{row['endpoint']}  {row['state'].upper()}  {row['role']} {row['name']} "
                f"host={row['host']} pid={row['pid']} version={row['version']} "
                f"capacity={row['capacity']}{kinds} in_flight={row['in_flight']} "
                f"uptime={row['uptime']:.1f}s\n    handlers: {handlers or '(none)'}"
            )
    down = sum(1 for r in rows if r["state"] == "unreachable")
    if down:
        print(f"{down} of {len(rows)} endpoint(s) did not answer", file=sys.stderr)
    return 1 if down else 0


def _cmd_status(args: argparse.Namespace) -> int:
    from client import resolve_endpoints

    from ._status import run_status

    security = ClientSecurity.from_settings(args.curve_secret, args.curve_server)
    return run_status(resolve_endpoints(args.connect), args.timeout, args.json, security)


def _cmd_top(args: argparse.Namespace) -> int:
    from client import resolve_endpoints

    from ._top import run_top

    security = ClientSecurity.from_settings(args.curve_secret, args.curve_server)
    return run_top(
        resolve_endpoints(args.connect),
        interval=args.interval,
        once=args.once,
        sort=args.sort,
        timeout=args.timeout,
        security=security,
        client_options={**_curve(args), "resolve_interval": args.resolve_interval},
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(workers=args.workers, items=args.items, transport=args.transport)


def _cmd_rollout(args: argparse.Namespace) -> int:
    from ._rollout import rollout

    return rollout(args.config, args.group, timeout=args.timeout, dry_run=args.dry_run)


def _cmd_bench(args: argparse.Namespace) -> int:
    # The benchmark ships with zeromesh (so a plain install has it) but is no part of
    # the library: imported only when asked for.
    from ._bench.mesh import main as bench_main

    return bench_main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeromesh",
        description="Tools for a zeromesh worker mesh.",
        epilog="Start workers with `zeromesh-worker MODULE:SERVICE --bind ENDPOINT`.",
    )
    add_log_level(parser, "warning", "what to log on stderr (default warning)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "call",
        help="call a handler once and print its result as JSON",
        description="Call SERVICE.HANDLER with arguments parsed as JSON (a word that is "
        "not JSON is taken as a string); print the result as JSON.",
        epilog="example: zeromesh call --connect tcp://127.0.0.1:5555 math.add 1 2",
    )
    _add_connect(p)
    p.add_argument("target", metavar="SERVICE.HANDLER")
    p.add_argument("args", nargs="*", metavar="ARG", help="positional arguments (JSON)")
    p.add_argument("--kw", action="append", metavar="KEY=VALUE", help="keyword argument (JSON)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    p.add_argument("--retries", type=int, default=2, help="re-sends if a worker is lost (2)")
    p.add_argument("--codec", choices=["msgpack", "json"], default="msgpack")
    add_client_security(p)
    p.set_defaults(func=_cmd_call)

    p = sub.add_parser(
        "ping",
        help="show who answers on each endpoint",
        description="Ask every endpoint for its hello: services, host, pid, version, "
        "capacity (threads for plain handlers, async slots for async ones), in-flight "
        "requests, uptime. Exits 1 if any endpoint does not answer.",
    )
    _add_query_options(p)
    p.set_defaults(func=_cmd_ping)

    p = sub.add_parser(
        "status",
        help="show a broker's workers, queues and totals",
        description="Ask each broker for its status: every worker (host, pid, services, "
        "credit, in-flight requests, last seen), the queue depth per service, and totals. "
        "Exits 1 if any endpoint does not answer as a broker.",
        epilog="example: zeromesh status --connect tcp://b1:5600,tcp://b2:5600",
    )
    _add_query_options(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "top",
        help="a live view of workers and brokers: load, calls/s, latency, errors, memory",
        description="Show every worker and broker, refreshed each --interval: host, pid, "
        "state, services, in flight / capacity, calls/s, p50/p99 latency and errors/s "
        "over the last 10 s, resident memory, uptime; and the brokers' queues. Reads "
        "what the processes answer (HELLO, _broker.status): no Prometheus needed. "
        "Saturated rows show yellow (75%) or red (full), errors red. Ctrl-C quits.",
        epilog="examples:\n"
        "  zeromesh top -c tcp://127.0.0.1:5501-5504\n"
        "  zeromesh top -c tcp://b1:5600 --sort p99\n"
        "  zeromesh top -c tcp://127.0.0.1:5501 --once   (one frame, for scripts)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connect(p)
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between refreshes (default 1)"
    )
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument(
        "--sort",
        choices=SORT_KEYS,
        default="name",
        help="row order: name (default), calls, p99, errors or load (busiest first)",
    )
    p.add_argument(
        "--timeout", type=float, default=2.0, help="seconds to wait for answers (default 2)"
    )
    add_resolve_interval(p, "--connect endpoint")
    add_client_security(p)
    p.set_defaults(func=_cmd_top)

    p = sub.add_parser(
        "keygen",
        help="make a CURVE key pair: DIR/NAME.key (public) and DIR/NAME.key_secret",
        description="Write a CURVE key pair in ZeroMQ's certificate format: DIR/NAME.key "
        "(the public key, to hand out) and DIR/NAME.key_secret (mode 0600, to keep). "
        "Refuses to overwrite an existing key. DIR is created if missing.",
        epilog="examples:\n"
        "  zeromesh keygen keys/worker1        (a server: --curve-secret keys/worker1.key_secret)\n"
        "  zeromesh keygen keys/clients/web1   (a client; its server gets --curve-allow "
        "keys/clients)\n"
        "  zeromesh keygen keys/clients/report --services math   (a client that may call "
        "math.* only)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="DIR/NAME", help="where to write NAME.key and NAME.key_secret")
    p.add_argument(
        "--services",
        metavar="S1,S2",
        default=None,
        help="limit this client key to these services: written into NAME.key, which "
        "servers read from their --curve-allow directory (default: no limit)",
    )
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser(
        "demo",
        help="start local workers, make some calls, stop them",
        description="Start local workers of the bundled example service, make a call, a "
        "numpy call, a failing call and a map with a progress bar, then stop them.",
    )
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--items", type=int, default=100_000, help="items to map (default 100000)")
    p.add_argument("--transport", choices=["tcp", "ipc"], default="tcp")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "rollout",
        help="restart supervisord workers one at a time, each ready before the next",
        description=(
            "Restart the processes of a supervisord group one at a time, through\n"
            "supervisord's XML-RPC interface. After each restart, wait until the new\n"
            "process is RUNNING and answers a zeromesh ping on its endpoint (the first\n"
            "--bind of its command) before the next one: the others serve meanwhile.\n"
            "A process that does not come back stops the rollout; the rest are left\n"
            "untouched."
        ),
        epilog=(
            "example:\n  zeromesh rollout -c supervisord.conf worker\n\n"
            "exit status: 0 all restarted and ready, 1 one did not come back (the rest\n"
            "  untouched), 2 no config, no supervisord or no such group."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-c",
        "--config",
        default="supervisord.conf",
        metavar="PATH",
        help="the supervisord config (default ./supervisord.conf)",
    )
    p.add_argument(
        "group",
        nargs="?",
        default="worker",
        metavar="GROUP",
        help="the group to restart: GROUP, GROUP:* or GROUP:NAME (default worker)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds each process may take to answer again (default 30)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list the processes, their states and endpoints; restart nothing",
    )
    p.set_defaults(func=_cmd_rollout)

    p = sub.add_parser(
        "bench",
        add_help=False,  # `zeromesh bench --help` is the benchmark's own
        help="run zeromesh beside raw pyzmq and ProcessPoolExecutor; print ratios "
        "(--scale: with thousands of simulated peers)",
    )
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        # Hand every argument, --help included, to the benchmark's own parser.
        return _cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except RemoteError as exc:
        print(f"error: the handler raised {exc.remote_type}: {exc.remote_message}", file=sys.stderr)
        if exc.remote_traceback:
            print(exc.remote_traceback.rstrip(), file=sys.stderr)
        return 1
    except ZeromeshError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # bad endpoints and the like
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
