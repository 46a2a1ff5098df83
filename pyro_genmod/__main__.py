"""``python -m pyro_genmod`` runs the ``genmod`` command line."""

import sys

from .cli import main

sys.exit(main())
