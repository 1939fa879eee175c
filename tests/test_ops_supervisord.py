"""Operations end to end: the repository's supervisord.conf under a real supervisord, real
signals, a steady client load, `zeromesh rollout`, and worker recycling.

Each test runs supervisord from a temp copy of supervisord.conf (opskit.render_conf: free
ports, the recording test service beside the example one) and always stops it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from opskit import Load, LoadReport, Supervisor, kill_processes_under, supervised
from promkit import metrics_url, scrape

from client import Client, Timeout

pytestmark = pytest.mark.process


class _LogFile:
    """A supervised process's log, read the way the kits read a child's output."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def output(self) -> str:
        return self.path.read_text(errors="replace") if self.path.exists() else ""


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_conf_starts_workers_status_running_and_call(short_tmp: Path, transport: str) -> None:
    with supervised(short_tmp) as sup:
        status = sup.ctl("status").stdout.splitlines()
        assert [line.split()[:2] for line in status] == [
            ["broker", "RUNNING"],
            ["worker:worker-01", "RUNNING"],
            ["worker:worker-02", "RUNNING"],
        ], status

        # The copy-pastable client command: a port range (tcp) or the socket list (ipc).
        connect = sup.port_range() if transport == "tcp" else ",".join(sup.endpoints("ipc"))
        r = sup.zeromesh("call", "--connect", connect, "math.add", "1", "2")
        assert (r.returncode, r.stdout.strip()) == (0, "3"), r
        with Client(connect) as c:
            assert len(c.endpoints) == 2
            assert {c.call("math.pid") for _ in range(40)} == set(sup.pids().values())
            arr = np.arange(12.0).reshape(4, 3)
            np.testing.assert_array_equal(c.call("math.mean", arr), arr.mean(axis=0))

        # Each worker serves its metrics on a port of its own (96NN in the conf).
        for n in (1, 2):
            log = _LogFile(sup.run / f"worker-0{n}.log")
            info = [k for k in scrape(metrics_url(log)) if k[0] == "zeromesh_worker_info"]
            assert dict(info[0][1])["name"] == f"worker-0{n}"

        # The same mesh through the broker the conf runs: only the endpoint changes.
        with Client([f"ipc://{sup.conf.parent}/run/broker.sock"], timeout=20) as c:
            assert c.call("math.add", 2, 3) == 5

        # rollout finds the same endpoints in supervisord's config (the first --bind).
        r = sup.zeromesh("rollout", "-c", str(sup.conf), "--dry-run")
        assert r.returncode == 0, r
        assert r.stdout.split() == [
            "worker:worker-01",
            "RUNNING",
            sup.endpoint(1),
            "worker:worker-02",
            "RUNNING",
            sup.endpoint(2),
        ]


def test_restart_under_load_restart_all_vs_rollout(short_tmp: Path) -> None:
    reports: dict[str, LoadReport] = {}
    with supervised(short_tmp) as sup, Client(sup.port_range(), timeout=30) as c:
        actions = {
            "restart-all": lambda: sup.ctl("restart", "worker:*"),
            "rollout": lambda: sup.zeromesh("rollout", "-c", str(sup.conf)),
        }
        for phase, action in actions.items():
            before = sup.pids()
            with Load(c, phase, min_requests=2000) as load:
                load.wait_answered(300)
                result = action()
                assert result.returncode == 0, result
                print(f"\n{phase}:\n{result.stdout.rstrip()}")
                after = sup.wait_all_ready()
                assert not set(after.values()) & set(before.values()), (before, after)
                for pid in after.values():
                    load.wait_pid(pid)  # the new workers serve the same client
                reports[phase] = load.stop(sup.executions)
    for report in reports.values():
        print(report.line())
    for report in reports.values():
        report.check()
        assert report.requests >= 2000
    all_at_once, rolling = reports["restart-all"].stall_ms, reports["rollout"].stall_ms
    assert rolling < all_at_once / 2, (
        f"rollout stalled {rolling:.0f} ms, restart-all {all_at_once:.0f} ms: "
        "a rolling restart must leave no gap"
    )


def test_kill_9_under_load(short_tmp: Path) -> None:
    with supervised(short_tmp) as sup, Client(sup.port_range(), timeout=30) as c:
        with Load(c, "kill-9", min_requests=2000) as load:
            load.wait_answered(300)
            victim = sup.pids()["worker-01"]
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            new_pid = sup.wait_replaced(1, victim, timeout=10)
            load.wait_pid(new_pid, timeout=10)  # traffic again: same client, no restart
            back_after = time.monotonic() - killed_at
            report = load.stop(sup.executions)
        print(f"\n{report.line()}; the restarted worker served again {back_after:.2f} s after kill")
        report.check()
        assert report.requests >= 2000
        assert "exited: worker-01 (terminated by SIGKILL; not expected)" in sup.supervisord_log()


def test_rollout_stops_at_a_process_that_does_not_come_back(short_tmp: Path) -> None:
    with supervised(short_tmp) as sup:
        before = sup.pids()
        (sup.ops_dir / "broken").touch()  # new worker processes now fail at import
        r = sup.zeromesh("rollout", "-c", str(sup.conf), "--timeout", "4")
        print(f"\n{r.stderr}")
        assert r.returncode == 1, r
        assert "[1/2] worker:worker-01 did not answer a ping" in r.stderr
        assert "opsvc: " in r.stderr  # the tail of the process's log says why
        assert "1 left untouched" in r.stderr
        after = sup.pids()
        assert after["worker-02"] == before["worker-02"]  # untouched, and still serving
        with Client([sup.endpoint(2)]) as c:
            assert c.call("math.add", 2, 3) == 5
        (sup.ops_dir / "broken").unlink()


def test_rollout_clear_errors_without_supervisord(short_tmp: Path) -> None:
    from zeromesh._rollout import rollout

    missing = short_tmp / "nope.conf"
    assert rollout(str(missing)) == 2
    sup = Supervisor(short_tmp)  # rendered, not started
    r = sup.zeromesh("rollout", "-c", str(sup.conf))
    assert r.returncode == 2
    assert "cannot reach supervisord" in r.stderr
    assert f"supervisord -c {sup.conf}" in r.stderr


def test_max_requests_recycles_workers_under_supervisord(short_tmp: Path) -> None:
    # Each worker lives ~1.5 s per 300 requests: longer than startsecs, or supervisord
    # would count its exit as a failed start.
    with (
        supervised(short_tmp, worker_args=["--max-requests", "300"]) as sup,
        Client(sup.port_range(), timeout=30) as c,
    ):
        first = sup.pids()
        with Load(c, "max-requests", in_flight=8, seconds=0.005, min_requests=1500) as load:
            report = load.stop(sup.executions)
        print(f"\n{report.line()}")
        report.check()
        sup.wait_all_ready()
        assert len(report.pids) >= 4, report.pids  # both workers replaced at least once
        assert not set(sup.pids().values()) & set(first.values())
        log = sup.supervisord_log()
        assert "exited: worker-01 (exit status 0; expected)" in log
        assert "served 300 requests (--max-requests 300)" in sup.worker_log(1)


def test_max_rss_recycles_a_worker_under_supervisord(short_tmp: Path) -> None:
    with (
        supervised(short_tmp, worker_args=["--max-rss", "200"]) as sup,
        Client(sup.port_range(), timeout=30) as c,
        Client([sup.endpoint(1)]) as one,
    ):
        victim = sup.pids()["worker-01"]
        with Load(c, "max-rss", min_requests=1000) as load:
            load.wait_answered(100)
            assert one.call("ops.grow", 250) == victim
            new_pid = sup.wait_replaced(1, victim)
            load.wait_pid(new_pid)
            report = load.stop(sup.executions)
        print(f"\n{report.line()}")
        report.check()
        assert "exited: worker-01 (exit status 0; expected)" in sup.supervisord_log()
        assert "> --max-rss 200" in sup.worker_log(1)


def test_hard_timeout_answers_timeout_and_replaces_worker(short_tmp: Path) -> None:
    with (
        supervised(short_tmp, worker_args=["--hard-timeout", "1"]) as sup,
        Client(sup.port_range(), timeout=30) as c,
        Client([sup.endpoint(1)]) as one,
    ):
        victim = sup.pids()["worker-01"]
        with Load(c, "hard-timeout", min_requests=1000) as load:
            load.wait_answered(100)
            runaway = one.options(timeout=20, retries=0).submit("ops.hang", 60)
            with pytest.raises(Timeout, match="hard timeout"):
                runaway.result(30)
            new_pid = sup.wait_replaced(1, victim)
            load.wait_pid(new_pid)
            report = load.stop(sup.executions)
        print(f"\n{report.line()}")
        report.check()
        assert "exited: worker-01 (exit status 70; not expected)" in sup.supervisord_log()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_a_failing_test_leaves_no_process_behind(short_tmp: Path) -> None:
    pids: list[int] = []

    def failing_test() -> None:
        with supervised(short_tmp) as sup:
            assert sup.proc is not None
            pids.extend([sup.proc.pid, *sup.pids().values()])
            raise RuntimeError("the test failed here")

    with pytest.raises(RuntimeError, match="failed here"):
        failing_test()
    assert len(pids) == 3
    assert not [pid for pid in pids if _alive(pid)]
    assert kill_processes_under(short_tmp) == []
