"""One way to build what a training step needs: the wrapped model and the optimizer with its groups.
The trainer, auto-tune's probe and `bench step` all use these (and run them through the one step in
step.py), so what the probe measures and what the benchmark times is the model the run trains, wrapped
the way it trains.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model.architecture import alignment_parameters, build_model, module_group
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


class LRFactors:
    """Each optimizer group's multiplier of the scheduled LR, as a function of the step: the explicit
    alignment's `alignment_lr_factor`, and 0 for the groups `init.freeze` holds fixed during the first
    `freeze_steps` steps. Freezing is a factor, never requires_grad=False mid-run (DDP would then wait
    forever for gradients that never come), and a function of the step, so resume is exact."""

    def __init__(self, groups: list[tuple[str, float]], frozen: tuple[str, ...] = (), freeze_steps: int = 0) -> None:
        self.groups = groups  # (module group, base factor) per optimizer group
        self.frozen = frozen
        self.freeze_steps = freeze_steps

    def frozen_at(self, step: int) -> bool:
        return bool(self.frozen) and step < self.freeze_steps

    def at(self, step: int) -> list[float]:
        frozen = self.frozen_at(step)
        return [0.0 if frozen and name in self.frozen else factor for name, factor in self.groups]


def build_optimizer(model: nn.Module, optim_cfg, *, alignment_lr_factor: float, device_type: str,
                    frozen: tuple[str, ...] = (), freeze_steps: int = 0) -> tuple[torch.optim.AdamW, LRFactors]:
    """AdamW with one group per module group (model.architecture.MODULE_GROUPS) and, within the
    propagation and alignment, the flow network's and deformable offsets' parameters apart: they learn
    at `alignment_lr_factor` x the LR. The groups only carry factors: every group has the same AdamW
    settings, so the update of each parameter is what one group would give.

    Returns the optimizer (its LR is set per step from the schedule) and the groups' LR factors."""
    aligned = {id(p) for p in alignment_parameters(model)}
    grouped: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        grouped.setdefault((module_group(name), id(param) in aligned), []).append(param)
    groups = [{"params": params} for params in grouped.values()]
    factors = LRFactors([(group, alignment_lr_factor if slow else 1.0) for group, slow in grouped],
                        frozen, freeze_steps)
    optimizer = torch.optim.AdamW(groups, lr=0.0, betas=(optim_cfg.beta1, optim_cfg.beta2),
                                  weight_decay=optim_cfg.weight_decay,
                                  fused=use_fused_adamw(optim_cfg, device_type) or None)
    return optimizer, factors
