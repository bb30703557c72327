"""`python -m vsrpp_dist.bench quality`: alignment variants trained for the same wall-clock budget on
the same data from the same seed, then scored on footage none of them trained on.

    python -m vsrpp_dist.bench quality [--frames DIR] [--minutes M] [--variants implicit,flow,flow_deform]
                                       [--seeds 0,1] [--work DIR] [--json OUT] [key.sub=value ...]

Data (made once in --work, reused):
- training: camera pans and zooms over six of scikit-image's photos, rendered with real motion (up to
  `--speed` GT pixels per frame, 3x the demo's); with --frames DIR also every `--stride`-th frame of
  the first 75 % of that video's frames (a real camera, real parallax);
- held out (never trained on): the same kind of pans over the two other photos (coffee, chelsea), and
  with --frames the last 25 % of that video's frames (strided the same way).

Each run: `configs/demo.yaml` (or --config) with model.alignment set per variant. Calibration runs of
`--calibrate-steps` (not counted), alternating between the variants for `--calibrate-rounds` rounds,
measure each variant's s/iter as the trainer counts it (seconds in training steps over steps; the
median over rounds; explicit alignment with and without its photometric warm-up); the real
run then gets the step count that fills the budget, so every variant ends its full LR schedule
(warm-up, cosine) inside the same budget and faster ones take more steps. Keep the machine
otherwise idle while it runs. The table shows each run's CPU seconds and the wall seconds it really
spent in training steps, to check the budget held. Runs go in the order the variants are
named, seed by seed; each is a separate `train.py` process. The final weights are scored by the
`evaluate` command: Y-PSNR/SSIM (BT.601, 8-bit) against the MATLAB-bicubic LR, per held-out sequence,
then the mean of sequence means.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from ..cli import int_at_least
from ..config import ALIGNMENTS, CONFIG_DIR, SCALE
from ..errors import BenchError

TRAIN_SCRIPT = Path(__file__).resolve().parents[1] / "train.py"  # what `accelerate launch` runs
ALL_VARIANTS = tuple(ALIGNMENTS)
TRAIN_PHOTOS = ("astronaut", "rocket", "immunohistochemistry", "retina", "hubble_deep_field", "colorwheel")
HELD_OUT_PHOTOS = ("coffee", "chelsea")




def add_parser(subparsers) -> None:
    p = subparsers.add_parser("quality", help="alignment variants at equal wall-clock: params, FLOPs, s/iter, "
                                              "held-out Y-PSNR/SSIM vs bicubic")
    p.add_argument("--config", default=str(CONFIG_DIR / "demo.yaml"), help="training config (default: demo)")
    p.add_argument("--variants", default=",".join(ALL_VARIANTS), help="model.alignment values, comma-separated")
    p.add_argument("--seeds", default="0", help="run seeds, comma-separated (each variant once per seed)")
    p.add_argument("--minutes", type=float, default=4.0, help="training budget per run (wall clock)")
    p.add_argument("--calibrate-steps", type=int_at_least(5), default=60, help="steps of each calibration run")
    p.add_argument("--calibrate-rounds", type=int_at_least(1), default=1,
                   help="calibration rounds, alternating between the variants; the median is used")
    p.add_argument("--frames", help="a folder of consecutive real video frames to add (75 %% train, 25 %% held out)")
    p.add_argument("--stride", type=int_at_least(1), default=3, help="take every N-th frame of --frames (more motion)")
    p.add_argument("--speed", type=float, default=7.5, help="rendered camera speed, GT pixels per frame")
    p.add_argument("--work", default="bench-quality", help="data, runs and results go here")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides for every run")
    p.set_defaults(run=run)


# -- data --------------------------------------------------------------------------------------------


def prepare_data(work: Path, frames: str | None, stride: int, speed: float, lr_patch: int,
                 say) -> tuple[Path, list[Path]]:
    """Training shards and held-out frame folders, made once (a marker file says they are complete).
    Rendered frames and shard tiles are large enough for the config's patch (3 x lr_patch GT pixels)."""
    from ..data.pack_command import main as pack
    from .demo_data import write_frame_folders

    shards, held_out_root = work / "shards" / "train", work / "held_out"
    marker = work / "data-complete.json"
    min_tile = max(96, SCALE * lr_patch)
    frame_h = max(180, min_tile + 36)
    frame_hw = (frame_h, frame_h // 3 * 4)
    recipe = {"frames": str(frames) if frames else None, "stride": stride, "speed": speed, "min_tile": min_tile}
    if marker.is_file() and json.loads(marker.read_text()) == recipe:
        return shards, sorted(p for p in held_out_root.iterdir() if p.is_dir())
    if work.exists() and any((work / name).exists() for name in ("shards", "held_out", "train_frames")):
        raise BenchError(f"{work}: holds an unfinished or different bench data set; move it away or pass --work")
    say(f"rendering footage into {work} ...")
    train_frames = work / "train_frames"
    write_frame_folders(train_frames / "pans", sequences=len(TRAIN_PHOTOS), frames=40, frame_hw=frame_hw, seed=11,
                        photos=TRAIN_PHOTOS, speed=speed)
    write_frame_folders(held_out_root / "pans", sequences=len(HELD_OUT_PHOTOS), frames=12, frame_hw=(144, 192),
                        seed=12, photos=HELD_OUT_PHOTOS, speed=speed)
    if frames:
        split_video_frames(Path(frames), stride, train_frames / "video", held_out_root / "video")
    if pack([str(train_frames), str(shards), "--min-tile", str(min_tile), "--frames-per-sample", "10"]) != 0:
        raise RuntimeError("packing the bench training set failed (see above)")
    marker.write_text(json.dumps(recipe))
    return shards, sorted(p for p in held_out_root.iterdir() if p.is_dir())


def split_video_frames(folder: Path, stride: int, train: Path, held_out: Path) -> None:
    """Every stride-th frame (natural order); the first 75 % to `train`, the rest to `held_out`, as PNG
    sequences with the size cropped to a multiple of 3."""
    from PIL import Image

    from ..data.shard_format import crop_to_scale
    from ..data.sources import IMAGE_SUFFIXES, natural_key

    names = sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_key(p.name))
    if len(names) < 40:
        raise BenchError(f"--frames {folder}: needs at least 40 frames, found {len(names)}")
    picked = names[::stride]
    cut = int(len(picked) * 0.75)
    for part, out in ((picked[:cut], train / "000"), (picked[cut:], held_out / "000")):
        out.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(part):
            with Image.open(path) as image:
                image = image.convert("RGB")
                h, w = crop_to_scale(image.height, image.width)
                image.crop((0, 0, w, h)).save(out / f"{i:08d}.png", compress_level=1)


# -- runs --------------------------------------------------------------------------------------------


def train_command(config: str, run_dir: Path, shards: Path, variant: str, seed: int, steps: int,
                  overrides: list[str], extra: list[str]) -> list[str]:
    return [sys.executable, str(TRAIN_SCRIPT), "--config", config,
            f"run.dir={run_dir}", f"run.seed={seed}", f"data.train_shards={shards}", "data.val_shards=",
            f"model.alignment={variant}", f"train.total_steps={steps}", *overrides, *extra, "--fresh"]


def run_training(cmd: list[str], log: Path) -> None:
    with open(log, "w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if code != 0:
        tail = log.read_text().splitlines()[-5:]
        raise RuntimeError(f"training failed ({code}): {' | '.join(tail)}; full log: {log}")


def children_cpu_s() -> float:
    """CPU seconds (user + system) of every finished child process and its own children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def trained_seconds(run_dir: Path) -> float:
    """Seconds spent in training steps (TrainState.train_seconds, as the run's last log line says)."""
    found = re.findall(r"finished: step \d+, [\d,]+ clips, [\d.]+ h \(([\d.]+) s\) of training",
                       (run_dir / "training.log").read_text())
    if not found:
        raise RuntimeError(f"{run_dir}/training.log: the run did not finish")
    return float(found[-1])


SCORE_KEYS = ("y_psnr_bicubic", "y_psnr_model", "y_ssim_bicubic", "y_ssim_model")


def evaluate_run(run_dir: Path, held_out: list[Path], out: Path, evaluate_args: Sequence[str] = ()) -> dict:
    """`evaluate` of the run's weights on every held-out folder (its JSON in `out`, its output in
    `out`.log, `evaluate_args` added), and the mean of sequence means over every held-out sequence."""
    from ..inference.evaluate import main as evaluate

    out.mkdir(parents=True, exist_ok=True)
    scores = {}
    for folder in held_out:
        report = out / f"{folder.name}.json"
        with open(out.parent / f"{out.name}.log", "a") as log, contextlib.redirect_stdout(log), \
                contextlib.redirect_stderr(log):
            code = evaluate(["--checkpoint", str(run_dir / "checkpoint_latest"), "--data", str(folder), "--json",
                             str(report), "--quiet", *evaluate_args])
        if code != 0:
            raise RuntimeError(f"evaluating {run_dir} on {folder} failed (see {out}.log)")
        rows = json.loads(report.read_text())["rows"]
        scores.update({f"{folder.name}/{r['sequence']}": r for r in rows if r["sequence"] != "overall"})
    # the mean of sequence means over every held-out sequence (each rendered pan and the video count once)
    return {"sequences": scores, **{k: sum(r[k] for r in scores.values()) / len(scores) for k in SCORE_KEYS}}


def run(args) -> int:
    from ..config import load_config
    from ..model.architecture import build_model, conv_flops_per_clip, count_parameters

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown:
        raise BenchError(f"--variants: unknown {unknown[0]!r} (known: {', '.join(ALL_VARIANTS)})")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise BenchError(f"--seeds {args.seeds}: expected whole numbers, comma-separated") from None
    work = Path(args.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    base = load_config(args.config, list(args.overrides))
    shards, held_out = prepare_data(work, args.frames, args.stride, args.speed, base.data.lr_patch_size, say)
    budget_s = 60 * args.minutes
    quiet = ["train.log_every=10", "checkpoint.rolling_every=0", "checkpoint.regular_every=0", "validation.every=0"]

    # Each variant's wall-clock cost per step: the seconds a calibration run spent in its training steps
    # (the trainer's own count, start-up excluded) over its steps, alternating between the variants for
    # `--calibrate-rounds` rounds so that a change in machine load hits all of them alike; the median
    # over rounds. An explicitly aligned variant is measured with and without its photometric warm-up
    # (alignment_training.photometric_steps) and the step count solves
    # min(N, P) * with_warmup + max(0, N - P) * after = budget. (Tried and dropped: the difference of two
    # runs' wall time, which swung +-30 % over 24 steps; CPU seconds, which OpenMP's spinning threads
    # inflate 2-3x on a loaded machine.)
    regimes = {"warm-up": [], "after": ["alignment_training.photometric_steps=0"]}
    costs: dict[tuple[str, str], list[float]] = {}
    for round_index in range(args.calibrate_rounds):
        for variant in variants:
            for regime, extra in regimes.items():
                if not ALIGNMENTS[variant].explicit and regime == "warm-up":
                    continue  # no alignment, no warm-up
                label = f"calibrate-{variant}-{regime}-{round_index}"
                calibrate = work / "runs" / label
                calibrate.parent.mkdir(parents=True, exist_ok=True)
                run_training(train_command(args.config, calibrate, shards, variant, seeds[0], args.calibrate_steps,
                                           args.overrides, quiet + extra + ["checkpoint.save_final=false"]),
                             work / f"{label}.log")
                costs.setdefault((variant, regime), []).append(trained_seconds(calibrate) / args.calibrate_steps)
    warmup_steps = base.alignment_training.photometric_steps
    s_per_iter, plan = {}, {}
    for variant in variants:
        after = statistics.median(costs[(variant, "after")])
        during = statistics.median(costs.get((variant, "warm-up"), [after]))
        s_per_iter[variant] = {"warm-up": during, "after": after}
        explicit = ALIGNMENTS[variant].explicit
        if explicit and warmup_steps * during >= budget_s:
            steps = budget_s / during
        else:
            warm = warmup_steps if explicit else 0
            steps = warm + (budget_s - warm * during) / after
        plan[variant] = max(10, int(steps))
        say(f"{variant}: {after:.3f} s/iter" + (f" ({during:.3f} during the photometric warm-up)" if explicit
                                                 else "") + f" -> {plan[variant]} steps in {args.minutes:g} min")

    results = []
    for seed in seeds:
        for variant in variants:
            cfg = load_config(args.config, [f"model.alignment={variant}", *args.overrides])
            p = cfg.data.lr_patch_size
            model = build_model(cfg.model)
            name = f"{variant}-seed{seed}"
            run_dir = work / "runs" / name
            steps = plan[variant]
            started, cpu_before = time.perf_counter(), children_cpu_s()
            run_training(train_command(args.config, run_dir, shards, variant, seed, steps, args.overrides, quiet),
                         work / f"{name}.log")
            wall, cpu = time.perf_counter() - started, children_cpu_s() - cpu_before
            scores = evaluate_run(run_dir, held_out, work / "runs" / f"{name}-eval")
            trained = trained_seconds(run_dir)
            row = {"variant": variant, "seed": seed, "params": count_parameters(model),
                   "gflops_per_clip": conv_flops_per_clip(model, p, p) / 1e9, "calibrated_s_per_iter": s_per_iter[variant],
                   "cpu_s": cpu,
                   "s_per_iter": trained / steps, "steps": steps, "train_s": trained, "wall_s": wall, **scores}
            results.append(row)
            say(format_row(row))
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"budget_minutes": args.minutes, "config": args.config,
                                               "overrides": args.overrides, "held_out": [str(h) for h in held_out],
                                               "results": results}, indent=2))
        say(f"wrote {args.json}")
    return 0


HEADER = (f"{'variant':<12} {'seed':>4} {'params':>9} {'GFLOP/clip':>10} {'s/iter':>7} {'steps':>6} {'CPU s':>6} {'train s':>7}   "
          f"{'Y-PSNR':>7} {'bicubic':>7} {'gain':>7}   {'Y-SSIM':>7} {'bicubic':>7}")


def format_row(r: dict) -> str:
    return (f"{r['variant']:<12} {r['seed']:>4} {r['params']:>9,} {r['gflops_per_clip']:>10.3f} {r['s_per_iter']:>7.3f} "
            f"{r['steps']:>6} {r['cpu_s']:>6.0f} {r['train_s']:>7.0f}   {r['y_psnr_model']:>7.3f} {r['y_psnr_bicubic']:>7.3f} "
            f"{r['y_psnr_model'] - r['y_psnr_bicubic']:>+7.3f}   {r['y_ssim_model']:>7.4f} {r['y_ssim_bicubic']:>7.4f}")


def format_table(results: list[dict]) -> str:
    return "\n".join([HEADER, "-" * len(HEADER), *(format_row(r) for r in results)])
