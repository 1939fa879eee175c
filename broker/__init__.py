"""zeromesh broker: load-balancing by credit between clients and workers.

``zeromesh-broker --bind tcp://*:5600``; workers connect out with
``zeromesh-worker mysvc:svc --broker tcp://HOST:5600``; clients list the broker's
endpoint like a worker's. The wire rules are in protocol/SPEC.md, section 12.
"""

from ._scheduler import RESERVED_SERVICE, Scheduler

__all__ = [
    # the pure core
    "RESERVED_SERVICE",
    "Scheduler",
]
