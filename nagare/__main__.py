"""`python -m nagare` runs the same command line as `python nagare.pyz`."""

import sys

from nagare.cli import main

sys.exit(main())
