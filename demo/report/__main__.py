"""``python -m demo.report``: see the package's docstring."""

import sys

from demo.report import main

sys.exit(main())
