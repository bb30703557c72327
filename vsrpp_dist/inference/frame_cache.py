"""What the model computes per frame and per pair of neighbouring frames, computed once per frame however
many overlapping windows it sits in, and computed so that the result does not depend on the batch."""

from __future__ import annotations

from collections.abc import Callable

import torch


# PyTorch's CPU convolution runs a single small image (N*C*H*W <= 20480, Convolution.cpp's `use_mkldnn`)
# through its own kernel and any batch of two or more through oneDNN, whose result for one image does not
# depend on the batch it sits in. The whole-window forward always batches >= 5 frames, so a frame computed
# alone is run as a pair with itself when it is that small: the cached output stays bit-identical.
NATIVE_CONV_MAX_NUMEL = 20480


def run_per_frame(module: Callable[..., torch.Tensor], *inputs_nchw: torch.Tensor) -> torch.Tensor:
    """`module(*inputs)` for N frames, computed as it would be inside a larger batch (see above)."""
    first = inputs_nchw[0]
    if first.shape[0] == 1 and first.device.type == "cpu" and first[0].numel() <= NATIVE_CONV_MAX_NUMEL:
        return module(*(x.expand(2, *x.shape[1:]) for x in inputs_nchw))[:1]
    return module(*inputs_nchw)


def stack_windows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(B, ...) from B tensors; one window's is a view of the cached tensor, no copy."""
    return tensors[0][None] if len(tensors) == 1 else torch.stack(tensors)


class FrameCache:
    """What the model computes per frame (features) and per pair of neighbouring frames (flows), kept for
    the frames in flight so each is computed once however many windows it sits in.

    Keyed by (region, frame id): the region is the tile (tiles see other pixels), the id whatever the
    caller names frames by (unique within a stream). A ring, not a store: each call first drops what
    the current batch of windows does not use, and windows only move forward, so it holds at most the
    batch's distinct frames (batch + 4) per region."""

    def __init__(self) -> None:
        self.features: dict[tuple, torch.Tensor] = {}
        self.flows: dict[tuple, torch.Tensor] = {}
        self.frames_computed = 0  # feature extractions run, per frame and region (what the cache saves)

    def clear(self) -> None:
        self.features.clear()
        self.flows.clear()

    def keep_only(self, region, frame_ids: set, pair_ids: set) -> None:
        """Drop the region's entries the current batch does not use (other regions' stay)."""
        for store, keep in ((self.features, frame_ids), (self.flows, pair_ids)):
            for key in [k for k in store if k[0] == region and k[1] not in keep]:
                del store[key]
