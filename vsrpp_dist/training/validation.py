"""Validation on whole sequences, sharded across ranks, scored the way VSR papers score.

Every frame of every sequence is restored from its 5-frame window (the edges mirrored: frame 0 sees
frames 2, 1, 0, 1, 2). Each sequence is cut into one contiguous share of frames per rank (ceil(n /
ranks) each, the last ones shorter); the per-frame rows are padded to the same count on every rank,
gathered, and the padding dropped. PSNR/SSIM on the BT.601 Y channel and on RGB, for the bicubic
upscale ("LR") and the model ("KI"), averaged per sequence and then over sequences.

Temporal consistency needs consecutive frames, which is why the shares are contiguous: each rank also
restores the frame just before its share (one extra forward pass per sequence on every rank but the
first), so every pair of consecutive frames is scored on exactly one rank, with no images exchanged.
TDE (vsrpp_dist/temporal_metrics.py: mean |(SR_t - SR_t-1) - (GT_t - GT_t-1)| on 8-bit Y) is always
logged, a few tensor operations per frame; tOF (OpenCV Farneback on the CPU, two flows per frame for
the model and bicubic plus one for GT) only with `validation.tof` (BENCHMARKS.md says what it costs).

Derived figures (documented in the README):
  LR_Quality = 100 x LR_SSIM (Y), KI_Quality = 100 x KI_SSIM (Y)
  Improvement = KI_PSNR - LR_PSNR (Y, dB): what the model adds over bicubic
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from torchvision.utils import make_grid

from ..data.degradation import BicubicDegradation, Degradation
from ..data.validation_set import ValidationSet, ValSequence
from ..data.windows import window_indices
from ..errors import ShardFormatError
from ..imresize import upscale
from ..metrics import psnr, ssim
from ..temporal_metrics import GroundTruthTrack, TemporalTrack

COLUMNS = ("LR_PSNR", "LR_SSIM", "LR_PSNR_RGB", "LR_SSIM_RGB", "KI_PSNR", "KI_SSIM", "KI_PSNR_RGB", "KI_SSIM_RGB")
TEMPORAL_COLUMNS = ("LR_TDE", "KI_TDE", "LR_TOF", "KI_TOF")
# a gathered row: sequence, frame, valid (0: padding), has a previous frame, COLUMNS, TEMPORAL_COLUMNS
ROW_HEAD = 4
ROW_LENGTH = ROW_HEAD + len(COLUMNS) + len(TEMPORAL_COLUMNS)


def contiguous_share(rank: int, world: int, num_frames: int) -> tuple[range, int]:
    """The frames of a sequence this rank scores (contiguous, possibly empty) and the share every rank pads to."""
    per_rank = -(-num_frames // world)
    start = min(num_frames, rank * per_rank)
    return range(start, min(num_frames, start + per_rank)), per_rank


class SequencePairs:
    """Temporal scores of one rank's share of a sequence, fed frames in order (the frame before the share
    first): per frame, the TDE (and tOF) of bicubic and the model against its predecessor."""

    def __init__(self, crop_border: int, with_tof: bool) -> None:
        self.gt = GroundTruthTrack(crop_border, with_tof)
        self.bicubic = TemporalTrack(crop_border, with_tof)
        self.model = TemporalTrack(crop_border, with_tof)
        self.with_tof = with_tof

    def step(self, gt_u8: torch.Tensor, bicubic_u8: torch.Tensor, sr_u8: torch.Tensor) -> list[float] | None:
        """TEMPORAL_COLUMNS of this frame's pair with the previous one fed; None for the first frame."""
        self.gt.step(gt_u8)
        self.bicubic.step(bicubic_u8, self.gt)
        self.model.step(sr_u8, self.gt)
        if self.gt.y_change is None:
            return None
        tof = [self.bicubic.tof[-1], self.model.tof[-1]] if self.with_tof else [0.0, 0.0]
        return [self.bicubic.tde[-1], self.model.tde[-1], *tof]


class SequenceInputs:
    """Each validation sequence's input frames, made by the run's degradation from (run.seed, sequence):
    every validation of the run scores the same input. Frame by frame (bicubic, real LR) a rank makes only
    the frames its windows need, at each validation; a sequence made as one video (the realistic codec)
    is made whole once and kept as 8-bit frames on the host, a ninth of the GT's bytes."""

    def __init__(self, degradation: Degradation, seed: int) -> None:
        self.degradation = degradation
        self.seed = seed
        self.kept: dict[int, torch.Tensor] = {}

    def frames(self, seq: ValSequence, device: torch.device, needed: list[int]) -> dict[int, torch.Tensor]:
        """The input frame (3, H/3, W/3) uint8 on the host of each frame index in `needed`."""
        if not self.degradation.frame_by_frame:
            if seq.index not in self.kept:
                self.kept[seq.index] = torch.stack([lq for _, lq in self._made(seq, range(seq.gt.shape[0]), device)])
            return {i: self.kept[seq.index][i] for i in needed}
        return dict(zip(needed, (lq for _, lq in self._made(seq, needed, device))))

    def _made(self, seq: ValSequence, indices, device: torch.device):
        pairs = ((seq.gt[i], seq.lr[i] if seq.lr is not None else None) for i in indices)
        return self.degradation.sequence(pairs, seed=self.seed, index=seq.index, device=device)


def score(sr: torch.Tensor, gt: torch.Tensor, crop_border: int) -> list[torch.Tensor]:
    """PSNR/SSIM on Y and RGB of 8-bit-quantised images, as papers measure saved PNGs."""
    return [
        psnr(sr, gt, crop_border=crop_border, y_channel=True, quantize=True),
        ssim(sr, gt, crop_border=crop_border, y_channel=True, quantize=True),
        psnr(sr, gt, crop_border=crop_border, y_channel=False, quantize=True),
        ssim(sr, gt, crop_border=crop_border, y_channel=False, quantize=True),
    ]


class Validator:
    def __init__(self, dataset: ValidationSet, cfg, accelerator, observer, *, degradation: Degradation | None = None,
                 seed: int = 0) -> None:
        """`degradation`: how the set's input frames are made (data.degradation.for_scoring); bicubic if None."""
        self.cfg = cfg
        self.accelerator = accelerator
        self.observer = observer
        self.dataset = dataset
        self.inputs = SequenceInputs(degradation or BicubicDegradation(), seed)
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
            mine, per_rank = contiguous_share(rank, world, seq.gt.shape[0])
            # the frame before the share: restored only as the earlier frame of the share's first pair
            order = ([mine.start - 1] if mine and mine.start > 0 else []) + list(mine)
            pairs = SequencePairs(self.cfg.crop_border, self.cfg.tof)
            needed = sorted({i for f in order for i in window_indices(f, seq.gt.shape[0])})
            lq_frames = self.inputs.frames(seq, device, needed)
            for start in range(0, len(order), self.cfg.batch_size):
                frames = order[start:start + self.cfg.batch_size]
                rows += self._score_frames(model, seq, lq_frames, frames, mine, pairs, step, device)
            padding = [float(seq.index), 0.0, 0.0, 0.0] + [0.0] * (ROW_LENGTH - ROW_HEAD)
            rows += [padding] * (per_rank - len(mine))
        for index, reason in self.dataset.damaged.items():  # skipped whole, on every rank alike
            if index not in self._reported_damaged:
                self._reported_damaged.add(index)
                self.observer.warn(f"validation: sequence {index} skipped, it has a damaged frame ({reason}); "
                                   "every validation of this run leaves it out", all_ranks=False)
        model.train(was_training)
        table = torch.tensor(rows, dtype=torch.float64, device=device).reshape(-1, ROW_LENGTH)
        table = acc.gather(table).cpu()
        table = table[table[:, 2] > 0]
        if table.shape[0] == 0:  # every rank sees the same files: all of them stop here together
            raise ShardFormatError(f"validation: every sequence of {self.dataset.folder} has a damaged frame; pack "
                                   "the validation set again, or train without it (data.val_shards='')")
        return self._summarise(table, self.cfg.tof)

    def _score_frames(self, model, seq, lq_frames: dict[int, torch.Tensor], frames, mine: range,
                      pairs: SequencePairs, step, device) -> list[list[float]]:
        n = seq.gt.shape[0]
        windows = [window_indices(f, n) for f in frames]
        gt_centre = seq.gt[frames].to(device).float().div_(255)
        lq_clips = torch.stack([torch.stack([lq_frames[i] for i in w]) for w in windows]).to(device).float().div_(255)
        with self.accelerator.autocast():
            sr = model(lq_clips).float().clamp_(0, 1)
        bicubic = upscale(lq_clips[:, 2]).clamp_(0, 1)
        bicubic_scores = score(bicubic, gt_centre, self.cfg.crop_border)
        ki_scores = score(sr, gt_centre, self.cfg.crop_border)
        gt_u8, bicubic_u8, sr_u8 = (x.mul(255).round_().to(torch.uint8) for x in (gt_centre, bicubic, sr))
        if self.accelerator.is_main_process:
            for k, frame in enumerate(frames):
                if frame == 0 and seq.index < self.cfg.images:
                    grid = make_grid(torch.stack([bicubic[k], sr[k], gt_centre[k]]).cpu(), nrow=3, padding=4)
                    self.observer.image(step, f"Validation/{seq.name}", grid)
        rows = []
        for k, frame in enumerate(frames):
            temporal = pairs.step(gt_u8[k], bicubic_u8[k], sr_u8[k])
            if frame not in mine:  # the frame before the share
                continue
            rows.append([float(seq.index), float(frame), 1.0, float(temporal is not None),
                         *[float(s[k]) for s in bicubic_scores + ki_scores],
                         *(temporal if temporal is not None else [0.0] * len(TEMPORAL_COLUMNS))])
        return rows

    @staticmethod
    def _summarise(table: torch.Tensor, with_tof: bool = False) -> dict[str, float]:
        per_sequence: dict[int, list] = defaultdict(list)
        pairs_per_sequence: dict[int, list] = defaultdict(list)
        for row in table.tolist():
            per_sequence[int(row[0])].append(row[ROW_HEAD:ROW_HEAD + len(COLUMNS)])
            if row[3] > 0:
                pairs_per_sequence[int(row[0])].append(row[ROW_HEAD + len(COLUMNS):])
        result = dict(zip(COLUMNS, _mean_of_sequence_means(per_sequence)))
        if pairs_per_sequence:  # sequences of one frame have no pair: the mean over those that do
            temporal = dict(zip(TEMPORAL_COLUMNS, _mean_of_sequence_means(pairs_per_sequence)))
            result.update({k: v for k, v in temporal.items() if with_tof or not k.endswith("_TOF")})
        result["LR_Quality"] = 100 * result["LR_SSIM"]
        result["KI_Quality"] = 100 * result["KI_SSIM"]
        result["Improvement"] = result["KI_PSNR"] - result["LR_PSNR"]
        result["frames"] = float(table.shape[0])
        result["sequences"] = float(len(per_sequence))
        return result


def _mean_of_sequence_means(rows_by_sequence: dict[int, list[list[float]]]) -> list[float]:
    """Per column: each sequence's mean of its rows, then the mean over sequences (float64), as papers average."""
    means = [torch.tensor(rows, dtype=torch.float64).mean(0).tolist() for rows in rows_by_sequence.values()]
    return torch.tensor(means, dtype=torch.float64).mean(0).tolist()
