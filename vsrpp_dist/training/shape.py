"""The run's shape, decided in one place: the batch per rank and the accumulation that keeps the global
batch, activation checkpointing and the memory layout. The configuration proposes them, the 6 GB
profile caps the batch and recomputes, auto-tune (on a GPU) measures and may choose otherwise; the
trainer and `bench step` build from the one `RunShape` this returns, and it describes itself once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.degradation import Degradation
from .autotune import Log, Probe, Ranks, autotune
from .runtime import BatchPlan, DevicePlan, plan_batches


@dataclass(frozen=True)
class RunShape:
    batches: BatchPlan
    activation_checkpointing: bool
    channels_last: bool  # only ever on CUDA, where cuDNN gains from it (builder.build_training_model)
    decided_by: str  # "the configuration", "the 6gb profile", "auto-tune" or "auto-tune (cached)"

    def describe(self) -> str:
        plan = self.batches
        return (f"batch: {plan.batch_size_per_gpu} per rank x {plan.grad_accum_steps} accumulation x "
                f"{plan.world_size} ranks = {plan.global_batch_size} clips per step; activation checkpointing "
                f"{'on' if self.activation_checkpointing else 'off'}, "
                f"{'channels_last' if self.channels_last else 'NCHW'} ({self.decided_by})")

    def unreachable_global_batch(self) -> str | None:
        """Why the global batch differs from train.global_batch_size, or None when it is as configured."""
        plan = self.batches
        if plan.exact:
            return None
        return (f"train.global_batch_size={plan.requested_global} is not reachable with {plan.batch_size_per_gpu} "
                f"per rank on {plan.world_size} ranks; using {plan.global_batch_size}")


def configured_shape(cfg, device_plan: DevicePlan, world_size: int) -> RunShape:
    """The shape before auto-tune: as configured, except that the 6 GB profile caps the per-GPU batch at
    2 (accumulation keeps the global batch) and recomputes the propagation trunks."""
    if device_plan.profile == "6gb":
        batch, checkpointing, by = min(cfg.data.batch_size_per_gpu, 2), True, "the 6gb profile"
    else:
        batch, checkpointing, by = cfg.data.batch_size_per_gpu, cfg.train.activation_checkpointing, "the configuration"
    return RunShape(plan_batches(cfg.train.global_batch_size, batch, world_size), checkpointing,
                    cfg.train.channels_last and device_plan.device_type == "cuda", by)


def decide_run_shape(cfg, device_plan: DevicePlan, run_dir: str | Path, ranks: Ranks, *, device,
                     degradation: Degradation | None = None, log: Log = print, probe: Probe | None = None) -> RunShape:
    """The shape of this run, the same on every rank: the configured one, or auto-tune's choice starting
    from it (on every rank, before the model exists: the trials need the GPU to themselves; they make
    their input with the run's `degradation`)."""
    proposed = configured_shape(cfg, device_plan, ranks.world_size)
    tuned = autotune(cfg, device_plan, run_dir, ranks, device=device, log=log, probe=probe,
                     batch_size_per_gpu=proposed.batches.batch_size_per_gpu, degradation=degradation)
    if tuned is None:
        return proposed
    return RunShape(tuned.batch_plan, tuned.chosen.activation_checkpointing, tuned.chosen.channels_last,
                    "auto-tune (cached)" if tuned.source == "cache" else "auto-tune")
