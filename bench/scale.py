"""``python -m bench.scale``: the same as ``zeromesh bench --scale``, from a checkout.

The scale benchmark ships inside the package (``zeromesh._bench.scale``, with the
simulated peers in ``zeromesh._bench.simpeers``) so that ``zeromesh bench --scale``
works from a plain install; this module only gives it a developer command beside the
others here.
"""

from __future__ import annotations

import sys

from zeromesh._bench.scale import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
