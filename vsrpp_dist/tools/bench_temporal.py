"""What the temporal metrics cost: per frame and output stream, at a few frame sizes, and per validation.

    python -m vsrpp_dist.tools.bench_temporal [--sizes 120x180,720x1280] [--frames N]
                                              [--val DIR --checkpoint C]

Per frame of a sequence, the GT side (grey, Farneback flow to the previous frame, Y) is computed once,
then each output stream (bicubic, each model) adds its own: TDE alone (Y and one subtraction), or TDE
and tOF (grey, its flow, the flows' difference). Frames are a real photo panned 2 px per frame with
mild noise, so Farneback works on real structure; the timings are the median of the frames after the
first (the first has no pair). With --val and --checkpoint, one validation of that packed set with the
model, with `validation.tof` off and on (the difference is what tOF adds per validation).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import numpy as np
import torch

from ..temporal_metrics import GroundTruthTrack, TemporalTrack


def panned_frames(hw: tuple[int, int], frames: int, seed: int = 0) -> list[torch.Tensor]:
    """(3, H, W) uint8 frames: a photo panned 2 px per frame, plus noise (an output that flickers)."""
    from PIL import Image
    from skimage import data

    h, w = hw
    photo = Image.fromarray(data.astronaut()).resize((w + 2 * frames, h))
    base = np.asarray(photo)
    rng = np.random.default_rng(seed)
    out = []
    for t in range(frames):
        frame = base[:, 2 * t:2 * t + w].astype(np.int16) + rng.integers(-3, 4, (h, w, 3))
        out.append(torch.from_numpy(frame.clip(0, 255).astype(np.uint8)).permute(2, 0, 1).contiguous())
    return out


def time_per_frame(gt: list[torch.Tensor], out: list[torch.Tensor]) -> dict[str, float]:
    """Median ms per frame: the GT side (TDE only; with tOF), an output's TDE alone, an output's TDE + tOF."""
    timings: dict[str, list[float]] = {"gt TDE": [], "gt TDE + tOF": [], "stream TDE": [], "stream TDE + tOF": []}
    gt_plain, gt_track = GroundTruthTrack(with_tof=False), GroundTruthTrack(with_tof=True)
    tde_only, with_tof = TemporalTrack(with_tof=False), TemporalTrack(with_tof=True)
    for t, (g, o) in enumerate(zip(gt, out)):
        for key, step in (("gt TDE", lambda: gt_plain.step(g)),
                          ("gt TDE + tOF", lambda: gt_track.step(g)),
                          ("stream TDE", lambda: tde_only.step(o, gt_plain)),
                          ("stream TDE + tOF", lambda: with_tof.step(o, gt_track))):
            started = time.perf_counter()
            step()
            if t > 0:
                timings[key].append(1000 * (time.perf_counter() - started))
    return {k: statistics.median(v) for k, v in timings.items()}


def time_validation(val: str, checkpoint: str) -> dict[str, float]:
    from ..config import ValidationConfig
    from ..data.validation_set import ValidationSet
    from ..inference.loading import load_model
    from ..training.validation import Validator

    class OneProcess:
        process_index, num_processes, is_main_process, device = 0, 1, True, torch.device("cpu")
        gather = staticmethod(lambda t: t)

        @staticmethod
        def autocast():
            import contextlib
            return contextlib.nullcontext()

    class Quiet:
        def info(self, *args):
            pass

        def image(self, *args):
            pass

    model = load_model(checkpoint, torch.device("cpu")).model
    seconds = {}
    for tof in (False, True, False, True):  # twice each, the second of each kept (warm caches)
        validator = Validator(ValidationSet(val), ValidationConfig(images=0, tof=tof), OneProcess(), Quiet())
        started = time.perf_counter()
        result = validator.run(model, step=0)
        seconds[f"validation, tof={'on' if tof else 'off'} (s)"] = time.perf_counter() - started
    seconds["frames"] = result["frames"]
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vsrpp_dist.tools.bench_temporal", description=__doc__)
    parser.add_argument("--sizes", default="120x180,540x960,720x1280", help="GT frame sizes HxW, comma-separated")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--val", help="a packed validation set (with --checkpoint: time one validation)")
    parser.add_argument("--checkpoint")
    args = parser.parse_args(argv)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads, OpenCV single-threaded")
    print("| GT frame (HxW) | TDE: GT side | TDE: per output | TDE + tOF: GT side | TDE + tOF: per output |")
    print("|---|---|---|---|---|")
    for size in args.sizes.split(","):
        h, w = (int(v) for v in size.split("x"))
        gt = panned_frames((h, w), args.frames, seed=0)
        out = panned_frames((h, w), args.frames, seed=1)
        t = time_per_frame(gt, out)
        print(f"| {h}x{w} | {t['gt TDE']:.1f} ms | {t['stream TDE']:.1f} ms | {t['gt TDE + tOF']:.1f} ms | "
              f"{t['stream TDE + tOF']:.1f} ms |")
    if args.val and args.checkpoint:
        for key, value in time_validation(args.val, args.checkpoint).items():
            print(f"{key}: {value:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
