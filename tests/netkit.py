"""Two hosts on one machine: network namespaces joined by a veth pair.

`two_hosts` (a fixture; import it into a test module) creates namespaces zmsN and
zmcN, gives them 10.213.X.1/30 and 10.213.X.2/30, and removes them, with every process
left in them, when the test ends, whatever happens. It skips, saying why, only where
namespaces cannot be created.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

__all__ = ["Hosts", "two_hosts"]


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
