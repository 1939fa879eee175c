"""The one socket toolkit of zeromesh: worker, broker, broker link and client all use it.

Nothing else in zeromesh sets a socket option, loops over a socket's input or decides
what to do with a message that finds a full pipe. Above this package, shells deal in
whole messages; below it, pyzmq.

* `bind_router`, `Dialer`: the ROUTER a server binds, the DEALER a client connects;
  every option (size limit, heartbeats, high-water marks, linger, CURVE) set here.
* `Security`, `ClientSecurity`, `Gatekeeper`: CURVE keys for a server and a client,
  and the ZAP handler that admits the allowed client keys (re-read on SIGHUP).
* `RouterServer`: the lifecycle a worker and a broker share (bind, serve, signals,
  drain, hang-up grace, close).
* `Outbox`: send now or queue in order, bounded in bytes per peer.
* `receive_batch`, `recv_message`, `send_message`, `has_input`: fast, non-blocking
  whole-message IO with plain integer flags and zero-copy for large buffers.
* `CallStats`, `serve_metrics`: calls counted cheaply, served to Prometheus
  (``--metrics HOST:PORT``) as families built at scrape time.
* `add_log_level`, `setup_logging`, `add_log_fields`: the commands' shared
  ``--log-level`` and ``--log-format`` (text or JSON lines with request fields).
* `NameTable`, `NameWatch`, `add_resolve_interval`: endpoints whose host name stands
  for many addresses (round-robin DNS, a headless service, /etc/hosts): every address
  joined, looked up again every ``--resolve-interval``, vanished ones drained.
"""

from ._frames import has_input, receive_batch, recv_message, send_message
from ._logs import LOG_FIELDS, JsonFormatter, add_log_fields, add_log_level, setup_logging
from ._metrics import (
    LATENCY_BUCKETS,
    OTHER_TARGET,
    CallStats,
    StatsCollector,
    add_metrics_option,
    counter,
    exposition,
    gauge,
    labelled,
    outcome_name,
    process_usage,
    quantile,
    serve_metrics,
)
from ._names import DEFAULT_RESOLVE_INTERVAL, NameTable, NameUpdate, lookup_target
from ._outbox import DEFAULT_PEER_OUTPUT, Outbox, add_max_peer_output
from ._resolver import Lookup, NameWatch, add_resolve_interval, lookup_ipv4
from ._security import (
    ALLOW_ANY,
    ENV_CURVE_ALLOW,
    ENV_CURVE_SECRET,
    ENV_CURVE_SERVER,
    SERVICES_METADATA,
    ClientSecurity,
    Gatekeeper,
    Grant,
    KeyFileError,
    Security,
    add_client_security,
    add_server_security,
    certificate_services,
    exposed_endpoints,
    load_allowed,
    load_keypair,
    load_public_key,
    write_certificates,
)
from ._server import EXIT_INTERNAL_ERROR, HANGUP_GRACE_S, RouterServer, freeze_startup_heap
from ._sockets import (
    SERVER_SNDHWM,
    BindError,
    Dialer,
    HandshakeWatch,
    bind_router,
    check_endpoint,
    check_exposure,
    new_context,
    secure_client,
)

__all__ = [
    # sockets
    "HANGUP_GRACE_S",
    "RouterServer",
    "EXIT_INTERNAL_ERROR",
    "freeze_startup_heap",
    "SERVER_SNDHWM",
    "BindError",
    "Dialer",
    "HandshakeWatch",
    "bind_router",
    "check_endpoint",
    "check_exposure",
    "new_context",
    "secure_client",
    # security (CURVE, ZAP)
    "ALLOW_ANY",
    "ENV_CURVE_ALLOW",
    "ENV_CURVE_SECRET",
    "ENV_CURVE_SERVER",
    "SERVICES_METADATA",
    "ClientSecurity",
    "Gatekeeper",
    "Grant",
    "KeyFileError",
    "Security",
    "add_client_security",
    "add_server_security",
    "certificate_services",
    "exposed_endpoints",
    "load_allowed",
    "load_keypair",
    "load_public_key",
    "write_certificates",
    # sending and receiving
    "DEFAULT_PEER_OUTPUT",
    "Outbox",
    "add_max_peer_output",
    "has_input",
    "receive_batch",
    "recv_message",
    "send_message",
    # metrics
    "LATENCY_BUCKETS",
    "OTHER_TARGET",
    "CallStats",
    "StatsCollector",
    "add_metrics_option",
    "counter",
    "exposition",
    "gauge",
    "labelled",
    "outcome_name",
    "process_usage",
    "quantile",
    "serve_metrics",
    # host names in endpoints
    "DEFAULT_RESOLVE_INTERVAL",
    "Lookup",
    "NameTable",
    "NameUpdate",
    "NameWatch",
    "add_resolve_interval",
    "lookup_ipv4",
    "lookup_target",
    # logging
    "LOG_FIELDS",
    "JsonFormatter",
    "add_log_fields",
    "add_log_level",
    "setup_logging",
]
