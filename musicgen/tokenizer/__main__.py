"""`python -m musicgen.tokenizer check PATH...` (see `musicgen.tokenizer.check`)."""

import sys

from .check import main

USAGE = "usage: python -m musicgen.tokenizer check PATH... [--out DIR] [--time-signature N/D]"

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "check":
        print(USAGE, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[2:]))
