"""``python -m diffeel.cli`` (what torchrun's ``-m diffeel.cli`` starts)."""

import sys

from . import main

sys.exit(main())
