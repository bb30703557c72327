"""The 5-frame windows a frame is restored from, mirrored at the sequence ends: one definition for
validation, evaluate and upscale.

Frame i is restored from frames i-2..i+2, mirrored at the sequence ends (frame 0 sees 2, 1, 0, 1, 2).
In inference, frames arrive one at a time from a decoder and sit in a sliding buffer that holds only
what the next batch of windows needs (batch + 4 frames), so a two-hour video never sits in memory
whole. The end of the sequence is known only when the decoder runs dry; until then no window reaches
past the last frame read, so none needs mirroring.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def window_indices(centre: int, num_frames: int, length: int = 5) -> list[int]:
    """Frame indices of the window around `centre`, mirrored at the sequence ends."""
    half = length // 2
    out = []
    for offset in range(-half, half + 1):
        i = centre + offset
        if i < 0:
            i = -i
        if i >= num_frames:
            i = 2 * (num_frames - 1) - i
        out.append(min(max(i, 0), num_frames - 1))
    return out


def sliding_windows(items: Iterable[T], batch_size: int, length: int = 5) -> Iterator[list[tuple[int, list[T]]]]:
    """Batches of (centre index, the `length` items of its window), in order, mirrored at both ends
    like `window_indices`. Reads `items` lazily and holds at most batch_size + length - 1 of
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
