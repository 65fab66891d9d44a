"""`python -m fastswitch ...`: the same command line as `fastswitch ...`."""

import sys

from fastswitch.cli import main

sys.exit(main())
