"""zeromesh broker: balance clients' requests over the workers that connect to it.

``zeromesh-broker --bind tcp://*:5600 --curve-secret ... --curve-allow ...`` (or
``--insecure``: beyond loopback it wants CURVE keys); workers connect out with
``zeromesh-worker mysvc:svc --broker tcp://HOST:5600``; clients list the broker's
endpoint like a worker's (the HELLO answer tells them apart). The wire rules are in
protocol/SPEC.md, section 12.
"""

import logging

from ._scheduler import RESERVED_SERVICE, Scheduler
from ._server import EXIT_DRAIN_TIMEOUT, Broker, BrokerConfig, StartupError

# A library leaves logging to the program: without a handler of its own, Python's
# last-resort handler would print our warnings on the embedding program's stderr.
logging.getLogger("zeromesh.broker").addHandler(logging.NullHandler())

__all__ = [
    # running a broker in-process (the CLI does this for you)
    "Broker",
    "BrokerConfig",
    "EXIT_DRAIN_TIMEOUT",
    "StartupError",
    # the pure core: dispatch decisions, driven by method calls and a clock
    "RESERVED_SERVICE",
    "Scheduler",
]
