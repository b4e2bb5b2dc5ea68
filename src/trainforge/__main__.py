"""``python -m trainforge`` (what torchrun runs: ``torchrun ... -m trainforge train CONFIG``)."""

import sys

from .cli import main

sys.exit(main())
