"""`python -m lab.scenario`: Check scenario files (see `lab.scenario.spec.main`)."""

import sys

from lab.scenario.spec import main

sys.exit(main())
