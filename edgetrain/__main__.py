"""`python -m edgetrain ...` == the `edgetrain` console script (edgetrain.cli)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
