"""Validation on whole sequences, sharded across ranks, scored the way VSR papers score.

Every frame of every sequence is restored from its 5-frame window (the edges mirrored: frame 0 sees
frames 2, 1, 0, 1, 2). Each sequence's frames are dealt round-robin to the ranks and padded so every
rank runs the same number of forward passes; the per-frame rows are gathered and the padding dropped,
so no rank idles into a collective timeout. PSNR/SSIM on the BT.601 Y channel and on RGB, for the
bicubic upscale ("LR") and the model ("KI"), averaged per sequence and then over sequences.

Derived figures (documented in the README):
  LR_Quality = 100 x LR_SSIM (Y), KI_Quality = 100 x KI_SSIM (Y)
  Improvement = KI_PSNR - LR_PSNR (Y, dB): what the model adds over bicubic
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torchvision.utils import make_grid

from ..data.degradation import degrade_sequence
from ..data.validation_set import ValidationSet
from ..errors import ShardFormatError
from ..imresize import downscale, upscale
from ..metrics import psnr, ssim

COLUMNS = ("LR_PSNR", "LR_SSIM", "LR_PSNR_RGB", "LR_SSIM_RGB", "KI_PSNR", "KI_SSIM", "KI_PSNR_RGB", "KI_SSIM_RGB")


def window_indices(centre: int, num_frames: int, length: int = 5) -> list[int]:
    """Frame indices of the window around `centre`, mirrored at the sequence ends."""
    half = length // 2
    out = []
    for offset in range(-half, half + 1):
        i = centre + offset
        if i < 0:
            i = -i
        if i >= num_frames:
            i = 2 * (num_frames - 1) - i
        out.append(min(max(i, 0), num_frames - 1))
    return out


class FixedDegradedSet:
    """The validation set's input frames under a realistic degradation, made once per sequence (its
    frames degraded as one video, with a draw seeded by the run's seed and the sequence's index) and
    kept as 8-bit frames on the host."""

    def __init__(self, degradation, seed: int) -> None:
        self.degradation = degradation
        self.seed = seed
        self.cache: dict[int, torch.Tensor] = {}

    def frames(self, seq, device: torch.device) -> torch.Tensor:
        if seq.index not in self.cache:
            self.cache[seq.index] = degrade_sequence(self.degradation, seq.gt, self.seed, seq.index, device)
        return self.cache[seq.index]


def score(sr: torch.Tensor, gt: torch.Tensor, crop_border: int) -> list[torch.Tensor]:
    """PSNR/SSIM on Y and RGB of 8-bit-quantised images, as papers measure saved PNGs."""
    return [
        psnr(sr, gt, crop_border=crop_border, y_channel=True, quantize=True),
        ssim(sr, gt, crop_border=crop_border, y_channel=True, quantize=True),
        psnr(sr, gt, crop_border=crop_border, y_channel=False, quantize=True),
        ssim(sr, gt, crop_border=crop_border, y_channel=False, quantize=True),
    ]


class Validator:
    def __init__(self, dataset: ValidationSet, cfg, accelerator, observer, *, degradation=None, seed: int = 0) -> None:
        self.cfg = cfg
        self.accelerator = accelerator
        self.observer = observer
        self.dataset = dataset
        # realistic runs: each sequence degraded once, with a draw seeded by (run.seed, sequence), and kept,
        # so that every validation of the run scores the same input frames
        self.degraded = FixedDegradedSet(degradation, seed) if degradation is not None and \
            degradation.kind != "bicubic" else None
        self._reported_damaged: set[int] = set()
        seqs = self.dataset.sequences
        observer.info(f"validation set: {len(seqs)} sequences, {sum(s['num_frames'] for s in seqs)} frames "
                      f"from {self.dataset.folder}")

    def due(self, step: int, final: bool = False) -> bool:
        return self.cfg.every > 0 and (step % self.cfg.every == 0 or final)

    @torch.no_grad()
    def run(self, model: nn.Module, step: int) -> dict[str, float]:
        """Score `model` (an unwrapped module: no DDP collectives inside) on every rank's share."""
        acc = self.accelerator
        rank, world, device = acc.process_index, acc.num_processes, acc.device
        was_training = model.training
        model.eval()
        rows = []
        for seq in self.dataset:
            n = seq.gt.shape[0]
            mine = list(range(rank, n, world))
            per_rank = -(-n // world)
            padded = mine + [mine[0] if mine else 0] * (per_rank - len(mine))
            valid = [1.0] * len(mine) + [0.0] * (per_rank - len(mine))
            for start in range(0, per_rank, self.cfg.batch_size):
                frames = padded[start:start + self.cfg.batch_size]
                rows += self._score_frames(model, seq, frames, valid[start:start + self.cfg.batch_size], step, device)
        for index, reason in self.dataset.damaged.items():  # skipped whole, on every rank alike
            if index not in self._reported_damaged:
                self._reported_damaged.add(index)
                self.observer.warn(f"validation: sequence {index} skipped, it has a damaged frame ({reason}); "
                                   "every validation of this run leaves it out", all_ranks=False)
        model.train(was_training)
        table = torch.tensor(rows, dtype=torch.float64, device=device).reshape(-1, 3 + len(COLUMNS))
        table = acc.gather(table).cpu()
        table = table[table[:, 2] > 0]
        if table.shape[0] == 0:  # every rank sees the same files: all of them stop here together
            raise ShardFormatError(f"validation: every sequence of {self.dataset.folder} has a damaged frame; pack "
                                   "the validation set again, or train without it (data.val_shards='')")
        return self._summarise(table)

    def _score_frames(self, model, seq, frames, valid, step, device) -> list[list[float]]:
        n = seq.gt.shape[0]
        windows = [window_indices(f, n) for f in frames]
        gt_centre = seq.gt[frames].to(device).float().div_(255)
        if seq.lr is not None:
            lq_clips = torch.stack([seq.lr[w] for w in windows]).to(device).float().div_(255)
        elif self.degraded is not None:
            lq_frames = self.degraded.frames(seq, device)
            lq_clips = torch.stack([lq_frames[w] for w in windows]).to(device).float().div_(255)
        else:
            # Each frame is degraded once even when it sits in several windows.
            needed = sorted({i for w in windows for i in w})
            lq_frames = downscale(seq.gt[needed].to(device).float().div_(255))
            where = {frame: k for k, frame in enumerate(needed)}
            lq_clips = torch.stack([lq_frames[[where[i] for i in w]] for w in windows])
        with self.accelerator.autocast():
            sr = model(lq_clips).float().clamp_(0, 1)
        bicubic = upscale(lq_clips[:, 2]).clamp_(0, 1)
        bicubic_scores = score(bicubic, gt_centre, self.cfg.crop_border)
        ki_scores = score(sr, gt_centre, self.cfg.crop_border)
        if self.accelerator.is_main_process:
            for k, frame in enumerate(frames):
                if frame == 0 and valid[k] and seq.index < self.cfg.images:
                    grid = make_grid(torch.stack([bicubic[k], sr[k], gt_centre[k]]).cpu(), nrow=3, padding=4)
                    self.observer.image(step, f"Validation/{seq.name}", grid)
        return [[float(seq.index), float(f), v, *[float(s[k]) for s in bicubic_scores + ki_scores]]
                for k, (f, v) in enumerate(zip(frames, valid))]

    @staticmethod
    def _summarise(table: torch.Tensor) -> dict[str, float]:
        per_sequence: dict[int, list] = defaultdict(list)
        for row in table.tolist():
            per_sequence[int(row[0])].append(row[3:])
        seq_means = torch.tensor([torch.tensor(v).mean(0).tolist() for v in per_sequence.values()], dtype=torch.float64)
        overall = seq_means.mean(0).tolist()
        result = dict(zip(COLUMNS, overall))
        result["LR_Quality"] = 100 * result["LR_SSIM"]
        result["KI_Quality"] = 100 * result["KI_SSIM"]
        result["Improvement"] = result["KI_PSNR"] - result["LR_PSNR"]
        result["frames"] = float(table.shape[0])
        result["sequences"] = float(len(per_sequence))
        return result
