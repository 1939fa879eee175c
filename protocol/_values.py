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
import string
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

import msgpack
import numpy as np

from ._codec import Codec
from ._limits import DEFAULT_LIMITS, Limits
from .errors import ErrorCode, ProtocolError

__all__ = [
    "MAX_INT",
    "MIN_INT",
    "Codec",
    "decode_value",
    "encode_value",
    "encode_value_into",
    "parse_json",
    "travels_as_int",
    "travels_as_number",
]

_MSGPACK = Codec.MSGPACK  # a module global is cheaper to read than an enum member


EXT_NDARRAY = 1
"""msgpack extension type of an array descriptor (payload: msgpack [dtype, shape, frame])."""

JSON_NDARRAY_KEY = "$nd"
JSON_BYTES_KEY = "$bytes"

# (kind, item size) of the dtypes that travel. Not long double (f16/c32, or f12/c24
# on some platforms): its layout differs between platforms. Where long double is
# plain double, numpy spells it "<f8" and it travels as float64.
_SENDABLE = frozenset(
    [("b", 1), ("f", 2), ("f", 4), ("f", 8), ("c", 8), ("c", 16), ("M", 8), ("m", 8)]
    + [(kind, size) for kind in "iu" for size in (1, 2, 4, 8)]
)
# dtype strings as numpy's dtype.str spells them: byte order, kind, item size, and a
# unit for datetime64/timedelta64 ("<M8[ns]"). Nothing else is parsed by np.dtype.
# The byte order is explicit: "|" for 1-byte items, "<" or ">" for the others ("="
# would mean the receiver's own order, whatever the sender's was).
_DTYPE_RE = re.compile(r"([<>|])([biufcmM])(\d{1,2})(\[\d*[a-zA-Z]{1,2}\])?")

Buffer = Any  # bytes, memoryview, zmq.Frame: anything with the buffer protocol

MIN_INT = -(2**63)
"""The smallest integer a body may hold, in either codec: MessagePack's int 64."""
MAX_INT = 2**64 - 1
"""The largest integer a body may hold, in either codec: MessagePack's uint 64."""
_INT_RANGE = "-2**63..2**64-1"  # MIN_INT..MAX_INT as people write it, for messages


def _int_range_error(shown: str) -> ProtocolError:
    """The error for an integer outside MIN_INT..MAX_INT; ``shown`` names it."""
    return ProtocolError(f"integer {shown} is out of range: zeromesh integers are {_INT_RANGE}")


def _int_refused(value: int, codec: Codec) -> ProtocolError:
    """The encoder's error for an int outside MIN_INT..MAX_INT."""
    # str() of an int over 4300 digits raises ValueError (Python's DoS guard).
    shown = str(value) if value.bit_length() <= 128 else f"of {value.bit_length()} bits"
    error = _int_range_error(shown)
    return ProtocolError(f"cannot encode value for the wire ({codec.name}): {error}")


def _int_out_of_range_in(value: Any) -> int | None:
    """An int in ``value`` outside MIN_INT..MAX_INT, or None; map keys are not looked
    at (JSON writes them as strings). It walks the whole value: only for suspect JSON
    text and error paths."""
    stack = [value]
    seen: set[int] = set()  # a value may contain itself; the encoders refuse that later
    while stack:
        node = stack.pop()
        if isinstance(node, int):
            if not MIN_INT <= node <= MAX_INT:
                return node
        elif isinstance(node, list | tuple | dict) and id(node) not in seen:
            seen.add(id(node))
            stack += node.values() if isinstance(node, dict) else node
    return None


# JSON text holds an integer outside MIN_INT..MAX_INT only where it has a run of 19 or
# more digits that does not follow a "." (float reprs switch to an exponent at 1e16).
# Mapping digits to "0", "." to itself and every other byte to " " lets one C-level
# search find each candidate; only then is the value walked.
_DIGIT_SHAPES = bytes(
    ord("0") if chr(b) in "0123456789" else ord(".") if chr(b) == "." else ord(" ")
    for b in range(256)
)
_LONG_DIGITS = b"0" * 19
_LONG_INT = b" " + _LONG_DIGITS


def _may_hold_long_int(body: bytes) -> bool:
    """False if the JSON ``body`` surely holds no integer outside MIN_INT..MAX_INT."""
    shapes = body.translate(_DIGIT_SHAPES)
    # Searching for the bare run first is the faster test, and almost always False.
    return _LONG_DIGITS in shapes and (_LONG_INT in shapes or shapes.startswith(_LONG_DIGITS))


def _array_descriptor(arr: np.ndarray, oob: list[Buffer]) -> tuple[str, list[int], int]:
    """Append the array's memory to ``oob`` and return (dtype, shape, frame index)."""
    dtype = arr.dtype
    text = dtype.str  # never "=": numpy spells native order as "<" or ">"
    if text not in _KNOWN_DTYPES:
        _check_sendable(dtype)
        _dtype(text)  # what the decoder accepts, and only that
    if not arr.flags.c_contiguous:
        # One copy, here; the contiguous copy is then sent without another.
        arr = np.ascontiguousarray(arr)
    if dtype.kind in "mM":
        # datetime64/timedelta64 cannot export a buffer; their memory is int64 anyway.
        oob.append(arr.view(f"{dtype.byteorder}i{dtype.itemsize}"))
    else:
        oob.append(arr)
    return text, list(arr.shape), len(oob) - 1


def _check_sendable(dtype: np.dtype) -> None:
    """Refuse, with a message saying what to do, a dtype that does not travel."""
    if (dtype.kind, dtype.itemsize) not in _SENDABLE or dtype.fields is not None:
        if dtype.kind in "fc" and dtype.fields is None:
            raise ProtocolError(
                f"cannot send a numpy array of dtype {dtype!r}: long double "
                "(float128, complex256) has a different layout on every platform; "
                "convert it to float64 or complex128 first"
            )
        raise ProtocolError(
            f"cannot send a numpy array of dtype {dtype!r}: only bool, integer, float, "
            "complex, datetime64 and timedelta64 arrays travel (object, string and "
            "structured arrays do not; convert them to lists or numeric arrays first)"
        )


def travels_as_int(value: Any) -> bool:
    """True if ``value`` goes on the wire as an integer: an int or a numpy integer,
    not a boolean (bool is an int subclass, but travels as true/false)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def travels_as_number(value: Any) -> bool:
    """True if ``value`` goes on the wire as an integer or a float, not a boolean."""
    return travels_as_int(value) or isinstance(value, float | np.floating)


def _numpy_scalar(obj: np.generic) -> Any:
    """numpy scalars become Python scalars; kinds with no Python twin go as 0-d arrays
    (and long double, refused as an array, with a message that says why)."""
    if obj.dtype.kind in "biuf":
        value = obj.item()
        if not isinstance(value, np.generic):  # long double's item() is itself
            return value
    return np.asarray(obj)


class _Encoder:
    """A msgpack Packer and a JSON encoder that put arrays (and, in JSON, bytes) out of
    band into ``self.oob``.

    Building them costs more than encoding a small message, so `encode_value` re-uses
    them from a pool: it takes one out for the duration of one encode, so two threads,
    or a finalizer that encodes in the middle of an encode, never share one.
    """

    __slots__ = ("json", "oob", "pack")

    def __init__(self) -> None:
        self.oob: list[Buffer] = []
        self.pack = msgpack.Packer(
            default=self._msgpack_default, use_bin_type=True, datetime=False
        ).pack
        self.json = json.JSONEncoder(
            default=self._json_default,
            allow_nan=False,
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode

    def _msgpack_default(self, obj: Any) -> Any:
        if isinstance(obj, np.generic):
            obj = _numpy_scalar(obj)
            if not isinstance(obj, np.ndarray):
                return obj
        if isinstance(obj, np.ndarray):
            desc = _array_descriptor(obj, self.oob)
            return msgpack.ExtType(EXT_NDARRAY, msgpack.packb(desc))
        if isinstance(obj, int):  # msgpack hands over the ints it cannot pack
            raise _int_refused(obj, _MSGPACK)
        raise TypeError(f"object of type {type(obj).__qualname__} is not supported")

    def _json_default(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            dtype, shape, frame = _array_descriptor(obj, self.oob)
            return {JSON_NDARRAY_KEY: {"dtype": dtype, "shape": shape, "frame": frame}}
        if isinstance(obj, np.generic):
            return _numpy_scalar(obj)
        if isinstance(obj, bytes | bytearray | memoryview):
            self.oob.append(obj)
            return {JSON_BYTES_KEY: len(self.oob) - 1}
        raise TypeError(f"object of type {type(obj).__qualname__} is not supported")


_ENCODERS: list[_Encoder] = []
_POOLED_ENCODERS = 16
# A Packer's buffer starts at 256 KiB and keeps whatever it grew to for a larger body:
# pool only encoders whose buffer did not grow.
_POOLED_BODY_BYTES = 256 * 1024


def encode_value(value: Any, codec: Codec) -> tuple[bytes, list[Buffer]]:
    """Encode ``value`` as one body frame and its out-of-band frames (see
    `encode_value_into`)."""
    oob: list[Buffer] = []
    return encode_value_into(value, codec, oob), oob


def encode_value_into(value: Any, codec: Codec, oob: list[Buffer]) -> bytes:
    """Encode ``value`` as one body frame; its out-of-band frames are appended to
    ``oob``. A caller encoding many values in a row may pass one list each time
    (emptied in between): a new one per value is an allocation the garbage collector
    counts, and at millions of values its passes cost a quarter of the time.

    Accepts None, bool, int, float, str, bytes, lists, tuples (sent as lists), dicts,
    numpy arrays and numpy scalars, nested freely. The returned out-of-band frames are
    the arrays' own buffers (no copy); the caller must not modify those arrays until
    the send has completed. Thread-safe.

    Raises:
        ProtocolError: for a value the codec cannot carry (a set, a custom object, an
            object-dtype array, an int outside `MIN_INT`..`MAX_INT` in either codec,
            NaN in JSON ...).
    """
    try:
        encoder = _ENCODERS.pop()  # list.pop and append are atomic: no lock needed
    except IndexError:
        encoder = _Encoder()
    encoder.oob = oob
    body = b""
    try:
        if codec is _MSGPACK:
            body = encoder.pack(value)
        else:
            text = encoder.json(value)
            # Inside a JSON string a quote is escaped, so '{"$' opens an object whose
            # first key starts with "$": the encoder's descriptors, or application data.
            if '{"$' in text and _has_reserved_map(value, text, len(oob)):
                raise ProtocolError(
                    f"cannot encode value for the wire (JSON): a map whose only key is "
                    f'"{JSON_NDARRAY_KEY}" or "{JSON_BYTES_KEY}" would be read as an array '
                    "or bytes descriptor (SPEC section 4); use the msgpack codec, or rename "
                    "the key"
                )
            body = text.encode()
            # The JSON encoder writes any int, msgpack only MIN_INT..MAX_INT (the others
            # reach _msgpack_default): refuse the same range in both, so a body that
            # encodes in one codec also travels in the other, and decodes everywhere.
            if len(body) >= len(_LONG_DIGITS) and _may_hold_long_int(body):
                bad = _int_out_of_range_in(value)
                if bad is not None:
                    raise _int_refused(bad, codec)
    except ProtocolError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        if isinstance(exc, ValueError) and codec is not _MSGPACK:
            # An int of over 4300 digits stops the JSON encoder ("Exceeds the limit")
            # before the check above: find it, and say what the range is.
            bad = _int_out_of_range_in(value)
            if bad is not None:
                raise _int_refused(bad, codec) from exc
        raise ProtocolError(
            f"cannot encode value for the wire ({codec.name}): {exc}. zeromesh sends "
            "None, bool, int, float, str, bytes, lists, dicts and numpy arrays; "
            "convert other objects first"
        ) from exc
    finally:
        encoder.oob = _DETACHED  # (not the caller's list: set again before each use)
        if len(body) <= _POOLED_BODY_BYTES and len(_ENCODERS) < _POOLED_ENCODERS:
            _ENCODERS.append(encoder)
    return body


_DETACHED: list[Buffer] = []


def _has_reserved_map(value: Any, text: str, descriptors: int) -> bool:
    """True if ``value`` holds a map whose one key is "$nd" or "$bytes".

    ``text`` is its JSON encoding, holding ``descriptors`` descriptors the encoder
    wrote itself: the walk runs only if the text opens more such objects than that.
    """
    if (
        text.count('{"' + JSON_NDARRAY_KEY + '":') + text.count('{"' + JSON_BYTES_KEY + '":')
        <= descriptors
    ):
        return False
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if len(node) == 1 and (JSON_NDARRAY_KEY in node or JSON_BYTES_KEY in node):
                return True
            stack += node.values()
        elif isinstance(node, list | tuple):
            stack += node
    return False


_MAX_EXT_BYTES = 4096
"""Largest msgpack extension payload accepted (an array descriptor is ~20 bytes)."""

# Bytes that open a msgpack map or array (fixmap, fixarray, array 16/32, map 16/32).
# Nesting d levels deep needs d of them, so their count bounds the depth from above
# (string contents may add false ones: the bound only errs high).
_NOT_MSGPACK_CONTAINER = bytes(
    b for b in range(256) if not (0x80 <= b <= 0x9F or 0xDC <= b <= 0xDF)
)
_unpackb = msgpack.unpackb
_chain = chain.from_iterable


def _msgpack_floor(limits: Limits) -> int:
    """Body size up to which msgpack's own limits (derived from the body's length:
    nothing can be longer than the body) are at least as tight as ``limits``."""
    return min(
        limits.max_str_len,
        limits.max_bin_len,
        limits.max_array_len,
        2 * limits.max_map_len,
        _MAX_EXT_BYTES,
    )


_DEFAULT_MSGPACK_FLOOR = _msgpack_floor(DEFAULT_LIMITS)


def decode_value(
    body: Buffer, codec: Codec, oob: Sequence[Buffer], limits: Limits, size: int = -1
) -> Any:
    """Decode one body frame, rebuilding arrays on the out-of-band frames (no copy).

    ``size`` is the body's length in bytes, when the caller knows it already.

    Raises:
        ProtocolError: for anything malformed or over ``limits``; never another type.
    """
    if size < 0:
        size = memoryview(body).nbytes
    try:
        if codec is _MSGPACK:
            hook = _ArrayBuilder(oob, limits).from_msgpack_ext if oob else _ext_without_frames
            floor = _DEFAULT_MSGPACK_FLOOR if limits is DEFAULT_LIMITS else _msgpack_floor(limits)
            if size <= floor:
                value = _unpackb(body, ext_hook=hook, raw=False, strict_map_key=False)
            else:
                # Never let a length claim exceed the body itself: msgpack pre-sizes
                # lists from the claim before it finds the data missing.
                value = _unpackb(
                    body,
                    ext_hook=hook,
                    raw=False,
                    strict_map_key=False,
                    max_str_len=min(limits.max_str_len, size),
                    max_bin_len=min(limits.max_bin_len, size),
                    max_array_len=min(limits.max_array_len, size),
                    max_map_len=min(limits.max_map_len, size // 2),
                    max_ext_len=min(_MAX_EXT_BYTES, size),
                )
            walk_above = limits.max_depth
        else:
            # RFC 8259: UTF-8 only (json.loads would also guess UTF-16 and UTF-32).
            text = str(body, "utf-8")
            if oob:
                object_hook = _ArrayBuilder(oob, limits).from_json_object
                value = json.JSONDecoder(
                    object_hook=object_hook,
                    parse_float=_finite_float,
                    parse_constant=_no_constant,
                ).decode(text)
            else:
                value = _json_without_frames(text)
            walk_above = _DEFAULT_JSON_FLOOR if limits is DEFAULT_LIMITS else _json_floor(limits)
    except ProtocolError:
        raise
    except RecursionError as exc:
        raise ProtocolError("body nests too deep", ErrorCode.LIMIT_EXCEEDED) from exc
    except Exception as exc:  # anything a malformed body can make msgpack/json raise
        raise ProtocolError(
            f"malformed {codec.name} body: {str(exc) or type(exc).__name__}"
        ) from exc
    # A body no longer than a limit cannot exceed it (a level of nesting, an item, a
    # pair or a byte of string each costs at least a byte): small bodies skip the walk.
    if size > walk_above:
        _check_body(value, body, size, codec, limits)
    return value


def _json_floor(limits: Limits) -> int:
    """Body size up to which no JSON body can exceed a depth or length limit."""
    return min(limits.max_depth, limits.max_array_len, limits.max_map_len, limits.max_str_len)


_DEFAULT_JSON_FLOOR = _json_floor(DEFAULT_LIMITS)


def _check_body(value: Any, body: Buffer, size: int, codec: Codec, limits: Limits) -> None:
    """Enforce max_depth (both codecs), and list, map and string lengths in JSON, which
    has no limits of its own; skip the walk when the body's size or its count of
    container-opening bytes shows no limit can be exceeded."""
    if type(body) is not bytes and type(body) is not bytearray:
        body = bytes(memoryview(body))
    if codec is _MSGPACK:
        if len(body.translate(None, _NOT_MSGPACK_CONTAINER)) > limits.max_depth:
            _walk(value, limits.max_depth, 0, 0, 0)
        return
    max_list = limits.max_array_len if size > limits.max_array_len else 0
    max_map = limits.max_map_len if size > limits.max_map_len else 0
    max_str = limits.max_str_len if size > limits.max_str_len else 0
    if max_list or max_map or max_str or body.count(b"[") + body.count(b"{") > limits.max_depth:
        _walk(value, limits.max_depth, max_list, max_map, max_str)


def _walk(value: Any, max_depth: int, max_list: int, max_map: int, max_str: int) -> None:
    """Check ``value`` level by level; a length limit of 0 is not checked.

    Each level is flattened with C-level calls (``chain``, ``map``, ``set``), so a
    long list of small lists — a ``map`` chunk of argument tuples — costs no Python
    loop per item; a level whose nodes are all lists (or all maps) is taken whole,
    with no comprehension to sort them (a third off a ``map`` chunk's walk).
    """
    if type(value) is not list and type(value) is not dict:
        if max_str and type(value) is str:
            _check_strings((value,), max_str)
        return
    level: list[Any] = [value]
    only_lists = type(value) is list  # every node of ``level`` is a list
    depth = 1
    while True:
        if depth > max_depth:
            raise ProtocolError(
                f"body nests deeper than {max_depth} levels", ErrorCode.LIMIT_EXCEEDED
            )
        lists = level if only_lists else [node for node in level if type(node) is list]
        children: list[Any] = list(_chain(lists))
        if max_list:
            longest = max(map(len, lists), default=0)
            if longest > max_list:
                raise ProtocolError(
                    f"list of {longest} items exceeds limit {max_list}",
                    ErrorCode.LIMIT_EXCEEDED,
                )
        if len(lists) < len(level):
            for node in level:
                if type(node) is not dict:
                    continue
                if max_map and len(node) > max_map:
                    raise ProtocolError(
                        f"map of {len(node)} pairs exceeds limit {max_map}",
                        ErrorCode.LIMIT_EXCEEDED,
                    )
                if max_str:
                    _check_strings(node, max_str)
                children += node.values()
        kinds = set(map(type, children))
        if max_str and str in kinds:
            _check_strings(children, max_str)
        if list not in kinds and dict not in kinds:
            return
        if len(kinds) == 1:  # all lists, or all maps: the next level is all of them
            level = children
        else:
            level = [item for item in children if type(item) is list or type(item) is dict]
        only_lists = dict not in kinds
        depth += 1


def _check_strings(items: Any, max_str: int) -> None:
    for item in items:
        # A character is 1 to 4 bytes of UTF-8: encode only strings near the limit.
        if (
            type(item) is str
            and len(item) * 4 > max_str
            and (len(item) > max_str or len(item.encode("utf-8", "surrogatepass")) > max_str)
        ):
            raise ProtocolError(
                f"string of more than {max_str} bytes exceeds the limit",
                ErrorCode.LIMIT_EXCEEDED,
            )


def _ext_without_frames(code: int, data: bytes) -> Any:
    """msgpack ext hook of a message with no out-of-band frames: no descriptor fits."""
    if code != EXT_NDARRAY:
        raise ProtocolError(f"unknown msgpack extension type {code}")
    raise ProtocolError("array descriptor in a message without out-of-band frames")


def _json_object_without_frames(obj: dict[str, Any]) -> Any:
    """JSON object hook of a message with no out-of-band frames: no descriptor fits."""
    if len(obj) == 1 and (JSON_NDARRAY_KEY in obj or JSON_BYTES_KEY in obj):
        raise ProtocolError(
            f"{next(iter(obj))!r} descriptor in a message without out-of-band frames"
        )
    return obj


def _finite_float(text: str) -> float:
    """JSON number hook: a float out of range (1e999) is refused, not made infinite."""
    value = float(text)
    if value - value:  # inf - inf is NaN, which is true; a finite x - x is 0.0
        raise ProtocolError(f"JSON number {text[:40]} is out of the float64 range")
    return value


def _no_constant(name: str) -> Any:
    """JSON constant hook: NaN, Infinity and -Infinity are not JSON (RFC 8259)."""
    raise ProtocolError(f"{name} is not a JSON number")


def _int_in_range(text: str) -> int:
    """JSON integer hook: an integer outside MIN_INT..MAX_INT is refused."""
    if len(text) <= 20:  # both ends of the range have 20 characters; JSON has no "01"
        value = int(text)
        if MIN_INT <= value <= MAX_INT:
            return value
    elif len(text) > 40:  # do not quote (or convert) thousands of digits
        text = f"{text[:20]}... ({len(text.lstrip('-'))} digits)"
    raise _int_range_error(text)


def parse_json(text: str | bytes) -> Any:
    """Parse JSON text from outside the mesh under the rules of a JSON body (SPEC
    section 4): integers within `MIN_INT`..`MAX_INT`, floats within the float64 range,
    no ``NaN`` or ``Infinity``. The HTTP gateway reads request bodies with it, so what
    it accepts can go on the wire in either codec. Like `json.loads`, it takes bytes
    in UTF-8, UTF-16 or UTF-32.

    Raises:
        ProtocolError: a number the wire does not carry; the message names it.
        ValueError: ``text`` is not JSON.
    """
    return json.loads(
        text, parse_int=_int_in_range, parse_float=_finite_float, parse_constant=_no_constant
    )


# Shared like json's own default decoder: decoding keeps no state in the decoder.
_JSON_WITHOUT_FRAMES = json.JSONDecoder(
    object_hook=_json_object_without_frames,
    parse_float=_finite_float,
    parse_constant=_no_constant,
)
# The decoder's scanner, (text, index) -> (value, end): set by JSONDecoder.__init__,
# so typeshed does not declare it.
_scan_without_frames: Callable[[str, int], tuple[Any, int]]
_scan_without_frames = _JSON_WITHOUT_FRAMES.scan_once  # type: ignore[attr-defined]


def _json_without_frames(text: str) -> Any:
    """``_JSON_WITHOUT_FRAMES.decode(text)``, minus its two regex calls when the text
    starts with its value (what every encoder sends)."""
    try:
        value, end = _scan_without_frames(text, 0)
    except StopIteration:  # no value at offset 0: leading whitespace, or none at all
        return _JSON_WITHOUT_FRAMES.decode(text)
    if end == len(text) or not text[end:].strip(" \t\n\r"):
        return value
    return _JSON_WITHOUT_FRAMES.decode(text)  # raises "Extra data" for what follows


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
            # The payload is at most _MAX_EXT_BYTES: msgpack's own bounds, derived from
            # its length, keep it small; `build` checks the shape against max_ndim.
            desc = _unpackb(data, raw=False)
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
        dt = _dtype(dtype)
        if type(shape) is not list:
            raise ProtocolError(f"array shape must be a list of sizes, not {shape!r}")
        if len(shape) > self.limits.max_ndim:
            raise ProtocolError(
                f"array of {len(shape)} dimensions exceeds limit max_ndim={self.limits.max_ndim}"
            )
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


_ZERO_COUNTS = frozenset(("0", "00"))  # "[0ns]": a unit of no time at all

# Accepted dtype strings, parsed: np.dtype(text) costs more than the lookup. Bounded,
# since a peer can name any number of distinct datetime units.
_KNOWN_DTYPES: dict[str, np.dtype] = {}
_MAX_KNOWN_DTYPES = 256


def _dtype(text: Any) -> np.dtype:
    """The dtype a descriptor names, if it is one that travels (SPEC section 5)."""
    if type(text) is not str:
        raise ProtocolError(f"array dtype {text!r} is not an accepted dtype string")
    dt = _KNOWN_DTYPES.get(text)
    if dt is not None:
        return dt
    match = _DTYPE_RE.fullmatch(text)
    if match is None:
        raise ProtocolError(f"array dtype {text!r} is not an accepted dtype string")
    order, kind, size, unit = match.groups()
    itemsize = int(size)
    if (kind, itemsize) not in _SENDABLE or (unit is not None and kind not in "mM"):
        raise ProtocolError(f"array dtype {text!r} is not allowed")
    if kind in "mM" and (unit is None or unit[1:-1].rstrip(string.ascii_letters) in _ZERO_COUNTS):
        # No unit ("generic") or a count of 0 ("[0ns]"): no time span to count in.
        raise ProtocolError(
            f"array dtype {text!r}: datetime64 and timedelta64 need a unit with a count "
            "of at least 1, e.g. '<M8[ns]' or '<m8[10ms]' (convert with .astype first)"
        )
    if (order == "|") != (itemsize == 1):
        raise ProtocolError(
            f"array dtype {text!r}: the byte order must be '|' for 1-byte items and "
            "'<' or '>' for larger ones"
        )
    try:
        dt = np.dtype(text)
    except TypeError:  # a datetime unit numpy does not know
        raise ProtocolError(f"array dtype {text!r} is not allowed") from None
    if len(_KNOWN_DTYPES) < _MAX_KNOWN_DTYPES:
        _KNOWN_DTYPES[text] = dt
    return dt
