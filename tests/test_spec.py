"""protocol/SPEC.md against the code: its hex examples, its tables of codes and limits.

The spec is what a peer in another language is written from, so it must not drift from
the encoder. Every ```hex example=NAME codec=C``` block is re-encoded and decoded here;
the error-code, message-type, codec and limits tables must list exactly what the code
defines, with the same numbers.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import protocol
from protocol import (
    Codec,
    Credit,
    End,
    Error,
    ErrorCode,
    Limits,
    MessageType,
    Reply,
    Request,
    UnknownHandler,
)

SPEC = Path(__file__).resolve().parents[1] / "protocol" / "SPEC.md"

# Each example's message, built as a user would; the spec's blocks name the codec.
EXAMPLES: dict[str, Any] = {
    "add-request": Request(1, "math.add", [1, 2], {}, ttl_ms=30000),
    "add-reply": Reply(1, 3),
    "mean-request": Request(2, "math.mean", [np.array([1.0, 2.0], dtype="<f8")], {}, 30000),
    "mean-reply": Reply(2, 1.5),
    "unknown-handler": Error.from_exception(3, UnknownHandler("no handler math.median")),
    "stream-request": Request(51, "gen.count", [3], {}, ttl_ms=60000, window=2),
    "stream-credit": Credit(51, 1),
    "stream-end": End(51, 3),
}
EXPECTED_BLOCKS = {
    ("add-request", "msgpack"),
    ("add-request", "json"),
    ("add-reply", "msgpack"),
    ("add-reply", "json"),
    ("mean-request", "msgpack"),
    ("mean-request", "json"),
    ("mean-reply", "msgpack"),
    ("unknown-handler", "msgpack"),
    ("stream-request", "msgpack"),
    ("stream-credit", "msgpack"),
    ("stream-end", "msgpack"),
}

_BLOCK = re.compile(
    r"^```hex example=(?P<name>\S+) codec=(?P<codec>\S+)[ \t]*\n(?P<body>.*?)^```",
    re.MULTILINE | re.DOTALL,
)
_FRAME = re.compile(r"frame (?P<index>\d+) \((?P<label>[^)]*)\):(?P<hex>.*)")


def _spec_text() -> str:
    return SPEC.read_text(encoding="utf-8")


def _hex_blocks() -> dict[tuple[str, str], list[bytes]]:
    """(example name, codec) -> the frames its block lists, checked for numbering."""
    blocks: dict[tuple[str, str], list[bytes]] = {}
    for match in _BLOCK.finditer(_spec_text()):
        key = (match["name"], match["codec"])
        assert key not in blocks, f"example {key} appears twice in SPEC.md"
        frames: list[bytes] = []
        for line in match["body"].splitlines():
            if not line.strip():
                continue
            frame = _FRAME.fullmatch(line.strip())
            assert frame, f"example {key}: cannot parse line {line!r}"
            index = int(frame["index"])
            assert index == len(frames), f"example {key}: frame {index} out of order"
            expected_label = {0: "header", 1: "body"}.get(index, f"oob {index - 2}")
            assert frame["label"] == expected_label, f"example {key}: frame {index} label"
            frames.append(bytes.fromhex(frame["hex"]))
        blocks[key] = frames
    return blocks


def _tables() -> list[tuple[list[str], list[list[str]]]]:
    """Every Markdown table in the spec as (header cells, rows of cells)."""
    tables: list[tuple[list[str], list[list[str]]]] = []
    run: list[list[str]] = []
    for line in [*_spec_text().splitlines(), ""]:
        if line.startswith("|"):
            # Split on pipes that are not escaped as "\|" inside a cell.
            run.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
            continue
        if len(run) >= 2:
            tables.append((run[0], run[2:]))
        run = []
    return tables


def _table(*header: str) -> list[list[str]]:
    found = [rows for head, rows in _tables() if head[: len(header)] == list(header)]
    assert len(found) == 1, f"SPEC.md needs exactly one table headed {header}"
    return found[0]


def _message(name: str, codec: str) -> Any:
    return dataclasses.replace(EXAMPLES[name], codec=Codec[codec.upper()])


def _assert_same(got: Any, want: Any, where: str = "message") -> None:
    """Deep equality that understands numpy arrays (dtype and shape included)."""
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), where
        assert got.dtype == want.dtype, where
        assert got.shape == want.shape, where
        assert np.array_equal(got, want), where
    elif dataclasses.is_dataclass(want):
        assert type(got) is type(want), where
        for f in dataclasses.fields(want):
            _assert_same(getattr(got, f.name), getattr(want, f.name), f"{where}.{f.name}")
    elif isinstance(want, list | tuple):
        assert isinstance(got, list), where
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, dict):
        assert isinstance(got, dict), where
        assert got.keys() == want.keys(), where
        for k in want:
            _assert_same(got[k], want[k], f"{where}[{k!r}]")
    else:
        assert got == want, where
        assert isinstance(got, type(want)) or isinstance(want, type(got)), where


def test_spec_has_exactly_the_known_examples() -> None:
    assert set(_hex_blocks()) == EXPECTED_BLOCKS
    assert {name for name, _ in EXPECTED_BLOCKS} == set(EXAMPLES)


@pytest.mark.parametrize(("name", "codec"), sorted(EXPECTED_BLOCKS))
def test_encoder_produces_the_spec_frames(name: str, codec: str) -> None:
    spec_frames = _hex_blocks().get((name, codec))
    assert spec_frames is not None, f"SPEC.md lost example {name} ({codec})"
    encoded = [bytes(frame) for frame in protocol.encode(_message(name, codec))]
    assert [f.hex() for f in encoded] == [f.hex() for f in spec_frames]


@pytest.mark.parametrize(("name", "codec"), sorted(EXPECTED_BLOCKS))
def test_decoder_reads_the_spec_frames(name: str, codec: str) -> None:
    spec_frames = _hex_blocks().get((name, codec))
    assert spec_frames is not None, f"SPEC.md lost example {name} ({codec})"
    _assert_same(protocol.decode(spec_frames), _message(name, codec))


def test_error_code_table_matches_error_codes() -> None:
    rows = _table("Code", "Name")
    in_spec = {(int(row[0]), row[1].strip("`")) for row in rows}
    assert in_spec == {(code.value, code.name) for code in ErrorCode}


def test_message_type_table_matches_message_types() -> None:
    rows = _table("Type", "Name")
    in_spec = {(int(row[0]), row[1].strip("`")) for row in rows}
    assert in_spec == {(mtype.value, mtype.name) for mtype in MessageType}


def test_codec_table_matches_codecs() -> None:
    rows = _table("Codec", "Name")
    in_spec = {(int(row[0]), row[1].strip("`")) for row in rows}
    assert in_spec == {(codec.value, codec.name) for codec in Codec}


def test_limits_table_matches_default_limits() -> None:
    rows = _table("Limit", "Default")
    in_spec = {row[0].strip("`"): int(row[1].split()[0]) for row in rows}
    assert in_spec == {f.name: f.default for f in dataclasses.fields(Limits)}


def test_header_struct_in_spec_unpacks_a_real_header() -> None:
    text = _spec_text()
    match = re.search(r"\(`(![^`]+)` in Python `struct` notation\)", text)
    assert match, "SPEC.md must give the header's struct format"
    layout = struct.Struct(match[1])
    assert layout.size == protocol.HEADER_SIZE == 20
    frames = protocol.encode(Request(7, "a.b", [[1]], ttl_ms=5, batch=True))
    header = bytes(frames[0])
    assert layout.unpack_from(header) == (
        protocol.SIGNATURE,
        protocol.PROTOCOL_VERSION,
        MessageType.REQUEST,
        Codec.MSGPACK,
        protocol.FLAG_BATCH,
        7,
        5,
        3,
    )
    assert header[layout.size :] == b"a.b"
    assert f"bit 0 (`{protocol.FLAG_BATCH:#04x}`) = batch" in text
    assert f"The version byte (offset 2) is {protocol.PROTOCOL_VERSION} " in text
