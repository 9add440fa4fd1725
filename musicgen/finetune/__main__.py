"""`python -m musicgen.finetune my_midis/ --out runs/mystyle` (see musicgen/finetune/cli.py)."""

import sys

from .cli import main

sys.exit(main())
