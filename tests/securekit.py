"""Test helpers for CURVE: key pairs made by ``zeromesh keygen``, and a service whose
handler leaves a trace, so a test can tell that a refused request never ran."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client import Client
from worker import Service

HERE = os.path.dirname(os.path.abspath(__file__))
ENV_RECORD = "ZM_TEST_RECORD"
SERVICE = "securekit:svc"

svc = Service("sec")


@svc.handler
def record(text: str) -> str:
    """Append ``text`` to the file named by $ZM_TEST_RECORD: proof the handler ran."""
    with open(os.environ[ENV_RECORD], "a") as f:
        f.write(text + "\n")
    return text


def keygen(path: Path, *args: str) -> tuple[Path, Path]:
    """``zeromesh keygen PATH [ARGS]``: (public NAME.key, secret NAME.key_secret)."""
    out = subprocess.run(
        [sys.executable, "-m", "zeromesh", "keygen", str(path), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return path.with_name(path.name + ".key"), path.with_name(path.name + ".key_secret")


def records(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def wait_serving(endpoint: str, timeout: float = 20, **curve: object) -> None:
    """Wait until a call through ``endpoint`` (with these CURVE settings) answers."""
    deadline = time.monotonic() + timeout
    with Client([endpoint], timeout=1.0, **curve) as c:  # type: ignore[arg-type]
        while time.monotonic() < deadline:
            rows = c.workers(timeout=0.5)
            if all(r["state"] == "ready" for r in rows):
                return
    pytest.fail(f"{endpoint} did not answer in {timeout} s")
