"""Train VSRBidirectional_3x.

    accelerate launch vsrpp_dist/train.py --config configs/default.yaml [key.sub=value ...]
    python vsrpp_dist/train.py --config configs/demo.yaml            (one device)
    python -m vsrpp_dist.train --config ...                          (same)
    vsrpp train --config ...                                         (same, from an installed package)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a file (`accelerate launch vsrpp_dist/train.py`): import the package from the checkout and
    # keep this folder off sys.path, where its modules would shadow top-level ones.
    sys.path[0] = str(Path(__file__).resolve().parent.parent)
    __package__ = "vsrpp_dist"  # noqa: A001

from vsrpp_dist.cli import OneLineParser, run_cli
from vsrpp_dist.config import describe, load_config

# A config override (key.sub=value) as opposed to a checkpoint path, which may hold "=" only after a "/".
OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+=")


def parse_args(argv):
    parser = OneLineParser(
        prog="train.py", error_name="train", description="Train the x3 video super-resolution model (see README.md).",
        epilog="Overrides: any config key as key.sub=value, e.g. train.total_steps=2000 data.num_workers=2. "
               "List every key with --help-config.")
    parser.add_argument("--config", help="YAML config (configs/*.yaml); defaults apply where it is silent")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                       help="continue the run: from its newest complete checkpoint, or from CHECKPOINT "
                            "(an argument of the form key.sub=value after --resume is an override, not a "
                            "checkpoint: --resume train.total_steps=16 resumes the newest one)")
    start.add_argument("--fresh", action="store_true",
                       help="start over; an existing run directory is moved to RUN.bak-TIMESTAMP (never deleted)")
    start.add_argument("--auto-resume", action="store_true",
                       help="resume when the run directory holds checkpoints, else start new (for requeued cluster jobs)")
    parser.add_argument("--help-config", action="store_true", help="list every config key with its default and meaning")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    if args.resume and OVERRIDE.match(args.resume):  # argparse took the first override for the checkpoint
        args.overrides.insert(0, args.resume)
        args.resume = "latest"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.help_config:
        print("\n".join(describe()))
        return 0
    cfg = load_config(args.config, args.overrides)

    from vsrpp_dist.training.run_dir import StartRequest
    from vsrpp_dist.training.runtime import restart_count
    from vsrpp_dist.training.trainer import Trainer

    trainer = Trainer(cfg, StartRequest(resume=args.resume, fresh=args.fresh, auto_resume=args.auto_resume,
                                        restart=restart_count()))
    try:
        code = trainer.train()
    finally:
        trainer.close()
    if trainer.accelerator.is_main_process:
        watch = (f"\n  watch it:  tensorboard --logdir {trainer.run_dir / 'logs'}"
                 if "tensorboard" in cfg.log.trackers else "")
        print(f"run directory: {trainer.run_dir}{watch}", file=sys.stderr)
    return code


def cli(argv=None) -> int:
    return run_cli(main, argv, prog="train")


if __name__ == "__main__":
    sys.exit(cli())
