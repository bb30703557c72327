"""VSRBidirectional_3x: shapes, size, and the centre-frame start of both propagation branches."""

import pytest
import torch

from vsrpp_dist.config import load_config
from vsrpp_dist.model.architecture import VSRBidirectional_3x, build_model, conv_flops_per_clip, count_parameters
from vsrpp_dist.training.wrapping import set_activation_checkpointing

from ..helpers import ROOT


def tiny_model():
    torch.manual_seed(0)
    return VSRBidirectional_3x(channels=8, extract_blocks=1, propagation_blocks=1, reconstruction_blocks=1,
                               upsample_channels=8)


def test_default_config_has_8_to_12_million_parameters():
    n = count_parameters(build_model(load_config(ROOT / "configs" / "default.yaml").model))
    assert 8_000_000 <= n <= 12_000_000, n


def test_width_and_depth_come_from_the_config():
    small = count_parameters(build_model(load_config(None, ["model.channels=16"]).model))
    deeper = count_parameters(build_model(load_config(None, ["model.channels=16", "model.propagation_blocks=12"]).model))
    assert deeper > small


def test_output_is_the_centre_frame_times_three():
    model = tiny_model()
    lr = torch.rand(2, 5, 3, 10, 14)
    assert model(lr).shape == (2, 3, 30, 42)
    with pytest.raises(ValueError, match="5 frames"):
        model(torch.rand(1, 4, 3, 8, 8))


def test_both_branches_start_from_the_centre_frame_features():
    """The state entering the first step of each branch equals frame 3's features and is not zeros;
    the branches then walk F3->F4->F5 (backward) and F3->F2->F1 (forward)."""
    model = tiny_model()
    lr = torch.rand(1, 5, 3, 8, 8)
    features = {}
    calls = {"backward_branch": [], "forward_branch": []}
    model.feature_extractor.register_forward_hook(lambda m, i, o: features.setdefault("all", o.detach().clone()))
    for name in calls:
        getattr(model, name).register_forward_pre_hook(
            lambda m, args, name=name: calls[name].append((args[0].detach().clone(), args[1].detach().clone())))
    model(lr)
    feats = features["all"].view(1, 5, *features["all"].shape[1:])
    centre = feats[:, 2]
    assert centre.abs().sum() > 0
    for name in calls:
        first_neighbour, first_state = calls[name][0]
        assert torch.equal(first_state, centre), f"{name} does not start from frame 3"
        assert first_state.abs().sum() > 0
    # which neighbours each branch visits, in order
    assert [torch.equal(n, feats[:, 3]) for n, _ in calls["backward_branch"]][0]
    assert torch.equal(calls["backward_branch"][1][0], feats[:, 4])
    assert torch.equal(calls["forward_branch"][0][0], feats[:, 1])
    assert torch.equal(calls["forward_branch"][1][0], feats[:, 0])


def test_zero_detail_leaves_the_bicubic_residual():
    """With the last conv zeroed the model outputs the bicubic upscale of the centre frame."""
    model = tiny_model()
    last = model.upsampler[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    lr = torch.rand(1, 5, 3, 6, 6)
    expected = torch.nn.functional.interpolate(lr[:, 2], scale_factor=3, mode="bicubic", align_corners=False)
    assert torch.allclose(model(lr), expected)


def test_activation_checkpointing_keeps_outputs_and_gradients():
    model = tiny_model()
    lr = torch.rand(2, 5, 3, 8, 8)
    out_plain = model(lr)
    out_plain.sum().backward()
    grads_plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    set_activation_checkpointing(model, True)
    keys = set(model.state_dict())
    out_ckpt = model(lr)
    out_ckpt.sum().backward()
    assert torch.allclose(out_plain, out_ckpt)
    for a, p in zip(grads_plain, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)
    assert set(model.state_dict()) == keys  # checkpoints stay interchangeable
    set_activation_checkpointing(model, False)
    assert "forward" not in model.backward_branch.__dict__


def test_flop_count_matches_a_hand_count():
    model = VSRBidirectional_3x(channels=4, extract_blocks=0, propagation_blocks=1, reconstruction_blocks=0,
                                upsample_channels=3)
    h = w = 5
    c = 4
    conv = lambda cin, cout, hh=h, ww=w: 2 * 9 * cin * cout * hh * ww  # noqa: E731
    expected = 5 * conv(3, c)  # conv_in on 5 frames
    expected += 4 * (conv(2 * c, c) + 2 * conv(c, c))  # 2 branches x 2 steps: fuse + one block
    expected += conv(3 * c, c)  # fusion
    expected += conv(c, 3 * 9)  # upsampler conv before the pixel shuffle
    expected += conv(3, 3, 3 * h, 3 * w)  # last conv at full resolution
    assert conv_flops_per_clip(model, h, w) == expected
