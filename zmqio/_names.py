"""Which addresses the host names in endpoints stand for, as lookups come in. No IO.

``tcp://workers.internal:5555`` may name many workers: a Kubernetes headless service,
round-robin DNS or /etc/hosts give one address per worker. ZeroMQ would connect to the
first address alone, so the client (and a worker's ``--broker`` names) connects to
every address instead, looks the name up again every ``interval`` seconds, joins the
addresses that appeared and drains those that vanished.

`NameTable` is that policy, a plain state machine with a clock it is given (the rules
below); `zmqio._resolver.NameWatch` runs the lookups on a thread and carries out what
the table says. Rules:

* Endpoints that need no lookup are *fixed* and used as written: ``ipc://``, a literal
  IPv4 or IPv6 address, ``tcp://*``, the source-address form ``tcp://SRC;HOST:PORT``.
* A name's first lookup is due at once; the next one ``interval`` seconds after the
  last answer (``interval`` 0: never again once it resolved).
* A lookup that fails, or finds no address, keeps the name's last good addresses and
  is tried again sooner: `RETRY_FIRST_S`, doubling, up to the interval (30 s when
  the interval is 0). The warning is given once per change of error, not per retry.
* An address endpoint joins when the first name stands for it and vanishes when the
  last name stops standing for it; an address that is also a fixed endpoint is never
  joined or vanished (it is connected once, as written).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from typing import NamedTuple

__all__ = [
    "DEFAULT_RESOLVE_INTERVAL",
    "RETRY_FIRST_S",
    "NameTable",
    "NameUpdate",
    "address_endpoint",
    "lookup_target",
]

DEFAULT_RESOLVE_INTERVAL = 30.0
"""Seconds between two lookups of one name (``resolve_interval``, ``--resolve-interval``)."""
RETRY_FIRST_S = 0.5
"""After a failed lookup, the next comes this soon, doubling up to the interval."""


def lookup_target(endpoint: str) -> tuple[str, int] | None:
    """(host, port) of a tcp endpoint whose host is a name to look up; None for the
    rest (ipc://, a literal address, ``*``, the source-address form)."""
    scheme, sep, rest = endpoint.partition("://")
    if scheme != "tcp" or not sep or ";" in rest:
        return None
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not port.isdigit() or host == "*" or host.startswith("["):
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host, int(port)
    return None  # a literal address


def address_endpoint(address: str, port: int) -> str:
    """``tcp://ADDRESS:PORT`` (an IPv6 address in brackets)."""
    return f"tcp://[{address}]:{port}" if ":" in address else f"tcp://{address}:{port}"


class NameUpdate(NamedTuple):
    """What one lookup's answer changes (`NameTable.resolved`, `NameTable.failed`)."""

    joined: tuple[str, ...]
    """Address endpoints to connect to now."""
    vanished: tuple[str, ...]
    """Address endpoints no name stands for any more: send them nothing new."""
    warning: str
    """A failed lookup, said once per change of error ("" when there is nothing new)."""
    note: str
    """What changed, in words, for an info line ("" when nothing did)."""


_NOTHING = NameUpdate((), (), "", "")


class _Name:
    __slots__ = ("addresses", "due", "endpoint", "error", "failures", "host", "looking", "port")

    def __init__(self, endpoint: str, host: str, port: int) -> None:
        self.endpoint = endpoint
        self.host = host
        self.port = port
        self.addresses: frozenset[str] = frozenset()  # address endpoints, last good lookup
        self.error = ""  # the last lookup's failure, "" once one succeeds
        self.failures = 0  # failed lookups in a row
        self.due: float | None = 0.0  # when the next lookup is due (None: never)
        self.looking = False  # a lookup was handed out and has not been answered


class NameTable:
    """Endpoints as written, and the address endpoints their host names stand for.

    Args:
        endpoints: endpoints as the user wrote them.
        interval: seconds between lookups of one name; 0 looks each name up until it
            resolves, then never again.
        clock: monotonic seconds; tests pass a fake one.

    Not thread-safe: one loop drives it.
    """

    def __init__(
        self, endpoints: Iterable[str], *, interval: float, clock: Callable[[], float]
    ) -> None:
        if interval < 0:
            raise ValueError(f"resolve interval {interval!r}: give seconds >= 0 (0: look up once)")
        self.interval = interval
        self.clock = clock
        self.fixed: list[str] = []
        """Endpoints used as written (no lookup)."""
        self.names: dict[str, _Name] = {}
        self._owners: dict[str, set[str]] = {}  # address endpoint -> names standing for it
        for endpoint in endpoints:
            target = lookup_target(endpoint)
            if target is None:
                if endpoint not in self.fixed:
                    self.fixed.append(endpoint)
            elif endpoint not in self.names:
                self.names[endpoint] = _Name(endpoint, *target)

    # --- what to look up, and when -------------------------------------------------------

    def due(self) -> list[tuple[str, str, int]]:
        """(endpoint, host, port) of each name to look up now; each counts as being looked
        up until `resolved` or `failed` is called for it."""
        now = self.clock()
        out = []
        for name in self.names.values():
            if not name.looking and name.due is not None and name.due <= now:
                name.looking = True
                out.append((name.endpoint, name.host, name.port))
        return out

    def next_due(self) -> float | None:
        """When the next lookup is due (None: none is, or all run now)."""
        times = [n.due for n in self.names.values() if not n.looking and n.due is not None]
        return min(times) if times else None

    # --- answers ---------------------------------------------------------------------------

    def resolved(self, endpoint: str, addresses: Iterable[str]) -> NameUpdate:
        """``endpoint``'s host name resolved to ``addresses`` (IP address strings)."""
        name = self.names.get(endpoint)
        if name is None:
            return _NOTHING
        found = frozenset(address_endpoint(a, name.port) for a in addresses)
        if not found:
            return self.failed(endpoint, "it resolves to no IPv4 address")
        name.looking = False
        name.due = self.clock() + self.interval if self.interval else None
        recovered = name.error
        name.error = ""
        name.failures = 0
        before, name.addresses = name.addresses, found
        joined = self._take(name, found - before)
        vanished = self._drop(name, before - found)
        if not joined and not vanished and not recovered:
            return _NOTHING
        parts = [f"+{a}" for a in sorted(found - before)]
        parts += [f"-{a}" for a in sorted(before - found)]
        note = f"{endpoint} stands for {len(found)} address(es)"
        if parts:
            note += ": " + " ".join(parts)
        if recovered:
            note += f" (it resolves again; it failed: {recovered})"
        return NameUpdate(joined, vanished, "", note)

    def failed(self, endpoint: str, why: str) -> NameUpdate:
        """``endpoint``'s lookup failed with ``why``: keep its last addresses, retry soon."""
        name = self.names.get(endpoint)
        if name is None:
            return _NOTHING
        name.looking = False
        retry = min(RETRY_FIRST_S * 2**name.failures, self.interval or DEFAULT_RESOLVE_INTERVAL)
        name.failures += 1
        name.due = self.clock() + retry
        if why == name.error:
            return _NOTHING
        name.error = why
        kept = (
            f"keeping its last {len(name.addresses)} address(es)"
            if name.addresses
            else "nothing to connect to until it resolves"
        )
        return NameUpdate(
            (),
            (),
            f"cannot resolve {name.host!r} (in {endpoint}): {why}; {kept}; retrying in the "
            f"background (check the name: getent hosts {name.host})",
            "",
        )

    # --- reading the state -----------------------------------------------------------------

    def addresses(self) -> list[str]:
        """Every address endpoint some name stands for now (fixed endpoints apart)."""
        return sorted(a for a in self._owners if a not in self.fixed)

    def unresolved(self) -> dict[str, str]:
        """Names standing for no address yet, with why: their last lookup's error, or ""
        while their first lookup runs."""
        return {n.endpoint: n.error for n in self.names.values() if not n.addresses}

    # --- internals ---------------------------------------------------------------------------

    def _take(self, name: _Name, new: Iterable[str]) -> tuple[str, ...]:
        joined = []
        for address in sorted(new):
            owners = self._owners.setdefault(address, set())
            if not owners and address not in self.fixed:
                joined.append(address)
            owners.add(name.endpoint)
        return tuple(joined)

    def _drop(self, name: _Name, gone: Iterable[str]) -> tuple[str, ...]:
        vanished = []
        for address in sorted(gone):
            owners = self._owners.get(address)
            if owners is None:
                continue
            owners.discard(name.endpoint)
            if not owners:
                del self._owners[address]
                if address not in self.fixed:
                    vanished.append(address)
        return tuple(vanished)
