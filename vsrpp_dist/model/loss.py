"""HybridLoss: pixel L1 + multi-scale L1 + gradient (edge) L1, with weights given per step.

The weights come from the adaptive system each step, so they are an argument, not state. All parts are
returned as tensors (no `.item()`, no host synchronisation); the caller reads them at log intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    l1: float
    ms: float
    grad: float


def image_gradients(x_bchw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward differences along width and height."""
    return x_bchw[..., :, 1:] - x_bchw[..., :, :-1], x_bchw[..., 1:, :] - x_bchw[..., :-1, :]


def multiscale_l1(sr_bchw: torch.Tensor, gt_bchw: torch.Tensor) -> torch.Tensor:
    """Mean of the L1 at 1/2 and 1/4 resolution: low frequencies (colour, shading) weigh more."""
    parts = [F.l1_loss(F.avg_pool2d(sr_bchw, k), F.avg_pool2d(gt_bchw, k)) for k in (2, 4)]
    return (parts[0] + parts[1]) / 2


class HybridLoss(torch.nn.Module):
    def forward(self, sr_bchw: torch.Tensor, gt_bchw: torch.Tensor, weights: LossWeights) -> dict[str, torch.Tensor]:
        # Under autocast the model output may be bf16/fp16; losses are summed in fp32.
        sr_bchw = sr_bchw.float()
        gt_bchw = gt_bchw.float()
        l1 = F.l1_loss(sr_bchw, gt_bchw)
        ms = multiscale_l1(sr_bchw, gt_bchw)
        sr_dx, sr_dy = image_gradients(sr_bchw)
        gt_dx, gt_dy = image_gradients(gt_bchw)
        grad = (F.l1_loss(sr_dx, gt_dx) + F.l1_loss(sr_dy, gt_dy)) / 2
        total = weights.l1 * l1 + weights.ms * ms + weights.grad * grad
        with torch.no_grad():
            # Output edge energy over GT edge energy: below 1 means the output is blurrier than GT.
            sharpness = (sr_dx.abs().mean() + sr_dy.abs().mean()) / (gt_dx.abs().mean() + gt_dy.abs().mean() + 1e-8)
        return {"l1": l1, "ms": ms, "grad": grad, "total": total, "sharpness": sharpness}


def photometric_weight_at(step: int, alignment_cfg) -> float:
    """Weight of the alignment's photometric warm-up loss at optimizer step `step` (0-based): the
    configured weight at step 0, falling linearly to 0 at `photometric_steps`. A function of the step
    (which the checkpoint holds), so a resumed run weighs it exactly as an uninterrupted one."""
    steps = alignment_cfg.photometric_steps
    if steps <= 0 or step >= steps:
        return 0.0
    return alignment_cfg.photometric_weight * (1.0 - step / steps)
