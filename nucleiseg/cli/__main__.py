"""``python -m nucleiseg.cli ...``: the ``nucleiseg`` command."""

import sys

from nucleiseg.cli import main

sys.exit(main())
