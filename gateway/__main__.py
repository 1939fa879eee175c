"""``python -m gateway``: the same as ``zeromesh-gateway``."""

import sys

from ._cli import main

sys.exit(main())
