"""The command-line tools as a user runs them: real processes, real output, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from meshkit import Mesh, free_port

pytestmark = pytest.mark.process  # tier 2: starts real processes


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["zeromesh", "--help"],
        ["zeromesh", "call", "--help"],
        ["zeromesh", "ping", "--help"],
        ["zeromesh", "demo", "--help"],
        ["zeromesh", "status", "--help"],
        ["zeromesh", "bench", "--help"],
        [sys.executable, "-m", "zeromesh", "--help"],
        ["zeromesh-worker", "--help"],
        [sys.executable, "-m", "worker", "--help"],
    ],
)
def test_help(argv: list[str]) -> None:
    out = run(*argv)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def test_call_and_ping(mesh: Mesh) -> None:
    w = mesh.start()
    out = run("zeromesh", "call", "--connect", w.endpoint, "math.add", "1", "2")
    assert (out.returncode, out.stdout.strip()) == (0, "3"), out.stderr
    out = run("zeromesh", "call", "-c", w.endpoint, "math.add", '"a"', "--kw", 'b="b"')
    assert out.stdout.strip() == '"ab"'
    out = run("zeromesh", "call", "-c", w.endpoint, "math.add", "[1]", "[2, 3]", "--codec", "json")
    assert json.loads(out.stdout) == [1, 2, 3]
    # Endpoints from the environment, and a numpy result shown as JSON.
    out = run("zeromesh", "call", "math.scale", "2", env={"ZEROMESH_ENDPOINTS": w.endpoint})
    assert (out.returncode, out.stdout.strip()) == (0, "4.0"), out.stderr

    out = run("zeromesh", "ping", "--connect", w.endpoint)
    assert out.returncode == 0, out.stderr
    assert f"pid={w.pid}" in out.stdout
    assert "math.add" in out.stdout
    # One handler thread (--concurrency 1) and 100 async slots for math.wait, apart.
    assert "capacity=101 threads=1 async_slots=100" in out.stdout
    assert "math.wait (async)" in out.stdout
    rows = json.loads(run("zeromesh", "ping", "-c", w.endpoint, "--json").stdout)
    assert rows[0]["pid"] == w.pid
    assert rows[0]["services"]["math"]
    assert (rows[0]["threads"], rows[0]["async_slots"]) == (1, 100)
    assert rows[0]["async_handlers"] == {"math": ["wait"]}


def test_call_errors_say_what_went_wrong(mesh: Mesh) -> None:
    w = mesh.start()
    out = run("zeromesh", "call", "-c", w.endpoint, "math.nope")
    assert out.returncode == 1
    assert "UnknownHandler" in out.stderr
    assert "math.add" in out.stderr  # what is served instead
    out = run("zeromesh", "call", "-c", w.endpoint, "math.fail", "bad input")
    assert out.returncode == 1
    assert "ValueError: bad input" in out.stderr
    assert "Traceback" in out.stderr
    out = run("zeromesh", "call", "-c", "tcp://*:5555", "math.add", "1", "2")
    assert out.returncode == 2
    assert "bind address" in out.stderr
    out = run("zeromesh", "call", "-c", "localhost:5555", "math.add")
    assert out.returncode == 2
    assert "tcp://HOST:PORT" in out.stderr
    out = run("zeromesh", "call", "math.add", env={"ZEROMESH_ENDPOINTS": ""})
    assert out.returncode == 2
    assert "ZEROMESH_ENDPOINTS" in out.stderr


def test_nothing_listening(short_tmp) -> None:
    ep = f"tcp://127.0.0.1:{free_port()}"
    out = run("zeromesh", "call", "-c", ep, "--timeout", "0.5", "math.add", "1", "2")
    assert out.returncode == 1
    assert "NoWorkers" in out.stderr
    assert "zeromesh ping" in out.stderr
    out = run("zeromesh", "ping", "-c", ep, "--timeout", "0.3")
    assert out.returncode == 1
    assert "UNREACHABLE" in out.stdout


def test_status_of_nothing_says_what_to_do(short_tmp) -> None:
    from protocol import Timeout, ZeromeshError
    from zeromesh._status import fetch_status

    ep = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(Timeout, match="zeromesh-broker --bind") as info:
        fetch_status(ep, 0.2)
    assert isinstance(info.value, ZeromeshError)
    out = run("zeromesh", "status", "-c", ep, "--timeout", "0.3")
    assert out.returncode == 1
    assert f"{ep}  UNAVAILABLE: nothing answered within 0.3 s" in out.stdout


def test_worker_startup_errors(short_tmp) -> None:
    out = run("zeromesh-worker", "no_such_module:svc")
    assert out.returncode == 2
    assert "cannot import 'no_such_module'" in out.stderr
    out = run("zeromesh-worker", "examples.mathsvc:nope")
    assert out.returncode == 2
    assert "no attribute 'nope'" in out.stderr
    out = run("zeromesh-worker", "examples.mathsvc:svc", "--bind", "udp://1.2.3.4:5")
    assert out.returncode == 2
    assert "cannot bind" in out.stderr
    out = run("zeromesh-worker", "examples.mathsvc:svc", "--bind", f"ipc://{short_tmp}/no/dir.sock")
    assert out.returncode == 2
    assert "cannot bind" in out.stderr
    out = run("zeromesh-worker", "examples.mathsvc:svc", "--concurrency", "0")
    assert out.returncode == 2
    assert "--concurrency" in out.stderr
    out = run("zeromesh-worker", "examples.mathsvc:svc", "--max-requests-jitter", "5")
    assert out.returncode == 2
    assert "--max-requests-jitter needs --max-requests" in out.stderr
    # A prefetch the worker could not hold: the brokers' extra requests refused OVERLOADED.
    broker = ["--broker", "tcp://127.0.0.1:9", "--broker-prefetch", "2000"]
    out = run("zeromesh-worker", "examples.mathsvc:svc", *broker)
    assert out.returncode == 2
    assert "more than it holds (--max-pending" in out.stderr
    assert "Lower --broker-prefetch, or raise --max-pending to" in out.stderr


def test_port_in_use(mesh: Mesh) -> None:
    w = mesh.start()
    out = run("zeromesh-worker", "examples.mathsvc:svc", "--bind", w.endpoint)
    assert out.returncode == 2
    assert "in use" in out.stderr


def test_demo_runs_and_cleans_up() -> None:
    out = run("zeromesh", "demo", "--items", "3000", timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "RemoteError: ValueError: something broke" in out.stdout
    assert "served by 2 worker process(es)" in out.stdout
    assert "items/s" in out.stdout
    assert "workers stopped" in out.stdout


def test_broker_startup_errors(short_tmp) -> None:
    out = run("zeromesh-broker", "--bind", f"ipc://{short_tmp}/no/dir.sock")
    assert out.returncode == 2
    assert "the directory does not exist" in out.stderr
    out = run("zeromesh-broker", "--bind", "udp://1.2.3.4:5")
    assert out.returncode == 2
    assert "cannot bind" in out.stderr
