"""`python -m vsrpp_dist.upscale`: upscale a video or frame folder x3 (the code lives in vsrpp_dist/inference/upscale.py)."""

import sys

from vsrpp_dist.inference.upscale import cli

if __name__ == "__main__":
    sys.exit(cli())
