"""The upscaler `upscale`, `evaluate` and `bench upscale` run: 5-frame LR clips in, the centre frames x3
out, whole or in exact tiles (tiles.py), with per-frame results cached across windows (frame_cache.py)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..cli import note
from ..model.alignment import neighbour_pairs
from .frame_cache import FrameCache, run_per_frame, stack_windows
from .loading import LoadedModel
from .tiles import Span, tile_spans


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
        flow_channels = 2 * 2 if self.model_cfg.explicit_alignment else 0  # two flows per new frame
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
        pairs = neighbour_pairs(t) if self.model_cfg.explicit_alignment else []
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

