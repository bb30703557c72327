"""What is applied to the model from outside it: activation checkpointing and memory layout.

The model itself imports only torch and knows nothing of these; state-dict keys never change, so a
checkpoint trained with one setting loads with any other.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

CHECKPOINTED_PARTS = ("backward_branch", "forward_branch")


def set_activation_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Recompute the propagation trunks during backward instead of storing their activations: they
    hold most of the activation memory (2 branches x 2 steps x propagation_blocks x 2 convs)."""
    for name in CHECKPOINTED_PARTS:
        part = getattr(model, name)
        if "forward" in part.__dict__:
            del part.forward  # back to the class's forward
        if enabled:
            inner = part.forward

            def checkpointed(*args, _inner=inner):
                return checkpoint(_inner, *args, use_reentrant=False)

            part.forward = checkpointed


def to_channels_last(model: nn.Module) -> nn.Module:
    """NHWC weights: cuDNN then runs the convolutions in the tensor cores' native layout."""
    return model.to(memory_format=torch.channels_last)


class BranchActivity:
    """Mean absolute value of each propagation branch's final state, recorded as device tensors by
    forward hooks (no host sync); the trainer reads them with its per-step statistics."""

    def __init__(self, model: nn.Module) -> None:
        self.values: dict[str, torch.Tensor] = {}
        self._handles = [
            getattr(model, name).register_forward_hook(self._recorder(name)) for name in CHECKPOINTED_PARTS
        ]

    def _recorder(self, name: str):
        def hook(module, inputs, output):
            state, _ = output  # a propagation step returns its new state and its alignment's offset size
            # the last call of a branch in a forward pass is its final state: overwrite
            self.values[name] = state.detach().abs().mean().float()

        return hook

    def read(self, device: torch.device) -> torch.Tensor:
        zero = torch.zeros((), device=device)
        return torch.stack([self.values.get(name, zero) for name in CHECKPOINTED_PARTS])

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
