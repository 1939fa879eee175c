"""numpy arrays as out-of-band frames: every dtype, every layout, and no copies."""

from __future__ import annotations

import json
import math
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgpack
import numpy as np
import pytest

import protocol
from protocol import Codec, ErrorCode, Limits, ProtocolError, Reply, Request

CODECS = list(Codec)

NUMERIC = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
    "datetime64[ns]",
    "datetime64[D]",
    "datetime64[s]",
    "timedelta64[us]",
    "timedelta64[h]",
]
BYTE_ORDERS = ["<", ">"]
SHAPES: list[tuple[int, ...]] = [(), (0,), (3, 0, 2), (7,), (2, 3, 4)]
_MiB = 1024 * 1024


def dtype_of(name: str, order: str) -> np.dtype:
    dt = np.dtype(name)
    return dt if dt.itemsize == 1 else dt.newbyteorder(order)


def sample(dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """Distinct, exact values of ``dtype`` (no NaN: equality must hold)."""
    count = math.prod(shape)
    base = np.arange(count, dtype=np.int64) * 7 - 3
    if dtype.kind == "b":
        values = (base % 3 == 0).astype(dtype)
    elif dtype.kind == "u":
        values = (base % 200 + 3).astype(dtype)
    elif dtype.kind == "c":
        values = (base + 1j * base[::-1]).astype(dtype) if count else np.zeros(0, dtype)
    elif dtype.kind in "iuf":
        values = (base % 100).astype(dtype)
    else:  # datetime64 / timedelta64: the int64 count of units
        values = (base * 1000).astype(np.int64).view(dtype.newbyteorder("="))
        values = values.astype(dtype)
    return values.reshape(shape)


def to_receiver(frames: list[Any], kind: str = "bytearray") -> list[Any]:
    """Frames as the receiving socket hands them over: ``bytes`` from
    ``recv_multipart()``, or the writable buffer of a zmq.Frame from
    ``recv_multipart(copy=False)`` (a ``bytearray``, or a memoryview of one)."""
    # Through memoryview: bytes(x) of a 0-d integer array would read it as a length.
    if kind == "bytes":
        return [bytes(memoryview(f)) for f in frames]
    if kind == "bytearray":
        return [bytearray(memoryview(f)) for f in frames]
    return [memoryview(bytearray(memoryview(f))) for f in frames]


def frame_bytes(frame: Any) -> np.ndarray:
    """The frame's memory as uint8, without a copy."""
    return np.frombuffer(frame, dtype=np.uint8)


def assert_same_array(got: Any, want: np.ndarray) -> None:
    assert isinstance(got, np.ndarray)
    assert got.dtype == want.dtype
    assert got.dtype.str == want.dtype.str  # byte order survives
    assert got.shape == want.shape
    assert np.array_equal(got, want)
    assert got.flags.c_contiguous


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("order", BYTE_ORDERS)
@pytest.mark.parametrize("name", NUMERIC)
def test_every_numeric_dtype_round_trips(name: str, order: str, codec: Codec) -> None:
    dtype = dtype_of(name, order)
    for shape in SHAPES:
        arr = sample(dtype, shape)
        frames = protocol.encode(Reply(1, arr, codec=codec))
        assert len(frames) == 3
        for kind in ("bytes", "bytearray", "memoryview"):
            got = protocol.decode(to_receiver(frames, kind)).result
            assert_same_array(got, arr)


@pytest.mark.parametrize("codec", CODECS)
def test_descriptor_form(codec: Codec) -> None:
    arr = np.zeros((2, 3), dtype=">f4")
    frames = protocol.encode(Reply(1, arr, codec=codec))
    if codec is Codec.MSGPACK:
        ext = msgpack.unpackb(frames[1])
        assert ext.code == 1
        assert msgpack.unpackb(ext.data) == [">f4", [2, 3], 0]
    else:
        assert json.loads(frames[1]) == {"$nd": {"dtype": ">f4", "shape": [2, 3], "frame": 0}}
    assert memoryview(frames[2]).nbytes == 24
    assert frames[2] is arr  # the array itself, for send(copy=False)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("name", NUMERIC)
def test_encoder_passes_the_arrays_own_buffer(name: str, codec: Codec) -> None:
    arr = sample(np.dtype(name), (64, 3))
    frames = protocol.encode(Request(1, "a.b", [arr], codec=codec))
    oob = frames[2]
    assert np.shares_memory(frame_bytes(oob), arr)
    assert memoryview(oob).nbytes == arr.nbytes


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("name", NUMERIC)
def test_decoded_array_shares_memory_with_its_frame(name: str, codec: Codec) -> None:
    # >= 64 KiB, like the frames zmq hands over in their own (aligned) buffers.
    arr = sample(np.dtype(name), (256, 256))
    frames = protocol.encode(Request(1, "a.b", [arr], codec=codec))
    got = to_receiver(frames, "bytearray")
    assert np.frombuffer(got[2], np.uint8).ctypes.data % arr.dtype.alignment == 0
    out = protocol.decode(got).args[0]
    assert_same_array(out, arr)
    assert np.shares_memory(out, frame_bytes(got[2]))
    assert out.flags.writeable  # the frame was writable, so is the array
    # Read-only bytes, as from plain recv_multipart(): still no copy.
    ro = to_receiver(frames, "bytes")
    out_ro = protocol.decode(ro).args[0]
    assert np.shares_memory(out_ro, frame_bytes(ro[2]))
    assert not out_ro.flags.writeable


@pytest.mark.parametrize("name", [n for n in NUMERIC if np.dtype(n).alignment > 1])
def test_misaligned_small_frame_is_copied(name: str) -> None:
    # Small frames come out of libzmq's shared receive buffer at any offset.
    arr = sample(np.dtype(name), (5,))
    frames = protocol.encode(Reply(1, arr))
    buf = bytearray(arr.nbytes + 1)
    misaligned = memoryview(buf)[1:]
    misaligned[:] = bytes(memoryview(frames[2]).cast("B"))
    out = protocol.decode([frames[0], frames[1], misaligned]).result
    assert_same_array(out, arr)
    assert out.flags.aligned
    assert not np.shares_memory(out, frame_bytes(buf))


@pytest.mark.parametrize("name", ["bool", "int8", "uint8"])
def test_one_byte_items_are_never_misaligned(name: str) -> None:
    arr = sample(np.dtype(name), (5,))
    frames = protocol.encode(Reply(1, arr))
    buf = bytearray(arr.nbytes + 1)
    buf[1:] = bytes(memoryview(frames[2]).cast("B"))
    out = protocol.decode([frames[0], frames[1], memoryview(buf)[1:]]).result
    assert_same_array(out, arr)
    assert np.shares_memory(out, frame_bytes(buf))


@pytest.mark.parametrize("codec", CODECS)
def test_large_array_64_mib(codec: Codec) -> None:
    arr = np.arange(64 * _MiB // 8, dtype=np.float64)
    frames = protocol.encode(Request(1, "np.sum", [arr], {"scale": arr[:3].copy()}, codec=codec))
    assert len(frames) == 4
    assert np.shares_memory(frame_bytes(frames[2]), arr)
    assert len(frames[1]) < 200  # the body holds only descriptors
    got = [frames[0], frames[1], bytearray(frames[2]), bytearray(frames[3])]
    msg = protocol.decode(got)
    assert np.shares_memory(msg.args[0], frame_bytes(got[2]))
    assert_same_array(msg.args[0], arr)
    assert_same_array(msg.kwargs["scale"], arr[:3])


NON_CONTIGUOUS = {
    "step slice": lambda a: a[::2],
    "reversed": lambda a: a[::-1],
    "transposed": lambda a: a.reshape(6, 4).T,
    "fortran": lambda a: np.asfortranarray(a.reshape(4, 6)),
    "column": lambda a: a.reshape(4, 6)[:, 1],
    "sub block": lambda a: a.reshape(2, 3, 4)[:, 1:, ::3],
}


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("layout", list(NON_CONTIGUOUS))
@pytest.mark.parametrize("name", ["int16", "float64", "complex64", "datetime64[ms]", "bool"])
def test_non_contiguous_arrays(name: str, layout: str, codec: Codec) -> None:
    view = NON_CONTIGUOUS[layout](sample(np.dtype(name), (24,)))
    assert not view.flags.c_contiguous
    frames = protocol.encode(Reply(1, view, codec=codec))
    # Made contiguous once by the encoder: the frame is a fresh buffer, the view untouched.
    assert not np.shares_memory(frame_bytes(frames[2]), view)
    assert memoryview(frames[2]).nbytes == view.nbytes
    assert_same_array(protocol.decode(to_receiver(frames)).result, view)


@pytest.mark.parametrize("codec", CODECS)
def test_arrays_nested_in_args_kwargs_and_results(codec: Codec) -> None:
    a = np.arange(6, dtype=np.int32).reshape(2, 3)
    b = np.linspace(0, 1, 5, dtype=">f8")
    c = np.array(["2020-01-01", "2021-06-30"], dtype="datetime64[D]")
    d = np.array(1.5 + 2j, dtype=np.complex64)  # 0-d
    e = np.zeros((0, 4), dtype=np.uint16)
    request = Request(
        9,
        "svc.fit",
        [a, [b, {"deep": [c, {"deeper": d}]}], "plain", 3],
        {"weights": b, "pairs": [[a, e]], "none": None},
        codec=codec,
    )
    frames = protocol.encode(request)
    assert len(frames) == 2 + 7  # one frame per array occurrence
    msg = protocol.decode(to_receiver(frames))
    assert_same_array(msg.args[0], a)
    assert_same_array(msg.args[1][0], b)
    assert_same_array(msg.args[1][1]["deep"][0], c)
    assert_same_array(msg.args[1][1]["deep"][1]["deeper"], d)
    assert msg.args[2:] == ["plain", 3]
    assert_same_array(msg.kwargs["weights"], b)
    assert_same_array(msg.kwargs["pairs"][0][0], a)
    assert_same_array(msg.kwargs["pairs"][0][1], e)
    assert msg.kwargs["none"] is None

    result = {"mean": b, "parts": [a, {"c": c}], "count": 2}
    reply = protocol.decode(to_receiver(protocol.encode(Reply(9, result, codec=codec))))
    assert_same_array(reply.result["mean"], b)
    assert_same_array(reply.result["parts"][0], a)
    assert_same_array(reply.result["parts"][1]["c"], c)
    assert reply.result["count"] == 2


@pytest.mark.parametrize("codec", CODECS)
def test_batch_with_arrays(codec: Codec) -> None:
    items = [[np.full(3, i, dtype=np.int64)] for i in range(4)]
    msg = protocol.decode(
        to_receiver(protocol.encode(Request(1, "a.b", items, codec=codec, batch=True)))
    )
    for i, (arr,) in enumerate(msg.args):
        assert_same_array(arr, items[i][0])


@pytest.mark.parametrize("codec", CODECS)
def test_numpy_scalars(codec: Codec) -> None:
    plain = [np.bool_(True), np.int8(-3), np.uint64(2**64 - 1), np.float32(0.5), np.float64(2.25)]
    got = protocol.decode(protocol.encode(Reply(1, plain, codec=codec))).result
    assert got == [True, -3, 2**64 - 1, 0.5, 2.25]
    assert [type(v) for v in got] == [bool, int, int, float, float]
    # No Python twin: they travel as 0-d arrays (SPEC section 4).
    odd = [np.complex128(1 + 2j), np.datetime64("2020-01-02", "D"), np.timedelta64(5, "s")]
    got = protocol.decode(to_receiver(protocol.encode(Reply(1, odd, codec=codec)))).result
    for value, want in zip(got, odd, strict=True):
        assert_same_array(value, np.asarray(want))


REFUSED = {
    "object": np.array([1, "a", None], dtype=object),
    "str": np.array(["ab", "c"]),
    "bytes": np.array([b"ab", b"c"]),
    "void": np.zeros(3, dtype="V4"),
    "structured": np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]),
}


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("kind", list(REFUSED))
def test_object_str_void_dtypes_refused(kind: str, codec: Codec) -> None:
    with pytest.raises(ProtocolError, match=r"cannot send a numpy array of dtype") as info:
        protocol.encode(Reply(1, {"x": [REFUSED[kind]]}, codec=codec))
    assert "object, string and structured arrays do not" in str(info.value)
    with pytest.raises(ProtocolError, match="dtype"):
        protocol.encode(Request(1, "a.b", [], {"x": REFUSED[kind]}, codec=codec))


# --- lying descriptors --------------------------------------------------------------


def with_descriptor(codec: Codec, desc: Any, frames: list[bytes]) -> list[Any]:
    """A REPLY whose body is one hand-written array descriptor."""
    head = protocol.encode(Reply(1, None, codec=codec))[0]
    if codec is Codec.MSGPACK:
        body = msgpack.packb(msgpack.ExtType(1, msgpack.packb(desc)))
    else:
        if isinstance(desc, list) and len(desc) == 3:
            desc = {"dtype": desc[0], "shape": desc[1], "frame": desc[2]}
        body = json.dumps({"$nd": desc}).encode()
    return [head, body, *frames]


LIES: dict[str, tuple[Any, list[bytes]]] = {
    "too few bytes": (["<f8", [3], 0], [b"\0" * 16]),
    "too many bytes": (["<f8", [3], 0], [b"\0" * 32]),
    "bytes for a 0-d": (["<i4", [], 0], [b"\0" * 8]),
    "empty shape with bytes": (["<i4", [0, 5], 0], [b"\0" * 4]),
    "huge product": (["<f8", [2**32, 2**32, 2**32], 0], [b"\0" * 8]),
    "negative shape": (["<f8", [-1], 0], [b""]),
    "negative pair": (["<f8", [-2, -4], 0], [b"\0" * 64]),
    "float dim": (["<f8", [2.0], 0], [b"\0" * 16]),
    "bool dim": (["<f8", [True], 0], [b"\0" * 8]),
    "shape not a list": (["<f8", 3, 0], [b"\0" * 24]),
    "too many dims": (["<f8", [1] * 33, 0], [b"\0" * 8]),
    "frame out of range": (["<f8", [1], 1], [b"\0" * 8]),
    "negative frame": (["<f8", [1], -1], [b"\0" * 8]),
    "no frames": (["<f8", [1], 0], []),
    "frame not an int": (["<f8", [1], "0"], [b"\0" * 8]),
    "frame a bool": (["<f8", [1], True], [b"\0" * 8]),
    "dtype object": (["|O", [1], 0], [b"\0" * 8]),
    "dtype str": (["<U2", [1], 0], [b"\0" * 8]),
    "dtype void": (["|V8", [1], 0], [b"\0" * 8]),
    "dtype bytes": (["|S8", [1], 0], [b"\0" * 8]),
    "dtype name": (["float64", [1], 0], [b"\0" * 8]),
    "dtype bad size": (["<f3", [1], 0], [b"\0" * 3]),
    "dtype bad unit": (["<M8[xy]", [1], 0], [b"\0" * 8]),
    "dtype record": (["<f8,<i4", [1], 0], [b"\0" * 12]),
    "dtype not a string": ([8, [1], 0], [b"\0" * 8]),
    "dtype empty": (["", [1], 0], [b"\0" * 8]),
    "dtype with code": (["<f8'); import os; ('", [1], 0], [b"\0" * 8]),
    "two parts": (["<f8", [1]], [b"\0" * 8]),
    "four parts": (["<f8", [1], 0, 0], [b"\0" * 8]),
    "not a list": ("<f8", [b"\0" * 8]),
}


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("lie", list(LIES))
def test_lying_descriptors_are_refused(lie: str, codec: Codec) -> None:
    desc, oob = LIES[lie]
    with pytest.raises(ProtocolError) as info:
        protocol.decode(with_descriptor(codec, desc, oob))
    assert info.value.code == ErrorCode.PROTOCOL
    assert info.value.request_id == 1


# SPEC 5: the byte order is explicit ("|" for 1-byte items, "<" or ">" for larger
# ones), and long double, whose layout differs between platforms, does not travel.
REFUSED_DTYPES = [
    "=f8",  # native: the receiver's order, not the sender's
    "|f8",
    "=i2",
    "|M8[ns]",
    "=m8[s]",
    "<i1",  # 1-byte items have no byte order
    ">u1",
    "=b1",
    "<f16",  # long double
    ">c32",
    "<f12",
    "<c24",
    "<i8[s]",  # a unit on a non-datetime kind
    "<b2",
    "<u16",
]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", REFUSED_DTYPES)
def test_decoder_refuses_implicit_byte_order_and_long_double(dtype: str, codec: Codec) -> None:
    size = {"1": 1, "2": 2, "8": 8}.get(dtype[-1], 16)
    with pytest.raises(ProtocolError, match="dtype") as info:
        protocol.decode(with_descriptor(codec, [dtype, [1], 0], [b"\0" * size]))
    assert info.value.code == ErrorCode.PROTOCOL


@pytest.mark.parametrize("codec", CODECS)
def test_decoder_accepts_explicit_byte_orders(codec: Codec) -> None:
    for dtype, size in (("|b1", 1), ("|i1", 1), ("|u1", 1), ("<f8", 8), (">f8", 8), (">c16", 16)):
        got = protocol.decode(with_descriptor(codec, [dtype, [1], 0], [b"\0" * size])).result
        assert got.dtype.str == dtype
    got = protocol.decode(with_descriptor(codec, ["<M8[10ms]", [1], 0], [b"\0" * 8])).result
    assert got.dtype == np.dtype("datetime64[10ms]")


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("name", ["int16", "uint32", "float64", "complex64", "datetime64[ns]"])
def test_native_arrays_are_sent_with_an_explicit_byte_order(name: str, codec: Codec) -> None:
    native = "<" if sys.byteorder == "little" else ">"
    for dtype in (np.dtype(name), np.dtype(name).newbyteorder("=")):
        arr = np.zeros(3, dtype)
        frames = protocol.encode(Reply(1, arr, codec=codec))
        if codec is Codec.MSGPACK:
            sent = msgpack.unpackb(msgpack.unpackb(frames[1]).data)[0]
        else:
            sent = json.loads(frames[1])["$nd"]["dtype"]
        assert sent[0] == native
        assert_same_array(protocol.decode(to_receiver(frames)).result, arr)
    one_byte = protocol.encode(Reply(1, np.zeros(2, np.int8), codec=codec))
    assert b"|i1" in one_byte[1]


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="long double is double here")
@pytest.mark.parametrize("codec", CODECS)
def test_long_double_is_refused_when_sending(codec: Codec) -> None:
    for value in (
        np.zeros(2, np.longdouble),
        np.zeros(2, np.clongdouble),
        np.longdouble(1.5),
        np.clongdouble(1j),
    ):
        with pytest.raises(ProtocolError, match="long double"):
            protocol.encode(Reply(1, [value], codec=codec))


@pytest.mark.parametrize("codec", CODECS)
def test_ndim_error_names_the_configured_limit(codec: Codec) -> None:
    arr = np.zeros((1,) * 7)
    frames = protocol.encode(Reply(1, arr, codec=codec))
    with pytest.raises(ProtocolError, match="max_ndim=6") as info:
        protocol.decode(frames, Limits(max_ndim=6))
    assert "32" not in str(info.value)
    # Past the default limit of 32, with a limit raised to fit (numpy stops at 64).
    deep = np.zeros((1,) * 40)
    frames = protocol.encode(Reply(1, deep, codec=codec))
    with pytest.raises(ProtocolError, match="max_ndim=32"):
        protocol.decode(frames)
    assert protocol.decode(frames, Limits(max_ndim=40)).result.shape == deep.shape
    with pytest.raises(ProtocolError, match="max_ndim=39"):
        protocol.decode(frames, Limits(max_ndim=39))


def test_json_descriptor_needs_all_keys() -> None:
    head = protocol.encode(Reply(1, None, codec=Codec.JSON))[0]
    for desc in ({"dtype": "<f8", "shape": [1]}, {}, [], None, {"dtype": "<f8", "frame": 0}):
        with pytest.raises(ProtocolError):
            protocol.decode([head, json.dumps({"$nd": desc}).encode(), b"\0" * 8])
    for index in (1, -1, "0", None, 0.0):
        with pytest.raises(ProtocolError):
            protocol.decode([head, json.dumps({"$bytes": index}).encode(), b"x"])


def test_msgpack_descriptor_payload_malformed() -> None:
    head = protocol.encode(Reply(1, None))[0]
    for payload in (b"", b"\xc1", b"\x93\xa3<f8\x91\x01", b"\x93\xa3<f8\x91\x01\x00\x00"):
        with pytest.raises(ProtocolError):
            protocol.decode([head, msgpack.packb(msgpack.ExtType(1, payload)), b"\0" * 8])
    for code in (0, 2, 127):
        with pytest.raises(ProtocolError, match="extension"):
            protocol.decode([head, msgpack.packb(msgpack.ExtType(code, b"x")), b""])
    with pytest.raises(ProtocolError, match="extension"):
        protocol.decode([head, b"\xd4\xfe\x00", b""])  # fixext 1, type -2
    big = msgpack.packb(msgpack.ExtType(1, b"\x90" * 5000))
    with pytest.raises(ProtocolError):
        protocol.decode([head, big, b""])


def test_ndim_limit_is_configurable() -> None:
    arr = np.zeros((1,) * 5)
    frames = protocol.encode(Reply(1, arr))
    assert protocol.decode(frames, Limits(max_ndim=5)).result.shape == (1,) * 5
    for codec in CODECS:
        frames = protocol.encode(Reply(1, arr, codec=codec))
        with pytest.raises(ProtocolError):
            protocol.decode(frames, Limits(max_ndim=4))


def test_array_frames_count_toward_the_message_limit() -> None:
    arr = np.zeros(1024, dtype=np.uint8)
    frames = protocol.encode(Reply(1, [arr, arr]))
    with pytest.raises(ProtocolError) as info:
        protocol.decode(frames, Limits(max_message_bytes=2000))
    assert info.value.code == ErrorCode.LIMIT_EXCEEDED
    assert protocol.decode(frames, Limits(max_message_bytes=2100)).result[1].size == 1024


def test_arrays_from_many_threads_keep_their_own_frames() -> None:
    # Encoders are pooled: one thread's arrays must never land in another's message.
    def round_trip(i: int) -> None:
        for codec in CODECS:
            for j in range(100):
                arrays = [np.full(j % 5 + 1, i * 1000 + j + k, dtype=np.int64) for k in range(3)]
                frames = protocol.encode(Reply(i, arrays, codec=codec))
                got = protocol.decode(to_receiver(frames)).result
                for a, b in zip(got, arrays, strict=True):
                    assert_same_array(a, b)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(round_trip, range(8)))


def test_an_empty_multi_dimensional_array_round_trips_in_memory() -> None:
    # Frames handed straight from encode to decode (no socket): the array itself is the
    # out-of-band frame, and a zero-size 2-D buffer cannot be cast to bytes.
    arr = np.zeros((2, 0), dtype="<i8")
    got = protocol.decode(protocol.encode(Reply(1, arr))).result
    assert (got.shape, got.dtype) == ((2, 0), arr.dtype)
