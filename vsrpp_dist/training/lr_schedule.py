"""The learning rate as a pure function of the step and the saved plateau state.

warm-up (phase 0): linear 0 -> lr_peak over warmup_steps
cosine  (phase 1): lr_peak -> lr_min over the remaining steps
plateau (phase 2): after the first plateau reduction, the cosine value times factor**reductions,
                   never below lr_floor (and never above the cosine value itself)

Because nothing here is stepped, a resumed run lands on exactly the same curve; an Accelerate-prepared
scheduler would instead step once per process per optimizer step (seen with accelerate 1.15).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PHASE_WARMUP, PHASE_COSINE, PHASE_PLATEAU = 0, 1, 2


def base_lr(step: int, lr_peak: float, lr_min: float, warmup_steps: int, total_steps: int) -> float:
    """Warm-up then cosine, without plateau reductions. `step` counts optimizer updates done so far,
    so step 0 is the LR of the first update."""
    if step < warmup_steps:
        return lr_peak * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return lr_min + 0.5 * (lr_peak - lr_min) * (1 + math.cos(math.pi * progress))


@dataclass
class PlateauState:
    best_metric: float = -math.inf
    validations_since_best: int = 0
    reductions: int = 0
    rollbacks: int = 0  # non-finite rollbacks also lower the LR (guard.rollback_lr_factor)


class LRSchedule:
    """Owns the LR curve and the plateau detector; stateful only through PlateauState."""

    def __init__(self, optim_cfg, plateau_cfg, guard_cfg, total_steps: int) -> None:
        self.optim = optim_cfg
        self.plateau_cfg = plateau_cfg
        self.guard = guard_cfg
        self.total_steps = total_steps
        self.state = PlateauState()

    def learning_rate(self, step: int) -> float:
        value = base_lr(step, self.optim.lr_peak, self.optim.lr_min, self.optim.warmup_steps, self.total_steps)
        factor = self.plateau_cfg.factor ** self.state.reductions * self.guard.rollback_lr_factor ** self.state.rollbacks
        if factor < 1.0:
            value = min(value, max(value * factor, self.plateau_cfg.lr_floor))
        return value

    def phase(self, step: int) -> int:
        if self.state.reductions > 0 or self.state.rollbacks > 0:
            return PHASE_PLATEAU
        return PHASE_WARMUP if step < self.optim.warmup_steps else PHASE_COSINE

    def observe_validation(self, metric: float) -> bool:
        """Feed one validation result (KI_PSNR); True when it triggers a plateau reduction."""
        cfg = self.plateau_cfg
        if metric > self.state.best_metric + cfg.threshold_db:
            self.state.best_metric = metric
            self.state.validations_since_best = 0
            return False
        # As torch's ReduceLROnPlateau: gains below the threshold do not move the reference.
        self.state.validations_since_best += 1
        if cfg.enabled and self.state.validations_since_best >= cfg.patience:
            self.state.reductions += 1
            self.state.validations_since_best = 0
            return True
        return False

    def state_dict(self) -> dict:
        return dict(vars(self.state))

    def load_state_dict(self, state: dict) -> None:
        self.state = PlateauState(**state)
