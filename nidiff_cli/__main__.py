"""`python -m nidiff_cli COMMAND ...`: the same program as run.py and the `nidiff` console script."""

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main(prog="nidiff"))
