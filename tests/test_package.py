"""The package graph: the `zeromesh` facade's names, and DESIGN's dependency direction
as seen by a fresh interpreter (lint-imports checks the source; this checks what an
import really loads)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import client
import protocol
import worker
import zeromesh

REPO = Path(__file__).resolve().parent.parent

FACADE = {
    # calling handlers
    "AsyncClient": client,
    "Client": client,
    "Codec": client,
    "Executor": client,
    "Options": client,
    "Slots": client,
    "WorkerInfo": client,
    "ENV_ENDPOINTS": client,
    "resolve_endpoints": client,
    # serving handlers
    "Service": worker,
    "cancelled": worker,
    "progress": worker,
    "trace_id": worker,
    "traceparent": worker,
    # errors
    "ZeromeshError": protocol,
    "AuthenticationError": protocol,
    "BadArguments": protocol,
    "Forbidden": protocol,
    "Cancelled": protocol,
    "NoWorkers": protocol,
    "Overloaded": protocol,
    "ProtocolError": protocol,
    "RemoteError": protocol,
    "StartupError": protocol,
    "Timeout": protocol,
    "UnknownHandler": protocol,
    "WorkerLost": protocol,
    "__version__": protocol,
}


def test_facade_exports_the_public_api_once() -> None:
    assert sorted(zeromesh.__all__) == sorted(FACADE)
    assert len(zeromesh.__all__) == len(set(zeromesh.__all__))
    for name, home in FACADE.items():
        # Re-exported, not redefined: `except zeromesh.Timeout` catches client.Timeout.
        assert getattr(zeromesh, name) is getattr(home, name), name


def test_facade_has_every_error_a_user_can_catch() -> None:
    errors = {
        name
        for name, value in vars(protocol.errors).items()
        if isinstance(value, type) and issubclass(value, protocol.ZeromeshError)
    }
    assert errors <= set(zeromesh.__all__)
    assert issubclass(zeromesh.StartupError, zeromesh.ZeromeshError)


def test_from_zeromesh_import_as_the_readme_does() -> None:
    code = "from zeromesh import Client, Service, RemoteError, Timeout, NoWorkers; print('ok')"
    out = _python(code)
    assert out.stdout.strip() == "ok", out.stderr


# What each library package may load, by DESIGN.md: worker, client and broker import
# protocol and zmqio and never each other; nothing below imports the tools above.
_OURS = ("protocol", "zmqio", "worker", "client", "broker", "gateway", "zeromesh")
_ABOVE = ("gateway", "zeromesh", "bench", "examples")


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("protocol", ("zmqio", "worker", "client", "broker", *_ABOVE)),
        ("zmqio", ("worker", "client", "broker", *_ABOVE)),
        ("client", ("worker", "broker", *_ABOVE)),
        ("worker", ("client", "broker", *_ABOVE)),
        ("broker", ("client", "worker", *_ABOVE)),
        ("gateway", ("worker", "broker", "zeromesh", "bench", "examples")),
    ],
)
def test_importing_a_package_loads_nothing_above_it(
    package: str, forbidden: tuple[str, ...]
) -> None:
    code = f"import sys, {package}; print(' '.join({{m.split('.')[0] for m in sys.modules}}))"
    out = _python(code)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert package in loaded
    assert not loaded & set(forbidden), f"import {package} loaded {loaded & set(forbidden)}"


# STYLE.md: loggers per audience (zmqio logs through its caller's logger).
_LOGGERS = ("protocol", "worker", "client", "broker", "gateway")


def test_library_warnings_stay_off_the_programs_stderr() -> None:
    # No logging configured by the program: Python's last-resort handler would print
    # WARNING records on stderr, were it not for the packages' NullHandlers.
    code = (
        "import logging, zeromesh, broker, gateway\n"
        f"for name in {_LOGGERS!r}:\n"
        "    logging.getLogger('zeromesh.' + name).warning('should not be printed')\n"
    )
    out = _python(code)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""


def test_bench_and_examples_are_not_installed() -> None:
    # Other distributions install top-level `bench` and `examples`: the wheel must not.
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = config["tool"]["setuptools"]["packages"]
    assert {p.split(".")[0] for p in packages} == set(_OURS)
    assert config["project"]["scripts"]["zeromesh"] == "zeromesh._cli:main"


def _python(code: str) -> subprocess.CompletedProcess[str]:
    # A fresh interpreter: this test process has loaded every package already.
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
