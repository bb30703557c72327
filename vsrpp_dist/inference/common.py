"""What `upscale` and `evaluate` share: a model from a checkpoint, its receptive field, and windowed,
tiled inference over a stream of frames.

Windows. Frame i is restored from frames i-2..i+2, mirrored at the sequence ends exactly as in
validation (`training.validation.window_indices`: frame 0 sees 2, 1, 0, 1, 2). Frames arrive one at a time from a
decoder and sit in a sliding buffer that holds only what the next batch of windows needs (batch + 4
frames), so a two-hour video never sits in memory whole. The end of the sequence is known only when
the decoder runs dry; until then no window reaches past the last frame read, so none needs mirroring.

Tiles. A large frame is cut into LR tiles of `tile` x `tile` pixels ("cores"), each run with
`receptive_radius` pixels of real context around it (fewer at the image border, where the untiled
model zero-pads just the same), and only the core's x3 output is kept. Every output pixel then sees
exactly the inputs it sees untiled, so tiled output equals untiled output up to float rounding
(convolution algorithms differ with the input size). All tiles share one size, with tiles at the
bottom/right shifted inwards, so they batch and cuDNN autotunes one shape.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from ..cli import int_at_least
from ..config import ConfigError, ModelConfig, config_to_dict, load_config, with_legacy_values
from ..data.sources import Sequence, SequenceError, read_frames
from ..errors import CheckpointError, InferenceError
from ..model.alignment import FLOW_KERNEL, neighbour_pairs
from ..model.architecture import build_model
from ..training.validation import window_indices
from ..training.wrapping import to_channels_last
from ..weights import file_sha256, read_weights

T = TypeVar("T")




# -- the receptive field -----------------------------------------------------------------------------


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
    if model_cfg.alignment == "implicit":
        lr_convs = (1 + 2 * e) + steps * (1 + 2 * p) + 1 + 2 * r + 1
        hr_conv = 1
        bicubic = 2
        return max(lr_convs + hr_conv, bicubic)
    m = model_cfg.max_flow
    align_reach = m + 1 if model_cfg.alignment == "flow" else m + max(model_cfg.max_residue + 2, 3)
    chain = (1 + 2 * e) + steps * (align_reach + 1 + 2 * p) + (steps * m + 1) + 1 + 2 * r + 1 + 1
    composed = (steps - 1) * (m + 1)
    flow_net = sum(2**level * (5 * (FLOW_KERNEL // 2) + 4) + m for level in range(model_cfg.flow_levels))
    return int(math.ceil(chain + composed + flow_net))


def tile_multiple(model_cfg: ModelConfig) -> int:
    """Tiles start on multiples of this (the flow pyramid's pooling grid); 1 for `implicit`."""
    return 1 if model_cfg.alignment == "implicit" else 2 ** (model_cfg.flow_levels - 1)


@dataclass(frozen=True)
class Span:
    """One tile along one axis, in LR pixels: the input [in_start, in_end) that is run, and the core
    [core_start, core_end) whose output is kept."""

    in_start: int
    in_end: int
    core_start: int
    core_end: int


def tile_spans(size: int, tile: int, pad: int, multiple: int = 1) -> list[Span]:
    """Cores of `tile` pixels covering [0, size), each with `pad` pixels of context where the image has
    them, every input starting on a multiple of `multiple`. With multiple 1 every input span has the same
    length, tile + 2*pad, or is the whole axis; otherwise lengths differ by less than `multiple`."""
    if tile <= 0 or tile + 2 * pad >= size:
        return [Span(0, size, 0, size)]  # one tile with its context would be the whole frame anyway
    length = tile + 2 * pad
    spans = []
    for core_start in range(0, size, tile):
        core_end = min(core_start + tile, size)
        in_start = min(max(core_start - pad, 0), size - length)
        in_start -= in_start % multiple
        in_end = min(size, max(in_start + length, core_end + pad))
        span = Span(in_start, in_end, core_start, core_end)
        # context on each side: the full pad, or the image border (zero padding, as untiled)
        assert span.core_start - span.in_start >= pad or span.in_start == 0, span
        assert span.in_end - span.core_end >= pad or span.in_end == size, span
        spans.append(span)
    return spans


# -- the model ---------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    model: nn.Module
    model_cfg: ModelConfig
    source: str  # what the user named
    step: int
    ema: bool
    file: Path | None = None  # the weights file read
    provenance: list[dict] = field(default_factory=list)  # the models its training started from

    def identity(self) -> dict:
        """What a result computed with this model records about it (evaluate --json, export)."""
        return {"checkpoint": self.source, "file": str(self.file) if self.file else None,
                "sha256": file_sha256(self.file) if self.file else None, "step": self.step, "ema": self.ema,
                "model_config": config_to_dict(self.model_cfg), "provenance": self.provenance}

    @property
    def radius(self) -> int:
        return receptive_radius(self.model_cfg)

    @property
    def tile_multiple(self) -> int:
        return tile_multiple(self.model_cfg)

    def describe(self) -> str:
        c = self.model_cfg
        weights = "EMA weights" if self.ema else "weights"
        return (f"{self.source}: {weights} of step {self.step}, {c.name} channels={c.channels} blocks="
                f"{c.extract_blocks}/{c.propagation_blocks}/{c.reconstruction_blocks}, alignment {c.alignment}, "
                f"receptive radius {self.radius} LR px")


def model_config_from_dict(values: dict, where: str) -> ModelConfig:
    """The checkpoint's model_config, validated by the config loader (unknown keys, another scale or
    architecture are refused with the key named)."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{where}: has no model_config")
    values = with_legacy_values(values)  # weights from before a key existed
    try:
        return load_config(None, [f"model.{key}={value}" for key, value in values.items()]).model
    except ConfigError as err:
        raise CheckpointError(f"{where}: its model_config is not a model this version builds ({err})") from None


def _state_dict_mismatch(model: nn.Module, state_dict: dict) -> str | None:
    """The first way `state_dict` does not fit `model`, in words; None when it fits."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing:
        return f"{len(missing)} weights missing (first: {missing[0]})"
    if unexpected:
        return f"{len(unexpected)} weights the model does not have (first: {unexpected[0]})"
    for key, tensor in expected.items():
        given = state_dict[key]
        if not isinstance(given, torch.Tensor) or given.shape != tensor.shape:
            shape = tuple(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__
            return f"{key} is {shape} in the file, the model needs {tuple(tensor.shape)}"
    return None


def alignment_of_weights(state_dict: dict) -> str:
    """Which `model.alignment` built these weights, from the modules only it has."""
    if any(".align." in key for key in state_dict):
        return "flow_deform"
    return "flow" if any(key.startswith("flow_net.") for key in state_dict) else "implicit"


def load_model(checkpoint: str | Path, device: torch.device) -> LoadedModel:
    """The model in eval mode on `device`, from a checkpoint folder, a symlink to one (RUN/checkpoint_best)
    or a weights file (`model.safetensors`, or a legacy `weights.pt`), read as data only."""
    weights = read_weights(checkpoint)
    model_cfg = model_config_from_dict(weights.model_config, str(checkpoint))
    model = build_model(model_cfg)
    state_dict = weights.state_dict
    weights_alignment = alignment_of_weights(state_dict)
    if weights_alignment != model_cfg.alignment:
        raise CheckpointError(f"{checkpoint}: its weights are of a model with alignment {weights_alignment}, but its "
                              f"model_config says model.alignment={model_cfg.alignment}; the file is inconsistent")
    problem = _state_dict_mismatch(model, state_dict)
    if problem:
        c = model_cfg
        raise CheckpointError(f"{checkpoint}: the weights do not fit its model_config (channels={c.channels}, "
                              f"blocks={c.extract_blocks}/{c.propagation_blocks}/{c.reconstruction_blocks}, "
                              f"upsample_channels={c.upsample_channels}): {problem}")
    model.load_state_dict(state_dict)
    model.eval().requires_grad_(False).to(device)
    if device.type == "cuda":
        to_channels_last(model)  # as in training: cuDNN's native layout for tensor cores
    return LoadedModel(model, model_cfg, str(checkpoint), weights.step, weights.ema, weights.path,
                       weights.provenance)


def resolve_device(text: str) -> torch.device:
    """'auto' (the GPU when there is one), 'cpu', 'cuda', 'cuda:N'."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise InferenceError(f"--device {text}: not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise InferenceError(f"--device {text}: only cpu and cuda are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InferenceError(f"--device {text}: no CUDA GPU is available (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InferenceError(f"--device {text}: only {torch.cuda.device_count()} GPU(s) here")
    return device


# -- inference ---------------------------------------------------------------------------------------

# glibc's mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_freed_memory() -> bool:
    """Make glibc's malloc serve large blocks from its heap and keep freed memory for reuse.

    By default every block over 32 MiB is a fresh mmap that the kernel zero-fills page by page and
    unmaps again on free; inference at HD sizes allocates and frees such tensors (features, the x3
    frame) hundreds of times per frame, and then spends as much time in the kernel as in the model:
    upscale of 4 frames of 720p on 2 cores ran user 50 s / sys 44 s with 22 M page faults; with this,
    user 50 s / sys 8 s, 3.7 M faults (BENCHMARKS.md). The cost: freed memory stays with the process
    (peak RSS 5.8 GB instead of 4.6 GB there). Affects this process only; a no-op without glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # trim only when 2 GiB (mallopt takes a C int) lie free at the top of the heap
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def time_cudnn_algorithms_per_shape(device: torch.device) -> None:
    """On a GPU, let cuDNN time its convolution algorithms for each new input shape and keep the fastest
    (`cudnn.benchmark`): an inference run sees one tile shape (or one frame size), so it pays that once.
    Process-wide, so the command sets it where it applies its device, not each upscaler it builds."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


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


class CompiledOrEager:
    """`fn` through torch.compile, falling back to `fn` itself, with one note, when compiling fails (no
    C++ compiler or Triton, an unsupported op, an old GPU): --compile never stops a run."""

    def __init__(self, fn: Callable, name: str) -> None:
        self.eager = fn
        self.compiled = torch.compile(fn)
        self.name = name
        self.failed = False

    def __call__(self, *args):
        if self.failed:
            return self.eager(*args)
        try:
            return self.compiled(*args)
        except torch.OutOfMemoryError:
            raise
        except Exception as err:
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            note(f"--compile: torch.compile failed for {self.name} ({type(err).__name__}: {first_line[:160]}); "
                 "running it eagerly")
            self.failed = True
            return self.eager(*args)


class ClipUpscaler:
    """5-frame LR clips in, the centre frames x3 out, whole or in tiles, optionally in mixed precision.

    Given `frame_ids` (which frame of the stream sits at each window position), per-frame features and
    flows are computed once per frame and reused across the overlapping windows (`FrameCache`): about a
    quarter less compute for the default model, the same output bit for bit on a CPU (on a GPU within
    float rounding, as cuDNN picks its algorithms per shape). Tiled, the cache holds every tile's
    features of the frames in flight, about (batch + 4) x the frame's features; above `cache_bytes` the
    tiles are recomputed instead (same output, more compute)."""

    def __init__(self, loaded: LoadedModel, device: torch.device, tile: int = 0, amp: bool = False,
                 cache_bytes: int = 2 << 30, compile: bool = False) -> None:
        self.model = loaded.model
        model = loaded.model
        # the three pieces inference runs; --compile compiles each (whole windows run all three too)
        self.extract_features, self.estimate_flows, self.restore = model.feature_extractor, \
            getattr(model, "flow_net", None), model.restore
        self.forward_whole = model
        if compile:
            self.extract_features = CompiledOrEager(model.feature_extractor, "the feature extractor")
            self.restore = CompiledOrEager(model.restore, "the propagation and reconstruction")
            self.forward_whole = CompiledOrEager(model, "the model")
            if self.estimate_flows is not None:
                self.estimate_flows = CompiledOrEager(model.flow_net, "the flow network")
        self.model_cfg = loaded.model_cfg
        self.scale = loaded.model_cfg.scale
        self.radius = loaded.radius
        self.tile_multiple = loaded.tile_multiple
        self.device = device
        self.tile = tile
        self.cache = FrameCache()
        self.cache_bytes = cache_bytes
        self._said_cache_too_small = False  # the note is given once per run
        self.amp_dtype = None
        if amp:
            # bf16 keeps fp32's range (no overflow in deep trunks); fp16 only where bf16 is missing
            bf16 = device.type == "cpu" or torch.cuda.is_bf16_supported()
            self.amp_dtype = torch.bfloat16 if bf16 else torch.float16

    @torch.inference_mode()
    def __call__(self, lq_btchw: torch.Tensor, frame_ids: list[list] | None = None) -> torch.Tensor:
        """(B, 5, 3, h, w) uint8 or [0, 1] floats -> (B, 3, 3h, 3w) float32 in [0, 1] on the device.
        `frame_ids[b][t]` names the frame at position t of window b (equal ids: equal frames); without
        them every window is computed from scratch."""
        lq_btchw = lq_btchw.to(self.device, non_blocking=True)
        if not lq_btchw.is_floating_point():
            lq_btchw = lq_btchw.float().div_(255)
        b, _, c, h, w = lq_btchw.shape
        s = self.scale
        rows = tile_spans(h, self.tile, self.radius, self.tile_multiple)
        cols = tile_spans(w, self.tile, self.radius, self.tile_multiple)
        if frame_ids is not None and not self._cache_fits(frame_ids, rows, cols):
            frame_ids = None
        if frame_ids is None:
            self.cache.clear()
        if len(rows) == 1 and len(cols) == 1:
            return self._forward(lq_btchw, frame_ids, region=0)
        sr_bchw = torch.empty(b, c, s * h, s * w, device=self.device)
        for row_index, row in enumerate(rows):
            for col_index, col in enumerate(cols):
                tile_sr = self._forward(lq_btchw[..., row.in_start:row.in_end, col.in_start:col.in_end], frame_ids,
                                        region=(row_index, col_index))
                y0, y1 = s * (row.core_start - row.in_start), s * (row.core_end - row.in_start)
                x0, x1 = s * (col.core_start - col.in_start), s * (col.core_end - col.in_start)
                sr_bchw[..., s * row.core_start:s * row.core_end, s * col.core_start:s * col.core_end] = \
                    tile_sr[..., y0:y1, x0:x1]
        return sr_bchw

    def _cache_fits(self, frame_ids: list[list], rows: list[Span], cols: list[Span]) -> bool:
        """Whole frames: always (the ring holds what one forward pass holds anyway). Tiles: when every
        tile's features of the batch's frames fit `cache_bytes`."""
        if len(rows) == 1 and len(cols) == 1:
            return True
        distinct = len({i for window in frame_ids for i in window})
        pixels = sum((r.in_end - r.in_start) * (c.in_end - c.in_start) for r in rows for c in cols)
        flow_channels = 0 if self.model_cfg.alignment == "implicit" else 2 * 2  # two flows per new frame
        need = distinct * pixels * (self.model_cfg.channels + flow_channels) * 4
        if need <= self.cache_bytes:
            return True
        if not self._said_cache_too_small:
            note(f"tiled features of the frames in flight need {need / 2**30:.1f} GiB, more than --cache-gb "
                 f"{self.cache_bytes / 2**30:g}: each window is computed from scratch (same output, more compute)")
            self._said_cache_too_small = True
        return False

    def _forward(self, lq_btchw: torch.Tensor, frame_ids: list[list] | None, region) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            if frame_ids is None:
                sr = self.forward_whole(lq_btchw)
            else:
                feats, flows = self._per_frame_results(lq_btchw, frame_ids, region)
                sr = self.restore(lq_btchw, feats, flows)
        # mixed precision can overflow to inf/NaN in a bad spot; never let that reach an 8-bit frame
        return torch.nan_to_num(sr.float(), nan=0.0).clamp_(0, 1)

    def _per_frame_results(self, lq_btchw: torch.Tensor, frame_ids: list[list], region):
        """The features of each window position and the flows between positions, as `restore` takes
        them, from the cache where the frame (pair) was seen, computed in one batch where not."""
        cache = self.cache
        t = lq_btchw.shape[1]
        pairs = neighbour_pairs(t) if self.model_cfg.alignment != "implicit" else []
        frame_at = {}  # frame id -> its (3, h, w) tile
        for bi, window in enumerate(frame_ids):
            for ti, frame_id in enumerate(window):
                frame_at.setdefault(frame_id, lq_btchw[bi, ti])
        pair_ids = {(window[a], window[p]) for window in frame_ids for a, p in pairs}
        cache.keep_only(region, set(frame_at), pair_ids)

        new = [i for i in frame_at if (region, i) not in cache.features]
        if new:
            computed = run_per_frame(self.extract_features, torch.stack([frame_at[i] for i in new]))
            cache.frames_computed += len(new)
            cache.features.update(((region, i), f) for i, f in zip(new, computed))
        new_pairs = [ab for ab in sorted(pair_ids, key=repr) if (region, ab) not in cache.flows]
        if new_pairs:
            computed = run_per_frame(self.estimate_flows, torch.stack([frame_at[a] for a, _ in new_pairs]),
                                     torch.stack([frame_at[p] for _, p in new_pairs]))
            cache.flows.update(((region, ab), f) for ab, f in zip(new_pairs, computed))

        feats = [stack_windows([cache.features[(region, window[ti])] for window in frame_ids]) for ti in range(t)]
        flows = None
        if pairs:
            flows = {(a, p): stack_windows([cache.flows[(region, (window[a], window[p]))] for window in frame_ids])
                     for a, p in pairs}
        return feats, flows


def to_uint8(sr_bchw: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8 on the CPU, rounded (halves to even) as the metrics' `quantize` does."""
    return sr_bchw.clamp(0, 1).mul(255).round_().to(torch.uint8).cpu()


def sliding_windows(items: Iterable[T], batch_size: int, length: int = 5) -> Iterator[list[tuple[int, list[T]]]]:
    """Batches of (centre index, the `length` items of its window), in order, mirrored at both ends
    like `training.validation.window_indices`. Reads `items` lazily and holds at most batch_size + length - 1 of
    them; yields nothing for an empty stream."""
    half = length // 2
    iterator = iter(items)
    buffer: dict[int, T] = {}
    read = 0  # items read so far
    total: int | None = None  # known once the stream runs dry
    centre = 0
    batch: list[tuple[int, list[T]]] = []
    while True:
        while total is None and read <= centre + half:
            try:
                buffer[read] = next(iterator)
                read += 1
            except StopIteration:
                total = read
        if total is not None and centre >= total:
            break
        # Before the end is known, every index of the window has been read, so `read` stands in for
        # the length: window_indices mirrors only past it, which no index reaches.
        batch.append((centre, [buffer[i] for i in window_indices(centre, total or read, length)]))
        centre += 1
        # mirrored windows never reach back further than centre - half
        for old in [i for i in buffer if i < centre - half]:
            del buffer[old]
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- reading frames ----------------------------------------------------------------------------------


def frame_size_of_folder(seq: Sequence) -> tuple[int, int]:
    """(H, W) of a frame-folder sequence, read from the image headers only (cheap), so mixed sizes are
    refused before any work or output."""
    from PIL import Image

    first: tuple[int, int] | None = None
    for path in seq.frames:
        try:
            with Image.open(path) as image:
                size = (image.height, image.width)
        except Exception as err:  # PIL raises OSError, SyntaxError, ... for broken files
            raise InferenceError(f"{path}: cannot read this frame ({err})") from None
        if first is None:
            first = size
        elif size != first:
            raise InferenceError(f"{path}: frame is {size[1]}x{size[0]} (WxH) but {Path(seq.frames[0]).name} is "
                                 f"{first[1]}x{first[0]}; all frames of a sequence must have one size")
    assert first is not None, "scan_source never returns an empty frame folder"
    return first


def read_frames_chw(seq: Sequence, limit: int = 0) -> Iterator[torch.Tensor]:
    """The frames of a sequence as (3, H, W) uint8 tensors, streamed, the first `limit` only (0: all).
    A frame of another size than the first, or one that cannot be decoded, stops with a user error."""
    first: tuple[int, int] | None = None
    frames = read_frames(seq)
    for index in range(limit or sys.maxsize):
        try:
            frame_hwc = next(frames)
        except StopIteration:
            return
        except SequenceError as err:
            raise InferenceError(f"{seq.path}: {err}") from None
        size = frame_hwc.shape[:2]
        if first is None:
            first = size
        elif size != first:
            raise InferenceError(f"{seq.path}: frame {index} is {size[1]}x{size[0]} (WxH) but frame 0 is "
                                 f"{first[1]}x{first[0]}; all frames of a sequence must have one size")
        if not frame_hwc.flags.writeable:  # PIL's arrays are read-only views of its buffer
            frame_hwc = frame_hwc.copy()
        yield torch.from_numpy(frame_hwc).permute(2, 0, 1)


# -- writing frames ----------------------------------------------------------------------------------

# zlib level 3: 15 % larger files than the default 6 at less than half the time (0.23 s vs 0.53 s for
# a 2880x1620 frame), which keeps a GPU from waiting on the encoder.
PNG_COMPRESS_LEVEL = 3


def frame_names(seq: Sequence) -> Callable[[int], str]:
    """PNG name of output frame i: the input frame's own name where those are unique (a frame folder),
    else its number (00000000.png, ...)."""
    if seq.kind == "frames":
        stems = [Path(f).stem + ".png" for f in seq.frames]
        if len(set(stems)) == len(stems):
            return lambda index: stems[index]
    return numbered_frame_name


def numbered_frame_name(index: int) -> str:
    return f"{index:08d}.png"


class PngFolder:
    """Frames as PNG files in a folder, created with the first frame (a run that fails before it leaves
    nothing behind)."""

    def __init__(self, folder: Path, name_of: Callable[[int], str]) -> None:
        self.folder = folder
        self.name_of = name_of

    after_failure = "the frames written before it are complete and kept"

    def write(self, index: int, frame_hwc: np.ndarray) -> None:
        from PIL import Image

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / self.name_of(index)
        try:
            Image.fromarray(frame_hwc).save(path, compress_level=PNG_COMPRESS_LEVEL)
        except BaseException:
            path.unlink(missing_ok=True)  # a truncated PNG (disk full) would pass for a frame
            raise

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass  # frames written so far stay: they are complete files, and the user's


class BackgroundWriter:
    """Runs the sink's writes on worker threads so encoding overlaps with the model (PNG and H.264
    encoders release the GIL). At most `max_pending` frames wait, so memory stays bounded; one thread
    keeps a video's frames in order. A failed write surfaces at the next submit or at `close`."""

    def __init__(self, sink, threads: int, max_pending: int) -> None:
        self.sink = sink
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="upscale-writer")
        self.pending: deque[Future] = deque()
        self.max_pending = max_pending

    def submit(self, index: int, frame_hwc: np.ndarray) -> None:
        while len(self.pending) >= self.max_pending:
            self._wait(self.pending.popleft())
        self.pending.append(self.pool.submit(self.sink.write, index, frame_hwc))

    def close(self) -> None:
        while self.pending:
            self._wait(self.pending.popleft())
        self.pool.shutdown(wait=True)
        with self._as_user_error():
            self.sink.close()

    def _wait(self, future: Future) -> None:
        with self._as_user_error():
            future.result()

    @contextmanager
    def _as_user_error(self):
        """A full disk or a lost mount is the user's to fix: one line (the caller then aborts the sink,
        which removes what is incomplete)."""
        try:
            yield
        except OSError as err:
            target = getattr(self.sink, "path", None) or getattr(self.sink, "folder", "the output")
            reason = err.strerror or str(err)
            raise InferenceError(f"{target}: writing the output failed ({reason}); "
                                 f"{self.sink.after_failure}") from None

    def abort(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.sink.abort()


def note(message: str) -> None:
    """A remark for the user that is not an error (stderr, so stdout stays the result)."""
    print(f"note: {message}", file=sys.stderr)


# -- arguments both commands share -------------------------------------------------------------------



def gigabytes(text: str) -> float:
    """An argparse `type` for a memory size in GiB (>= 0)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of GiB") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


def add_checkpoint_argument(parser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="C",
                        help="a checkpoint folder, a symlink to one (RUN/checkpoint_best, RUN/checkpoint_latest) "
                             "or its model.safetensors")


def add_inference_arguments(parser) -> None:
    """How inference runs: batch, tiles, device, precision, how much, how loud."""
    parser.add_argument("--batch", type=int_at_least(1), default=1, metavar="N",
                        help="frames (5-frame windows) per forward pass (default 1; more helps on a GPU)")
    parser.add_argument("--tile", type=int_at_least(0), default=0, metavar="N",
                        help="run LR tiles of NxN pixels with enough overlap (the model's receptive radius) "
                             "that the output equals whole-frame processing; bounds memory for large "
                             "frames (0: whole frames, the default)")
    parser.add_argument("--cache-gb", type=gigabytes, default=2.0, metavar="G",
                        help="memory for the per-frame features of tiled runs, which each frame's five windows "
                             "share (default 2; whole frames always share them); when the frames in flight need "
                             "more, tiles are recomputed per window: same output, more compute")
    parser.add_argument("--device", default="auto",
                        help="auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N")
    parser.add_argument("--amp", action="store_true",
                        help="mixed precision: bf16 (fp16 on GPUs without bf16); faster on GPUs, output "
                             "differs slightly from fp32; on a CPU it is bf16 and rarely faster")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (GPU: faster after a compile of a minute or so per frame "
                             "size; falls back to eager with a note when compiling fails)")
    parser.add_argument("--limit", type=int_at_least(1), default=0, metavar="N",
                        help="only the first N frames of each sequence (they count as the whole sequence: "
                             "the last windows mirror at frame N)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
