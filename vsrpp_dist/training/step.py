"""The training step's arithmetic, written once: the trainer, auto-tune's probe and `bench step` all run
it, so the memory the probe measures against `autotune.vram_cap` and the time the benchmark reports are
those of the step the run takes.

Per micro-batch (`TrainingStep.micro_batch`): the forward under autocast with the explicit alignment's
report, HybridLoss on the centre frame plus the photometric term at its weight, and the backward
(scaled with fp16, divided by the accumulation). Per optimizer step: the gradients unscaled and their
norm (`gradient_norm`), then clipping at the threshold and the optimizer step (`update`).

The trainer reads the norm and the losses through its one all-reduce between the two; a single process
without DDP (the probe, the benchmark) reads them directly (`run`). The mechanics around the arithmetic
(autocast, no_sync during accumulation, the loss scaler) come from an Accelerator in the trainer and
from `SingleProcess`, which does the same for one process without DDP, elsewhere.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterable

import torch
from torch import nn

from ..model.loss import HybridLoss, LossWeights, photometric_weight_at


def photometric_weight(cfg, step: int) -> float:
    """The photometric term's weight at `step` (alignment_training.*), 0 without an explicit alignment."""
    return photometric_weight_at(step, cfg.alignment_training) if cfg.model.explicit_alignment else 0.0


def precision_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a mixed-precision setting (None for "no")."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


class SingleProcess:
    """What the step asks of `accelerate.Accelerator`, for one process without DDP, done as Accelerate
    does it: autocast in the precision, the loss divided by the accumulation before backward, a
    GradScaler with fp16 (the optimizer from `scaled` steps through it and skips inf gradients)."""

    def __init__(self, precision: str, device_type: str, gradient_accumulation_steps: int = 1) -> None:
        self.device_type = device_type
        self.dtype = precision_dtype(precision)
        self.scaler = torch.amp.GradScaler(device_type) if precision == "fp16" else None
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self._optimizer: torch.optim.Optimizer | None = None

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)

    def accumulate(self, model: nn.Module):
        return contextlib.nullcontext()  # no DDP: nothing to keep from synchronising

    def backward(self, loss: torch.Tensor) -> None:
        loss = loss / self.gradient_accumulation_steps
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def scaled(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """`optimizer`, stepping through the scaler (as Accelerate's prepared optimizer does)."""
        self._optimizer = optimizer
        return _ScaledOptimizer(optimizer, self.scaler) if self.scaler is not None else optimizer

    def unscale_gradients(self) -> None:
        if self.scaler is not None and self._optimizer is not None:
            self.scaler.unscale_(self._optimizer)


class _ScaledOptimizer:
    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        self.optimizer = optimizer
        self.scaler = scaler

    def step(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)


class TrainingStep:
    """The step on `model` with `optimizer`, through `accelerator` (an `accelerate.Accelerator` with both
    prepared, or a `SingleProcess` with the optimizer from its `scaled`)."""

    def __init__(self, accelerator, model: nn.Module, optimizer) -> None:
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.params = list(model.parameters())
        self.loss_fn = HybridLoss()

    def micro_batch(self, gt_btchw: torch.Tensor, lq_btchw: torch.Tensor, weights: LossWeights,
                    photometric_weight: float) -> dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch; returns the loss parts and the alignment report."""
        acc = self.accelerator
        with acc.accumulate(self.model):
            with acc.autocast():
                sr_bchw, alignment = self.model(lq_btchw, with_alignment=True)
            parts = self.loss_fn(sr_bchw, gt_btchw[:, gt_btchw.shape[1] // 2], weights)
            objective = parts["total"]
            if photometric_weight > 0:  # bootstraps the flow from scratch; fades out (alignment_training.*)
                objective = objective + photometric_weight * alignment["photometric"]
            acc.backward(objective)
        parts.update(alignment)
        return parts

    def gradient_norm(self) -> tuple[list[nn.Parameter], torch.Tensor]:
        """After the last micro-batch: the gradients unscaled (fp16) and their total norm, on the device."""
        if self.accelerator.scaler is not None:
            self.accelerator.unscale_gradients()
        params = [p for p in self.params if p.grad is not None]
        return params, torch.nn.utils.get_total_norm([p.grad for p in params]).float()

    def update(self, params: list[nn.Parameter], grad_norm: torch.Tensor, grad_norm_value: float,
               clip_threshold: float, finite: bool) -> None:
        """Clip to `clip_threshold` and step, unless the step is not finite (fp16's scaler skips such
        steps itself and lowers its scale, so it is always called); then drop the gradients."""
        if finite or self.accelerator.scaler is not None:
            # The norm is on the host already: below the threshold clipping would multiply by 1.
            if not (finite and grad_norm_value <= clip_threshold):
                torch.nn.utils.clip_grads_with_norm_(params, clip_threshold, grad_norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self, micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]], weights: LossWeights,
            photometric_weight: float, clip_threshold: float) -> None:
        """The whole optimizer step in one process: every micro-batch, then clipping and the step, with
        the norm and the loss read on the host once, as the trainer reads them after its all-reduce."""
        total = None
        for gt_btchw, lq_btchw in micro_batches:
            loss = self.micro_batch(gt_btchw, lq_btchw, weights, photometric_weight)["total"].detach().float()
            total = loss if total is None else total + loss
        params, grad_norm = self.gradient_norm()
        loss_value, norm_value = torch.stack([total, grad_norm]).tolist()
        self.update(params, grad_norm, norm_value, clip_threshold,
                    math.isfinite(loss_value) and math.isfinite(norm_value))
