"""``python -m treadle`` runs the ``treadle`` command."""

import sys

from treadle.cli import main

sys.exit(main())
