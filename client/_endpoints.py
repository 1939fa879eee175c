"""Endpoint strings as users write them: checked early, with errors that say what to type."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

__all__ = ["ENV_ENDPOINTS", "resolve_endpoints"]

ENV_ENDPOINTS = "ZEROMESH_ENDPOINTS"


def resolve_endpoints(endpoints: str | Iterable[str] | None) -> list[str]:
    """Normalise ``endpoints`` into a list of connectable endpoint strings.

    ``None`` reads ``$ZEROMESH_ENDPOINTS``; a string may hold several, comma-separated.
    A tcp port range stands for one endpoint per port, the way supervisord.conf numbers
    its workers: ``tcp://127.0.0.1:5501-5504`` is ports 5501, 5502, 5503 and 5504.
    Duplicates are dropped, order kept.

    Raises:
        ValueError: no endpoint given, or one is not ``tcp://HOST:PORT`` / ``ipc://PATH``.
    """
    if endpoints is None:
        endpoints = os.environ.get(ENV_ENDPOINTS, "")
        if not endpoints.strip():
            raise ValueError(
                "no endpoints: pass them, e.g. Client(['tcp://127.0.0.1:5555']) or "
                f"--connect tcp://127.0.0.1:5555, or set {ENV_ENDPOINTS}=tcp://host:5555,..."
            )
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    result: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"endpoint {item!r} is not a string")
        ep = item.strip()
        if not ep:
            continue
        for one in _expand_range(ep):
            _check(one)
            if one not in result:
                result.append(one)
    if not result:
        raise ValueError("no endpoints given (an empty list or only commas)")
    return result


_PORT_RANGE = re.compile(r"(tcp://.+):(\d+)-(\d+)\Z")
MAX_RANGE = 1000
"""Most endpoints one port range may stand for: a typo must not open 60,000 sockets."""


def _expand_range(ep: str) -> list[str]:
    """``tcp://HOST:A-B`` as the endpoints for ports A..B (inclusive); others unchanged."""
    m = _PORT_RANGE.match(ep)
    if m is None:
        return [ep]
    prefix, first, last = m.group(1), int(m.group(2)), int(m.group(3))
    if not 0 < first <= last < 65536:
        raise ValueError(
            f"endpoint {ep!r}: a port range A-B needs 1 <= A <= B <= 65535, "
            "e.g. tcp://127.0.0.1:5501-5504"
        )
    if last - first + 1 > MAX_RANGE:
        raise ValueError(
            f"endpoint {ep!r}: the range covers {last - first + 1} ports; at most {MAX_RANGE}"
        )
    return [f"{prefix}:{port}" for port in range(first, last + 1)]


def _check(ep: str) -> None:
    scheme, sep, rest = ep.partition("://")
    if not sep or scheme not in ("tcp", "ipc"):
        raise ValueError(
            f"endpoint {ep!r}: expected tcp://HOST:PORT (e.g. tcp://127.0.0.1:5555) or "
            "ipc:///path/to/socket"
        )
    if scheme == "ipc":
        if not rest:
            raise ValueError(f"endpoint {ep!r}: the ipc path is empty")
        if len(rest.encode()) > 107:
            raise ValueError(f"endpoint {ep!r}: ipc paths are limited to ~107 bytes")
        return
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"endpoint {ep!r}: expected tcp://HOST:PORT with a port 1-65535, or a port "
            "range tcp://HOST:FIRST-LAST"
        )
    if host in ("*", "0.0.0.0", "[::]", "::"):
        raise ValueError(
            f"endpoint {ep!r} is a bind address; connect to the worker's host instead, "
            f"e.g. tcp://127.0.0.1:{port}"
        )
