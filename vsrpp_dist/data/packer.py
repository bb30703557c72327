"""Writing shards: sequences become samples (worker side), samples become shards (main side).

The two halves meet in a *spool*: a worker decodes, tiles and encodes one segment of a sequence (a
whole short sequence, or a run-aligned part of a long one) into its own `spool-NNNNNN-KKK.partial`
file; the main process then appends the spooled samples to the shards in sequence order, giving each
sequence its index and every sample its key and JSON there. Two things follow from that split:
- shard boundaries and bytes depend only on the input and the options, never on `--workers` or on
  which worker finished first (the cost is one extra sequential copy of the output bytes);
- a sequence that turns out to be broken half-way (a truncated frame, a video that stops decoding) is
  dropped by deleting its spool, so a shard never holds part of a skipped sequence, and the indices of
  the sequences that were packed stay contiguous.

Shards are written as `NAME.tar.partial` and only renamed by `ShardSink.commit()`, after every
sequence is in; the manifest follows last (pack_command.py). An interrupted pack leaves only `.partial` files.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_write_text, fsync_folder
from .shard_format import (
    DEFAULT_CODEC,
    PARTIAL_SUFFIX,
    SCALE,
    crop_to_scale,
    encode_frame,
    frame_field,
    shard_name,
    tile_origins,
    train_key,
    val_key,
)
from .sources import Sequence, SequenceError, read_frames

MIN_FRAMES = 5  # one model clip; shorter sequences cannot give a single training window
TAR_MTIME = 946684800  # fixed member time (2000-01-01): the same input gives byte-identical shards
_TAR_BLOCK = 512


@dataclass(frozen=True)
class PackOptions:
    split: str = "train"  # "train": tile runs; "val": whole frames, one sample per frame
    codec: str = DEFAULT_CODEC
    frames_per_sample: int = 15  # frames of one tile run (train)
    min_tile: int = 256  # smallest tile side in GT pixels (train)
    shard_size: int = 1 << 30  # bytes per shard, upper bound unless one sample alone is larger


# Long sequences are cut into segments so that several workers can share one long video or frame
# folder. Segments start on run boundaries (multiples of frames_per_sample), so the runs each one writes
# are exactly the runs `run_bounds` gives for the whole sequence: cutting never changes the output.
# A video segment must decode (and drop) every frame before its start, hence longer video segments.
MIN_SEGMENT_RUNS = {"frames": 4, "video": 20}


def plan_segments(num_frames: int | None, kind: str, frames_per_sample: int,
                  workers: int) -> list[tuple[int, int | None]]:
    """(start, end) frame ranges for one sequence, end None = to the end; `num_frames` may be a
    container's estimate (or None): the last segment always reads to the true end."""
    if workers <= 1 or not num_frames:
        return [(0, None)]
    runs = num_frames // frames_per_sample
    per_segment = max(MIN_SEGMENT_RUNS[kind], -(-runs // workers))
    starts = [run * frames_per_sample for run in range(0, runs, per_segment)]
    if len(starts) <= 1:
        return [(0, None)]
    return list(zip(starts, starts[1:])) + [(starts[-1], None)]


@dataclass(frozen=True)
class SegmentTask:
    sequence: int  # index among the candidate sequences (not yet the manifest index)
    segment: int  # 0, 1, ... within the sequence
    seq: Sequence
    lr: Sequence | None
    start: int  # first frame; a run boundary
    end: int | None  # frames from here on belong to the next segment; None: to the end
    spool: str


@dataclass
class SegmentReport:
    """What a worker found and wrote for one segment; `reason` is set when the data is unusable."""

    sequence: int
    segment: int
    reason: str | None = None
    num_frames: int = 0  # frames this segment packed
    layout: FrameLayout | None = None
    first_label: str = ""  # its first frame, for messages
    runs: int = 0
    samples: int = 0
    spool: str = ""


@dataclass
class SequenceResult:
    """A whole sequence, put together from its segments' reports."""

    num_frames: int
    layout: FrameLayout
    runs: int
    samples: int
    spools: list[str]


# -- worker side: one segment -> spooled samples -----------------------------------------------------


@dataclass(frozen=True)
class FrameLayout:
    """How every frame of a sequence is cropped and cut, fixed by its first frame."""

    original_size: tuple[int, int]
    frame_size: tuple[int, int]
    tile_size: tuple[int, int]
    origins: tuple[tuple[int, int], ...]  # tile t = origins[t], row-major over (y, x)

    @classmethod
    def for_frame(cls, height: int, width: int, min_tile: int, whole_frames: bool) -> FrameLayout:
        h, w = crop_to_scale(height, width)
        if h == 0 or w == 0:
            raise SequenceError(f"frames of {width}x{height} (WxH) are smaller than the scale {SCALE}")
        if whole_frames:
            return cls((height, width), (h, w), (h, w), ((0, 0),))
        th, ys = tile_origins(h, min_tile)
        tw, xs = tile_origins(w, min_tile)
        return cls((height, width), (h, w), (th, tw), tuple((y, x) for y in ys for x in xs))


class RunSplitter:
    """Cuts a stream of frames into exactly the runs `run_bounds(n, frames_per_sample)` gives, without
    knowing n in advance (a video's length is only certain once it is decoded): a full run is released
    once `MIN_FRAMES` more frames exist after it; whatever is left at the end is the last run.
    Released runs are (run_index, first_frame, items)."""

    def __init__(self, frames_per_sample: int, first_frame: int = 0):
        assert first_frame % frames_per_sample == 0, "segments start on run boundaries"
        self.frames_per_sample = frames_per_sample
        self.released = 0
        self._buffer: list = []
        self._first = first_frame

    def push(self, item) -> list[tuple[int, int, list]]:
        self._buffer.append(item)
        if len(self._buffer) >= self.frames_per_sample + MIN_FRAMES:
            return [self._release(self.frames_per_sample)]
        return []

    def finish(self) -> list[tuple[int, int, list]]:
        """The stream ended. Fewer than MIN_FRAMES left over means the sequence is too short, or, in
        a segment that released nothing, that the segment before took them into its last run."""
        if len(self._buffer) < MIN_FRAMES:
            return []
        return [self._release(len(self._buffer))]

    def cut(self) -> list[tuple[int, int, list]]:
        """The stream goes on (the next segment takes it from here): what is held is one full run."""
        assert len(self._buffer) in (0, self.frames_per_sample)
        return [self._release(len(self._buffer))] if self._buffer else []

    def _release(self, count: int) -> tuple[int, int, list]:
        run = (self._first // self.frames_per_sample, self._first, self._buffer[:count])
        del self._buffer[:count]
        self._first += count
        self.released += 1
        return run


def pack_segment(task: SegmentTask, options: PackOptions,
                 on_frame: Callable[[], None] | None = None) -> SegmentReport:
    """Decode, check, tile and encode one segment into its spool. Data problems come back as
    report.reason (the sequence is skipped); write errors (disk full) propagate and stop the pack."""
    report = SegmentReport(task.sequence, task.segment, spool=task.spool)
    try:
        with open(task.spool, "wb") as spool:
            _SegmentEncoder(task, options, spool, report, on_frame or (lambda: None)).run()
    except SequenceError as err:
        os.remove(task.spool)  # our own scratch file; nothing of this sequence reaches a shard
        return SegmentReport(task.sequence, task.segment, reason=str(err))
    return report


def frame_label(seq: Sequence, index: int) -> str:
    return Path(seq.frames[index]).name if seq.kind == "frames" else f"frame {index}"


class _SegmentEncoder:
    def __init__(self, task: SegmentTask, options: PackOptions, spool, report: SegmentReport,
                 on_frame: Callable[[], None]):
        self.task, self.options, self.spool, self.report, self.on_frame = task, options, spool, report, on_frame
        self.codec = options.codec
        self.whole_frames = options.split == "val"
        self.splitter = RunSplitter(options.frames_per_sample, task.start)
        self.layout: FrameLayout | None = None

    def run(self) -> None:
        task = self.task
        gt_frames = read_frames(task.seq, task.start)
        lr_frames = read_frames(task.lr, task.start) if task.lr is not None else None
        # frames past `end` are only looked at to learn whether the sequence goes on for at least one
        # more clip; if not, they belong to this segment's last run (run_bounds' short-tail rule)
        lookahead: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        goes_on = False
        index = task.start
        try:
            for gt in gt_frames:
                lr = None
                if lr_frames is not None:
                    lr = next(lr_frames, None)
                    if lr is None:
                        raise SequenceError(f"LR sequence {task.lr.path} has only {index} frames, the GT has more")
                if task.end is not None and index >= task.end:
                    lookahead.append((index, gt, lr))
                    if self.whole_frames or len(lookahead) == MIN_FRAMES:
                        goes_on = True
                        break
                else:
                    self.add(index, gt, lr)
                index += 1
            if not goes_on:
                for args in lookahead:
                    self.add(*args)
                if lr_frames is not None and next(lr_frames, None) is not None:
                    raise SequenceError(f"LR sequence {task.lr.path} has more frames than the GT's {index}")
        finally:
            gt_frames.close()  # releases an open video container at once, also when skipping
            if lr_frames is not None:
                lr_frames.close()
        if not self.whole_frames:
            for run in (self.splitter.cut() if goes_on else self.splitter.finish()):
                self.spool_run(*run)
            if self.splitter.released == 0 and task.start > 0:
                self.report.num_frames = 0  # a short tail the previous segment took
        self.report.layout = self.layout

    def add(self, index: int, gt: np.ndarray, lr: np.ndarray | None) -> None:
        task, codec = self.task, self.codec
        if self.layout is None:
            self.layout = FrameLayout.for_frame(gt.shape[0], gt.shape[1], self.options.min_tile, self.whole_frames)
            self.report.first_label = frame_label(task.seq, index)
        layout = self.layout
        if gt.shape[:2] != layout.original_size:
            h0, w0 = layout.original_size
            raise SequenceError(f"{frame_label(task.seq, index)} is {gt.shape[1]}x{gt.shape[0]} (WxH) but "
                                f"{self.report.first_label} is {w0}x{h0}: mixed frame sizes")
        h, w = layout.frame_size
        gt = gt[:h, :w]
        if lr is not None and lr.shape[:2] != (h // SCALE, w // SCALE):
            raise SequenceError(f"LR {frame_label(task.lr, index)} is {lr.shape[1]}x{lr.shape[0]} (WxH), expected "
                                f"{w // SCALE}x{h // SCALE} = the (cropped) GT {w}x{h} / {SCALE}")
        if self.whole_frames:
            fields = {f"gt.{codec}": encode_frame(np.ascontiguousarray(gt), codec)}
            if lr is not None:
                fields[f"lr.{codec}"] = encode_frame(np.ascontiguousarray(lr), codec)
            _spool(self.spool, {"frame": index, "fields": fields})
            self.report.samples += 1
        else:
            tiles = [_encode_tile(gt, lr, y, x, layout.tile_size, codec) for y, x in layout.origins]
            for run in self.splitter.push(tiles):
                self.spool_run(*run)
        self.report.num_frames += 1
        self.on_frame()

    def spool_run(self, run_index: int, first: int, frames: list) -> None:
        layout, codec = self.layout, self.codec
        th, tw = layout.tile_size
        for tile, (y, x) in enumerate(layout.origins):
            fields = {}
            for k, tiles in enumerate(frames):
                gt_bytes, lr_bytes = tiles[tile]
                fields[frame_field(k, codec)] = gt_bytes
                if lr_bytes is not None:
                    fields[frame_field(k, codec, lr=True)] = lr_bytes
            _spool(self.spool, {"run": run_index, "tile": tile, "first_frame": first, "num_frames": len(frames),
                                "box": [y, x, th, tw], "fields": fields})
            self.report.samples += 1
        self.report.runs += 1


def _encode_tile(gt: np.ndarray, lr: np.ndarray | None, y: int, x: int, tile_size: tuple[int, int],
                 codec: str) -> tuple[bytes, bytes | None]:
    th, tw = tile_size
    gt_tile = encode_frame(np.ascontiguousarray(gt[y:y + th, x:x + tw]), codec)
    if lr is None:
        return gt_tile, None
    s = SCALE
    return gt_tile, encode_frame(np.ascontiguousarray(lr[y // s:(y + th) // s, x // s:(x + tw) // s]), codec)


def combine_segments(reports: list[SegmentReport]) -> SequenceResult:
    """One sequence from its segments, in order; raises SequenceError when the whole is unusable
    (a segment's own problem, too few frames, sizes that differ between segments)."""
    for report in reports:
        if report.reason is not None:
            raise SequenceError(report.reason)
    packed = [r for r in reports if r.num_frames]
    num_frames = sum(r.num_frames for r in packed)
    if num_frames < MIN_FRAMES:
        raise SequenceError(f"only {num_frames} frames (a clip needs {MIN_FRAMES})")
    layout = packed[0].layout
    for report in packed[1:]:
        if report.layout.original_size != layout.original_size:
            (h, w), (h0, w0) = report.layout.original_size, layout.original_size
            raise SequenceError(f"{report.first_label} is {w}x{h} (WxH) but {packed[0].first_label} is "
                                f"{w0}x{h0}: mixed frame sizes")
    return SequenceResult(num_frames, layout, sum(r.runs for r in reports), sum(r.samples for r in reports),
                          [r.spool for r in reports if r.spool])


def _spool(handle, record: dict) -> None:
    pickle.dump(record, handle, protocol=pickle.HIGHEST_PROTOCOL)


def read_spool(path: str) -> Iterator[dict]:
    with open(path, "rb") as handle:
        while True:
            try:
                yield pickle.load(handle)
            except EOFError:
                return


# -- main side: spooled samples -> shards ------------------------------------------------------------


def train_sample(seq_index: int, name: str, frame_size: tuple[int, int], record: dict) -> dict:
    """The tar members of one tile-run sample: key, JSON, frame fields (shard_format's contract)."""
    meta = {"seq": seq_index, "name": name, "first_frame": record["first_frame"],
            "num_frames": record["num_frames"], "tile": record["box"], "frame_size": list(frame_size)}
    return {"__key__": train_key(seq_index, record["run"], record["tile"]), "json": _json(meta),
            **record["fields"]}


def val_sample(seq_index: int, name: str, num_frames: int, frame_size: tuple[int, int], record: dict) -> dict:
    """The tar members of one validation frame."""
    meta = {"seq": seq_index, "name": name, "frame": record["frame"], "num_frames": num_frames,
            "frame_size": list(frame_size)}
    return {"__key__": val_key(seq_index, record["frame"]), "json": _json(meta), **record["fields"]}


def _json(meta: dict) -> bytes:
    return json.dumps(meta, separators=(",", ":")).encode("utf-8")


class _HashingFile:
    """A write-only file that counts and hashes what passes through, so no shard is read back."""

    def __init__(self, path: Path):
        self._handle = open(path, "wb")
        self._sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data) -> int:
        self._handle.write(data)
        self._sha.update(data)
        self.bytes += len(data)
        return len(data)

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())  # the rename in commit() must not outlive lost data
        self._handle.close()

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


@dataclass
class _Shard:
    index: int
    partial: Path
    final: Path
    samples: int = 0
    payload: int = 0  # tar bytes of the members so far (headers and padding included)
    bytes: int = 0
    sha256: str = ""
    first_seq: int = -1
    last_seq: int = -1


class ShardSink:
    """Appends samples to `split-NNNNNN.tar.partial` shards, starting a new one before a sample would
    push the current one past `shard_size`; a sample is never split across shards."""

    def __init__(self, out: Path, split: str, shard_size: int, publish: Callable[[Path, str], None] | None = None):
        """publish(local_file, final_name): when given (packing to a bucket), each shard is handed to it as
        soon as it is closed, under its final name, instead of being renamed in `out` at commit()."""
        self.out = Path(out)
        self.split = split
        self.shard_size = shard_size
        self.publish = publish
        self.shards: list[_Shard] = []
        self._file: _HashingFile | None = None
        self._writer = None

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def abort(self) -> None:
        """After a failure: close the open shard as it is (it keeps its .partial name), quietly, so
        that no half-closed tar stream tries to write into it later."""
        if self._writer is None:
            return
        for close in (self._writer.close, self._file.close):
            try:
                close()
            except Exception:  # the disk may still be full; the file is .partial either way
                pass
        self._writer = self._file = None

    def add_sequence(self, seq_index: int, name: str, result: SequenceResult) -> None:
        """Move a finished sequence from its spools into the shards, then delete the spools."""
        frame_size = result.layout.frame_size
        for spool in result.spools:
            for record in read_spool(spool):
                if self.split == "val":
                    sample = val_sample(seq_index, name, result.num_frames, frame_size, record)
                else:
                    sample = train_sample(seq_index, name, frame_size, record)
                self.write(sample, seq_index)
            os.remove(spool)

    def write(self, sample: dict, seq_index: int) -> None:
        size = sum(_TAR_BLOCK + _padded(len(v)) for k, v in sample.items() if k != "__key__")
        shard = self.shards[-1] if self._writer is not None else None
        if shard is None or (shard.samples and shard.payload + size + 2 * _TAR_BLOCK > self.shard_size):
            self._close_current()
            shard = self._open_next()
        self._writer.write(sample)
        shard.samples += 1
        shard.payload += size
        if shard.first_seq < 0:
            shard.first_seq = seq_index
        shard.last_seq = seq_index

    def _open_next(self) -> _Shard:
        import webdataset as wds

        index = len(self.shards)
        final = self.out / shard_name(self.split, index)
        shard = _Shard(index, final.with_name(final.name + PARTIAL_SUFFIX), final)
        self._file = _HashingFile(shard.partial)
        self._writer = wds.TarWriter(self._file, encoder=False, user="vsrpp", group="vsrpp", mode=0o444,
                                     mtime=TAR_MTIME)
        self.shards.append(shard)
        return shard

    def _close_current(self) -> None:
        if self._writer is None:
            return
        self._writer.close()  # writes the end-of-archive blocks into our file; does not close it
        self._file.close()
        shard = self.shards[-1]
        shard.bytes, shard.sha256 = self._file.bytes, self._file.hexdigest()
        self._writer = self._file = None
        if self.publish is not None:
            self.publish(shard.partial, shard.final.name)

    def commit(self) -> list[dict]:
        """Close the last shard and give every shard its final name; returns the manifest entries."""
        self._close_current()
        if self.publish is not None:
            return self._entries()
        for shard in self.shards:
            if shard.final.exists():  # checked before packing; something else wrote there since
                raise FileExistsError(f"{shard.final} appeared while packing; not overwriting it")
        for shard in self.shards:
            os.rename(shard.partial, shard.final)
        fsync_folder(self.out)
        return self._entries()

    def _entries(self) -> list[dict]:
        return [{"file": s.final.name, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256,
                 "sequences": [s.first_seq, s.last_seq]} for s in self.shards]


def _padded(size: int) -> int:
    return -(-size // _TAR_BLOCK) * _TAR_BLOCK


def write_json_atomically(path: Path, obj) -> None:
    """`path.partial` first, fsync, then rename: a reader never sees half a file."""
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n", durable=True, overwrite=False,
                      temporary=path.with_name(path.name + PARTIAL_SUFFIX))


class ShardUploader:
    """Uploads finished shards to a bucket in a background thread while the next one is written; at most
    one upload is in flight, so the staging folder holds at most two shards. Each uploaded shard's local
    file is deleted. An upload's error surfaces at the next submit() or at finish()."""

    def __init__(self, destination) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.destination = destination
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vsrpp-upload")
        self._pending = None
        self.uploaded: list[str] = []

    def submit(self, local: Path, name: str) -> None:
        self._wait()
        self._pending = self._pool.submit(self._upload, Path(local), name)

    def _upload(self, local: Path, name: str) -> None:
        self.destination.upload(local, name)
        self.uploaded.append(name)
        local.unlink()

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def finish(self) -> None:
        self._wait()

    def __enter__(self) -> ShardUploader:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # on a failure the upload in flight is allowed to end (a half-sent object never appears in a
        # bucket); nothing new starts
        self._pool.shutdown(wait=True, cancel_futures=True)
