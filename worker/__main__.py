"""``python -m worker``: the same as ``zeromesh-worker``."""

import sys

from ._cli import main

sys.exit(main())
