"""protocol/vectors/*.json (SPEC section 14) against the reference implementation.

The files are what tests/make_vectors.py writes (checked first, so they never drift
from the cases' source); then every decode case goes through `protocol.decode` and
`protocol.encode`, every malformed case through `protocol.decode`, and (process tier)
every worker case through a live worker, as another implementation would run them.
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import make_vectors
import pytest
import zmq
from hostilekit import raw_dealer
from meshkit import Mesh
from vectorkit import describe, from_json, message

import protocol
from protocol import Codec, ErrorCode, Limits, MessageType, Ping, Pong, ProtocolError, Reply

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "protocol" / "vectors"
FILES = ("messages.json", "arrays.json", "malformed.json", "worker.json")
MAP_BODIES = (
    MessageType.ERROR,
    MessageType.HELLO,
    MessageType.READY,
    MessageType.PROGRESS,
    MessageType.DISCONNECT,
    MessageType.END,
    MessageType.CREDIT,
)


# Worker cases the reference worker fails (what the vector says is what SPEC requires),
# marked expected-to-fail with why; none now.
WORKER_BUGS: dict[str, str] = {}


def _cases(*names: str) -> list[Any]:
    """The cases of the named files, as pytest params named after each case."""
    params = []
    for name in names:
        for case in json.loads((VECTORS / name).read_text(encoding="utf-8"))["cases"]:
            marks = []
            if "deviation" in case:
                # What SPEC requires, which the reference does not do yet (SPEC section 11):
                # strict, so fixing the deviation makes this fail until the mark goes.
                marks.append(pytest.mark.xfail(strict=True, reason=case["deviation"]))
            if case["name"] in WORKER_BUGS and name == "worker.json":
                marks.append(pytest.mark.xfail(strict=False, reason=WORKER_BUGS[case["name"]]))
            params.append(pytest.param(case, id=case["name"], marks=marks))
    return params


DECODE = _cases("messages.json", "arrays.json")
MALFORMED = _cases("malformed.json")
WORKER = _cases("worker.json")


def _frames(case: dict[str, Any]) -> list[bytes]:
    return [bytes.fromhex(frame) for frame in case["frames"]]


def _same(got: Any, want: Any) -> bool:
    """Equal as JSON text: 1 and 1.0 differ, as do "1" and 1 (Python's == says 1 == 1.0)."""
    return json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


def _meaning(frames: list[Any]) -> dict[str, Any]:
    """What ``frames`` mean to the reference decoder, in the vectors' terms."""
    msg = protocol.decode(frames)
    if msg.TYPE not in MAP_BODIES:
        return describe(msg)
    if not memoryview(frames[1]).nbytes:
        return describe(msg, {})  # an empty body frame is an empty map (SPEC section 3)
    # The map as it came, unknown keys included: the same body frame read as a REPLY's.
    head = protocol.encode(Reply(0, None, msg.codec))[0]
    return describe(msg, protocol.decode([head, *frames[1:]]).result)


# --- the files --------------------------------------------------------------------------


def test_files_are_what_the_generator_makes() -> None:
    made = make_vectors.build()
    assert sorted(made) == sorted(FILES)
    assert sorted(p.name for p in VECTORS.glob("*.json")) == sorted(FILES)
    for name, text in made.items():
        assert (VECTORS / name).read_text(encoding="utf-8") == text, (
            f"protocol/vectors/{name} differs from its cases: run python tests/make_vectors.py"
        )


@pytest.mark.parametrize("name", FILES)
def test_every_file_says_its_format_and_how_to_run_it(name: str) -> None:
    data = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    assert data["format"] == make_vectors.FORMAT == 1
    assert all(isinstance(line, str) for line in data["description"])
    assert "SPEC.md" in " ".join(data["description"])
    for case in data["cases"]:
        assert {"name", "spec", "frames"} <= case.keys()
        assert all(frame == frame.lower() for frame in case["frames"])


def test_the_vectors_ship_with_the_protocol_package() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "protocol.vectors" in config["tool"]["setuptools"]["packages"]
    data = config["tool"]["setuptools"]["package-data"]
    patterns = data.get("protocol.vectors", []) + data.get("*", [])
    for name in FILES:
        assert any(fnmatch.fnmatch(name, p) for p in patterns), name
    # Data only: the generator is a tool of the repository, not installed code.
    assert {p.suffix for p in VECTORS.iterdir()} == {".json"}


def test_vectors_cover_every_message_type_codec_dtype_and_error_code() -> None:
    decoded = [p.values[0]["decoded"] for p in DECODE]
    assert {(d["type"], d["codec"]) for d in decoded} == {
        (t.name, c.name)
        for t in MessageType
        for c in Codec
        if not (t is MessageType.BUNDLE and c is not Codec.MSGPACK)  # MessagePack only
    }
    errors = {d["fields"]["code"] for d in decoded if d["type"] == "ERROR"}
    assert {int(code) for code in ErrorCode} <= errors
    refused = {p.values[0]["error"]["code"] for p in MALFORMED}
    assert refused == {"PROTOCOL", "UNSUPPORTED_VERSION", "LIMIT_EXCEEDED"}
    limits = {name for p in MALFORMED for name in p.values[0].get("limits", {})}
    in_defaults = {"max_frames", "max_header_bytes", "max_depth", "max_ndim"}
    assert limits | in_defaults == set(Limits.__slots__)


# --- decoding and encoding -----------------------------------------------------------------


@pytest.mark.parametrize("case", DECODE)
def test_decodes_to_its_meaning(case: dict[str, Any]) -> None:
    assert _same(_meaning(_frames(case)), case["decoded"])


@pytest.mark.parametrize("case", DECODE)
def test_meaning_encodes_and_decodes_again(case: dict[str, Any]) -> None:
    # As a receiver gets them: bytes (an empty 2-d array's own buffer cannot be cast to
    # bytes by memoryview, so the decoder refuses it in memory; on the wire it is b"").
    frames = [bytes(memoryview(f)) for f in protocol.encode(message(case["decoded"]))]
    if case["canonical"]:
        assert [f.hex() for f in frames] == case["frames"]
    again = _meaning(frames)
    want = dict(case["decoded"])
    if "fields" in want:  # the encoder writes every key: the fields must survive
        del again["body"], want["body"]
    assert _same(again, want)


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_is_refused_with_the_code_id_and_codec(case: dict[str, Any]) -> None:
    want = case["error"]
    with pytest.raises(ProtocolError) as info:
        protocol.decode(_frames(case), Limits(**case.get("limits", {})))
    assert info.value.code == ErrorCode[want["code"]] == want["number"], info.value
    assert info.value.request_id == want["request_id"], info.value
    assert info.value.codec is Codec[want["codec"]], info.value


# --- a live worker -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One examples.mathsvc worker for all the worker cases (each on its own connection)."""
    mesh = Mesh(tmp_path_factory.mktemp("vectors"))
    try:
        yield mesh.start().endpoint
    finally:
        mesh.close()


def _receive(sock: zmq.Socket[bytes], what: str) -> list[bytes]:
    if not sock.poll(10_000):
        pytest.fail(f"no {what} from the worker in 10 s")
    return sock.recv_multipart()


@pytest.mark.process
@pytest.mark.parametrize("case", WORKER)
def test_live_worker_answers_as_the_vector_says(case: dict[str, Any], worker_endpoint: str) -> None:
    want = case["answer"]
    got: list[list[bytes]] = []
    with raw_dealer(worker_endpoint) as sock:
        sock.send_multipart(_frames(case))
        if want is not None:
            got.append(_receive(sock, "answer"))
        # The worker handles one connection's messages in order: once the fence's PONG is
        # back, anything the case made it say has arrived too.
        sock.send_multipart(protocol.encode(Ping(make_vectors.FENCE)))
        while True:
            frames = _receive(sock, "PONG to the fence")
            msg = protocol.decode(frames)
            if type(msg) is Pong and msg.id == make_vectors.FENCE:
                break
            got.append(frames)
    if want is None:
        assert got == [], f"expected silence, got {[protocol.decode(f) for f in got]}"
        return
    assert len(got) == 1, [protocol.decode(f) for f in got]
    msg = protocol.decode(got[0])
    assert (msg.TYPE.name, msg.id, Codec(msg.codec).name) == (
        want["type"],
        want["id"],
        want["codec"],
    )
    if "code" in want:
        assert isinstance(msg, protocol.Error)
        assert msg.code == ErrorCode[want["code"]] == want["number"], msg
    if "body" in want:
        assert isinstance(msg, Reply)
        assert _same(msg.result, from_json(want["body"])), msg
    if "flags" in want:
        assert isinstance(msg, Reply)
        assert msg.batch == bool(want["flags"])
    if "role" in want:
        assert isinstance(msg, protocol.Hello)
        assert msg.role == want["role"]
