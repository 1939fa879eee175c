"""What a message means, as JSON: the ``decoded`` part of a test vector (SPEC section 14).

Shared by tests/make_vectors.py, which writes protocol/vectors/*.json, and
tests/test_vectors.py, which runs them.

A vector gives a message's frames as hex and its meaning as plain JSON, so a peer in
any language can check its decoder and encoder against it. `describe` turns a message
into that meaning, `message` turns a meaning back into a message; body values go
through `to_json` and `from_json`.

In a meaning, body values are JSON with three tagged forms, each an object with one
key that starts with ``$`` (no other object in a meaning has that shape):

- ``{"$bytes": "00ff"}``: bytes, as lowercase hex;
- ``{"$ndarray": {"dtype": "<f8", "shape": [2], "values": [1.0, 2.0]}}``: a numpy
  array; ``values`` nested by ``shape`` (a single value for shape ``[]``), complex items
  as ``[real, imag]``, datetime64/timedelta64 items as their int64 counts;
- ``{"$map": [[key, value], ...]}``: a map whose keys are not all strings, or whose one
  key starts with ``$``.

An integer is a JSON number without fraction or exponent, a float always has one
(``1.0``, ``1e+300``); read integers exactly (2**64 - 1 occurs).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from protocol import (
    FLAG_BATCH,
    FLAG_META,
    FLAG_ROUTED,
    FLAG_STREAM,
    Bundle,
    Cancel,
    Codec,
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

__all__ = ["describe", "from_json", "message", "to_json"]

BYTES = "$bytes"
NDARRAY = "$ndarray"
MAP = "$map"

_CLASSES: dict[MessageType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Request,
        Reply,
        Error,
        Ping,
        Pong,
        Hello,
        Ready,
        Progress,
        Disconnect,
        Cancel,
        Item,
        End,
        Credit,
    )
}
_EMPTY_BODY = (MessageType.PING, MessageType.PONG, MessageType.CANCEL)
_HEADER_ONLY = ("id", "codec")  # fields the header carries, not the body


def to_json(value: Any) -> Any:
    """``value`` (a decoded body value, or one about to be encoded) as JSON.

    Raises:
        ValueError: a float that JSON cannot hold (NaN, infinity).
        TypeError: a value that is not a body value.
    """
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return {BYTES: bytes(value).hex()}
    if isinstance(value, np.ndarray):
        return {
            NDARRAY: {"dtype": value.dtype.str, "shape": list(value.shape), "values": _items(value)}
        }
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        if all(type(key) is str for key in value) and not _tagged(value):
            return {key: to_json(item) for key, item in value.items()}
        return {MAP: [[to_json(key), to_json(item)] for key, item in value.items()]}
    raise TypeError(f"{type(value).__name__} is not a body value")


def from_json(data: Any) -> Any:
    """The body value JSON ``data`` (from `to_json`) stands for."""
    if isinstance(data, list):
        return [from_json(item) for item in data]
    if not isinstance(data, dict):
        return data
    if _tagged(data):
        tag, inner = next(iter(data.items()))
        if tag == BYTES:
            return bytes.fromhex(inner)
        if tag == NDARRAY:
            return _array(inner["dtype"], inner["shape"], inner["values"])
        if tag == MAP:
            return {from_json(key): from_json(item) for key, item in inner}
        raise ValueError(f"unknown tag {tag!r}")
    return {key: from_json(item) for key, item in data.items()}


def describe(msg: Message, body: Any = None) -> dict[str, Any]:
    """The meaning of ``msg``: header fields, ``body`` and, for map bodies, ``fields``.

    ``body`` is the map a map-bodied message (ERROR, HELLO, READY, PROGRESS,
    DISCONNECT) carries on the wire, unknown keys included; other types take their
    body from ``msg``. PING, PONG and CANCEL have no body.
    """
    meaning: dict[str, Any] = {
        "type": msg.TYPE.name,
        "id": msg.id,
        "codec": Codec(msg.codec).name,
        "flags": (FLAG_BATCH if getattr(msg, "batch", False) else 0)
        | (FLAG_META if getattr(msg, "trace", "") or getattr(msg, "window", 0) else 0)
        | (FLAG_STREAM if getattr(msg, "window", 0) else 0)
        | (FLAG_ROUTED if getattr(msg, "clients", ()) else 0),
        "ttl_ms": msg.ttl_ms if isinstance(msg, Request) else 0,
        "target": msg.target if isinstance(msg, Request) else "",
    }
    if isinstance(msg, Request):
        meta: dict[str, Any] = {"traceparent": msg.trace} if msg.trace else {}
        if msg.window:
            meta["window"] = msg.window
        meaning["body"] = to_json([msg.args, msg.kwargs, *([meta] if meta else [])])
        meaning["trace"] = msg.trace
        if msg.window:  # a stream request (revision 1.2): its initial credit
            meaning["window"] = msg.window
    elif isinstance(msg, Reply):
        meaning["body"] = to_json(msg.result)
    elif isinstance(msg, Item):  # a value, as a REPLY's
        meaning["body"] = to_json(msg.value)
    elif isinstance(msg, Bundle):  # its body: [client,] header, body, [client,] ... as bin
        clients = msg.clients or (None,) * len(msg.messages)
        meaning["body"] = to_json(
            [
                frame
                for client, pair in zip(clients, msg.messages, strict=True)
                for frame in ((client, *pair) if client is not None else pair)
            ]
        )
    elif msg.TYPE not in _EMPTY_BODY:
        if not isinstance(body, dict):
            raise TypeError(f"a {msg.TYPE.name} meaning needs its body map")
        meaning["body"] = to_json(body)
        meaning["fields"] = {
            f.name: to_json(getattr(msg, f.name))
            for f in dataclasses.fields(msg)
            if f.name not in _HEADER_ONLY
        }
    return meaning


def message(meaning: dict[str, Any]) -> Message:
    """The message a meaning (from `describe`) stands for."""
    mtype = MessageType[meaning["type"]]
    rid = meaning["id"]
    codec = Codec[meaning["codec"]]
    batch = bool(meaning["flags"] & FLAG_BATCH)
    if mtype is MessageType.REQUEST:
        args, kwargs = from_json(meaning["body"])[:2]
        return Request(
            rid,
            meaning["target"],
            args,
            kwargs,
            meaning["ttl_ms"],
            codec,
            batch,
            meaning["trace"],
            meaning.get("window", 0),
        )
    if mtype is MessageType.REPLY:
        return Reply(rid, from_json(meaning["body"]), codec, batch)
    if mtype is MessageType.ITEM:
        return Item(rid, from_json(meaning["body"]), codec, batch)
    if mtype is MessageType.BUNDLE:
        flat = from_json(meaning["body"])
        if meaning["flags"] & FLAG_ROUTED:
            pairs = tuple(zip(flat[1::3], flat[2::3], strict=True))
            return Bundle(pairs, rid, codec, tuple(flat[0::3]))
        return Bundle(tuple(zip(flat[0::2], flat[1::2], strict=True)), rid, codec)
    fields = {name: from_json(value) for name, value in meaning.get("fields", {}).items()}
    return _CLASSES[mtype](id=rid, codec=codec, **fields)


def _tagged(obj: dict[Any, Any]) -> bool:
    """True for an object of one key that starts with "$" (a tagged form)."""
    return len(obj) == 1 and str(next(iter(obj))).startswith("$")


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{value} has no JSON form: keep NaN and infinities out of vectors")
    return value


def _items(arr: np.ndarray) -> Any:
    """An array's items as nested JSON lists (one value for a 0-d array)."""
    kind = arr.dtype.kind
    if kind in "mM":
        return arr.view(arr.dtype.str[0] + "i8").tolist()
    if kind == "c":
        arr = np.stack([arr.real, arr.imag], axis=-1)
    items = arr.tolist()
    if kind in "fc":
        for x in arr.ravel().tolist():
            _finite(x)
    return items


def _array(dtype: str, shape: list[int], values: Any) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind in "mM":
        arr = np.array(values, dtype=dtype[0] + "i8").view(dt)
    elif dt.kind == "c":
        pairs = np.array(values, dtype="f8").reshape([*shape, 2])
        arr = (pairs[..., 0] + 1j * pairs[..., 1]).astype(dt)
    else:
        arr = np.array(values, dtype=dt)
    return arr.reshape(shape)
