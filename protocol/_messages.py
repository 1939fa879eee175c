"""The message types of protocol v1, one frozen dataclass each.

Messages are plain values: build one, hand it to `encode`, send the frames. What a
field means on the wire, and which frame it travels in, is in protocol/SPEC.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, ClassVar

from ._names import PROTOCOL_REVISION
from ._values import Codec
from .errors import ErrorCode, ZeromeshError, error_from_wire, error_name

__all__ = [
    "Bundle",
    "Cancel",
    "Credit",
    "Disconnect",
    "End",
    "Error",
    "Hello",
    "Item",
    "Message",
    "MessageType",
    "Ping",
    "Pong",
    "Progress",
    "Ready",
    "Reply",
    "Request",
]


class MessageType(IntEnum):
    """The type byte of the header."""

    REQUEST = 1
    REPLY = 2
    ERROR = 3
    PING = 4
    PONG = 5
    HELLO = 6
    READY = 7
    PROGRESS = 8
    DISCONNECT = 9
    CANCEL = 10
    BUNDLE = 11
    ITEM = 12
    END = 13
    CREDIT = 14


@dataclass(frozen=True, slots=True)
class Request:
    """Call ``target`` ("service.handler") with ``args`` and ``kwargs``.

    ``ttl_ms`` is the time the sender will wait, relative (hosts' clocks differ);
    0 means no deadline. A receiver should not start a request whose time is up.
    With ``batch`` set, ``args`` is a list of positional-argument lists: the handler
    runs once per item (with the same ``kwargs``) and the reply is the list of results.
    ``trace`` is the caller's W3C ``traceparent`` ("" for none; revision 1.1): it
    travels in the body's third item, which only 1.1 peers are sent (SPEC 3).
    ``window`` > 0 makes it a stream request (revision 1.2, SPEC 7.11): the answer is
    a sequence of `Item` messages ended by `End` (or an `Error`), and ``window`` is the
    credit the worker starts with; sent only to a peer whose HELLO said ``streams``.
    """

    TYPE: ClassVar[MessageType] = MessageType.REQUEST
    id: int
    target: str
    args: list[Any] | tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    ttl_ms: int = 0
    codec: Codec = Codec.MSGPACK
    batch: bool = False
    trace: str = ""
    window: int = 0

    @property
    def service(self) -> str:
        """The service part of ``target`` (before the first dot)."""
        return self.target.partition(".")[0]


@dataclass(frozen=True, slots=True)
class Reply:
    """The result of request ``id`` (a list of results for a batch request)."""

    TYPE: ClassVar[MessageType] = MessageType.REPLY
    id: int
    result: Any = None
    codec: Codec = Codec.MSGPACK
    batch: bool = False


@dataclass(frozen=True, slots=True)
class Error:
    """Request ``id`` failed (id 0: a message whose id could not be read).

    ``code`` is an `ErrorCode`; ``type`` the remote exception's type name (for
    ``REMOTE``); ``detail`` optional extras, e.g. ``{"index": 3, "results": [...]}``
    for the item of a batch that failed and the results before it.
    """

    TYPE: ClassVar[MessageType] = MessageType.ERROR
    id: int
    code: int
    message: str
    type: str = ""
    traceback: str = ""
    detail: dict[str, Any] | None = None
    codec: Codec = Codec.MSGPACK

    def __post_init__(self) -> None:
        # Every ERROR names a type (SPEC 7.1): when none is given, the exception the
        # code stands for. Receivers still dispatch on the code.
        if not self.type and type(self.code) in (int, ErrorCode):
            object.__setattr__(self, "type", error_name(self.code))

    @classmethod
    def from_exception(
        cls,
        id: int,
        exc: BaseException,
        codec: Codec = Codec.MSGPACK,
        traceback: str = "",
        detail: dict[str, Any] | None = None,
    ) -> Error:
        """Describe ``exc``: zeromesh errors keep their code, anything else is REMOTE."""
        if isinstance(exc, ZeromeshError):
            code: int = exc.code
            name = type(exc).__name__
        else:
            code = ErrorCode.REMOTE
            name = _qualified_name(type(exc))
        return cls(id, code, str(exc), name, traceback, detail, codec)

    def to_exception(self) -> ZeromeshError:
        """The exception the receiver should raise for this error."""
        return error_from_wire(self.code, self.type, self.message, self.traceback)


def _qualified_name(cls: type) -> str:
    module = cls.__module__
    if module in ("builtins", "__main__"):
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


@dataclass(frozen=True, slots=True)
class Ping:
    """Are you alive? Answered with a `Pong` of the same id by the socket loop itself."""

    TYPE: ClassVar[MessageType] = MessageType.PING
    id: int = 0
    codec: Codec = Codec.MSGPACK


@dataclass(frozen=True, slots=True)
class Pong:
    """Answer to `Ping` ``id``."""

    TYPE: ClassVar[MessageType] = MessageType.PONG
    id: int = 0
    codec: Codec = Codec.MSGPACK


@dataclass(frozen=True, slots=True)
class Hello:
    """A peer says who it is. Sent first on every connection, and answered in kind.

    A client sends ``role="client"``; a worker answers with its services, capacity
    (how many requests it runs at once) and facts for operators; a broker answers
    ``role="broker"``. ``zeromesh ping`` shows a worker's Hello.
    """

    TYPE: ClassVar[MessageType] = MessageType.HELLO
    id: int = 0
    role: str = "client"
    name: str = ""
    version: str = ""
    host: str = ""
    pid: int = 0
    services: dict[str, list[str]] = field(default_factory=dict)
    capacity: int = 0
    in_flight: int = 0
    uptime: float = 0.0
    heartbeat_ms: int = 0
    codec: Codec = Codec.MSGPACK
    protocol: str = PROTOCOL_REVISION
    """The sender's protocol revision ("1.0" when a received HELLO has none)."""
    threads: int = 0
    """Plain (``def``) requests the sender runs at once; 0: not said (a 1.0 peer: use
    ``capacity``)."""
    async_slots: int = 0
    """``async def`` requests the sender runs at once, beside ``threads``."""
    async_handlers: dict[str, list[str]] = field(default_factory=dict)
    """The handlers of ``services`` that are ``async def`` (and take ``async_slots``)."""
    stats: dict[str, Any] = field(default_factory=dict)
    """A worker's running totals for monitors (``zeromesh top``, SPEC 7.2): requests
    answered and failed, a latency histogram, memory and CPU. {} from a client."""
    bundle: bool = False
    """The sender takes `Bundle` messages on this connection (revision 1.2)."""
    streams: bool = False
    """The sender takes stream requests and `Credit` on this connection (revision 1.2,
    SPEC 7.11); a peer that did not say so is never sent them."""


@dataclass(frozen=True, slots=True)
class Ready:
    """A worker has ``credit`` more free slots (it may take that many more requests)."""

    TYPE: ClassVar[MessageType] = MessageType.READY
    id: int = 0
    credit: int = 1
    codec: Codec = Codec.MSGPACK


@dataclass(frozen=True, slots=True)
class Progress:
    """A running request's partial status: ``done`` of ``total`` (None: unknown)."""

    TYPE: ClassVar[MessageType] = MessageType.PROGRESS
    id: int
    done: float = 0
    total: float | None = None
    note: str = ""
    codec: Codec = Codec.MSGPACK


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The sender is going away (draining): send it no new requests.

    Replies to requests it already holds still follow.
    """

    TYPE: ClassVar[MessageType] = MessageType.DISCONNECT
    id: int = 0
    reason: str = ""
    codec: Codec = Codec.MSGPACK


@dataclass(frozen=True, slots=True)
class Cancel:
    """The client abandons request ``id``: drop it if queued, flag it if running."""

    TYPE: ClassVar[MessageType] = MessageType.CANCEL
    id: int
    codec: Codec = Codec.MSGPACK


@dataclass(frozen=True, slots=True)
class Bundle:
    """Several whole messages sent as one (revision 1.2, SPEC 7.10).

    Each of ``messages`` is the ``(header, body)`` frames of a message without
    out-of-band frames. The receiver handles them in order, exactly as if each had
    arrived alone on this connection: a bundle only saves the per-message cost of
    ZeroMQ and of the receive loop when many small messages are ready at once. Sent
    only to a peer whose HELLO said ``bundle``; id 0, MessagePack.

    ``clients``: a routed BUNDLE (the routed flag), between a broker and a worker in
    their link's own envelope: one client id per message, the frame that would have
    come before it had it travelled alone (SPEC 12.2).
    """

    TYPE: ClassVar[MessageType] = MessageType.BUNDLE
    messages: tuple[tuple[bytes, bytes], ...]
    id: int = 0
    codec: Codec = Codec.MSGPACK
    clients: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Item:
    """One item of stream request ``id`` (revision 1.2, SPEC 7.11): a value exactly as
    a `Reply` carries one (numpy arrays as out-of-band frames). The worker sends one
    only while it holds credit for that stream.

    ``batch``: ``value`` is a list of several items in order (the batch flag), those
    the stream had ready at the same moment; each counts as one item of credit."""

    TYPE: ClassVar[MessageType] = MessageType.ITEM
    id: int
    value: Any = None
    codec: Codec = Codec.MSGPACK
    batch: bool = False


@dataclass(frozen=True, slots=True)
class End:
    """Stream request ``id`` ended normally after ``items`` items (SPEC 7.11): its
    final answer, as a `Reply` is a plain request's."""

    TYPE: ClassVar[MessageType] = MessageType.END
    id: int
    items: int = 0
    codec: Codec = Codec.MSGPACK


@dataclass(frozen=True, slots=True)
class Credit:
    """The client lets the worker send ``credit`` more items of stream ``id`` (SPEC
    7.11): what it has read since its last grant, so at most its window is ever ahead."""

    TYPE: ClassVar[MessageType] = MessageType.CREDIT
    id: int
    credit: int = 1
    codec: Codec = Codec.MSGPACK


Message = (
    Request
    | Reply
    | Error
    | Ping
    | Pong
    | Hello
    | Ready
    | Progress
    | Disconnect
    | Cancel
    | Bundle
    | Item
    | End
    | Credit
)
