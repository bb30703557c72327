"""Temporal consistency of a restored video: does it flicker where the ground truth does not?

Two measures, both lower-is-better and 0 for an output whose frame-to-frame change equals the GT's:

tOF, as TecoGAN defines it (Chu et al. 2020, `metrics.py` of thunil/TecoGAN): both frames of a pair as
8-bit RGB, turned grey by OpenCV (`cv2.cvtColor(..., COLOR_RGB2GRAY)`: 0.299 R + 0.587 G + 0.114 B,
rounded to uint8), optical flow from the earlier to the later frame by OpenCV's Farneback with
TecoGAN's parameters (pyr_scale 0.5, 3 levels, window 15, 3 iterations, poly_n 5, poly_sigma 1.2, no
flags), once for the output pair and once for the GT pair; the flows (in output pixels) are cropped to
TecoGAN's centre crop (`crop_8x8`: a multiple of 32 on each axis, at least 16 px less than the frame,
centred; the whole frame where that crop would leave nothing, which only frames under 48 px hit), and
tOF is the mean over pixels of the L2 norm of the flows' difference. No rescaling (TecoGAN's paper
prints some tables x10; published tOF values also differ where RAFT replaces Farneback).

TDE, the temporal difference error (flow-free): mean over pixels of
|(SR_t - SR_{t-1}) - (GT_t - GT_{t-1})| on the BT.601 Y channel (metrics.rgb_to_y) of the 8-bit frames,
on the 0..255 scale, after the same `crop_border` as PSNR. It is the flicker the GT does not have,
and needs no motion estimate (a static offset or a constant colour cast scores 0).

Both are defined per pair of consecutive frames; a sequence scores the mean over its pairs, so a
sequence of one frame has none (`NotEnoughFrames`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .metrics import rgb_to_y

__all__ = ["PROTOCOL", "FARNEBACK_PARAMS", "NotEnoughFrames", "grey", "farneback_flow", "tof_crop", "tof_of_flows",
           "sequence_tof", "sequence_tde", "TemporalTrack", "GroundTruthTrack"]

PROTOCOL = ("tOF = TecoGAN's: OpenCV RGB2GRAY of the 8-bit frames, Farneback (0.5, 3, 15, 3, 5, 1.2, 0) between "
            "consecutive frames of the output and of GT, mean L2 norm of the flows' difference in output pixels over "
            "TecoGAN's centre crop (crop_8x8); TDE = mean |(SR_t - SR_t-1) - (GT_t - GT_t-1)| on 8-bit BT.601 Y "
            "(0..255, crop_border applied); both per consecutive pair, mean per sequence")

# TecoGAN's cv2.calcOpticalFlowFarneback arguments after (prev, next, flow):
# pyr_scale, levels, winsize, iterations, poly_n, poly_sigma, flags
FARNEBACK_PARAMS = (0.5, 3, 15, 3, 5, 1.2, 0)


class NotEnoughFrames(ValueError):
    """A temporal metric needs at least two consecutive frames."""


def _cv2():
    import cv2

    cv2.setNumThreads(1)  # the caller parallelises; OpenCV's own pool fights torch's for 2 cores
    return cv2


def grey(rgb_hwc: np.ndarray) -> np.ndarray:
    """8-bit RGB (H, W, 3) -> 8-bit grey (H, W), OpenCV's conversion as TecoGAN uses it."""
    if rgb_hwc.dtype != np.uint8 or rgb_hwc.ndim != 3 or rgb_hwc.shape[2] != 3:
        raise ValueError(f"grey needs an 8-bit RGB image (H, W, 3), got {rgb_hwc.dtype} {rgb_hwc.shape}")
    return _cv2().cvtColor(np.ascontiguousarray(rgb_hwc), _cv2().COLOR_RGB2GRAY)


def farneback_flow(prev_grey: np.ndarray, next_grey: np.ndarray) -> np.ndarray:
    """Dense flow (H, W, 2) float32 from `prev_grey` to `next_grey`, TecoGAN's Farneback parameters."""
    return _cv2().calcOpticalFlowFarneback(prev_grey, next_grey, None, *FARNEBACK_PARAMS)


def tof_crop(h: int, w: int) -> tuple[slice, slice]:
    """TecoGAN's `crop_8x8` window: per axis the largest multiple of 32 that leaves at least 16 px,
    centred; an axis where that is nothing keeps its whole length."""
    def axis(n: int) -> slice:
        m = (n // 32) * 32
        while m > n - 16:
            m -= 32
        if m <= 0:
            return slice(0, n)
        start = (n - m) // 2
        return slice(start, start + m)
    return axis(h), axis(w)


def tof_of_flows(output_flow: np.ndarray, target_flow: np.ndarray) -> float:
    """Mean L2 norm of the difference of two (H, W, 2) flows over TecoGAN's centre crop."""
    if output_flow.shape != target_flow.shape:
        raise ValueError(f"flow shapes differ: {output_flow.shape} vs {target_flow.shape}")
    rows, cols = tof_crop(*output_flow.shape[:2])
    diff = output_flow[rows, cols].astype(np.float64) - target_flow[rows, cols]
    return float(np.sqrt((diff * diff).sum(axis=-1)).mean())


def _y_255(rgb_chw_u8: torch.Tensor, crop_border: int) -> torch.Tensor:
    """Y of an 8-bit RGB (3, H, W) frame, float64 on the 0..255 scale, borders cropped."""
    y = rgb_to_y(rgb_chw_u8.to(torch.float64) / 255)[0] * 255
    if crop_border:
        y = y[crop_border:-crop_border, crop_border:-crop_border]
    return y


@dataclass
class GroundTruthTrack:
    """Consecutive frames' changes, fed frame by frame in order: after each frame, the change of its Y
    from the previous frame's and (with_tof) the optical flow between them. The GT's are the same for
    every output stream of a sequence, so one GroundTruthTrack is shared by them all: a frame's GT flow is
    computed once however many models are scored."""

    crop_border: int = 0
    with_tof: bool = True
    flow: np.ndarray | None = None
    y_change: torch.Tensor | None = None
    _prev_grey: np.ndarray | None = field(default=None, init=False, repr=False)
    _prev_y: torch.Tensor | None = field(default=None, init=False, repr=False)

    def step(self, frame_chw_u8: torch.Tensor) -> None:
        """Add the next frame (8-bit RGB (3, H, W), any device)."""
        y = _y_255(frame_chw_u8, self.crop_border)
        self.y_change = None if self._prev_y is None else y - self._prev_y
        self._prev_y = y
        if self.with_tof:
            g = grey(frame_chw_u8.permute(1, 2, 0).cpu().numpy())
            self.flow = None if self._prev_grey is None else farneback_flow(self._prev_grey, g)
            self._prev_grey = g


@dataclass
class TemporalTrack:
    """One output stream of a sequence, fed frame by frame in order: its own frames' changes (the same
    bookkeeping as the GT's), compared per pair with the shared GT track's."""

    crop_border: int = 0
    with_tof: bool = True
    tof: list[float] = field(default_factory=list)  # per pair (t-1, t), t = 1..n-1
    tde: list[float] = field(default_factory=list)
    _own: GroundTruthTrack = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._own = GroundTruthTrack(self.crop_border, self.with_tof)

    def step(self, output_chw_u8: torch.Tensor, gt: GroundTruthTrack) -> None:
        """Add the next frame (8-bit RGB (3, H, W), any device); `gt` must already hold its GT frame."""
        self._own.step(output_chw_u8)
        if self._own.y_change is not None:
            self.tde.append(float((self._own.y_change - gt.y_change).abs().mean()))
        if self._own.flow is not None:
            self.tof.append(tof_of_flows(self._own.flow, gt.flow))


def _check_sequences(output_nchw: torch.Tensor, gt_nchw: torch.Tensor) -> None:
    for name, x in (("output", output_nchw), ("gt", gt_nchw)):
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} must be 8-bit RGB frames (N, 3, H, W), got {x.dtype} {tuple(x.shape)}")
    if output_nchw.shape != gt_nchw.shape:
        raise ValueError(f"output and gt shapes differ: {tuple(output_nchw.shape)} vs {tuple(gt_nchw.shape)}")
    if output_nchw.shape[0] < 2:
        raise NotEnoughFrames(f"temporal metrics need at least 2 frames, got {output_nchw.shape[0]}")


def _run(output_nchw: torch.Tensor, gt_nchw: torch.Tensor, crop_border: int, with_tof: bool) -> TemporalTrack:
    _check_sequences(output_nchw, gt_nchw)
    gt_track = GroundTruthTrack(crop_border, with_tof)
    track = TemporalTrack(crop_border, with_tof)
    for out, gt in zip(output_nchw, gt_nchw):
        gt_track.step(gt)
        track.step(out, gt_track)
    return track


def sequence_tof(output_nchw: torch.Tensor, gt_nchw: torch.Tensor) -> list[float]:
    """tOF of each consecutive pair of a whole sequence of 8-bit RGB frames (N >= 2): N - 1 values."""
    return _run(output_nchw, gt_nchw, 0, True).tof


def sequence_tde(output_nchw: torch.Tensor, gt_nchw: torch.Tensor, crop_border: int = 0) -> list[float]:
    """TDE of each consecutive pair of a whole sequence of 8-bit RGB frames (N >= 2): N - 1 values."""
    return _run(output_nchw, gt_nchw, crop_border, False).tde
