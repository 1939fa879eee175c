"""`protocol` is sans-IO: importing it must not pull in any socket or event-loop library."""

import subprocess
import sys


def test_import_protocol_imports_no_zmq_or_tornado() -> None:
    # A fresh interpreter: this test process has zmq loaded already through other tests.
    code = (
        "import sys, protocol\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('zmq', 'tornado', 'asyncio'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""
