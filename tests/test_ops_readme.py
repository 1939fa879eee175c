"""README's "Operations" commands, run as written: start, status, calls over tcp and ipc,
restart all, rollout, kill -9, change the count, stop.

Every fenced block of that section runs, in order, in one bash session, from a temp dir
holding supervisord.conf — except the "another host" blocks (their address is not on
this machine; tests/test_ops_netns.py runs that setup across network namespaces). The
one change: ports 55NN become free ports, in the conf and in the commands alike.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from opskit import REPO, env_path, free_prefix, render_conf, stop_daemon

pytestmark = pytest.mark.process

_BLOCK = re.compile(r"```\n(.*?)```", re.S)


def operations_blocks() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.partition("\n## Operations\n")[2].partition("\n## ")[0]
    assert section, "README.md has no '## Operations' section"
    return [b for b in _BLOCK.findall(section) if "10.0.0.5" not in b]


def test_readme_operations_commands_work_as_written(short_tmp: Path) -> None:
    blocks = operations_blocks()
    assert len(blocks) == 8, blocks
    prefix = free_prefix(3)
    conf = render_conf(short_tmp, prefix, test_service=False)
    ports = re.compile(r"\b55(\d\d)\b")
    script = ["set -euo pipefail"]
    for n, block in enumerate(blocks):
        script.append(f"echo '=== block {n}'")
        script.append(ports.sub(lambda m: f"{prefix}{m.group(1)}", block))
        if n == 6:  # after the count changed: the test's own look at what runs
            script.append("supervisorctl -c supervisord.conf status")
    # PYTHONPATH: README runs these from the repository root, where the workers import
    # examples.mathsvc (examples/ is in the checkout, not installed); here the conf sits
    # in a temp dir, so the checkout is put on the path instead.
    env = {"PATH": env_path(), "HOME": str(short_tmp), "LANG": "C.UTF-8", "PYTHONPATH": str(REPO)}
    try:
        r = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=short_tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=100,
            check=False,
        )
    finally:
        stop_daemon(conf, env)
    print(r.stdout)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    out = dict(re.findall(r"=== block (\d+)\n(.*?)(?==== block|\Z)", r.stdout, re.S))

    start, call, ipc, restart, rollout, kill, count, stop = (out[str(n)] for n in range(8))
    assert re.findall(r"^worker:worker-0\d", start, re.M) == [
        "worker:worker-01",
        "worker:worker-02",
    ]
    assert call.splitlines()[0] == "3"
    assert call.count(" READY ") == 2
    assert ipc.strip() == "3"
    assert "worker:worker-01: started" in restart
    assert "rolled 2 process(es) of worker" in rollout
    assert re.search(r"^worker:worker-01 +RUNNING", kill, re.M), kill
    shut_down, pid_line, *status = count.strip().splitlines()
    assert (shut_down, pid_line.isdigit()) == ("Shut down", True), count
    assert [line.split()[0] for line in status] == [
        "broker",
        "worker:worker-01",
        "worker:worker-02",
        "worker:worker-03",
    ]
    assert "Shut down" in stop
    assert not (short_tmp / "run" / "supervisord.pid").exists()
