"""Messages to frames and back: the header, the body, the out-of-band frames.

A message is ``[header, body, *out_of_band]`` after the routing envelope. The header
is a fixed 20-byte struct plus, for requests, the target name; it is enough to route
a message without decoding its body (the broker relies on that).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._limits import DEFAULT_LIMITS, Limits
from ._messages import (
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
from ._values import Buffer, Codec, decode_value, encode_value
from .errors import ErrorCode, ProtocolError

__all__ = ["FLAG_BATCH", "HEADER_SIZE", "PROTOCOL_VERSION", "SIGNATURE", "Header"]

SIGNATURE = b"ZM"
PROTOCOL_VERSION = 1
FLAG_BATCH = 0x01
_KNOWN_FLAGS = FLAG_BATCH
_MAX_TARGET_BYTES = 255

# signature, version, type, codec, flags, request id, ttl ms, target length
_HEADER = struct.Struct("!2sBBBBQIH")
HEADER_SIZE = _HEADER.size  # 20
_MAX_ID = 2**64 - 1
_MAX_TTL = 2**32 - 1

_CODECS = {c.value: c for c in Codec}
_TYPES = {t.value: t for t in MessageType}
_EMPTY = b""


@dataclass(frozen=True, slots=True)
class Header:
    """The decoded header frame: everything needed to route a message."""

    type: MessageType
    codec: Codec
    flags: int
    id: int
    ttl_ms: int
    target: str


def encode(msg: Message) -> list[Buffer]:
    """Turn a message into frames ``[header, body, *out_of_band]``.

    Out-of-band frames are the numpy arrays' own buffers: send them with
    ``copy=False`` and do not modify those arrays until the send completes.

    Raises:
        ProtocolError: a field is out of range, or a value cannot be encoded.
    """
    cls = type(msg)
    flags = 0
    ttl = 0
    target = _EMPTY
    oob: list[Buffer] = []
    codec = msg.codec
    if cls is Request:
        body, oob = encode_value([msg.args, msg.kwargs], codec)
        target = msg.target.encode()
        if len(target) > _MAX_TARGET_BYTES or not target:
            raise ProtocolError(
                f"target {msg.target!r} must be 1 to {_MAX_TARGET_BYTES} bytes of UTF-8"
            )
        ttl = msg.ttl_ms
        if not 0 <= ttl <= _MAX_TTL:
            raise ProtocolError(f"ttl_ms {ttl} out of range 0..{_MAX_TTL}")
        if msg.batch:
            flags = FLAG_BATCH
    elif cls is Reply:
        body, oob = encode_value(msg.result, codec)
        if msg.batch:
            flags = FLAG_BATCH
    elif cls in (Ping, Pong, Cancel):
        body = _EMPTY
    else:
        body, oob = encode_value(_BODY_ENCODERS[cls](msg), codec)
    if not 0 <= msg.id <= _MAX_ID:
        raise ProtocolError(f"request id {msg.id} out of range 0..2**64-1")
    header = _HEADER.pack(
        SIGNATURE, PROTOCOL_VERSION, cls.TYPE, codec, flags, msg.id, ttl, len(target)
    )
    return [header + target if target else header, body, *oob]


def decode_header(frame: Buffer, limits: Limits = DEFAULT_LIMITS) -> Header:
    """Decode the header frame alone (cheap; the broker routes on it).

    Raises:
        ProtocolError: bad signature, unknown version, type, codec or flags, bad length.
    """
    view = memoryview(frame)
    size = view.nbytes
    if size < HEADER_SIZE or size > limits.max_header_bytes:
        raise ProtocolError(
            f"header frame of {size} bytes; a zeromesh header is {HEADER_SIZE} to "
            f"{limits.max_header_bytes} bytes (is the peer speaking zeromesh?)"
        )
    sig, version, mtype, codec, flags, rid, ttl, tlen = _HEADER.unpack_from(view)
    if sig != SIGNATURE:
        raise ProtocolError(f"header does not start with {SIGNATURE!r}: not a zeromesh peer")
    if version != PROTOCOL_VERSION:
        raise _with_id(
            ProtocolError(
                f"protocol version {version} is not supported (this peer speaks "
                f"version {PROTOCOL_VERSION}); upgrade the older side",
                ErrorCode.UNSUPPORTED_VERSION,
            ),
            rid,
        )
    mt = _TYPES.get(mtype)
    cd = _CODECS.get(codec)
    if mt is None or cd is None or flags & ~_KNOWN_FLAGS:
        raise _with_id(
            ProtocolError(f"unknown message type {mtype}, codec {codec} or flags {flags:#x}"),
            rid,
        )
    if HEADER_SIZE + tlen != size:
        raise _with_id(ProtocolError("header length does not match its target length"), rid)
    target = ""
    if tlen:
        try:
            target = str(view[HEADER_SIZE:], "utf-8")
        except UnicodeDecodeError as exc:
            raise _with_id(ProtocolError("target name is not UTF-8"), rid) from exc
    return Header(mt, cd, flags, rid, ttl, target)


def decode(frames: Sequence[Buffer], limits: Limits = DEFAULT_LIMITS) -> Message:
    """Turn ``[header, body, *out_of_band]`` (envelope removed) into a message.

    Frames may be bytes, memoryviews or ``zmq.Frame`` objects; arrays in the result
    share memory with their frames (no copy, unless a small frame was misaligned).

    Raises:
        ProtocolError: for anything malformed or over ``limits`` — and only that.
            Its ``request_id`` attribute holds the id when the header could be read.
    """
    count = len(frames)
    if count < 2 or count > limits.max_frames:
        raise ProtocolError(
            f"message of {count} frames; expected header, body and at most "
            f"{limits.max_frames - 2} out-of-band frames",
            ErrorCode.LIMIT_EXCEEDED if count > limits.max_frames else ErrorCode.PROTOCOL,
        )
    header = decode_header(frames[0], limits)
    try:
        return _decode_body(header, frames, limits)
    except ProtocolError as exc:
        raise _with_id(exc, header.id) from exc.__cause__


def _decode_body(header: Header, frames: Sequence[Buffer], limits: Limits) -> Message:
    body = frames[1]
    oob = frames[2:]
    body_size = memoryview(body).nbytes
    if body_size > limits.max_body_bytes:
        raise ProtocolError(
            f"body of {body_size} bytes exceeds limit {limits.max_body_bytes}",
            ErrorCode.LIMIT_EXCEEDED,
        )
    if oob:
        total = body_size + sum(memoryview(f).nbytes for f in oob)
        if total > limits.max_message_bytes:
            raise ProtocolError(
                f"message of {total} bytes exceeds limit {limits.max_message_bytes}",
                ErrorCode.LIMIT_EXCEEDED,
            )
    mt = header.type
    rid = header.id
    codec = header.codec
    batch = bool(header.flags & FLAG_BATCH)
    if mt is MessageType.REQUEST:
        if not header.target:
            raise ProtocolError("request has no target name")
        value = decode_value(body, codec, oob, limits)
        if type(value) is not list or len(value) != 2:
            raise ProtocolError("request body must be [args, kwargs]")
        args, kwargs = value
        if type(args) is not list or type(kwargs) is not dict:
            raise ProtocolError("request body must be [args list, kwargs map]")
        if batch and not all(type(item) is list for item in args):
            raise ProtocolError("batch request args must be a list of argument lists")
        if any(type(k) is not str for k in kwargs):
            raise ProtocolError("request kwargs keys must be strings")
        return Request(rid, header.target, args, kwargs, header.ttl_ms, codec, batch)
    if mt is MessageType.REPLY:
        result = decode_value(body, codec, oob, limits)
        if batch and type(result) is not list:
            raise ProtocolError("batch reply body must be a list of results")
        return Reply(rid, result, codec, batch)
    if mt in (MessageType.PING, MessageType.PONG, MessageType.CANCEL):
        if body_size or oob:
            raise ProtocolError(f"{mt.name} carries no body")
        return _EMPTY_BODY_TYPES[mt](rid, codec=codec)
    value = decode_value(body, codec, oob, limits) if body_size else {}
    if type(value) is not dict:
        raise ProtocolError(f"{mt.name} body must be a map")
    return _BODY_DECODERS[mt](rid, codec, value)


def _with_id(exc: ProtocolError, request_id: int) -> ProtocolError:
    exc.request_id = request_id
    return exc


# --- per-type bodies: maps with named fields -----------------------------------------


def _field(body: dict[str, Any], name: str, types: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(name, default)
    if value is not default and not isinstance(value, types):
        raise ProtocolError(f"field {name!r} has the wrong type ({type(value).__name__})")
    return value


def _error_body(m: Error) -> dict[str, Any]:
    body: dict[str, Any] = {"code": m.code, "message": m.message}
    if m.type:
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
        _field(b, "message", str, ""),
        _field(b, "type", str, ""),
        _field(b, "traceback", str, ""),
        _field(b, "detail", dict, None),
        codec,
    )


def _hello_body(m: Hello) -> dict[str, Any]:
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
    }


def _decode_hello(rid: int, codec: Codec, b: dict[str, Any]) -> Hello:
    services = _field(b, "services", dict, {})
    for name, handlers in services.items():
        if type(name) is not str or type(handlers) is not list:
            raise ProtocolError("hello 'services' must map service names to handler lists")
        if not all(type(h) is str for h in handlers):
            raise ProtocolError("hello handler names must be strings")
    return Hello(
        rid,
        _field(b, "role", str, "client"),
        _field(b, "name", str, ""),
        _field(b, "version", str, ""),
        _field(b, "host", str, ""),
        _field(b, "pid", int, 0),
        services,
        _field(b, "capacity", int, 0),
        _field(b, "in_flight", int, 0),
        float(_field(b, "uptime", (int, float), 0.0)),
        _field(b, "heartbeat_ms", int, 0),
        codec,
    )


def _decode_progress(rid: int, codec: Codec, b: dict[str, Any]) -> Progress:
    total = b.get("total")
    if total is not None and not isinstance(total, int | float):
        raise ProtocolError("progress 'total' must be a number or null")
    done = _field(b, "done", (int, float), 0)
    return Progress(rid, done, total, _field(b, "note", str, ""), codec)


def _decode_ready(rid: int, codec: Codec, b: dict[str, Any]) -> Ready:
    credit = b.get("credit")
    if type(credit) is not int or credit < 0:
        raise ProtocolError("ready body needs a non-negative integer 'credit'")
    return Ready(rid, credit, codec)


_BODY_ENCODERS: dict[type, Any] = {
    Error: _error_body,
    Hello: _hello_body,
    Ready: lambda m: {"credit": m.credit},
    Progress: lambda m: {"done": m.done, "total": m.total, "note": m.note},
    Disconnect: lambda m: {"reason": m.reason},
}
_BODY_DECODERS: dict[MessageType, Any] = {
    MessageType.ERROR: _decode_error,
    MessageType.HELLO: _decode_hello,
    MessageType.READY: _decode_ready,
    MessageType.PROGRESS: _decode_progress,
    MessageType.DISCONNECT: lambda rid, codec, b: Disconnect(
        rid, _field(b, "reason", str, ""), codec
    ),
}
_EMPTY_BODY_TYPES: dict[MessageType, Any] = {
    MessageType.PING: Ping,
    MessageType.PONG: Pong,
    MessageType.CANCEL: Cancel,
}
