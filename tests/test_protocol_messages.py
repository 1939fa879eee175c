"""Every message type through encode -> frames -> decode, the header, and the errors."""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack
import numpy as np
import pytest

import protocol
from protocol import (
    FLAG_BATCH,
    HEADER_SIZE,
    PROTOCOL_VERSION,
    SIGNATURE,
    BadArguments,
    Bundle,
    Cancel,
    Cancelled,
    Codec,
    Credit,
    Disconnect,
    End,
    Error,
    ErrorCode,
    Hello,
    Item,
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
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

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
        Hello(13, bundle=True, codec=codec),
        Hello(17, streams=True, codec=codec),
        Request(18, "gen.rows", [3], {}, ttl_ms=9000, codec=codec, window=16),
        Request(19, "gen.rows", [], {}, codec=codec, trace=TRACE, window=1),
        Item(18, [1, "x", {"k": None}], codec),
        Item(18, result, codec),
        Item(18, None, codec),
        End(18, 2, codec),
        End(19, 0, codec),
        Credit(18, 8, codec),
        Credit(18, 0, codec),
        *([_bundle()] if codec is Codec.MSGPACK else []),  # MessagePack only (SPEC 7.10)
    ]


def _bundle() -> Bundle:
    inner = [Request(14, "math.add", [1, 2]), Reply(15, "x"), Error(16, ErrorCode.TIMEOUT, "t")]
    return Bundle(tuple((h, b) for h, b in (protocol.encode(m) for m in inner)))


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


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_version_whatever_the_header_size(version: int) -> None:
    # SPEC 9: bytes 0-2 keep their place in every version; a later version's header
    # may be shorter or longer than 20 bytes, and still gets UNSUPPORTED_VERSION.
    full = header(version=version, rid=42)
    long = header(version=version, rid=42, target=b"x" * 300, tlen=1)  # 320 bytes
    for frame, rid in ((full[:3], 0), (full[:13], 0), (full[:14], 42), (long, 42)):
        exc = refused([frame, b""], ErrorCode.UNSUPPORTED_VERSION)
        assert exc.request_id == rid
        assert exc.codec is Codec.MSGPACK  # the codec byte of another version means nothing
        with pytest.raises(ProtocolError) as info:
            protocol.decode_header(frame)
        assert info.value.code == ErrorCode.UNSUPPORTED_VERSION
    # Not the signature: not a zeromesh peer at all, whatever the version byte says.
    assert "zeromesh" in str(refused([b"XX" + bytes([version]), b""]))
    # Version 1, but too short or too long: a malformed v1 header.
    for frame in (header()[:3], header() + b"x" * 300):
        refused([frame, b""])


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


@pytest.mark.parametrize(
    "mtype",
    [
        t
        for t in MessageType
        # (BUNDLE: MessagePack only, tests/test_bundle.py)
        if t not in (MessageType.REQUEST, MessageType.REPLY, MessageType.ITEM, MessageType.BUNDLE)
    ],
)
def test_batch_flag_only_on_request_reply_and_item(mtype: MessageType) -> None:
    msg = next(m for m in messages(Codec.JSON) if m.TYPE is mtype)
    body = protocol.encode(msg)[1]
    assert protocol.decode([header(mtype, codec=Codec.JSON), body]).TYPE is mtype
    exc = refused([header(mtype, flags=FLAG_BATCH, codec=Codec.JSON, rid=6), body])
    assert "batch" in str(exc)
    assert (exc.request_id, exc.codec) == (6, Codec.JSON)
    with pytest.raises(ProtocolError, match="batch"):
        protocol.decode_header(header(mtype, flags=FLAG_BATCH))


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
    # bool is an int subclass in Python: still not a number on the wire (SPEC 3).
    (MessageType.ERROR, {"code": True, "message": "bool code"}),
    (MessageType.HELLO, {"pid": True}),
    (MessageType.HELLO, {"capacity": True}),
    (MessageType.HELLO, {"in_flight": False}),
    (MessageType.HELLO, {"uptime": True}),
    (MessageType.HELLO, {"heartbeat_ms": True}),
    (MessageType.READY, {}),
    (MessageType.READY, {"credit": -1}),
    (MessageType.READY, {"credit": 1.5}),
    (MessageType.READY, {"credit": True}),
    (MessageType.PROGRESS, {"done": "x"}),
    (MessageType.PROGRESS, {"total": "x"}),
    (MessageType.PROGRESS, {"done": True}),
    (MessageType.PROGRESS, {"total": False}),
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


@pytest.mark.parametrize("with_frames", [False, True])
def test_json_numbers_must_be_finite(with_frames: bool) -> None:
    # The encoder refuses NaN and infinities in JSON; so does the decoder (RFC 8259 has
    # no NaN or Infinity, and 1e999 would become infinity).
    head = header(MessageType.REPLY, codec=Codec.JSON)
    oob = [b"x"] if with_frames else []  # decoded with another JSON decoder
    for text in (
        "NaN",
        "Infinity",
        "-Infinity",
        "[1, NaN]",
        '{"a": Infinity}',
        "1e999",
        "-1E+400",
        "[0.5, 2e308]",
        "1" * 310 + ".0",
    ):
        body = f'[{text}, {{"$bytes": 0}}]' if with_frames else text
        exc = refused([head, body.encode(), *oob])
        assert exc.codec is Codec.JSON
    for text, value in (("1e308", 1e308), ("-1e-400", -0.0), ("1" * 310, int("1" * 310))):
        body = f'[{text}, {{"$bytes": 0}}]' if with_frames else text
        got = protocol.decode([head, body.encode(), *oob]).result
        assert (got[0] if with_frames else got) == value
    hello = header(MessageType.HELLO, codec=Codec.JSON)
    refused([hello, b'{"uptime": 1e999}'])


def test_protocol_error_carries_the_codec() -> None:
    # SPEC 6: a peer answers a bad message in its own codec, when the header says which.
    assert ProtocolError("x").codec is Codec.MSGPACK
    for codec in CODECS:
        for frames in (
            [header(codec=codec, rid=3), b"\xc1{"],  # malformed body
            [header(MessageType.REQUEST, codec=codec, rid=3, target=b"\xff"), b""],  # target
            [header(MessageType.REQUEST, codec=codec, rid=3, target=b"a", tlen=2), b""],
            [header(77, codec=codec, rid=3), b""],  # unknown type, known codec
        ):
            exc = refused(frames)
            assert (exc.request_id, exc.codec) == (3, codec)
    # Where the header says no (known) codec: MessagePack.
    assert refused([header(codec=9), b""]).codec is Codec.MSGPACK
    assert refused([header(codec=Codec.JSON)]).codec is Codec.MSGPACK  # header not read
    assert refused([b"XX" + header(codec=Codec.JSON)[2:], b""]).codec is Codec.MSGPACK


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
        with pytest.raises(ProtocolError, match="encode"):
            protocol.encode(Reply(1, value, codec=codec))
    if codec is Codec.JSON:
        for value in (float("nan"), float("inf"), {b"k": 1}):
            with pytest.raises(ProtocolError):
                protocol.encode(Reply(1, value, codec=codec))


OUT_OF_RANGE_INTS = [
    pytest.param(2**64, "18446744073709551616", id="2**64"),
    pytest.param(-(2**63) - 1, "-9223372036854775809", id="-2**63-1"),
    pytest.param(-(2**64), "-18446744073709551616", id="-2**64"),
    # Too long to print: Python refuses str() of an int over 4300 digits.
    pytest.param(10**5000, "of 16610 bits", id="10**5000"),
]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(("value", "shown"), OUT_OF_RANGE_INTS)
def test_encoder_refuses_ints_outside_the_wire_range_in_both_codecs(
    codec: Codec, value: int, shown: str
) -> None:
    # SPEC 4: integers are MIN_INT..MAX_INT in either codec. msgpack cannot carry more;
    # JSON could write more, but a peer decoding into 64 bits could not read it.
    assert (protocol.MIN_INT, protocol.MAX_INT) == (-(2**63), 2**64 - 1)
    where = [
        Reply(1, value, codec=codec),
        Reply(1, [1, {"deep": [0.5, value]}], codec=codec),
        Request(1, "svc.add", [value, 1], codec=codec),
        Request(1, "svc.add", [], {"a": value}, codec=codec),
    ]
    for msg in where:
        with pytest.raises(ProtocolError) as info:
            protocol.encode(msg)
        assert info.value.code is ErrorCode.PROTOCOL
        assert str(info.value) == (
            f"cannot encode value for the wire ({codec.name}): integer {shown} is out of "
            "range: zeromesh integers are -2**63..2**64-1"
        )


@pytest.mark.parametrize("codec", CODECS)
def test_ints_at_the_ends_of_the_range_and_long_digit_runs_travel(codec: Codec) -> None:
    # The JSON check looks for runs of 19+ digits; these must pass it untouched.
    values = [
        protocol.MIN_INT,
        protocol.MAX_INT,
        [protocol.MAX_INT, protocol.MIN_INT, 2**63],
        "12345678901234567890123",  # digits in a string
        {"x": 0.00012345678901234568},  # 20 digits after the point
        {"18446744073709551616": 1},
    ]
    for value in values:
        frames = received(protocol.encode(Reply(1, value, codec=codec)))
        assert protocol.decode(frames).result == value


def test_json_int_keys_travel_as_strings_whatever_their_size() -> None:
    # JSON object keys are strings (SPEC 4), so a big int key carries no integer.
    frames = received(protocol.encode(Reply(1, {2**64: 1}, codec=Codec.JSON)))
    assert protocol.decode(frames).result == {"18446744073709551616": 1}
    with pytest.raises(ProtocolError, match="integer 18446744073709551616 is out of range"):
        protocol.encode(Reply(1, {2**64: 1}))  # msgpack keeps the key an integer


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1e999]", "JSON number 1e999 is out of the float64 range"),
        ('{"a": -1e999}', "JSON number -1e999 is out of the float64 range"),
        ("[NaN]", "NaN is not a JSON number"),
        ("Infinity", "Infinity is not a JSON number"),
        ("[-Infinity]", "-Infinity is not a JSON number"),
        ("[18446744073709551616]", "integer 18446744073709551616 is out of range: zeromesh"),
        ("-9223372036854775809", "integer -9223372036854775809 is out of range: zeromesh"),
        ("[" + "9" * 5000 + "]", r"integer 9{20}\.\.\. \(5000 digits\) is out of range"),
    ],
    ids=["1e999", "-1e999", "NaN", "Infinity", "-Infinity", "2**64", "-2**63-1", "5000-digits"],
)
def test_parse_json_refuses_numbers_the_wire_does_not_carry(text: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        protocol.parse_json(text)
    with pytest.raises(ProtocolError, match=message):
        protocol.parse_json(text.encode())


def test_parse_json_reads_everything_else_as_json_does() -> None:
    text = '{"a": [18446744073709551615, -9223372036854775808, 1.5e308, -0, true, null]}'
    assert protocol.parse_json(text) == json.loads(text)
    assert protocol.parse_json(text.encode("utf-16")) == json.loads(text)
    with pytest.raises(json.JSONDecodeError, match="Expecting value"):
        protocol.parse_json("[1,")


# What the decoder refuses, the encoder refuses: a message that encodes, decodes.
UNENCODABLE: list[tuple[Any, str]] = [
    (Request(1, "a.b", [1, 2], batch=True), "batch request args"),
    (Request(1, "a.b", [[1], 2], batch=True), "item 1 is int"),
    (Request(1, "a.b", {"x": 1}), "args must be a list"),  # type: ignore[arg-type]
    (Request(1, "a.b", np.zeros(2)), "args must be a list"),  # type: ignore[arg-type]
    (Request(1, "a.b", [], [("k", 1)]), "kwargs must be a dict"),  # type: ignore[arg-type]
    (Request(1, "a.b", [], {1: 2}), "kwargs keys must be strings"),  # type: ignore[dict-item]
    (Request(1, "a.b", [], {"k": 1, None: 2}), "kwargs keys"),  # type: ignore[dict-item]
    (Request(1, b"a.b"), "target"),  # type: ignore[arg-type]
    (Reply(1, 5, batch=True), "batch reply result must be a list"),
    (Reply(1, {"a": 1}, batch=True), "batch reply result must be a list"),
    (Ready(1, -1), "credit"),
    (Ready(1, True), "credit"),
    (Ready(1, 1.0), "credit"),  # type: ignore[arg-type]
    (Error(1, True, "m"), "code"),
    (Error(1, "1", "m"), "code"),  # type: ignore[arg-type]
    (Error(1, 1, 5), "message"),  # type: ignore[arg-type]
    (Error(1, 1, "m", detail=[1]), "detail"),  # type: ignore[arg-type]
    (Hello(pid=True), "pid"),
    (Hello(pid="1"), "pid"),  # type: ignore[arg-type]
    (Hello(capacity=True), "capacity"),
    (Hello(in_flight=False), "in_flight"),
    (Hello(uptime=True), "uptime"),
    (Hello(heartbeat_ms=True), "heartbeat_ms"),
    (Hello(role=5), "role"),  # type: ignore[arg-type]
    (Hello(services={"m": "add"}), "services"),  # type: ignore[dict-item]
    (Hello(services={"m": [1]}), "services"),  # type: ignore[list-item]
    (Hello(services={1: ["a"]}), "services"),  # type: ignore[dict-item]
    (Progress(1, True), "done"),
    (Progress(1, "x"), "done"),  # type: ignore[arg-type]
    (Progress(1, 1, False), "total"),
    (Progress(1, 1, None, 5), "note"),  # type: ignore[arg-type]
    (Disconnect(reason=1), "reason"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(("msg", "why"), UNENCODABLE)
def test_encoder_refuses_what_the_decoder_refuses(msg: Any, why: str, codec: Codec) -> None:
    with pytest.raises(ProtocolError, match=why):
        protocol.encode(dataclasses.replace(msg, codec=codec))


@pytest.mark.parametrize("codec", CODECS)
def test_encoder_accepts_what_travels_as_the_right_type(codec: Codec) -> None:
    # Tuples travel as lists, numpy numbers as plain numbers, str subclasses as str.
    class Name(str):
        pass

    for msg, want in (
        (
            Request(1, "a.b", ((1,), [2]), {Name("k"): 1}, batch=True, codec=codec),
            Request(1, "a.b", [[1], [2]], {"k": 1}, batch=True, codec=codec),
        ),
        (Reply(1, (1, 2), batch=True, codec=codec), Reply(1, [1, 2], batch=True, codec=codec)),
        (
            Hello(pid=np.int64(5), uptime=np.float32(0.5), services={"m": ("a",)}, codec=codec),
            Hello(pid=5, uptime=0.5, services={"m": ["a"]}, codec=codec),
        ),
        (Progress(1, np.int8(2), np.float64(4.0), codec=codec), Progress(1, 2, 4.0, codec=codec)),
        (Ready(1, np.uint16(2), codec), Ready(1, 2, codec)),
        (Error(1, ErrorCode.TIMEOUT, "late", codec=codec), Error(1, 20, "late", codec=codec)),
    ):
        assert protocol.decode(protocol.encode(msg)) == want


def test_json_refuses_maps_that_look_like_descriptors() -> None:
    # SPEC 4: in JSON a map whose only key is "$nd" or "$bytes" is a descriptor; the
    # encoder refuses to send application data of that shape rather than corrupt it.
    for value in (
        {"$nd": 1},
        {"$bytes": 0},
        [1, {"x": {"$nd": {"dtype": "<f8", "shape": [1], "frame": 0}}}],
        [np.zeros(2), {"$bytes": 1}, b"x"],  # descriptors of its own, and one too many
        ({"$bytes": 0},),
    ):
        with pytest.raises(ProtocolError, match="use the msgpack codec, or rename") as info:
            protocol.encode(Reply(1, value, codec=Codec.JSON))
        assert info.value.code == ErrorCode.PROTOCOL
        # MessagePack has no reserved maps: the same value travels.
        got = protocol.decode(protocol.encode(Reply(1, value))).result
        if not isinstance(value, list) or not isinstance(value[0], np.ndarray):
            assert got == (list(value) if isinstance(value, tuple) else value)
    with pytest.raises(ProtocolError, match="msgpack"):
        protocol.encode(Request(1, "a.b", [], {"$nd": 1}, codec=Codec.JSON))
    # Other keys beside it, the key as a value or inside a string: ordinary data.
    for value in (
        {"$nd": 1, "x": 2},
        {"x": 2, "$bytes": 0},
        ["$nd", {"k": "$bytes"}],
        '{"$nd": 1}',
        {'{"$nd":': '{"$bytes":'},
    ):
        assert protocol.decode(protocol.encode(Reply(1, value, codec=Codec.JSON))).result == value
    frames = protocol.encode(Reply(1, [np.ones(2), b"x", {"$ndx": 1}], codec=Codec.JSON))
    arr, raw, plain = protocol.decode(received(frames)).result
    assert (arr.tolist(), raw, plain) == ([1.0, 1.0], b"x", {"$ndx": 1})


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


# --- SPEC section 6: what a failed header still says; 7.1: every ERROR names a type --------


_ERROR_HEADER = bytes.fromhex("5a4d010300000000000000000063000000000000")  # ERROR, id 99
_V2 = _ERROR_HEADER[:2] + b"\x02" + _ERROR_HEADER[3:]


@pytest.mark.parametrize(
    ("frame", "code", "rid", "codec"),
    [
        (_ERROR_HEADER[:19], ErrorCode.PROTOCOL, 99, Codec.MSGPACK),  # short, id readable
        (_ERROR_HEADER[:13], ErrorCode.PROTOCOL, 0, Codec.MSGPACK),  # id cut off
        (_ERROR_HEADER[:4] + b"\x01" + _ERROR_HEADER[5:19], ErrorCode.PROTOCOL, 99, Codec.JSON),
        (_ERROR_HEADER[:4] + b"\x09" + _ERROR_HEADER[5:], ErrorCode.PROTOCOL, 99, Codec.MSGPACK),
        (
            _ERROR_HEADER[:2] + b"\x02" + _ERROR_HEADER[3:],
            ErrorCode.UNSUPPORTED_VERSION,
            99,
            Codec.MSGPACK,
        ),
        (_ERROR_HEADER + bytes(300), ErrorCode.PROTOCOL, 99, Codec.MSGPACK),  # too long
        (b"XX" + _ERROR_HEADER[2:], ErrorCode.PROTOCOL, 0, Codec.MSGPACK),  # not zeromesh
    ],
)
def test_a_failed_header_carries_the_id_and_codec_it_holds(
    frame: bytes, code: ErrorCode, rid: int, codec: Codec
) -> None:
    with pytest.raises(ProtocolError) as failed:
        protocol.decode([frame, b""])
    assert (failed.value.code, failed.value.request_id, failed.value.codec) == (code, rid, codec)


def test_a_header_that_names_an_answer_is_never_answered() -> None:
    for frame in (_ERROR_HEADER, _ERROR_HEADER[:19], _ERROR_HEADER[:4]):
        assert protocol.header_type(frame) is MessageType.ERROR
        exc = ProtocolError("anything")
        assert protocol.refusal(exc, frame) is None
    # A header of another version names no type we know: answered UNSUPPORTED_VERSION.
    assert protocol.header_type(_V2) is None
    assert protocol.header_type(b"ZM") is None
    request = protocol.encode(Request(5, "a.b", [], {}))[0]
    answer = protocol.refusal(ProtocolError("bad body"), request)
    assert answer is not None
    assert answer.type == "ProtocolError"


@pytest.mark.parametrize(
    ("code", "name"),
    [
        (ErrorCode.UNKNOWN_HANDLER, "UnknownHandler"),
        (ErrorCode.BAD_ARGUMENTS, "BadArguments"),
        (ErrorCode.FORBIDDEN, "Forbidden"),
        (ErrorCode.LIMIT_EXCEEDED, "ProtocolError"),
        (ErrorCode.DRAINING, "WorkerLost"),
        (ErrorCode.REMOTE, "RemoteError"),
        (99, "RemoteError"),
    ],
)
def test_every_error_names_a_type(code: int, name: str) -> None:
    err = Error(1, code, "m")
    assert err.type == name
    body = msgpack.unpackb(protocol.encode(err)[1])
    assert body["type"] == name
    assert Error(1, ErrorCode.REMOTE, "m", "ValueError").type == "ValueError"


def test_numbers_keep_their_kind_and_their_exact_value() -> None:
    header = protocol.encode(Reply(1, None, Codec.JSON))[0]
    big = 2**63 + 5  # beyond a double's 2**53: exact, not rounded
    got = protocol.decode([header, f"[{big}, 2, 2.0, 2e0, -{2**63}]".encode()]).result
    assert got == [big, 2, 2.0, 2.0, -(2**63)]
    assert [type(v) for v in got] == [int, int, float, float, int]
    hello = protocol.encode(Hello(1, codec=Codec.JSON))[0]
    assert protocol.decode([hello, b'{"uptime": 3}']).uptime == 3.0  # an integer will do


@pytest.mark.parametrize("dtype", ["<M8", "<m8", "<M8[0ns]", "<m8[00s]"])
def test_datetime_arrays_need_a_unit_of_at_least_one(dtype: str) -> None:
    header = protocol.encode(Reply(1, None, Codec.JSON))[0]
    body = json.dumps({"$nd": {"dtype": dtype, "shape": [1], "frame": 0}}).encode()
    with pytest.raises(ProtocolError, match="need a unit"):
        protocol.decode([header, body, bytes(8)])
    with pytest.raises(ProtocolError, match="need a unit"):
        protocol.encode(Reply(1, np.zeros(1, dtype=dtype.split("[")[0])))
    ok = json.dumps({"$nd": {"dtype": "<m8[ns]", "shape": [1], "frame": 0, "later": 1}})
    assert protocol.decode([header, ok.encode(), bytes(8)]).result.dtype == np.dtype("m8[ns]")


def test_target_and_ttl_belong_to_requests_only() -> None:
    """SPEC section 2: a REQUEST without a target is PROTOCOL (with its id); on other
    types a receiver ignores ttl_ms and a target (the size check still counts it)."""
    request = protocol.encode(Request(5, "a.b", [], {}))
    no_target = request[0][:18] + b"\x00\x00"
    with pytest.raises(ProtocolError) as failed:
        protocol.decode([no_target, request[1]])
    assert (failed.value.code, failed.value.request_id) == (ErrorCode.PROTOCOL, 5)
    ping = bytearray(protocol.encode(Ping(7))[0])
    struct.pack_into("!IH", ping, 14, 1234, 3)  # ttl_ms 1234, a 3-byte target
    assert protocol.decode([bytes(ping) + b"x.y", b""]) == Ping(7)
