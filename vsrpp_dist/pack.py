"""`python -m vsrpp_dist.pack`: pack frame folders or videos into training shards (the code lives in vsrpp_dist/data/pack_command.py)."""

import sys

from vsrpp_dist.data.pack_command import cli

if __name__ == "__main__":
    sys.exit(cli())
