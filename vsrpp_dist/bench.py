"""`python -m vsrpp_dist.bench`: the benchmarks (the code lives in vsrpp_dist/tools/bench.py)."""

import sys

from vsrpp_dist.tools.bench import cli

if __name__ == "__main__":
    sys.exit(cli())
