"""Hosts on one machine: network namespaces.

`two_hosts` (a fixture; import it into a test module) creates namespaces zmsN and
zmcN joined by a veth pair, gives them 10.213.X.1/30 and 10.213.X.2/30, and removes
them, with every process left in them, when the test ends, whatever happens.
`named_host` is one namespace with a hosts file the test writes (names that resolve
to several addresses). `star_hosts` is a client and N hosts whose links have delay and
loss (`tests/linkemu.py`). Each skips, saying why, only where namespaces (or TUN
interfaces) cannot be created.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = ["Hosts", "NamedHost", "Probe", "Star", "named_host", "star_hosts", "two_hosts"]


@dataclass(frozen=True)
class Hosts:
    server_ns: str
    client_ns: str
    server_addr: str
    client_addr: str


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=False)


def _ip_ok(*args: str) -> None:
    r = _ip(*args)
    assert r.returncode == 0, f"ip {' '.join(args)}: {r.stderr.strip()}"


def _remove_namespace(ns: str) -> None:
    pids = _ip("netns", "pids", ns).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("netns", "del", ns)


@pytest.fixture
def two_hosts() -> Iterator[Hosts]:
    """Namespaces zmsN/zmcN linked by a veth pair, 10.213.X.1/30 and 10.213.X.2/30."""
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2): cannot create network namespaces")
    tag = f"{os.getpid() % 100000}{random.randint(0, 99):02d}"
    server_ns, client_ns = f"zms{tag}", f"zmc{tag}"
    server_if, client_if = f"zms{tag}", f"zmc{tag}"  # interface names: 15 characters at most
    net = random.randint(0, 255)
    hosts = Hosts(server_ns, client_ns, f"10.213.{net}.1", f"10.213.{net}.2")
    created: list[str] = []
    try:
        r = _ip("netns", "add", server_ns)
        if r.returncode != 0:
            pytest.skip(f"network namespaces are not permitted here: {r.stderr.strip()}")
        created.append(server_ns)
        _ip_ok("netns", "add", client_ns)
        created.append(client_ns)
        _ip_ok("link", "add", server_if, "type", "veth", "peer", "name", client_if)
        _ip_ok("link", "set", server_if, "netns", server_ns)
        _ip_ok("link", "set", client_if, "netns", client_ns)
        for ns, dev, addr in [
            (server_ns, server_if, hosts.server_addr),
            (client_ns, client_if, hosts.client_addr),
        ]:
            _ip_ok("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            _ip_ok("-n", ns, "link", "set", dev, "up")
            _ip_ok("-n", ns, "link", "set", "lo", "up")
        yield hosts
    finally:
        for ns in created:
            _remove_namespace(ns)
        _ip("link", "del", server_if)  # only there if moving it into a namespace failed
        leftover = set(_ip("netns", "list").stdout.split()) & {server_ns, client_ns}
        assert not leftover, f"namespaces left behind: {leftover}"


# --- one host with a hosts file of its own ----------------------------------------------------


@dataclass(frozen=True)
class NamedHost:
    """A network namespace with loopback up and its own /etc/hosts.

    ``ip netns exec NS`` bind-mounts /etc/netns/NS/hosts over /etc/hosts for what it
    starts, and glibc reads that file at every lookup: `write_hosts` changes what names
    resolve to for the processes already running there. All of 127.0.0.0/8 is
    loopback, so processes in it bind 127.0.X.Y addresses of their own.
    """

    ns: str
    hosts: Path

    def write_hosts(self, names: dict[str, list[str]]) -> None:
        """Make each name resolve to its addresses (and localhost to 127.0.0.1).

        Rewritten in place: the bind mount follows the file, not its path, so a new
        file renamed over it would go unseen.
        """
        lines = ["127.0.0.1 localhost"]
        lines += [f"{address} {name}" for name, addresses in names.items() for address in addresses]
        with open(self.hosts, "r+") as f:
            f.seek(0)
            f.write("\n".join(lines) + "\n")
            f.truncate()

    @property
    def prefix(self) -> tuple[str, ...]:
        """The command prefix that runs a program in this namespace."""
        return ("ip", "netns", "exec", self.ns)


@pytest.fixture
def named_host() -> Iterator[NamedHost]:
    """A namespace zmdN with loopback up and its own /etc/hosts (`NamedHost`)."""
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2): cannot create network namespaces")
    ns = f"zmd{os.getpid() % 100000}{random.randint(0, 99):02d}"
    etc = Path("/etc/netns") / ns
    r = _ip("netns", "add", ns)
    if r.returncode != 0:
        pytest.skip(f"network namespaces are not permitted here: {r.stderr.strip()}")
    try:
        try:
            etc.mkdir(parents=True)
            (etc / "hosts").write_text("127.0.0.1 localhost\n")
        except OSError as exc:
            pytest.skip(f"cannot give a namespace its own /etc/hosts ({etc}): {exc}")
        _ip_ok("-n", ns, "link", "set", "lo", "up")
        yield NamedHost(ns, etc / "hosts")
    finally:
        _remove_namespace(ns)
        shutil.rmtree(etc, ignore_errors=True)
        assert ns not in _ip("netns", "list").stdout.split(), f"namespace {ns} left behind"


# --- a client to drive inside a namespace -------------------------------------------------------


class Probe:
    """``tests/meshprobe.py`` running in a namespace: one JSON command, one JSON answer.

    Its stderr (the client's log lines) goes to ``log``; `close` ends it, whatever state
    it is in.
    """

    def __init__(self, prefix: tuple[str, ...], log: Path, *args: str) -> None:
        self.log = log
        here = Path(__file__).resolve().parent
        env = {**os.environ}
        env["PYTHONPATH"] = os.pathsep.join([str(here), env.get("PYTHONPATH", "")])
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, str(here / "meshprobe.py"), *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
                start_new_session=True,
            )

    def ask(self, wait: float = 60, **command: object) -> dict[str, Any]:
        """Send ``command``; its answer, or fail the test after ``wait`` seconds."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], wait)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            pytest.fail(f"probe gave no answer to {command} in {wait} s:\n{self.output()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.ask(wait=15, op="quit")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


# --- hosts behind links with delay and loss ----------------------------------------------------


@dataclass
class Star:
    """A client namespace and host namespaces, all joined through `tests/linkemu.py`.

    ``client_addr`` and each of ``hosts`` (namespace, address) share one /24. `set_link`
    gives a host's link a delay (seconds, each way) and a loss probability.
    """

    client_ns: str
    client_addr: str
    hosts: list[tuple[str, str]]
    emulator: subprocess.Popen[str]

    def set_link(self, address: str, delay: float = 0.0, loss: float = 0.0) -> None:
        assert self.emulator.stdin is not None
        assert self.emulator.stdout is not None
        self.emulator.stdin.write(json.dumps({"host": address, "delay": delay, "loss": loss}))
        self.emulator.stdin.write("\n")
        self.emulator.stdin.flush()
        assert self.emulator.stdout.readline().strip() == "ok"

    @staticmethod
    def prefix(ns: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", ns)


def star_hosts(count: int) -> Iterator[Star]:
    """`Star` with ``count`` hosts, removed with every process in them afterwards.
    Skips, saying why, where namespaces or TUN interfaces cannot be made."""
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2): cannot create network namespaces")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun: cannot emulate links between namespaces")
    tag = f"{os.getpid() % 100000}{random.randint(0, 99):02d}"
    net = f"10.214.{random.randint(0, 255)}"
    client = (f"zmk{tag}", f"zt{tag}c", f"{net}.1")
    hosts = [(f"zmh{tag}{k}", f"zt{tag}{k}", f"{net}.{11 + k}") for k in range(count)]
    created: list[str] = []
    emulator: subprocess.Popen[str] | None = None
    try:
        for ns, _, _ in [client, *hosts]:
            r = _ip("netns", "add", ns)
            if r.returncode != 0:
                pytest.skip(f"network namespaces are not permitted here: {r.stderr.strip()}")
            created.append(ns)
        spec = json.dumps([list(client), *map(list, hosts)])
        emulator = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("linkemu.py")), spec],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert emulator.stdout is not None
        line = emulator.stdout.readline().strip()
        if line != "ready":
            pytest.skip(f"cannot emulate links over TUN here (linkemu.py said {line!r})")
        yield Star(client[0], client[2], [(ns, addr) for ns, _, addr in hosts], emulator)
    finally:
        if emulator is not None:
            for pipe in (emulator.stdin, emulator.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()  # stdin closed: it exits, and its interfaces go
            try:
                emulator.wait(10)
            except subprocess.TimeoutExpired:
                emulator.kill()
                emulator.wait(10)
        for ns in created:
            _remove_namespace(ns)
        leftover = set(_ip("netns", "list").stdout.split()) & set(created)
        assert not leftover, f"namespaces left behind: {leftover}"
