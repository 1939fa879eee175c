"""zeromesh worker: define a `Service`, serve it with ``zeromesh-worker module:attr``.

from worker import Service
svc = Service("math")

@svc.handler
def add(a, b):
    return a + b
"""

import logging

from ._context import cancelled, progress
from ._server import StartupError, Worker, WorkerConfig
from ._service import Service

# A library leaves logging to the program: without a handler of its own, Python's
# last-resort handler would print our warnings on the embedding program's stderr.
logging.getLogger("zeromesh.worker").addHandler(logging.NullHandler())

__all__ = [
    # defining services
    "Service",
    "cancelled",
    "progress",
    # running a worker in-process (the CLI does this for you)
    "StartupError",
    "Worker",
    "WorkerConfig",
]
