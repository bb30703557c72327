"""PSNR and SSIM measured the way VSR papers measure them, batched in torch.

The conventions follow BasicSR's `calculate_psnr` / `calculate_ssim` (test_y_channel=True), which
reproduce the MATLAB scripts the papers used: images on the 0..255 scale, optionally the BT.601 luma of
MATLAB's `rgb2ycbcr`, `crop_border` pixels dropped on every side, SSIM of Wang et al. (2004) with an
11x11 Gaussian window (sigma 1.5) averaged over the 'valid' part of the filtered maps only. Papers then
average per sequence and over sequences, so a long sequence does not outweigh a short one.

Everything runs in float64: a PSNR of 40 dB is an MSE of ~6.5 grey levels squared, summed over
hundreds of thousands of pixels, and SSIM subtracts nearly equal moments.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch

__all__ = ["rgb_to_y", "psnr", "ssim", "sequence_means", "mean_of_sequence_means", "to_uint8"]

# ITU-R BT.601 luma for [0, 1] RGB, studio range, as MATLAB's rgb2ycbcr: Y in [16, 235] / 255.
_Y_OFFSET = 16.0
_Y_FROM_RGB = (65.481, 128.553, 24.966)

# Wang et al. (2004) constants, with L = 255.
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8 on the CPU, clipped and rounded (halves to even) as `quantize` does below:
    exact for frames already on the 1/255 grid (every degradation's output is)."""
    return x.clamp(0, 1).mul(255).round_().to(torch.uint8).cpu()


def rgb_to_y(x_bchw: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB in [0, 1], shape (..., 3, H, W) -> (..., 1, H, W), in [16/255, 235/255].

    Not rounded: BasicSR measures the unrounded Y (MATLAB's rgb2ycbcr on uint8 would round it to
    8 bits; the two differ by ~0.01 dB).
    """
    if x_bchw.ndim < 3 or x_bchw.shape[-3] != 3:
        raise ValueError(f"rgb_to_y needs RGB images of shape (..., 3, H, W), got {tuple(x_bchw.shape)}")
    r, g, b = x_bchw.unbind(dim=-3)
    y = (_Y_OFFSET + _Y_FROM_RGB[0] * r + _Y_FROM_RGB[1] * g + _Y_FROM_RGB[2] * b) / 255
    return y.unsqueeze(-3)


def _prepare(sr_bchw: torch.Tensor, gt_bchw: torch.Tensor, crop_border: int, y_channel: bool,
             quantize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as float64 on the 0..255 scale, cropped, as Y or as all channels."""
    for name, x in (("sr", sr_bchw), ("gt", gt_bchw)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim != 4:
            raise ValueError(f"{name} must be a floating tensor (B, C, H, W) in [0, 1], got "
                             f"{type(x).__name__} {getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}")
    if sr_bchw.shape != gt_bchw.shape:
        raise ValueError(f"sr and gt shapes differ: {tuple(sr_bchw.shape)} vs {tuple(gt_bchw.shape)}")
    if isinstance(crop_border, bool) or not isinstance(crop_border, int) or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative integer, got {crop_border!r}")
    h, w = sr_bchw.shape[-2:]
    if 2 * crop_border >= min(h, w):
        raise ValueError(f"crop_border {crop_border} leaves nothing of a {h}x{w} image")
    out = []
    for x in (sr_bchw, gt_bchw):
        x = x.to(torch.float64)
        if quantize:
            # What a saved 8-bit PNG holds: clipped, then rounded (numpy's round, halves to even, as
            # BasicSR's tensor2img).
            x = torch.round(x.clamp(0, 1) * 255) / 255
        if y_channel:
            x = rgb_to_y(x)
        if crop_border:
            x = x[..., crop_border:h - crop_border, crop_border:w - crop_border]
        out.append(x * 255)
    return out[0], out[1]


def psnr(sr: torch.Tensor, gt: torch.Tensor, *, crop_border: int = 0, y_channel: bool = True,
         quantize: bool = False) -> torch.Tensor:
    """Per-image PSNR in dB, shape (B,) float64, of (B, C, H, W) images in [0, 1].

    Peak 255 on the 0..255 scale, MSE over all pixels (and all channels when `y_channel` is False).
    `y_channel` measures the BT.601 luma (needs C = 3). `crop_border` drops that many pixels on every
    side (papers crop the scale factor). `quantize` first clips and rounds both images to 8-bit
    levels, to score what a saved PNG would score. Identical images give +inf.
    """
    sr_255, gt_255 = _prepare(sr, gt, crop_border, y_channel, quantize)
    mse = (sr_255 - gt_255).square().flatten(1).mean(dim=1)
    # mse == 0 gives 255**2 / 0 = inf, and log10(inf) = inf: no special case needed.
    return 10 * torch.log10(255.0**2 / mse)


def _gaussian_window_1d() -> list[float]:
    # The same taps as OpenCV's getGaussianKernel(11, 1.5) (BasicSR) and scipy's gaussian_filter with
    # truncate=3.5 (scikit-image): exp(-d^2 / 2 sigma^2) for d = -5..5, normalised to sum 1.
    d = torch.arange(_SSIM_WINDOW, dtype=torch.float64) - _SSIM_WINDOW // 2
    g = torch.exp(-(d**2) / (2 * _SSIM_SIGMA**2))
    return (g / g.sum()).tolist()


def _filter_valid(x: torch.Tensor, taps: list[float], dim: int) -> torch.Tensor:
    """Correlate along `dim` with `taps`, keeping only positions where the window fits ('valid').

    A sum of shifted slices rather than conv2d: float64 depthwise conv2d is ~16x slower on CPU (1.7 s
    vs 0.1 s for 45 planes of 300x400), and this runs the same on any device.
    """
    n = x.shape[dim] - len(taps) + 1
    out = x.narrow(dim, 0, n) * taps[0]
    for k in range(1, len(taps)):
        out.add_(x.narrow(dim, k, n), alpha=taps[k])
    return out


def ssim(sr: torch.Tensor, gt: torch.Tensor, *, crop_border: int = 0, y_channel: bool = True,
         quantize: bool = False) -> torch.Tensor:
    """Per-image SSIM, shape (B,) float64, of (B, C, H, W) images in [0, 1] (Wang et al. 2004).

    11x11 Gaussian window with sigma 1.5 (applied separably), K1 = 0.01, K2 = 0.03, L = 255; the SSIM
    map is averaged over the 'valid' region only (5 pixels inside the cropped image on each side), as
    MATLAB's ssim_index and BasicSR. With `y_channel` False, the mean of the per-channel SSIMs. `crop_border` and
    `quantize` as in `psnr`. The cropped image must be at least 11x11.
    """
    x, y = _prepare(sr, gt, crop_border, y_channel, quantize)
    b, c, h, w = x.shape
    if min(h, w) < _SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels after cropping, got {h}x{w}")
    # The five local moments of every (image, channel) plane, filtered together; the Gaussian is
    # separable, so rows then columns.
    planes = torch.stack([x, y, x * x, y * y, x * y])
    taps = _gaussian_window_1d()
    planes = _filter_valid(_filter_valid(planes, taps, dim=-2), taps, dim=-1)
    mu_x, mu_y, e_xx, e_yy, e_xy = planes.unbind(dim=0)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov_xy = e_xy - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + _C1) * (2 * cov_xy + _C2)) / (
        (mu_x * mu_x + mu_y * mu_y + _C1) * (var_x + var_y + _C2))
    return ssim_map.reshape(b, c, -1).mean(dim=2).mean(dim=1)


def sequence_means(seq_ids: torch.Tensor | Sequence[Hashable],
                   values: torch.Tensor | Sequence[float]) -> dict[Hashable, float]:
    """Mean value per sequence from per-frame rows (seq_ids[i], values[i]), in first-seen order.

    Ids may be a tensor (ints come back as Python ints) or any hashables, e.g. sequence names. Feed
    the result's values to a plain mean for the papers' mean of sequence means.
    """
    ids = seq_ids.tolist() if isinstance(seq_ids, torch.Tensor) else list(seq_ids)
    vals = values.tolist() if isinstance(values, torch.Tensor) else list(values)
    if len(ids) != len(vals):
        raise ValueError(f"{len(ids)} sequence ids but {len(vals)} values: one id per value")
    if any(isinstance(v, list) for v in vals):
        raise ValueError("values must be one number per frame (a 1-D tensor or a list of floats)")
    grouped: dict[Hashable, list[float]] = {}
    for i, v in zip(ids, vals):
        grouped.setdefault(i, []).append(float(v))
    return {i: sum(vs) / len(vs) for i, vs in grouped.items()}


def mean_of_sequence_means(values_by_sequence: Mapping[str, Sequence[float]]) -> float:
    """The papers' average: the mean of each sequence's frames, then the mean over sequences.

    Every sequence weighs the same however many frames it has, so this is not the mean over all frames.
    A +inf PSNR (a perfect frame) makes the result +inf.
    """
    if not values_by_sequence:
        raise ValueError("no sequences to average")
    means = []
    for name, vals in values_by_sequence.items():
        vals = [float(v) for v in vals]
        if not vals:
            raise ValueError(f"sequence {name!r} has no values")
        means.append(sum(vals) / len(vals))
    return sum(means) / len(means)
