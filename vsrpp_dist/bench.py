"""`python -m vsrpp_dist.bench`: the benchmarks (vsrpp_dist/tools/bench.py dispatches to tools/bench_*.py)."""

import sys

from vsrpp_dist.tools.bench import cli

if __name__ == "__main__":
    sys.exit(cli())
