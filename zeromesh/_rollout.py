"""``zeromesh rollout``: restart a supervisord group one process at a time, with no gap.

``supervisorctl restart worker:*`` stops every worker, then starts them all: for about
two seconds nothing serves. A rollout instead restarts one process, waits until the new
process answers a zeromesh ping on its endpoint (bound and serving, not merely RUNNING),
and only then moves to the next, so the others carry the load meanwhile.

It talks to supervisord over its XML-RPC interface (the unix socket that the config's
``[supervisorctl] serverurl`` names) and finds each process's endpoint in its command
line: the first ``--bind`` of ``zeromesh-worker``.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from client import Client

__all__ = [
    "Process",
    "RolloutError",
    "close",
    "connect",
    "endpoint_from_command",
    "group_processes",
    "rollout",
]

DEFAULT_GROUP = "worker"

# supervisord's process states (supervisor.states.ProcessStates), by name.
_RUNNING_STATES = {"RUNNING", "STARTING", "BACKOFF"}
# EXITED is not dead: with autorestart, supervisord starts it again (a timeout catches it
# when it does not).
_DEAD_STATES = {"FATAL", "STOPPED", "UNKNOWN"}


class RolloutError(Exception):
    """The rollout cannot start or cannot go on; the message says what to do."""


@dataclass(frozen=True)
class Process:
    """One process of the group, as supervisord's config describes it."""

    group: str
    name: str
    endpoint: str

    @property
    def namespec(self) -> str:
        """``group:name``, as supervisorctl and the XML-RPC calls spell it."""
        return f"{self.group}:{self.name}"


def connect(config: str) -> Any:
    """An XML-RPC proxy to the supervisord that ``config`` describes.

    It keeps one connection to supervisord's socket: ``close(proxy)`` closes it.

    Raises:
        RolloutError: the file is missing or unreadable, or supervisord is not running.
    """
    if not os.path.isfile(config):
        raise RolloutError(f"no supervisord config at {config!r}; pass -c PATH/supervisord.conf")
    from supervisor.options import ClientOptions

    options = ClientOptions()
    try:
        options.realize(args=["-c", config], doc="")
    except SystemExit:
        raise RolloutError(f"cannot read {config} as a supervisord config") from None
    proxy = options.getServerProxy()
    try:
        proxy.supervisor.getState()
    except (OSError, xmlrpc.client.ProtocolError) as exc:
        close(proxy)
        raise RolloutError(
            f"cannot reach supervisord at {options.serverurl} ({exc}); is it running? "
            f"start it with: supervisord -c {config}"
        ) from exc
    return proxy


def close(proxy: Any) -> None:
    """Close ``proxy``'s connection to supervisord (a failed connect leaves a socket open)."""
    proxy("close")()


def endpoint_from_command(command: str) -> str | None:
    """Where a ``zeromesh-worker`` command answers: its first ``--bind``, or None.

    A wildcard tcp host (``*``, ``0.0.0.0``) is reached on loopback: the rollout runs on
    the host that supervisord runs on.
    """
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for i, word in enumerate(words):
        if word == "--bind" and i + 1 < len(words):
            endpoint = words[i + 1]
        elif word.startswith("--bind="):
            endpoint = word.partition("=")[2]
        else:
            continue
        scheme, _, rest = endpoint.partition("://")
        host, colon, port = rest.rpartition(":")
        if scheme == "tcp" and colon and host in ("*", "0.0.0.0"):
            return f"tcp://127.0.0.1:{port}"
        if scheme == "tcp" and colon and host in ("[::]", "::"):
            return f"tcp://[::1]:{port}"
        return endpoint
    return None


def group_processes(proxy: Any, spec: str) -> list[Process]:
    """The processes ``spec`` names (``GROUP``, ``GROUP:*`` or ``GROUP:NAME``), by name.

    Raises:
        RolloutError: no such group or process, or one has no ``--bind`` to ping.
    """
    group, _, only = spec.partition(":")
    only = "" if only == "*" else only
    configs = [c for c in proxy.supervisor.getAllConfigInfo() if c["group"] == group]
    if not configs:
        groups = sorted({c["group"] for c in proxy.supervisor.getAllConfigInfo()})
        raise RolloutError(f"supervisord has no group {group!r}; it has: {', '.join(groups)}")
    if only:
        configs = [c for c in configs if c["name"] == only]
        if not configs:
            raise RolloutError(f"group {group!r} has no process {only!r}")
    processes = []
    for c in sorted(configs, key=lambda c: c["name"]):
        endpoint = endpoint_from_command(c["command"])
        if endpoint is None:
            raise RolloutError(
                f"cannot tell where {group}:{c['name']} answers: its command has no --bind "
                f"({' '.join(c['command'].split())!r}); give zeromesh-worker a --bind"
            )
        processes.append(Process(group, c["name"], endpoint))
    return processes


def rollout(
    config: str,
    spec: str = DEFAULT_GROUP,
    *,
    timeout: float = 30.0,
    dry_run: bool = False,
    out: TextIO | None = None,
) -> int:
    """Restart the processes of ``spec`` one at a time; return an exit status.

    For each process: stop it (supervisord sends SIGTERM and the worker drains), start
    it, and wait until supervisord reports it RUNNING *and* a zeromesh ping on its
    endpoint is answered, ready, by the new pid. Only then the next one. A process that
    does not come back within ``timeout`` seconds stops the rollout: the processes not
    yet restarted are left untouched, and the status is 1. Processes an operator
    stopped (STOPPED) are skipped.

    Returns 0 when every process came back, 1 when one did not, 2 when the rollout
    could not start (no config, no supervisord, no such group).
    """
    out = out or sys.stdout
    say: Callable[[str], None] = lambda text: print(text, file=out, flush=True)  # noqa: E731
    try:
        proxy = connect(config)
    except RolloutError as exc:
        print(f"zeromesh rollout: {exc}", file=sys.stderr)
        return 2
    try:
        return _rollout(proxy, spec, timeout, dry_run, say)
    finally:
        close(proxy)


def _rollout(
    proxy: Any, spec: str, timeout: float, dry_run: bool, say: Callable[[str], None]
) -> int:
    try:
        processes = group_processes(proxy, spec)
    except RolloutError as exc:
        print(f"zeromesh rollout: {exc}", file=sys.stderr)
        return 2
    if dry_run:
        for p in processes:
            state = proxy.supervisor.getProcessInfo(p.namespec)["statename"]
            say(f"{p.namespec}  {state}  {p.endpoint}")
        return 0
    started = time.monotonic()
    total = len(processes)
    say(f"rolling {total} process(es) of {spec}, one at a time (timeout {timeout:g} s each)")
    if total == 1:
        say("note: one process only: nothing serves while it restarts")
    for n, process in enumerate(processes, 1):
        try:
            line = _restart_one(proxy, process, timeout)
        except RolloutError as exc:
            untouched = total - n
            print(
                f"zeromesh rollout: [{n}/{total}] {exc}\n"
                f"stopped the rollout: {n - 1} process(es) restarted, {untouched} left "
                "untouched",
                file=sys.stderr,
            )
            return 1
        say(f"[{n}/{total}] {line}")
    say(f"rolled {total} process(es) of {spec} in {time.monotonic() - started:.2f} s")
    return 0


def _restart_one(proxy: Any, process: Process, timeout: float) -> str:
    """Stop, start and wait for one process; a line of progress, or RolloutError."""
    rpc = proxy.supervisor
    ns = process.namespec
    info = rpc.getProcessInfo(ns)
    if info["statename"] == "STOPPED":
        return f"{ns}: STOPPED by an operator; left alone"
    old_pid = info["pid"]
    t0 = time.monotonic()
    if info["statename"] in _RUNNING_STATES:
        try:
            rpc.stopProcess(ns, True)  # blocks while the worker drains (stopwaitsecs at most)
        except xmlrpc.client.Fault as exc:
            if "NOT_RUNNING" not in exc.faultString:
                raise RolloutError(f"{ns}: cannot stop it: {exc.faultString}") from exc
    stopped = time.monotonic()
    try:
        rpc.startProcess(ns, False)
    except xmlrpc.client.Fault as exc:
        if "ALREADY_STARTED" not in exc.faultString:
            raise RolloutError(
                f"{ns}: supervisord cannot start it: {exc.faultString}{_log_tail(rpc, ns)}"
            ) from exc
    new_pid = _wait_ready(rpc, process, old_pid, time.monotonic() + timeout, timeout)
    done = time.monotonic()
    return (
        f"{ns}: pid {old_pid or '-'} stopped in {stopped - t0:.2f} s, pid {new_pid} ready "
        f"on {process.endpoint} {done - stopped:.2f} s later ({done - t0:.2f} s)"
    )


def _wait_ready(rpc: Any, process: Process, old_pid: int, deadline: float, timeout: float) -> int:
    """Wait until the new process is RUNNING and its endpoint answers ready with its pid."""
    ns = process.namespec
    state = "?"
    pinged = "no answer yet"
    with Client([process.endpoint], timeout=timeout) as client:
        while True:
            info = rpc.getProcessInfo(ns)
            state, pid = info["statename"], info["pid"]
            if state in _DEAD_STATES:
                raise RolloutError(
                    f"{ns} did not come back: supervisord says {state}"
                    f"{' (' + info['spawnerr'] + ')' if info['spawnerr'] else ''}"
                    f"{_log_tail(rpc, ns)}"
                )
            if pid and pid != old_pid:
                row = client.workers(timeout=0.5)[0]
                if row["state"] == "unreachable":
                    pinged = "no answer yet"
                else:
                    pinged = f"{row['state']} from pid {row['pid']}"
                    if (
                        row["state"] == "ready"
                        and _same_process(row["pid"], pid)
                        and state == "RUNNING"
                    ):
                        return pid
            if time.monotonic() >= deadline:
                raise RolloutError(
                    f"{ns} did not answer a ping on {process.endpoint} within {timeout:g} s "
                    f"(supervisord: {state}, pid {pid or '-'}; ping: {pinged})"
                    f"{_log_tail(rpc, ns)}"
                )
            time.sleep(0.05)


def _same_process(answered: int, spawned: int) -> bool:
    """True if ``answered`` is ``spawned`` or runs under it (a wrapper shell, say)."""
    pid = answered
    for _ in range(16):
        if pid == spawned:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid <= 1:
            return False
    return False


def _log_tail(rpc: Any, ns: str, size: int = 1500) -> str:
    try:
        text, _, _ = rpc.tailProcessStdoutLog(ns, 0, size)
    except (xmlrpc.client.Fault, OSError):
        return ""
    lines = text.splitlines()[-8:]
    if not lines:
        return ""
    return "\nlast lines of its log:\n  " + "\n  ".join(lines)
