"""``python -m ser_modules.reports RUN...``: see :mod:`ser_modules.reports.tables`."""

import sys

from ser_modules.reports.tables import main

sys.exit(main())
