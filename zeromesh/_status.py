"""``zeromesh status``: what a broker knows — its workers, its queues, its totals.

Each broker answers the reserved request ``_broker.status`` itself (protocol/SPEC.md,
section 12.6). This asks every endpoint directly over its own DEALER, not through a
`Client`: a broker with no worker reports capacity 0, and a client sends nothing to a
peer with no capacity — but its status is exactly what an operator wants then.
"""

from __future__ import annotations

import json
import time
from typing import Any

import zmq

import protocol
from protocol import Error, ErrorCode, ProtocolError, Reply, Request, Timeout, UnknownHandler
from zmqio import ClientSecurity, HandshakeWatch, secure_client

__all__ = ["fetch_status", "format_status", "run_status"]

STATUS_TARGET = "_broker.status"
_STATUS_ID = 1  # the only request on its own socket: any id tells its answer apart


def fetch_status(
    endpoint: str, timeout: float, security: ClientSecurity | None = None
) -> dict[str, Any]:
    """The status map of the broker at ``endpoint`` (over CURVE with ``security``).

    Raises:
        Timeout: nothing answered within ``timeout`` seconds.
        UnknownHandler: something answered, but it is not a broker (a worker, say).
        AuthenticationError: the broker refused our key, or ours is the wrong server key.
        Forbidden: our key may not call ``_broker`` there.
        ProtocolError: the answer was not zeromesh.
    """
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)  # an endpoint nobody serves must not hang exit
    watch = HandshakeWatch(sock, endpoint, security)
    try:
        secure_client(sock, endpoint, security)
        sock.connect(endpoint)
        rid = _STATUS_ID
        ask = Request(rid, STATUS_TARGET, ttl_ms=int(timeout * 1000))
        sock.send_multipart(protocol.encode(ask))
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(watch.monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready = dict(poller.poll(int(left * 1000) + 1))
            if watch.monitor in ready:
                watch.check()  # a refused key: AuthenticationError now, not a timeout
            if sock not in ready:
                continue
            msg = protocol.decode(sock.recv_multipart())
            if msg.id != rid:
                continue  # an unasked HELLO or the like
            if isinstance(msg, Reply) and isinstance(msg.result, dict):
                return msg.result
            if isinstance(msg, Error):
                if msg.code == ErrorCode.UNKNOWN_HANDLER:
                    raise UnknownHandler(
                        f"it answered {msg.message!r}: not a broker (a worker?); "
                        f"`zeromesh ping -c {endpoint}` shows what it is"
                    )
                raise msg.to_exception()  # Forbidden, ...
            raise ProtocolError(f"unexpected answer {type(msg).__name__} to {STATUS_TARGET}")
        if security is not None:
            raise Timeout(
                f"nothing answered within {timeout:g} s over CURVE: is a broker running "
                "there, and is --curve-server its key?"
            )
        raise Timeout(
            f"nothing answered within {timeout:g} s: is a broker running there? "
            f"start one with `zeromesh-broker --bind {endpoint}`, or wait longer with --timeout"
        )
    finally:
        watch.close()
        sock.close(linger=0)
        ctx.term()


_COLUMNS = ["NAME", "HOST", "PID", "STATE", "SERVICES", "CREDIT", "IN-FLIGHT", "SERVED", "SEEN"]


def _ago(seconds: float) -> str:
    return f"{seconds:.1f}s ago"


def format_status(endpoint: str, st: dict[str, Any]) -> str:
    """Human-readable lines for one broker's status."""
    b = st.get("broker", {})
    totals = st.get("totals", {})
    lines = [
        f"broker {b.get('name', '?')} at {endpoint}  {str(b.get('state', '?')).upper()}  "
        f"host={b.get('host', '?')} pid={b.get('pid', '?')} version={b.get('version', '?')} "
        f"uptime={b.get('uptime', 0):.1f}s clients={b.get('clients', 0)}"
    ]
    workers = st.get("workers", [])
    lines.append(f"  workers: {len(workers)}")
    if workers:
        rows = [_COLUMNS]
        for w in workers:
            services = ",".join(sorted(w.get("services", {}))) or "-"
            rows.append(
                [
                    str(w.get("name") or w.get("id", "?")),
                    str(w.get("host", "")),
                    str(w.get("pid", "")),
                    str(w.get("state", "")),
                    services,
                    f"{w.get('credit', 0)}/{w.get('capacity', 0)}",
                    str(w.get("in_flight", 0)),
                    str(w.get("served", 0)),
                    _ago(float(w.get("last_seen", 0))),
                ]
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            cells = "  ".join(c.ljust(wd) for c, wd in zip(r, widths, strict=True))
            lines.append(("    " + cells).rstrip())
    queues = st.get("queues", {})
    shown = " ".join(f"{s}={n}" for s, n in sorted(queues.items())) or "empty"
    lines.append(f"  queues: {shown}")
    # In the broker's own order (SPEC 12.6): a counter it adds shows without a change here.
    lines.append("  totals: " + " ".join(f"{k}={v}" for k, v in totals.items()))
    return "\n".join(lines)


def run_status(
    endpoints: list[str], timeout: float, as_json: bool, security: ClientSecurity | None = None
) -> int:
    """Print the status of every broker; 1 if any did not answer as a broker."""
    results: dict[str, Any] = {}
    failed = 0
    for ep in endpoints:
        try:
            results[ep] = fetch_status(ep, timeout, security)
        except (Timeout, UnknownHandler, ProtocolError) as exc:
            failed += 1
            results[ep] = {"error": str(exc)}
    if as_json:
        print(json.dumps(results, indent=2))
    else:
        for ep, st in results.items():
            if "error" in st:
                print(f"{ep}  UNAVAILABLE: {st['error']}")
            else:
                print(format_status(ep, st))
    return 1 if failed else 0
