"""``python -m wwmonitor`` (also under ``torchrun``)."""

import sys

from wwmonitor.cli import main

sys.exit(main())
