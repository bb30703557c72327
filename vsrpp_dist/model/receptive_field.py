"""How far an output pixel of the model can see, in LR pixels: the overlap that makes tiled inference
exact (inference/tiles.py), and the grid a tile must start on for the flow pyramid."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .alignment import FLOW_KERNEL

if TYPE_CHECKING:
    from ..config import ModelConfig


def receptive_radius(model_cfg: ModelConfig) -> int:
    """How far (in LR pixels, per side) an output pixel can see: the tile overlap that makes tiled
    output exact.

    `implicit`: each 3x3 convolution at LR resolution widens the field by 1 pixel per side, so the
    radius is the number of them on the longest input-to-output path:

        feature extractor  1 + 2*extract_blocks                 (conv_in, two convs per residual block)
        propagation        (num_frames // 2) * (1 + 2*propagation_blocks)
                           (the centre frame's features pass every recurrent step of a branch; each step
                            is the fuse conv plus its trunk)
        fusion             1
        reconstruction     2*reconstruction_blocks
        upsampler          1   (the conv before the pixel shuffle)
        HR conv            1   (3x3 at x3 resolution reaches 1 HR pixel into the neighbouring LR pixel)

    radius = 4 + 2*E + (T//2)*(1 + 2*P) + 2*R for E/P/R blocks and T frames; the default model
    (5/10/5 blocks, 5 frames) gives 66, the demo model (2/3/2) 26. The bicubic global residual needs 2
    LR pixels, always less. Residual skips are shorter paths and do not widen it. This one is exact
    (tests/inference/test_upscale.py finds it as the gradient's support).

    `flow` and `flow_deform` reach further: a warp samples up to `max_flow` (M) pixels away, so the
    radius is an upper bound built from those bounds (the field itself depends on the flows):

        each propagation step  its align reach + 1 + 2*P, where the reach of a flow warp is M + 1
                               (bilinear) and of the deformable conv M + max(max_residue + 2, 3)
                               (tap 1, offset <= M + max_residue, bilinear 1; its offset convs see the
                               warped state 2 px around)
        the way back           S*M + 1 (the flow composed over the S = T//2 steps of a branch)
        composed flows         (S - 1)*(M + 1) (each composition samples a flow M + 1 away)
        the flow network       sum over its L levels of 2^l*(5*(k//2) + 4) + M: five kxk convs per
                               level, the warp, the upsampled coarser flow and the pooling footprint
                               at that level's scale, and the support frame sampled up to M away

    Frames are padded to a multiple of 2^(L-1) for the pyramid only on the right and bottom, and tiles
    start on that multiple (`tile_multiple`), so every tile pools on the grid the whole frame pools on.
    """
    e, p, r = model_cfg.extract_blocks, model_cfg.propagation_blocks, model_cfg.reconstruction_blocks
    steps = model_cfg.num_frames // 2
    if not model_cfg.explicit_alignment:
        lr_convs = (1 + 2 * e) + steps * (1 + 2 * p) + 1 + 2 * r + 1
        hr_conv = 1
        bicubic = 2
        return max(lr_convs + hr_conv, bicubic)
    m = model_cfg.max_flow
    align_reach = m + max(model_cfg.max_residue + 2, 3) if model_cfg.deformable_alignment else m + 1
    chain = (1 + 2 * e) + steps * (align_reach + 1 + 2 * p) + (steps * m + 1) + 1 + 2 * r + 1 + 1
    composed = (steps - 1) * (m + 1)
    flow_net = sum(2**level * (5 * (FLOW_KERNEL // 2) + 4) + m for level in range(model_cfg.flow_levels))
    return int(math.ceil(chain + composed + flow_net))


def tile_multiple(model_cfg: ModelConfig) -> int:
    """Tiles start on multiples of this (the flow pyramid's pooling grid); 1 for `implicit`."""
    return 2 ** (model_cfg.flow_levels - 1) if model_cfg.explicit_alignment else 1
