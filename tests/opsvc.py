"""A service for the operations tests: it records every execution, so a test can count
what ran twice, and it can hang or grow on demand.

Each process appends the token of every ``work`` call it starts to
``$ZM_OPS_DIR/exec-<pid>.log`` (one O_APPEND write per call: a SIGKILL loses nothing
already written). The files outlive the processes that wrote them.
"""

from __future__ import annotations

import os
import time

from worker import Service

svc = Service("ops")

_DIR = os.environ.get("ZM_OPS_DIR", "")
_fd = -1
_fd_pid = 0
_ballast: list[bytes] = []

if _DIR and os.path.exists(os.path.join(_DIR, "broken")):
    # A test makes new processes fail to start by creating this file.
    raise ImportError(f"opsvc: {_DIR}/broken exists (a test asked workers not to start)")


def _record(token: str) -> None:
    global _fd, _fd_pid
    if not _DIR:
        return
    if _fd_pid != os.getpid():
        _fd = os.open(
            os.path.join(_DIR, f"exec-{os.getpid()}.log"),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT,
            0o600,
        )
        _fd_pid = os.getpid()
    os.write(_fd, f"{token}\n".encode())


@svc.handler
def work(token: str, x: int, seconds: float = 0.0) -> list[int]:
    """Record ``token``, sleep ``seconds``, return ``[3 * x + 1, pid]``."""
    _record(token)
    if seconds:
        time.sleep(seconds)
    return [3 * x + 1, os.getpid()]


@svc.handler
def hang(seconds: float) -> int:
    """A runaway handler: block ``seconds`` (longer than any hard timeout in the tests)."""
    time.sleep(seconds)
    return os.getpid()


@svc.handler
def grow(mb: int) -> int:
    """Hold ``mb`` more megabytes (written, so resident); return this process's pid."""
    _ballast.append(b"x" * (mb * 1_000_000))
    return os.getpid()
