"""HybridLoss: each part measures what its name says, weights apply per call."""

import torch

from vsrpp_dist.model.loss import HybridLoss, LossWeights


def test_parts_and_weighted_total():
    torch.manual_seed(0)
    gt = torch.rand(2, 3, 24, 24)
    sr = gt + 0.1 * torch.randn_like(gt)
    loss = HybridLoss()
    a = loss(sr, gt, LossWeights(1.0, 0.0, 0.0))
    assert torch.allclose(a["total"], (sr - gt).abs().mean())
    b = loss(sr, gt, LossWeights(0.5, 2.0, 3.0))
    assert torch.allclose(b["total"], 0.5 * b["l1"] + 2.0 * b["ms"] + 3.0 * b["grad"])
    for key in ("l1", "ms", "grad", "total", "sharpness"):
        assert b[key].ndim == 0


def test_multiscale_ignores_high_frequency_noise_that_l1_sees():
    gt = torch.full((1, 3, 16, 16), 0.5)
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 0.2 - 0.1
    sr = gt + checker  # zero-mean at 2x2: invisible at half resolution
    parts = HybridLoss()(sr, gt, LossWeights(1, 1, 1))
    assert parts["l1"] > 0.09
    assert parts["ms"] < 1e-6


def test_gradient_loss_sees_blur_and_sharpness_drops_below_one():
    torch.manual_seed(1)
    gt = torch.rand(1, 3, 32, 32)
    blurred = torch.nn.functional.avg_pool2d(gt, 3, stride=1, padding=1, count_include_pad=False)
    parts = HybridLoss()(blurred, gt, LossWeights(1, 1, 1))
    same = HybridLoss()(gt, gt, LossWeights(1, 1, 1))
    assert parts["grad"] > 0.05 and same["grad"] == 0
    assert parts["sharpness"] < 0.7
    assert torch.isclose(same["sharpness"], torch.tensor(1.0))


def test_backward_flows_and_bf16_input_is_accepted():
    gt = torch.rand(1, 3, 12, 12)
    sr = torch.rand(1, 3, 12, 12, requires_grad=True)
    HybridLoss()(sr.bfloat16(), gt, LossWeights(1, 0.5, 0.1))["total"].backward()
    assert sr.grad is not None and torch.isfinite(sr.grad).all()
