"""zeromesh: scale a Python function across processes and hosts over ZeroMQ.

The one import a user needs::

    from zeromesh import Client, Service

    svc = Service("math")            # in the worker's module, served by
                                     # `zeromesh-worker mysvc:svc --bind tcp://127.0.0.1:5555`
    @svc.handler
    def add(a, b):
        return a + b

    with Client(["tcp://127.0.0.1:5555"]) as c:
        c.call("math.add", 1, 2)     # 3

Every name here is re-exported from the package that defines it (`client`, `worker`,
`protocol`); this facade adds none of its own. The ``zeromesh`` command (call, ping,
status, demo, rollout, bench) lives here too, above the client and the worker.
"""

from client import (
    ENV_ENDPOINTS,
    AsyncClient,
    Client,
    Executor,
    Options,
    Slots,
    WorkerInfo,
    resolve_endpoints,
)
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
    StartupError,
    Timeout,
    UnknownHandler,
    WorkerLost,
    ZeromeshError,
    __version__,
)
from worker import Service, cancelled, progress, trace_id, traceparent

__all__ = [
    # calling handlers
    "AsyncClient",
    "Client",
    "Codec",
    "Executor",
    "Options",
    "Slots",
    "WorkerInfo",
    "ENV_ENDPOINTS",
    "resolve_endpoints",
    # serving handlers
    "Service",
    "cancelled",
    "progress",
    "trace_id",
    "traceparent",
    # errors: every one a ZeromeshError
    "ZeromeshError",
    "AuthenticationError",
    "BadArguments",
    "Cancelled",
    "Forbidden",
    "NoWorkers",
    "Overloaded",
    "ProtocolError",
    "RemoteError",
    "StartupError",
    "Timeout",
    "UnknownHandler",
    "WorkerLost",
    # the distribution's version
    "__version__",
]
