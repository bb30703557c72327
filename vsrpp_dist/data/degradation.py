"""How the model's input frames are made, wherever they are needed: one protocol, three variants.

    BicubicDegradation    MATLAB's bicubic x3 of GT (the papers' BI protocol), bit for bit
    RealisticDegradation  RealBasicVSR's second-order degradation, built for video (realistic.py)
    RealLowRes            real LR frames that came with the data (`pack --lr`, `evaluate --lr`)

Each variant answers the same three questions, one per place where input is made:

    draw(rng, frames)       in the loader worker, per clip, from the clip's own generator: every random
                            choice, as tensors the batch stacks (nothing for bicubic and real LR, so
                            their streams draw what they always drew)
    apply(gt_btchw, batch)  on the training device, per batch: the model's input from the GT clips and
                            the batch's other fields (the draws, the packed LR frames)
    sequence(frames, ...)   validation and evaluate: a whole sequence's input, 8-bit frames on the host
                            (bicubic: frame by frame, streamed; realistic: the sequence as one video, drawn
                            from (seed, sequence index); real LR: the frames given)

Written once on top of them: `model_input` (the step's GT and input from a batch on the device) and
`synthetic_batch` (a batch as the stream delivers it, made from GT alone: auto-tune's probe and `bench
step`). Which variant a run uses is decided here as well (`for_training`, `for_scoring`), so that no
caller asks which kind it holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable, Iterator, Mapping

import numpy as np
import torch

from ..config import ConfigError, DegradationConfig
from ..errors import ShardFormatError
from ..imresize import downscale
from ..metrics import to_uint8

# A frame pair of a sequence, uint8 (3, H, W) on the host: GT, and the real LR frame if the data has one.
FramePair = tuple[torch.Tensor, "torch.Tensor | None"]


class Degradation(ABC):
    """The protocol; see the module docstring."""

    # Whether a frame's input depends on that frame alone (bicubic, real LR): then `sequence` may be given
    # any subset of a sequence's frames, and validation makes only those a rank scores, at each validation.
    # A variant that makes the sequence as one video (realistic) gets it whole; validation keeps its input.
    frame_by_frame = True

    def draw(self, rng: np.random.Generator, frames: int) -> dict[str, torch.Tensor]:
        """Every random choice for one clip of `frames` frames; none by default."""
        return {}

    @abstractmethod
    def apply(self, gt_btchw: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The model's input (B, T, 3, H/3, W/3) in [0, 1] on GT's device, from GT clips (B, T, 3, H, W)
        in [0, 1] and the batch they came in (its draws and packed LR frames)."""

    @abstractmethod
    def sequence(self, frames: Iterable[FramePair], *, seed: int, index: int,
                 device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(GT, input) uint8 frames of one whole sequence, in order, from its (GT, real LR or None) pairs;
        a random variant draws from a generator seeded by (seed, index), so `evaluate --seed S` and a run
        with run.seed=S make a sequence's input identically."""

    @abstractmethod
    def describe(self, seed: int) -> str:
        """Where the input frames come from, in a few words (evaluate's table, JSON and report)."""

    def model_input(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's two tensors from a batch whose frames are on the device (stream.to_device): GT as
        floats in [0, 1], and the model's input made from it."""
        gt_btchw = batch["gt"].float().div_(255)
        return gt_btchw, self.apply(gt_btchw, batch)

    def synthetic_batch(self, gt_btchw_u8: torch.Tensor, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """A batch as the stream delivers it, made from uint8 GT clips alone: each clip's draw, stacked."""
        draws = [self.draw(rng, gt_btchw_u8.shape[1]) for _ in range(gt_btchw_u8.shape[0])]
        return {"gt": gt_btchw_u8, **{k: torch.stack([d[k] for d in draws]) for k in draws[0]}}


class BicubicDegradation(Degradation):
    """MATLAB's imresize(GT, 1/3), each pass rounded to 8 bits as the published BI test sets were made."""

    def apply(self, gt_btchw: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        b, t = gt_btchw.shape[:2]
        return downscale(gt_btchw.flatten(0, 1)).unflatten(0, (b, t))

    def sequence(self, frames: Iterable[FramePair], *, seed: int, index: int,
                 device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # a frame at a time (a long video is never held whole); each frame once, though it sits in five windows
        for gt, _ in frames:
            yield gt, to_uint8(downscale(gt.to(device).float().div_(255)))

    def describe(self, seed: int) -> str:
        return "MATLAB bicubic x3 of GT, 8-bit"


class RealLowRes(Degradation):
    """The data's own LR frames are the input; nothing is made from GT."""

    def __init__(self, origin: str = "real LR frames packed with the data") -> None:
        self.origin = origin

    def apply(self, gt_btchw: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return batch["lr"].to(gt_btchw.device, non_blocking=True).float().div_(255)

    def sequence(self, frames: Iterable[FramePair], *, seed: int, index: int,
                 device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for gt, lr in frames:
            if lr is None:  # a validation set packed with LR skips such a sequence as damaged before this
                raise ShardFormatError(f"sequence {index}: a GT frame without its real LR frame")
            yield gt, lr

    def describe(self, seed: int) -> str:
        return self.origin

    def synthetic_batch(self, gt_btchw_u8: torch.Tensor, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        # LR frames of the real ones' size (the step costs the same whatever they show): GT's bicubic x3
        return {"gt": gt_btchw_u8, "lr": to_uint8(BicubicDegradation().apply(gt_btchw_u8.float().div(255), {}))}


def build_degradation(cfg: DegradationConfig) -> Degradation:
    """The configured way of making the input from GT (`degradation.kind`)."""
    if cfg.kind == "realistic":
        from .realistic import RealisticDegradation  # here: realistic.py builds on this module

        return RealisticDegradation(cfg)
    return BicubicDegradation()


def for_training(cfg: DegradationConfig, *, packed_lr: bool, folder: str) -> Degradation:
    """The training input: the shards' real LR frames when they were packed with them, else the configured
    degradation of GT. Real LR frames are not degraded again: a realistic run on them is refused."""
    if not packed_lr:
        return build_degradation(cfg)
    if cfg.kind != "bicubic":
        raise ConfigError(f"degradation.kind: {cfg.kind} makes the input frames from GT, but {folder} was packed "
                          "with real LR frames; pack GT only, or use degradation.kind=bicubic")
    return RealLowRes()


def for_scoring(cfg: DegradationConfig, *, packed_lr: bool) -> Degradation:
    """Validation's input: the set's real LR frames when it was packed with them (the truest test of any
    run), else the run's degradation of GT (a realistic run scores a fixed degraded set)."""
    return RealLowRes() if packed_lr else build_degradation(cfg)
