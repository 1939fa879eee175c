"""zeromesh worker: define a `Service`, serve it with ``zeromesh-worker module:attr``.

from worker import Service
svc = Service("math")

@svc.handler
def add(a, b):
    return a + b
"""

from ._config import StartupError, WorkerConfig
from ._context import cancelled, progress
from ._server import Worker
from ._service import Service

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
