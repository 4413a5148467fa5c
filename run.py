#!/usr/bin/env python
"""nidiff's command line (the package nidiff_cli; installed as the `nidiff` console script).

python run.py --sde nivp --sampler pc       # the main job: train on digits, sample, score
python run.py COMMAND --help                # main, train, sample, likelihood, fid, table, noise, config, ...
"""

import sys

from nidiff_cli import main

if __name__ == "__main__":
    sys.exit(main(prog="run.py"))
