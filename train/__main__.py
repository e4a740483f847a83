"""``python -m maedet.train`` (what torchrun starts): the same tool as ``maedet-train``."""

import sys

from .cli import main

sys.exit(main())
