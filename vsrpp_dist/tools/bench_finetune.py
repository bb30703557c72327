"""`python -m vsrpp_dist.bench finetune`: what starting from a trained model buys, on footage none of the
runs trained on.

    python -m vsrpp_dist.bench finetune --frames DIR [--base-steps 1000] [--steps 300] [--work DIR]
                                        [--parts own,realistic,alignment] [--json OUT] [key.sub=value ...]

One base model, `implicit` and bicubic-trained on the rendered demo footage (pans over six photos), then,
all from the same seed and for the same `--steps`:

(a) own footage: `--frames` is a real video; its first 75 % (every `--stride`-th frame) is packed as the
    user's footage. `finetune` (init.from=base, a fifth of the demo's LR, a 10-step warm-up: the recipe of
    configs/finetune.yaml) against `scratch-own` (the same steps on the same footage from random weights)
    and the base alone; scored on the video's last 25 %.
(b) real-world stage: `realistic-scratch` against `realistic-from-base` (degradation.kind=realistic on
    the demo footage, init.from=base, the demo's LR) and `realistic-from-base-lowlr` (the same at the
    fine-tuning recipe's LR, as RealBasicVSR's second stage learns slower than its first); scored on a seeded realistic degradation of the held-out footage
    (the two held-out pans and the video's last 25 %) and on its clean bicubic input.
(c) alignment upgrade: `flow_deform-from-base` (init.from=base, init.strict=false: the trunks load, the
    alignment is new) against `flow_deform-scratch` and `implicit-continued` (init.from=base); scored on
    the held-out footage, bicubic input.

Each run is a `train.py` process; each score comes from the `evaluate` command on the final weights:
Y-PSNR/SSIM (BT.601, 8-bit) against the input enlarged with MATLAB's bicubic, the mean of sequence means.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..cli import int_at_least, names_from
from ..config import CONFIG_DIR, SCALE
from ..errors import BenchError
from .bench_quality import (SCORE_KEYS, TRAIN_SCRIPT, evaluate_run, prepare_data, run_training, split_video_frames,
                            trained_seconds)

PARTS = ("own", "realistic", "alignment")
FINETUNE_RECIPE = ["optim.lr_peak=1e-4", "optim.warmup_steps=10"]
DEGRADATION_SEED = 1


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="starting from a trained model: own footage, the two-stage "
                                               "real-world recipe, the alignment upgrade, scored on held-out footage")
    p.add_argument("--config", default=str(CONFIG_DIR / "demo.yaml"), help="training config (default: demo)")
    p.add_argument("--frames", required=True, help="a folder of consecutive real video frames (75 %% own footage, "
                                                   "25 %% held out)")
    p.add_argument("--stride", type=int_at_least(1), default=3, help="take every N-th frame of --frames")
    p.add_argument("--base-steps", type=int_at_least(1), default=1000, help="steps of the base model")
    p.add_argument("--steps", type=int_at_least(1), default=300, help="steps of every other run")
    p.add_argument("--parts", type=names_from(PARTS), default=list(PARTS),
                   help="which comparisons, comma-separated: own, realistic, alignment")
    p.add_argument("--seed", type=int, default=0, help="run.seed of every run")
    p.add_argument("--work", default="bench-finetune", help="data, runs and results go here")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides for every run")
    p.set_defaults(run=run)


def train(args, work: Path, name: str, shards: Path, steps: int, extra: list[str], say) -> Path:
    """One run, or the finished run of exactly this command from an earlier call (a later call with
    --parts can add comparisons to the same base)."""
    run_dir = work / "runs" / name
    cmd = [sys.executable, str(TRAIN_SCRIPT), "--config", args.config, f"run.dir={run_dir}",
           f"run.seed={args.seed}", f"data.train_shards={shards}", "data.val_shards=", f"train.total_steps={steps}",
           "train.log_every=50", "checkpoint.rolling_every=0", "checkpoint.regular_every=0", "validation.every=0",
           *args.overrides, *extra, "--fresh"]
    record = work / "runs" / f"{name}.command.json"
    if record.is_file() and json.loads(record.read_text()) == cmd[1:] and (run_dir / "checkpoint_latest").exists():
        say(f"{name}: reusing the finished run of the same command in {run_dir}")
        return run_dir
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    say(f"{name}: {steps} steps ({' '.join(extra) or 'demo settings'})")
    run_training(cmd, work / f"{name}.log")
    record.write_text(json.dumps(cmd[1:]))
    say(f"{name}: {trained_seconds(run_dir):.0f} s in training steps")
    return run_dir


def score(run_dir: Path, held_out: list[Path], out: Path, degradation: list[str]) -> dict:
    """Mean of sequence means over every held-out folder, and each sequence's four figures."""
    scores = evaluate_run(run_dir, held_out, out, [*degradation, "--overwrite"])  # a later call scores again
    return {**{k: scores[k] for k in SCORE_KEYS},
            "sequences": {name: {k: row[k] for k in SCORE_KEYS} for name, row in scores["sequences"].items()}}


def run(args) -> int:
    from ..config import load_config
    from ..data.pack_command import main as pack

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    parts = args.parts
    frames = Path(args.frames)
    if not frames.is_dir():
        raise BenchError(f"--frames {frames}: not a folder")
    work = Path(args.work).absolute()
    work.mkdir(parents=True, exist_ok=True)
    base_cfg = load_config(args.config, list(args.overrides))
    demo_shards, pans = prepare_data(work / "demo", None, args.stride, 7.5, base_cfg.data.lr_patch_size, say)
    own_shards, video_held_out = work / "own" / "shards", work / "own" / "held_out"
    if not (own_shards / "manifest.json").is_file():
        split_video_frames(frames, args.stride, work / "own" / "frames", video_held_out)
        min_tile = max(96, SCALE * base_cfg.data.lr_patch_size)
        if pack([str(work / "own" / "frames"), str(own_shards), "--min-tile", str(min_tile),
                 "--frames-per-sample", "10"]) != 0:
            raise RuntimeError("packing the own-footage set failed (see above)")
    held_out = [*pans, video_held_out]
    realistic = ["--degradation", "realistic", "--seed", str(DEGRADATION_SEED)]

    base = train(args, work, "base", demo_shards, args.base_steps, [], say)
    from_base = [f"init.from={base}"]
    results: dict[str, list[dict]] = {}

    def row(part: str, name: str, run_dir: Path, folders: list[Path], degradation: list[str], label: str) -> None:
        scores = score(run_dir, folders, work / "scores" / f"{name}-{label}", degradation)
        entry = {"run": name, "input": label, **scores}
        results.setdefault(part, []).append(entry)
        say(format_row(entry))

    if "own" in parts:
        finetune = train(args, work, "finetune", own_shards, args.steps, from_base + FINETUNE_RECIPE, say)
        scratch = train(args, work, "scratch-own", own_shards, args.steps, [], say)
        for name, run_dir in (("base", base), ("finetune", finetune), ("scratch-own", scratch)):
            row("own", name, run_dir, [video_held_out], [], "bicubic")
    if "realistic" in parts:
        runs = {"realistic-scratch": train(args, work, "realistic-scratch", demo_shards, args.steps,
                                           ["degradation.kind=realistic"], say),
                "realistic-from-base": train(args, work, "realistic-from-base", demo_shards, args.steps,
                                             ["degradation.kind=realistic", *from_base], say),
                # RealBasicVSR's second stage learns at a fraction of the first's rate: the same with the
                # fine-tuning recipe's LR
                "realistic-from-base-lowlr": train(args, work, "realistic-from-base-lowlr", demo_shards, args.steps,
                                                   ["degradation.kind=realistic", *from_base, *FINETUNE_RECIPE], say)}
        for name, run_dir in runs.items():
            row("realistic", name, run_dir, held_out, realistic, f"realistic seed {DEGRADATION_SEED}")
            row("realistic", name, run_dir, held_out, [], "bicubic")
    if "alignment" in parts:
        runs = {"flow_deform-from-base": train(args, work, "flow_deform-from-base", demo_shards, args.steps,
                                               ["model.alignment=flow_deform", "init.strict=false", *from_base], say),
                "flow_deform-scratch": train(args, work, "flow_deform-scratch", demo_shards, args.steps,
                                             ["model.alignment=flow_deform"], say),
                "implicit-continued": train(args, work, "implicit-continued", demo_shards, args.steps, from_base, say)}
        for name, run_dir in runs.items():
            row("alignment", name, run_dir, held_out, [], "bicubic")
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, "overrides": args.overrides,
                                               "base_steps": args.base_steps, "steps": args.steps,
                                               "held_out": [str(h) for h in held_out], "results": results}, indent=2))
        say(f"wrote {args.json}")
    return 0


HEADER = f"{'run':<24} {'input':<20} {'Y-PSNR':>7} {'bicubic':>7} {'gain':>7}   {'Y-SSIM':>7} {'bicubic':>7}"


def format_row(r: dict) -> str:
    return (f"{r['run']:<24} {r['input']:<20} {r['y_psnr_model']:>7.3f} {r['y_psnr_bicubic']:>7.3f} "
            f"{r['y_psnr_model'] - r['y_psnr_bicubic']:>+7.3f}   {r['y_ssim_model']:>7.4f} {r['y_ssim_bicubic']:>7.4f}")


def format_table(results: dict[str, list[dict]]) -> str:
    titles = {"own": "(a) own footage: scored on the video's held-out 25 %",
              "realistic": "(b) real-world stage: held-out pans and video",
              "alignment": "(c) alignment upgrade: held-out pans and video"}
    lines = []
    for part, rows in results.items():
        lines += ["", titles[part], HEADER, "-" * len(HEADER), *(format_row(r) for r in rows)]
    return "\n".join(lines)
