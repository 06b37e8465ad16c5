"""``python -m hubcache``: the same as the ``hubcache`` command."""

import sys

from .cli import main

sys.exit(main())
