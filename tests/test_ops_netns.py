"""Workers on another host: two network namespaces joined by a veth pair stand for two
hosts. supervisord runs supervisord.conf in one, bound to that host's address
(``ZEROMESH_HOST``), and a client in the other calls it across the link. A worker
listening beyond loopback needs CURVE (protected mode), so the mesh runs with keys made
by ``zeromesh keygen`` and handed over in the environment, as the README shows.

The namespaces, the link and every process in them are removed when the test ends,
whatever happens. The test skips, saying why, only where namespaces cannot be created.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from netkit import Hosts
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
