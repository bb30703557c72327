"""A model from a checkpoint: its weights file read (vsrpp_dist.weights), its model_config validated, the
weights checked against the model they must fit, and what a result records about the model."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..config import ALIGNMENTS, ConfigError, ModelConfig, build, config_to_dict, with_legacy_values
from ..errors import CheckpointError
from ..model.architecture import build_model
from ..model.receptive_field import receptive_radius, tile_multiple
from ..training.wrapping import to_channels_last
from ..files import file_sha256
from ..weights import read_weights


@dataclass
class LoadedModel:
    model: nn.Module
    model_cfg: ModelConfig
    source: str  # what the user named
    step: int
    ema: bool
    file: Path | None = None  # the weights file read
    provenance: list[dict] = field(default_factory=list)  # the models its training started from

    @functools.cached_property
    def sha256(self) -> str | None:
        return file_sha256(self.file) if self.file else None  # hashed once, however often it is recorded

    def identity(self) -> dict:
        """What a result computed with this model records about it (evaluate --json, export)."""
        return {"checkpoint": self.source, "file": str(self.file) if self.file else None,
                "sha256": self.sha256, "step": self.step, "ema": self.ema,
                "model_config": config_to_dict(self.model_cfg), "provenance": self.provenance}

    @property
    def radius(self) -> int:
        return receptive_radius(self.model_cfg)

    @property
    def tile_multiple(self) -> int:
        return tile_multiple(self.model_cfg)

    def describe(self) -> str:
        c = self.model_cfg
        weights = "EMA weights" if self.ema else "weights"
        return (f"{self.source}: {weights} of step {self.step}, {c.name} channels={c.channels} blocks="
                f"{c.extract_blocks}/{c.propagation_blocks}/{c.reconstruction_blocks}, alignment {c.alignment}, "
                f"receptive radius {self.radius} LR px")


def model_config_from_dict(values: dict, where: str) -> ModelConfig:
    """The checkpoint's model_config, validated by the config loader (unknown keys, another scale or
    architecture are refused with the key named; read_weights has refused a missing one)."""
    values = with_legacy_values(values)  # weights from before a key existed
    try:
        return build(ModelConfig, values, "model.")
    except ConfigError as err:
        raise CheckpointError(f"{where}: its model_config is not a model this version builds ({err})") from None


def _state_dict_mismatch(model: nn.Module, state_dict: dict) -> str | None:
    """The first way `state_dict` does not fit `model`, in words; None when it fits."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing:
        return f"{len(missing)} weights missing (first: {missing[0]})"
    if unexpected:
        return f"{len(unexpected)} weights the model does not have (first: {unexpected[0]})"
    for key, tensor in expected.items():
        given = state_dict[key]
        if not isinstance(given, torch.Tensor) or given.shape != tensor.shape:
            shape = tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__
            return f"{key} is {shape} in the file, the model needs {tuple(tensor.shape)}"
    return None


def alignment_of_weights(state_dict: dict) -> str:
    """Which `model.alignment` built these weights, from the modules only it has: a flow network (explicit)
    and deformable aligners in the propagation cells (deformable)."""
    deformable = any(".align." in key for key in state_dict)
    explicit = deformable or any(key.startswith("flow_net.") for key in state_dict)
    return next(a.name for a in ALIGNMENTS.values() if (a.explicit, a.deformable) == (explicit, deformable))


def load_model(checkpoint: str | Path, device: torch.device) -> LoadedModel:
    """The model in eval mode on `device`, from a checkpoint folder, a symlink to one (RUN/checkpoint_best)
    or a weights file (`model.safetensors`, or a legacy `weights.pt`), read as data only."""
    weights = read_weights(checkpoint)
    model_cfg = model_config_from_dict(weights.model_config, str(checkpoint))
    model = build_model(model_cfg)
    state_dict = weights.state_dict
    weights_alignment = alignment_of_weights(state_dict)
    if weights_alignment != model_cfg.alignment:
        raise CheckpointError(f"{checkpoint}: its weights are of a model with alignment {weights_alignment}, but its "
                              f"model_config says model.alignment={model_cfg.alignment}; the file is inconsistent")
    problem = _state_dict_mismatch(model, state_dict)
    if problem:
        c = model_cfg
        raise CheckpointError(f"{checkpoint}: the weights do not fit its model_config (channels={c.channels}, "
                              f"blocks={c.extract_blocks}/{c.propagation_blocks}/{c.reconstruction_blocks}, "
                              f"upsample_channels={c.upsample_channels}): {problem}")
    model.load_state_dict(state_dict)
    model.eval().requires_grad_(False).to(device)
    if device.type == "cuda":
        to_channels_last(model)  # as in training: cuDNN's native layout for tensor cores
    return LoadedModel(model, model_cfg, str(checkpoint), weights.step, weights.ema, weights.path,
                       weights.provenance)
