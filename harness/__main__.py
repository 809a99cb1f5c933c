"""`python -m harness ...`: the same command line as the `harness` script (what executors and `accelerate launch -m
harness` run)."""

import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main())
