"""Workers on another host: two network namespaces joined by a veth pair stand for two
hosts. supervisord runs supervisord.conf in one, bound to that host's address
(``ZEROMESH_HOST``), and a client in the other calls it across the link. A worker
listening beyond loopback needs CURVE (protected mode), so the mesh runs with keys made
by ``zeromesh keygen`` and handed over in the environment, as the README shows.

The namespaces, the link and every process in them are removed when the test ends,
whatever happens. The test skips, saying why, only where namespaces cannot be created.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from opskit import BIN, Supervisor

pytestmark = pytest.mark.process

_CLIENT = """
import json, sys
import numpy as np
from client import Client
with Client(sys.argv[1], timeout=20) as c:
    arr = np.arange(12.0).reshape(4, 3)
    print(json.dumps({
        "add": c.call("math.add", 1, 2),
        "mean": c.call("math.mean", arr).tolist(),
        "big": float(c.call("math.scale", np.ones((500, 500)), 3.0).sum()),
        "pids": sorted({c.call("math.pid") for _ in range(40)}),
    }))
"""


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


def _keys(root: Path) -> dict[str, str]:
    """The mesh's key pair and a client's, the way the README sets them up: every
    process under supervisord shares the mesh key (workers reach the broker with it), and
    the allow directory holds the mesh's public key and the client's."""
    for name in ("keys/mesh", "keys/client"):
        r = subprocess.run(
            [sys.executable, "-m", "zeromesh", "keygen", str(root / name)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert r.returncode == 0, r
    allowed = root / "allowed"
    allowed.mkdir()
    for name in ("mesh", "client"):
        shutil.copy(root / "keys" / f"{name}.key", allowed)
    return {
        "ZEROMESH_CURVE_SECRET": str(root / "keys" / "mesh.key_secret"),
        "ZEROMESH_CURVE_ALLOW": str(allowed),
        "ZEROMESH_CURVE_SERVER": str(root / "keys" / "mesh.key"),
    }


def test_workers_on_another_host(
    two_hosts: Hosts, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = _keys(short_tmp)
    client_secret = str(short_tmp / "keys" / "client.key_secret")
    # This test process checks readiness with a Client: it is a client of the mesh too.
    monkeypatch.setenv("ZEROMESH_CURVE_SERVER", keys["ZEROMESH_CURVE_SERVER"])
    monkeypatch.setenv("ZEROMESH_CURVE_SECRET", client_secret)
    sup = Supervisor(short_tmp, host=two_hosts.server_addr, netns=two_hosts.server_ns)
    sup.env.update(keys)
    client_env = {**sup.env, "ZEROMESH_CURVE_SECRET": client_secret}
    try:
        sup.start()
        in_client = ["ip", "netns", "exec", two_hosts.client_ns]
        # The documented client command, from the other host, over the link.
        call = ["call", "--connect", sup.port_range(), "math.add", "1", "2"]
        r = subprocess.run(
            [*in_client, str(BIN / "zeromesh"), *call],
            capture_output=True,
            text=True,
            env=client_env,
            timeout=60,
            check=False,
        )
        assert (r.returncode, r.stdout.strip()) == (0, "3"), r
        r = subprocess.run(
            [*in_client, sys.executable, "-c", _CLIENT, sup.port_range()],
            capture_output=True,
            text=True,
            env=client_env,
            timeout=60,
            check=False,
        )
        assert r.returncode == 0, r
        got = json.loads(r.stdout)
        assert got["add"] == 3
        assert got["mean"] == [4.5, 5.5, 6.5]
        assert got["big"] == 3.0 * 500 * 500
        assert got["pids"] == sorted(sup.pids().values())  # both workers, across the link
    finally:
        sup.close()
