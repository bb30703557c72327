"""What the loop counts and what one step reports, by name.

TrainState is checkpointed with everything else (it is what makes resume exact). StepStats is one
optimizer step's figures after the step's single all-reduce; StepResult wraps them with what the loop
needs to decide (finite? stop?) and the LR and phase the step really used, so that logs and status
show those values instead of recomputing them from the step number.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field


@dataclass
class TrainState:
    """Counters that must survive a restart; registered for checkpointing."""

    step: int = 0  # optimizer updates done
    batches_consumed: int = 0  # per-rank batches taken from the stream (the stream resumes here)
    clips_seen: int = 0  # over all ranks
    nonfinite_total: int = 0
    nonfinite_in_row: int = 0
    rollbacks: int = 0
    skipped_samples: int = 0  # over all ranks
    bad_shards: int = 0  # over all ranks
    train_seconds: float = 0.0
    last_validation: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        # Checkpoints of 0.1.0 also hold the run's shape here (world size, workers, batch): that lives in
        # meta.json now, where resume compares it; the old copies are ignored.
        for f in dataclasses.fields(self):
            if f.name in state:
                setattr(self, f.name, state[f.name])


@dataclass(frozen=True)
class StepStats:
    """One step's figures, means over micro-batches and ranks."""

    l1: float
    ms: float
    grad: float
    total: float  # the HybridLoss total (without the photometric warm-up term)
    sharpness: float
    photometric: float  # the alignment's warm-up loss (0 for implicit)
    flow_magnitude: float  # mean flow, LR px (0 for implicit)
    offset_mean: float  # mean deformable offset, LR px (0 without flow_deform)
    grad_norm: float  # identical on every rank: DDP averaged the gradients
    backward_activity: float
    forward_activity: float
    photometric_weight: float  # the weight the warm-up term had in this step

    # The loss parts, summed per micro-batch on the device, in this order (the model's and the loss's
    # dict keys).
    PARTS = ("l1", "ms", "grad", "total", "sharpness", "photometric", "flow_magnitude", "offset_mean")


# The step's one all-reduced vector: the loss parts, the gradient norm, the branch activity, then this
# rank's data counters and stop flag (summed over ranks, not averaged).
REDUCED = (*StepStats.PARTS, "grad_norm", "backward_activity", "forward_activity", "skipped_samples", "bad_shards",
           "stop")


@dataclass(frozen=True)
class StepResult:
    stats: StepStats
    finite: bool
    stop: bool
    data_wait_s: float
    learning_rate: float  # what this step used (group 0; the alignment group has its factor on top)
    phase: int  # LR_Schedule/Phase of this step


class IntervalMeter:
    """Sums of per-step figures between two logs."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.data_wait_s = 0.0
        self.started = time.perf_counter()

    def add(self, result: StepResult) -> None:
        self.data_wait_s += result.data_wait_s
        if result.finite:
            self.steps += 1
            for key, value in dataclasses.asdict(result.stats).items():
                self.sums[key] = self.sums.get(key, 0.0) + value

    def mean(self, key: str) -> float:
        return self.sums.get(key, float("nan")) / self.steps if self.steps else float("nan")
