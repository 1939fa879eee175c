"""Helpers for the operations tests: supervisord running the repository's own
supervisord.conf from a temp dir, a steady client load that records every answer, and
cleanup that leaves no process behind whatever happens.

The conf under test is the real one, copied with three mechanical changes that the tests
need and that `render_conf` checks it can make (so a changed conf fails loudly here):
free ports instead of 55NN, the test service ``opsvc`` served beside the example one,
and optional extra worker arguments.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from client import Client
from zeromesh._rollout import RolloutError, close, connect

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "supervisord.conf"
TESTS = Path(__file__).resolve().parent
# Console scripts (supervisord, supervisorctl, zeromesh, zeromesh-worker) live beside the
# interpreter that runs the tests: use those, not whatever a shim on PATH points at.
BIN = Path(sys.executable).parent


def env_path() -> str:
    return f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_prefix(count: int, taken: int = 0) -> int:
    """A prefix P such that ports P00..P<count> are free: the conf's broker (5500) and
    workers (``55%(process_num)02d``). Never ``taken``: a block chosen already is free
    too until its processes start."""
    for _ in range(500):
        prefix = random.randint(200, 640)
        if prefix != taken and all(port_free(prefix * 100 + n) for n in range(count + 1)):
            return prefix
    pytest.fail("no free block of ports found")


def _replace_once(text: str, old: str, new: str) -> str:
    count = text.count(old)
    assert count == 1, f"supervisord.conf: expected {old!r} exactly once, found it {count} times"
    return text.replace(old, new)


def render_conf(
    dest: Path, prefix: int, worker_args: Sequence[str] = (), test_service: bool = True
) -> Path:
    """Write the repository's supervisord.conf to ``dest`` with test ports and service."""
    text = CONF.read_text()
    text = _replace_once(text, ":55%(process_num)02d", f":{prefix}%(process_num)02d")
    # Metrics ports (96NN, the broker's 9600) likewise, from a second free block.
    metrics = free_prefix(20, taken=prefix)
    text = _replace_once(text, ":96%(process_num)02d", f":{metrics}%(process_num)02d")
    text = _replace_once(text, "s:9600\n", f"s:{metrics}00\n")
    # The broker's port too (P00): a fixed 5500 collides with anything else on the host.
    text = _replace_once(
        text,
        "--bind tcp://%(ENV_ZEROMESH_HOST)s:5500 ",
        f"--bind tcp://%(ENV_ZEROMESH_HOST)s:{prefix}00 ",
    )
    if test_service:
        text = _replace_once(
            text,
            "command=zeromesh-worker examples.mathsvc:svc\n",
            "command=zeromesh-worker examples.mathsvc:svc opsvc:svc\n",
        )
    if worker_args:
        text = _replace_once(
            text, "    --drain-timeout 10\n", f"    --drain-timeout 10 {' '.join(worker_args)}\n"
        )
    conf = dest / "supervisord.conf"
    conf.write_text(text)
    (dest / "run").mkdir(exist_ok=True)
    return conf


def kill_processes_under(path: Path) -> list[int]:
    """SIGKILL every process whose command line mentions ``path`` (our temp dir only)."""
    needle = str(path).encode()
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if needle in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
    return killed


def stop_daemon(conf: Path, env: dict[str, str]) -> None:
    """Stop a daemonized supervisord (as README's ``supervisord -c`` starts it) for good:
    ``supervisorctl shutdown``, wait for its pid file to go, then SIGKILL what is left."""
    pidfile = conf.parent / "run" / "supervisord.pid"
    try:
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(
                [str(BIN / "supervisorctl"), "-c", str(conf), "shutdown"],
                capture_output=True,
                env=env,
                timeout=20,
                check=False,
            )
        deadline = time.monotonic() + 25
        while pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(pidfile.read_text().split()[0]), signal.SIGKILL)
        kill_processes_under(conf.parent)


class Supervisor:
    """supervisord (``-n``, our child) running a rendered copy of supervisord.conf.

    `close` always stops it: ``supervisorctl shutdown``, then SIGKILL to its process
    group and to every process that still names the temp dir.
    """

    def __init__(
        self,
        root: Path,
        *,
        workers: int = 2,
        host: str = "127.0.0.1",
        worker_args: Sequence[str] = (),
        netns: str | None = None,
    ) -> None:
        self.root = root
        self.workers = workers
        self.host = host
        self.netns = netns
        self.prefix = free_prefix(workers)
        self.conf = render_conf(root, self.prefix, worker_args)
        self.run = root / "run"
        self.ops_dir = root / "ops"
        self.ops_dir.mkdir(exist_ok=True)
        self.env = {
            **os.environ,
            "PATH": env_path(),
            "ZEROMESH_WORKERS": str(workers),
            "ZEROMESH_HOST": host,
            # The test service (tests/), and the checkout for examples.mathsvc: the conf
            # runs from the repository root, which its workers import from; here it runs
            # from a temp dir, and examples/ is not installed.
            "PYTHONPATH": os.pathsep.join(
                p for p in [str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")] if p
            ),
            "ZM_OPS_DIR": str(self.ops_dir),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._proxy: Any = None

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> None:
        cmd = [str(BIN / "supervisord"), "-n", "-c", str(self.conf)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        with open(self.root / "supervisord.out", "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        self.wait_all_ready(timeout)

    def close(self) -> None:
        if self._proxy is not None:
            close(self._proxy)
            self._proxy = None
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    self.ctl("shutdown", check=False, timeout=20)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(25)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            kill_processes_under(self.root)

    # --- supervisorctl and XML-RPC ----------------------------------------------------------

    def ctl(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``supervisorctl -c CONF ARGS...``; its output is in ``.stdout``."""
        result = subprocess.run(
            [str(BIN / "supervisorctl"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(f"supervisorctl {' '.join(args)} exited {result.returncode}:\n{result}")
        return result

    def zeromesh(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the ``zeromesh`` command line (as a user would) from the conf's directory."""
        return subprocess.run(
            [str(BIN / "zeromesh"), *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.root,
            timeout=timeout,
            check=False,
        )

    @property
    def rpc(self) -> Any:
        if self._proxy is None:
            self._proxy = connect(str(self.conf))
        return self._proxy.supervisor

    def info(self) -> dict[str, dict[str, Any]]:
        """supervisord's process info, by process name (worker-01, ...)."""
        return {p["name"]: p for p in self.rpc.getAllProcessInfo() if p["group"] == "worker"}

    def pids(self) -> dict[str, int]:
        return {name: p["pid"] for name, p in self.info().items()}

    # --- where the workers answer ---------------------------------------------------------

    @staticmethod
    def name(n: int) -> str:
        return f"worker-{n:02d}"

    def endpoint(self, n: int, transport: str = "tcp") -> str:
        if transport == "ipc":
            return f"ipc://{self.run}/w{n:02d}.sock"
        return f"tcp://{self.host}:{self.prefix}{n:02d}"

    def endpoints(self, transport: str = "tcp") -> list[str]:
        return [self.endpoint(n, transport) for n in range(1, self.workers + 1)]

    def port_range(self) -> str:
        """The conf's tcp endpoints as one ``--connect`` port range."""
        return f"tcp://{self.host}:{self.prefix}01-{self.prefix}{self.workers:02d}"

    def wait_all_ready(self, timeout: float = 30) -> dict[str, int]:
        """Wait until every worker is RUNNING and answers a ping with supervisord's pid."""
        deadline = time.monotonic() + timeout
        last: Any = None
        # ipc: reachable from here even when the workers live in another network namespace.
        with Client(self.endpoints("ipc")) as c:
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.poll() is not None:
                    pytest.fail(f"supervisord exited {self.proc.returncode}:\n{self.output()}")
                with contextlib.suppress(OSError, RolloutError):
                    info = self.info()
                    rows = c.workers(timeout=0.5)
                    last = (info, rows)
                    pids = {name: p["pid"] for name, p in info.items()}
                    if len(info) == self.workers and all(
                        p["statename"] == "RUNNING" for p in info.values()
                    ):
                        answered = {r.get("pid") for r in rows if r["state"] == "ready"}
                        if answered == set(pids.values()):
                            return pids
                time.sleep(0.1)
        pytest.fail(f"workers not RUNNING and ready within {timeout} s: {last}\n{self.output()}")

    def wait_replaced(self, n: int, old_pid: int, timeout: float = 30) -> int:
        """Wait until worker ``n`` runs under a new pid and answers a ping; return it."""
        deadline = time.monotonic() + timeout
        name = self.name(n)
        with Client([self.endpoint(n, "ipc")]) as c:
            while time.monotonic() < deadline:
                p = self.info()[name]
                if p["statename"] == "RUNNING" and p["pid"] not in (0, old_pid):
                    row = c.workers(timeout=0.5)[0]
                    if row["state"] == "ready" and row["pid"] == p["pid"]:
                        return p["pid"]
                time.sleep(0.1)
        pytest.fail(f"{name} (pid {old_pid}) not replaced within {timeout} s\n{self.output()}")

    # --- what happened ----------------------------------------------------------------------

    def worker_log(self, n: int) -> str:
        path = self.run / f"worker-{n:02d}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def supervisord_log(self) -> str:
        path = self.run / "supervisord.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def output(self) -> str:
        out = self.root / "supervisord.out"
        printed = out.read_text(errors="replace")[-3000:] if out.exists() else ""
        logs = [
            f"--- supervisord's output\n{printed}",
            f"--- supervisord.log\n{self.supervisord_log()[-3000:]}",
        ]
        for n in range(1, self.workers + 1):
            logs.append(f"--- worker-{n:02d}.log\n{self.worker_log(n)[-3000:]}")
        return "\n".join(logs)

    def executions(self) -> collections.Counter[str]:
        """How many times each ``ops.work`` token started, over every process so far."""
        counts: collections.Counter[str] = collections.Counter()
        for path in self.ops_dir.glob("exec-*.log"):
            counts.update(path.read_text().split())
        return counts


# --- a steady load ---------------------------------------------------------------------------


class _RetryCounter(logging.Handler):
    """Counts requests the client re-sent after losing the worker that held them."""

    _HELD = re.compile(r"holding (\d+) request")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.resent = 0

    def emit(self, record: logging.LogRecord) -> None:
        m = self._HELD.search(record.getMessage())
        if m and "re-sending" in record.getMessage():
            self.resent += int(m.group(1))


@dataclass
class LoadReport:
    name: str
    requests: int
    wrong: list[tuple[int, Any]]
    failed: list[tuple[int, BaseException]]
    retried: int
    executed_twice: int
    never_executed: int
    stall_ms: float
    pids: collections.Counter[int] = field(default_factory=collections.Counter)

    def line(self) -> str:
        return (
            f"{self.name}: {self.requests} requests, {len(self.failed)} lost, "
            f"{len(self.wrong)} wrong, {self.retried} retried, {self.executed_twice} executed "
            f"twice, longest stall {self.stall_ms:.0f} ms, answered by pids {dict(self.pids)}"
        )

    def check(self) -> None:
        """Every request answered, correctly, and run at least once where it said."""
        assert not self.failed, f"{self.name}: {len(self.failed)} lost: {self.failed[:5]}"
        assert not self.wrong, f"{self.name}: {len(self.wrong)} wrong: {self.wrong[:5]}"
        assert self.never_executed == 0, f"{self.name}: answered but never executed"


class Load:
    """Keeps ``in_flight`` ``ops.work`` calls outstanding through ``client`` until stopped.

    Every answer is recorded with the time it came, so `stop` can tell the longest
    stretch with no answer at all (the stall), which pids answered, and what was wrong.
    """

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        in_flight: int = 16,
        seconds: float = 0.002,
        min_requests: int = 2000,
    ) -> None:
        self.client = client
        self.name = name
        self.seconds = seconds
        self.min_requests = min_requests
        self._slots = threading.Semaphore(in_flight)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._done_at: list[float] = []
        self.results: dict[int, Any] = {}
        self.failed: list[tuple[int, BaseException]] = []
        self.pids: collections.Counter[int] = collections.Counter()
        self.sent = 0
        self._retries = _RetryCounter()
        self._thread = threading.Thread(target=self._run, name=f"load-{name}", daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> Load:
        logging.getLogger("zeromesh.client").addHandler(self._retries)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)
        logging.getLogger("zeromesh.client").removeHandler(self._retries)

    def _run(self) -> None:
        try:
            i = 0
            while not (self._stop.is_set() and i >= self.min_requests):
                if not self._slots.acquire(timeout=60):
                    raise RuntimeError("no answer for 60 s: the load is stuck")
                fut = self.client.submit("ops.work", f"{self.name}-{i}", i, self.seconds)
                fut.add_done_callback(lambda f, i=i: self._done(i, f))
                i += 1
                self.sent = i
        except BaseException as exc:
            self._error = exc

    def _done(self, i: int, fut: Any) -> None:
        now = time.monotonic()
        exc = fut.exception()
        with self._lock:
            self._done_at.append(now)
            if exc is None:
                value = fut.result()
                self.results[i] = value
                if isinstance(value, list) and len(value) == 2:
                    self.pids[value[1]] += 1
            else:
                self.failed.append((i, exc))
        self._slots.release()

    @property
    def answered(self) -> int:
        return len(self._done_at)

    def wait_answered(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.answered < count:
            if time.monotonic() > deadline or self._error is not None:
                pytest.fail(f"{self.name}: only {self.answered} answers ({self._error!r})")
            time.sleep(0.01)

    def wait_pid(self, pid: int, count: int = 20, timeout: float = 15) -> float:
        """Wait until ``pid`` answered ``count`` requests; return how long that took."""
        start = time.monotonic()
        while self.pids[pid] < count:
            if time.monotonic() - start > timeout or self._error is not None:
                pytest.fail(
                    f"{self.name}: pid {pid} answered {self.pids[pid]} requests in {timeout} s; "
                    f"answers by pid: {dict(self.pids)} ({self._error!r})"
                )
            time.sleep(0.01)
        return time.monotonic() - start

    def stop(
        self, executions: Callable[[], collections.Counter[str]], timeout: float = 60
    ) -> LoadReport:
        """Send until ``min_requests`` went out, wait for every answer, and report.

        ``executions`` is read once every answer is in: each token's execution count.
        """
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"{self.name}: the load thread did not stop"
        if self._error is not None:
            raise self._error
        deadline = time.monotonic() + timeout
        while self.answered < self.sent and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.answered == self.sent, f"{self.name}: {self.sent - self.answered} unanswered"
        ran = executions()
        wrong = [
            (i, v)
            for i, v in sorted(self.results.items())
            if not (isinstance(v, list) and len(v) == 2 and v[0] == 3 * i + 1)
        ]
        tokens = [f"{self.name}-{i}" for i in range(self.sent)]
        done = sorted(self._done_at)
        stall = max((b - a for a, b in itertools.pairwise(done)), default=0.0)
        return LoadReport(
            name=self.name,
            requests=self.sent,
            wrong=wrong,
            failed=list(self.failed),
            retried=self._retries.resent,
            executed_twice=sum(1 for t in tokens if ran[t] > 1),
            never_executed=sum(1 for i in self.results if ran[f"{self.name}-{i}"] == 0),
            stall_ms=stall * 1000,
            pids=collections.Counter(self.pids),
        )


@contextlib.contextmanager
def supervised(root: Path, **kwargs: Any) -> Any:
    """A started `Supervisor` that is always stopped afterwards."""
    sup = Supervisor(root, **kwargs)
    try:
        sup.start()
        yield sup
    finally:
        sup.close()
