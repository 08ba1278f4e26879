"""``python -m learngn ...``: the same command line as the ``learngn`` console script."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
