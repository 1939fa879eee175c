"""zeromesh worker: define a `Service`, serve it with ``zeromesh-worker module:attr``.

from zeromesh import Service    # users import from the facade; the same object as here
svc = Service("math")

@svc.handler
def add(a, b):
    return a + b

A library package: it imports `protocol` and `zmqio` only, never `client`, `broker`,
`gateway` or the tools in `zeromesh` (CI checks this with lint-imports).
"""

import logging

from ._config import StartupError, WorkerConfig
from ._context import cancelled, progress, trace_id, traceparent
from ._server import Worker
from ._service import Service

# A library leaves logging to the program: without a handler of its own, Python's
# last-resort handler would print our warnings on the embedding program's stderr.
logging.getLogger("zeromesh.worker").addHandler(logging.NullHandler())

__all__ = [
    # defining services
    "Service",
    "cancelled",
    "progress",
    "trace_id",
    "traceparent",
    # running a worker in-process (the CLI does this for you)
    "StartupError",
    "Worker",
    "WorkerConfig",
]
