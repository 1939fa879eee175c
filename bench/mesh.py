"""``python -m bench.mesh``: the same as ``zeromesh bench``, from a checkout.

The benchmark ships inside the package (``zeromesh._bench``) so that ``zeromesh bench``
works from a plain install; this module only keeps the developer command working.
"""

from __future__ import annotations

import sys

from zeromesh._bench.mesh import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
