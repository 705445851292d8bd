"""``python -m diffeel`` (and ``torchrun -m diffeel``) run the command-line interface."""

import sys

from ._entry import main

sys.exit(main())
