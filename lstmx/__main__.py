"""``python -m lstmx``: the ``lstmx`` command."""

import sys

from .cli import main

sys.exit(main())
