"""An fp32 exponential moving average of the weights, saved in checkpoints, used for validation and
export when enabled (as SR trainers usually do: the average is smoother than the last iterate)."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class WeightEMA:
    """Always registered for checkpointing (empty when disabled) so the checkpoint layout does not
    depend on the setting; enabling it on resume starts the average from the current weights."""

    def __init__(self, model: nn.Module, cfg) -> None:
        self.cfg = cfg
        self.average = None
        if cfg.enabled:
            # AveragedModel deep-copies the module: the copy stays fp32 whatever autocast does.
            self.average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.decay), use_buffers=True)
            self.average.requires_grad_(False)

    @property
    def enabled(self) -> bool:
        return self.average is not None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if self.average is not None:
            self.average.update_parameters(model)

    @property
    def module(self) -> nn.Module | None:
        return self.average.module if self.average is not None else None

    def state_dict(self) -> dict:
        return {"enabled": self.enabled, "state": self.average.state_dict() if self.average is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.average is not None and state.get("state") is not None:
            self.average.load_state_dict(state["state"])
