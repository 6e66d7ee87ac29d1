"""`python -m lab.report`: Write a run folder's report (see `lab.report.html.main`)."""

import sys

from lab.report.html import main

sys.exit(main())
