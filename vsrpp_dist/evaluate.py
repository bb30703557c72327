"""`python -m vsrpp_dist.evaluate`: PSNR/SSIM of a model against bicubic (the code lives in vsrpp_dist/inference/evaluate.py)."""

import sys

from vsrpp_dist.inference.evaluate import cli

if __name__ == "__main__":
    sys.exit(cli())
