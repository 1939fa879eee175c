"""Every message type through encode -> frames -> decode, the header, and the errors."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack
import pytest

import protocol
from protocol import (
    FLAG_BATCH,
    HEADER_SIZE,
    PROTOCOL_VERSION,
    SIGNATURE,
    BadArguments,
    Cancel,
    Cancelled,
    Codec,
    Disconnect,
    Error,
    ErrorCode,
    Hello,
    Limits,
    MessageType,
    NoWorkers,
    Overloaded,
    Ping,
    Pong,
    Progress,
    ProtocolError,
    Ready,
    RemoteError,
    Reply,
    Request,
    Timeout,
    UnknownHandler,
    WorkerLost,
    ZeromeshError,
)
from protocol.errors import error_from_wire

CODECS = list(Codec)

# How a receiver holds frames: bytes from recv_multipart(), or the writable buffers of
# zmq.Frame objects from recv_multipart(copy=False) (bytearray-like memory).
RECEIVED: dict[str, Callable[[Any], Any]] = {
    "bytes": lambda f: bytes(memoryview(f)),
    "bytearray": lambda f: bytearray(memoryview(f)),
    "memoryview": lambda f: memoryview(bytearray(memoryview(f))),
}


def received(frames: list[Any], kind: str = "bytes") -> list[Any]:
    return [RECEIVED[kind](f) for f in frames]


def header(
    mtype: int = MessageType.REPLY,
    *,
    signature: bytes = SIGNATURE,
    version: int = PROTOCOL_VERSION,
    codec: int = Codec.MSGPACK,
    flags: int = 0,
    rid: int = 7,
    ttl: int = 0,
    target: bytes = b"",
    tlen: int | None = None,
) -> bytes:
    """A header frame built by hand, field by field (SPEC section 2)."""
    size = len(target) if tlen is None else tlen
    head = struct.pack("!2sBBBBQIH", signature, version, mtype, codec, flags, rid, ttl, size)
    return head + target


def messages(codec: Codec) -> list[Any]:
    """One or more instances of every message type, with every field set."""
    result: dict[str, Any] = {"sum": 3, "items": [1.5, None, "x", True, -(2**63)], "raw": b"\x00"}
    return [
        Request(1, "math.add", [1, 2], {}, codec=codec),
        Request(
            2**64 - 1,
            "math.add",
            [[1, 2], "ü", b"\xff"],
            {"round": True, "nested": {"a": [None]}},
            ttl_ms=2**32 - 1,
            codec=codec,
        ),
        Request(3, "svc.batch", [[1, 2], [3, 4]], {"k": 1}, ttl_ms=1500, codec=codec, batch=True),
        Request(4, "s" * 200 + ".h", [], {}, codec=codec),
        Reply(1, result, codec=codec),
        Reply(2, None, codec=codec),
        Reply(3, [1, [2, 3], {"x": "y"}], codec=codec, batch=True),
        Error(5, ErrorCode.REMOTE, "boom", "ValueError", "Traceback ...\n", {"index": 3}, codec),
        Error(0, ErrorCode.PROTOCOL, "bad header", codec=codec),
        Ping(6, codec),
        Pong(6, codec),
        Hello(
            7,
            role="worker",
            name="w1",
            version="0.1.0",
            host="h",
            pid=1234,
            services={"math": ["add", "mul"], "empty": []},
            capacity=4,
            in_flight=1,
            uptime=12.5,
            heartbeat_ms=1000,
            codec=codec,
        ),
        Hello(codec=codec),
        Ready(8, 3, codec),
        Ready(9, 0, codec),
        Progress(10, 2.5, 10.0, "half way", codec),
        Progress(11, 1, None, "", codec),
        Disconnect(0, "draining", codec),
        Disconnect(codec=codec),
        Cancel(12, codec),
    ]


def test_every_message_type_is_covered() -> None:
    covered = {type(m).TYPE for m in messages(Codec.MSGPACK)}
    assert covered == set(MessageType)


@pytest.mark.parametrize("kind", list(RECEIVED))
@pytest.mark.parametrize("codec", CODECS)
def test_round_trip(codec: Codec, kind: str) -> None:
    for msg in messages(codec):
        frames = protocol.encode(msg)
        assert isinstance(frames[0], bytes)
        decoded = protocol.decode(received(frames, kind))
        assert type(decoded) is type(msg)
        assert decoded == msg
        assert decoded.codec is codec


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_twice_gives_same_frames(codec: Codec) -> None:
    for msg in messages(codec):
        frames = received(protocol.encode(msg))
        assert received(protocol.encode(protocol.decode(frames))) == frames


@pytest.mark.parametrize("codec", CODECS)
def test_header_fields_survive(codec: Codec) -> None:
    msg = Request(2**64 - 1, "math.add", [[1], [2]], {}, ttl_ms=2**32 - 1, codec=codec, batch=True)
    frames = protocol.encode(msg)
    head = protocol.decode_header(frames[0])
    assert head.type is MessageType.REQUEST
    assert head.codec is codec
    assert head.flags == FLAG_BATCH
    assert head.id == 2**64 - 1
    assert head.ttl_ms == 2**32 - 1
    assert head.target == "math.add"
    assert frames[0][:3] == SIGNATURE + bytes([PROTOCOL_VERSION])
    assert len(frames[0]) == HEADER_SIZE + len("math.add")

    reply = protocol.decode_header(protocol.encode(Reply(5, 1, codec=codec))[0])
    assert (reply.type, reply.flags, reply.id, reply.ttl_ms, reply.target) == (
        MessageType.REPLY,
        0,
        5,
        0,
        "",
    )
    batch = protocol.decode_header(protocol.encode(Reply(5, [1], codec=codec, batch=True))[0])
    assert batch.flags == FLAG_BATCH


def test_header_accepts_any_buffer() -> None:
    frame = protocol.encode(Request(9, "a.b", [1]))[0]
    for kind in RECEIVED:
        assert protocol.decode_header(RECEIVED[kind](frame)).target == "a.b"


def test_request_service_property() -> None:
    assert Request(1, "math.add").service == "math"


def test_tuples_travel_as_lists() -> None:
    msg = protocol.decode(protocol.encode(Request(1, "a.b", (1, (2, 3)), {"t": (4,)})))
    assert msg.args == [1, [2, 3]]
    assert msg.kwargs == {"t": [4]}


def test_json_bytes_travel_out_of_band() -> None:
    frames = protocol.encode(Reply(1, {"blob": b"\x00\x01" * 10}, codec=Codec.JSON))
    assert len(frames) == 3
    assert json.loads(frames[1]) == {"blob": {"$bytes": 0}}
    assert protocol.decode(received(frames)).result == {"blob": b"\x00\x01" * 10}


# --- what the decoder refuses -------------------------------------------------------


def refused(frames: list[Any], code: ErrorCode = ErrorCode.PROTOCOL, **kw: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(frames, **kw)
    assert info.value.code == code, info.value
    return info.value


def test_unknown_version() -> None:
    for version in (0, 2, 255):
        exc = refused([header(version=version, rid=42), b"\xc0"], ErrorCode.UNSUPPORTED_VERSION)
        assert exc.request_id == 42
        assert str(version) in str(exc)
        with pytest.raises(ProtocolError) as info:
            protocol.decode_header(header(version=version))
        assert info.value.code == ErrorCode.UNSUPPORTED_VERSION


def test_bad_signature() -> None:
    for sig in (b"XX", b"zm", b"MZ", b"\x00\x00"):
        exc = refused([header(signature=sig), b"\xc0"])
        assert "zeromesh" in str(exc)


def test_unknown_type_codec_flags() -> None:
    for mtype in (0, 11, 255):
        exc = refused([header(mtype, rid=3), b"\xc0"])
        assert exc.request_id == 3
    for codec in (2, 255):
        refused([header(codec=codec), b"\xc0"])
    for flags in (0x02, 0x80, 0xFF):
        refused([header(flags=flags), b"\xc0"])


def test_target_empty_too_long_or_not_utf8() -> None:
    refused([header(MessageType.REQUEST, rid=4), protocol.encode(Request(1, "a.b"))[1]])
    exc = refused([header(MessageType.REQUEST, target=b"\xff\xfe.x", rid=5), b"\x92\x90\x80"])
    assert exc.request_id == 5
    assert "UTF-8" in str(exc)
    # A 256-byte target makes a 276-byte header: over max_header_bytes.
    refused([header(MessageType.REQUEST, target=b"s." + b"x" * 254), b"\x92\x90\x80"])
    for target in ("", "x" * 256, "é" * 128):
        with pytest.raises(ProtocolError, match="target"):
            protocol.encode(Request(1, target))
    with pytest.raises(ProtocolError):
        protocol.encode(Request(1, "bad\udc80.surrogate"))
    assert protocol.decode(protocol.encode(Request(1, "é" * 127))).target == "é" * 127


def test_target_length_must_match_header() -> None:
    refused([header(MessageType.REQUEST, target=b"a.b", tlen=4), b"\x92\x90\x80"])
    refused([header(MessageType.REQUEST, target=b"a.b", tlen=2), b"\x92\x90\x80"])
    refused([header(MessageType.REQUEST, target=b"", tlen=3), b"\x92\x90\x80"])


def test_truncated_header() -> None:
    full = protocol.encode(Request(1, "a.b"))
    for size in range(len(full[0])):
        refused([full[0][:size], full[1]])
        with pytest.raises(ProtocolError):
            protocol.decode_header(full[0][:size])


def test_wrong_frame_counts() -> None:
    full = protocol.encode(Reply(1, 2))
    refused([])
    refused(full[:1])
    refused([*full, *[b""] * 1025], ErrorCode.LIMIT_EXCEEDED)
    refused([*protocol.encode(Ping(1)), b"x"])
    refused([*protocol.encode(Cancel(1)), b""])


def test_frames_no_descriptor_names_are_tolerated_for_replies() -> None:
    # SPEC 5: the reference receiver tolerates out-of-band frames that no descriptor names.
    full = protocol.encode(Reply(1, [1]))
    assert protocol.decode([*full, b"extra"]).result == [1]


def test_empty_body_types_refuse_a_body() -> None:
    for msg in (Ping(1), Pong(1), Cancel(1)):
        head, body = protocol.encode(msg)
        assert body == b""
        refused([head, b"\xc0"])


def test_header_larger_than_a_custom_limit() -> None:
    frames = protocol.encode(Request(1, "service.handler"))
    refused(frames, limits=Limits(max_header_bytes=HEADER_SIZE + 5))
    assert protocol.decode(frames, limits=Limits(max_header_bytes=HEADER_SIZE + 15))


BAD_BODIES: list[tuple[MessageType, Any]] = [
    (MessageType.REQUEST, [1, 2, 3]),
    (MessageType.REQUEST, {"args": []}),
    (MessageType.REQUEST, [{}, {}]),
    (MessageType.REQUEST, [[], []]),
    (MessageType.REQUEST, None),
    (MessageType.ERROR, {"message": "no code"}),
    (MessageType.ERROR, {"code": "1", "message": "str code"}),
    (MessageType.ERROR, {"code": 1, "message": 5}),
    (MessageType.ERROR, {"code": 1, "detail": [1]}),
    (MessageType.ERROR, [1, "x"]),
    (MessageType.HELLO, {"services": {"math": "add"}}),
    (MessageType.HELLO, {"services": {"math": [1]}}),
    (MessageType.HELLO, {"services": ["math"]}),
    (MessageType.HELLO, {"role": 5}),
    (MessageType.HELLO, {"pid": "1"}),
    (MessageType.HELLO, {"uptime": "long"}),
    (MessageType.READY, {}),
    (MessageType.READY, {"credit": -1}),
    (MessageType.READY, {"credit": 1.5}),
    (MessageType.PROGRESS, {"done": "x"}),
    (MessageType.PROGRESS, {"total": "x"}),
    (MessageType.PROGRESS, {"note": 1}),
    (MessageType.DISCONNECT, {"reason": 1}),
    (MessageType.DISCONNECT, "bye"),
]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(("mtype", "body"), BAD_BODIES)
def test_bad_bodies(codec: Codec, mtype: MessageType, body: Any) -> None:
    target = b"a.b" if mtype == MessageType.REQUEST else b""
    raw = msgpack.packb(body) if codec is Codec.MSGPACK else json.dumps(body).encode()
    exc = refused([header(mtype, codec=codec, rid=99, target=target), raw])
    assert exc.request_id == 99


def test_request_kwargs_keys_must_be_strings() -> None:
    head = header(MessageType.REQUEST, target=b"a.b")
    refused([head, msgpack.packb([[], {1: 2}])])
    refused(
        [header(MessageType.REQUEST, target=b"a.b", flags=FLAG_BATCH), msgpack.packb([[1], {}])]
    )
    refused([header(MessageType.REPLY, flags=FLAG_BATCH), msgpack.packb(1)])


@pytest.mark.parametrize("codec", CODECS)
def test_malformed_bodies(codec: Codec) -> None:
    head = header(MessageType.REPLY, codec=codec)
    for body in (b"", b"\xc1", b"\x92\x01", b"\x01\x02", b"\xff\xfe", b"[1,]", b"\xd4\x05\x00"):
        refused([head, body])
    if codec is Codec.JSON:
        for body in (b"{", b'{"a":1}x', b"[1] [2]", b"'x'"):
            refused([head, body])


def test_json_body_must_be_utf8() -> None:
    head = header(MessageType.REPLY, codec=Codec.JSON)
    refused([head, '"é"'.encode("latin-1")])
    refused([head, "[1]".encode("utf-16")])
    refused([head, "[1]".encode("utf-32")])
    assert protocol.decode([head, '"é"'.encode()]).result == "é"


def test_hello_uptime_out_of_float_range() -> None:
    # JSON integers have no size limit; float() of a huge one overflows.
    head = header(MessageType.HELLO, codec=Codec.JSON)
    refused([head, b'{"uptime": 1' + b"0" * 400 + b"}"])
    assert protocol.decode([head, b'{"uptime": 3}']).uptime == 3.0


# --- encoder refusals ---------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_encoder_refuses_what_the_wire_cannot_carry(codec: Codec) -> None:
    for value in ({1, 2}, object(), 2**64, -(2**63) - 1, 1j, {"k": Ellipsis}):
        if codec is Codec.JSON and isinstance(value, int):
            continue  # JSON numbers have no size limit
        with pytest.raises(ProtocolError, match="encode"):
            protocol.encode(Reply(1, value, codec=codec))
    if codec is Codec.JSON:
        for value in (float("nan"), float("inf"), {b"k": 1}):
            with pytest.raises(ProtocolError):
                protocol.encode(Reply(1, value, codec=codec))


def test_encoder_refuses_bad_header_fields() -> None:
    for msg in (
        Reply(-1),
        Reply(2**64),
        Request(1, "a.b", ttl_ms=-1),
        Request(1, "a.b", ttl_ms=2**32),
        Reply(1.5),  # type: ignore[arg-type]
        Request(1, "a.b", ttl_ms=1.5),  # type: ignore[arg-type]
    ):
        with pytest.raises(ProtocolError):
            protocol.encode(msg)


# --- errors as data -----------------------------------------------------------------


class CustomFailure(Exception):
    pass


@pytest.mark.parametrize("codec", CODECS)
def test_foreign_exception_becomes_remote_error(codec: Codec) -> None:
    for exc, name in (
        (ValueError("bad value"), "ValueError"),
        (KeyError("k"), "KeyError"),
        (CustomFailure("custom"), f"{__name__}.CustomFailure"),
    ):
        err = Error.from_exception(7, exc, codec, traceback="Traceback (most recent call last):\n")
        assert err.code == ErrorCode.REMOTE
        assert err.type == name
        assert err.message == str(exc)
        wired = protocol.decode(received(protocol.encode(err)))
        assert wired == err
        raised = wired.to_exception()
        assert type(raised) is RemoteError
        assert isinstance(raised, ZeromeshError)
        assert raised.code == ErrorCode.REMOTE
        assert raised.remote_type == name
        assert raised.remote_message == str(exc)
        assert raised.remote_traceback == "Traceback (most recent call last):\n"
        assert "Remote traceback" in str(raised)
        assert name in str(raised)


ZEROMESH_ERRORS = [
    UnknownHandler,
    BadArguments,
    Timeout,
    NoWorkers,
    WorkerLost,
    Overloaded,
    Cancelled,
]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("cls", ZEROMESH_ERRORS)
def test_zeromesh_errors_keep_their_class(codec: Codec, cls: type[ZeromeshError]) -> None:
    err = Error.from_exception(3, cls("it failed"), codec)
    assert err.code == cls.code
    assert err.type == cls.__name__
    raised = protocol.decode(received(protocol.encode(err))).to_exception()
    assert type(raised) is cls
    assert str(raised) == "it failed"


def test_protocol_errors_keep_their_code() -> None:
    for code in (ErrorCode.PROTOCOL, ErrorCode.UNSUPPORTED_VERSION, ErrorCode.LIMIT_EXCEEDED):
        err = Error.from_exception(0, ProtocolError("nope", code))
        assert err.code == code
        raised = protocol.decode(protocol.encode(err)).to_exception()
        assert type(raised) is ProtocolError
        assert raised.code == code
        assert "nope" in str(raised)


def test_remote_error_round_trips_as_itself() -> None:
    err = Error.from_exception(1, RemoteError("ValueError", "inner", "tb"))
    raised = protocol.decode(protocol.encode(err)).to_exception()
    assert isinstance(raised, RemoteError)


def test_error_from_wire_unknown_code() -> None:
    raised = error_from_wire(999, "FutureError", "from the future", "tb")
    assert type(raised) is RemoteError
    assert (raised.remote_type, raised.remote_message, raised.remote_traceback) == (
        "FutureError",
        "from the future",
        "tb",
    )
    anonymous = error_from_wire(998, "", "no type")
    assert isinstance(anonymous, RemoteError)
    assert anonymous.remote_type == "error 998"
    # Unknown keys of a newer peer's error body are ignored.
    assert isinstance(error_from_wire(30, "E", "m", "", extra=1), RemoteError)


def test_unknown_code_travels_and_is_reported() -> None:
    body = msgpack.packb({"code": 777, "message": "new", "type": "NewThing", "future": True})
    err = protocol.decode([header(MessageType.ERROR, rid=8), body])
    assert err == Error(8, 777, "new", "NewThing")
    assert isinstance(err.to_exception(), RemoteError)


def test_error_tree() -> None:
    for cls in (ProtocolError, RemoteError, *ZEROMESH_ERRORS):
        assert issubclass(cls, ZeromeshError)
    assert issubclass(Timeout, TimeoutError)
    assert issubclass(UnknownHandler, LookupError)
    assert issubclass(BadArguments, TypeError)


def test_json_whitespace_around_the_body() -> None:
    # RFC 8259 allows whitespace around the value; anything else after it is refused.
    head = header(MessageType.REPLY, codec=Codec.JSON)
    for body in (b" [1, 2] ", b"\n[1,2]", b"[1,2]\r\n\t", b'  {"a": [1, 2]}  '):
        assert protocol.decode([head, body]).result in ([1, 2], {"a": [1, 2]})
    for body in (b"[1,2] 3", b"[1,2]]", b" ", b"[1,2] \x00"):
        refused([head, body])


def test_codec_given_as_a_plain_int() -> None:
    for value in (0, 1):
        frames = protocol.encode(Reply(1, {"a": [1]}, codec=value))  # type: ignore[arg-type]
        got = protocol.decode(frames)
        assert got.codec is Codec(value)
        assert got.result == {"a": [1]}
    with pytest.raises(ProtocolError, match="codec"):
        protocol.encode(Reply(1, 1, codec=7))  # type: ignore[arg-type]


def test_encode_from_many_threads() -> None:
    # Encoders are pooled: concurrent encodes must never share one.
    def round_trip(i: int) -> None:
        for codec in CODECS:
            for j in range(200):
                msg = Request(
                    i * 1000 + j, "t.h", [i, j, "x" * j], {"k": [i] * (j % 7)}, codec=codec
                )
                assert protocol.decode(protocol.encode(msg)) == msg

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(round_trip, range(8)))
