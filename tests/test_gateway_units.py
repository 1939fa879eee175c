"""The gateway's pure parts, in memory: rendering, body parsing, error mapping, settings,
and the SQLite job store (on its own thread, driven by asyncio, with a fake clock)."""

from __future__ import annotations

import asyncio
import base64
import json
import math
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from client import Slots
from gateway import GatewayConfig
from gateway._app import MAX_ARGUMENT_DEPTH, parse_call_body
from gateway._config import parse_listen, parse_size
from gateway._errors import ApiError, api_error
from gateway._jobs import JobStore, StoreError
from gateway._render import (
    NeedsConversion,
    check_result_size,
    pack_stored,
    render,
    result_size,
    to_json,
    unpack_stored,
    wants_msgpack,
)
from gateway._runner import JobRunner
from protocol import (
    BadArguments,
    Cancelled,
    NoWorkers,
    Overloaded,
    ProtocolError,
    RemoteError,
    Timeout,
    UnknownHandler,
    WorkerLost,
    ZeromeshError,
)

# --- rendering ------------------------------------------------------------------------------


def _json(value: Any) -> Any:
    body, content_type = render(value, as_msgpack=False)
    assert content_type == "application/json"
    return json.loads(body)


def test_plain_values_render_as_plain_json() -> None:
    value = {"a": [1, 2.5, "x", None, True], "b": {"c": []}}
    assert _json(value) == value
    assert render(value, as_msgpack=False, convert=False)[0] == render(value, False)[0]


def test_numpy_arrays_render_with_dtype_and_shape() -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert _json(arr) == {"dtype": "float32", "shape": [2, 3], "data": arr.tolist()}
    ints = np.array([[1, -2]], dtype=np.int8)
    assert _json({"x": ints}) == {"x": {"dtype": "int8", "shape": [1, 2], "data": [[1, -2]]}}
    assert _json(np.array([True, False])) == {
        "dtype": "bool",
        "shape": [2],
        "data": [True, False],
    }
    assert _json(np.zeros((0, 3))) == {"dtype": "float64", "shape": [0, 3], "data": []}
    assert _json(np.float64(2.5)) == 2.5
    assert _json(np.int64(7)) == 7
    assert _json(np.array(3.0)) == {"dtype": "float64", "shape": [], "data": 3.0}
    with pytest.raises(NeedsConversion):
        render(arr, as_msgpack=False, convert=False)


def test_json_cannot_carry_it_so_it_is_reshaped() -> None:
    assert _json([math.nan, math.inf, -math.inf, 1.0]) == [None, None, None, 1.0]
    arr = np.array([1.0, np.nan])
    assert _json(arr)["data"] == [1.0, None]
    c = np.array([1 + 2j, 3 - 4j])
    assert _json(c) == {"dtype": "complex128", "shape": [2], "data": [[1.0, 2.0], [3.0, -4.0]]}
    assert _json(b"\x00\xff") == {"base64": base64.b64encode(b"\x00\xff").decode()}
    assert _json({1: "int key", b"k": "bytes key"}) == {"1": "int key", "k": "bytes key"}
    assert to_json((1, 2)) == [1, 2]


def test_msgpack_rendering_keeps_raw_array_bytes() -> None:
    arr = np.arange(6, dtype=">i4").reshape(3, 2)  # big-endian in, little-endian out
    body, content_type = render({"a": arr, "f": math.nan, "s": np.float32(1.5)}, as_msgpack=True)
    assert content_type == "application/msgpack"
    out = msgpack.unpackb(body)
    a = out["a"]
    assert (a["dtype"], a["shape"]) == ("int32", [3, 2])
    np.testing.assert_array_equal(np.frombuffer(a["data"], "<i4").reshape(a["shape"]), arr)
    assert math.isnan(out["f"])
    assert out["s"] == 1.5


@pytest.mark.parametrize(
    ("accept", "want"),
    [
        (None, False),
        ("", False),
        ("application/msgpack", True),
        ("application/x-msgpack;q=0.9", True),
        ("application/json, application/msgpack", False),
        ("application/msgpack, application/json", True),
        ("*/*", False),
        ("text/html", False),
    ],
)
def test_accept_header(accept: str | None, want: bool) -> None:
    assert wants_msgpack(accept) is want


def test_stored_results_round_trip_exactly() -> None:
    values = [
        np.arange(12, dtype=np.float64).reshape(3, 4),
        np.arange(12, dtype=np.int16).reshape(3, 4)[:, ::2],  # not contiguous
        np.zeros((0, 2), dtype=np.uint8),
        np.array(5, dtype=np.int32),
        np.array([1 + 1j], dtype=np.complex64),
        np.array(["ab", "c"]),
    ]
    for arr in values:
        back = unpack_stored(pack_stored(arr))
        assert (back.dtype, back.shape) == (arr.dtype, arr.shape)
        np.testing.assert_array_equal(back, arr)
    nested = {"x": [np.float32(1.5), {"y": np.arange(3)}], "n": None, "b": b"raw"}
    back = unpack_stored(pack_stored(nested))
    assert back["x"][0] == np.float32(1.5)
    assert isinstance(back["x"][0], np.float32)
    np.testing.assert_array_equal(back["x"][1]["y"], np.arange(3))
    assert (back["n"], back["b"]) == (None, b"raw")


def test_result_size_is_the_stored_size_without_building_it() -> None:
    # Each size class of msgpack's extension header: fixext 8 and 16, ext 8, 16 and 32.
    arrays = [np.zeros(n, np.uint8) for n in (0, 1, 2, 6, 14, 200, 300, 65_520, 70_000)]
    values: list[Any] = [
        *arrays,
        np.arange(12, dtype=">i4").reshape(3, 4)[:, ::2],  # not contiguous, big-endian
        np.array(5.0),
        np.array(["ab", "c"]),
        np.array([1, "x"], dtype=object),
        {"x": [np.float32(1.5), {"y": np.arange(3)}], "n": None, "b": b"raw" * 100},
        [1 + 2j, "text", 2**64 - 1, -(2**63)],
    ]
    for value in values:
        assert result_size(value) == len(pack_stored(value))


def test_result_size_check_is_one_rule_for_calls_and_jobs() -> None:
    value = {"edges": np.zeros(1000)}
    size = result_size(value)
    check_result_size(value, size)  # at the limit: fine
    with pytest.raises(ApiError) as info:
        check_result_size(value, size - 1)
    err = info.value
    assert (err.status, err.type_name) == (502, "ResultTooLarge")
    assert f"the result takes {size} bytes" in err.message
    assert f"(--max-result {size - 1})" in err.message
    with pytest.raises(ApiError) as info:
        check_result_size({1, 2}, 10**9)
    assert (info.value.status, info.value.type_name) == (500, "ResultError")


# --- request bodies --------------------------------------------------------------------------


def test_call_bodies() -> None:
    assert parse_call_body(b"", "") == ([], {})
    assert parse_call_body(b"  \n", "application/json") == ([], {})
    assert parse_call_body(b'{"args": [1, 2]}', "") == ([1, 2], {})
    assert parse_call_body(b'{"kwargs": {"n": 3}}', "application/x-www-form-urlencoded") == (
        [],
        {"n": 3},
    )
    ends = b'{"args": [18446744073709551615, -9223372036854775808, 1.5e308]}'
    assert parse_call_body(ends, "") == ([2**64 - 1, -(2**63), 1.5e308], {})
    packed = msgpack.packb({"args": [b"\x00"], "kwargs": {"k": 1}})
    assert parse_call_body(packed, "application/msgpack; charset=binary") == ([b"\x00"], {"k": 1})


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("body", "content_type", "match"),
    [
        (b"{", "", "not valid JSON"),
        (b"\xc1", "application/msgpack", "not valid msgpack"),
        (b"[1]", "", "not a list"),
        (b'"x"', "", "not a str"),
        (b'{"args": {}}', "", '"args" must be a list'),
        (b'{"kwargs": 1}', "", '"kwargs" must be an object'),
        (b'{"args": [], "timeout": 1}', "", "unknown key"),
        (b"[" * 100_000 + b"]" * 100_000, "", "not valid JSON|not a list"),
        (json.dumps({"args": _nested(MAX_ARGUMENT_DEPTH + 1)}).encode(), "", "nest deeper"),
        (json.dumps({"kwargs": {"a": _nested(MAX_ARGUMENT_DEPTH)}}).encode(), "", "nest deeper"),
        # Python's json reads these; the wire does not carry them (SPEC section 4).
        (b'{"args": [1e999, 1]}', "", "1e999 is out of the float64 range"),
        (b'{"kwargs": {"x": -1e999}}', "", "-1e999 is out of the float64 range"),
        (b'{"args": [NaN]}', "", "NaN is not a JSON number"),
        (b'{"args": [[-Infinity]]}', "", "-Infinity is not a JSON number"),
        (
            b'{"args": [18446744073709551616]}',
            "",
            r"integer 18446744073709551616 is out of range: zeromesh integers are -2\*\*63",
        ),
    ],
)
def test_bad_call_bodies_are_400(body: bytes, content_type: str, match: str) -> None:
    with pytest.raises(ApiError, match=match) as info:
        parse_call_body(body, content_type)
    assert info.value.status == 400


def test_depth_limit_boundary() -> None:
    # ``args`` itself counts as one level.
    ok = json.dumps({"args": _nested(MAX_ARGUMENT_DEPTH)}).encode()
    assert parse_call_body(ok, "")[0] == _nested(MAX_ARGUMENT_DEPTH)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "retry_after"),
    [
        (UnknownHandler("x"), 404, None),
        (BadArguments("x"), 422, None),
        (Overloaded("x"), 429, 1),
        (NoWorkers("x"), 503, 2),
        (Timeout("x"), 504, None),
        (WorkerLost("x"), 502, None),
        (ProtocolError("x"), 502, None),
        (Cancelled("x"), 503, 1),
        (ZeromeshError("x"), 503, 2),
    ],
)
def test_mesh_errors_map_to_statuses(
    exc: ZeromeshError, status: int, retry_after: int | None
) -> None:
    err = api_error(exc)
    assert (err.status, err.retry_after, err.type_name) == (status, retry_after, type(exc).__name__)
    assert err.to_dict(debug=True) == {"type": type(exc).__name__, "message": "x", "code": status}


def test_remote_errors_keep_type_and_message_and_hide_the_traceback() -> None:
    err = api_error(RemoteError("KeyError", "'k'", "Traceback ...\nKeyError: 'k'\n"))
    assert err.to_dict(debug=False) == {"type": "KeyError", "message": "'k'", "code": 500}
    assert err.to_dict(debug=True)["traceback"].startswith("Traceback")
    assert ApiError.from_dict(err.to_dict(debug=True)).to_dict(debug=True) == err.to_dict(True)


# --- settings --------------------------------------------------------------------------------


def test_sizes_and_listen_addresses() -> None:
    assert parse_size("123") == 123
    assert parse_size("64K") == 65536
    assert parse_size("1m") == 1 << 20
    assert parse_size("2GiB") == 2 << 30
    for bad in ("", "1.5M", "-1", "1T", "lots"):
        with pytest.raises(ValueError, match="not a size"):
            parse_size(bad)
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("8080", ":8080", "host:", "host:99999", "host:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)


def test_config_checks_its_settings() -> None:
    cfg = GatewayConfig(connect="tcp://a:1,tcp://b:2", jobs_db=":memory:")
    assert cfg.connect == ["tcp://a:1", "tcp://b:2"]
    with pytest.raises(ValueError, match="--call-timeout"):
        GatewayConfig(connect=["tcp://a:1"], call_timeout=0)
    with pytest.raises(ValueError, match="--job-concurrency"):
        GatewayConfig(connect=["tcp://a:1"], job_concurrency=-1)


# --- the job store ----------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _store_test(fn: Any, path: str = ":memory:") -> Any:
    async def run() -> Any:
        clock = _Clock()
        store = JobStore(path, clock=clock)
        await store.open()
        try:
            return await fn(store, clock)
        finally:
            await store.close()

    return asyncio.run(run())


def test_store_lifecycle_and_races() -> None:
    async def scenario(store: JobStore, clock: _Clock) -> None:
        a = await store.create("demo.fib", b"payload-a")
        b = await store.create("demo.fib", b"payload-b")
        assert a.id != b.id
        assert len(a.id) == 22
        assert (await store.get(a.id)).status == "queued"  # type: ignore[union-attr]
        assert await store.get("nope") is None

        clock.now += 1
        assert await store.start(a.id) == ("demo.fib", b"payload-a")
        assert await store.start(a.id) is None  # already running
        # A cancel that lands first wins over the finish that comes after it.
        record, changed = await store.cancel(a.id, {"done": 1, "total": 2, "note": ""})
        assert changed
        assert record is not None
        assert (record.status, record.progress["done"]) == ("cancelled", 1)
        assert not await store.finish(a.id, "done", result=b"late")
        assert (await store.get(a.id)).result is None  # type: ignore[union-attr]
        # Cancelling a finished job changes nothing.
        assert (await store.cancel(a.id))[1] is False

        # A queued job that was cancelled is never started.
        await store.cancel(b.id)
        assert await store.start(b.id) is None

        c = await store.create("demo.wait", b"c")
        await store.start(c.id)
        assert await store.finish(c.id, "failed", error={"type": "X", "message": "m", "code": 500})
        record = await store.get(c.id)
        assert record is not None
        assert (record.status, record.error["type"], record.attempts) == ("failed", "X", 1)
        with pytest.raises(ValueError, match="done or failed"):
            await store.finish(c.id, "cancelled")

        counts = await store.counts()
        assert counts == {"queued": 0, "running": 0, "done": 0, "failed": 1, "cancelled": 2}

        # Expiry: only finished jobs older than the cut.
        d = await store.create("demo.wait", b"d")
        clock.now += 100
        assert await store.purge(clock.now - 50) == 3
        assert await store.get(d.id) is not None

    _store_test(scenario)


def test_store_recovers_unfinished_jobs_in_order(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.db")

    async def first(store: JobStore, clock: _Clock) -> list[str]:
        ids = []
        for i in range(3):
            clock.now += 1
            ids.append((await store.create("demo.fib", b"%d" % i)).id)
        await store.start(ids[1])
        done = await store.create("demo.fib", b"x")
        await store.start(done.id)
        await store.finish(done.id, "done", result=b"r")
        return ids

    ids = _store_test(first, path)

    async def second(store: JobStore, clock: _Clock) -> None:
        assert await store.recover() == [(job_id, "demo.fib") for job_id in ids]
        record = await store.get(ids[1])
        assert record is not None
        assert (record.status, record.attempts) == ("queued", 1)

    _store_test(second, path)


def test_store_refuses_a_second_user_and_junk(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.db")

    async def scenario(store: JobStore, clock: _Clock) -> None:
        other = JobStore(path)
        with pytest.raises(StoreError, match="in use by gateway pid"):
            await other.open()
        await other.close()

    _store_test(scenario, path)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00" * 4096)

    async def open_junk() -> None:
        store = JobStore(str(junk))
        with pytest.raises(StoreError, match="not a usable jobs database"):
            await store.open()
        await store.close()

    asyncio.run(open_junk())


# --- the job runner ---------------------------------------------------------------------------


class _Mesh:
    """Stands in for the job runner's client: each call waits until the test answers it."""

    def __init__(self) -> None:
        self.calls: dict[str, asyncio.Future[Any]] = {}  # job name -> its pending call

    def options(self, **_: Any) -> _Mesh:
        return self

    async def call(self, target: str, name: str) -> str:
        self.calls[name] = asyncio.get_running_loop().create_future()
        return await self.calls[name]

    async def started(self, *names: str) -> None:
        """Wait until exactly ``names`` have been called (the runner starts a job on a
        task, after a database write)."""
        for _ in range(500):
            if set(self.calls) == set(names):
                return
            await asyncio.sleep(0.01)
        assert set(self.calls) == set(names)

    def answer(self, name: str) -> None:
        self.calls[name].set_result(name)


def _runner(store: JobStore, mesh: _Mesh, slots: Slots, limit: int = 0) -> JobRunner:
    return JobRunner(
        store,
        mesh,  # the AsyncClient's part a runner uses
        slots=lambda: slots,
        limit=limit,
        timeout=10,
        retries=0,
        max_result=1 << 20,
        max_queued=100,
    )


def test_job_runner_runs_each_kind_within_its_slots_oldest_first() -> None:
    async def scenario(store: JobStore, clock: _Clock) -> None:
        mesh = _Mesh()
        runner = _runner(store, mesh, Slots(1, 2, frozenset({"s.io"})))
        for name in ("p1", "p2", "a1", "a2", "a3", "p3"):
            await runner.submit("s.io" if name.startswith("a") else "s.cpu", [name], {})
        # One thread, two async slots: the plain jobs behind p1 do not hold up a1, a2.
        await mesh.started("p1", "a1", "a2")
        assert (runner.running, runner.queued) == (3, 3)
        mesh.answer("a1")  # an async slot frees: the next async job, not a plain one
        await mesh.started("p1", "a1", "a2", "a3")
        mesh.answer("p1")
        await mesh.started("p1", "a1", "a2", "a3", "p2")  # p2 before p3: oldest first
        for name in ("a2", "a3", "p2"):
            mesh.answer(name)
        await mesh.started("p1", "a1", "a2", "a3", "p2", "p3")
        mesh.answer("p3")
        await runner.idle()
        assert (runner.running, runner.queued) == (0, 0)

    _store_test(scenario)


def test_job_runner_limit_caps_both_kinds_together() -> None:
    async def scenario(store: JobStore, clock: _Clock) -> None:
        mesh = _Mesh()
        runner = _runner(store, mesh, Slots(2, 2, frozenset({"s.io"})), limit=3)
        for name in ("p1", "p2", "a1", "a2"):
            await runner.submit("s.io" if name.startswith("a") else "s.cpu", [name], {})
        await mesh.started("p1", "p2", "a1")  # a2's kind has room; --job-concurrency not
        assert runner.queued == 1
        mesh.answer("p1")
        await mesh.started("p1", "p2", "a1", "a2")
        for name in ("p2", "a1", "a2"):
            mesh.answer(name)
        await runner.idle()

    _store_test(scenario)


def test_gateway_is_a_client_of_the_mesh_only() -> None:
    """DESIGN: the gateway imports ``client`` and ``protocol``, never ``worker``/``broker``."""
    import subprocess
    import sys

    code = (
        "import sys, gateway; "
        "bad = sorted({'worker', 'broker'} & {m.split('.')[0] for m in sys.modules}); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
