"""zeromesh client: call handlers served by workers, from threads, asyncio or an Executor.

from zeromesh import Client     # users import from the facade; the same object as here
with Client(["tcp://127.0.0.1:5555"]) as c:
    c.call("math.add", 1, 2)

A library package: it imports `protocol` and `zmqio` only, never `worker`, `broker`,
`gateway` or the tools in `zeromesh` (CI checks this with lint-imports).
"""

import logging

from protocol import (
    AuthenticationError,
    BadArguments,
    Cancelled,
    Codec,
    Forbidden,
    NoWorkers,
    Overloaded,
    ProtocolError,
    RemoteError,
    Timeout,
    UnknownHandler,
    WorkerLost,
    ZeromeshError,
)

from ._async import AsyncClient
from ._client import Client
from ._dispatch import Slots, WorkerInfo
from ._endpoints import ENV_ENDPOINTS, resolve_endpoints
from ._executor import Executor
from ._options import Options
from ._stream import AsyncStream, Stream

# A library leaves logging to the program: without a handler of its own, Python's
# last-resort handler would print our warnings on the embedding program's stderr.
logging.getLogger("zeromesh.client").addHandler(logging.NullHandler())

__all__ = [
    # clients
    "AsyncClient",
    "Client",
    "Codec",
    "Executor",
    "Options",
    "Slots",
    "WorkerInfo",
    # what stream() returns (its type, for annotations)
    "AsyncStream",
    "Stream",
    # endpoint lists as users write them (ranges, $ZEROMESH_ENDPOINTS)
    "ENV_ENDPOINTS",
    "resolve_endpoints",
    # errors a caller can meet
    "AuthenticationError",
    "BadArguments",
    "Cancelled",
    "Forbidden",
    "NoWorkers",
    "Overloaded",
    "ProtocolError",
    "RemoteError",
    "Timeout",
    "UnknownHandler",
    "WorkerLost",
    "ZeromeshError",
]
