"""README's "A secured mesh across two hosts" run as written, on two hosts.

Two network namespaces stand for host A (10.0.0.5 in the README) and host B
(10.0.0.6): every shell block of that part of the Security section runs in one of
them, in order, with its own home directory, as the prose before it says. The changes
made to run it here, and only these:

- the README's two addresses become the namespaces' addresses;
- ``scp`` is a shell function that copies between the two home directories (the
  hosts share this machine's file system; the README copies between real hosts);
- every command's failure is reported (``trap ... ERR``) instead of stopping the
  block, so the test can check that exactly the one call the README says fails does.

What runs: keygen on both hosts, a broker bound to 0.0.0.0 with CURVE, a worker on
each host joining it, the HTTPS gateway with a token, calls as two clients (one
limited to ``math``), ``zeromesh status``, and the key rotation. Everything the blocks
start is killed with the namespaces when the test ends.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from netkit import Hosts
from opskit import REPO, env_path

pytestmark = pytest.mark.process

_ADDR_A, _ADDR_B = "10.0.0.5", "10.0.0.6"
# Which host each block runs on, as the prose before it says.
_HOSTS = ["A", "B", "A", "B", "B", "A", "B", "A"]

_PRELUDE = r"""
set -u
trap 'echo "=== failed ($?): $BASH_COMMAND"' ERR
scp() {  # scp [HOST:]SRC... [HOST:]DEST, between the two hosts' home directories
    local args=() a
    for a in "$@"; do
        case "$a" in
            "$ADDR_A":*) args+=("$HOME_A/${a#*:}") ;;
            "$ADDR_B":*) args+=("$HOME_B/${a#*:}") ;;
            *) args+=("$a") ;;
        esac
    done
    cp "${args[@]}"
}
cd "$HOME"
"""


def walkthrough_blocks() -> list[str]:
    """The shell blocks (bare fences; not the ```python one) of the walkthrough."""
    readme = (REPO / "README.md").read_text()
    section = readme.partition("\n### A secured mesh across two hosts")[2].partition("\n### ")[0]
    assert section, "README.md lost its 'A secured mesh across two hosts' walkthrough"
    blocks: list[str] = []
    fence: str | None = None
    for line in section.splitlines(keepends=True):
        if line.startswith("```"):
            if fence is None:
                fence, body = line.strip(), []
            else:
                if fence == "```":
                    blocks.append("".join(body))
                fence = None
        elif fence is not None:
            body.append(line)
    return blocks


def test_readme_security_walkthrough_runs_as_written(two_hosts: Hosts, short_tmp: Path) -> None:
    for tool in ("openssl", "curl"):  # .ci/run installs both
        if shutil.which(tool) is None:
            pytest.skip(f"no `{tool}` here: the walkthrough makes a TLS cert and calls HTTPS")
    blocks = walkthrough_blocks()
    assert len(blocks) == len(_HOSTS), "README's walkthrough changed: update _HOSTS"
    homes = {"A": short_tmp / "a", "B": short_tmp / "b"}
    for home in homes.values():
        home.mkdir()
    addrs = {_ADDR_A: two_hosts.server_addr, _ADDR_B: two_hosts.client_addr}
    outputs: list[str] = []
    for n, (block, host) in enumerate(zip(blocks, _HOSTS, strict=True)):
        ns = two_hosts.server_ns if host == "A" else two_hosts.client_ns
        script = _PRELUDE + re.sub(r"10\.0\.0\.[56]", lambda m: addrs[m.group(0)], block)
        env = {
            "PATH": env_path(),
            "HOME": str(homes[host]),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(REPO),
            "ADDR_A": two_hosts.server_addr,
            "ADDR_B": two_hosts.client_addr,
            "HOME_A": str(homes["A"]),
            "HOME_B": str(homes["B"]),
        }
        out = homes[host] / f"block{n}.out"
        with out.open("w") as f:
            # Output to a file, not a pipe: the processes a block starts in the background
            # hold it open after the block's shell exits.
            r = subprocess.run(
                ["ip", "netns", "exec", ns, "bash", "-c", script],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=120,
                check=False,
            )
        if n == 2:  # a person types the next block after the gateway has started
            _wait_for_line(out, "listening on https://")
        text = out.read_text()
        print(f"=== block {n} on host {host}\n{text}")
        assert r.returncode == 0, text
        outputs.append(text)

    keys_a, keys_b, start_a, calls_b, _, hup, web2, retire = outputs
    for text in (keys_a, keys_b, start_a, hup, web2, retire):
        assert "=== failed" not in text, text
    # Exactly the call the README says fails, with the error it shows.
    failed = re.findall(r"=== failed \((\d+)\): (.*)", calls_b)
    assert [(code, cmd.split()[-2]) for code, cmd in failed] == [("1", "demo.fib")], calls_b
    assert (
        "error: Forbidden: key report may not call service 'demo': its certificate in the "
        "server's --curve-allow directory allows math (add demo to its services and send "
        "SIGHUP)" in calls_b
    )
    lines = calls_b.splitlines()
    assert "6765" in lines
    assert "3" in lines
    assert '{"result":6765}' in calls_b
    # zeromesh status: both workers, one on each host.
    assert "workers: 2" in calls_b
    assert "4" in web2.splitlines()  # web2's call after the first SIGHUP

    # After the second SIGHUP web1 is refused, as the README says.
    call = "zeromesh call -c tcp://{}:5600 --curve-server keys/mesh.key --curve-secret "
    call += "keys/web1.key_secret --timeout 10 math.add 1 1"
    refused = subprocess.run(
        ["ip", "netns", "exec", two_hosts.client_ns, *call.format(two_hosts.server_addr).split()],
        cwd=homes["B"],
        env={"PATH": env_path(), "HOME": str(homes["B"]), "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1, refused
    assert "AuthenticationError" in refused.stderr
    assert "refused our key: add keys/web1.key to its --curve-allow directory" in refused.stderr


def _wait_for_line(path: Path, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"no {text!r} in {path}:\n{path.read_text()}"
        time.sleep(0.1)
