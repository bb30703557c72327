"""tOF (TecoGAN's Farneback definition) and the temporal difference error: zero where the output
changes over time exactly as the GT does, growing with flicker the GT does not have."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsrpp_dist.temporal_metrics import NotEnoughFrames, farneback_flow, grey, sequence_tde, sequence_tof, tof_crop


def panning_clip(frames: int = 6, hw: tuple[int, int] = (96, 120), seed: int = 0) -> torch.Tensor:
    """(N, 3, H, W) uint8: a smooth random texture moving 2 px right per frame (real motion for the flow)."""
    rng = np.random.default_rng(seed)
    h, w = hw
    big = rng.random((h // 4 + 2, (w + 2 * frames) // 4 + 2, 3))
    big = np.kron(big, np.ones((4, 4, 1)))  # blocky texture with edges Farneback can follow
    out = [big[:h, 2 * t:2 * t + w] for t in range(frames)]
    return torch.from_numpy((np.stack(out) * 255).round().astype(np.uint8)).permute(0, 3, 1, 2).contiguous()


def with_flicker(clip: torch.Tensor, amplitude: int) -> torch.Tensor:
    """Every other frame brightened by `amplitude` grey levels in a square patch: flicker the GT lacks."""
    out = clip.clone().to(torch.int16)
    out[1::2, :, 20:60, 30:80] += amplitude
    return out.clamp(0, 255).to(torch.uint8)


def test_tof_of_a_sequence_against_itself_is_zero_and_grows_with_flicker():
    gt = panning_clip()
    assert sequence_tof(gt, gt) == [0.0] * 5
    small, large = np.mean(sequence_tof(with_flicker(gt, 20), gt)), np.mean(sequence_tof(with_flicker(gt, 80), gt))
    assert 0 < small < large


def test_tof_is_teco_gans_definition():
    gt, out = panning_clip(3), with_flicker(panning_clip(3), 40)
    g = [grey(f.permute(1, 2, 0).numpy()) for f in gt]
    o = [grey(f.permute(1, 2, 0).numpy()) for f in out]
    # OpenCV's grey: 0.299 R + 0.587 G + 0.114 B, rounded
    expected_grey = (gt[0].double() * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)[:, None, None]).sum(0)
    assert np.abs(g[0].astype(float) - expected_grey.numpy()).max() <= 1
    rows, cols = tof_crop(96, 120)
    assert (rows, cols) == (slice(16, 80), slice(12, 108))  # 64 x 96: multiples of 32, >= 16 px less, centred
    diff = farneback_flow(o[0], o[1]) - farneback_flow(g[0], g[1])
    expected = np.sqrt((diff[rows, cols].astype(np.float64) ** 2).sum(-1)).mean()
    assert sequence_tof(out, gt)[0] == pytest.approx(expected, rel=1e-6)
    assert tof_crop(40, 40) == (slice(0, 40), slice(0, 40))  # too small for the crop: the whole frame


def test_tde_of_a_constant_offset_is_zero_and_flicker_scores_above():
    gt = (panning_clip().to(torch.int16) // 2 + 20).to(torch.uint8)  # levels 20..147: room for an offset
    offset = (gt.to(torch.int16) + 30).to(torch.uint8)  # brighter by 30 levels in every frame, nothing clipped
    assert sequence_tde(gt, gt) == [0.0] * 5
    assert sequence_tde(offset, gt) == pytest.approx([0.0] * 5, abs=1e-9)
    flicker = with_flicker(gt, 30)
    assert min(sequence_tde(flicker, gt)) > 1
    assert np.mean(sequence_tde(flicker, gt)) > np.mean(sequence_tde(with_flicker(gt, 10), gt))


def test_one_frame_has_no_temporal_metric():
    one = panning_clip(1)
    with pytest.raises(NotEnoughFrames, match="at least 2 frames, got 1"):
        sequence_tof(one, one)
    with pytest.raises(NotEnoughFrames):
        sequence_tde(one, one)
