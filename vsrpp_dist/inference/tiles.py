"""Exact tiles. A large frame is cut into LR tiles of `tile` x `tile` pixels ("cores"), each run with
`model.receptive_field.receptive_radius` pixels of real context around it (fewer at the image border, where the untiled
model zero-pads just the same), and only the core's x3 output is kept. Every output pixel then sees
exactly the inputs it sees untiled, so tiled output equals untiled output up to float rounding
(convolution algorithms differ with the input size). All tiles share one size, with tiles at the
bottom/right shifted inwards, so they batch and cuDNN autotunes one shape.
"""

from __future__ import annotations

from dataclasses import dataclass


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
