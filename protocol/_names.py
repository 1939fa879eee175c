"""Names both ends of the wire must agree on, kept in one place.

Service and handler names, the reserved service a broker answers itself, the attribute
that carries a handler's wire name to `Executor.submit`, and the states a session with
a peer goes through (shown by ``zeromesh ping`` and ``zeromesh status``).
"""

from __future__ import annotations

import re

__all__ = [
    "CONNECTING",
    "DRAINING",
    "GREETING",
    "LEAVING",
    "LIVENESS",
    "NAME_PATTERN",
    "OTHER_NAME",
    "PROTOCOL_REVISION",
    "READY",
    "RESERVED_SERVICE",
    "TARGET_ATTRIBUTE",
    "TARGET_PATTERN",
    "UNREACHABLE",
]

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}\Z")
"""A service or handler name: an identifier-like word of at most 64 characters."""

TARGET_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}\.[A-Za-z_][A-Za-z0-9_\-]{0,63}\Z")
"""A request's target, ``service.handler``, each part a `NAME_PATTERN`."""

PROTOCOL_REVISION = "1.2"
"""The protocol revision this package speaks, announced in HELLO (``protocol``). The
header's version byte stays 1: a revision only adds what a peer is sent once it has
announced that revision (SPEC section 9). A HELLO without the field is from 1.0."""

LIVENESS = 3
"""Heartbeat intervals of silence after which a peer is taken for lost (SPEC 7.4)."""

OTHER_NAME = "_other"
"""Stands for any target or service name a peer sent that this side does not serve or
know, in metrics labels and status: a client can make up endless names, so they never
become labels of their own."""

RESERVED_SERVICE = "_broker"
"""The service a broker answers itself (``_broker.status``); no worker may serve it."""

TARGET_ATTRIBUTE = "__zeromesh_target__"
"""Set on every handler function: `Executor.submit(fn, ...)` sends this name, never code."""

# States of a session with one peer (SPEC sections 7.2 and 12.3). Compared by identity.
CONNECTING = "connecting"
"""No session: not connected, or connected and not yet answered our HELLO."""
GREETING = "greeting"
"""Our HELLO is out; the peer has not answered it yet (a worker at a broker)."""
READY = "ready"
"""The peer answered HELLO and takes work."""
DRAINING = "draining"
"""The peer said DISCONNECT (or capacity 0): it finishes what it holds, takes nothing new."""
LEAVING = "leaving"
"""A broker this worker is registered with is draining: no more credit for it."""
UNREACHABLE = "unreachable"
"""The peer did not answer in time (shown by ``zeromesh ping``)."""
