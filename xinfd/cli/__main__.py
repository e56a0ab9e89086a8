"""``python -m xinfd.cli``: same as the ``xinfctl`` console script."""

import sys

from xinfd.cli import main

sys.exit(main())
