"""Handler results as HTTP bodies (JSON or msgpack), and as bytes in the jobs database.

JSON has no arrays of machine numbers, no bytes and no NaN, so results are shaped:

- a numpy array becomes ``{"dtype": "float64", "shape": [2, 3], "data": [[...], [...]]}``
  (complex numbers as ``[real, imag]`` pairs);
- a numpy scalar becomes the plain number;
- ``bytes`` become ``{"base64": "..."}``;
- NaN and ±Infinity become ``null`` (ask for msgpack to keep them).

With ``Accept: application/msgpack`` the body is msgpack: arrays are
``{"dtype", "shape", "data": <raw little-endian C-order bytes>}`` (rebuild with
``np.frombuffer(data, dtype).reshape(shape)``), floats keep NaN and Infinity.

Stored job results keep full fidelity: msgpack with numpy arrays as extension types,
decoded back to arrays when the job is read. That stored size is what ``--max-result``
bounds, for a call's reply as for a job's result (`check_result_size`).
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import msgpack
import numpy as np

from ._errors import ApiError

__all__ = [
    "JSON_TYPE",
    "MSGPACK_TYPE",
    "NeedsConversion",
    "check_result_size",
    "pack_stored",
    "render",
    "result_size",
    "to_json",
    "unpack_stored",
    "wants_msgpack",
]

JSON_TYPE = "application/json"
MSGPACK_TYPE = "application/msgpack"
_MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack")

_EXT_ARRAY = 1
_EXT_SCALAR = 2


def wants_msgpack(accept: str | None) -> bool:
    """True when the ``Accept`` header asks for msgpack (and not JSON first)."""
    if not accept:
        return False
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in _MSGPACK_TYPES:
            return True
        if media in (JSON_TYPE, "*/*"):
            return False
    return False


class NeedsConversion(Exception):
    """`render` was told not to convert, and ``value`` is not plain JSON."""


def render(value: Any, as_msgpack: bool, convert: bool = True) -> tuple[bytes, str]:
    """``value`` as a response body and its content type.

    JSON of plain values costs one ``json.dumps``. Anything else (numpy, bytes, NaN)
    goes through `to_json`, which is slow for big arrays: with ``convert=False`` it
    raises `NeedsConversion` instead, so the caller can convert off its event loop.
    """
    if as_msgpack:
        return msgpack.packb(value, default=_msgpack_default, use_bin_type=True), MSGPACK_TYPE
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        if not convert:
            raise NeedsConversion from None
        text = json.dumps(to_json(value), allow_nan=False, separators=(",", ":"))
    return text.encode(), JSON_TYPE


def to_json(value: Any) -> Any:
    """``value`` with everything JSON cannot carry reshaped (see the module docstring)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_json_key(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return _array_json(value)
    if isinstance(value, np.generic):
        return to_json(value.item())
    if isinstance(value, complex):
        return [to_json(value.real), to_json(value.imag)]
    if isinstance(value, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    return str(value)


def _json_key(key: Any) -> str | int | float | bool | None:
    if key is None or isinstance(key, str | int | float | bool):
        return key
    if isinstance(key, bytes):
        return key.decode("utf-8", "replace")
    return str(key)


def _array_json(arr: np.ndarray) -> dict[str, Any]:
    kind = arr.dtype.kind
    if kind == "c":
        data: Any = np.stack((arr.real, arr.imag), axis=-1).tolist()
        if not np.isfinite(arr).all():
            data = to_json(data)
    elif kind == "f":
        data = arr.tolist()
        if not np.isfinite(arr).all():
            data = to_json(data)
    elif kind in "biu":
        data = arr.tolist()
    else:
        data = to_json(arr.tolist())
    return {"dtype": _dtype_name(arr.dtype), "shape": list(arr.shape), "data": data}


def _dtype_name(dtype: np.dtype[Any]) -> str:
    """``float64``, ``int32``, ``bool``...; numpy's code (``<U5``) for the rarer kinds."""
    return dtype.name if dtype.kind in "biufc" else dtype.str


def _msgpack_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        little = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<"))
        return {
            "dtype": _dtype_name(value.dtype),
            "shape": list(value.shape),
            "data": little.tobytes(),
        }
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, complex):
        return [value.real, value.imag]
    raise TypeError(f"cannot encode a {type(value).__name__} as msgpack")


def pack_stored(value: Any) -> bytes:
    """``value`` (a handler's result) as bytes for the jobs database, losslessly."""
    return msgpack.packb(value, default=_store_default, use_bin_type=True)


def unpack_stored(blob: bytes) -> Any:
    """The value `pack_stored` stored."""
    return msgpack.unpackb(blob, raw=False, strict_map_key=False, ext_hook=_store_ext)


def result_size(value: Any) -> int:
    """``len(pack_stored(value))``, without building it: a numpy array's bytes are
    counted, not copied, so measuring a huge result costs no memory.

    Raises:
        TypeError, ValueError: ``value`` cannot be stored (as `pack_stored`).
    """
    extra = 0

    def default(obj: Any) -> Any:
        nonlocal extra
        if isinstance(obj, np.ndarray) and not obj.dtype.hasobject:
            head = _array_head(obj)
            # Packed as the head alone; add what the bytes and their longer header take.
            full = len(head) + obj.nbytes
            extra += obj.nbytes + _ext_header(full) - _ext_header(len(head))
            return msgpack.ExtType(_EXT_ARRAY, head)
        return _store_default(obj)

    return len(msgpack.packb(value, default=default, use_bin_type=True)) + extra


def check_result_size(value: Any, limit: int) -> None:
    """Refuse a result over ``limit`` bytes as stored (`result_size`): the
    ``--max-result`` check of ``POST /call`` replies and of job results alike. A call
    runs it before rendering, so an oversized result is never turned into JSON.

    Raises:
        ApiError: 502 ``ResultTooLarge`` naming the size and the limit; 500
            ``ResultError`` when the value cannot be stored at all.
    """
    try:
        size = result_size(value)
    except (TypeError, ValueError) as exc:
        raise ApiError(500, "ResultError", f"the result cannot be stored: {exc}") from exc
    if size > limit:
        # 502: the gateway refuses what its upstream (the worker) answered; 413 would
        # blame the caller's request body.
        raise ApiError(
            502,
            "ResultTooLarge",
            f"the result takes {size} bytes, more than the gateway passes on or keeps "
            f"(--max-result {limit}); return less, or store it elsewhere and return "
            "where (or run the gateway with a larger --max-result)",
        )


def _array_head(arr: np.ndarray) -> bytes:
    """The dtype and shape `pack_stored` writes before an array's C-order bytes."""
    return msgpack.packb([arr.dtype.str, list(arr.shape)])


def _ext_header(size: int) -> int:
    """Bytes msgpack writes before an extension payload of ``size`` bytes."""
    if size in (1, 2, 4, 8, 16):
        return 2  # fixext: marker, type
    return 3 if size < 1 << 8 else 4 if size < 1 << 16 else 6  # ext 8/16/32


def _store_default(value: Any) -> Any:
    if isinstance(value, np.ndarray) and not value.dtype.hasobject:
        # tobytes() writes C order whatever the layout: no contiguous copy first.
        return msgpack.ExtType(_EXT_ARRAY, _array_head(value) + value.tobytes())
    if isinstance(value, np.generic):
        arr = np.asarray(value)
        return msgpack.ExtType(_EXT_SCALAR, msgpack.packb(arr.dtype.str) + arr.tobytes())
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, complex):
        return [value.real, value.imag]
    raise TypeError(f"cannot store a {type(value).__name__}")


def _store_ext(code: int, data: bytes) -> Any:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    if code == _EXT_ARRAY:
        dtype, shape = next(unpacker)
        offset = unpacker.tell()
        return np.frombuffer(data, dtype=np.dtype(dtype), offset=offset).reshape(shape)
    if code == _EXT_SCALAR:
        dtype = np.dtype(next(unpacker))
        return np.frombuffer(data, dtype=dtype, offset=unpacker.tell())[0]
    return msgpack.ExtType(code, data)
