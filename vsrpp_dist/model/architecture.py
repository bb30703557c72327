"""VSRBidirectional_3x: 5 LR frames in, the centre frame x3 out.

Per-frame features feed two propagation branches that both start from the centre frame's features:
the backward branch walks F3 -> F4 -> F5 and the forward branch F3 -> F2 -> F1 (frames numbered 1..5).
Starting from the centre instead of from zeros means the first recurrent step already aligns a
neighbour to the frame being restored, and the state never has to "warm up" from nothing. Fusion of
centre, backward and forward features, residual reconstruction, x3 pixel shuffle, plus the bicubic
upsampled centre frame as a global residual: the network only learns the detail bicubic misses.

Alignment (`model.alignment`): `implicit` leaves it to the convolutions over the concatenated
neighbour and state (the original model, unchanged); `flow` and `flow_deform` align the state to each
neighbour explicitly before absorbing it, with a flow network and a deformable convolution trained from
scratch (vsrpp_dist/model/alignment.py says how).

This module imports only torch (and torchvision.ops through alignment.py); precision, activation
checkpointing, DDP and compilation are applied from outside (see vsrpp_dist/training/wrapping.py).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .alignment import (
    ALIGNMENTS,
    FlowGuidedDeformAlign,
    FlowNet,
    SamplingLog,
    compose_flows,
    flow_warp,
    neighbour_pairs,
    photometric_loss,
)


class ResidualBlock(nn.Module):
    """conv-LeakyReLU-conv with identity skip and no normalisation (normalisation hurts SR)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        # Deep residual stacks train stably when each block starts close to the identity.
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.mul_(0.1)
                conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act(self.conv1(x)))


def residual_trunk(channels: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualBlock(channels) for _ in range(blocks)])


class FeatureExtractor(nn.Module):
    def __init__(self, channels: int, blocks: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.trunk = residual_trunk(channels, blocks)

    def forward(self, frames_nchw: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.act(self.conv_in(frames_nchw)))


class PropagationCell(nn.Module):
    """One recurrent step: align the propagated state to a neighbour (when a flow is given), then fold
    the neighbour's features into it. Returns the new state and, with a deformable alignment, its mean
    absolute offset (detached; None otherwise)."""

    def __init__(self, channels: int, blocks: int, align: nn.Module | None = None) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(2 * channels, channels, 3, padding=1)
        self.act = nn.LeakyReLU(0.1, inplace=True)
        self.trunk = residual_trunk(channels, blocks)
        if align is not None:  # registered only when used: implicit checkpoints keep their keys
            self.align = align

    def forward(self, neighbour: torch.Tensor, state: torch.Tensor, flow: torch.Tensor | None = None,
                sampling_log: SamplingLog | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        offset_abs_mean = None
        if flow is not None:
            if hasattr(self, "align"):
                state, offset_abs_mean = self.align(state, neighbour, flow, sampling_log)
            else:
                state = flow_warp(state, flow, sampling_log=sampling_log)
        return self.trunk(self.act(self.fuse(torch.cat([neighbour, state], dim=1)))), offset_abs_mean


class VSRBidirectional_3x(nn.Module):  # noqa: N801 - the name users know the architecture by
    scale = 3

    def __init__(self, channels: int = 128, extract_blocks: int = 5, propagation_blocks: int = 10,
                 reconstruction_blocks: int = 5, upsample_channels: int = 64, num_frames: int = 5,
                 alignment: str = "implicit", flow_channels: int = 32, flow_levels: int = 3, max_flow: float = 16.0,
                 deform_groups: int = 8, max_residue: float = 10.0) -> None:
        super().__init__()
        if num_frames % 2 != 1:
            raise ValueError(f"num_frames must be odd so a centre frame exists, got {num_frames}")
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {', '.join(ALIGNMENTS)}, got {alignment!r}")
        self.num_frames = num_frames
        self.alignment = alignment
        self.feature_extractor = FeatureExtractor(channels, extract_blocks)
        # Built in this order so that `implicit` draws its initial weights exactly as before alignment
        # existed (same seed, same weights); the flow net comes after everything else.
        aligners = [None, None]
        if alignment == "flow_deform":
            aligners = [FlowGuidedDeformAlign(channels, deform_groups, max_residue) for _ in range(2)]
        self.backward_branch = PropagationCell(channels, propagation_blocks, aligners[0])
        self.forward_branch = PropagationCell(channels, propagation_blocks, aligners[1])
        self.fusion = nn.Sequential(nn.Conv2d(3 * channels, channels, 3, padding=1), nn.LeakyReLU(0.1, inplace=True))
        self.reconstruction = residual_trunk(channels, reconstruction_blocks)
        self.upsampler = nn.Sequential(
            nn.Conv2d(channels, upsample_channels * self.scale**2, 3, padding=1),
            nn.PixelShuffle(self.scale),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(upsample_channels, 3, 3, padding=1),
        )
        if alignment != "implicit":
            self.flow_net = FlowNet(flow_channels, flow_levels, max_flow)

    def forward(self, lq_btchw: torch.Tensor, with_alignment: bool = False, sampling_log: SamplingLog | None = None):
        """(B, T, 3, h, w) -> (B, 3, 3h, 3w). With `with_alignment`, also a dict of what training needs
        from the alignment: `photometric` (a loss, with gradient), `flow_magnitude` and `offset_mean`
        (mean LR pixels, detached; zero where the variant has none). Given `sampling_log`, every bilinear
        sampling and deformable conv appends its size to it (`conv_flops_per_clip`)."""
        b, t, c, h, w = lq_btchw.shape
        if t != self.num_frames:
            raise ValueError(f"expected {self.num_frames} frames per clip, got {t}")
        feats_btchw = self.feature_extractor(lq_btchw.reshape(b * t, c, h, w)).view(b, t, -1, h, w)
        flows = self._flows(lq_btchw, sampling_log) if self.alignment != "implicit" else None
        return self.restore(lq_btchw, feats_btchw.unbind(1), flows, with_alignment, sampling_log)

    def restore(self, lq_btchw: torch.Tensor, feats: list[torch.Tensor] | tuple[torch.Tensor, ...],
                flows: dict[tuple[int, int], torch.Tensor] | None, with_alignment: bool = False,
                sampling_log: SamplingLog | None = None):
        """The rest of `forward` from what does not depend on which frame is the centre: `feats[i]`, the
        (B, C, h, w) features of frame i (`feature_extractor`), and `flows[(a, b)]`, the flow a -> b for
        every pair in `neighbour_pairs` (`flow_net`; None for `implicit`). Inference computes those once
        per frame and reuses them across the overlapping windows (inference/clip_upscaler.py,
        inference/frame_cache.py)."""
        t = lq_btchw.shape[1]
        centre = t // 2
        offset_abs_means = []  # per propagation step (None without a deformable alignment), for the report

        # Backward branch: centre -> later frames (F3 -> F4 -> F5); the state is aligned to each
        # frame before absorbing it, then brought back onto the centre's grid.
        backward_state = feats[centre]
        for i in range(centre + 1, t):
            backward_state, offset = self.backward_branch(feats[i], backward_state, flows and flows[(i, i - 1)],
                                                          sampling_log)
            offset_abs_means.append(offset)

        # Forward branch: centre -> earlier frames (F3 -> F2 -> F1).
        forward_state = feats[centre]
        for i in range(centre - 1, -1, -1):
            forward_state, offset = self.forward_branch(feats[i], forward_state, flows and flows[(i, i + 1)],
                                                        sampling_log)
            offset_abs_means.append(offset)

        to_centre = None
        if flows is not None:
            # the flows centre -> outermost frame of each walk: the way back onto the centre's grid
            to_centre = {(centre, t - 1): self._flow_from_centre(flows, range(centre + 1, t), sampling_log),
                         (centre, 0): self._flow_from_centre(flows, range(centre - 1, -1, -1), sampling_log)}
            backward_state = flow_warp(backward_state, to_centre[(centre, t - 1)], sampling_log=sampling_log)
            forward_state = flow_warp(forward_state, to_centre[(centre, 0)], sampling_log=sampling_log)

        fused = self.fusion(torch.cat([feats[centre], backward_state, forward_state], dim=1))
        detail = self.upsampler(self.reconstruction(fused))
        base = F.interpolate(lq_btchw[:, centre], scale_factor=self.scale, mode="bicubic", align_corners=False)
        sr = base + detail
        if not with_alignment:
            return sr
        return sr, self._alignment_report(lq_btchw, flows, to_centre, [m for m in offset_abs_means if m is not None])

    def _flows(self, lq_btchw: torch.Tensor, sampling_log: SamplingLog | None = None
               ) -> dict[tuple[int, int], torch.Tensor]:
        """Every flow the walk needs, from one batched pass of the flow net."""
        pairs = neighbour_pairs(self.num_frames)
        ref = torch.cat([lq_btchw[:, a] for a, _ in pairs])
        supp = torch.cat([lq_btchw[:, b] for _, b in pairs])
        return dict(zip(pairs, self.flow_net(ref, supp, sampling_log).chunk(len(pairs))))

    def _flow_from_centre(self, flows: dict, walk, sampling_log: SamplingLog | None = None) -> torch.Tensor:
        """The flow centre -> last frame of the walk, composed from the outward steps."""
        centre = self.num_frames // 2
        previous, composed = centre, None
        for k in walk:
            step = flows[(previous, k)]
            composed = step if composed is None else compose_flows(composed, step, sampling_log)
            previous = k
        return composed

    def _alignment_report(self, lq_btchw: torch.Tensor, flows: dict | None, to_centre: dict | None,
                          offset_abs_means: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        zero = lq_btchw.new_zeros((), dtype=torch.float32)
        if flows is None:
            return {"photometric": zero, "flow_magnitude": zero, "offset_mean": zero}
        magnitude = torch.stack([f.detach().float().norm(dim=1).mean() for f in flows.values()]).mean()
        # checked: the pairwise flows, and the outermost neighbours warped onto the centre through the
        # composed flows the forward pass used
        return {"photometric": photometric_loss(lq_btchw, {**flows, **to_centre}), "flow_magnitude": magnitude,
                "offset_mean": torch.stack(offset_abs_means).mean() if offset_abs_means else zero}


def build_model(model_cfg) -> VSRBidirectional_3x:
    """Build the architecture named in the config (`ModelConfig`)."""
    if model_cfg.name != "VSRBidirectional_3x":
        raise ValueError(f"model.name: unknown architecture {model_cfg.name!r}")
    if model_cfg.scale != VSRBidirectional_3x.scale:
        raise ValueError(f"model.scale: {model_cfg.name} upscales x{VSRBidirectional_3x.scale}, not x{model_cfg.scale}")
    # every other model key is a constructor argument of the same name
    return VSRBidirectional_3x(**{key: value for key, value in dataclasses.asdict(model_cfg).items()
                                  if key not in ("name", "scale")})


# The model's parts as users name them (`init.freeze`, the init report): each top-level module belongs to
# one group, except the deformable alignment inside the propagation cells, which is `alignment` with the
# flow network.
MODULE_GROUPS = {"extract": ("feature_extractor",), "propagation": ("backward_branch", "forward_branch"),
                 "reconstruction": ("fusion", "reconstruction"), "upsample": ("upsampler",),
                 "alignment": ("flow_net",)}


def module_group(tensor_name: str) -> str:
    """The group of a parameter or buffer, by its name in the state dict."""
    if ".align." in tensor_name:
        return "alignment"
    top = tensor_name.split(".", 1)[0]
    for group, modules in MODULE_GROUPS.items():
        if top in modules:
            return group
    raise KeyError(f"{tensor_name}: in no module group")


def alignment_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The flow network's and the deformable offsets' parameters: they get their own LR multiplier
    (`alignment_training.lr_factor`), as BasicVSR++ trains its flow slower than the rest."""
    return [p for name, p in model.named_parameters() if name.startswith("flow_net.") or ".align.conv_offset." in name]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_flops_per_clip(model: VSRBidirectional_3x, lr_h: int, lr_w: int) -> int:
    """Forward FLOPs of one clip, counted from the layers at the resolution each runs at, times the
    images it runs on (the extractor sees all 5 frames, the flow net every frame pair):
      convolution          2 * k*k * C_in/groups * C_out * H_out * W_out (a multiply and an add per
                           weight and output pixel)
      bilinear warp        8 per output value (grid_sample: 4 taps, a multiply and an add each)
      deformable 3x3 conv  2 * 9 * C_in * C_out * H * W (its convolution) + 9 * C_in * H * W * 9
                           (per tap and input channel: a bilinear sample, 8, and the mask, 1)
    Element-wise ops, the bicubic residual, pooling, flow upsampling and the pixel shuffle are
    ignored (<1 %)."""
    flops = 0
    calls: dict[nn.Module, list[tuple[int, int, int]]] = {}

    def record(module, inputs, output):
        calls.setdefault(module, []).append((output.shape[0], *output.shape[-2:]))

    handles = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
    sampled: SamplingLog = []
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, model.num_frames, 3, lr_h, lr_w, device=device), sampling_log=sampled)
    finally:
        for handle in handles:
            handle.remove()
    for module, output_sizes in calls.items():
        k = module.kernel_size[0] * module.kernel_size[1]
        for n, h, w in output_sizes:
            flops += 2 * k * (module.in_channels // module.groups) * module.out_channels * n * h * w
    for kind, sizes in sampled:
        if kind == "bilinear":
            flops += 8 * sizes[0]
        else:
            n, c_in, c_out, h, w = sizes
            flops += n * h * w * (2 * 9 * c_in * c_out + 9 * c_in * 9)
    return flops
