"""Benchmarks that print figures (commands, not timed tests): a dispatcher over the bench_* modules.

    python -m vsrpp_dist.bench loader [--frames DIR] [--shards DIR] [--codecs [LIST]] [--workers N] [--json OUT]
    python -m vsrpp_dist.bench step --config CONFIG [--steps N] [--matmul-peak] [key.sub=value ...]
    python -m vsrpp_dist.bench quality [--frames DIR] [--minutes M] [--variants LIST] [--seeds LIST]
    python -m vsrpp_dist.bench finetune --frames DIR [--base-steps N] [--steps N] [--parts LIST]
    python -m vsrpp_dist.bench degradation [--config CONFIG] [--rounds N] [key.sub=value ...]
    python -m vsrpp_dist.bench upscale --config CONFIG|--checkpoint C [--size WxH] [--frames N] [--tile N]
    python -m vsrpp_dist.bench trackers [--config CONFIG] [--trackers mlflow,wandb] [--rounds N] [key.sub=value ...]

Each subcommand is the module of its name, `bench_NAME.py`, which adds its parser and runs it:
`step` (vsrpp_dist/tools/bench_step.py): the trainer's step against a bare PyTorch loop.
`quality` (vsrpp_dist/tools/bench_quality.py): alignment variants at equal wall-clock, scored on held-out
footage.
`finetune` (vsrpp_dist/tools/bench_finetune.py): starting from a trained model (own footage, the two-stage
real-world recipe, the alignment upgrade) against the same steps from scratch, on held-out footage.
`degradation` (vsrpp_dist/tools/bench_degradation.py): what the realistic degradation costs against
bicubic in the loader, on the device and in the training step.
`upscale` (vsrpp_dist/tools/bench_upscale.py): inference frames/s and FLOPs per output frame with the
per-frame cache on and off, side by side.
`trackers` (vsrpp_dist/tools/bench_trackers.py): what logging to each experiment tracker costs per step,
next to TensorBoard alone.
`loader` (vsrpp_dist/tools/bench_loader.py): clips/s per core of the shard stream against a BasicSR-style
PNG folder loader, shard bytes against PNG bytes, pack speed, and the codec comparison.
"""

from __future__ import annotations

import argparse
import sys

from ..cli import OneLineParser, run_cli
from . import bench_degradation, bench_finetune, bench_loader, bench_quality, bench_step, bench_trackers, bench_upscale

PROG = "python -m vsrpp_dist.bench"
SUBCOMMANDS = (bench_loader, bench_step, bench_quality, bench_finetune, bench_degradation, bench_upscale,
               bench_trackers)  # in the order --help lists them


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description="Benchmarks that print figures.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Dispatch on the subcommand; user errors are one line and exit code 2."""
    return run_cli(_dispatch, argv, prog=PROG)


def _dispatch(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


cli = main  # what `python -m vsrpp_dist.bench` and `vsrpp bench` run

if __name__ == "__main__":
    sys.exit(main())
