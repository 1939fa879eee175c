"""Hostile input: the decoder raises ProtocolError and nothing else, and allocates little.

A peer controls every byte of every frame. Whatever it sends, `protocol.decode` must
answer with a `ProtocolError` (which the shells turn into an ERROR reply) or a valid
message — never another exception, never a hang, never a large allocation that the
limits should have stopped.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import random
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol
from protocol import (
    Cancel,
    Codec,
    Disconnect,
    Error,
    ErrorCode,
    Hello,
    Limits,
    MessageType,
    Ping,
    Progress,
    ProtocolError,
    Ready,
    Reply,
    Request,
)

_HEADER = struct.Struct("!2sBBBBQIH")
_MiB = 1024 * 1024
PEAK_BUDGET = 10 * _MiB


# --- the property ---------------------------------------------------------------------


def check_decode(frames: list[Any], limits: Limits = protocol.DEFAULT_LIMITS) -> None:
    """decode() gives a message or a ProtocolError; a message re-encodes or refuses."""
    try:
        msg = protocol.decode(frames, limits)
    except ProtocolError as exc:
        error = exc
    else:
        assert type(msg).TYPE in set(MessageType)
        # What decodes re-encodes, or is refused (a lone surrogate in JSON ...).
        with contextlib.suppress(ProtocolError):
            protocol.encode(msg)
        return
    assert isinstance(error.code, ErrorCode)
    assert 0 <= error.request_id < 2**64
    assert str(error)


# --- strategies -------------------------------------------------------------------------

SAMPLES: list[Any] = []
for _codec in Codec:
    SAMPLES += [
        Request(1, "math.add", [1, 2], {"k": "v"}, ttl_ms=100, codec=_codec),
        Request(2, "np.sum", [np.arange(6, dtype=">i4").reshape(2, 3)], codec=_codec),
        Request(3, "svc.batch", [[1], [np.zeros(2)]], codec=_codec, batch=True),
        Reply(4, {"a": [1.5, None, "ü", b"\x00"], "arr": np.ones(3, np.float16)}, codec=_codec),
        Error(5, ErrorCode.REMOTE, "boom", "ValueError", "tb", {"index": 1}, _codec),
        Hello(6, role="worker", services={"m": ["a"]}, capacity=2, uptime=1.5, codec=_codec),
        Ready(7, 3, _codec),
        Progress(8, 1, 2, "x", _codec),
        Disconnect(9, "bye", _codec),
        Ping(10, _codec),
        Cancel(11, _codec),
    ]
SAMPLE_FRAMES = [[bytes(memoryview(f)) for f in protocol.encode(m)] for m in SAMPLES]

DTYPES = ["<f8", ">i4", "|b1", "|u1", "<c16", "<M8[ns]", ">m8[s]", "<f2", "|O", "<U3", "|V4", "x"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.binary(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
descriptors = st.tuples(
    st.sampled_from(DTYPES),
    st.lists(st.integers(-2, 4), max_size=3) | st.integers(-1, 3) | st.none(),
    st.integers(-1, 3) | st.text(max_size=2),
)


def msgpack_descriptor(desc: tuple[Any, Any, Any]) -> Any:
    return msgpack.ExtType(1, msgpack.packb(list(desc)))


def json_descriptor(desc: tuple[Any, Any, Any]) -> Any:
    return {"$nd": {"dtype": desc[0], "shape": desc[1], "frame": desc[2]}}


def packed(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def jsoned(value: Any) -> bytes:
    def default(obj: Any) -> Any:
        return obj.hex() if isinstance(obj, bytes) else repr(obj)

    return json.dumps(value, default=default).encode("utf-8", "surrogatepass")


msgpack_bodies = st.one_of(
    values.map(packed),
    st.tuples(
        st.lists(values, max_size=3), st.dictionaries(st.text(max_size=3), values, max_size=3)
    ).map(lambda ak: packed(list(ak))),
    descriptors.map(lambda d: packed([[msgpack_descriptor(d)], {}])),
    descriptors.map(lambda d: packed(msgpack_descriptor(d))),
)
json_bodies = st.one_of(
    values.map(jsoned),
    descriptors.map(lambda d: jsoned([[json_descriptor(d)], {}])),
    st.integers(-1, 3).map(lambda i: jsoned({"$bytes": i})),
)
random_bytes = st.binary(max_size=48)


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    """Header frames: mostly valid, with any one field possibly wrong."""
    target = draw(st.sampled_from([b"", b"a.b", b"math.add", b"\xff\xfe"]) | st.binary(max_size=6))
    tlen = len(target) + draw(st.sampled_from([0] * 12 + [-1, 1, 300]))
    return (
        _HEADER.pack(
            draw(st.sampled_from([b"ZM"] * 9 + [b"MZ"])),
            draw(st.sampled_from([1] * 9 + [0, 2])),
            draw(st.integers(0, 11)),
            draw(st.sampled_from([0, 1, 0, 1, 2])),
            draw(st.sampled_from([0] * 4 + [1, 1, 2, 0x80])),
            draw(st.integers(0, 2**64 - 1)),
            draw(st.integers(0, 2**32 - 1)),
            max(0, min(tlen, 0xFFFF)),
        )
        + target
    )


oob_frames = st.lists(st.binary(max_size=24), max_size=3)
structured = st.builds(
    lambda head, body, oob: [head, body, *oob],
    headers(),
    st.one_of(msgpack_bodies, json_bodies, random_bytes, st.just(b"")),
    oob_frames,
)
pure_random = st.lists(st.binary(max_size=40), max_size=5)


@st.composite
def mutated(draw: st.DrawFn) -> list[bytes]:
    """A valid encoded message with a few bytes or frames changed."""
    frames = [bytearray(f) for f in draw(st.sampled_from(SAMPLE_FRAMES))]
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "set", "set", "cut", "insert", "drop", "copy"]))
        i = draw(st.integers(0, len(frames) - 1)) if frames else 0
        if op == "drop" and frames:
            del frames[i]
        elif op == "copy" and frames:
            frames.insert(i, bytearray(frames[i]))
        elif frames:
            frame = frames[i]
            pos = draw(st.integers(0, len(frame)))
            if op == "set" and pos < len(frame):
                frame[pos] = draw(st.integers(0, 255))
            elif op == "cut":
                del frame[pos:]
            else:
                frame[pos:pos] = draw(st.binary(min_size=1, max_size=4))
    return [bytes(f) for f in frames]


any_frames = st.one_of(pure_random, structured, mutated())


# --- cheap, deep fuzz cases --------------------------------------------------------------
# Hypothesis costs about a millisecond per example on a small machine, most of it per
# draw. The 10,000-example property therefore draws two values only (an int and a
# blob) and builds frames from them in plain Python: random frames, valid headers with
# bodies spelled from codec tokens (so they parse deep into descriptors and field
# checks), and valid messages with bytes overwritten, inserted or cut.


def _ext_descriptor(dtype: str, shape: list[int], frame: int) -> bytes:
    return packed(msgpack.ExtType(1, packed([dtype, shape, frame])))


MSGPACK_TOKENS: list[bytes] = [
    *(bytes([0x90 + n]) for n in range(4)),  # fixarray 0..3
    *(bytes([0x80 + n]) for n in range(3)),  # fixmap 0..2
    b"\xc0", b"\xc2", b"\xc3", b"\x00", b"\x01", b"\x7f", b"\xff", b"\xcc\xff", b"\xd0\x80",
    b"\xcf" + b"\xff" * 8, b"\xd3\x80" + b"\x00" * 7, packed(1.5), packed(float("nan")),
    b"\xa0", b"\xa1k", packed("<f8"), packed("|u1"), packed(">i4"), packed("<M8[ns]"),
    packed("code"), packed("message"), packed("services"), packed("credit"), packed("uptime"),
    packed("total"), packed("detail"), packed("type"), b"\xa2\xff\xfe", b"\xc4\x02ab",
    b"\xdc\x00\x02", b"\xde\x00\x01", b"\xdd\xff\xff\xff\xff", b"\xdf\x7f\xff\xff\xff",
    b"\xdb\x7f\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xd9\x40", b"\xc1",
    b"\xd4\x01", b"\xd5\x01", b"\xd6\x01", b"\xd7\x01", b"\xd8\x01", b"\xc7\x03\x01",
    b"\xc7\x00\x01", b"\xd4\x02\x00", b"\xd6\xff\x00\x00\x00\x01",  # timestamp ext
    _ext_descriptor("<f8", [1], 0), _ext_descriptor("|u1", [2, 4], 0),
    _ext_descriptor(">i4", [], 1), _ext_descriptor("<f8", [-1], 0),
    _ext_descriptor("|O", [1], 0), _ext_descriptor("<c16", [0, 3], 2),
]  # fmt: skip
JSON_TOKENS: list[bytes] = [
    b"[", b"]", b"{", b"}", b",", b":", b" ", b'"$nd"', b'"$bytes"', b'"dtype"', b'"shape"',
    b'"frame"', b'"<f8"', b'"|u1"', b'"<M8[s]"', b'"|O"', b'"x"', b'"code"', b'"message"',
    b'"services"', b'"credit"', b'"uptime"', b'"done"', b'"total"', b'"detail"', b'"role"',
    b"0", b"1", b"-1", b"8", b"2.5", b"1e999", b"-0", b"NaN", b"Infinity", b"null", b"true",
    b"false", b'"\\ud800"', b'"\\u00e9"', b"1" * 40, b"9" * 400, b'"\xc3\xa9"', b"\xff",
]  # fmt: skip

HEADERS: list[bytes] = [
    _HEADER.pack(b"ZM", 1, mtype, codec, flags, 77, 0, len(target)) + target
    for mtype in MessageType
    for codec in (0, 1)
    for flags in (0, 1)
    for target in ([b"a.b"] if mtype is MessageType.REQUEST else [b""])
]


def build_case(n: int, blob: bytes) -> list[bytes]:
    """Frames for fuzz case ``(n, blob)``: ``n`` picks the shape, ``blob`` the bytes."""
    kind, n = n % 6, n // 6
    if kind == 0:  # random frames: blob cut where n's bits say
        frames, start = [], 0
        for end in range(1, len(blob) + 1):
            if n >> (end % 30) & 1 or end == len(blob):
                frames.append(blob[start:end])
                start = end
        return frames
    oob = [b"\0" * (8 * ((n >> (3 + 3 * i)) & 3)) for i in range((n >> 1) & 3)]
    if kind in (1, 2):  # a valid header and a body spelled from codec tokens
        codec = kind - 1
        tokens = JSON_TOKENS if codec else MSGPACK_TOKENS
        head = HEADERS[(n >> 12) % len(HEADERS)]
        head = head[:4] + bytes([codec]) + head[5:]
        return [head, b"".join(tokens[b % len(tokens)] for b in blob), *oob]
    if kind == 3:  # a valid header and random bytes
        return [HEADERS[(n >> 12) % len(HEADERS)], blob, *oob]
    frames = [bytearray(f) for f in SAMPLE_FRAMES[(n >> 12) % len(SAMPLE_FRAMES)]]
    if kind == 4:  # bytes overwritten: (frame, position, value) from the blob
        for i in range(0, len(blob) - 2, 3):
            frame = frames[blob[i] % len(frames)]
            if frame:
                frame[blob[i + 1] % len(frame)] = blob[i + 2]
    else:  # bytes inserted or cut, frames dropped or repeated
        which = n % len(frames)
        frame = frames[which]
        pos = blob[0] % (len(frame) + 1) if blob else 0
        op = (n >> 5) % 4
        if op == 0:
            frame[pos:pos] = blob[1:]
        elif op == 1:
            del frame[pos:]
        elif op == 2:
            del frames[which]
        else:
            frames.insert(which, frame)
    return [bytes(f) for f in frames]


fuzz_cases = st.tuples(st.integers(0, 2**40), st.binary(max_size=48))


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=10_000)
@given(fuzz_cases)
def test_decode_raises_only_protocol_error(case: tuple[int, bytes]) -> None:
    check_decode(build_case(*case))


@settings(max_examples=200)
@given(any_frames)
def test_structured_frames(frames: list[bytes]) -> None:
    check_decode(frames)


@settings(max_examples=200)
@given(headers(), st.one_of(msgpack_bodies, json_bodies), oob_frames)
def test_valid_header_random_body(head: bytes, body: bytes, oob: list[bytes]) -> None:
    check_decode([head, body, *oob])


@settings(max_examples=200)
@given(mutated())
def test_mutated_valid_messages(frames: list[bytes]) -> None:
    check_decode(frames)
    check_decode([memoryview(bytearray(f)) for f in frames])


def test_every_fuzz_kind_reaches_a_message_and_an_error() -> None:
    # The cheap builder must reach deep code: bodies that decode, and bodies that fail.
    rng = random.Random(1)
    decoded, refused_codes = set(), set()
    for _ in range(3000):
        frames = build_case(rng.randrange(2**40), rng.randbytes(rng.randrange(48)))
        try:
            decoded.add(type(protocol.decode(frames)))
        except ProtocolError as exc:
            refused_codes.add(exc.code)
    assert len(decoded) >= 8
    assert {ErrorCode.PROTOCOL, ErrorCode.UNSUPPORTED_VERSION} <= refused_codes


@settings(max_examples=200)
@given(fuzz_cases, st.integers(2, 6), st.integers(1, 40), st.integers(1, 6))
def test_tight_custom_limits(
    case: tuple[int, bytes], max_frames: int, size: int, depth: int
) -> None:
    limits = Limits(
        max_frames=max_frames,
        max_body_bytes=size,
        max_message_bytes=size * 2,
        max_depth=depth,
        max_str_len=size // 2 + 1,
        max_bin_len=size // 2 + 1,
        max_array_len=depth,
        max_map_len=depth,
        max_ndim=depth,
    )
    check_decode(build_case(*case), limits)


@settings(max_examples=200)
@given(values, st.sampled_from(list(Codec)))
def test_encodable_values_round_trip(value: Any, codec: Codec) -> None:
    if codec is Codec.JSON and has_reserved_map(value):
        # SPEC 4: a one-key map {"$nd": ...} or {"$bytes": ...} is a descriptor in JSON,
        # with no escape; the encoder refuses such application data in JSON.
        with pytest.raises(ProtocolError):
            protocol.encode(Reply(1, value, codec=codec))
        return
    try:
        frames = protocol.encode(Reply(1, value, codec=codec))
    except ProtocolError:
        return  # e.g. NaN, bytes keys or a lone surrogate in JSON
    got = protocol.decode(frames).result
    if codec is Codec.MSGPACK:  # JSON turns bytes into out-of-band frames, keys into str
        assert packed(got) == packed(value)


def has_reserved_map(value: Any) -> bool:
    if isinstance(value, list):
        return any(has_reserved_map(v) for v in value)
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in ("$nd", "$bytes"):
            return True
        return any(has_reserved_map(v) for v in value.values())
    return False


# --- limits, hand-crafted -------------------------------------------------------------


@contextmanager
def peak_memory(budget: int = PEAK_BUDGET) -> Iterator[None]:
    """Fail if the block allocates more than ``budget`` bytes at its peak."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < budget, f"peak allocation {peak / _MiB:.1f} MiB"


def reply_head(codec: Codec = Codec.MSGPACK) -> bytes:
    return protocol.encode(Reply(1, None, codec=codec))[0]


def refused(frames: list[Any], code: ErrorCode | None = None, **kw: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        protocol.decode(frames, **kw)
    if code is not None:
        assert info.value.code == code, info.value
    return info.value


def test_deep_nesting_msgpack_100000_levels() -> None:
    deep_lists = b"\x91" * 100_000 + b"\xc0"
    deep_maps = b"\x81\xc0" * 100_000 + b"\xc0"
    for body in (deep_lists, deep_maps):
        with peak_memory():
            # Past msgpack's own 1024-level stack (SPEC 8: reported as PROTOCOL).
            refused([reply_head(), body], ErrorCode.PROTOCOL)


def test_deep_nesting_json_100000_levels() -> None:
    deep_lists = b"[" * 100_000 + b"]" * 100_000
    deep_maps = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    unclosed = b"[" * 100_000
    for body in (deep_lists, deep_maps, unclosed):
        with peak_memory():
            refused([reply_head(Codec.JSON), body], ErrorCode.LIMIT_EXCEEDED)


@pytest.mark.parametrize("codec", list(Codec))
def test_max_depth(codec: Codec) -> None:
    def nested(depth: int, leaf: Any = 1) -> Any:
        value = leaf
        for level in range(depth):
            value = [value] if level % 2 else {"k": value}
        return value

    limit = protocol.DEFAULT_LIMITS.max_depth
    ok = protocol.encode(Reply(1, nested(limit), codec=codec))
    assert protocol.decode(ok).result == nested(limit)
    too_deep = protocol.encode(Reply(1, nested(limit + 1), codec=codec))
    refused(too_deep, ErrorCode.LIMIT_EXCEEDED)
    # A custom depth, also for bodies shorter than the default limit.
    for depth in (1, 2, 3):
        frames = protocol.encode(Reply(1, nested(depth + 1, leaf=[]), codec=codec))
        refused(frames, ErrorCode.LIMIT_EXCEEDED, limits=Limits(max_depth=depth + 1))
        assert protocol.decode(frames, Limits(max_depth=depth + 2))


_nested = st.recursive(
    st.integers(0, 3) | st.text(max_size=2),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=2), kids, max_size=3)
    ),
    max_leaves=60,
)


def _depth(value: Any) -> int:
    """Levels of containers, counted the plain recursive way."""
    if type(value) is list:
        return 1 + max(map(_depth, value), default=0)
    if type(value) is dict:
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


@settings(max_examples=300)
@given(_nested, st.integers(1, 8))
def test_decode_refuses_exactly_the_bodies_deeper_than_max_depth(value: Any, limit: int) -> None:
    # The depth check walks a body level by level, taking a level of all lists (or all
    # maps) whole: it must agree with plain recursion on any mix of lists and maps.
    frames = protocol.encode(Reply(1, value))
    limits = Limits(max_depth=limit)
    if _depth(value) > limit:
        refused(frames, ErrorCode.LIMIT_EXCEEDED, limits=limits)
    else:
        assert protocol.decode(frames, limits).result == value


BIG_CLAIMS = {
    "str32": b"\xdb",
    "bin32": b"\xc6",
    "array32": b"\xdd",
    "map32": b"\xdf",
    "ext32": b"\xc9",
}


@pytest.mark.parametrize("count", [2**31, 2**32 - 1, 4 * _MiB - 1, _MiB - 1, 64 * _MiB - 1])
@pytest.mark.parametrize("kind", list(BIG_CLAIMS))
def test_length_claims_in_a_tiny_body(kind: str, count: int) -> None:
    body = BIG_CLAIMS[kind] + count.to_bytes(4, "big") + b"\x01" * 16
    generous = Limits(max_str_len=2**40, max_bin_len=2**40, max_array_len=2**40, max_map_len=2**40)
    for limits in (protocol.DEFAULT_LIMITS, generous):
        with peak_memory():
            refused([reply_head(), body], ErrorCode.PROTOCOL, limits=limits)
    # Nested claims: each level would pre-size a container if nothing stopped it.
    nested = (BIG_CLAIMS[kind] + count.to_bytes(4, "big")) * 1000
    with peak_memory():
        refused([reply_head(), nested], ErrorCode.PROTOCOL)


def test_body_above_max_body_bytes() -> None:
    body = b"\x00" * (64 * _MiB + 1)
    with peak_memory(_MiB):
        exc = refused([reply_head(), body], ErrorCode.LIMIT_EXCEEDED)
    assert exc.request_id == 1
    small = Limits(max_body_bytes=100)
    refused([reply_head(), packed("x" * 100)], ErrorCode.LIMIT_EXCEEDED, limits=small)
    assert protocol.decode([reply_head(), packed("x" * 97)], small).result == "x" * 97


def test_too_many_frames() -> None:
    frames = [*protocol.encode(Reply(1, None)), *[b""] * 1025]
    with peak_memory(_MiB):
        refused(frames, ErrorCode.LIMIT_EXCEEDED)
    assert protocol.decode(frames[:-1]).result is None  # 1026 frames: the default maximum
    arr = np.zeros(2)
    two = protocol.encode(Reply(1, [arr, arr]))
    refused(two, ErrorCode.LIMIT_EXCEEDED, limits=Limits(max_frames=3))
    assert len(protocol.decode(two, Limits(max_frames=4)).result) == 2


def test_total_size_above_limit() -> None:
    # An anonymous mapping is reserved, not touched: a 1 GiB frame that costs no memory.
    with mmap.mmap(-1, 1024 * _MiB) as big:
        view = memoryview(big)
        frames = [reply_head(), packed([msgpack.ExtType(1, packed(["|u1", [1024 * _MiB], 0]))])]
        try:
            with peak_memory(_MiB):
                refused([*frames, view, b"x"], ErrorCode.LIMIT_EXCEEDED)
        finally:
            view.release()
    arr = np.zeros(1000, np.uint8)
    frames = protocol.encode(Reply(1, arr))
    refused(frames, ErrorCode.LIMIT_EXCEEDED, limits=Limits(max_message_bytes=1000))
    assert protocol.decode(frames, Limits(max_message_bytes=1100)).result.size == 1000


LENGTHS: dict[str, tuple[str, Callable[[int], Any]]] = {
    "str": ("max_str_len", lambda n: "é" * (n // 2) + "x" * (n % 2)),  # n bytes of UTF-8
    "bin": ("max_bin_len", lambda n: b"x" * n),
    "array": ("max_array_len", lambda n: list(range(n))),
    "map": ("max_map_len", lambda n: {f"k{i}": i for i in range(n)}),
}


@pytest.mark.parametrize(
    ("kind", "codec"),
    # JSON bytes travel out of band, bounded by max_message_bytes, not max_bin_len.
    [(k, c) for k in LENGTHS for c in Codec if (k, c) != ("bin", Codec.JSON)],
)
@pytest.mark.parametrize("limit", [1, 5, 40, 1000])
def test_custom_length_limits(kind: str, limit: int, codec: Codec) -> None:
    name, make = LENGTHS[kind]
    limits = Limits(**{name: limit})
    at_limit = protocol.encode(Reply(1, [make(limit)], codec=codec))
    assert protocol.decode(at_limit, limits).result == [make(limit)]
    over = protocol.encode(Reply(1, [make(limit + 1)], codec=codec))
    # SPEC 8: MessagePack reports its own length limits as PROTOCOL, JSON as LIMIT_EXCEEDED.
    code = ErrorCode.PROTOCOL if codec is Codec.MSGPACK else ErrorCode.LIMIT_EXCEEDED
    refused(over, code, limits=limits)
    # Also as a map key, for strings.
    if kind == "str":
        refused(protocol.encode(Reply(1, {make(limit + 1): 1}, codec=codec)), limits=limits)


def test_limits_validate_themselves() -> None:
    for bad in ({"max_frames": 1}, {"max_depth": 0}, {"max_body_bytes": -1}, {"max_ndim": 1.5}):
        with pytest.raises(ValueError, match="Limits"):
            Limits(**bad)
