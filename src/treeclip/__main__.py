"""Allow ``python -m treeclip``."""

import sys

from treeclip.cli import main

if __name__ == "__main__":
    sys.exit(main())
