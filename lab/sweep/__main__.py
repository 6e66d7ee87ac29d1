"""`python -m lab.sweep`: Run a sweep (see `lab.sweep.runner.main`)."""

import sys

from lab.sweep.runner import main

sys.exit(main())
