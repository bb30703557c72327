"""One way to build what a training step needs: the wrapped model, the optimizer with its groups, and
the plain autocast step. The trainer, auto-tune's probe and `bench step` all use these, so what the
probe measures and what the benchmark times is the model the run trains, wrapped the way it trains.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model.architecture import alignment_parameters, build_model
from ..model.loss import HybridLoss, LossWeights
from .wrapping import set_activation_checkpointing, to_channels_last


def build_training_model(model_cfg, *, device: torch.device | str, activation_checkpointing: bool,
                         channels_last: bool) -> nn.Module:
    """The model on `device` with the memory settings applied (channels_last only on CUDA, where cuDNN
    gains from it; on the CPU it only costs layout conversions)."""
    device = torch.device(device)
    model = build_model(model_cfg)
    set_activation_checkpointing(model, activation_checkpointing)
    model = model.to(device)
    if channels_last and device.type == "cuda":
        model = to_channels_last(model)
    return model


def use_fused_adamw(optim_cfg, device_type: str) -> bool:
    """optim.fused: on, off, or auto (fused on CUDA, where the kernel exists and pays)."""
    return optim_cfg.fused == "on" or (optim_cfg.fused == "auto" and device_type == "cuda")


def build_optimizer(model: nn.Module, optim_cfg, *, alignment_lr_factor: float,
                    device_type: str) -> tuple[torch.optim.AdamW, list[float]]:
    """AdamW with one group, or two when the model aligns explicitly: the flow network and the
    deformable offsets learn at `alignment_lr_factor` x the LR. Freezing them is a factor of 0, never
    requires_grad=False mid-run (DDP would then wait forever for gradients that never come).

    Returns the optimizer (its LR is set per step from the schedule) and each group's LR factor."""
    aligned = alignment_parameters(model)
    if aligned:
        ids = {id(p) for p in aligned}
        groups = [{"params": [p for p in model.parameters() if id(p) not in ids]}, {"params": aligned}]
        factors = [1.0, alignment_lr_factor]
    else:
        groups, factors = [{"params": list(model.parameters())}], [1.0]
    optimizer = torch.optim.AdamW(groups, lr=0.0, betas=(optim_cfg.beta1, optim_cfg.beta2),
                                  weight_decay=optim_cfg.weight_decay,
                                  fused=use_fused_adamw(optim_cfg, device_type) or None)
    return optimizer, factors


def precision_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a mixed-precision setting (None for "no")."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


class PlainStep:
    """What Trainer.train_step does per micro-batch, without DDP and the all-reduce: forward under
    autocast, HybridLoss on the centre frame, (scaled) backward, gradient clipping, optimizer step."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, precision: str,
                 loss_weights: LossWeights, *, clip_norm: float = 1.0) -> None:
        self.model = model
        self.optimizer = optimizer
        self.device_type = next(model.parameters()).device.type
        self.dtype = precision_dtype(precision)
        self.scaler = torch.amp.GradScaler(self.device_type) if precision == "fp16" else None
        self.loss_weights = loss_weights
        self.clip_norm = clip_norm
        self.loss_fn = HybridLoss()

    def __call__(self, gt_btchw: torch.Tensor, lq_btchw: torch.Tensor) -> None:
        with torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None):
            sr_bchw = self.model(lq_btchw)
        loss = self.loss_fn(sr_bchw, gt_btchw[:, gt_btchw.shape[1] // 2], self.loss_weights)["total"]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
