"""How training makes the model's input frames (`lq`) from GT clips.

`bicubic` is MATLAB's bicubic x3 (the papers' BI protocol), bit for bit what it always was.
`realistic` is RealBasicVSR's second-order degradation, built for video (realistic.py).
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import DegradationConfig
from ..imresize import downscale
from .realistic import RealisticDegradation


def build_degradation(cfg: DegradationConfig):
    return RealisticDegradation(cfg) if cfg.kind == "realistic" else BicubicDegradation()


class BicubicDegradation:
    kind = "bicubic"

    def draw(self, rng: np.random.Generator, frames: int) -> dict[str, torch.Tensor]:
        return {}  # nothing random: the stream's draws stay what they always were

    def apply(self, gt_btchw: torch.Tensor, plans: dict[str, torch.Tensor]) -> torch.Tensor:
        b, t = gt_btchw.shape[:2]
        return downscale(gt_btchw.flatten(0, 1)).unflatten(0, (b, t))


def degrade_sequence(degradation, gt_nchw_uint8: torch.Tensor, seed: int, index: int,
                     device: torch.device) -> torch.Tensor:
    """A whole sequence's frames degraded as one video: (N, 3, H/3, W/3) uint8 on the host. The draw comes
    from a generator seeded by (seed, index), so `evaluate --degradation realistic --seed S` and a run
    with run.seed=S (validating on the same set, default ranges) degrade a sequence identically."""
    rng = np.random.default_rng([seed, index])
    plans = {k: v.unsqueeze(0) for k, v in degradation.draw(rng, gt_nchw_uint8.shape[0]).items()}
    gt = gt_nchw_uint8.to(device).float().div_(255).unsqueeze(0)
    with torch.no_grad():
        lq = degradation.apply(gt, plans)[0]
    return lq.mul(255).round().to(torch.uint8).cpu()
