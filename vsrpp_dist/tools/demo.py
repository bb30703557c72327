"""The quickstart: demo clips from real photos -> shards -> a short real training run.

    python -m vsrpp_dist.demo [key.sub=value ...]

Renders camera pans and zooms over scikit-image's sample photos into frame folders, packs them with
`python -m vsrpp_dist.pack` (training and validation sets), and trains configs/demo.yaml. It is the same
trainer `accelerate launch vsrpp_dist/train.py` runs; the command to repeat it is printed at the end.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..cli import OneLineParser, run_cli
from ..config import CONFIG_DIR, load_config

DEMO_CONFIG = CONFIG_DIR / "demo.yaml"

# Footage sizes: 8 training sequences of 40 frames at 180x240, 2 validation sequences of 10 frames.
TRAIN_SEQUENCES, TRAIN_FRAMES, TRAIN_HW = 8, 40, (180, 240)
VAL_SEQUENCES, VAL_FRAMES, VAL_HW = 2, 10, (120, 180)


def prepare_data(data_dir: Path, say=print) -> tuple[Path, Path]:
    """Render and pack the demo footage once; later runs reuse the shards."""
    from ..data.pack_command import main as pack
    from ..data.shard_format import MANIFEST_NAME
    from .demo_data import write_frame_folders

    train, val = data_dir / "shards" / "train", data_dir / "shards" / "val"
    if (train / MANIFEST_NAME).is_file() and (val / MANIFEST_NAME).is_file():
        say(f"demo shards found in {data_dir / 'shards'}")
        return train, val
    for folder in (train, val):
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} holds an unfinished pack; move it away and run the demo again")
    started = time.perf_counter()
    say(f"rendering demo footage from scikit-image photos into {data_dir / 'frames'} ...")
    write_frame_folders(data_dir / "frames" / "train", sequences=TRAIN_SEQUENCES, frames=TRAIN_FRAMES,
                        frame_hw=TRAIN_HW, seed=0)
    write_frame_folders(data_dir / "frames" / "val", sequences=VAL_SEQUENCES, frames=VAL_FRAMES, frame_hw=VAL_HW,
                        seed=99, photos=("coffee", "chelsea"))
    say(f"  done in {time.perf_counter() - started:.1f} s; packing ...")
    if pack([str(data_dir / "frames" / "train"), str(train), "--min-tile", "96", "--frames-per-sample", "10"]) != 0:
        raise RuntimeError("packing the demo training set failed (see above)")
    if pack(["--val", str(data_dir / "frames" / "val"), str(val)]) != 0:
        raise RuntimeError("packing the demo validation set failed (see above)")
    return train, val


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m vsrpp_dist.demo", description=__doc__.split("\n\n")[0])
    # Everything the demo writes lands where the user is (data/demo, the config's runs/demo), never beside
    # the package (that is site-packages once installed).
    parser.add_argument("--data", default="data/demo", help="where demo frames and shards go (default: data/demo "
                                                             "in the current folder)")
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="training config (default: configs/demo.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)

    train, val = prepare_data(Path(args.data))
    overrides = [f"data.train_shards={train}", f"data.val_shards={val}", *args.overrides]
    cfg = load_config(args.config, overrides)

    from ..training.run_dir import StartRequest, has_checkpoints
    from ..training.trainer import Trainer

    run_dir = Path(cfg.run.dir)
    if has_checkpoints(run_dir):
        print(f"{run_dir} holds an earlier demo run; it is moved aside (not deleted)", file=sys.stderr)
    started = time.perf_counter()
    trainer = Trainer(cfg, StartRequest(fresh=True))
    try:
        code = trainer.train()
    finally:
        trainer.close()
    minutes = (time.perf_counter() - started) / 60
    print(f"\ndemo training finished in {minutes:.1f} min\n"
          f"  run directory: {trainer.run_dir}\n"
          f"  watch it:      tensorboard --logdir {trainer.run_dir / 'logs'}\n"
          f"  status:        cat {trainer.run_dir / 'training_status.txt'}\n"
          f"  repeat it:     vsrpp train --config {args.config} " + " ".join(overrides) + " --fresh", file=sys.stderr)
    return code


def cli(argv=None) -> int:
    """The command: user errors are one line and exit code 2."""
    return run_cli(main, argv, prog="demo")


if __name__ == "__main__":
    sys.exit(cli())
