"""``python -m monitoring``: the offline check of the dashboard and the alert policies
(``monitoring/validate.py``); exits 1 and prints each problem if there is one."""

import sys

from monitoring.validate import main

sys.exit(main())
