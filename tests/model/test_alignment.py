"""Explicit alignment (model.alignment = flow | flow_deform): warping, the deformable conv, the flow
warm-up, compatibility with implicit checkpoints, tiling with the wider receptive field, training and
exact resume with the alignment's own parameter group and warm-up."""

from __future__ import annotations

import math
import signal

import pytest
import torch
import torch.nn.functional as F

from vsrpp_dist.config import ALIGNMENTS, ConfigError, ModelConfig, load_config
from vsrpp_dist.inference.clip_upscaler import ClipUpscaler
from vsrpp_dist.inference.loading import LoadedModel, alignment_of_weights, load_model, model_config_from_dict
from vsrpp_dist.inference.tiles import tile_spans
from vsrpp_dist.model.receptive_field import receptive_radius, tile_multiple
from vsrpp_dist.model.alignment import (
    ALIGNMENTS as MODEL_ALIGNMENTS,
    FlowGuidedDeformAlign,
    FlowNet,
    compose_flows,
    deform_conv2d,
    deform_conv2d_by_sampling,
    flow_warp,
    neighbour_pairs,
    photometric_loss,
)
from vsrpp_dist.model.architecture import alignment_parameters, build_model, conv_flops_per_clip, count_parameters
from vsrpp_dist.model.loss import photometric_weight_at
from vsrpp_dist.training.checkpoint import CheckpointError
from vsrpp_dist.training.run_dir import StartRequest
from vsrpp_dist.training.trainer import Trainer
from vsrpp_dist.training.wrapping import set_activation_checkpointing

from ..helpers import (
    FIXTURES,
    ROOT,
    make_config,
    read_scalars,
    sigterm_after_step,
    train,
)

# a small flow_deform model the tests can train in seconds
SMALL_ALIGNED = ("model.alignment=flow_deform", "model.flow_channels=4", "model.flow_levels=2", "model.max_flow=4",
                 "model.deform_groups=2", "model.max_residue=2")


def small_model_cfg(alignment="flow_deform", **extra) -> ModelConfig:
    values = dict(channels=8, extract_blocks=1, propagation_blocks=1, reconstruction_blocks=1, upsample_channels=8,
                  alignment=alignment, flow_channels=4, flow_levels=2, max_flow=4.0, deform_groups=2, max_residue=2.0)
    values.update(extra)
    return ModelConfig(**values)


def smooth_texture(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(1, 3, h, w) in [0, 1]: random noise blurred to a few pixels, so a shift is locally visible."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 3, h // 4 + 3, w // 4 + 3, generator=g)
    big = F.interpolate(noise, size=(h + 12, w + 12), mode="bicubic", align_corners=False)
    return big[..., 6:6 + h, 6:6 + w].clamp(0, 1)


# -- warping and the deformable conv -----------------------------------------------------------------


def test_zero_flow_warp_is_the_identity_and_integer_flow_is_a_shift():
    x = torch.rand(2, 5, 9, 11)
    assert torch.allclose(flow_warp(x, torch.zeros(2, 2, 9, 11)), x, atol=1e-6)
    flow = torch.zeros(2, 2, 9, 11)
    flow[:, 0] = 2  # x + 2: every pixel takes the value two columns to its right
    shifted = flow_warp(x, flow)
    assert torch.allclose(shifted[..., :-2], x[..., 2:], atol=1e-5)
    assert shifted[..., -2:].abs().max() == 0  # sampled outside the image: zero
    # a flow composed with zero is itself, and two shifts add up
    assert torch.allclose(compose_flows(flow, torch.zeros_like(flow)), flow)
    assert torch.allclose(compose_flows(flow, flow)[..., :-2], 2 * flow[..., :-2])


def test_deformable_conv_by_sampling_equals_torchvision():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 7, 9, dtype=torch.float64)
    offset = 2.5 * torch.randn(2, 18 * 4, 7, 9, dtype=torch.float64)  # 4 offset groups, taps reaching outside
    mask = torch.rand(2, 9 * 4, 7, 9, dtype=torch.float64)
    weight = torch.randn(6, 8, 3, 3, dtype=torch.float64)
    bias = torch.randn(6, dtype=torch.float64)
    ours = deform_conv2d_by_sampling(x, offset, weight, bias, padding=1, mask=mask)
    theirs = deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)
    assert ours.shape == theirs.shape == (2, 6, 7, 9)
    assert (ours - theirs).abs().max().item() < 1e-9


def test_deformable_alignment_starts_as_the_flow_guided_conv():
    """Zero-initialised offsets: the deformable conv samples each tap at the flow, mask 0.5. With zero
    flow that is an ordinary 3x3 conv (halved), with an integer flow the same conv of the shifted state.
    The call also returns the mean absolute offset it sampled at (the training logs' `offset_mean`)."""
    torch.manual_seed(0)
    align = FlowGuidedDeformAlign(channels=4, deform_groups=2, max_residue=3.0)
    state, neighbour = torch.rand(1, 4, 10, 12), torch.rand(1, 4, 10, 12)
    zero = torch.zeros(1, 2, 10, 12)
    expected = 0.5 * F.conv2d(state, align.weight, padding=1) + align.bias.view(1, -1, 1, 1)
    aligned, offset_abs_mean = align(state, neighbour, zero)
    assert torch.allclose(aligned, expected, atol=1e-5)
    assert offset_abs_mean == 0
    flow = zero.clone()
    flow[:, 1] = -1  # y - 1
    shifted = 0.5 * F.conv2d(flow_warp(state, flow), align.weight, padding=1) + align.bias.view(1, -1, 1, 1)
    aligned, offset_abs_mean = align(state, neighbour, flow)
    # (the bottom row differs: the conv of the warped state pads there, the deformable taps sample real rows)
    assert torch.allclose(aligned[..., :-1, :], shifted[..., :-1, :], atol=1e-5)
    assert offset_abs_mean == 0.5  # every tap's (dy, dx) = (-1, 0)
    assert not offset_abs_mean.requires_grad


def test_an_untrained_flow_model_aligns_by_the_identity():
    """Flow and offsets start at zero: the flow variant is then the implicit model's computation."""
    torch.manual_seed(0)
    model = build_model(small_model_cfg("flow"))
    lr = torch.rand(2, 5, 3, 8, 12)
    flows = model._flows(lr)
    assert all(f.abs().max() == 0 for f in flows.values())
    _, report = model(lr, with_alignment=True)
    assert report["flow_magnitude"] == 0
    assert sorted(flows) == sorted(neighbour_pairs(5))


def test_alignment_is_inside_each_propagation_step_on_the_centre_out_walk():
    """The walk stays F3 -> F4 -> F5 and F3 -> F2 -> F1, each step gets the flow from the frame it
    absorbs back to the previous one, and both branches still start from frame 3's features."""
    torch.manual_seed(0)
    model = build_model(small_model_cfg("flow_deform"))
    lr = torch.rand(1, 5, 3, 8, 8)
    seen = {"backward_branch": [], "forward_branch": []}
    for name in seen:
        getattr(model, name).register_forward_pre_hook(lambda m, args, name=name: seen[name].append(args))
    features = {}
    model.feature_extractor.register_forward_hook(lambda m, i, o: features.setdefault("all", o.detach()))
    flows = model._flows(lr)
    model(lr)
    feats = features["all"].view(1, 5, *features["all"].shape[1:])
    assert torch.equal(seen["backward_branch"][0][1], feats[:, 2])
    assert torch.equal(seen["forward_branch"][0][1], feats[:, 2])
    assert [torch.equal(args[0], feats[:, i]) for args, i in zip(seen["backward_branch"], (3, 4))] == [True, True]
    assert [torch.equal(args[0], feats[:, i]) for args, i in zip(seen["forward_branch"], (1, 0))] == [True, True]
    assert torch.equal(seen["backward_branch"][0][2], flows[(3, 2)])
    assert torch.equal(seen["backward_branch"][1][2], flows[(4, 3)])
    assert torch.equal(seen["forward_branch"][1][2], flows[(0, 1)])


# -- the flow warm-up --------------------------------------------------------------------------------


def test_photometric_warm_up_recovers_a_known_global_shift():
    """Two frames of one texture, the second moved by (dx, dy) = (2, -1) LR pixels: the photometric loss
    alone teaches a from-scratch flow net that motion within 150 steps on a CPU."""
    torch.manual_seed(0)
    big = smooth_texture(48 + 8, 48 + 8, seed=3)
    ref = big[..., 4:52, 4:52]
    supp = big[..., 5:53, 2:50]  # supp(x) = big(x + (-2, +1)) => ref(x) = supp(x + (2, -1))
    net = FlowNet(channels=8, levels=3, max_flow=8.0)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    frames = torch.stack([ref, supp], dim=1)
    before = (supp - ref).abs().mean().item()
    for _ in range(150):
        flow = net(ref, supp)
        loss = photometric_loss(frames, {(0, 1): flow})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        flow = net(ref, supp)
        after = (flow_warp(supp, flow, padding_mode="border") - ref)[..., 6:-6, 6:-6].abs().mean().item()
        mean_flow = flow[..., 6:-6, 6:-6].mean(dim=(0, 2, 3))
    assert after < 0.3 * before, (before, after)
    assert abs(mean_flow[0].item() - 2) < 0.5 and abs(mean_flow[1].item() + 1) < 0.5, mean_flow


def test_photometric_weight_fades_out_as_a_function_of_the_step():
    cfg = load_config(None, ["alignment_training.photometric_weight=0.2",
                             "alignment_training.photometric_steps=100"]).alignment_training
    assert photometric_weight_at(0, cfg) == pytest.approx(0.2)
    assert photometric_weight_at(50, cfg) == pytest.approx(0.1)
    assert photometric_weight_at(100, cfg) == photometric_weight_at(5000, cfg) == 0.0
    no_warm_up = load_config(None, ["alignment_training.photometric_steps=0"]).alignment_training
    assert photometric_weight_at(0, no_warm_up) == 0.0


# -- size, FLOPs, configuration ------------------------------------------------------------------------


def test_default_config_has_8_to_12_million_parameters_with_its_alignment():
    cfg = load_config(ROOT / "configs" / "default.yaml").model
    model = build_model(cfg)
    assert 8_000_000 <= count_parameters(model) <= 12_000_000
    if cfg.alignment != "implicit":
        assert sum(p.numel() for p in model.flow_net.parameters()) > 0  # counted in the figure above


def test_flop_count_includes_the_alignment_layers():
    """flow_deform minus flow is exactly the two branches' offset convs and deformable convs (counted by
    their formulas) minus the one flow warp each of its steps replaces."""
    torch.manual_seed(0)
    flow = build_model(small_model_cfg("flow"))
    deform = build_model(small_model_cfg("flow_deform"))
    h, w, c, g = 6, 7, 8, 2
    per_step = (2 * 9 * (2 * c + 2) * c + 2 * 9 * c * 27 * g   # offset predictor convs
                + 8 * c                                          # its flow warp of the state
                + 2 * 9 * c * c + 9 * c * 9                      # the deformable conv
                - 8 * c)                                         # the flow warp it replaces
    steps = 4  # 2 branches x 2 steps
    assert conv_flops_per_clip(deform, h, w) - conv_flops_per_clip(flow, h, w) == steps * per_step * h * w
    implicit = build_model(small_model_cfg("implicit"))
    assert conv_flops_per_clip(flow, h, w) > conv_flops_per_clip(implicit, h, w)


def test_a_forward_returns_what_it_computed_and_records_only_into_the_log_it_is_given():
    """The model keeps nothing of a call: the deformable steps' offset sizes come back through the
    propagation cells' return values into the report, and the samplings the FLOP count needs go to the
    list the caller passes (none without one)."""
    torch.manual_seed(0)
    model = build_model(small_model_cfg("flow_deform"))
    with torch.no_grad():
        for p in model.parameters():  # off the zero start, so the offsets differ per step
            p.add_(0.05 * torch.randn_like(p))
    returned = []
    for branch in (model.backward_branch, model.forward_branch):
        branch.register_forward_hook(lambda module, inputs, output: returned.append(output[1]))
    b, h, w, c = 2, 8, 12, 8
    lr = torch.rand(b, 5, 3, h, w)
    log = []
    with torch.no_grad():
        _, report = model(lr, with_alignment=True, sampling_log=log)
    assert len(returned) == 4 and len(set(returned)) > 1  # 2 branches x 2 steps, each its own
    assert report["offset_mean"] == torch.stack(returned).mean()
    assert [sizes for kind, sizes in log if kind == "deform"] == [(b, c, c, h, w)] * 4
    flow_levels, steps, composed, back_to_centre = 2, 4, 2, 2
    assert sum(kind == "bilinear" for kind, _ in log) == flow_levels + steps + composed + back_to_centre
    recorded = list(log)
    with torch.no_grad():
        again = model(lr, with_alignment=True)[1]
    assert log == recorded  # a call without a log records nowhere
    assert again["offset_mean"] == report["offset_mean"]  # nothing carried over from the first call


def test_alignment_settings_are_validated():
    with pytest.raises(ConfigError, match="model.alignment: 'optical' is not one of implicit, flow, flow_deform"):
        load_config(None, ["model.alignment=optical"])
    with pytest.raises(ConfigError, match="model.deform_groups: 3 does not divide model.channels 128"):
        load_config(None, ["model.alignment=flow_deform", "model.deform_groups=3"])
    with pytest.raises(ConfigError, match="alignment_training.lr_factor"):
        load_config(None, ["alignment_training.lr_factor=-1"])


def test_the_alignment_is_data_with_one_list():
    """The config's list is the one the program asks (choices, keys, properties); the model, which imports
    only torch, guards the same names; a variant's properties decide what is built."""
    assert tuple(ALIGNMENTS) == MODEL_ALIGNMENTS
    kinds = {name: (ModelConfig(alignment=name).explicit_alignment, ModelConfig(alignment=name).deformable_alignment)
             for name in ALIGNMENTS}
    assert kinds == {"implicit": (False, False), "flow": (True, False), "flow_deform": (True, True)}
    with pytest.raises(ConfigError, match="alignment: 'optical' is not one of implicit, flow, flow_deform"):
        ModelConfig(alignment="optical")
    for name in ALIGNMENTS:
        model = build_model(small_model_cfg(name))
        assert hasattr(model, "flow_net") == ModelConfig(alignment=name).explicit_alignment
        assert alignment_of_weights(model.state_dict()) == name


def test_a_model_config_is_built_from_a_dict_and_checked_as_on_load():
    built = model_config_from_dict({"channels": 16, "alignment": "flow", "max_flow": 8}, "ckpt")
    assert built == load_config(None, ["model.channels=16", "model.alignment=flow", "model.max_flow=8"]).model
    assert model_config_from_dict({"channels": 16}, "old").alignment == "implicit"  # predates the key
    with pytest.raises(CheckpointError, match="model.deform_groups: 3 does not divide model.channels 16"):
        model_config_from_dict({"channels": 16, "alignment": "flow_deform", "deform_groups": 3}, "ckpt")
    with pytest.raises(CheckpointError, match="model.colour: unknown key"):
        model_config_from_dict({"colour": "blue"}, "ckpt")


def test_flow_and_offset_parameters_form_their_own_group():
    model = build_model(small_model_cfg("flow_deform"))
    names = {id(p): n for n, p in model.named_parameters()}
    aligned = {names[id(p)] for p in alignment_parameters(model)}
    assert aligned and all(n.startswith("flow_net.") or ".align.conv_offset." in n for n in aligned)
    assert any(n.startswith("flow_net.") for n in aligned) and any("conv_offset" in n for n in aligned)
    assert not alignment_parameters(build_model(small_model_cfg("implicit")))


def test_bf16_autocast_and_activation_checkpointing_keep_working():
    torch.manual_seed(0)
    model = build_model(small_model_cfg("flow_deform"))
    lr = torch.rand(2, 5, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sr, report = model(lr, with_alignment=True)
    (sr.float().mean() + report["photometric"]).backward()
    assert torch.isfinite(sr.float()).all() and all(torch.isfinite(p.grad).all() for p in model.parameters()
                                                      if p.grad is not None)
    plain = model(lr)
    set_activation_checkpointing(model, True)
    assert torch.allclose(model(lr), plain, atol=1e-6)
    model = model.to(memory_format=torch.channels_last)
    assert torch.allclose(model(lr), plain, atol=1e-5)


def test_auto_tune_trials_an_aligned_model():
    from vsrpp_dist.model.loss import LossWeights
    from vsrpp_dist.training.autotune import Candidate, CudaStepProbe

    probe = CudaStepProbe(small_model_cfg("flow_deform"), LossWeights(1.0, 0.5, 0.1), 8, "bf16", "cpu", trial_steps=1)
    for candidate in (Candidate(2, True, False), Candidate(2, False, True)):
        trial = probe(candidate)
        assert trial.fits and trial.error is None and trial.s_per_iter > 0


# -- old checkpoints ---------------------------------------------------------------------------------


def test_implicit_weights_from_before_alignment_existed_load_and_give_the_same_output():
    """tests/fixtures/implicit_v0_1_0_tiny.pt was exported by the code before `model.alignment` existed
    (tiny config, seed 0), with an input and the output that code gave for it."""
    fixture = FIXTURES / "implicit_v0_1_0_tiny.pt"
    payload = torch.load(fixture, weights_only=True)
    assert "alignment" not in payload["model_config"]
    loaded = load_model(fixture, torch.device("cpu"))
    assert loaded.model_cfg.alignment == "implicit"
    with torch.no_grad():
        output = loaded.model(payload["test_input"])
    # The same computation; only the CPU's convolution kernels (vector width, summation order) may
    # differ from the machine that wrote the fixture: float32 rounding, nothing more.
    assert (output - payload["test_output"]).abs().max() <= 1e-6
    # the same seed still draws the same initial weights, bit for bit
    torch.manual_seed(0)
    fresh = build_model(load_config(ROOT / "configs" / "tiny.yaml", ["model.alignment=implicit"]).model)
    assert fresh.state_dict().keys() == payload["state_dict"].keys()
    assert all(torch.equal(v, payload["state_dict"][k]) for k, v in fresh.state_dict().items())


# -- tiles and the receptive field -------------------------------------------------------------------


def moving_flow_model(alignment: str, seed: int = 0, **extra):
    """A small aligned model with random (not zero) last flow layers and offset convs, so flows and
    offsets are large and reach the max_flow clamp somewhere."""
    torch.manual_seed(seed)
    cfg = small_model_cfg(alignment, **extra)
    model = build_model(cfg).double().eval()
    with torch.no_grad():
        for level in model.flow_net.levels:
            level.out.weight.normal_(0, 0.5)
            level.out.bias.normal_(0, 0.5)
        for branch in (model.backward_branch, model.forward_branch):
            if hasattr(branch, "align"):
                branch.align.conv_offset[-1].weight.normal_(0, 0.3)
    return cfg, model


@pytest.mark.slow
@pytest.mark.parametrize("alignment", ["flow", "flow_deform"])
def test_tiled_equals_untiled_with_flow_alignment(alignment):
    cfg, model = moving_flow_model(alignment, max_flow=2.0)
    model = model.float()
    radius = receptive_radius(cfg)
    loaded = LoadedModel(model, cfg, "test", 0, False)
    torch.manual_seed(2)
    tile = 40
    size = tile + 2 * radius + 1  # odd, not a multiple of the pyramid's 2; tiles need context on both sides
    lr = torch.rand(1, 5, 3, size, size)
    upscaler = ClipUpscaler(loaded, torch.device("cpu"))
    whole = upscaler(lr)
    assert model(lr, with_alignment=True)[1]["flow_magnitude"] > 1.0  # the flows really move things
    spans = tile_spans(size, tile, radius, tile_multiple(cfg))
    assert len(spans) > 1 and all(s.in_start % 2 == 0 for s in spans)
    upscaler.tile = tile
    # equal up to float32 rounding (the warps run in float32; convolution algorithms vary with the size)
    assert (upscaler(lr) - whole).abs().max().item() < 1e-6
    # the overlap is what makes them equal
    upscaler.radius = 3
    assert (upscaler(lr) - whole).abs().max().item() > 1e-4


@pytest.mark.parametrize("alignment", ["flow", "flow_deform"])
def test_receptive_radius_bounds_the_gradient_support_with_flow(alignment):
    cfg, model = moving_flow_model(alignment, seed=1)
    radius = receptive_radius(cfg)
    size = 2 * radius + 9
    q = size // 2
    lr = torch.rand(1, 5, 3, size, size, dtype=torch.float64, requires_grad=True)
    sr = model(lr)
    (grad,) = torch.autograd.grad(sr[0, :, 3 * q + 1, 3 * q + 1].sum(), lr)
    support = grad.abs().sum(dim=(0, 1, 2)).nonzero()
    assert support[:, 0].min() >= q - radius and support[:, 0].max() <= q + radius
    assert support[:, 1].min() >= q - radius and support[:, 1].max() <= q + radius
    assert support[:, 1].max() - q > receptive_radius(small_model_cfg("implicit"))  # the flows reach further


# -- training ----------------------------------------------------------------------------------------


def test_training_logs_the_alignment_and_warns_when_offsets_explode(train_shards, val_shards, tmp_path):
    run_dir = tmp_path / "run"
    trainer, code = train(make_config(run_dir, train_shards, val_shards, *SMALL_ALIGNED, "train.total_steps=4",
                                      "validation.every=0", "train.log_every=1", "alignment_training.lr_factor=0.5",
                                      "alignment_training.offset_warn_px=0.0"))
    assert code == 0
    groups = trainer.optimizer.param_groups
    slow = {id(p) for p in alignment_parameters(trainer.accelerator.unwrap_model(trainer.model))}
    full_lr = max(group["lr"] for group in groups)
    assert full_lr > 0
    for group, factor in zip(groups, trainer.lr_factors.at(trainer.state.step)):
        expected = 0.5 if id(group["params"][0]) in slow else 1.0
        assert factor == expected and group["lr"] == pytest.approx(expected * full_lr)
        assert all((id(p) in slow) == (expected == 0.5) for p in group["params"])
    for tag in ("Loss/Photometric", "Activity/Flow_Magnitude", "Activity/Offset_Mean", "Training/Photometric_Weight"):
        values = read_scalars(run_dir, tag)
        assert sorted(values) == [1, 2, 3, 4] and all(math.isfinite(v) for v in values.values()), tag
    assert read_scalars(run_dir, "Activity/Flow_Magnitude")[4] > 0  # the flow moved away from zero
    log = (run_dir / "training.log").read_text()
    assert log.count("alignment_training.offset_warn_px=0") == 1  # warned once while it stays above


def test_lr_factor_zero_freezes_the_alignment_without_touching_requires_grad(train_shards, val_shards, tmp_path):
    trainer, code = train(make_config(tmp_path / "run", train_shards, val_shards, *SMALL_ALIGNED,
                                      "train.total_steps=3", "validation.every=0", "alignment_training.lr_factor=0"))
    assert code == 0
    torch.manual_seed(0)
    initial = build_model(trainer.cfg.model).state_dict()
    trained = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    assert all(torch.equal(initial[k], trained[k]) for k in trained if k.startswith("flow_net."))
    assert any(not torch.equal(initial[k], trained[k]) for k in trained if k.startswith("fusion."))
    assert all(p.requires_grad for p in trainer.model.parameters())


def test_resume_is_exact_with_the_alignment_group_and_warm_up(train_shards, val_shards, tmp_path):
    """Stopped by SIGTERM at step 3 of 6 while the photometric warm-up is still fading, then resumed:
    every step's losses and the final weights equal an uninterrupted run's."""
    settings = (*SMALL_ALIGNED, "train.total_steps=6", "validation.every=0", "train.log_every=1",
                "alignment_training.photometric_steps=5", "alignment_training.lr_factor=2",
                "checkpoint.rolling_every=0", "checkpoint.regular_every=0")
    straight, code = train(make_config(tmp_path / "straight", train_shards, val_shards, *settings))
    assert code == 0

    interrupted = tmp_path / "interrupted"
    _, code = train(make_config(interrupted, train_shards, val_shards, *settings), patch=sigterm_after_step(3))
    assert code == 128 + signal.SIGTERM
    resumed, code = train(make_config(interrupted, train_shards, val_shards, *settings), StartRequest(resume="latest"))
    assert code == 0 and resumed.state.step == 6
    for tag in ("Loss/Total", "Loss/Photometric", "Training/Photometric_Weight", "Activity/Offset_Mean"):
        assert read_scalars(interrupted, tag) == read_scalars(tmp_path / "straight", tag), tag
    a = straight.accelerator.unwrap_model(straight.model).state_dict()
    b = resumed.accelerator.unwrap_model(resumed.model).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_of_another_alignment_is_refused_in_one_line(train_shards, val_shards, tmp_path):
    run_dir = tmp_path / "run"
    train(make_config(run_dir, train_shards, val_shards, "model.alignment=implicit", "train.total_steps=2",
                      "validation.every=0"))
    with pytest.raises(CheckpointError) as caught:
        Trainer(make_config(run_dir, train_shards, val_shards, *SMALL_ALIGNED), StartRequest(resume="latest"),
                interactive=False)
    message = str(caught.value)
    assert "\n" not in message
    assert "model.alignment is 'flow_deform' but the checkpoint was trained with 'implicit'" in message
    assert "model.alignment=implicit" in message
