"""The small pure parts of operations: port ranges in endpoints, and how `zeromesh
rollout` finds where a supervisord process answers."""

from __future__ import annotations

import subprocess

import pytest
from opskit import BIN, REPO

from client import resolve_endpoints
from client._endpoints import MAX_RANGE
from zeromesh._rollout import endpoint_from_command


def test_port_range_is_one_endpoint_per_port() -> None:
    assert resolve_endpoints("tcp://127.0.0.1:5501-5503") == [
        "tcp://127.0.0.1:5501",
        "tcp://127.0.0.1:5502",
        "tcp://127.0.0.1:5503",
    ]
    assert resolve_endpoints("tcp://10.0.0.5:5501-5501,tcp://127.0.0.1:5501-5502") == [
        "tcp://10.0.0.5:5501",
        "tcp://127.0.0.1:5501",
        "tcp://127.0.0.1:5502",
    ]
    # Overlaps collapse; ipc paths with digits and dashes are paths, not ranges.
    assert resolve_endpoints(["tcp://h:1-2", "tcp://h:2-3", "ipc:///tmp/zm-1-2.sock"]) == [
        "tcp://h:1",
        "tcp://h:2",
        "tcp://h:3",
        "ipc:///tmp/zm-1-2.sock",
    ]
    assert len(resolve_endpoints(f"tcp://h:1-{MAX_RANGE}")) == MAX_RANGE


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("tcp://h:5504-5501", "1 <= A <= B <= 65535"),
        ("tcp://h:0-3", "1 <= A <= B <= 65535"),
        ("tcp://h:65535-65536", "1 <= A <= B <= 65535"),
        (f"tcp://h:1-{MAX_RANGE + 1}", f"at most {MAX_RANGE}"),
        ("tcp://h:1-x", "or a port range tcp://HOST:FIRST-LAST"),
        ("tcp://*:5501-5502", "is a bind address"),
    ],
)
def test_bad_port_ranges_say_what_to_type(endpoint: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        resolve_endpoints(endpoint)


def test_zeromesh_call_accepts_a_port_range() -> None:
    r = subprocess.run(
        [str(BIN / "zeromesh"), "call", "--connect", "tcp://127.0.0.1:9-3", "math.add", "1", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2
    assert "a port range A-B needs" in r.stderr


@pytest.mark.parametrize(
    ("command", "endpoint"),
    [
        (
            "zeromesh-worker m:svc\n--bind tcp://127.0.0.1:5501\n--bind ipc:///r/w01.sock",
            "tcp://127.0.0.1:5501",
        ),
        ("zeromesh-worker m:svc --bind=ipc:///r/w01.sock", "ipc:///r/w01.sock"),
        ("python -m worker m:svc --bind tcp://0.0.0.0:5501", "tcp://127.0.0.1:5501"),
        ("zeromesh-worker m:svc --bind tcp://*:5501", "tcp://127.0.0.1:5501"),
        ("zeromesh-worker m:svc --bind tcp://10.0.0.5:5501", "tcp://10.0.0.5:5501"),
        ("zeromesh-worker m:svc", None),
        ("zeromesh-worker 'unbalanced", None),
    ],
)
def test_rollout_reads_the_endpoint_from_the_command(command: str, endpoint: str | None) -> None:
    assert endpoint_from_command(command) == endpoint


def test_rollout_help() -> None:
    r = subprocess.run(
        [str(BIN / "zeromesh"), "rollout", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0
    assert "zeromesh rollout -c supervisord.conf worker" in r.stdout
    assert "--timeout S" in r.stdout


def test_a_fresh_clone_has_the_run_directory() -> None:
    # supervisord.conf puts its socket, logs and pid file in %(here)s/run, and supervisord
    # refuses to start when that directory is missing: the repository ships it.
    listed = subprocess.run(
        ["git", "ls-files", "run/.gitignore"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    assert listed.stdout.strip() == "run/.gitignore"
    assert (REPO / "run").is_dir()
