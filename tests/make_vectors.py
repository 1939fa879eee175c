"""Writes the test vectors, protocol/vectors/*.json, from the cases below (SPEC section 14).

Every case is built from explicit Python values: valid messages through the reference
encoder, or byte by byte where the point is bytes that encoder never writes (another
peer's spelling, a 1.0 peer's HELLO); malformed ones byte by byte. Expectations are
written here from SPEC.md's text, never read back from the decoder. From the repository
root, after changing a case:

    python tests/make_vectors.py           # rewrite the files
    python tests/make_vectors.py --check   # exit 1 if a file differs

tests/test_vectors.py fails when a checked-in file differs from what this makes, and
runs every case against protocol.decode, protocol.encode and a live worker.

It lives in tests/, beside the kits, because it is a tool of the repository: only the
JSON files ship (package ``protocol.vectors``, data only).
"""

from __future__ import annotations

import dataclasses
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
from vectorkit import describe

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
    ErrorCode,
    Hello,
    Item,
    Limits,
    Message,
    MessageType,
    Ping,
    Pong,
    Progress,
    Ready,
    Reply,
    Request,
    UnknownHandler,
    encode,
)

__all__ = ["FENCE", "FORMAT", "HERE", "build", "main"]


def _plain_body(value: Any, codec: Codec) -> bytes:
    """A body of plain values written by hand (no arrays), compact JSON or MessagePack."""
    if codec is MSGPACK:
        return bytes(msgpack.packb(value))
    return json.dumps(value, separators=(",", ":")).encode()


FORMAT = 1
"""The vector files' format version: bumped when a key changes meaning or goes away."""

FENCE = 2**64 - 2
"""The id of the PING a runner sends after each worker case (see worker.json)."""

HERE = Path(__file__).resolve().parents[1] / "protocol" / "vectors"
"""Where the vector files live."""

Case = dict[str, Any]

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
"""W3C Trace Context's own example traceparent."""

MSGPACK = Codec.MSGPACK
JSON = Codec.JSON
CODECS = (MSGPACK, JSON)
REQUEST = MessageType.REQUEST
REPLY = MessageType.REPLY
ERROR = MessageType.ERROR
PING = MessageType.PING
PONG = MessageType.PONG
HELLO = MessageType.HELLO
READY = MessageType.READY
PROGRESS = MessageType.PROGRESS
DISCONNECT = MessageType.DISCONNECT
CANCEL = MessageType.CANCEL
BUNDLE = MessageType.BUNDLE
ITEM = MessageType.ITEM
END = MessageType.END
CREDIT = MessageType.CREDIT
PROTOCOL = ErrorCode.PROTOCOL
VERSION = ErrorCode.UNSUPPORTED_VERSION
LIMIT = ErrorCode.LIMIT_EXCEEDED


# --- bytes by hand --------------------------------------------------------------------


def header(
    mtype: int,
    rid: int = 0,
    *,
    codec: int = MSGPACK,
    flags: int = 0,
    ttl: int = 0,
    target: bytes = b"",
    tlen: int | None = None,
    version: int = 1,
    signature: bytes = b"ZM",
) -> bytes:
    """A header frame field by field (SPEC section 2): ``!2sBBBBQIH`` and the target."""
    size = len(target) if tlen is None else tlen
    fields = (signature, version, mtype, codec, flags, rid, ttl, size)
    return struct.pack("!2sBBBBQIH", *fields) + target


def mp(value: Any) -> bytes:
    """``value`` in MessagePack as the reference sender writes it (str as str, bytes as bin)."""
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def js(value: Any) -> bytes:
    """``value`` as compact JSON text with raw UTF-8, as the reference sender writes it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def body(value: Any, codec: Codec) -> bytes:
    """``value`` as a body in ``codec`` (no arrays, no JSON bytes)."""
    return mp(value) if codec is MSGPACK else js(value)


def ext(payload: bytes, code: int = 1) -> bytes:
    """A MessagePack extension value (type 1: an array descriptor, SPEC section 5)."""
    packed: bytes = msgpack.packb(msgpack.ExtType(code, payload))
    return packed


def nested(depth: int, codec: Codec) -> bytes:
    """A body of ``depth`` nested arrays, the innermost empty (the outermost counts 1)."""
    if codec is MSGPACK:
        return b"\x91" * (depth - 1) + b"\x90"
    return b"[" * depth + b"]" * depth


def request(
    rid: int, body: bytes, codec: Codec = MSGPACK, *oob: bytes, flags: int = 0
) -> list[bytes]:
    """The frames of a ``math.add`` REQUEST around a body written by hand."""
    return [header(REQUEST, rid, codec=codec, flags=flags, target=b"math.add"), body, *oob]


def frames_of(msg: Message) -> list[bytes]:
    """What the reference encoder makes of ``msg``, as bytes."""
    return [bytes(memoryview(frame)) for frame in encode(msg)]


ADD_BODY = b"\x92\x92\x01\x02\x80"  # [[1, 2], {}]


# --- cases ------------------------------------------------------------------------------


def wire_body(msg: Message) -> dict[str, Any]:
    """The map SPEC section 7 says the reference sender writes for a map-bodied message."""
    if isinstance(msg, Error):  # 7.1: code and message; type, traceback, detail when set
        out: dict[str, Any] = {"code": msg.code, "message": msg.message}
        out.update({k: v for k, v in (("type", msg.type), ("traceback", msg.traceback)) if v})
        if msg.detail is not None:
            out["detail"] = msg.detail
        return out
    if isinstance(msg, Hello):  # 7.2: all sixteen keys
        return {
            "role": msg.role,
            "name": msg.name,
            "version": msg.version,
            "host": msg.host,
            "pid": msg.pid,
            "services": msg.services,
            "capacity": msg.capacity,
            "in_flight": msg.in_flight,
            "uptime": msg.uptime,
            "heartbeat_ms": msg.heartbeat_ms,
            "protocol": msg.protocol,
            "threads": msg.threads,
            "async_slots": msg.async_slots,
            "async_handlers": msg.async_handlers,
            "stats": msg.stats,
            "bundle": msg.bundle,
            "streams": msg.streams,
        }
    if isinstance(msg, Ready):  # 7.3
        return {"credit": msg.credit}
    if isinstance(msg, Progress):  # 7.5: all three keys
        return {"done": msg.done, "total": msg.total, "note": msg.note}
    if isinstance(msg, Disconnect):  # 7.6
        return {"reason": msg.reason}
    if isinstance(msg, End):  # 7.11
        return {"items": msg.items}
    if isinstance(msg, Credit):  # 7.11
        return {"credit": msg.credit}
    return {}


class Cases(list[Case]):
    """The cases of one file, in order; ``spec`` is the sections they check unless a
    case names others."""

    def __init__(self, spec: str) -> None:
        super().__init__()
        self.spec = spec

    def _start(self, name: str, spec: str | None, note: str) -> Case:
        assert all(case["name"] != name for case in self), f"case {name} twice"
        case: Case = {"name": name, "spec": spec or self.spec}
        if note:
            case["note"] = note
        self.append(case)
        return case

    def valid(
        self,
        name: str,
        msg: Message,
        *,
        frames: list[bytes] | None = None,
        body: dict[str, Any] | None = None,
        sent: Message | None = None,
        spec: str | None = None,
        note: str = "",
    ) -> None:
        """A message that decodes: ``msg`` is its meaning.

        ``frames`` default to what the reference encoder makes of ``sent`` (default:
        ``msg`` itself), ``body`` to the map `wire_body` gives. ``canonical`` says
        whether the reference encoder turns the meaning back into exactly these frames.
        """
        by_encoder = frames is None
        if frames is None:
            frames = frames_of(msg if sent is None else sent)
        canonical = frames_of(msg) == frames
        # By hand only what the encoder does not write; what it writes, it writes alike
        # from the meaning and from the value it was made of (a non-contiguous array...).
        assert canonical == by_encoder, f"{name}: canonical is {canonical}"
        case = self._start(name, spec, note)
        case["frames"] = [frame.hex() for frame in frames]
        case["decoded"] = describe(msg, wire_body(msg) if body is None else body)
        case["canonical"] = canonical

    def refused(
        self,
        name: str,
        frames: list[bytes],
        check: str,
        code: ErrorCode = PROTOCOL,
        rid: int = 0,
        codec: Codec = MSGPACK,
        *,
        spec: str | None = None,
        limits: dict[str, int] | None = None,
        deviation: str = "",
        note: str = "",
    ) -> None:
        """A message a receiver refuses by rule ``check`` with ``code``; ``rid`` and
        ``codec`` are those of the ERROR that answers it (SPEC section 6)."""
        case = self._start(name, spec, "")
        case["check"] = check
        if note:
            case["note"] = note
        if deviation:
            case["deviation"] = deviation
        if limits:
            Limits(**limits)  # a misspelt limit fails here, not in every reader
            case["limits"] = limits
        case["frames"] = [frame.hex() for frame in frames]
        error = {"code": code.name, "number": int(code), "request_id": rid, "codec": codec.name}
        case["error"] = error

    def answered(
        self,
        name: str,
        frames: list[bytes],
        answer: dict[str, Any] | None,
        *,
        spec: str | None = None,
        note: str = "",
    ) -> None:
        """A message sent to a live worker, and what it answers (None: nothing at all)."""
        case = self._start(name, spec, note)
        case["frames"] = [frame.hex() for frame in frames]
        case["answer"] = answer


def answer(mtype: MessageType, rid: int, codec: Codec = MSGPACK, **extra: Any) -> dict[str, Any]:
    """What a worker answers: type, id, codec, and ``code`` (an ErrorCode) or what else
    the runner checks (``body``, ``flags``, ``role``)."""
    out: dict[str, Any] = {"type": mtype.name, "id": rid, "codec": codec.name}
    code = extra.pop("code", None)
    if code is not None:
        out.update(code=code.name, number=int(code))
    out.update(extra)
    return out


# --- messages.json ----------------------------------------------------------------------

HELLO_1_1 = Hello(
    7,
    role="worker",
    name="w1",
    version="0.1.0",
    host="h1",
    pid=1234,
    services={"math": ["add", "wait"]},
    capacity=5,
    in_flight=1,
    uptime=12.5,
    heartbeat_ms=1000,
    protocol="1.1",
    threads=4,
    async_slots=1,
    async_handlers={"math": ["wait"]},
    stats={
        "calls": 12,
        "errors": 1,
        "bounds": [0.001, 0.01, 0.1],
        "buckets": [3, 8, 1, 0],
        "rss": 52428800,
        "cpu": 1.25,
    },
)

CLIENT_1_0_HELLO: dict[str, Any] = {
    "role": "client",
    "name": "",
    "version": "0.1.0",
    "host": "client-host",
    "pid": 4242,
    "services": {},
    "capacity": 0,
    "in_flight": 0,
    "uptime": 0.0,
    "heartbeat_ms": 0,
}
"""The HELLO body a zeromesh 0.1.0 client (revision 1.0) sends on connecting: the ten
keys of its encoder, in its order; host and pid made up. No ``protocol`` key."""

CLIENT_1_0 = Hello(0, role="client", version="0.1.0", host="client-host", pid=4242)
CLIENT_1_0_MEANING = dataclasses.replace(CLIENT_1_0, protocol="1.0")

ERRORS: list[tuple[ErrorCode, str]] = [
    (ErrorCode.PROTOCOL, "request body must be [args, kwargs]"),
    (ErrorCode.UNSUPPORTED_VERSION, "protocol version 2 is not supported"),
    (ErrorCode.LIMIT_EXCEEDED, "body nests deeper than 32 levels"),
    (ErrorCode.UNKNOWN_HANDLER, "no handler 'math.median'"),
    (ErrorCode.BAD_ARGUMENTS, "add() missing 1 required positional argument: 'b'"),
    (ErrorCode.FORBIDDEN, "key client1 may call: demo"),
    (ErrorCode.TIMEOUT, "deadline passed in the queue"),
    (ErrorCode.NO_WORKERS, "no worker of service math is connected"),
    (ErrorCode.WORKER_LOST, "sent to 3 workers, all lost"),
    (ErrorCode.OVERLOADED, "service math has 1000 requests queued"),
    (ErrorCode.CANCELLED, "cancelled before it started"),
    (ErrorCode.DRAINING, "worker w1 is draining"),
    (ErrorCode.REMOTE, "boom"),
]
TRACEBACK = "Traceback (most recent call last):\n...\nValueError: boom\n"


def message_cases() -> Cases:
    c = Cases("3")
    for codec in CODECS:
        n = codec.name.lower()
        c.valid(
            f"request-add-{n}", Request(1, "math.add", [1, 2], {}, 30000, codec), spec="10.1, 10.2"
        )
        c.valid(f"reply-add-{n}", Reply(1, 3, codec), spec="10.1, 10.2")
        args = ["{} and {}", None, True, 1.5]
        c.valid(
            f"request-kwargs-{n}",
            Request(2, "text.format", args, {"sep": "ü", "n": -1}, 0, codec),
            spec="3, 4",
        )
        c.valid(f"request-no-arguments-{n}", Request(3, "math.pid", [], {}, 0, codec))
        c.valid(
            f"request-batch-{n}",
            Request(4, "math.add", [[1, 2], [3, 4], [5, 6]], {}, 1500, codec, batch=True),
            spec="2, 3, 7.9",
            note="flags bit 0: args is one argument list per call",
        )
        c.valid(
            f"request-trace-{n}",
            Request(5, "math.add", [1, 2], {}, 30000, codec, trace=TRACEPARENT),
            spec="3",
            note="revision 1.1: flags bit 1 (meta); the body's third item carries the "
            "W3C traceparent",
        )
        c.valid(
            f"request-trace-batch-{n}",
            Request(6, "math.add", [[1, 2]], {}, 0, codec, batch=True, trace=TRACEPARENT),
            spec="3, 7.9",
        )
        for label, meta in (
            ("malformed-traceparent", {"traceparent": "00-xyz"}),
            ("traceparent-version-ff", {"traceparent": "ff" + TRACEPARENT[2:]}),
            ("no-traceparent", {"later": 1}),
        ):
            c.valid(
                f"request-meta-{label}-{n}",
                Request(7, "math.add", [1, 2], {}, 0, codec),
                frames=[
                    header(REQUEST, 7, codec=codec, flags=FLAG_META, target=b"math.add"),
                    _plain_body([[1, 2], {}, meta], codec),
                ],
                spec="3",
                note="a traceparent that is missing or does not parse is ignored (W3C "
                "Trace Context), not refused; other meta keys are ignored",
            )
        c.valid(
            f"request-largest-header-fields-{n}",
            Request(2**64 - 1, "s" * 253 + ".h", [], {}, 2**32 - 1, codec),
            spec="2, 8",
            note="id 2**64-1, ttl_ms 2**32-1, a 255-byte target: a 275-byte header",
        )
        c.valid(
            f"request-utf8-target-{n}",
            Request(5, "сервис.метод", [], {}, 0, codec),
            spec="2",
            note="the target is UTF-8; its length is counted in bytes",
        )
        c.valid(f"reply-null-{n}", Reply(1, None, codec), spec="4")
        value = {"sum": 3, "items": [1.5, None, "x", True, False], "nested": {"a": [[]], "b": {}}}
        c.valid(f"reply-values-{n}", Reply(2, value, codec), spec="4")
        ints = [0, 1, -1, 127, 128, -32, -33, 255, 256, 65535, 65536, 2**32, -(2**63), 2**64 - 1]
        c.valid(
            f"reply-integers-{n}",
            Reply(3, ints, codec),
            spec="4",
            note="every MessagePack integer form, and both ends of the range -2**63..2**64-1",
        )
        c.valid(
            f"reply-floats-{n}",
            Reply(4, [1.5, -0.0, 0.1, 1e300, 5e-324, 1.0], codec),
            spec="4",
            note="float 64; 1.0 stays a float (JSON writes it with a fraction)",
        )
        c.valid(f"reply-strings-{n}", Reply(5, ["", "ü", "日本", "a" * 40, "😀"], codec), spec="4")
        c.valid(f"reply-batch-{n}", Reply(4, [3, 7, 11], codec, batch=True), spec="2, 3, 7.9")
        c.valid(
            f"reply-depth-32-{n}",
            Reply(6, _nest(32), codec),
            spec="8",
            note="max_depth (32) exactly",
        )
        c.valid(f"ping-{n}", Ping(6, codec), spec="3, 7.4")
        c.valid(f"pong-{n}", Pong(6, codec), spec="3, 7.4")
        c.valid(f"cancel-{n}", Cancel(12, codec), spec="3, 7.9")
        hello = dataclasses.replace(HELLO_1_1, codec=codec)
        c.valid(f"hello-1.1-worker-{n}", hello, spec="7.2, 9", note="all sixteen keys")
        c.valid(
            f"hello-1.0-client-{n}",
            dataclasses.replace(CLIENT_1_0_MEANING, codec=codec),
            frames=[header(HELLO, 0, codec=codec), body(CLIENT_1_0_HELLO, codec)],
            body=CLIENT_1_0_HELLO,
            spec="7.2, 9",
            note='a 1.0 peer\'s HELLO: ten keys, no protocol key, so protocol is "1.0"',
        )
        c.valid(f"ready-{n}", Ready(0, 3, codec), spec="7.3")
        c.valid(f"ready-zero-{n}", Ready(0, 0, codec), spec="7.3")
        c.valid(f"progress-{n}", Progress(5, 2.5, 10.0, "half way", codec), spec="7.5")
        c.valid(f"progress-total-unknown-{n}", Progress(5, 1, None, "", codec), spec="7.5")
        c.valid(f"disconnect-{n}", Disconnect(0, "draining", codec), spec="7.6")
        remote = Error(8, ErrorCode.REMOTE, "boom", "ValueError", TRACEBACK, codec=codec)
        c.valid(f"error-30-remote-{n}", remote, spec="6, 7.1")
        detail = {"index": 1, "results": [3]}
        c.valid(
            f"error-batch-item-{n}",
            Error(4, ErrorCode.REMOTE, "boom", "ValueError", detail=detail, codec=codec),
            spec="7.1, 7.9",
            note="item 1 of a batch failed; detail holds the results before it",
        )
        c.valid(
            f"error-99-unknown-code-{n}",
            Error(9, 99, "from a newer peer", "FutureError", codec=codec),
            spec="6, 9",
            note="a code this document does not define still decodes (and is reported)",
        )
    for rid, (code, text) in enumerate(ERRORS, start=20):
        name = code.name.lower().replace("_", "-")
        c.valid(f"error-{int(code)}-{name}", Error(rid, code, text), spec="6, 7.1")
    spec_example = Error.from_exception(3, UnknownHandler("no handler math.median"))
    c.valid("error-10-spec-example", spec_example, spec="10.4")
    c.valid("ping-id-0", Ping(0), spec="7.4", note="the Python client's heartbeat uses id 0")
    c.valid("hello-client-defaults", Hello(0), spec="7.2")
    c.valid(
        "hello-client-bundle",
        Hello(0, role="client", version="0.1.0", bundle=True),
        spec="7.2, 7.10",
        note="revision 1.2: this client takes BUNDLEs",
    )
    requests = [
        tuple(frames_of(Request(31, "math.add", [1, 2], {}, 10000))),
        tuple(frames_of(Request(32, "math.add", [3, 4], {}, 10000, JSON))),
    ]
    c.valid(
        "bundle-requests",
        Bundle(tuple(requests)),  # type: ignore[arg-type]
        spec="7.10",
        note="two REQUESTs in one message; each keeps its own header (the second is JSON)",
    )
    answers = [
        tuple(frames_of(Reply(31, 3))),
        tuple(frames_of(Error(32, ErrorCode.TIMEOUT, "deadline passed in the queue"))),
        tuple(frames_of(Progress(33, 1, 2, ""))),
    ]
    c.valid("bundle-answers", Bundle(tuple(answers)), spec="7.10")  # type: ignore[arg-type]
    clients = (bytes.fromhex("006b8b4567"), bytes.fromhex("006b8b4569"))
    c.valid(
        "bundle-routed-requests",
        Bundle(tuple(requests), clients=clients),  # type: ignore[arg-type]
        spec="7.10, 12.2",
        note="broker to worker in the link's own envelope: each REQUEST after its client's id",
    )
    c.valid(
        "bundle-routed-answers",
        Bundle(tuple(answers[:2]), clients=clients),  # type: ignore[arg-type]
        spec="7.10, 12.2",
        note="worker to broker: each answer after the id of the client it is for",
    )
    _stream_messages(c)
    c.valid(
        "reply-integer-keys-msgpack",
        Reply(7, {1: "a", -2: "b", "c": 3}),
        spec="4",
        note="MessagePack map keys may be any scalar",
    )
    c.valid(
        "reply-dollar-key-msgpack",
        Reply(7, {"$nd": 1}),
        spec="4",
        note="one-key maps of $nd or $bytes are reserved in JSON only",
    )
    c.valid(
        "reply-dollar-key-and-another-json",
        Reply(7, {"$nd": 1, "x": 2}, JSON),
        spec="4",
        note="two keys: not a descriptor, an ordinary map",
    )
    c.valid("reply-bytes-msgpack", Reply(7, [b"", b"\x00\xff"]), spec="4", note="bin, inline")
    _other_spellings(c)
    return c


def _stream_messages(c: Cases) -> None:
    """Revision 1.2's streams (SPEC 7.11): the request, its items, its end, credit."""
    for codec in CODECS:
        n = codec.name.lower()
        c.valid(
            f"request-stream-{n}",
            Request(51, "gen.count", [3], {}, 60000, codec, window=16),
            spec="2, 3, 7.11",
            note="flags 0x06 (stream, meta): the meta map holds window, the first credit",
        )
        c.valid(
            f"request-stream-traced-{n}",
            Request(52, "gen.count", [3], {}, 0, codec, trace=TRACEPARENT, window=1),
            spec="3, 7.11",
        )
        c.valid(f"item-{n}", Item(51, {"row": 1, "name": "ü"}, codec), spec="7.11")
        c.valid(f"item-null-{n}", Item(51, None, codec), spec="7.11")
        c.valid(
            f"item-batch-{n}",
            Item(51, [0, {"row": 1}, None], codec, batch=True),
            spec="2, 7.11",
            note="flags 0x01: three items the worker had ready at once, in one ITEM",
        )
        c.valid(f"end-{n}", End(51, 3, codec), spec="7.11")
        c.valid(f"end-no-items-{n}", End(52, 0, codec), spec="7.11")
        c.valid(f"credit-{n}", Credit(51, 8, codec), spec="7.11")
    c.valid(
        "hello-worker-streams",
        Hello(0, role="worker", version="0.1.0", capacity=4, threads=4, bundle=True, streams=True),
        spec="7.2, 7.11",
        note="revision 1.2: this worker takes stream requests and CREDIT",
    )
    items = [tuple(frames_of(Item(51, i))) for i in range(3)]
    c.valid(
        "bundle-items",
        Bundle((*items, tuple(frames_of(End(51, 3))))),  # type: ignore[arg-type]
        spec="7.10, 7.11",
        note="items ready at once, coalesced for a client whose HELLO said bundle",
    )


def _other_spellings(c: Cases) -> None:
    """Valid messages the reference encoder does not write (``canonical`` false)."""
    c.valid(
        "request-json-whitespace",
        Request(1, "math.add", [1, 2], {}, 30000, JSON),
        frames=[
            header(REQUEST, 1, codec=JSON, ttl=30000, target=b"math.add"),
            b" [ [1, 2] ,\n {} ]\r\n\t",
        ],
        spec="4",
        note="receivers MUST accept any valid JSON",
    )
    c.valid(
        "reply-json-escapes",
        Reply(2, ["ü", "\n", "😀"], JSON),
        frames=[header(REPLY, 2, codec=JSON), b'["\\u00fc","\\n","\\ud83d\\ude00"]'],
        spec="4",
    )
    wide = b"\x93\xcd\x00\x03\xd3" + b"\xff" * 8 + b"\xcf" + b"\x00" * 7 + b"\x07"
    c.valid(
        "reply-msgpack-wide-integers",
        Reply(3, [3, -1, 7]),
        frames=[header(REPLY, 3), wide],
        spec="4",
        note="uint 16, int 64 and uint 64 forms of small integers",
    )
    c.valid(
        "reply-msgpack-float-32",
        Reply(4, 1.5),
        frames=[header(REPLY, 4), b"\xca\x3f\xc0\x00\x00"],
        spec="4",
        note="float 32 is accepted",
    )
    c.valid(
        "hello-empty-body",
        Hello(9, protocol="1.0"),
        frames=[header(HELLO, 9), b""],
        body={},
        spec="3, 7.2, 9",
        note="an empty body frame is an empty map: every field takes its default",
    )
    future = {"role": "client", "protocol": "1.2", "colour": "blue"}
    c.valid(
        "hello-unknown-key-json",
        Hello(9, role="client", protocol="1.2", codec=JSON),
        frames=[header(HELLO, 9, codec=JSON), js(future)],
        body=future,
        spec="3, 9",
        note="receivers ignore keys they do not know",
    )
    c.valid(
        "hello-uptime-integer",
        Hello(9, uptime=5.0, protocol="1.0"),
        frames=[header(HELLO, 9), mp({"uptime": 5})],
        body={"uptime": 5},
        spec="3, 7.2",
        note="uptime is a number: an integer is accepted",
    )
    empty = Progress(5, 0, None, "", JSON)
    c.valid(
        "progress-empty-body-json",
        empty,
        frames=[header(PROGRESS, 5, codec=JSON), b""],
        body={},
        spec="3, 7.5",
    )
    c.valid(
        "disconnect-empty-body",
        Disconnect(0, ""),
        frames=[header(DISCONNECT), b""],
        body={},
        spec="3, 7.6",
    )
    c.valid(
        "error-only-code",
        Error(10, ErrorCode.OVERLOADED, ""),
        frames=[header(ERROR, 10), mp({"code": 23})],
        body={"code": 23},
        spec="7.1",
        note="message, type and traceback default to empty",
    )
    null_detail = {"code": 24, "message": "x", "detail": None}
    c.valid(
        "error-detail-null-json",
        Error(10, ErrorCode.CANCELLED, "x", codec=JSON),
        frames=[header(ERROR, 10, codec=JSON), js(null_detail)],
        body=null_detail,
        spec="7.1",
        note="detail is a map or null",
    )


def _nest(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


# --- arrays.json ------------------------------------------------------------------------

DTYPES: list[tuple[str, list[Any]]] = [
    ("|b1", [True, False, True]),
    ("|i1", [-128, 0, 127]),
    ("|u1", [0, 1, 255]),
    ("<i2", [-32768, 1, 32767]),
    (">i2", [-32768, 1, 32767]),
    ("<i4", [-(2**31), 2**31 - 1]),
    ("<i8", [-(2**63), 2**63 - 1]),
    ("<u2", [0, 65535]),
    ("<u4", [0, 2**32 - 1]),
    ("<u8", [0, 2**64 - 1]),
    ("<f2", [0.5, -2.0, 65504.0]),
    ("<f4", [1.5, -0.25, 1024.0]),
    ("<f8", [1.0, 2.0]),
    (">f8", [1.0, -2.5]),
    ("<c8", [1 + 2j, -0.5 + 0j]),
    ("<c16", [1 + 2j, 0 - 1j]),
    ("<M8[ns]", ["1970-01-01T00:00:00", "2024-01-02T03:04:05.123456789", "NaT"]),
    ("<M8[D]", ["1970-01-01", "2024-02-29"]),
    ("<m8[s]", [-1, 3600]),
    ("<m8[10ms]", [1, 2]),
]
IN_BOTH_CODECS = ("<f8", "<c16", "<M8[ns]", "|b1")


def array_cases() -> Cases:
    c = Cases("5")
    f8 = np.array([1.0, 2.0], dtype="<f8")
    for codec in CODECS:
        c.valid(
            f"request-mean-{codec.name.lower()}",
            Request(2, "math.mean", [f8], {}, 30000, codec),
            spec="5, 10.3",
        )
    for rid, (dtype, values) in enumerate(DTYPES, start=100):
        arr = np.array(values, dtype=dtype)
        big = "the frame holds the items in the descriptor's byte order" if dtype[0] == ">" else ""
        for codec in CODECS if dtype in IN_BOTH_CODECS else (MSGPACK,):
            c.valid(f"dtype-{dtype}-{codec.name.lower()}", Reply(rid, arr, codec), note=big)
    c.valid("zero-d-f8", Reply(130, np.array(2.5, dtype="<f8")), note="shape [] is one item")
    c.valid("zero-d-i4-json", Reply(131, np.array(7, dtype="<i4"), JSON))
    c.valid(
        "numpy-complex-scalar",
        Reply(132, np.array(1 - 1j, dtype="<c16")),
        sent=Reply(132, np.complex128(1 - 1j)),
        spec="4",
        note="a numpy complex scalar travels as a 0-d array",
    )
    c.valid(
        "numpy-datetime-scalar",
        Reply(133, np.array("2024-01-01", dtype="<M8[D]")),
        sent=Reply(133, np.datetime64("2024-01-01", "D")),
        spec="4",
        note="a numpy datetime64 scalar travels as a 0-d array",
    )
    c.valid(
        "numpy-number-scalars",
        Reply(134, [1.5, 5, True]),
        sent=Reply(134, [np.float32(1.5), np.int64(5), np.bool_(True)]),
        spec="4",
        note="numpy bool, integer and float scalars travel as plain values",
    )
    c.valid("shape-2x3-i4", Reply(140, np.arange(6, dtype="<i4").reshape(2, 3)))
    c.valid("shape-2x2x2-f4-json", Reply(141, np.arange(8, dtype="<f4").reshape(2, 2, 2) / 4, JSON))
    c.valid("shape-0-f8", Reply(142, np.zeros(0, dtype="<f8")), note="an empty frame")
    c.valid("shape-2x0-i8", Reply(143, np.zeros((2, 0), dtype="<i8")))
    ones = np.ones([1] * 32, dtype="|u1")
    c.valid("shape-32-dimensions", Reply(144, ones), spec="5, 8", note="max_ndim (32) exactly")
    grid = np.arange(12, dtype="<i8").reshape(3, 4)
    c.valid(
        "non-contiguous-strided",
        Reply(150, np.ascontiguousarray(grid[:, ::2])),
        sent=Reply(150, _non_contiguous(grid[:, ::2])),
        note="sent from grid[:, ::2], a strided view: the frame is C order, contiguous",
    )
    c.valid(
        "non-contiguous-transposed",
        Reply(151, np.ascontiguousarray(grid.T)),
        sent=Reply(151, _non_contiguous(grid.T)),
        note="sent from a transposed (Fortran-order) view: the frame is C order",
    )
    a = np.array([1, 2, 3], dtype="<i2")
    b = np.array([[0.5]], dtype="<f8")
    w = np.array([True, False], dtype="|b1")
    for codec in CODECS:
        c.valid(
            f"three-arrays-{codec.name.lower()}",
            Request(160, "math.dot", [a, b], {"weights": w}, 0, codec),
            note="frames numbered in the order the encoder meets the arrays: args, then kwargs",
        )
    c.valid(
        "json-bytes-out-of-band",
        Reply(170, {"raw": b"\x00\x01\xff", "arr": a, "empty": b""}, JSON),
        spec="4, 5",
        note='in JSON, bytes travel as {"$bytes": i} and out-of-band frame i',
    )
    c.valid("json-bytes-argument", Request(171, "t.echo", [b"hello"], {}, 0, JSON), spec="4")
    c.valid(
        "msgpack-bytes-inline-beside-array",
        Reply(172, [b"\x00\xff", w]),
        spec="4, 5",
        note="in MessagePack, bytes stay inline (bin); only the array is out of band",
    )
    c.valid(
        "msgpack-descriptor-ext-8",
        Reply(173, f8),
        frames=[header(REPLY, 173), b"\xc7\x08\x01" + mp(["<f8", [2], 0]), f8.tobytes()],
        note="the same descriptor in an ext 8 value instead of fixext 8",
    )
    c.valid(
        "json-descriptor-key-order",
        Reply(174, f8, JSON),
        frames=[
            header(REPLY, 174, codec=JSON),
            b'{ "$nd" : { "frame" : 0, "shape" : [ 2 ], "dtype" : "<f8" } }',
            f8.tobytes(),
        ],
        note="the descriptor's keys in another order, with whitespace",
    )
    return c


def _non_contiguous(arr: np.ndarray) -> np.ndarray:
    assert not arr.flags.c_contiguous
    return arr


# --- malformed.json: section 2 ----------------------------------------------------------

COUNT = "frame count < 2"
SIGNATURE = "signature ≠ ZM"
VERSION_1 = "version ≠ 1"
SIZE = "header size < 20 or > max_header_bytes"
TARGET_LENGTH = "header size ≠ 20 + target length"


def malformed_cases() -> Cases:
    c = Cases("2")
    _header_checks(c)
    _body_checks(c)
    _value_checks(c)
    _descriptor_checks(c)
    _limits(c)
    return c


def _header_checks(c: Cases) -> None:
    """One case or more per row of SPEC section 2's header checks, in their order."""
    req = header(REQUEST, 5, ttl=1000, target=b"math.add")
    v2 = header(REQUEST, 42, target=b"math.add", version=2)
    c.refused("frames-none", [], COUNT)
    c.refused(
        "frames-header-only",
        [req],
        COUNT,
        note="the id is not read: the frame count is checked first",
    )
    c.refused(
        "frames-1027",
        [req, ADD_BODY, *[b""] * 1025],
        "frame count > max_frames (1026)",
        LIMIT,
        spec="2, 8",
        note="header, body and 1025 out-of-band frames; the id is not read",
    )
    c.refused("signature-xx", [b"XX" + req[2:], ADD_BODY], SIGNATURE)
    c.refused("signature-lowercase", [b"zm" + req[2:], ADD_BODY], SIGNATURE)
    c.refused(
        "signature-before-version",
        [b"XX" + v2[2:], ADD_BODY],
        SIGNATURE,
        spec="2, 9",
        note="version 2, but not ZM: the signature is checked first",
    )
    c.refused("version-2", [v2, ADD_BODY], VERSION_1, VERSION, 42, spec="2, 9")
    c.refused("version-0", [header(PING, 43, version=0), b""], VERSION_1, VERSION, 43, spec="2, 9")
    c.refused(
        "version-2-json-codec",
        [header(PING, 44, codec=JSON, version=2), b""],
        VERSION_1,
        VERSION,
        44,
        spec="9",
        note="answered in MessagePack: another version's codec byte means nothing",
    )
    c.refused(
        "version-2-3-bytes",
        [v2[:3], b""],
        VERSION_1,
        VERSION,
        spec="2, 9",
        note="bytes 0-2 alone are enough; no id (shorter than 14 bytes)",
    )
    c.refused(
        "version-2-13-bytes",
        [v2[:13], b""],
        VERSION_1,
        VERSION,
        spec="9",
        note="shorter than 14 bytes: id 0",
    )
    c.refused(
        "version-2-14-bytes",
        [v2[:14], b""],
        VERSION_1,
        VERSION,
        42,
        spec="9",
        note="14 bytes hold the id at offset 6",
    )
    c.refused(
        "version-2-320-bytes",
        [header(REQUEST, 42, target=b"x" * 300, version=2), b""],
        VERSION_1,
        VERSION,
        42,
        spec="2, 9",
        note="longer than max_header_bytes: still UNSUPPORTED_VERSION",
    )
    c.refused("header-empty", [b"", ADD_BODY], SIZE)
    c.refused("header-1-byte", [b"Z", ADD_BODY], SIZE)
    c.refused(
        "header-2-bytes",
        [b"ZM", ADD_BODY],
        SIZE,
        note="too short to hold the version: fails the size check",
    )
    c.refused(
        "header-19-bytes",
        [header(PING, 6)[:19], b""],
        SIZE,
        rid=6,
        note="the id (bytes 6-13) is in the frame: the ERROR carries it (section 6)",
    )
    c.refused("header-13-bytes", [header(PING, 6)[:13], b""], SIZE, note="the id is cut off")
    c.refused(
        "header-276-bytes",
        [header(REQUEST, 6, target=b"s." + b"x" * 254), ADD_BODY],
        SIZE,
        rid=6,
        spec="2, 8",
        note="a 256-byte target; the id is read all the same",
    )
    c.refused("header-3-bytes-v1", [req[:3], ADD_BODY], SIZE)
    for mtype in (0, 11, 255):
        c.refused(
            f"type-{mtype}",
            [header(mtype, 7, codec=JSON), b"{}"],
            "unknown type",
            rid=7,
            codec=JSON,
            spec="2, 3",
        )
    c.refused(
        "codec-2",
        [header(REPLY, 8, codec=2), b"\x03"],
        "unknown codec",
        rid=8,
        note="answered in MessagePack: the codec is unknown",
    )
    for flags in (0x04, 0x80, 0x05):
        frames = [header(REQUEST, 9, codec=JSON, flags=flags, target=b"math.add"), b"[[1,2],{}]"]
        c.refused(
            f"flags-{flags:#04x}", frames, "a flag bit other than bits 0 and 1", rid=9, codec=JSON
        )
    for label, body in (("two-items", b"[[1,2],{}]"), ("meta-not-a-map", b'[[1,2],{},"x"]')):
        frames = [header(REQUEST, 9, codec=JSON, flags=FLAG_META, target=b"math.add"), body]
        check = "meta flag: the REQUEST body is [args, kwargs, meta map]"
        c.refused(f"request-meta-flag-{label}", frames, check, rid=9, codec=JSON, spec="3")
    frames = [header(REPLY, 9, codec=JSON, flags=FLAG_META), b"3"]
    c.refused(
        "meta-flag-on-reply", frames, "meta flag on a type other than REQUEST", rid=9, codec=JSON
    )
    for mtype, empty in ((PING, b""), (HELLO, b"{}"), (CANCEL, b"")):
        frames = [header(mtype, 10, codec=JSON, flags=1), empty]
        check = "batch flag on a type other than REQUEST, REPLY and ITEM"
        c.refused(f"batch-flag-on-{mtype.name.lower()}", frames, check, rid=10, codec=JSON)
    for name, head in (
        ("target-length-too-large", header(REQUEST, 11, target=b"a.b", tlen=4)),
        ("target-length-too-small", header(REQUEST, 11, target=b"a.b", tlen=2)),
        ("target-length-without-target", header(REQUEST, 11, tlen=3)),
        ("reply-header-trailing-bytes", header(REPLY, 11) + b"abc"),
    ):
        c.refused(name, [head, ADD_BODY if head[3] == REQUEST else b"\x03"], TARGET_LENGTH, rid=11)
    for name, target in (("target-not-utf8", b"\xff\xfe.x"), ("target-truncated-utf8", b"a.\xc3")):
        c.refused(
            name, [header(REQUEST, 12, target=target), ADD_BODY], "target not valid UTF-8", rid=12
        )
    c.refused(
        "request-without-target",
        [header(REQUEST, 13), ADD_BODY],
        "target never empty in a REQUEST (1 ≤ n ≤ 255)",
        rid=13,
    )


# --- malformed.json: sections 3 and 4 ---------------------------------------------------

MAP_RULES: list[tuple[str, MessageType, Any, str]] = [
    ("error-body-array", ERROR, [1, "x"], "a map body"),
    ("hello-body-string", HELLO, "hello", "a map body"),
    ("disconnect-body-string", DISCONNECT, "bye", "a map body"),
    ("ready-body-integer", READY, 3, "a map body"),
    ("progress-body-null", PROGRESS, None, "a map body"),
    ("error-code-missing", ERROR, {"message": "no code"}, "required key missing"),
    ("ready-credit-missing", READY, {}, "required key missing"),
    ("error-code-string", ERROR, {"code": "1"}, "wrong type: code is an integer"),
    ("error-code-boolean", ERROR, {"code": True}, "wrong type: a boolean is not an integer"),
    ("error-code-float", ERROR, {"code": 10.0}, "wrong type: code is an integer"),
    ("error-message-integer", ERROR, {"code": 1, "message": 5}, "wrong type: message is a string"),
    ("error-type-integer", ERROR, {"code": 1, "type": 5}, "wrong type: type is a string"),
    (
        "error-traceback-array",
        ERROR,
        {"code": 1, "traceback": []},
        "wrong type: traceback is a string",
    ),
    (
        "error-detail-array",
        ERROR,
        {"code": 1, "detail": [1]},
        "wrong type: detail is a map or null",
    ),
    ("hello-role-integer", HELLO, {"role": 5}, "wrong type: role is a string"),
    ("hello-name-null", HELLO, {"name": None}, "wrong type: name is a string"),
    ("hello-version-integer", HELLO, {"version": 1}, "wrong type: version is a string"),
    ("hello-host-array", HELLO, {"host": []}, "wrong type: host is a string"),
    ("hello-pid-string", HELLO, {"pid": "1"}, "wrong type: pid is an integer"),
    ("hello-pid-boolean", HELLO, {"pid": True}, "wrong type: a boolean is not an integer"),
    ("hello-pid-float", HELLO, {"pid": 1.0}, "wrong type: pid is an integer"),
    ("hello-services-array", HELLO, {"services": ["math"]}, "wrong type: services is a map"),
    (
        "hello-services-string-handlers",
        HELLO,
        {"services": {"math": "add"}},
        "wrong type: services maps to arrays of strings",
    ),
    (
        "hello-services-integer-handler",
        HELLO,
        {"services": {"math": [1]}},
        "wrong type: services maps to arrays of strings",
    ),
    (
        "hello-capacity-boolean",
        HELLO,
        {"capacity": True},
        "wrong type: a boolean is not an integer",
    ),
    ("hello-in-flight-string", HELLO, {"in_flight": "0"}, "wrong type: in_flight is an integer"),
    ("hello-uptime-string", HELLO, {"uptime": "long"}, "wrong type: uptime is a number"),
    ("hello-uptime-boolean", HELLO, {"uptime": True}, "wrong type: a boolean is not a number"),
    (
        "hello-heartbeat-boolean",
        HELLO,
        {"heartbeat_ms": False},
        "wrong type: a boolean is not an integer",
    ),
    ("hello-protocol-number", HELLO, {"protocol": 1.1}, "wrong type: protocol is a string"),
    ("hello-threads-boolean", HELLO, {"threads": True}, "wrong type: a boolean is not an integer"),
    (
        "hello-async-slots-string",
        HELLO,
        {"async_slots": "2"},
        "wrong type: async_slots is an integer",
    ),
    (
        "hello-async-handlers-string-handlers",
        HELLO,
        {"async_handlers": {"math": "wait"}},
        "wrong type: async_handlers maps to arrays of strings",
    ),
    ("ready-credit-negative", READY, {"credit": -1}, "credit is an integer ≥ 0"),
    ("ready-credit-float", READY, {"credit": 1.5}, "wrong type: credit is an integer"),
    ("ready-credit-boolean", READY, {"credit": True}, "wrong type: a boolean is not an integer"),
    ("ready-credit-string", READY, {"credit": "3"}, "wrong type: credit is an integer"),
    ("progress-done-string", PROGRESS, {"done": "x"}, "wrong type: done is a number"),
    ("progress-done-boolean", PROGRESS, {"done": True}, "wrong type: a boolean is not a number"),
    ("progress-total-string", PROGRESS, {"total": "x"}, "wrong type: total is a number or null"),
    ("progress-total-boolean", PROGRESS, {"total": False}, "wrong type: a boolean is not a number"),
    ("progress-note-integer", PROGRESS, {"note": 1}, "wrong type: note is a string"),
    ("disconnect-reason-integer", DISCONNECT, {"reason": 1}, "wrong type: reason is a string"),
]
"""Map bodies SPEC sections 3 and 7 refuse: (name, type, body, the rule)."""


def _body_checks(c: Cases) -> None:
    """SPEC section 3's rules for bodies by type."""
    shape = "REQUEST body [args array, kwargs map]"
    for name, value in (
        ("request-body-map", {"args": []}),
        ("request-body-one-item", [[1, 2]]),
        ("request-body-three-items", [[], {}, 1]),
        ("request-args-map", [{}, {}]),
        ("request-kwargs-array", [[], []]),
        ("request-body-null", None),
        ("request-body-string", "[[1,2],{}]"),
    ):
        for codec in CODECS:
            frames = request(20, body(value, codec), codec)
            c.refused(f"{name}-{codec.name.lower()}", frames, shape, rid=20, codec=codec, spec="3")
    keys = "REQUEST kwargs keys are strings"
    c.refused("request-kwargs-integer-key", request(21, mp([[], {1: 2}])), keys, rid=21, spec="3")
    c.refused("request-kwargs-bytes-key", request(21, mp([[], {b"k": 2}])), keys, rid=21, spec="3")
    for codec in CODECS:
        n = codec.name.lower()
        frames = request(22, body([[[1, 2], 3], {}], codec), codec, flags=1)
        check = "batch REQUEST: every item of args is an array"
        c.refused(
            f"request-batch-item-not-array-{n}", frames, check, rid=22, codec=codec, spec="3, 7.9"
        )
        frames = [header(REPLY, 23, codec=codec, flags=1), body({"a": 1}, codec)]
        check = "batch REPLY: the body is an array"
        c.refused(f"reply-batch-not-array-{n}", frames, check, rid=23, codec=codec, spec="3, 7.9")
    for mtype in (PING, PONG, CANCEL):
        n = mtype.name.lower()
        check = f"{mtype.name}: empty body, no out-of-band frames"
        c.refused(f"{n}-with-body", [header(mtype, 24), b"\xc0"], check, rid=24, spec="3")
        frames = [header(mtype, 24, codec=JSON), b"", b""]
        c.refused(f"{n}-with-out-of-band-frame", frames, check, rid=24, codec=JSON, spec="3")
    for name, mtype, value, check in MAP_RULES:
        for codec in CODECS:
            frames = [header(mtype, 25, codec=codec), body(value, codec)]
            c.refused(
                f"{name}-{codec.name.lower()}", frames, check, rid=25, codec=codec, spec="3, 7"
            )
    check = "an empty body is an empty map: required key missing"
    c.refused("ready-empty-body", [header(READY, 26), b""], check, rid=26, spec="3, 7.3")
    frames = [header(HELLO, 26), mp({"services": {1: ["a"]}})]
    check = "wrong type: services maps strings to arrays"
    c.refused("hello-services-integer-key", frames, check, rid=26, spec="3, 7.2")
    for name, mtype, text, check in (
        (
            "ready-credit-json-fraction",
            READY,
            b'{"credit":1.0}',
            "integer: a JSON number with no fraction",
        ),
        (
            "ready-credit-json-exponent",
            READY,
            b'{"credit":1e0}',
            "integer: a JSON number with no exponent",
        ),
        (
            "error-code-json-exponent",
            ERROR,
            b'{"code":1E1,"message":""}',
            "integer: a JSON number with no exponent",
        ),
    ):
        c.refused(name, [header(mtype, 27, codec=JSON), text], check, rid=27, codec=JSON, spec="3")
    _bundle_checks(c)
    _stream_checks(c)


def _bundle_checks(c: Cases) -> None:
    """SPEC 7.10's rules for a BUNDLE's own frames (its messages are checked one by one
    when handled, as if each had come alone)."""
    add = frames_of(Request(40, "math.add", [1, 2], {}))
    shape = "BUNDLE body: a non-empty array of bin, header then body, in pairs"
    for name, value in (
        ("bundle-body-empty-array", []),
        ("bundle-body-odd-items", [add[0]]),
        ("bundle-body-map", {"a": add[0]}),
        ("bundle-body-string-item", [add[0], "x"]),
    ):
        c.refused(name, [header(BUNDLE), mp(value)], shape, spec="7.10")
    check = "a BUNDLE is MessagePack with no out-of-band frames"
    c.refused("bundle-json", [header(BUNDLE, codec=JSON), b"[]"], check, codec=JSON, spec="7.10")
    frames = [header(BUNDLE), mp(add), b"\x00"]
    c.refused("bundle-with-out-of-band-frame", frames, check, spec="7.10")
    inner = [header(BUNDLE), mp(add)]
    frames = [header(BUNDLE), mp(inner)]
    c.refused("bundle-in-a-bundle", frames, "a BUNDLE holds no BUNDLE", spec="7.10")
    routed = "routed BUNDLE body: a non-empty array of bin, client, header, body, in threes"
    client = bytes.fromhex("006b8b4567")
    for name, value in (
        ("bundle-routed-pairs", [add[0], add[1]]),
        ("bundle-routed-string-client", ["c", add[0], add[1]]),
    ):
        c.refused(name, [header(BUNDLE, flags=FLAG_ROUTED), mp(value)], routed, spec="7.10")
    for name, bad in (
        ("bundle-routed-empty-client", b""),
        ("bundle-routed-long-client", b"c" * 256),
    ):
        frames = [header(BUNDLE, flags=FLAG_ROUTED), mp([bad, add[0], add[1]])]
        c.refused(name, frames, "a routed BUNDLE's client ids are 1 to 255 bytes", spec="7.10")
    frames = [header(BUNDLE, flags=FLAG_ROUTED), mp([client, *inner])]
    c.refused("bundle-routed-in-a-bundle", frames, "a BUNDLE holds no BUNDLE", spec="7.10")
    frames = [header(REQUEST, 41, flags=FLAG_ROUTED, target=b"math.add"), mp([[1, 2], {}])]
    check = "the routed flag on a type other than BUNDLE"
    c.refused("routed-flag-on-request", frames, check, rid=41, spec="2, 7.10")


def _stream_checks(c: Cases) -> None:
    """SPEC 7.11's rules for stream requests, ITEM, END and CREDIT."""
    gen = b"gen.count"
    flags = FLAG_STREAM | FLAG_META
    check = "a stream REQUEST has the meta flag, no batch flag, and meta window >= 1"
    for name, frames in (
        ("stream-without-meta", [header(REQUEST, 53, flags=FLAG_STREAM, target=gen), ADD_BODY]),
        ("stream-no-window", [header(REQUEST, 54, flags=flags, target=gen), mp([[1], {}, {}])]),
        (
            "stream-window-0",
            [header(REQUEST, 55, flags=flags, target=gen), mp([[1], {}, {"window": 0}])],
        ),
        (
            "stream-window-string",
            [header(REQUEST, 56, flags=flags, target=gen), mp([[1], {}, {"window": "16"}])],
        ),
        (
            "stream-batch",
            [
                header(REQUEST, 57, flags=flags | FLAG_BATCH, target=gen),
                mp([[[1]], {}, {"window": 4}]),
            ],
        ),
    ):
        rid = int.from_bytes(frames[0][6:14], "big")
        c.refused(name, frames, check, rid=rid, spec="7.11")
    flag_check = "flags: stream (0x04) on REQUEST only"
    for mtype in (REPLY, ITEM, END, CREDIT):
        frames = [header(mtype, 58, flags=FLAG_STREAM), mp({"items": 1})]
        c.refused(f"stream-flag-on-{mtype.name.lower()}", frames, flag_check, rid=58, spec="2")
    batched = "a batched ITEM's body is an array of at least one item"
    for name, value in (("item-batch-not-array", 1), ("item-batch-empty", [])):
        frames = [header(ITEM, 60, flags=FLAG_BATCH), mp(value)]
        c.refused(name, frames, batched, rid=60, spec="7.11")
    counts = "END items and CREDIT credit: integers >= 0, required"
    for name, mtype, value in (
        ("end-no-items", END, {}),
        ("end-negative", END, {"items": -1}),
        ("end-boolean", END, {"items": True}),
        ("credit-no-credit", CREDIT, {}),
        ("credit-float", CREDIT, {"credit": 1.0}),
    ):
        c.refused(name, [header(mtype, 59), mp(value)], counts, rid=59, spec="7.11")


def _value_checks(c: Cases) -> None:
    """SPEC section 4: bodies that are not one value of the model in their codec."""
    not_msgpack = "not MessagePack"
    for name, value in (
        ("msgpack-reserved-byte", b"\xc1"),
        ("msgpack-truncated", b"\x92\x92\x01"),
    ):
        c.refused(name, request(30, value), not_msgpack, rid=30, spec="4")
    c.refused(
        "msgpack-trailing-bytes",
        request(30, ADD_BODY + b"\x00"),
        "a body is one value",
        rid=30,
        spec="4",
    )
    c.refused(
        "msgpack-empty-request-body",
        request(30, b""),
        "a REQUEST body is not empty",
        rid=30,
        spec="4",
    )
    utf8 = "a str is valid UTF-8"
    c.refused(
        "msgpack-str-not-utf8", request(31, b"\x92\x91\xa2\xff\xfe\x80"), utf8, rid=31, spec="4"
    )
    c.refused(
        "msgpack-key-not-utf8", request(31, b"\x92\x90\x81\xa2\xff\xfe\x01"), utf8, rid=31, spec="4"
    )
    ext_1 = "no extension type but 1"
    c.refused(
        "msgpack-ext-type-2",
        request(32, b"\x92\x91" + ext(b"\x00", 2) + b"\x80"),
        ext_1,
        rid=32,
        spec="4",
    )
    c.refused(
        "msgpack-ext-type-minus-1",
        request(32, b"\x92\x91\xd6\xff\x00\x00\x00\x01\x80"),
        ext_1,
        rid=32,
        spec="4",
        deviation="SPEC section 11: the reference decoder lets the timestamp extension "
        "(type -1) through as a value",
    )
    for name, text, check in (
        ("json-not-utf8", b'[["\xff"],{}]', "UTF-8 JSON text"),
        ("json-utf16", "[[],{}]".encode("utf-16"), "UTF-8 JSON text"),
        ("json-truncated", b"[[1,2],{}", "not JSON"),
        ("json-trailing-text", b"[[1,2],{}] x", "a body is one value"),
        ("json-empty-request-body", b"", "a REQUEST body is not empty"),
        ("json-single-quotes", b"[['a'],{}]", "not JSON"),
    ):
        c.refused(name, request(33, text, JSON), check, rid=33, codec=JSON, spec="4")
    check = "NaN, Infinity, -Infinity and numbers beyond float 64 refused"
    for name, text in (
        ("nan", b"NaN"),
        ("infinity", b"Infinity"),
        ("minus-infinity", b"-Infinity"),
        ("1e999", b"1e999"),
        ("minus-1e999", b"-1e999"),
    ):
        c.refused(
            f"json-{name}",
            request(34, b"[[" + text + b"],{}]", JSON),
            check,
            rid=34,
            codec=JSON,
            spec="4",
        )
    exists = "$bytes names an out-of-band frame that exists"
    index = "$bytes holds an integer frame index"
    for name, text, oob, check in (
        ("json-bytes-without-frames", b'[[{"$bytes":0}],{}]', (), exists),
        ("json-bytes-index-out-of-range", b'[[{"$bytes":1}],{}]', (b"x",), exists),
        ("json-bytes-index-string", b'[[{"$bytes":"0"}],{}]', (b"x",), index),
        ("json-bytes-index-boolean", b'[[{"$bytes":false}],{}]', (b"x",), index),
        (
            "json-nd-not-an-object",
            b'[[{"$nd":5}],{}]',
            (b"x" * 8,),
            "a reserved object that is malformed",
        ),
    ):
        c.refused(name, request(35, text, JSON, *oob), check, rid=35, codec=JSON, spec="4, 5")


# --- malformed.json: section 5 ----------------------------------------------------------

IN_RANGE = "the frame index is within 0 .. count-1"
SHAPE = "shape is an array of non-negative integers"
LENGTH = "frame length = item size * item count"
DESCRIPTORS: list[tuple[str, list[Any], str]] = [
    ("frame-index-1-of-1", ["<f8", [2], 1], IN_RANGE),
    ("frame-index-negative", ["<f8", [2], -1], IN_RANGE),
    ("frame-index-string", ["<f8", [2], "0"], "frame is an integer"),
    ("frame-index-float", ["<f8", [2], 0.0], "frame is an integer"),
    ("frame-index-boolean", ["<f8", [2], False], "frame is an integer (not a boolean)"),
    ("shape-not-array", ["<f8", 2, 0], SHAPE),
    ("shape-negative", ["<f8", [-2], 0], SHAPE),
    ("shape-float", ["<f8", [2.0], 0], SHAPE),
    ("shape-boolean", ["|u1", [True], 0], SHAPE),
    ("shape-33-dimensions", ["|u1", [1] * 33, 0], "at most max_ndim (32) dimensions"),
    ("frame-too-short", ["<f8", [3], 0], LENGTH),
    ("frame-too-long", ["<f8", [1], 0], LENGTH),
    ("frame-length-0-d", ["<f8", [], 0], LENGTH),
    ("dtype-not-string", [8, [2], 0], "dtype is a string"),
]
"""Descriptors ``[dtype, shape, frame]`` SPEC section 5 refuses, with the rule."""

ONE_BYTE = "byte order: < or > not on 1-byte types"
LONG_DOUBLE = "long double refused"
NOT_TIME = "a unit on datetime64/timedelta64 only"
DTYPES_REFUSED: list[tuple[str, str]] = [
    ("float64", "the dtype pattern"),
    ("f8", "the dtype pattern: byte order first"),
    ("<f8 ", "the dtype pattern"),
    ("<F8", "the dtype pattern"),
    ("<f", "the dtype pattern"),
    ("<f123", "the dtype pattern"),
    ("=f8", "byte order explicit: not ="),
    ("|f8", "byte order: | only on 1-byte types"),
    ("<i1", ONE_BYTE),
    (">u1", ONE_BYTE),
    ("<b1", ONE_BYTE),
    ("|b2", "item sizes: b1"),
    ("<i3", "item sizes: i1 i2 i4 i8"),
    ("<u16", "item sizes: u1 u2 u4 u8"),
    ("|f1", "item sizes: f2 f4 f8"),
    ("<c4", "item sizes: c8 c16"),
    ("<M4[s]", "item sizes: M8"),
    ("<f16", LONG_DOUBLE),
    ("<c32", LONG_DOUBLE),
    ("<f12", LONG_DOUBLE),
    ("<c24", LONG_DOUBLE),
    ("|O", "object refused"),
    ("<U2", "strings refused"),
    ("|S4", "strings refused"),
    ("|V8", "void and structured refused"),
    ("<f8[s]", NOT_TIME),
    ("<i8[ns]", NOT_TIME),
]
"""dtype strings SPEC section 5 refuses, with the rule."""

TWO = np.array([1.0, 2.0], dtype="<f8").tobytes()


def _descriptor(rid: int, desc: list[Any], codec: Codec = MSGPACK, *oob: bytes) -> list[bytes]:
    """A REPLY whose body is one array descriptor ``[dtype, shape, frame]``."""
    if codec is MSGPACK:
        value = ext(mp(desc))
    else:
        value = js({"$nd": dict(zip(("dtype", "shape", "frame"), desc, strict=True))})
    return [header(REPLY, rid, codec=codec), value, *oob]


def _descriptor_checks(c: Cases) -> None:
    """SPEC section 5: descriptors, dtypes, shapes and frame lengths."""
    for codec in CODECS:
        n = codec.name.lower()
        for name, desc, check in DESCRIPTORS:
            oob = b"\x01" if desc[0] == "|u1" else TWO
            spec = "5, 8" if "33" in name else "5"
            frames = _descriptor(40, desc, codec, oob)
            c.refused(f"{name}-{n}", frames, check, rid=40, codec=codec, spec=spec)
        frames = _descriptor(41, ["<f8", [2], 0], codec)
        check = "the frame index is within 0 .. count-1 (none here)"
        c.refused(f"descriptor-without-frames-{n}", frames, check, rid=41, codec=codec, spec="5")
    for dtype, check in DTYPES_REFUSED:
        name = f"dtype-{dtype.strip()}{'-space' if ' ' in dtype else ''}"
        c.refused(name, _descriptor(42, [dtype, [2], 0], MSGPACK, TWO), check, rid=42, spec="5")
    frames = _descriptor(42, ["<f16", [1], 0], JSON, TWO)
    c.refused("dtype-json-long-double", frames, LONG_DOUBLE, rid=42, codec=JSON, spec="5")
    payload = "the ext 1 payload is the array [dtype, shape, frame]"
    for name, value in (
        ("descriptor-payload-string", mp("<f8")),
        ("descriptor-payload-2-items", mp(["<f8", [2]])),
        ("descriptor-payload-4-items", mp(["<f8", [2], 0, 0])),
        ("descriptor-payload-not-msgpack", b"\xc1"),
    ):
        c.refused(name, [header(REPLY, 43), ext(value), TWO], payload, rid=43, spec="5")
    too_long = ext(mp(["<f8", [2], 0]) + b"\x00" * 4089)
    check = "the ext 1 payload is at most 4096 bytes"
    c.refused(
        "descriptor-payload-4097-bytes",
        [header(REPLY, 43), too_long, TWO],
        check,
        rid=43,
        spec="5, 8",
    )
    for name, nd in (
        ("json-nd-frame-missing", {"dtype": "<f8", "shape": [2]}),
        ("json-nd-dtype-missing", {"shape": [2], "frame": 0}),
        ("json-nd-shape-missing", {"dtype": "<f8", "frame": 0}),
        ("json-nd-array", ["<f8", [2], 0]),
    ):
        frames = [header(REPLY, 44, codec=JSON), js({"$nd": nd}), TWO]
        c.refused(
            name, frames, "the inner object needs all three keys", rid=44, codec=JSON, spec="5"
        )


# --- malformed.json: section 8 ----------------------------------------------------------


def _limits(c: Cases) -> None:
    """SPEC section 8, one case per limit and codec at least (max_frames and
    max_header_bytes are among the header checks, max_ndim among the descriptors)."""
    for codec in CODECS:
        _limits_in(c, codec)
    c.refused(
        "max-bin-len-msgpack",
        request(56, mp([[b"abc"], {}])),
        "max_bin_len",
        rid=56,
        spec="8",
        limits={"max_bin_len": 2},
    )
    check = "MessagePack nesting beyond 1024 levels is PROTOCOL"
    c.refused("msgpack-nesting-1100", request(57, nested(1100, MSGPACK)), check, rid=57, spec="8")


def _limits_in(c: Cases, codec: Codec) -> None:
    """The limits whose cases differ by codec, in ``codec``."""
    n = codec.name.lower()
    # max_str_len, max_array_len and max_map_len: PROTOCOL in MessagePack, LIMIT in JSON
    table = PROTOCOL if codec is MSGPACK else LIMIT

    def limit(
        name: str, rid: int, frames: list[bytes], check: str, code: ErrorCode, **kw: Any
    ) -> None:
        c.refused(f"{name}-{n}", frames, check, code, rid, codec, spec="8", **kw)

    def args(*items: bytes) -> bytes:  # a REQUEST body [[items], {}] in this codec
        if codec is MSGPACK:
            return bytes([0x92, 0x90 + len(items)]) + b"".join(items) + b"\x80"
        return b"[[" + b",".join(items) + b"],{}]"

    def value(v: Any) -> bytes:
        return body(v, codec)

    limit(
        "max-body-bytes",
        50,
        request(50, value([[1, 2], {}]), codec),
        "max_body_bytes",
        LIMIT,
        limits={"max_body_bytes": 4},
    )
    desc = (
        ext(mp(["<f8", [2], 0]))
        if codec is MSGPACK
        else js({"$nd": {"dtype": "<f8", "shape": [2], "frame": 0}})
    )
    limit(
        "max-message-bytes",
        51,
        [header(REPLY, 51, codec=codec), desc, b"\x00" * 16],
        "max_message_bytes: body plus out-of-band frames",
        LIMIT,
        limits={"max_message_bytes": 16},
    )
    deep = request(52, args(nested(31, codec)), codec)
    limit("max-depth-33", 52, deep, "max_depth (32): the outermost array counts 1", LIMIT)
    short = {"max_str_len": 4}
    limit(
        "max-str-len",
        53,
        request(53, args(value("hello")), codec),
        "max_str_len",
        table,
        limits=short,
    )
    limit(
        "max-str-len-utf8-bytes",
        53,
        request(53, args(value("üüü")), codec),
        "max_str_len counts bytes of UTF-8",
        table,
        limits=short,
        note="3 characters, 6 bytes",
    )
    key = request(53, value([[], {"hello": 1}]), codec)
    limit("max-str-len-map-key", 53, key, "max_str_len: map keys too", table, limits=short)
    items = request(54, value([[1, 2, 3, 4], {}]), codec)
    limit("max-array-len", 54, items, "max_array_len", table, limits={"max_array_len": 3})
    pairs = request(55, value([[], {"a": 1, "b": 2}]), codec)
    limit("max-map-len", 55, pairs, "max_map_len", table, limits={"max_map_len": 1})


# --- worker.json ------------------------------------------------------------------------


def worker_cases() -> Cases:
    c = Cases("6")

    def call(
        rid: int, target: str, args: list[Any], codec: Codec = MSGPACK, batch: bool = False
    ) -> list[bytes]:
        return frames_of(Request(rid, target, args, {}, 10000, codec, batch))

    c.answered("request-add", call(1, "math.add", [1, 2]), answer(REPLY, 1, body=3), spec="3, 10.1")
    traced = frames_of(Request(7, "math.add", [1, 2], {}, 10000, trace=TRACEPARENT))
    c.answered(
        "request-add-traced",
        traced,
        answer(REPLY, 7, body=3),
        spec="3",
        note="revision 1.1: a worker that announced 1.1 takes the meta flag and the trace",
    )
    c.answered(
        "request-add-json",
        call(2, "math.add", [1, 2], JSON),
        answer(REPLY, 2, JSON, body=3),
        spec="2, 10.2",
        note="an answer uses the codec of the message it answers",
    )
    batch = call(3, "math.add", [[1, 2], [3, 4]], batch=True)
    c.answered("request-batch", batch, answer(REPLY, 3, flags=1, body=[3, 7]), spec="7.9")
    unknown = ErrorCode.UNKNOWN_HANDLER
    c.answered("unknown-handler", call(4, "math.median", [1]), answer(ERROR, 4, code=unknown))
    c.answered(
        "unknown-service-json",
        call(5, "stats.mean", [1], JSON),
        answer(ERROR, 5, JSON, code=unknown),
    )
    bad = ErrorCode.BAD_ARGUMENTS
    c.answered("bad-arguments", call(6, "math.add", [1]), answer(ERROR, 6, code=bad))
    c.answered("ping", frames_of(Ping(7)), answer(PONG, 7), spec="7.4")
    c.answered("ping-json", frames_of(Ping(8, JSON)), answer(PONG, 8, JSON), spec="7.4")
    hello = answer(HELLO, 9, role="worker")
    c.answered("hello", frames_of(Hello(9, version="0.1.0")), hello, spec="7.2")
    hello = answer(HELLO, 10, JSON, role="worker")
    c.answered("hello-json", frames_of(Hello(10, codec=JSON)), hello, spec="7.2")
    c.answered(
        "bundle-one-request",
        frames_of(Bundle((tuple(call(41, "math.add", [2, 3])),))),  # type: ignore[arg-type]
        answer(REPLY, 41, body=5),
        spec="7.10",
        note="handled as if it had come alone; answered plainly (this peer said no bundle)",
    )
    bad = (header(REQUEST, 42, target=b"math.add"), mp([1, 2, 3]))
    c.answered(
        "bundle-malformed-request",
        frames_of(Bundle((bad,))),
        answer(ERROR, 42, code=PROTOCOL),
        spec="6, 7.10",
        note="a bad message in a bundle is answered by its own id, as if it had come alone",
    )
    c.answered(
        "bundle-reply",
        frames_of(Bundle((tuple(frames_of(Reply(43, 1))),))),  # type: ignore[arg-type]
        None,
        spec="6, 7.10",
        note="an answer in a bundle is never answered",
    )
    c.answered(
        "bundle-malformed",
        [header(BUNDLE), mp([b"ZM"])],
        None,
        spec="6, 7.10",
        note="a BUNDLE that does not decode is never answered: it may have held answers",
    )
    frames = request(11, mp([1, 2, 3]))
    c.answered("malformed-request-body", frames, answer(ERROR, 11, code=PROTOCOL), spec="3, 6")
    c.answered(
        "malformed-request-body-json",
        request(12, b"[1,2", JSON),
        answer(ERROR, 12, JSON, code=PROTOCOL),
        spec="4, 6",
        note="the ERROR is in the offending message's codec",
    )
    deep = request(13, b"\x92" + nested(32, MSGPACK) + b"\x80")
    c.answered("malformed-request-too-deep", deep, answer(ERROR, 13, code=LIMIT), spec="6, 8")
    frames = [
        header(REQUEST, 14, target=b"math.mean"),
        b"\x92\x91" + ext(mp(["<f8", [3], 0])) + b"\x80",
        b"\x00" * 16,
    ]
    c.answered(
        "malformed-request-bad-descriptor", frames, answer(ERROR, 14, code=PROTOCOL), spec="5, 6"
    )
    c.answered(
        "version-2",
        [header(REQUEST, 15, codec=JSON, target=b"math.add", version=2), b"[[1,2],{}]"],
        answer(ERROR, 15, code=VERSION),
        spec="9",
        note="answered in version 1 framing and MessagePack, with the id at offset 6",
    )
    c.answered(
        "bad-signature",
        [b"XX" + header(REQUEST, 16, target=b"math.add")[2:], ADD_BODY],
        answer(ERROR, 0, code=PROTOCOL),
        spec="2, 6",
        note="id 0: the id could not be read",
    )
    c.answered(
        "one-frame",
        [header(PING, 17)],
        answer(ERROR, 0, code=PROTOCOL),
        spec="2, 6",
        note="the frame count is checked before the header is read: id 0",
    )
    c.answered("error", frames_of(Error(18, ErrorCode.REMOTE, "boom", "ValueError")), None)
    c.answered("error-json", frames_of(Error(19, ErrorCode.PROTOCOL, "bad", codec=JSON)), None)
    c.answered("reply", frames_of(Reply(20, 3)), None, spec="3")
    c.answered("pong", frames_of(Pong(21)), None, spec="7.4")
    c.answered("ready", frames_of(Ready(0, 1)), None, spec="7.3")
    c.answered(
        "progress",
        frames_of(Progress(22, 1, 2, "")),
        None,
        spec="7.5",
        note="receivers that do not show progress ignore it",
    )
    c.answered("cancel-unknown-id", frames_of(Cancel(777)), None, spec="7.9")
    c.answered(
        "credit-unknown-id",
        frames_of(Credit(778, 4)),
        None,
        spec="7.11",
        note="credit for a stream the worker does not hold (it ended) is ignored",
    )
    c.answered(
        "stream-request-plain-handler",
        frames_of(Request(60, "math.add", [1, 2], {}, 10000, window=4)),
        answer(ERROR, 60, code=ErrorCode.BAD_ARGUMENTS),
        spec="7.11",
        note="math.add does not stream (it does not yield): refused, nothing ran",
    )
    c.answered(
        "stream-request-unknown-handler",
        frames_of(Request(61, "math.count", [3], {}, 10000, window=4)),
        answer(ERROR, 61, code=ErrorCode.UNKNOWN_HANDLER),
        spec="7.11",
    )
    c.answered(
        "stream-request-without-meta",
        [header(REQUEST, 62, flags=FLAG_STREAM, target=b"math.add"), ADD_BODY],
        answer(ERROR, 62, code=PROTOCOL),
        spec="6, 7.11",
    )
    c.answered("item", frames_of(Item(63, 1)), None, spec="6, 7.11", note="an answer: ignored")
    c.answered("end", frames_of(End(64, 1)), None, spec="6, 7.11", note="an answer: ignored")
    c.answered(
        "item-malformed",
        [header(ITEM, 65, flags=1), mp(1)],
        None,
        spec="6, 7.11",
        note="an ITEM is an answer: never answered, however malformed",
    )
    c.answered("disconnect", frames_of(Disconnect(0, "closing")), None, spec="7.6")
    c.answered(
        "error-body-not-msgpack",
        [bytes.fromhex("5a4d010300000000000000000063000000000000"), b"\xc1\xc1\xc1"],
        None,
        note="MUST NOT answer a message whose header says ERROR",
    )
    c.answered(
        "error-body-without-code",
        [bytes.fromhex("5a4d010300000000000000000064000000000000"), b"\x80"],
        None,
        note="an empty map: no code; its header says ERROR, so no answer",
    )
    # Headers that say ERROR but fail a later header check: refused, and still never answered.
    for name, head in (
        ("batch-flag", header(ERROR, 23, flags=1)),
        ("flags-0x02", header(ERROR, 24, flags=2)),
        ("codec-2", header(ERROR, 25, codec=2)),
        ("header-trailing-bytes", header(ERROR, 26) + b"xx"),
    ):
        frames = [head, mp({"code": 1, "message": ""})]
        c.answered(
            f"error-{name}",
            frames,
            None,
            spec="2, 6",
            note="a malformed header that says ERROR: no answer",
        )
    # What a 1.0 client (zeromesh 0.1.0) sends: a 1.1 worker serves it by the 1.0 rules.
    c.answered(
        "client-1.0-hello",
        [header(HELLO, 0), mp(CLIENT_1_0_HELLO)],
        answer(HELLO, 0, role="worker"),
        spec="7.2, 9",
        note="the HELLO a 1.0 client sends on connecting: no protocol key",
    )
    c.answered(
        "client-1.0-request",
        call(1, "math.add", [20, 22]),
        answer(REPLY, 1, body=42),
        spec="9",
        note="as a 1.0 client sends it (ttl 10 s)",
    )
    c.answered(
        "client-1.0-ping",
        frames_of(Ping(0)),
        answer(PONG, 0),
        spec="7.4, 9",
        note="a 1.0 client's heartbeat: id 0",
    )
    return c


# --- the files ------------------------------------------------------------------------

COMMON = [
    "Test vectors of the zeromesh wire protocol, version 1, revision 1.2 (protocol/SPEC.md,",
    "section 14). Frames are lowercase hex, the routing envelope removed: header, body,",
    "out-of-band frames. 'spec' names the sections a case checks; 'note' says why it is there.",
]
DECODE_HELP = [
    "Each case: decode 'frames'; the message must mean 'decoded': type name, id, codec name,",
    "flags (1: batch, 2: meta, 4: stream), ttl_ms, target and trace (REQUEST only; 0 and",
    "\"\" elsewhere), window (a stream REQUEST only: its first credit), 'body' (absent for",
    "PING, PONG and CANCEL, whose body frame is empty) and, for ERROR, HELLO, READY, PROGRESS,",
    "DISCONNECT, END and CREDIT, 'fields': every field of SPEC section 7 with defaults",
    "applied.",
    'Body values are JSON, with tagged one-key objects: {"$bytes": hex}, {"$ndarray":',
    "{dtype, shape, values}} (complex items as [real, imag], datetime64/timedelta64 items as",
    'int64 counts) and {"$map": [[key, value], ...]} for maps whose keys are not all strings.',
    "An integer is written without fraction or exponent, a float always with one.",
    "Then encode the meaning and decode the result: it must mean 'decoded' again. Where",
    "'canonical' is true these frames are exactly what the reference encoder writes: the header",
    "(fixed by section 2) and the out-of-band frames (section 5) must match byte for byte; a",
    "body may be spelled otherwise in MessagePack or JSON but must decode to the same value.",
]
FILES: dict[str, tuple[list[str], Callable[[], Cases]]] = {
    "messages.json": (
        [
            *COMMON,
            "Every message type in both codecs, every error code as an ERROR, batches, HELLO",
            "from a 1.0 peer and from a 1.1 peer, and valid spellings the reference encoder",
            "does not write.",
            *DECODE_HELP,
        ],
        message_cases,
    ),
    "arrays.json": (
        [
            *COMMON,
            "numpy arrays as out-of-band frames (section 5): every dtype that travels, 0-d and",
            "multi-dimensional shapes, empty arrays, arrays sent from non-contiguous memory,",
            'several arrays in one message, and JSON bytes ({"$bytes": i}) sharing the frame',
            "numbering.",
            *DECODE_HELP,
        ],
        array_cases,
    ),
    "malformed.json": (
        [
            *COMMON,
            "Messages a receiver refuses: the header checks of section 2 in their order, the",
            "body rules of sections 3 and 4, the descriptor rules of section 5 and the limits of",
            "section 8. Each case: decoding 'frames' fails with 'error': the code (name and",
            "number) and the request_id and codec of the ERROR that answers it (section 6,",
            "'Answering a bad message'; a peer never answers a message whose header says",
            "ERROR). 'check' names the rule. 'limits', where present, are the receiver's limits",
            "for that case, the others at their defaults. 'deviation', where present, names a",
            "known deviation of the reference implementation (section 11): the case states what",
            "the document requires.",
        ],
        malformed_cases,
    ),
    "worker.json": (
        [
            *COMMON,
            "What a live worker answers, over a DEALER socket connected to its ROUTER. The",
            "worker serves math.add(a, b) -> a + b, and no math.median and no service 'stats'",
            "(the reference runs examples.mathsvc:svc). For each case, on a fresh connection:",
            "send 'frames'; if 'answer' is an object, wait (up to 10 s) for one message and",
            "check its type, id and codec, its code (name and number) for an ERROR, and 'flags',",
            "'body' (of a REPLY) and 'role' (of a HELLO) where given; then send a PING with id",
            f"{FENCE} and read until its PONG: nothing else may arrive. 'answer'",
            "null means silence: that PONG must be the only message back. The cases named",
            "client-1.0-* are the frames a 1.0 client (zeromesh 0.1.0) sends.",
        ],
        worker_cases,
    ),
}


def build() -> dict[str, str]:
    """Every vector file's text, by file name."""
    return {name: _render(description, make()) for name, (description, make) in FILES.items()}


def _render(description: list[str], cases: list[Case]) -> str:
    """The file's JSON: one line per key of each case, each value compact."""
    lines = [
        "{",
        f'  "format": {FORMAT},',
        '  "description": [',
        ",\n".join(f"    {_compact(line)}" for line in description),
        "  ],",
        '  "cases": [',
    ]
    for i, case in enumerate(cases):
        keys = ",\n".join(
            f"      {_compact(key)}: {_compact(value)}" for key, value in case.items()
        )
        lines.append("    {\n" + keys + "\n    }" + ("," if i < len(cases) - 1 else ""))
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), allow_nan=False)


def main(argv: list[str] | None = None) -> int:
    """Write the vector files, or with ``--check`` say which differ (exit 1)."""
    args = sys.argv[1:] if argv is None else argv
    check = args == ["--check"]
    if args and not check:
        print("usage: python tests/make_vectors.py [--check]", file=sys.stderr)
        return 2
    stale = []
    for name, text in build().items():
        path = HERE / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if not check:
            path.write_text(text, encoding="utf-8")
    if check and stale:
        print(
            f"out of date: {', '.join(stale)}; run python tests/make_vectors.py",
            file=sys.stderr,
        )
        return 1
    for name in stale:
        print(f"wrote {HERE / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
