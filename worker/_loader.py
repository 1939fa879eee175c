"""Find the services to serve from a ``module:attribute`` string, as the CLI gets it."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from ._server import StartupError
from ._service import Service

__all__ = ["load_services"]


def load_services(spec: str) -> list[Service]:
    """Import ``module:attribute`` and return the `Service` objects it names.

    The attribute may be a `Service` or a list/tuple of them; a bare ``module`` serves
    every `Service` defined at its top level. The current directory is importable, as
    with ``python -m``, so ``zeromesh-worker mysvc:svc`` works next to ``mysvc.py``.

    Raises:
        StartupError: the module cannot be imported or holds no service.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise StartupError(f"{spec!r}: expected module:attribute, e.g. mysvc:svc")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise StartupError(
            f"cannot import {module_name!r} ({exc}); run from the directory that holds it "
            "or put it on PYTHONPATH"
        ) from exc
    if not attr:
        found = [v for v in vars(module).values() if isinstance(v, Service)]
        if not found:
            raise StartupError(f"module {module_name!r} defines no Service")
        return found
    value: Any = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise StartupError(f"module {module_name!r} has no attribute {attr!r}") from None
    if isinstance(value, Service):
        return [value]
    if isinstance(value, list | tuple) and value and all(isinstance(v, Service) for v in value):
        return list(value)
    raise StartupError(
        f"{spec} is a {type(value).__name__}, not a Service (or a list of them); "
        "create one with worker.Service('name')"
    )
