"""The adaptive system: dynamic loss weights, percentile gradient clipping, aggressive mode, plateau recovery.

Rules (each unit-tested in tests/training/test_adaptive.py):

* Dynamic weights. Every `update_every` steps the rank-averaged mean of each loss part over the interval
  is folded into an EMA. The first EMA is the reference. For each part, `remaining = ema / reference`
  is how much of it is left; L1 is the anchor and keeps its base weight, the multi-scale and gradient
  weights become `base * clamp((remaining / remaining_l1) ** gamma, min_factor, max_factor)`: a part
  that falls more slowly than L1 gets more weight, one that falls faster gets less, within bounds.
* Percentile clipping. Gradient norms (before clipping) of finite steps go into a window of the last
  `clip_window` steps. The clip threshold is the
  `clip_percentile`-th percentile of that window, recomputed at each update; until the window holds
  `clip_min_samples` norms, `clip_initial` is used. Clipping at the 95th percentile cuts only the rare
  spikes (bad batches, LR too high for a moment) without damping ordinary steps.
* Aggressive mode. `sharpness` = mean |gradient| of the output over that of the GT (1 = as sharp as GT).
  After `aggressive_min_steps`, the mode switches on when the interval's mean sharpness drops below
  `sharpness_on` and off when it rises above `sharpness_off` (hysteresis, so it does not flicker).
  While on, the gradient-loss weight is multiplied by `aggressive_grad_factor`.
* Plateau recovery (called when the plateau detector halves the LR). The dynamic weights go back to
  their bases and the loss references are taken anew, and the gradient-norm window is emptied: a
  plateau often means the weights drifted into a poor balance, and at the new LR the old norm
  statistics no longer describe the steps, so both are re-learned from fresh observations.

The controller works on plain floats: the trainer already all-reduces one small vector of step
statistics per step (losses averaged over ranks; the gradient norm is the same on every rank after DDP's
all-reduce), so every rank feeds the same numbers and holds the same state without collectives here.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from ..model.loss import LossWeights


class AdaptiveController:
    def __init__(self, adaptive_cfg, loss_cfg) -> None:
        self.cfg = adaptive_cfg
        self.base = LossWeights(loss_cfg.l1_weight, loss_cfg.ms_weight, loss_cfg.grad_weight)
        self._interval = np.zeros(4)  # sums of l1, ms, grad, sharpness since the last update
        self._interval_steps = 0
        self.norms: deque[float] = deque(maxlen=adaptive_cfg.clip_window)
        self.ema: list[float] | None = None
        self.reference: list[float] | None = None
        self.factors = [1.0, 1.0, 1.0]  # dynamic factors for l1 (always 1), ms, grad
        self.aggressive = False
        self.aggressive_switches = 0
        self.sharpness = float("nan")
        self.clip_threshold = adaptive_cfg.clip_initial
        self.recoveries = 0

    @property
    def weights(self) -> LossWeights:
        if not self.cfg.enabled:
            return self.base
        grad_factor = self.factors[2] * (self.cfg.aggressive_grad_factor if self.aggressive else 1.0)
        return LossWeights(self.base.l1 * self.factors[0], self.base.ms * self.factors[1], self.base.grad * grad_factor)

    def observe(self, l1: float, ms: float, grad: float, sharpness: float, grad_norm: float) -> None:
        """Record one finite step: its rank-averaged loss parts and its gradient norm before clipping."""
        self._interval += (l1, ms, grad, sharpness)
        self._interval_steps += 1
        self.norms.append(grad_norm)

    def maybe_update(self, step: int) -> bool:
        """At every `update_every`-th step: new weights, clip threshold and aggressive mode."""
        if not self.cfg.enabled or step % self.cfg.update_every != 0 or self._interval_steps == 0:
            return False
        if len(self.norms) >= self.cfg.clip_min_samples:
            self.clip_threshold = float(np.percentile(np.fromiter(self.norms, float), self.cfg.clip_percentile))
        means = (self._interval / self._interval_steps).tolist()
        self._interval[:] = 0
        self._interval_steps = 0
        self._update_weights(means[:3])
        self._update_aggressive(step, means[3])
        return True

    def _update_weights(self, means: list[float]) -> None:
        if self.ema is None:
            self.ema = list(means)
            self.reference = list(means)
            return
        a = self.cfg.weight_ema
        self.ema = [a * e + (1 - a) * m for e, m in zip(self.ema, means)]
        remaining = [e / max(r, 1e-12) for e, r in zip(self.ema, self.reference)]
        anchor = max(remaining[0], 1e-12)
        self.factors = [1.0] + [
            min(self.cfg.weight_max_factor, max(self.cfg.weight_min_factor, (rem / anchor) ** self.cfg.weight_gamma))
            for rem in remaining[1:]
        ]

    def _update_aggressive(self, step: int, sharpness: float) -> None:
        self.sharpness = sharpness
        if step < self.cfg.aggressive_min_steps:
            return
        if not self.aggressive and sharpness < self.cfg.sharpness_on:
            self.aggressive = True
            self.aggressive_switches += 1
        elif self.aggressive and sharpness > self.cfg.sharpness_off:
            self.aggressive = False
            self.aggressive_switches += 1

    def on_plateau(self) -> None:
        """Plateau recovery: base weights, fresh loss references, fresh gradient-norm statistics."""
        self.factors = [1.0, 1.0, 1.0]
        self.ema = None
        self.reference = None
        self.norms.clear()
        self.clip_threshold = self.cfg.clip_initial
        self.recoveries += 1

    def state_dict(self) -> dict:
        return {
            "interval": self._interval.tolist(), "interval_steps": self._interval_steps,
            "norms": list(self.norms), "ema": self.ema, "reference": self.reference,
            "factors": list(self.factors), "aggressive": self.aggressive,
            "aggressive_switches": self.aggressive_switches, "sharpness": self.sharpness,
            "clip_threshold": self.clip_threshold, "recoveries": self.recoveries,
        }

    def load_state_dict(self, state: dict) -> None:
        self._interval = np.asarray(state["interval"], dtype=float)
        self._interval_steps = state["interval_steps"]
        self.norms = deque(state["norms"], maxlen=self.cfg.clip_window)
        self.ema = state["ema"]
        self.reference = state["reference"]
        self.factors = list(state["factors"])
        self.aggressive = state["aggressive"]
        self.aggressive_switches = state["aggressive_switches"]
        self.sharpness = state["sharpness"]
        self.clip_threshold = state["clip_threshold"]
        self.recoveries = state["recoveries"]
