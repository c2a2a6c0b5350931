"""``python -m porch`` is the ``porch`` command."""

import sys

from porch.cli import main

sys.exit(main())
