"""The service ``zeromesh demo`` starts: the four handlers the demo calls, nothing more.

It ships inside the package, so ``zeromesh demo`` runs from a plain install in any
directory. The fuller example a reader copies from is ``examples/mathsvc.py`` in the
repository (the same ``math`` service with more handlers), which is not installed.
"""

from __future__ import annotations

import os

import numpy as np

from worker import Service

__all__ = ["svc"]

svc = Service("math")


@svc.handler
def add(a, b):
    """a + b: the smallest useful handler."""
    return a + b


@svc.handler("mean")
def _mean(arr: np.ndarray) -> np.ndarray:
    """Column means: numpy in, numpy out, no copies on the wire."""
    return arr.mean(axis=0)


@svc.handler
def fail(message: str = "boom"):
    """Raise ValueError: shows how a handler's exception reaches the caller."""
    raise ValueError(message)


@svc.handler
def pid() -> int:
    """The serving process's pid: shows which worker answered."""
    return os.getpid()
