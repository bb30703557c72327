"""`python -m vsrpp_dist.bench degradation`: what `degradation.kind=realistic` costs against `bicubic`,
side by side in one run, in the three places the work happens:

(a) loader: clips/s of one rank's stream in this process (one core, num_workers=0), which with
    `realistic` also draws every clip's degradation (parameters and kernels);
(b) device: milliseconds per batch to make the input frames from GT (bicubic x3, or the whole second-
    order pipeline with its JPEG and codec stages on the CPU);
(c) trainer: the real training loop's s/iter and data-wait fraction with each kind (bench step's
    `trainer_loop`, loader workers as configured).

The kinds alternate round by round, so drift on a shared machine shows as spread, not as a difference.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ..cli import int_at_least
from ..config import CONFIG_DIR, SCALE, load_config
from .bench_step import _demo_shards, timing_overrides, trainer_loop

KINDS = ("bicubic", "realistic")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("degradation", help="realistic vs bicubic degradation: loader clips/s/core, "
                                                  "device ms/batch, trainer s/iter and data wait, one run")
    p.add_argument("--config", default=str(CONFIG_DIR / "demo.yaml"), help="training config (default: demo)")
    p.add_argument("--shards", help="training shards (default: the config's, else small demo shards made here)")
    p.add_argument("--clips", type=int_at_least(4), default=64, help="clips per loader measurement")
    p.add_argument("--batches", type=int_at_least(2), default=10, help="batches per device measurement")
    p.add_argument("--steps", type=int_at_least(2), default=30, help="timed trainer steps per kind and round")
    p.add_argument("--warmup", type=int_at_least(1), default=5, help="trainer steps before timing")
    p.add_argument("--rounds", type=int_at_least(1), default=2, help="alternating rounds")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides for every run")
    p.set_defaults(run=run)


def loader_clips_per_s(cfg, shards: str, clips: int) -> float:
    from ..data.degradation import build_degradation
    from ..data.stream import ClipStream, TrainingShards

    stream = ClipStream(TrainingShards(shards, cfg.data, world_size=1), seed=cfg.run.seed, rank=0, batch_size=1,
                        degradation=build_degradation(cfg.degradation))
    batches = iter(stream)
    next(batches)  # opening the first shard
    started = time.perf_counter()
    for _ in range(clips):
        next(batches)
    return clips / (time.perf_counter() - started)


def device_ms_per_batch(cfg, shards: str, batches: int, device: torch.device) -> float:
    from ..data.degradation import build_degradation
    from ..data.stream import ClipStream, TrainingShards, to_device

    degradation = build_degradation(cfg.degradation)
    stream = iter(ClipStream(TrainingShards(shards, cfg.data, world_size=1), seed=cfg.run.seed, rank=0,
                             batch_size=cfg.data.batch_size_per_gpu, degradation=degradation))
    held = [to_device(next(stream), device) for _ in range(batches)]
    seconds = 0.0
    for batch in held:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        degradation.model_input(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - started
    return 1000 * seconds / batches


def run(args) -> int:
    from ..training.runtime import cpu_threads, local_cuda_device

    device = local_cuda_device() or torch.device("cpu")
    if device.type == "cpu" and (threads := cpu_threads()) is not None:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="vsrpp-bench-") as tmp:
        base = load_config(args.config, args.overrides)
        shards = args.shards or base.data.train_shards
        if not shards or not (Path(shards) / "manifest.json").is_file():
            shards = str(_demo_shards(Path(tmp), base.data.lr_patch_size))
        common = [*args.overrides, *timing_overrides(base, shards, args.warmup + args.steps)]
        rows: dict[str, dict[str, list[float]]] = {k: {"loader": [], "device": [], "s_per_iter": [], "wait": []}
                                                   for k in KINDS}
        for r in range(args.rounds):
            for kind in KINDS if r % 2 == 0 else reversed(KINDS):
                cfg = load_config(args.config, [*common, f"degradation.kind={kind}", f"run.dir={tmp}/run-{kind}-{r}"])
                rows[kind]["loader"].append(loader_clips_per_s(cfg, shards, args.clips))
                rows[kind]["device"].append(device_ms_per_batch(cfg, shards, args.batches, device))
                trained = trainer_loop(cfg, args.steps, args.warmup)
                rows[kind]["s_per_iter"].append(trained["s_per_iter"])
                rows[kind]["wait"].append(trained["data_wait_fraction"])
    figures = {"date": time.strftime("%Y-%m-%d %H:%M"), "config": args.config, "overrides": args.overrides,
               "device": str(device), "threads": torch.get_num_threads(),
               "batch_size": base.data.batch_size_per_gpu, "lr_patch": base.data.lr_patch_size,
               "workers": base.data.num_workers, "rounds": rows,
               "median": {k: {m: statistics.median(v) for m, v in rows[k].items()} for k in KINDS}}
    print(format_report(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


def format_report(f: dict) -> str:
    m = f["median"]
    b, r = m["bicubic"], m["realistic"]
    lines = [f"bench degradation  {f['date']}  {f['config']} {' '.join(f['overrides'])}  device {f['device']}, "
             f"{f['threads']} threads, batch {f['batch_size']} x {SCALE * f['lr_patch']} px GT, "
             f"{f['workers']} loader workers; medians of {len(f['rounds']['bicubic']['loader'])} rounds",
             f"{'':28}{'bicubic':>12}{'realistic':>12}{'ratio':>8}",
             f"{'loader clips/s (1 core)':28}{b['loader']:12.1f}{r['loader']:12.1f}{r['loader'] / b['loader']:8.2f}",
             f"{'device ms per batch':28}{b['device']:12.1f}{r['device']:12.1f}{r['device'] / b['device']:8.1f}",
             f"{'trainer s/iter':28}{b['s_per_iter']:12.3f}{r['s_per_iter']:12.3f}"
             f"{r['s_per_iter'] / b['s_per_iter']:8.2f}",
             f"{'trainer data wait':28}{100 * b['wait']:11.1f}%{100 * r['wait']:11.1f}%"]
    return "\n".join(lines)
