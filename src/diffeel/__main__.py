"""``python -m diffeel`` (and ``torchrun -m diffeel``) run the command-line interface."""

import sys

from .cli import main

sys.exit(main())
