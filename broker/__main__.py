"""``python -m broker``: the same as ``zeromesh-broker``."""

import sys

from ._cli import main

sys.exit(main())
