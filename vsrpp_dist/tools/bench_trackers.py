"""`python -m vsrpp_dist.bench trackers`: what logging to each experiment tracker costs per training step.

The real trainer runs the same short training (no validation, no checkpoints; step logs at the config's
train.log_every) once per tracker set: TensorBoard alone, then TensorBoard plus each tracker named, after
one unmeasured run. The sets alternate round by round, so a change in machine load hits all of them;
the figure per set is the median over rounds of its s/step, quoted as a ratio to TensorBoard alone.
Beside it, the seconds spent inside each tracker's calls (Trackers.seconds) per step, and their share of
TensorBoard alone's step: the cost itself, which the machine's load barely touches.
MLflow logs to a file store in the run directory and W&B offline (what a test can reach), so the figures
are the libraries' own client-side cost, without a network round trip.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from ..cli import int_at_least, names_from
from ..config import CONFIG_DIR, TRACKERS, load_config
from .bench_step import _demo_shards, timing_overrides


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("trackers", help="per-step cost of logging to each experiment tracker, side by side")
    p.add_argument("--config", default=str(CONFIG_DIR / "demo.yaml"), help="training config (default: demo)")
    p.add_argument("--trackers", type=names_from(TRACKERS[1:]), default=["mlflow", "wandb"],
                   help="trackers to measure next to TensorBoard alone (default: mlflow,wandb)")
    p.add_argument("--steps", type=int_at_least(1), default=60, help="measured steps per run")
    p.add_argument("--warmup", type=int_at_least(1), default=5, help="unmeasured steps first")
    p.add_argument("--rounds", type=int_at_least(1), default=3, help="runs of every tracker set, alternating")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.set_defaults(run=run)


def timed_run(cfg, steps: int, warmup: int) -> dict:
    """One training run: s/step after warm-up, seconds inside each tracker per step, start-up seconds."""
    from ..training.run_dir import StartRequest
    from ..training.trainer import Trainer

    built = time.perf_counter()
    trainer = Trainer(cfg, StartRequest(fresh=True), interactive=False)
    build_s = time.perf_counter() - built
    stamps: list[float] = []
    real_step = trainer.train_step

    def timed_step(batches):
        result = real_step(batches)
        stamps.append(time.perf_counter())
        return result

    trainer.train_step = timed_step
    try:
        trainer.train()
    finally:
        trainer.close()
    trackers = trainer.observer.trackers
    return {"s_per_step": (stamps[warmup + steps - 1] - stamps[warmup - 1]) / steps, "build_s": build_s,
            "tracker_s_per_step": {name: s / (warmup + steps) for name, s in trackers.seconds.items()},
            "dropped": sorted(trackers.dropped)}


def run(args) -> int:
    with tempfile.TemporaryDirectory(prefix="vsrpp-bench-trackers-") as tmp:
        base = load_config(args.config, args.overrides)
        shards = base.data.train_shards
        if not shards or not (Path(shards) / "manifest.json").is_file():
            shards = str(_demo_shards(Path(tmp), base.data.lr_patch_size))
        total = args.warmup + args.steps
        common = [*args.overrides, *timing_overrides(base, shards, total), f"train.log_every={base.train.log_every}",
                  "log.wandb_offline=true", f"log.mlflow_tracking_uri={(Path(tmp) / 'mlruns').as_uri()}"]
        sets = {"tensorboard": ["tensorboard"], **{name: ["tensorboard", name] for name in args.trackers}}
        results: dict[str, list[dict]] = {name: [] for name in sets}
        # one unmeasured run first: the process's first training run is slower (imports, allocator, caches)
        timed_run(load_config(args.config, [*common, "log.trackers=[tensorboard]", f"run.dir={tmp}/run-warm-up"]),
                  args.steps, args.warmup)
        for round_index in range(args.rounds):
            for name, trackers in sets.items():
                cfg = load_config(args.config, [*common, f"log.trackers=[{','.join(trackers)}]",
                                                f"run.dir={tmp}/run-{name}-{round_index}"])
                results[name].append(timed_run(cfg, args.steps, args.warmup))
        figures = summarize(results, args, base.train.log_every)
        print(format_report(figures))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=1))
    return 0


def summarize(results: dict[str, list[dict]], args, log_every: int) -> dict:
    baseline = statistics.median(r["s_per_step"] for r in results["tensorboard"])
    rows = {}
    for name, runs in results.items():
        s_per_step = statistics.median(r["s_per_step"] for r in runs)
        inside = [r["tracker_s_per_step"].get(name) for r in runs if name in r["tracker_s_per_step"]]
        rows[name] = {"s_per_step": s_per_step, "rounds_s_per_step": [r["s_per_step"] for r in runs],
                      "ratio_to_tensorboard": s_per_step / baseline,
                      "tracker_ms_per_step": 1e3 * statistics.median(inside) if inside else None,
                      # the tracker's own time against TensorBoard alone's step: the cost free of the noise
                      "tracker_share_of_step": statistics.median(inside) / baseline if inside else None,
                      "build_s": statistics.median(r["build_s"] for r in runs),
                      "rounds_build_s": [r["build_s"] for r in runs],
                      "dropped": sorted({n for r in runs for n in r["dropped"]})}
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "config": args.config, "overrides": args.overrides,
            "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "log_every": log_every, "rows": rows}


def format_report(f: dict) -> str:
    lines = [f"bench trackers  {f['date']}  config {f['config']} {' '.join(f['overrides'])}".rstrip(),
             f"  {f['rounds']} rounds x {f['warmup']}+{f['steps']} steps per tracker set, scalars every "
             f"{f['log_every']} steps, no validation or checkpoints",
             f"  {'trackers':<24}{'s/step':>9}{'x TB alone':>12}{'in tracker ms/step':>20}{'% of step':>11}"
             f"{'build s':>9}  rounds s/step"]
    for name, r in f["rows"].items():
        label = "tensorboard" if name == "tensorboard" else f"tensorboard + {name}"
        inside = f"{r['tracker_ms_per_step']:.3f}" if r["tracker_ms_per_step"] is not None else "-"
        share = f"{100 * r['tracker_share_of_step']:.2f}" if r["tracker_share_of_step"] is not None else "-"
        rounds = ", ".join(f"{s:.4f}" for s in r["rounds_s_per_step"])
        lines.append(f"  {label:<24}{r['s_per_step']:>9.4f}{r['ratio_to_tensorboard']:>12.3f}{inside:>20}{share:>11}"
                     f"{r['build_s']:>9.2f}  {rounds}")
        if r["dropped"]:
            lines.append(f"    ({', '.join(r['dropped'])} failed and was dropped in some runs: see the log above)")
    lines.append("  build s: the Trainer's construction, trackers' start included (median; the first W&B start "
                 "in a process also starts its service)")
    return "\n".join(lines)
