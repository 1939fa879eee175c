"""zeromesh HTTP gateway: the mesh's handlers for any HTTP client, with background jobs.

From the shell: ``zeromesh-gateway --listen 127.0.0.1:8080 --connect tcp://127.0.0.1:5555``.
In a program (on a running asyncio loop)::

    from gateway import Gateway, GatewayConfig
    gw = Gateway(GatewayConfig(connect=["tcp://127.0.0.1:5555"], port=0, jobs_db=":memory:"))
    await gw.start()          # gw.url is where it listens
    ...
    await gw.stop()

Routes: ``POST /call/<service.handler>``, ``POST /jobs/<service.handler>``,
``GET``/``DELETE /jobs/<id>``, ``GET /healthz`` (see README.md, "HTTP gateway").
"""

import logging

from protocol import StartupError

from ._cli import main
from ._config import MEMORY, GatewayConfig
from ._gateway import Gateway

# A library leaves logging to the program: without a handler of its own, Python's
# last-resort handler would print our warnings on the embedding program's stderr.
logging.getLogger("zeromesh.gateway").addHandler(logging.NullHandler())

__all__ = [
    # running a gateway
    "Gateway",
    "GatewayConfig",
    "MEMORY",
    "StartupError",
    # the command line
    "main",
]
