"""`python -m vsrpp_dist.export`: export a trained model to ONNX, verified against PyTorch (the code lives in vsrpp_dist/inference/export.py)."""

import sys

from vsrpp_dist.inference.export import cli

if __name__ == "__main__":
    sys.exit(cli())
