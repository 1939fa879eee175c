"""Body values: msgpack or JSON, with numpy arrays and (in JSON) bytes out of band.

A body is encoded to one frame plus a list of out-of-band frames. Arrays never go
through msgpack or JSON: the body holds a small descriptor (dtype string, shape,
index of the out-of-band frame) and the array's own memory is handed over as a frame,
so the shell can send it with ``copy=False``. On the way in, `np.frombuffer` rebuilds
the array on the received frame's memory, again without a copy.

Decoding runs no code: msgpack's only extension type we accept is the array
descriptor, JSON's only special object is the descriptor too, and every length is
bounded by `Limits` before anything of that size is built.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from enum import IntEnum
from typing import Any

import msgpack
import numpy as np

from ._limits import Limits
from .errors import ErrorCode, ProtocolError

__all__ = ["Codec", "decode_value", "encode_value"]


class Codec(IntEnum):
    """The body codec named in every header."""

    MSGPACK = 0
    JSON = 1


EXT_NDARRAY = 1
"""msgpack extension type of an array descriptor (payload: msgpack [dtype, shape, frame])."""

JSON_NDARRAY_KEY = "$nd"
JSON_BYTES_KEY = "$bytes"

_ALLOWED_KINDS = frozenset("biufcmM")
# dtype strings as numpy's dtype.str spells them: byte order, kind, item size, and a
# unit for datetime64/timedelta64 ("<M8[ns]"). Nothing else is parsed by np.dtype.
_DTYPE_RE = re.compile(r"[<>|=][biufcmM]\d{1,2}(\[\d*[a-zA-Z]{1,2}\])?")

Buffer = Any  # bytes, memoryview, zmq.Frame: anything with the buffer protocol


def _array_descriptor(arr: np.ndarray, oob: list[Buffer]) -> tuple[str, list[int], int]:
    """Append the array's memory to ``oob`` and return (dtype, shape, frame index)."""
    dtype = arr.dtype
    if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype:
        raise ProtocolError(
            f"cannot send a numpy array of dtype {dtype!r}: only bool, integer, float, "
            "complex, datetime64 and timedelta64 arrays travel (object, string and "
            "structured arrays do not; convert them to lists or numeric arrays first)"
        )
    if not arr.flags.c_contiguous:
        # One copy, here; the contiguous copy is then sent without another.
        arr = np.ascontiguousarray(arr)
    if dtype.kind in "mM":
        # datetime64/timedelta64 cannot export a buffer; their memory is int64 anyway.
        oob.append(arr.view(f"{dtype.byteorder}i{dtype.itemsize}"))
    else:
        oob.append(arr)
    return dtype.str, list(arr.shape), len(oob) - 1


def _numpy_scalar(obj: np.generic, oob: list[Buffer]) -> Any:
    """numpy scalars become Python scalars; kinds with no Python twin go as 0-d arrays."""
    if obj.dtype.kind in "biuf":
        return obj.item()
    return np.asarray(obj)


def encode_value(value: Any, codec: Codec) -> tuple[bytes, list[Buffer]]:
    """Encode ``value`` as one body frame and its out-of-band frames.

    Accepts None, bool, int, float, str, bytes, lists, tuples (sent as lists), dicts,
    numpy arrays and numpy scalars, nested freely. The returned out-of-band frames are
    the arrays' own buffers (no copy); the caller must not modify those arrays until
    the send has completed.

    Raises:
        ProtocolError: for a value the codec cannot carry (a set, a custom object, an
            object-dtype array, an int beyond 64 bits, NaN in JSON ...).
    """
    oob: list[Buffer] = []
    try:
        if codec is Codec.MSGPACK:
            return _packb(value, oob), oob
        return _json_dumps(value, oob), oob
    except ProtocolError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(
            f"cannot encode value for the wire ({codec.name}): {exc}. zeromesh sends "
            "None, bool, int, float, str, bytes, lists, dicts and numpy arrays; "
            "convert other objects first"
        ) from exc


def _packb(value: Any, oob: list[Buffer]) -> bytes:
    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            desc = _array_descriptor(obj, oob)
            return msgpack.ExtType(EXT_NDARRAY, msgpack.packb(desc))
        if isinstance(obj, np.generic):
            return _numpy_scalar(obj, oob)
        raise TypeError(f"object of type {type(obj).__qualname__} is not supported")

    return msgpack.packb(value, default=default, use_bin_type=True, datetime=False)


def _json_dumps(value: Any, oob: list[Buffer]) -> bytes:
    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            dtype, shape, frame = _array_descriptor(obj, oob)
            return {JSON_NDARRAY_KEY: {"dtype": dtype, "shape": shape, "frame": frame}}
        if isinstance(obj, np.generic):
            return _numpy_scalar(obj, oob)
        if isinstance(obj, bytes | bytearray | memoryview):
            oob.append(obj)
            return {JSON_BYTES_KEY: len(oob) - 1}
        raise TypeError(f"object of type {type(obj).__qualname__} is not supported")

    text = json.dumps(
        value, default=default, allow_nan=False, ensure_ascii=False, separators=(",", ":")
    )
    return text.encode()


def decode_value(body: Buffer, codec: Codec, oob: Sequence[Buffer], limits: Limits) -> Any:
    """Decode one body frame, rebuilding arrays on the out-of-band frames (no copy).

    Raises:
        ProtocolError: for anything malformed or over ``limits``; never another type.
    """
    arrays = _ArrayBuilder(oob, limits)
    try:
        if codec is Codec.MSGPACK:
            value = msgpack.unpackb(
                body,
                ext_hook=arrays.from_msgpack_ext,
                raw=False,
                strict_map_key=False,
                use_list=True,
                timestamp=0,
                max_str_len=limits.max_str_len,
                max_bin_len=limits.max_bin_len,
                max_array_len=limits.max_array_len,
                max_map_len=limits.max_map_len,
                max_ext_len=4096,
            )
        else:
            value = json.loads(bytes(body), object_hook=arrays.from_json_object)
    except ProtocolError:
        raise
    except RecursionError as exc:
        raise ProtocolError("body nests too deep", ErrorCode.LIMIT_EXCEEDED) from exc
    except Exception as exc:  # anything a malformed body can make msgpack/json raise
        raise ProtocolError(f"malformed {codec.name} body: {exc}") from exc
    # A container costs at least one byte per level (two in JSON), so a body no longer
    # than max_depth cannot nest past it: small messages skip the walk.
    if len(body) > limits.max_depth:
        _check_shape(value, limits, codec)
    return value


def _check_shape(value: Any, limits: Limits, codec: Codec) -> None:
    """Enforce max_depth (both codecs) and list/map lengths (JSON has no native limit)."""
    check_lengths = codec is Codec.JSON
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, list):
            children: Any = node
            if check_lengths and len(node) > limits.max_array_len:
                raise ProtocolError(
                    f"list of {len(node)} items exceeds limit {limits.max_array_len}",
                    ErrorCode.LIMIT_EXCEEDED,
                )
        elif isinstance(node, dict):
            children = node.values()
            if check_lengths and len(node) > limits.max_map_len:
                raise ProtocolError(
                    f"map of {len(node)} pairs exceeds limit {limits.max_map_len}",
                    ErrorCode.LIMIT_EXCEEDED,
                )
        else:
            continue
        if depth > limits.max_depth:
            raise ProtocolError(
                f"body nests deeper than {limits.max_depth} levels", ErrorCode.LIMIT_EXCEEDED
            )
        stack.extend((child, depth + 1) for child in children if type(child) in (list, dict))


class _ArrayBuilder:
    """Turns descriptors into arrays over the out-of-band frames of one message."""

    __slots__ = ("limits", "oob")

    def __init__(self, oob: Sequence[Buffer], limits: Limits) -> None:
        self.oob = oob
        self.limits = limits

    def from_msgpack_ext(self, code: int, data: bytes) -> np.ndarray:
        if code != EXT_NDARRAY:
            raise ProtocolError(f"unknown msgpack extension type {code}")
        try:
            desc = msgpack.unpackb(data, raw=False, max_array_len=self.limits.max_ndim + 3)
        except Exception as exc:
            raise ProtocolError(f"malformed array descriptor: {exc}") from exc
        if not isinstance(desc, list) or len(desc) != 3:
            raise ProtocolError("array descriptor must be [dtype, shape, frame]")
        return self.build(*desc)

    def from_json_object(self, obj: dict[str, Any]) -> Any:
        if len(obj) != 1:
            return obj
        if JSON_NDARRAY_KEY in obj:
            desc = obj[JSON_NDARRAY_KEY]
            if not isinstance(desc, dict):
                raise ProtocolError('"$nd" must hold {"dtype", "shape", "frame"}')
            return self.build(desc.get("dtype"), desc.get("shape"), desc.get("frame"))
        if JSON_BYTES_KEY in obj:
            return bytes(self._frame(obj[JSON_BYTES_KEY]))
        return obj

    def _frame(self, index: Any) -> memoryview:
        if type(index) is not int or not 0 <= index < len(self.oob):
            raise ProtocolError(
                f"descriptor names out-of-band frame {index!r}, but the message has {len(self.oob)}"
            )
        return memoryview(self.oob[index])

    def build(self, dtype: Any, shape: Any, index: Any) -> np.ndarray:
        if not isinstance(dtype, str) or not _DTYPE_RE.fullmatch(dtype):
            raise ProtocolError(f"array dtype {dtype!r} is not an accepted dtype string")
        dt = np.dtype(dtype)
        if dt.kind not in _ALLOWED_KINDS:
            raise ProtocolError(f"array dtype {dtype!r} is not allowed")
        if not isinstance(shape, list) or len(shape) > self.limits.max_ndim:
            raise ProtocolError(f"array shape {shape!r} must be a list of <= 32 sizes")
        count = 1
        for dim in shape:
            if type(dim) is not int or dim < 0:
                raise ProtocolError(f"array shape {shape!r} has a bad size {dim!r}")
            count *= dim
        frame = self._frame(index)
        if count * dt.itemsize != frame.nbytes:
            raise ProtocolError(
                f"array of dtype {dtype} and shape {shape} needs "
                f"{count * dt.itemsize} bytes, but its frame has {frame.nbytes}"
            )
        arr = np.frombuffer(frame, dtype=dt).reshape(shape)
        if not arr.flags.aligned:
            # Small frames come out of libzmq's shared receive buffer at any offset;
            # numpy works on unaligned data, but slowly and not everywhere. Copy those.
            arr = arr.copy()
        return arr
