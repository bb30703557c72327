"""`python -m vsrpp_dist.demo`: the quickstart (the code lives in vsrpp_dist/tools/demo.py)."""

import sys

from vsrpp_dist.tools.demo import cli

if __name__ == "__main__":
    sys.exit(cli())
