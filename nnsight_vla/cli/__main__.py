"""``python -m nnsight_vla.cli``: the command line."""

import sys

from . import main

sys.exit(main())
