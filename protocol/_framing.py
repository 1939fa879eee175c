"""Messages to frames and back: the header, the body, the out-of-band frames.

A message is ``[header, body, *out_of_band]`` after the routing envelope. The header
is a fixed 20-byte struct plus, for requests, the target name; it is enough to route
a message without decoding its body (the broker relies on that).
"""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from ._limits import BUNDLE_BYTES, DEFAULT_LIMITS, Limits
from ._messages import (
    Bundle,
    Cancel,
    Credit,
    Disconnect,
    End,
    Error,
    Hello,
    Item,
    Message,
    MessageType,
    Ping,
    Pong,
    Progress,
    Ready,
    Reply,
    Request,
)
from ._values import (
    Buffer,
    Codec,
    decode_value,
    encode_value,
    encode_value_into,
    travels_as_int,
    travels_as_number,
)
from .errors import ErrorCode, ProtocolError

__all__ = [
    "FLAG_BATCH",
    "FLAG_META",
    "FLAG_ROUTED",
    "FLAG_STREAM",
    "HEADER_SIZE",
    "PROTOCOL_VERSION",
    "SIGNATURE",
    "Header",
    "answer_code",
    "bundle",
    "coalesce",
    "coalesce_routed",
    "check_route",
    "encode_item",
    "encode_items",
    "EncodedItem",
    "encode_reply",
    "encode_request",
    "header_type",
    "item_body",
    "is_traceparent",
    "trace_id_of",
    "refusal",
    "size_text",
    "with_ttl",
    "takes_meta",
    "without_meta",
]

SIGNATURE = b"ZM"
PROTOCOL_VERSION = 1
FLAG_BATCH = 0x01
FLAG_META = 0x02
"""REQUEST only (revision 1.1): the body is ``[args, kwargs, meta]``; ``meta`` carries
``traceparent``. Sent only to a peer that announced 1.1 (SPEC section 3)."""
FLAG_STREAM = 0x04
"""REQUEST only (revision 1.2): a stream request. Its answer is ITEMs ended by END or
ERROR, paced by the client's credit; its meta map carries ``window``, the credit the
worker starts with (SPEC 7.11). Sent only to a peer whose HELLO said ``streams``."""
FLAG_ROUTED = 0x08
"""BUNDLE only (revision 1.2): a routed BUNDLE, between a broker and a worker in the
link's own envelope; each message in it comes with the client id it is for or from
(SPEC 7.10). Sent only to a link peer whose HELLO said ``bundle``."""
_KNOWN_FLAGS = FLAG_BATCH | FLAG_META | FLAG_STREAM | FLAG_ROUTED
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z")
_MAX_TARGET_BYTES = 255
_MAX_ROUTING_ID = 255  # bytes: ZeroMQ's limit on a routing id (SPEC 12.2)

# signature, version, type, codec, flags, request id, ttl ms, target length
_HEADER = struct.Struct("!2sBBBBQIH")
HEADER_SIZE = _HEADER.size  # 20
_MAX_ID = 2**64 - 1
_MAX_TTL = 2**32 - 1

# Header bytes to enum members; None where the byte names nothing (a 256-entry table
# is a cheaper lookup than a dict on every message).
_TYPE_OF: tuple[MessageType | None, ...] = tuple(
    MessageType(b) if b in MessageType._value2member_map_ else None for b in range(256)
)
_CODEC_OF: tuple[Codec | None, ...] = tuple(
    Codec(b) if b in Codec._value2member_map_ else None for b in range(256)
)
_EMPTY = b""
# Module globals are cheaper to read than enum members, on every message.
_MSGPACK = Codec.MSGPACK
_JSON = Codec.JSON
_REQUEST = MessageType.REQUEST
_REPLY = MessageType.REPLY
_ITEM = MessageType.ITEM
_BUNDLE = MessageType.BUNDLE
_EMPTY_BODY = (MessageType.PING, MessageType.PONG, MessageType.CANCEL)
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from
_BUNDLE_HEADER = _pack_header(SIGNATURE, PROTOCOL_VERSION, _BUNDLE, _MSGPACK, 0, 0, 0, 0)
_ROUTED_BUNDLE_HEADER = _pack_header(
    SIGNATURE, PROTOCOL_VERSION, _BUNDLE, _MSGPACK, FLAG_ROUTED, 0, 0, 0
)
_BUNDLE_TYPE_BYTE = _BUNDLE_HEADER[3:4]  # (a message is a BUNDLE if its header has it)
_BATCH_FLAG_BYTE = bytes((FLAG_BATCH,))
_BATCHED = (_REPLY, _ITEM)  # answers that may carry the batch flag


@dataclass(frozen=True, slots=True)
class Header:
    """The decoded header frame: everything needed to route a message."""

    type: MessageType
    codec: Codec
    flags: int
    id: int
    ttl_ms: int
    target: str


def encode(msg: Message, limits: Limits = DEFAULT_LIMITS) -> list[Buffer]:
    """Turn a message into frames ``[header, body, *out_of_band]``.

    Out-of-band frames are the numpy arrays' own buffers: send them with
    ``copy=False`` and do not modify those arrays until the send completes.

    Refuses whatever `decode` would refuse, so a message that encodes also decodes; in
    particular a message over ``limits`` is refused here, before anything is sent,
    rather than cutting the connection at the receiver.

    Raises:
        ProtocolError: a field is out of range or of the wrong type, a value cannot
            be encoded, or the message is over a size limit (code ``LIMIT_EXCEEDED``).
    """
    cls = type(msg)
    codec = msg.codec
    if codec is not _MSGPACK and codec is not _JSON:
        codec = _codec(codec)
    # `type(msg) is X` (not `cls is X`): the same identity test, and the type checker
    # narrows msg on it.
    if type(msg) is Request:
        return encode_request(
            msg.id,
            msg.target,
            msg.args,
            msg.kwargs,
            msg.ttl_ms,
            codec,
            msg.batch,
            msg.trace,
            limits,
            msg.window,
        )
    if type(msg) is Reply:
        return encode_reply(msg.id, msg.result, codec, msg.batch, limits)
    if type(msg) is Item:
        return encode_item(msg.id, msg.value, codec, limits, msg.batch)
    if type(msg) is Bundle:
        if codec is not _MSGPACK or msg.id:
            raise ProtocolError("a BUNDLE has id 0 and is MessagePack (SPEC 7.10)")
        return bundle(msg.messages, msg.clients)
    # The rest: no target, no ttl, no flags; an empty body or a map.
    oob: list[Buffer] = []
    if cls is Ping or cls is Pong or cls is Cancel:
        body = _EMPTY
    else:
        body, oob = encode_value(_BODY_ENCODERS[cls](msg), codec)
    return _frames(cls, codec, 0, msg.id, body, oob, limits)


def encode_request(
    rid: int,
    target: str,
    args: list[Any] | tuple[Any, ...],
    kwargs: dict[str, Any],
    ttl_ms: int = 0,
    codec: Codec = _MSGPACK,
    batch: bool = False,
    trace: str = "",
    limits: Limits = DEFAULT_LIMITS,
    window: int = 0,
) -> list[Buffer]:
    """``encode(Request(rid, target, ...))`` without building the `Request`: the
    client's hot path (a frozen dataclass costs more to make than the header to pack).
    Refuses what `encode` refuses, in the same words.

    ``window`` > 0: a stream request with that initial credit (SPEC 7.11).
    """
    if codec is not _MSGPACK and codec is not _JSON:
        codec = _codec(codec)
    if batch or type(kwargs) is not dict or (type(args) is not list and type(args) is not tuple):
        _check_request(args, kwargs, batch)
    elif kwargs:
        for key in kwargs:
            if type(key) is not str:
                _check_request(args, kwargs, batch)  # a str subclass is fine; else raises
                break
    if window:
        if batch or type(window) is not int or window < 1:
            raise ProtocolError(
                f"a stream request's window must be an integer >= 1 (and no batch), not {window!r}"
            )
        meta: dict[str, Any] = (
            {"traceparent": trace, "window": window} if trace else {"window": window}
        )
        body, oob = encode_value([args, kwargs, meta], codec)
        flags = FLAG_META | FLAG_STREAM
    elif trace:
        body, oob = encode_value([args, kwargs, {"traceparent": trace}], codec)
        flags = FLAG_META | FLAG_BATCH if batch else FLAG_META
    else:
        body, oob = encode_value([args, kwargs], codec)
        flags = FLAG_BATCH if batch else 0
    raw = _TARGETS.get(target) if type(target) is str else None
    if raw is None:
        raw = _target_bytes(target)
        if len(_TARGETS) < _MAX_CACHED_TARGETS:
            _TARGETS[target] = raw
    header = _header(_REQUEST, codec, flags, rid, ttl_ms, len(raw))
    if len(body) > limits.max_body_bytes or oob:
        _check_size(Request, body, oob, limits)
    return [header + raw, body, *oob]


def encode_item(
    rid: int,
    value: Any,
    codec: Codec = _MSGPACK,
    limits: Limits = DEFAULT_LIMITS,
    batch: bool = False,
) -> list[Buffer]:
    """``encode(Item(rid, value, codec, batch))`` without building the `Item`: a
    streaming worker's hot path. Refuses what `encode` refuses (a value as a REPLY's
    result; with ``batch``, a list of at least one)."""
    if codec is not _MSGPACK and codec is not _JSON:
        codec = _codec(codec)
    if batch and (not isinstance(value, list | tuple) or not value):
        raise ProtocolError("a batched ITEM carries a list of at least one item")
    body, oob = encode_value(value, codec)
    return _frames(Item, codec, FLAG_BATCH if batch else 0, rid, body, oob, limits)


def encode_reply(
    rid: int,
    result: Any,
    codec: Codec = _MSGPACK,
    batch: bool = False,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Buffer]:
    """``encode(Reply(rid, result, codec, batch))`` without building the `Reply`: the
    worker's hot path. Refuses what `encode` refuses, in the same words."""
    if codec is not _MSGPACK and codec is not _JSON:
        codec = _codec(codec)
    flags = 0
    if batch:
        flags = FLAG_BATCH
        if not isinstance(result, list | tuple):
            raise ProtocolError(
                f"batch reply result must be a list of results, not {type(result).__name__}"
            )
    body, oob = encode_value(result, codec)
    return _frames(Reply, codec, flags, rid, body, oob, limits)


def _frames(
    cls: type, codec: Codec, flags: int, rid: int, body: bytes, oob: list[Buffer], limits: Limits
) -> list[Buffer]:
    """The frames of an answer or a control message (no target, no ttl) of type
    ``cls``: its header, ``body`` and ``oob``, refused as the receiver would refuse
    them for their size (SPEC section 8)."""
    header = _header(cls.TYPE, codec, flags, rid, 0, 0)  # type: ignore[attr-defined]
    if len(body) > limits.max_body_bytes or oob:
        _check_size(cls, body, oob, limits)
    return [header, body, *oob]


def _header(mtype: MessageType, codec: Codec, flags: int, rid: int, ttl: int, tlen: int) -> bytes:
    """The 20 fixed bytes of a header (SPEC 2), the id and ttl checked for range."""
    try:
        if not 0 <= rid <= _MAX_ID:
            raise ProtocolError(f"request id {rid} out of range 0..2**64-1")
        if not 0 <= ttl <= _MAX_TTL:
            raise ProtocolError(f"ttl_ms {ttl} out of range 0..{_MAX_TTL}")
        return _pack_header(SIGNATURE, PROTOCOL_VERSION, mtype, codec, flags, rid, ttl, tlen)
    except (struct.error, TypeError) as exc:
        raise ProtocolError(f"request id and ttl_ms must be integers: {exc}") from exc


_TARGETS: dict[str, bytes] = {}
"""Target names already checked, as UTF-8 (a client calls few names, many times)."""
_MAX_CACHED_TARGETS = 4096


def _check_size(cls: type, body: bytes, oob: list[Buffer], limits: Limits) -> None:
    """Refuse to encode a message the receiver would refuse for its size (SPEC section 8)."""
    what = _WHAT.get(cls, "message")
    size = len(body)
    if size > limits.max_body_bytes:
        raise ProtocolError(
            f"{what} body of {size_text(size)} is over the {size_text(limits.max_body_bytes)} "
            "body limit (Limits.max_body_bytes); send large strings and lists as numpy "
            "arrays (they travel outside the body), or send less per call",
            ErrorCode.LIMIT_EXCEEDED,
        )
    if 2 + len(oob) > limits.max_frames:
        raise ProtocolError(
            f"{what} carries {len(oob)} arrays; at most {limits.max_frames - 2} travel in "
            "one message (Limits.max_frames): combine them, or send fewer per call",
            ErrorCode.LIMIT_EXCEEDED,
        )
    total = size + sum(memoryview(frame).nbytes for frame in oob)
    if total > limits.max_message_bytes:
        raise ProtocolError(
            f"{what} of {size_text(total)} is over the {size_text(limits.max_message_bytes)} "
            "message limit (Limits.max_message_bytes); send it in parts, or raise the "
            "limit on both sides",
            ErrorCode.LIMIT_EXCEEDED,
        )


_WHAT: dict[type, str] = {
    Request: "request",
    Reply: "result",
    Error: "error",
    Progress: "progress",
    Item: "stream item",
}


def bundle(messages: Sequence[Sequence[Buffer]], clients: Sequence[bytes] = ()) -> list[Buffer]:
    """The frames of one BUNDLE carrying ``messages``, each the ``[header, body]``
    frames of an encoded message without out-of-band frames (SPEC 7.10). With
    ``clients`` (one per message), a routed BUNDLE: what a broker and a worker send
    each other in their link's own envelope, each message with its client's id.

    Raises:
        ProtocolError: no messages, one with out-of-band frames or itself a BUNDLE, a
            client id that is empty or over 255 bytes, or a body over `BUNDLE_BYTES`
            (code ``LIMIT_EXCEEDED``; send fewer in it).
    """
    if not messages:
        raise ProtocolError("a BUNDLE holds at least one message")
    if clients and len(clients) != len(messages):
        raise ProtocolError("a routed BUNDLE has one client id per message")
    flat: list[bytes] = []
    for i, frames in enumerate(messages):
        if len(frames) != 2:
            raise ProtocolError(
                f"a bundled message has exactly a header and a body, not {len(frames)} frames "
                "(send messages with out-of-band frames on their own)"
            )
        header, body = frames
        if type(header) is not bytes:
            header = bytes(_byte_view(header))
        if header[3:4] == _BUNDLE_TYPE_BYTE and header[:3] == _BUNDLE_HEADER[:3]:
            raise ProtocolError("a BUNDLE cannot hold another BUNDLE")
        if clients:
            client = clients[i]
            if not 0 < len(client) <= _MAX_ROUTING_ID:
                raise ProtocolError("a routed BUNDLE's client ids are 1 to 255 bytes")
            flat.append(client)
        flat.append(header)
        flat.append(body if type(body) is bytes else bytes(_byte_view(body)))
    body, _ = encode_value(flat, _MSGPACK)
    if len(body) > BUNDLE_BYTES:
        raise ProtocolError(
            f"bundle body of {size_text(len(body))} is over {size_text(BUNDLE_BYTES)}, "
            "the most a BUNDLE may carry (SPEC 7.10): send fewer messages in it",
            ErrorCode.LIMIT_EXCEEDED,
        )
    return [_ROUTED_BUNDLE_HEADER if clients else _BUNDLE_HEADER, body]


def coalesce(messages: Sequence[list[Buffer]]) -> list[tuple[list[Buffer], int]]:
    """``messages`` (each its encoded frames), in order, with each run of small ones
    joined into one BUNDLE: what a sender whose peer takes bundles sends instead.

    Small: a header and a body only (no out-of-band frames); a BUNDLE's body stays
    within `BUNDLE_BYTES`, which every receiver takes whatever its own limits (SPEC
    7.10); a larger message goes alone. Returns ``(frames, count)`` pairs: the frames
    of one message to send and how many of ``messages`` it carries.
    """
    out: list[tuple[list[Buffer], int]] = []
    for run in _runs(messages, _bundled_size):
        out.append((run[0] if len(run) == 1 else bundle(run), len(run)))
    return out


def check_route(msg: Bundle, link: bool) -> None:
    """Refuse a BUNDLE routed where it must not be (SPEC 7.10): a routed one anywhere
    but over a broker-worker link (``link``), a plain one over such a link.

    Raises:
        ProtocolError: the BUNDLE is on the wrong kind of connection (never answered:
            count and log it, as any BUNDLE that does not decode).
    """
    if msg.clients and not link:
        raise ProtocolError(
            "a routed BUNDLE (flag 0x08) from a peer that is not a broker or a worker on "
            "its link: routed BUNDLEs travel only between those two (SPEC 7.10)"
        )
    if link and not msg.clients:
        raise ProtocolError(
            "a BUNDLE without the routed flag on a broker-worker link, where every "
            "message needs its client id: send a routed BUNDLE (SPEC 7.10)"
        )


def coalesce_routed(
    messages: Sequence[tuple[bytes, list[Buffer]]],
) -> list[tuple[bytes, list[Buffer]]]:
    """`coalesce` for a broker-worker link: ``messages`` are ``(client, frames)`` pairs;
    each run of small ones becomes one routed BUNDLE. Returns ``(envelope, frames)``
    pairs to send as ``[envelope, *frames]``: a lone message keeps its client as its
    envelope, a routed BUNDLE goes in the link's own (empty) one (SPEC 7.10)."""
    out: list[tuple[bytes, list[Buffer]]] = []
    for run in _runs(messages, _routed_size):
        if len(run) == 1:
            out.append(run[0])
        else:
            clients = [client for client, _ in run]
            out.append((_EMPTY, bundle([frames for _, frames in run], clients)))
    return out


_T = TypeVar("_T")
_BIN_HEADER = 5
"""The most bytes a MessagePack bin header takes (bin 32); a BUNDLE's array header too."""


def _bundled_size(frames: list[Buffer]) -> int | None:
    """What ``frames`` add to a BUNDLE's body; None if they cannot go in one."""
    if len(frames) != 2:
        return None
    return len(frames[0]) + len(frames[1]) + 2 * _BIN_HEADER


def _routed_size(message: tuple[bytes, list[Buffer]]) -> int | None:
    client, frames = message
    n = _bundled_size(frames)
    return None if n is None else n + len(client) + _BIN_HEADER


def _runs(messages: Sequence[_T], size_of: Callable[[_T], int | None]) -> Iterator[list[_T]]:
    """``messages`` in order, in runs whose BUNDLE body stays within `BUNDLE_BYTES`
    (counting MessagePack's headers at their largest); one that cannot go in a BUNDLE
    or would not fit one alone is a run of its own."""
    run: list[_T] = []
    size = _BIN_HEADER
    for msg in messages:
        n = size_of(msg)
        if run and (n is None or size + n > BUNDLE_BYTES):
            yield run
            run, size = [], _BIN_HEADER
        if n is None or _BIN_HEADER + n > BUNDLE_BYTES:
            yield [msg]
            continue
        run.append(msg)
        size += n
    if run:
        yield run


EncodedItem = bytes | tuple[bytes, list[Buffer]]
"""A stream item as `item_body` encodes it: its body, or its body and out-of-band
frames when it has some."""


def item_body(
    value: Any,
    codec: Codec = _MSGPACK,
    limits: Limits = DEFAULT_LIMITS,
    scratch: list[Buffer] | None = None,
) -> EncodedItem:
    """One stream item encoded, for `encode_items`. Refuses what `encode_item`
    refuses, in the same words. ``scratch``: an empty list to encode with, reused from
    item to item (it is left empty), so a plain item allocates nothing the garbage
    collector tracks (at millions of items, its passes would cost a quarter of the
    time)."""
    oob: list[Buffer] = [] if scratch is None else scratch
    try:
        body = encode_value_into(value, codec, oob)
        if not oob:
            if len(body) > limits.max_body_bytes:
                _check_size(Item, body, oob, limits)
            return body
        frames = list(oob)
    finally:
        oob.clear()
    _check_size(Item, body, frames, limits)
    return body, frames


def encode_items(
    rid: int, items: Sequence[EncodedItem], codec: Codec = _MSGPACK
) -> list[list[Buffer]]:
    """The ITEMs of stream ``rid`` carrying ``items`` (`item_body`'s), in order: what
    a worker sends for the items a stream had ready at the same moment, as few
    messages as can carry them (SPEC 7.11), so an item costs a value in a list rather
    than a message to send, receive and decode.

    Items without out-of-band frames are joined into batched ITEMs of up to
    `BUNDLE_BYTES` of bodies, as encoded (the batch's array does not count toward
    ``max_depth``); one with out-of-band frames goes alone, as does a lone item.
    """
    if not items:
        return []
    header = _header(_ITEM, codec, 0, rid, 0, 0)
    plain = [item for item in items if type(item) is bytes]
    if len(plain) == len(items) and sum(map(len, plain)) <= BUNDLE_BYTES:
        return [_joined(header, plain, codec)]  # (the common case)
    out: list[list[Buffer]] = []
    bodies: list[bytes] = []
    size = 0
    for item in items:
        body: bytes
        oob: list[Buffer]
        if isinstance(item, bytes):
            body, oob = item, []
        else:
            body, oob = item
        if oob or size + len(body) > BUNDLE_BYTES:
            if bodies:
                out.append(_joined(header, bodies, codec))
                bodies, size = [], 0
            if oob:
                out.append([header, body, *oob])
                continue
        bodies.append(body)
        size += len(body)
    if bodies:
        out.append(_joined(header, bodies, codec))
    return out


def _joined(header: bytes, bodies: list[bytes], codec: Codec) -> list[Buffer]:
    """One ITEM of the encoded ``bodies``: batched, unless there is one."""
    n = len(bodies)
    if n == 1:
        return [header, bodies[0]]
    if codec is _JSON:
        body = b"[" + b",".join(bodies) + b"]"
    else:
        if n < 16:
            prefix = bytes((0x90 | n,))  # fixarray
        elif n < 65536:
            prefix = b"\xdc" + n.to_bytes(2)  # array 16
        else:
            prefix = b"\xdd" + n.to_bytes(4)  # array 32
        body = prefix + b"".join(bodies)
    return [header[:5] + _BATCH_FLAG_BYTE + header[6:], body]


@functools.lru_cache(maxsize=8)
def _bundle_limits(limits: Limits) -> Limits:
    """``limits`` for a BUNDLE's own body: exactly `BUNDLE_BYTES`, whatever the
    receiver's ``max_body_bytes``, and room for the array and bin items that many
    bytes hold. A sender cannot know its peer's limits; the messages inside are each
    checked against the receiver's own when handled, as if each had come alone."""
    return replace(
        limits,
        max_body_bytes=BUNDLE_BYTES,
        max_array_len=max(limits.max_array_len, BUNDLE_BYTES),
        max_bin_len=max(limits.max_bin_len, BUNDLE_BYTES),
    )


@functools.lru_cache(maxsize=8)
def _one_level_more(limits: Limits) -> Limits:
    """``limits`` with one more level of nesting: a batched ITEM's own array."""
    return replace(limits, max_depth=limits.max_depth + 1)


def _decode_bundle(value: Any, routed: bool) -> Bundle:
    step = 3 if routed else 2
    if type(value) is not list or not value or len(value) % step:
        raise ProtocolError(
            "routed BUNDLE body must be an array of client, header, body, client ..."
            if routed
            else "BUNDLE body must be an array of header, body, header, body ..."
        )
    for frame in value:
        if type(frame) is not bytes:
            raise ProtocolError("BUNDLE body items must be binary (MessagePack bin)")
    headers = value[step - 2 :: step]
    for header in headers:
        if header[3:4] == _BUNDLE_TYPE_BYTE and header[:3] == _BUNDLE_HEADER[:3]:
            raise ProtocolError("a BUNDLE cannot hold another BUNDLE")
    pairs = tuple(zip(headers, value[step - 1 :: step], strict=True))
    if not routed:
        return Bundle(pairs)
    clients = tuple(value[0::3])
    for client in clients:
        if not 0 < len(client) <= _MAX_ROUTING_ID:
            raise ProtocolError("a routed BUNDLE's client ids are 1 to 255 bytes")
    return Bundle(pairs, clients=clients)


def size_text(n: int) -> str:
    """``n`` bytes for people: "900 MiB", "1.5 GiB", "312 bytes"."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def _codec(codec: Any) -> Codec:
    try:
        return Codec(codec)
    except ValueError:
        raise ProtocolError(f"unknown codec {codec!r}") from None


_SEQUENCE_TYPES = frozenset((list, tuple))


def _check_request(args: Any, kwargs: Any, batch: bool) -> None:
    """Refuse a request body `decode` would refuse (SPEC section 3)."""
    if not isinstance(args, list | tuple):
        raise ProtocolError(f"request args must be a list or tuple, not {type(args).__name__}")
    if not isinstance(kwargs, dict):
        raise ProtocolError(f"request kwargs must be a dict, not {type(kwargs).__name__}")
    for key in kwargs:
        if not isinstance(key, str):
            raise ProtocolError(f"request kwargs keys must be strings, not {key!r}")
    # The common case in C (a map chunk holds a thousand items); the loop finds the
    # culprit, and lets list and tuple subclasses (namedtuples) through.
    if batch and not set(map(type, args)) <= _SEQUENCE_TYPES:
        for i, item in enumerate(args):
            if not isinstance(item, list | tuple):
                raise ProtocolError(
                    "batch request args must be a list of argument lists (lists or "
                    f"tuples); item {i} is {type(item).__name__}"
                )


def _target_bytes(target: Any) -> bytes:
    raw: bytes
    try:
        raw = target.encode()
    except (AttributeError, UnicodeEncodeError):
        raw = _EMPTY
    if not raw or len(raw) > _MAX_TARGET_BYTES:
        raise ProtocolError(f"target {target!r} must be 1 to {_MAX_TARGET_BYTES} bytes of UTF-8")
    return raw


def decode_header(frame: Buffer, limits: Limits = DEFAULT_LIMITS) -> Header:
    """Decode the header frame alone (cheap; the broker routes on it).

    Raises:
        ProtocolError: bad signature, unknown version, type, codec or flags, bad length.
    """
    mt, cd, flags, rid, ttl, target = _read_header(frame, limits)
    s_type, s_codec, s_flags, s_id, s_ttl, s_target = _set_header
    header = _new(Header)
    s_type(header, mt)
    s_codec(header, cd)
    s_flags(header, flags)
    s_id(header, rid)
    s_ttl(header, ttl)
    s_target(header, target)
    return header


def _read_header(frame: Buffer, limits: Limits) -> tuple[MessageType, Codec, int, int, int, str]:
    """The header's fields: (type, codec, flags, id, ttl_ms, target)."""
    if type(frame) is bytes:
        size = len(frame)
    else:
        frame = _byte_view(frame)
        size = frame.nbytes
    if size < HEADER_SIZE or size > limits.max_header_bytes:
        # Signature and version first: a later version's header may be longer.
        _check_signature_and_version(frame, size)
        raise _with_id(
            ProtocolError(
                f"header frame of {size} bytes; a zeromesh header is {HEADER_SIZE} to "
                f"{limits.max_header_bytes} bytes (is the peer speaking zeromesh?)"
            ),
            *_id_and_codec(frame, size),
        )
    sig, version, mtype, codec, flags, rid, ttl, tlen = _unpack_header(frame)
    if sig != SIGNATURE or version != PROTOCOL_VERSION:
        _check_signature_and_version(frame, size)
    mt = _TYPE_OF[mtype]
    cd = _CODEC_OF[codec]
    if mt is None or cd is None or flags & ~_KNOWN_FLAGS:
        raise _with_id(
            ProtocolError(f"unknown message type {mtype}, codec {codec} or flags {flags:#x}"),
            rid,
            _MSGPACK if cd is None else cd,
        )
    if flags and (
        (flags & ~FLAG_ROUTED)
        if mt is _BUNDLE
        else (
            flags & FLAG_ROUTED
            or (mt is not _REQUEST and (mt not in _BATCHED or flags & ~FLAG_BATCH))
        )
    ):
        raise _with_id(
            ProtocolError(
                f"flags {flags:#x} on a {mt.name}: batch (0x01) belongs to REQUEST, REPLY "
                "and ITEM, meta (0x02) and stream (0x04) to REQUEST only, routed (0x08) "
                "to BUNDLE only"
            ),
            rid,
            cd,
        )
    if HEADER_SIZE + tlen != size:
        raise _with_id(ProtocolError("header length does not match its target length"), rid, cd)
    target = ""
    if tlen:
        try:
            target = str(frame[HEADER_SIZE:], "utf-8")
        except UnicodeDecodeError as exc:
            raise _with_id(ProtocolError("target name is not UTF-8"), rid, cd) from exc
    return mt, cd, flags, rid, ttl, target


def _id_and_codec(frame: Buffer, size: int) -> tuple[int, Codec]:
    """What an ERROR about a header that failed a check carries (SPEC section 6): the id
    at offset 6 if the frame holds it (bytes 6-13), and the codec at offset 4 if the
    frame holds a known one; else 0 and MSGPACK. Signature and version were checked."""
    rid = int.from_bytes(frame[6:14], "big") if size >= 14 else 0
    codec = _CODEC_OF[frame[4]] if size >= 5 else None
    return rid, _MSGPACK if codec is None else codec


def _check_signature_and_version(frame: Buffer, size: int) -> None:
    """Refuse a header whose first 3 bytes are not ``ZM`` and version 1, whatever its
    size: they keep their place in every version (SPEC section 9)."""
    if size >= 2 and bytes(frame[:2]) != SIGNATURE:
        raise ProtocolError(f"header does not start with {SIGNATURE!r}: not a zeromesh peer")
    if size >= 3 and frame[2] != PROTOCOL_VERSION:
        raise _with_id(
            ProtocolError(
                f"protocol version {frame[2]} is not supported (this peer speaks "
                f"version {PROTOCOL_VERSION}); upgrade the older side",
                ErrorCode.UNSUPPORTED_VERSION,
            ),
            int.from_bytes(frame[6:14], "big") if size >= 14 else 0,
        )


_TTL = struct.Struct("!I")
_TTL_OFFSET = 14  # of ttl_ms in the header (the struct above: 2s B B B B Q, then I)


def with_ttl(header: Buffer, ttl_ms: int) -> bytes:
    """A copy of a REQUEST's header frame with ``ttl_ms`` replaced (a broker forwards a
    request with the time it has left, not what the client first said)."""
    patched = bytearray(header)
    _TTL.pack_into(patched, _TTL_OFFSET, min(max(1, ttl_ms), _MAX_TTL))
    return bytes(patched)


def takes_meta(revision: str) -> bool:
    """True if a peer that announced protocol ``revision`` in its HELLO takes the
    REQUEST meta flag (1.1 and later; a 1.0 peer refuses it, SPEC section 2)."""
    return revision != "1.0"


def without_meta(frames: Sequence[Buffer], limits: Limits = DEFAULT_LIMITS) -> list[Any]:
    """A REQUEST's frames (envelope removed) made again without its meta (the trace),
    for a peer that speaks revision 1.0 (SPEC section 2: it refuses the meta flag).

    Raises:
        ProtocolError: the frames are not a valid REQUEST.
    """
    msg = decode(frames, limits)
    if type(msg) is not Request:
        raise ProtocolError(f"without_meta takes a REQUEST, not a {type(msg).__name__}")
    return encode(replace(msg, trace=""), limits)


def answer_code(frames: Sequence[Buffer], limits: Limits = DEFAULT_LIMITS) -> int | None:
    """What an answer's frames say of its request: None for a REPLY, else the ERROR's
    code (its body is decoded: errors are small and rare), `PROTOCOL` if unreadable."""
    kind = header_type(frames[0]) if frames else None
    if kind is MessageType.REPLY:
        return None
    try:
        msg = decode(frames, limits)
    except ProtocolError:
        return ErrorCode.PROTOCOL
    return msg.code if type(msg) is Error else ErrorCode.PROTOCOL


def header_type(frame: Buffer) -> MessageType | None:
    """The message type a header frame names, or None if it names none.

    A frame that starts with ``ZM``, version 1, and holds a known type at offset 3
    names that type, whatever else is wrong with it: an ERROR with a bad codec byte,
    a short frame or an undecodable body is still an ERROR, and never answered.
    """
    try:
        view = frame if type(frame) is bytes else _byte_view(frame)
    except ProtocolError:
        return None
    if len(view) < 4 or bytes(view[:2]) != SIGNATURE or view[2] != PROTOCOL_VERSION:
        return None
    return _TYPE_OF[view[3]]


# Answers are never answered: two peers answering each other's bad answers with
# ERRORs would bounce them forever (SPEC section 6). Nor is a BUNDLE that failed to
# decode: it may have held answers.
_ANSWERS = frozenset(
    (
        MessageType.ERROR,
        MessageType.REPLY,
        MessageType.PONG,
        MessageType.PROGRESS,
        MessageType.BUNDLE,
        MessageType.ITEM,
        MessageType.END,
    )
)


def refusal(exc: ProtocolError, header: Buffer | None) -> Error | None:
    """The ERROR that answers a message that failed to decode with ``exc``, or None when
    that message must not be answered (it says it is itself an answer).

    ``header`` is the offending message's header frame, if it had one.
    """
    if header is not None and header_type(header) in _ANSWERS:
        return None
    return Error(exc.request_id, exc.code, str(exc), "ProtocolError", codec=exc.codec)


def _byte_view(frame: Buffer) -> memoryview:
    """Any frame (memoryview, bytearray, zmq.Frame ...) as a flat view of bytes."""
    try:
        view = memoryview(frame)
        if view.itemsize == 1 and view.ndim == 1:
            return view
        if not view.nbytes:  # an empty array (shape (2, 0)): cast refuses zero-size views
            return memoryview(b"")
        return view.cast("B")
    except TypeError as exc:
        raise ProtocolError(f"a frame must be a contiguous buffer, not {type(frame)!r}") from exc


def decode(frames: Sequence[Buffer], limits: Limits = DEFAULT_LIMITS) -> Message:
    """Turn ``[header, body, *out_of_band]`` (envelope removed) into a message.

    Frames may be bytes, memoryviews or ``zmq.Frame`` objects; arrays in the result
    share memory with their frames (no copy, unless a small frame was misaligned).

    Raises:
        ProtocolError: for anything malformed or over ``limits`` — and only that.
            Its ``request_id`` and ``codec`` attributes hold the header's id and codec
            when the header could be read (else 0 and MSGPACK): answer in that codec.
    """
    count = len(frames)
    if count < 2 or count > limits.max_frames:
        raise ProtocolError(
            f"message of {count} frames; expected header, body and at most "
            f"{limits.max_frames - 2} out-of-band frames",
            ErrorCode.LIMIT_EXCEEDED if count > limits.max_frames else ErrorCode.PROTOCOL,
        )
    mt, codec, flags, rid, ttl, target = _read_header(frames[0], limits)
    if mt is _BUNDLE:
        limits = _bundle_limits(limits)
    try:
        body = frames[1]
        if type(body) is bytes:
            size = len(body)
        else:
            body = _byte_view(body)
            size = body.nbytes
        if size > limits.max_body_bytes:
            raise ProtocolError(
                f"body of {size} bytes exceeds limit {limits.max_body_bytes}",
                ErrorCode.LIMIT_EXCEEDED,
            )
        if count > 2:
            oob = frames[2:]
            total = size + sum(_byte_view(f).nbytes for f in oob)
            if total > limits.max_message_bytes:
                raise ProtocolError(
                    f"message of {total} bytes exceeds limit {limits.max_message_bytes}",
                    ErrorCode.LIMIT_EXCEEDED,
                )
        else:
            oob = ()
        if mt is _REQUEST:
            if not target:
                raise ProtocolError("request has no target name")
            value = decode_value(body, codec, oob, limits, size)
            trace = ""
            window = 0
            if flags & FLAG_META:
                if type(value) is not list or len(value) != 3 or type(value[2]) is not dict:
                    raise ProtocolError(
                        "request body with the meta flag must be [args, kwargs, meta map]"
                    )
                meta = value.pop()
                trace = _traceparent(meta)
                if flags & FLAG_STREAM:
                    window = _window(meta, flags)
            elif flags & FLAG_STREAM:
                raise ProtocolError("a stream request has the meta flag (its meta holds window)")
            elif type(value) is not list or len(value) != 2:
                raise ProtocolError("request body must be [args, kwargs]")
            args, kwargs = value
            if type(args) is not list or type(kwargs) is not dict:
                raise ProtocolError("request body must be [args list, kwargs map]")
            batch = flags & FLAG_BATCH
            if batch and not all(type(item) is list for item in args):
                raise ProtocolError("batch request args must be a list of argument lists")
            if kwargs and codec is _MSGPACK and any(type(k) is not str for k in kwargs):
                raise ProtocolError("request kwargs keys must be strings")
            return _new_request(
                rid, target, args, kwargs, ttl, codec, batch == FLAG_BATCH, trace, window
            )
        if mt is _REPLY:
            result = decode_value(body, codec, oob, limits, size)
            batch = flags & FLAG_BATCH
            if batch and type(result) is not list:
                raise ProtocolError("batch reply body must be a list of results")
            return _new_reply(rid, result, codec, batch == FLAG_BATCH)
        if mt is _ITEM:
            if flags & FLAG_BATCH:
                # The batch's array is not one of its items' levels (SPEC 7.11).
                value = decode_value(body, codec, oob, _one_level_more(limits), size)
                if type(value) is not list or not value:
                    raise ProtocolError("a batched ITEM's body is an array of at least one item")
                return Item(rid, value, codec, True)
            return Item(rid, decode_value(body, codec, oob, limits, size), codec)
        if mt is _BUNDLE:
            if codec is not _MSGPACK or oob:
                raise ProtocolError("a BUNDLE is MessagePack, with no out-of-band frames")
            value = decode_value(body, codec, oob, limits, size)
            return _decode_bundle(value, bool(flags & FLAG_ROUTED))
        if mt in _EMPTY_BODY:
            if size or oob:
                raise ProtocolError(f"{mt.name} carries no body")
            return _EMPTY_BODY_TYPES[mt](rid, codec)
        value = decode_value(body, codec, oob, limits, size) if size else {}
        if type(value) is not dict:
            raise ProtocolError(f"{mt.name} body must be a map")
        return _BODY_DECODERS[mt](rid, codec, value)
    except ProtocolError as exc:
        raise _with_id(exc, rid, codec) from exc.__cause__


# Request, Reply and Header are built without their __init__: a frozen dataclass's
# __init__ sets each field through object.__setattr__, and setting the slots directly
# costs a third of that (about 1 µs less per decoded request; a broker decodes two or
# three headers per call). Only for these hot types, with every field given and
# already checked.


def _slot_setters(cls: type, *names: str) -> tuple[Any, ...]:
    """The slot setters of frozen dataclass ``cls``, one per field, in field order.

    Raises TypeError at import if the fields are not exactly ``names``, so a field
    added to the class cannot be forgotten here.
    """
    if tuple(f.name for f in fields(cls)) != names or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} fields changed: update protocol._framing")
    return tuple(getattr(cls, name).__set__ for name in names)


_new = object.__new__
_set_request = _slot_setters(
    Request, "id", "target", "args", "kwargs", "ttl_ms", "codec", "batch", "trace", "window"
)
_set_reply = _slot_setters(Reply, "id", "result", "codec", "batch")
_set_header = _slot_setters(Header, "type", "codec", "flags", "id", "ttl_ms", "target")


def _new_request(
    rid: int,
    target: str,
    args: list[Any],
    kwargs: dict[str, Any],
    ttl: int,
    codec: Codec,
    batch: bool,
    trace: str = "",
    window: int = 0,
) -> Request:
    s_id, s_target, s_args, s_kwargs, s_ttl, s_codec, s_batch, s_trace, s_window = _set_request
    msg = _new(Request)
    s_id(msg, rid)
    s_target(msg, target)
    s_args(msg, args)
    s_kwargs(msg, kwargs)
    s_ttl(msg, ttl)
    s_codec(msg, codec)
    s_batch(msg, batch)
    s_trace(msg, trace)
    s_window(msg, window)
    return msg


def _window(meta: dict[Any, Any], flags: int) -> int:
    """A stream request's initial credit, from its meta map (SPEC 7.11)."""
    if flags & FLAG_BATCH:
        raise ProtocolError("a request is a batch or a stream, not both")
    window = meta.get("window")
    if type(window) is not int or window < 1:
        raise ProtocolError("a stream request's meta needs 'window', an integer >= 1")
    return window


def is_traceparent(value: Any) -> bool:
    """True if ``value`` is a W3C Trace Context ``traceparent`` this side can use:
    ``VV-<32 hex trace id>-<16 hex parent id>-<2 hex flags>``, version not ``ff``."""
    return type(value) is str and bool(_TRACEPARENT.match(value)) and not value.startswith("ff")


def trace_id_of(traceparent: str) -> str:
    """The 32-hex-digit trace id of a W3C ``traceparent`` ("" for "")."""
    return traceparent[3:35]


def _traceparent(meta: dict[Any, Any]) -> str:
    """The W3C traceparent in a request's meta map, or "" when absent or malformed (a
    receiver ignores a traceparent it cannot parse, as W3C Trace Context says)."""
    value = meta.get("traceparent")
    return str(value) if is_traceparent(value) else ""


def _new_reply(rid: int, result: Any, codec: Codec, batch: bool) -> Reply:
    s_id, s_result, s_codec, s_batch = _set_reply
    msg = _new(Reply)
    s_id(msg, rid)
    s_result(msg, result)
    s_codec(msg, codec)
    s_batch(msg, batch)
    return msg


def _with_id(exc: ProtocolError, request_id: int, codec: Codec = _MSGPACK) -> ProtocolError:
    exc.request_id = request_id
    exc.codec = codec
    return exc


# --- per-type bodies: maps with named fields -----------------------------------------


def _field(body: dict[str, Any], name: str, types: tuple[type, ...], default: Any) -> Any:
    # Exact types: a decoded value is a plain bool, int, float, str ..., and a boolean
    # is not a number here (bool is an int subclass).
    value = body.get(name, default)
    if value is not default and type(value) not in types:
        raise ProtocolError(f"field {name!r} has the wrong type ({type(value).__name__})")
    return value


_STR = (str,)
_INT = (int,)
_NUMBER = (int, float)
_MAP = (dict,)
_BOOL = (bool,)


# --- what the encoder checks in map bodies: what the decoders above accept -------------


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_count(value: Any) -> bool:
    return travels_as_int(value) and value >= 0


def _is_number_or_none(value: Any) -> bool:
    return value is None or travels_as_number(value)


def _is_map_or_none(value: Any) -> bool:
    return value is None or isinstance(value, dict)


def _is_services(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(name, str)
        and isinstance(handlers, list | tuple)
        and all(isinstance(h, str) for h in handlers)
        for name, handlers in value.items()
    )


# (field, exact types that pass at once, the full test, what it must be)
_Check = tuple[str, tuple[type, ...], Callable[[Any], bool], str]
_NONE = type(None)


def _check_fields(msg: Message, checks: tuple[_Check, ...]) -> None:
    for name, fast, ok, want in checks:
        value = getattr(msg, name)
        if type(value) not in fast and not ok(value):
            raise ProtocolError(
                f"{type(msg).__name__}.{name} must be {want}, not {type(value).__name__} "
                f"{value!r:.40}"
            )


_STRING: tuple[tuple[type, ...], Callable[[Any], bool], str] = (_STR, _is_str, "a string")
_INTEGER = (_INT, travels_as_int, "an integer (not a bool)")
_ERROR_CHECKS: tuple[_Check, ...] = (
    ("code", (int, ErrorCode), travels_as_int, "an integer (not a bool)"),
    ("message", *_STRING),
    ("type", *_STRING),
    ("traceback", *_STRING),
    ("detail", (_NONE, dict), _is_map_or_none, "a dict or None"),
)
_HELLO_CHECKS: tuple[_Check, ...] = (
    ("role", *_STRING),
    ("name", *_STRING),
    ("version", *_STRING),
    ("host", *_STRING),
    ("pid", *_INTEGER),
    ("services", (), _is_services, "a dict of service names to lists of handler names"),
    ("capacity", *_INTEGER),
    ("in_flight", *_INTEGER),
    ("uptime", _NUMBER, travels_as_number, "a number (not a bool)"),
    ("heartbeat_ms", *_INTEGER),
    ("protocol", *_STRING),
    ("threads", *_INTEGER),
    ("async_slots", *_INTEGER),
    ("async_handlers", (), _is_services, "a dict of service names to lists of handler names"),
    ("stats", (dict,), lambda v: isinstance(v, dict), "a dict"),
    ("bundle", (bool,), lambda v: False, "a bool"),
    ("streams", (bool,), lambda v: False, "a bool"),
)
_READY_CHECKS: tuple[_Check, ...] = (("credit", (), _is_count, "an integer >= 0 (not a bool)"),)
_PROGRESS_CHECKS: tuple[_Check, ...] = (
    ("done", _NUMBER, travels_as_number, "a number (not a bool)"),
    ("total", (_NONE, int, float), _is_number_or_none, "a number (not a bool) or None"),
    ("note", *_STRING),
)
_DISCONNECT_CHECKS: tuple[_Check, ...] = (("reason", *_STRING),)
_END_CHECKS: tuple[_Check, ...] = (("items", (), _is_count, "an integer >= 0 (not a bool)"),)
_CREDIT_CHECKS = _READY_CHECKS


# --- per-type bodies ---------------------------------------------------------------------


def _error_body(m: Error) -> dict[str, Any]:
    _check_fields(m, _ERROR_CHECKS)
    body: dict[str, Any] = {"code": m.code, "message": m.message}
    if m.type:  # set by Error itself (SPEC 7.1: every ERROR names a type)
        body["type"] = m.type
    if m.traceback:
        body["traceback"] = m.traceback
    if m.detail is not None:
        body["detail"] = m.detail
    return body


def _decode_error(rid: int, codec: Codec, b: dict[str, Any]) -> Error:
    code = b.get("code")
    if type(code) is not int:
        raise ProtocolError("error body needs an integer 'code'")
    return Error(
        rid,
        code,
        _field(b, "message", _STR, ""),
        _field(b, "type", _STR, ""),
        _field(b, "traceback", _STR, ""),
        _field(b, "detail", _MAP, None),
        codec,
    )


def _hello_body(m: Hello) -> dict[str, Any]:
    _check_fields(m, _HELLO_CHECKS)
    return {
        "role": m.role,
        "name": m.name,
        "version": m.version,
        "host": m.host,
        "pid": m.pid,
        "services": m.services,
        "capacity": m.capacity,
        "in_flight": m.in_flight,
        "uptime": m.uptime,
        "heartbeat_ms": m.heartbeat_ms,
        "protocol": m.protocol,
        "threads": m.threads,
        "async_slots": m.async_slots,
        "async_handlers": m.async_handlers,
        "stats": m.stats,
        "bundle": m.bundle,
        "streams": m.streams,
    }


def _handler_map(b: dict[str, Any], key: str) -> dict[str, list[str]]:
    value: dict[str, list[str]] = _field(b, key, _MAP, {})
    for name, handlers in value.items():
        if type(name) is not str or type(handlers) is not list:
            raise ProtocolError(f"hello {key!r} must map service names to handler lists")
        if not all(type(h) is str for h in handlers):
            raise ProtocolError(f"hello {key!r}: handler names must be strings")
    return value


def _decode_hello(rid: int, codec: Codec, b: dict[str, Any]) -> Hello:
    services = _handler_map(b, "services")
    return Hello(
        rid,
        _field(b, "role", _STR, "client"),
        _field(b, "name", _STR, ""),
        _field(b, "version", _STR, ""),
        _field(b, "host", _STR, ""),
        _field(b, "pid", _INT, 0),
        services,
        _field(b, "capacity", _INT, 0),
        _field(b, "in_flight", _INT, 0),
        _float(_field(b, "uptime", _NUMBER, 0.0), "uptime"),
        _field(b, "heartbeat_ms", _INT, 0),
        codec,
        _field(b, "protocol", _STR, "1.0"),
        _field(b, "threads", _INT, 0),
        _field(b, "async_slots", _INT, 0),
        _handler_map(b, "async_handlers"),
        _field(b, "stats", _MAP, {}),
        _field(b, "bundle", _BOOL, False),
        _field(b, "streams", _BOOL, False),
    )


def _float(value: float, name: str) -> float:
    try:
        return float(value)
    except OverflowError:  # a JSON integer of any size
        raise ProtocolError(f"field {name!r} is out of range") from None


def _decode_progress(rid: int, codec: Codec, b: dict[str, Any]) -> Progress:
    total = b.get("total")
    if total is not None and type(total) is not int and type(total) is not float:
        raise ProtocolError("progress 'total' must be a number or null")
    done = _field(b, "done", _NUMBER, 0)
    return Progress(rid, done, total, _field(b, "note", _STR, ""), codec)


def _ready_body(m: Ready) -> dict[str, Any]:
    credit = m.credit
    if type(credit) is not int or credit < 0:
        _check_fields(m, _READY_CHECKS)
    return {"credit": credit}


def _progress_body(m: Progress) -> dict[str, Any]:
    _check_fields(m, _PROGRESS_CHECKS)
    return {"done": m.done, "total": m.total, "note": m.note}


def _end_body(m: End) -> dict[str, Any]:
    _check_fields(m, _END_CHECKS)
    return {"items": m.items}


def _credit_body(m: Credit) -> dict[str, Any]:
    _check_fields(m, _CREDIT_CHECKS)
    return {"credit": m.credit}


def _count(b: dict[str, Any], name: str, what: str) -> int:
    """A required count field (READY credit, END items, CREDIT credit)."""
    value = b.get(name)
    if type(value) is not int or value < 0:
        raise ProtocolError(f"{what} body needs a non-negative integer {name!r}")
    return value


def _disconnect_body(m: Disconnect) -> dict[str, Any]:
    _check_fields(m, _DISCONNECT_CHECKS)
    return {"reason": m.reason}


def _decode_ready(rid: int, codec: Codec, b: dict[str, Any]) -> Ready:
    return Ready(rid, _count(b, "credit", "ready"), codec)


_BODY_ENCODERS: dict[type, Any] = {
    Error: _error_body,
    Hello: _hello_body,
    Ready: _ready_body,
    Progress: _progress_body,
    Disconnect: _disconnect_body,
    End: _end_body,
    Credit: _credit_body,
}
_BODY_DECODERS: dict[MessageType, Callable[[int, Codec, dict[str, Any]], Message]] = {
    MessageType.ERROR: _decode_error,
    MessageType.HELLO: _decode_hello,
    MessageType.READY: _decode_ready,
    MessageType.PROGRESS: _decode_progress,
    MessageType.DISCONNECT: lambda rid, codec, b: Disconnect(
        rid, _field(b, "reason", _STR, ""), codec
    ),
    MessageType.END: lambda rid, codec, b: End(rid, _count(b, "items", "end"), codec),
    MessageType.CREDIT: lambda rid, codec, b: Credit(rid, _count(b, "credit", "credit"), codec),
}
_EMPTY_BODY_TYPES: dict[MessageType, Callable[[int, Codec], Message]] = {
    MessageType.PING: Ping,
    MessageType.PONG: Pong,
    MessageType.CANCEL: Cancel,
}
