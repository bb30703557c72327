"""`python -m vsrpp_dist.bench step`: the real trainer's step against a bare PyTorch loop, side by side.

(a) trainer: the real `Trainer.train()` loop on real shards (loader workers, the per-step all-reduce,
    LR schedule, adaptive system, logging, status file; checkpoints and validation switched off), timed
    between the end of the warm-up steps and the last step.
(b) bare: the same model, batch, accumulation, patch, precision, memory layout and optimizer, built by
    the same builder (training/builder.py) and run through the trainer's own step (training/step.py) in
    one process: forward, loss, backward per micro-batch, clipping, optimizer step, on one batch already
    on the device, nothing else (no loader, all-reduce, schedule or logging).
The bare loop runs before and after the trainer and the two are averaged, so drift on a shared machine
shows up as their spread instead of as overhead.

FLOPs per clip come from the model's layers (model.conv_flops_per_clip: 2 x k^2 x C_in x C_out x H x W
per convolution and image); a training step costs ~3x the forward (the backward computes gradients with
respect to inputs and to weights, each about one forward). Achieved TFLOP/s = 3 x forward FLOPs x clips/s.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..cli import int_at_least
from ..config import SCALE, load_config
from ..data.degradation import build_degradation
from ..data.stream import to_device
from ..model.architecture import build_model, conv_flops_per_clip
from ..model.loss import LossWeights
from ..training.autotune import first_photometric_weight
from ..training.builder import build_optimizer, build_training_model
from ..training.runtime import cpu_threads, local_cuda_device, plan_device
from ..training.shape import RunShape, configured_shape
from ..training.step import SingleProcess, TrainingStep


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("step", help="trainer step vs bare PyTorch loop: clips/s, s/iter, memory, TFLOP/s")
    p.add_argument("--config", required=True, help="training config (configs/*.yaml)")
    p.add_argument("--shards", help="packed training shards (default: data.train_shards, else demo shards made "
                                    "in a temporary folder)")
    p.add_argument("--steps", type=int_at_least(1), default=30, help="measured steps per loop")
    p.add_argument("--warmup", type=int_at_least(1), default=5, help="unmeasured steps first (allocator, cuDNN autotune)")
    p.add_argument("--rounds", type=int_at_least(1), default=1,
                   help="trainer runs, each between two bare runs (bare, trainer, bare, trainer, bare, ...); the "
                        "overhead is the median over rounds of trainer / mean of its two neighbours")
    p.add_argument("--matmul-peak", action="store_true", help="also measure the device's dense matmul rate")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.set_defaults(run=run)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(cfg, shape: RunShape, precision: str, device: torch.device, steps: int, warmup: int) -> dict:
    """The trainer's step in `shape` (its accumulation over micro-batches, clipping, optimizer step) in
    one process on one batch on the device; nothing else. Figures per optimizer step."""
    torch.manual_seed(cfg.run.seed)
    model = build_training_model(cfg.model, device=device, activation_checkpointing=shape.activation_checkpointing,
                                 channels_last=shape.channels_last).train()
    optimizer, _ = build_optimizer(model, cfg.optim, alignment_lr_factor=cfg.alignment_training.lr_factor,
                                   device_type=device.type)
    for group in optimizer.param_groups:
        group["lr"] = cfg.optim.lr_peak
    batch_size, accumulation = shape.batches.batch_size_per_gpu, shape.batches.grad_accum_steps
    runner = SingleProcess(precision, device.type, accumulation)
    step = TrainingStep(runner, model, runner.scaled(optimizer))
    weights = LossWeights(cfg.loss.l1_weight, cfg.loss.ms_weight, cfg.loss.grad_weight)
    photometric_weight = first_photometric_weight(cfg)
    p = cfg.data.lr_patch_size * SCALE
    gt_u8 = torch.randint(0, 256, (batch_size, cfg.model.num_frames, 3, p, p), dtype=torch.uint8)
    degradation = build_degradation(cfg.degradation)
    batch = degradation.synthetic_batch(gt_u8, np.random.default_rng(cfg.run.seed))
    gt, lq = degradation.model_input(to_device(batch, device))  # made once: the loop times the step alone
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            started = time.perf_counter()
        step.run([(gt, lq)] * accumulation, weights, photometric_weight, cfg.adaptive.clip_initial)
    _sync(device)
    seconds = (time.perf_counter() - started) / steps
    return {"s_per_iter": seconds, "clips_per_s": batch_size * accumulation / seconds,
            "clips_per_step": batch_size * accumulation,
            "peak_gb": torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None}


def trainer_loop(cfg, steps: int, warmup: int) -> dict:
    """The real training loop; returns per-step timing of the steps after warm-up."""
    from ..training.run_dir import StartRequest
    from ..training.trainer import Trainer

    trainer = Trainer(cfg, StartRequest(fresh=True), interactive=False)
    stamps: list[float] = []
    waits: list[float] = []
    real_step = trainer.train_step

    def timed_step(batches):
        result = real_step(batches)
        stamps.append(time.perf_counter())
        waits.append(result.data_wait_s)
        return result

    trainer.train_step = timed_step
    device = trainer.accelerator.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        trainer.train()
    finally:
        trainer.close()
    # stamps[i] is the end of step i+1; the measured span covers steps warmup+1 .. warmup+steps
    seconds = (stamps[warmup + steps - 1] - stamps[warmup - 1]) / steps
    data_wait = sum(waits[warmup: warmup + steps]) / (seconds * steps)
    plan = trainer.batches
    return {"s_per_iter": seconds, "clips_per_s": plan.global_batch_size / seconds, "data_wait_fraction": data_wait,
            "clips_per_s_per_rank": plan.batch_size_per_gpu * plan.grad_accum_steps / seconds,
            "batch_size_per_gpu": plan.batch_size_per_gpu, "grad_accum_steps": plan.grad_accum_steps,
            "global_batch": plan.global_batch_size,
            "world_size": plan.world_size, "precision": trainer.device_plan.mixed_precision,
            "activation_checkpointing": trainer.shape.activation_checkpointing,
            "peak_gb": torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else None,
            "device": str(device), "is_main": trainer.accelerator.is_main_process}


def matmul_peak_tflops(device: torch.device, dtype=torch.bfloat16, n: int = 8192, reps: int = 20) -> float:
    """The device's dense matrix-product rate: the ceiling a conv net's achieved TFLOP/s is held against."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - started) / 1e12


def _demo_shards(folder: Path, lr_patch: int) -> Path:
    from ..data.pack_command import main as pack
    from .demo_data import write_frame_folders

    tile = max(96, SCALE * lr_patch)
    write_frame_folders(folder / "frames", sequences=4, frames=20, frame_hw=(tile, tile + SCALE * 8), seed=3)
    out = folder / "shards"
    if pack([str(folder / "frames"), str(out), "--min-tile", str(tile), "--frames-per-sample", "10", "--quiet"]) != 0:
        raise RuntimeError("packing the benchmark's demo shards failed")
    return out


def timing_overrides(base, shards: str, total_steps: int) -> list[str]:
    """A training run that only trains: on `shards`, `total_steps` long, no validation, checkpoints,
    step logs or auto-tune (the warm-up of the LR shortened to fit)."""
    return [f"data.train_shards={shards}", "data.val_shards=", f"train.total_steps={total_steps}",
            "validation.every=0", "checkpoint.rolling_every=0", "checkpoint.regular_every=0",
            "checkpoint.save_final=false", f"train.log_every={total_steps + 1}", "autotune.enabled=false",
            f"optim.warmup_steps={min(base.optim.warmup_steps, total_steps)}"]


def run(args) -> int:
    with tempfile.TemporaryDirectory(prefix="vsrpp-bench-") as tmp:
        base = load_config(args.config, args.overrides)
        shards = args.shards or base.data.train_shards
        if not shards or not (Path(shards) / "manifest.json").is_file():
            shards = str(_demo_shards(Path(tmp), base.data.lr_patch_size))
        cfg = load_config(args.config, [*args.overrides, *timing_overrides(base, shards, args.warmup + args.steps),
                                         f"run.dir={tmp}/run"])
        world = int(os.environ.get("WORLD_SIZE", "1"))
        plan = plan_device(cfg.train, world)
        shape = configured_shape(cfg, plan, 1)  # the bare loop's; auto-tune is off (timing_overrides)
        device = local_cuda_device() or torch.device("cpu")
        if plan.device_type == "cpu" and (threads := cpu_threads()) is not None:
            torch.set_num_threads(threads)  # as the trainer does, so both loops get the same cores
        figures = {"date": time.strftime("%Y-%m-%d %H:%M"), "config": args.config, "overrides": args.overrides,
                   "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   "threads": torch.get_num_threads()}
        p = cfg.data.lr_patch_size
        forward = conv_flops_per_clip(build_model(cfg.model).to(device), p, p)
        figures["forward_gflop_per_clip"] = forward / 1e9
        figures["train_gflop_per_clip"] = 3 * forward / 1e9
        def bare() -> dict:
            return bare_loop(cfg, shape, plan.mixed_precision, device, args.steps, args.warmup)

        # One process: the bare loop runs before and after every trainer run, so drift on a shared machine
        # shows as spread between neighbours instead of as overhead. Several ranks: the trainer alone.
        bares = [bare()] if world == 1 else []
        trainers = []
        for _ in range(args.rounds if world == 1 else 1):
            trainers.append(trainer_loop(cfg, args.steps, args.warmup))
            if world == 1:
                bares.append(bare())
        rounds = [t["s_per_iter"] for t in trainers]
        trainer = dict(trainers[0], rounds_s_per_iter=rounds, s_per_iter=statistics.median(rounds),
                       data_wait_fraction=statistics.median(t["data_wait_fraction"] for t in trainers))
        trainer["clips_per_s"] = trainer["global_batch"] / trainer["s_per_iter"]
        trainer["clips_per_s_per_rank"] = trainer["clips_per_s"] / trainer["world_size"]
        figures["trainer"] = trainer
        if world == 1:
            bare_s = statistics.median(r["s_per_iter"] for r in bares)
            figures["bare"] = {"s_per_iter": bare_s, "clips_per_s": bares[0]["clips_per_step"] / bare_s,
                               "spread": [r["s_per_iter"] for r in bares], "peak_gb": bares[-1]["peak_gb"]}
            # both loops take whole optimizer steps with the same accumulation
            ratios = [t["s_per_iter"] / ((before["s_per_iter"] + after["s_per_iter"]) / 2)
                      for t, before, after in zip(trainers, bares, bares[1:])]
            figures["overhead_rounds"] = ratios
            figures["overhead"] = statistics.median(ratios)
        figures["rss_peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        figures["trainer_tflops"] = figures["train_gflop_per_clip"] * trainer["clips_per_s"] / 1e3
        if args.matmul_peak and device.type == "cuda":
            figures["matmul_bf16_tflops"] = matmul_peak_tflops(device)
            figures["fraction_of_matmul_peak"] = figures["trainer_tflops"] / figures["matmul_bf16_tflops"]
        if trainer["is_main"]:
            print(format_report(figures))
            if args.json:
                Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


def format_report(f: dict) -> str:
    t = f["trainer"]
    lines = [f"bench step  {f['date']}  device {f['device']}  config {f['config']} {' '.join(f['overrides'])}",
             f"  batch {t['batch_size_per_gpu']}/rank x accumulation {t['grad_accum_steps']} x {t['world_size']} "
             f"rank(s), precision {t['precision']}, activation checkpointing {t['activation_checkpointing']}",
             f"  FLOPs: {f['forward_gflop_per_clip']:.2f} GFLOP forward per clip, "
             f"{f['train_gflop_per_clip']:.2f} GFLOP per training clip (3x forward)",
             f"  {'loop':<10}{'s/iter':>10}{'clips/s':>10}{'TFLOP/s':>10}{'peak GB':>9}"]
    rows = [("trainer", t)]
    if "bare" in f:
        rows.append(("bare", f["bare"]))
    for name, r in rows:
        peak = f"{r['peak_gb']:.2f}" if r.get("peak_gb") is not None else "n/a"
        tflops = f["train_gflop_per_clip"] * r["clips_per_s"] / 1e3
        lines.append(f"  {name:<10}{r['s_per_iter']:>10.4f}{r['clips_per_s']:>10.2f}{tflops:>10.3f}{peak:>9}")
    lines.append(f"  trainer data wait: {100 * t['data_wait_fraction']:.1f} % of step time")
    if t["world_size"] > 1:
        lines.append(f"  per rank: {t['clips_per_s_per_rank']:.2f} clips/s")
    if "overhead" in f:
        spread = ", ".join(f"{s:.4f}" for s in f["bare"]["spread"])
        trainers = ", ".join(f"{s:.4f}" for s in t["rounds_s_per_iter"])
        rounds = ", ".join(f"{r:.3f}" for r in f["overhead_rounds"])
        lines.append(f"  trainer / bare per optimizer step: {f['overhead']:.3f} (median of rounds: {rounds})")
        lines.append(f"  runs in order: bare {spread} s/iter; trainer {trainers} s/iter (medians above)")
    if "matmul_bf16_tflops" in f:
        lines.append(f"  dense bf16 matmul: {f['matmul_bf16_tflops']:.1f} TFLOP/s; trainer reaches "
                     f"{100 * f['fraction_of_matmul_peak']:.1f} % of it")
    lines.append(f"  process peak RSS {f['rss_peak_gb']:.2f} GB, {f['threads']} intra-op threads")
    return "\n".join(lines)

