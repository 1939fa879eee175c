"""zeromesh wire protocol v1, sans-IO: messages as values, frames in and out, no sockets.

Worker, client and broker are shells around this package: they move frames, this
package gives them meaning. It never imports zmq or tornado (a test checks), so any
transport, or a test, can drive it. The wire format is specified in protocol/SPEC.md.
"""

import logging

from ._framing import (
    FLAG_BATCH,
    FLAG_META,
    HEADER_SIZE,
    PROTOCOL_VERSION,
    SIGNATURE,
    Header,
    answer_code,
    bundle,
    coalesce,
    decode,
    decode_header,
    encode,
    encode_reply,
    encode_request,
    header_type,
    is_traceparent,
    refusal,
    size_text,
    takes_meta,
    trace_id_of,
    with_ttl,
    without_meta,
)
from ._limits import BUNDLE_BYTES, DEFAULT_LIMITS, Limits
from ._messages import (
    Bundle,
    Cancel,
    Disconnect,
    Error,
    Hello,
    Message,
    MessageType,
    Ping,
    Pong,
    Progress,
    Ready,
    Reply,
    Request,
)
from ._names import (
    CONNECTING,
    DRAINING,
    GREETING,
    LEAVING,
    LIVENESS,
    NAME_PATTERN,
    OTHER_NAME,
    PROTOCOL_REVISION,
    READY,
    RESERVED_SERVICE,
    TARGET_ATTRIBUTE,
    TARGET_PATTERN,
    UNREACHABLE,
)
from ._values import MAX_INT, MIN_INT, Codec, parse_json
from .errors import (
    AuthenticationError,
    BadArguments,
    Cancelled,
    ErrorCode,
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
    error_name,
)

# A library leaves logging to the program: without a handler of its own, Python's
# last-resort handler would print our warnings on the embedding program's stderr.
logging.getLogger("zeromesh.protocol").addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    # messages
    "Bundle",
    "Cancel",
    "Disconnect",
    "Error",
    "Hello",
    "Message",
    "MessageType",
    "Ping",
    "Pong",
    "Progress",
    "Ready",
    "Reply",
    "Request",
    # framing
    "Codec",
    "BUNDLE_BYTES",
    "DEFAULT_LIMITS",
    "FLAG_BATCH",
    "FLAG_META",
    "HEADER_SIZE",
    "Header",
    "Limits",
    "MAX_INT",
    "MIN_INT",
    "PROTOCOL_REVISION",
    "PROTOCOL_VERSION",
    "SIGNATURE",
    "decode",
    "decode_header",
    "encode",
    "encode_reply",
    "encode_request",
    "answer_code",
    "bundle",
    "coalesce",
    "header_type",
    "is_traceparent",
    "trace_id_of",
    "parse_json",
    "refusal",
    "size_text",
    "with_ttl",
    "takes_meta",
    "without_meta",
    # names both ends agree on
    "LIVENESS",
    "NAME_PATTERN",
    "OTHER_NAME",
    "RESERVED_SERVICE",
    "TARGET_ATTRIBUTE",
    "TARGET_PATTERN",
    # session states
    "CONNECTING",
    "DRAINING",
    "GREETING",
    "LEAVING",
    "READY",
    "UNREACHABLE",
    # errors
    "AuthenticationError",
    "BadArguments",
    "Cancelled",
    "ErrorCode",
    "Forbidden",
    "NoWorkers",
    "Overloaded",
    "ProtocolError",
    "RemoteError",
    "StartupError",
    "Timeout",
    "UnknownHandler",
    "WorkerLost",
    "ZeromeshError",
    "error_name",
    "__version__",
]
