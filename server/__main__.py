"""``python -m server`` is the ``porch`` command."""

import sys

from server.cli import main

sys.exit(main())
