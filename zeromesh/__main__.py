"""``python -m zeromesh``: the same as the ``zeromesh`` command."""

import sys

from ._cli import main

sys.exit(main())
