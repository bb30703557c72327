"""Explicit alignment for VSRBidirectional_3x, trained from scratch: a pyramid flow network, warping
with `grid_sample`, and flow-guided deformable convolution.

The propagation walk stays centre-out (F3 -> F4 -> F5 and F3 -> F2 -> F1). Before a branch absorbs
neighbour F_k, its state, which lives on the grid of the frame it absorbed last, is aligned onto F_k's
grid (as BasicVSR does): by warping it with the flow F_k -> F_prev (`flow`), or by a deformable
convolution whose offsets are that flow plus a bounded learned residual (`flow_deform`, BasicVSR++'s
flow-guided deformable alignment, first order). The state that leaves the branch lives on the grid of
the outermost frame; the fusion restores the centre, so the final state is warped back onto the
centre's grid with the flow composed along the walk (F3 -> F4 -> F5).

Flow convention: `flow_ab` (B, 2, h, w), channels (dx, dy) in LR pixels, says where each pixel of frame
a lies in frame b: a(x) ~ b(x + flow_ab(x)), so `warp(b, flow_ab)` looks like a.

No pretrained weights: the flow network starts at zero flow (its last layers are zero-initialised),
the deformable offsets start at the flow (zero-initialised residual), and a photometric loss on the LR
frames (each neighbour warped onto the frame next to it, the outer ones onto the centre) bootstraps the
flow during the first steps of training (`alignment_training.photometric_*`). Every flow is clamped to
`max_flow` LR pixels and every residual to `max_residue` (tanh): the receptive field stays bounded, so
tiled inference stays exact (model.receptive_field).

Imports only torch and torchvision.ops (deform_conv2d).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ALIGNMENTS = ("implicit", "flow", "flow_deform")
FLOW_KERNEL = 5  # SPyNet uses 7x7; 5x5 keeps the flow net under a tenth of the demo model's FLOPs

# ImageNet statistics, as SPyNet normalises its input: the flow net sees zero-mean frames.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


# What `model.conv_flops_per_clip` counts besides the convolutions: every bilinear sampling and deformable
# conv of a forward pass, as (kind, sizes). They are functions, not modules, so forward hooks cannot see
# them; a forward given a list appends to it (and to nothing otherwise).
SamplingLog = list[tuple[str, tuple[int, ...]]]


def _record(sampling_log: SamplingLog | None, kind: str, *sizes: int) -> None:
    if sampling_log is not None:
        sampling_log.append((kind, sizes))


def base_grid(h: int, w: int, device, dtype) -> torch.Tensor:
    """(1, 2, h, w) pixel coordinates (x, y) of every pixel."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype), torch.arange(w, device=device, dtype=dtype),
                            indexing="ij")
    return torch.stack([xs, ys])[None]


def flow_warp(image_nchw: torch.Tensor, flow_n2hw: torch.Tensor, padding_mode: str = "zeros",
              sampling_log: SamplingLog | None = None) -> torch.Tensor:
    """Sample `image` at x + flow(x) (bilinear). Zero flow returns the image itself.

    Runs in float32 whatever the autocast: sub-pixel positions in bf16 would be off by up to 1/16 px at
    a flow of 10 px. Samples outside the image are zero (features) or the border value (`border`,
    used for the photometric loss on frames, so the border does not pull the flow)."""
    n, c, h, w = image_nchw.shape
    _record(sampling_log, "bilinear", n * c * h * w)
    with torch.autocast(image_nchw.device.type, enabled=False):
        position = base_grid(h, w, image_nchw.device, torch.float32) + flow_n2hw.float()
        # align_corners=True: -1 and 1 are the centres of the first and last pixel
        gx = 2 * position[:, 0] / max(w - 1, 1) - 1
        gy = 2 * position[:, 1] / max(h - 1, 1) - 1
        warped = F.grid_sample(image_nchw.float(), torch.stack([gx, gy], dim=-1), mode="bilinear",
                               padding_mode=padding_mode, align_corners=True)
    return warped.to(image_nchw.dtype)


def compose_flows(first_ab: torch.Tensor, then_bc: torch.Tensor, sampling_log: SamplingLog | None = None
                  ) -> torch.Tensor:
    """flow a -> c from a -> b and b -> c: a(x) ~ b(x + f_ab) ~ c(x + f_ab + f_bc(x + f_ab))."""
    return first_ab + flow_warp(then_bc, first_ab, sampling_log=sampling_log)


class FlowLevel(nn.Module):
    """SPyNet's basic module: [reference, warped support, current flow] -> a flow correction."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        widths = (8, channels, 2 * channels, channels, max(channels // 2, 2))
        layers: list[nn.Module] = []
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.Conv2d(cin, cout, FLOW_KERNEL, padding=FLOW_KERNEL // 2), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(widths[-1], 2, FLOW_KERNEL, padding=FLOW_KERNEL // 2)
        # From scratch the flow starts at zero: warping is then the identity and the model starts where
        # the implicit one does; the photometric loss moves it from there.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


class FlowNet(nn.Module):
    """A small SPyNet-style pyramid estimating flow between LR frames, coarse to fine: at each level
    the support frame is warped by the upsampled flow so far and a FlowLevel adds a correction."""

    def __init__(self, channels: int, levels: int, max_flow: float) -> None:
        super().__init__()
        self.levels = nn.ModuleList(FlowLevel(channels) for _ in range(levels))
        self.max_flow = max_flow
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def multiple(self) -> int:
        """Frame sizes are padded to a multiple of this for the pyramid (and tiles start on it)."""
        return 2 ** (len(self.levels) - 1)

    def forward(self, ref_nchw: torch.Tensor, supp_nchw: torch.Tensor, sampling_log: SamplingLog | None = None
                ) -> torch.Tensor:
        """flow ref -> supp, (N, 2, h, w) in LR pixels, |component| <= max_flow."""
        h, w = ref_nchw.shape[-2:]
        m = self.multiple
        pad = (0, (-w) % m, 0, (-h) % m)  # right and bottom only: positions keep their coordinates
        ref = F.pad((ref_nchw - self.mean) / self.std, pad, mode="replicate")
        supp = F.pad((supp_nchw - self.mean) / self.std, pad, mode="replicate")
        pyramid = [(ref, supp)]
        for _ in range(len(self.levels) - 1):
            ref, supp = F.avg_pool2d(ref, 2), F.avg_pool2d(supp, 2)
            pyramid.append((ref, supp))
        flow = None
        for depth in range(len(self.levels) - 1, -1, -1):  # coarsest first
            ref, supp = pyramid[depth]
            if flow is None:
                flow = ref.new_zeros(ref.shape[0], 2, *ref.shape[-2:])
            else:
                flow = 2 * F.interpolate(flow, scale_factor=2, mode="bilinear", align_corners=False)
            warped = flow_warp(supp, flow, padding_mode="border", sampling_log=sampling_log)
            flow = flow + self.levels[depth](torch.cat([ref, warped, flow.to(ref.dtype)], dim=1))
            bound = self.max_flow / 2**depth  # in this level's pixels
            flow = flow.clamp(-bound, bound)
        return flow[..., :h, :w]


class FlowGuidedDeformAlign(nn.Module):
    """Align a state by a modulated deformable 3x3 convolution whose offsets are the flow plus a
    residual bounded by max_residue * tanh(.), predicted from [flow-warped state, neighbour, flow]
    (BasicVSR++). The offset/mask predictor is zero-initialised: it starts as the flow warp, with every
    tap at mask 0.5.

    Returns the aligned state and the mean absolute offset (LR pixels, detached) for the training logs."""

    def __init__(self, channels: int, deform_groups: int, max_residue: float) -> None:
        super().__init__()
        if channels % deform_groups:
            raise ValueError(f"model.deform_groups={deform_groups} must divide model.channels={channels}")
        self.deform_groups = deform_groups
        self.max_residue = max_residue
        self.conv_offset = nn.Sequential(
            nn.Conv2d(2 * channels + 2, channels, 3, padding=1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(channels, 27 * deform_groups, 3, padding=1),
        )
        nn.init.zeros_(self.conv_offset[-1].weight)
        nn.init.zeros_(self.conv_offset[-1].bias)
        self.weight = nn.Parameter(torch.empty(channels, channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # as nn.Conv2d initialises

    def forward(self, state: torch.Tensor, neighbour: torch.Tensor, flow: torch.Tensor,
                sampling_log: SamplingLog | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        warped = flow_warp(state, flow, sampling_log=sampling_log)
        out = self.conv_offset(torch.cat([warped, neighbour, flow.to(warped.dtype)], dim=1))
        o1, o2, mask = torch.chunk(out, 3, dim=1)
        # torchvision wants (dy, dx) per tap; the flow is (dx, dy)
        offset = self.max_residue * torch.tanh(torch.cat([o1, o2], dim=1).float()) \
            + flow.float().flip(1).repeat(1, 9 * self.deform_groups, 1, 1)
        # Deformable sampling runs in fp32 whatever the autocast: deform_conv2d has no bf16/fp16 kernel on
        # some builds, and sub-pixel positions need the precision; the result goes back to the state's dtype.
        n, c, h, w = state.shape
        _record(sampling_log, "deform", n, c, self.weight.shape[0], h, w)
        with torch.autocast(state.device.type, enabled=False):
            conv = deform_conv2d if state.is_cuda else deform_conv2d_by_sampling
            aligned = conv(state.float(), offset, self.weight.float(), self.bias.float(), padding=1,
                           mask=torch.sigmoid(mask.float()))
        return aligned.to(state.dtype), offset.detach().abs().mean()


def deform_conv2d(x, offset, weight, bias, padding, mask):
    """torchvision's modulated deformable convolution (its CUDA kernel on GPUs)."""
    from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

    return torchvision_deform_conv2d(x, offset, weight, bias, padding=padding, mask=mask)


def deform_conv2d_by_sampling(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                              padding: int, mask: torch.Tensor) -> torch.Tensor:
    """The same modulated deformable 3x3 convolution as torchvision's (stride 1, `padding` 1, offsets
    (dy, dx) per tap and group), as 9 bilinear `grid_sample`s and one 1x1 convolution over the sampled
    taps. Equal to deform_conv2d up to float rounding (tested); on a CPU its backward is ~8x faster
    than torchvision's (0.026 s vs 0.21 s for 4x32x32x32, 4 groups, measured here), and grid_sample
    exports to ONNX (opset 16) where deform_conv2d needs opset 19."""
    assert padding == 1 and weight.shape[-2:] == (3, 3), "written for the 3x3 alignment conv"
    b, c, h, w = x.shape
    groups = offset.shape[1] // 18
    offset = offset.view(b, groups, 9, 2, h, w)
    mask = mask.view(b, groups, 9, h, w)
    grid = base_grid(h, w, x.device, x.dtype)
    x_groups = x.reshape(b * groups, c // groups, h, w)
    taps = []
    for k in range(9):
        dy, dx = k // 3 - 1, k % 3 - 1
        px = grid[:, 0] + dx + offset[:, :, k, 1]
        py = grid[:, 1] + dy + offset[:, :, k, 0]
        where = torch.stack([2 * px / max(w - 1, 1) - 1, 2 * py / max(h - 1, 1) - 1], dim=-1)
        sampled = F.grid_sample(x_groups, where.view(b * groups, h, w, 2), mode="bilinear", padding_mode="zeros",
                                align_corners=True)
        taps.append(sampled.view(b, groups, c // groups, h, w) * mask[:, :, k, None])
    columns = torch.stack(taps, dim=3).view(b, c * 9, h, w)  # channel-major, tap-minor: the weight's order
    return F.conv2d(columns, weight.reshape(weight.shape[0], c * 9, 1, 1), bias)


def neighbour_pairs(num_frames: int) -> list[tuple[int, int]]:
    """Every (a, b) whose flow a -> b the centre-out walk uses, in one fixed order: per step, the flow
    from the absorbed frame back to the previous one (aligning the state); per step, the flow outwards
    (composed into the way back to the centre)."""
    centre = num_frames // 2
    later = list(range(centre + 1, num_frames))
    earlier = list(range(centre - 1, -1, -1))
    steps = [(k, k - 1) for k in later] + [(k, k + 1) for k in earlier]
    outwards = [(b, a) for a, b in steps]
    return steps + outwards


def photometric_loss(frames_btchw: torch.Tensor, flows: dict[tuple[int, int], torch.Tensor],
                     eps: float = 1e-3) -> torch.Tensor:
    """Charbonnier error of each support frame warped by its flow onto the other frame of its pair:
    self-supervision that needs no flow labels."""
    errors = []
    for (a, b), flow in flows.items():
        warped = flow_warp(frames_btchw[:, b], flow, padding_mode="border")
        errors.append(torch.sqrt((warped.float() - frames_btchw[:, a].float()) ** 2 + eps**2).mean())
    return torch.stack(errors).mean()
