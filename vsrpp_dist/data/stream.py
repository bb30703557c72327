"""The training stream: an endless, reproducible flow of 5-frame GT patches for every rank and worker.

How the work is split. Per epoch e, the shards are permuted with a generator seeded by (seed, e), the
same on every rank. Each shard is cut into `m = ceil(streams / shards)` *units* by sample index modulo m
(m = 1 whenever there are at least as many shards as streams, the scalable case); unit u goes to stream
u mod S, where S = world_size x workers and stream id = rank x workers + worker. So within an epoch
every sample goes to exactly one stream: ranks and workers see disjoint data.

Why it is exactly reproducible. A stream's epoch is a finite, deterministic list of samples (the manifest
knows how many each shard holds), shuffled through a byte-bounded buffer seeded by (seed, e, stream).
Every random choice for a clip (window, crop, flips, rotation, time reversal) comes from a generator
seeded by (seed, e, stream, position in epoch), so nothing depends on decoding order or timing.

Why resume is exact. The DataLoader takes batches from its workers round-robin, so batch k of a rank
comes from worker k mod W. Resuming at batch k0, physical worker p plays logical worker (p + k0) mod W,
and each logical worker skips the batches it produced before k0. Skipping walks whole epochs by their
known length and replays only the current epoch's raw samples, without decoding them. Corrupt samples
are skipped (counted, warned) and shift that worker's stream from there on: exactness holds for clean
data. Changing world size or worker count between runs changes the split (the run warns).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tarfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import DataStreamError
from ..files import file_sha256
from ..signals import detach_worker_from_signals
from . import shard_format as fmt
from .degradation import BicubicDegradation, Degradation
from .locations import Location, LocationError, RemoteReadError, RetryPolicy

CLIP_FRAMES = 5
FRAME_FIELDS = ("gt", "lr")  # a batch's frames; its other fields are draws and counters


def _generator(*words: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(w) for w in words])))


# -- the epoch plan: which samples each stream reads, from the manifest alone -------------------------


class EpochPlan:
    """Which (shard, residue, modulus) units each stream reads in each epoch, and how many samples that is."""

    def __init__(self, shard_samples: list[int], seed: int, num_streams: int) -> None:
        self.shard_samples = shard_samples
        self.seed = seed
        self.num_streams = num_streams
        self.modulus = max(1, math.ceil(num_streams / max(1, len(shard_samples))))

    def units(self, epoch: int, stream: int) -> list[tuple[int, int]]:
        order = _generator(self.seed, 0x5EED, epoch).permutation(len(self.shard_samples))
        total_units = len(order) * self.modulus
        return [(int(order[u // self.modulus]), u % self.modulus) for u in range(stream, total_units, self.num_streams)]

    def unit_samples(self, shard: int, residue: int) -> int:
        n = self.shard_samples[shard]
        return max(0, (n - residue + self.modulus - 1) // self.modulus)

    def epoch_samples(self, epoch: int, stream: int) -> int:
        return sum(self.unit_samples(shard, residue) for shard, residue in self.units(epoch, stream))


# -- reading shards -----------------------------------------------------------------------------------

_verified: dict[str, bool] = {}  # per process: shard address -> checksum matched


class ShardReader:
    """Reads raw samples (dict of field -> bytes) from shards; checks checksums on first use; skips and
    counts what is broken (missing, failing its checksum, unreadable, unreachable after the retries)
    instead of stopping the run, warning once per shard."""

    def __init__(self, location: Location, shards: list[dict[str, Any]], verify: bool, where: str,
                 max_member_bytes: int | None = None) -> None:
        self.location = location
        self.shards = shards
        self.max_member_bytes = max_member_bytes  # a tar header declaring more is a bad shard, never allocated
        self.verify = verify
        self.where = where
        self.corrupt_samples = 0
        self.bad_shards = 0
        self._warned: set[str] = set()

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"{self.where}: {message}", RuntimeWarning, stacklevel=2)

    def _usable(self, index: int) -> bool:
        entry = self.shards[index]
        key = self.location.url(entry["file"])
        if not self.location.is_local:
            # a remote shard is checked while it is read (reading it twice would double the traffic);
            # one found not to match is skipped from then on
            if _verified.get(key) is False:
                self.bad_shards += 1
                return False
            return True
        path = self.location.path / entry["file"]
        if not path.is_file():
            self.bad_shards += 1
            self._warn(key, f"shard {path} is missing; skipping it")
            return False
        if self.verify and entry.get("sha256"):
            if key not in _verified:
                _verified[key] = file_sha256(path) == entry["sha256"]
            if not _verified[key]:
                self.bad_shards += 1
                self._warn(key, f"shard {path} does not match its checksum in the manifest; skipping it")
                return False
        return True

    def warn_corrupt(self, key: Any, err: Exception) -> None:
        # every corrupt sample is counted; the warning repeats only at powers of two to keep logs readable
        count = self.corrupt_samples
        if count & (count - 1) == 0 or count % 1000 == 0:
            warnings.warn(f"{self.where}: skipping corrupt sample {key!r} ({type(err).__name__}: {err}); "
                          f"{count} skipped so far", RuntimeWarning, stacklevel=2)

    def samples(self, index: int, residue: int, modulus: int) -> Iterator[dict[str, bytes]]:
        """Samples i of shard `index` with i % modulus == residue, in file order."""
        if not self._usable(index):
            return
        entry = self.shards[index]
        name, key, label = entry["file"], self.location.url(entry["file"]), self.location.display(entry["file"])
        check_while_reading = (self.verify and bool(entry.get("sha256")) and not self.location.is_local
                               and key not in _verified)
        position = -1
        reader = None
        try:
            reader = self.location.open_reader(name, entry.get("bytes"), hashing=check_while_reading)
            for position, sample in enumerate(fmt.tar_samples(reader, self.max_member_bytes)):
                if position % modulus == residue:
                    yield sample
            if check_while_reading:
                reader.drain()
                _verified[key] = reader.sha256.hexdigest() == entry["sha256"]
                if not _verified[key]:
                    self.bad_shards += 1
                    self._warn(key, f"shard {label} does not match its checksum in the manifest (found at the end "
                                    "of reading it: this pass used its samples); skipping it from now on")
        except RemoteReadError as err:
            self.bad_shards += 1
            if position < 0:
                self._warn(key, f"shard {err}; skipping it")
            else:
                self._warn(key + "#read", f"shard {err} after {position + 1} samples; skipping the rest of it")
        except (tarfile.TarError, EOFError, OSError, ValueError) as err:
            self.bad_shards += 1
            reason = f"{type(err).__name__}: {err.args[0] if err.args else ''}"
            self._warn(key + "#read", f"shard {label} is unreadable after {position + 1} samples "
                                      f"({reason}); skipping the rest of it")
        finally:
            if reader is not None:
                reader.close()


def byte_bounded_shuffle(samples: Iterator[dict[str, bytes]], limit_bytes: int,
                         rng: np.random.Generator) -> Iterator[dict[str, bytes]]:
    """Shuffle raw (undecoded) samples through a buffer bounded in bytes, not in sample count: a
    sample-count buffer of large clips can eat gigabytes per worker (5000 raw 5x256x256 clips: ~5 GB)."""
    buffer: list[dict[str, bytes]] = []
    held = 0
    for sample in samples:
        buffer.append(sample)
        held += sum(len(v) for k, v in sample.items() if k != "__key__")
        while buffer and held > limit_bytes:
            picked = _pop_random(buffer, rng)
            held -= sum(len(v) for k, v in picked.items() if k != "__key__")
            yield picked
    while buffer:
        yield _pop_random(buffer, rng)


def _pop_random(buffer: list, rng: np.random.Generator):
    i = int(rng.integers(len(buffer)))
    buffer[i], buffer[-1] = buffer[-1], buffer[i]  # swap-remove: O(1) instead of list.pop(i)
    return buffer.pop()


# -- turning a raw tile-run sample into a training clip ----------------------------------------------


@dataclasses.dataclass
class ClipTimings:
    """Seconds spent in make_clip and, within it, decoding frames: where `bench loader` says a clip's
    time goes. A stream given one adds to it (in its own process: workers=0)."""
    make_clip_s: float = 0.0
    decode_s: float = 0.0


def make_clip(sample: dict[str, bytes], rng: np.random.Generator, codec: str, gt_patch: int,
              augment, has_lr: bool, max_tile_hw: tuple[int, int] | None = None,
              timings: ClipTimings | None = None) -> dict[str, torch.Tensor]:
    """Pick a 5-frame window and a patch inside the tile, decode only those 5 frames, augment. The
    sample's JSON is data too: the tile it declares must fit the manifest's largest (`max_tile_hw`), and
    every frame must declare that tile's size before it is decoded (shard_format.decode_frame)."""
    started = time.perf_counter()
    meta = json.loads(sample["json"])
    frames = meta["num_frames"]
    _, _, tile_h, tile_w = meta["tile"]
    if not all(isinstance(v, int) and v > 0 for v in (frames, tile_h, tile_w)) or \
            (max_tile_hw is not None and (tile_h > max_tile_hw[0] or tile_w > max_tile_hw[1])):
        raise fmt.ShardFormatError(f"the sample declares {frames} frames of a {tile_w}x{tile_h} tile, the "
                                   f"manifest's tiles are at most {max_tile_hw[1]}x{max_tile_hw[0]}"
                                   if max_tile_hw else f"the sample declares {frames} frames of {tile_w}x{tile_h}")
    window = int(rng.integers(0, frames - CLIP_FRAMES + 1))
    # patch origins on the x3 grid so real LR frames, when packed, crop at whole LR pixels
    y = fmt.SCALE * int(rng.integers(0, (tile_h - gt_patch) // fmt.SCALE + 1))
    x = fmt.SCALE * int(rng.integers(0, (tile_w - gt_patch) // fmt.SCALE + 1))
    flip_h, flip_v, rot, reverse = (rng.random(4) < 0.5).tolist()
    out = {}
    kinds = [("gt", False, gt_patch, y, x)]
    if has_lr:
        lr_patch = gt_patch // fmt.SCALE
        kinds.append(("lr", True, lr_patch, y // fmt.SCALE, x // fmt.SCALE))
    for name, lr, size, top, left in kinds:
        frames_tchw = []
        tile_hw = (tile_h // fmt.SCALE, tile_w // fmt.SCALE) if lr else (tile_h, tile_w)
        for i in range(window, window + CLIP_FRAMES):
            decode_started = time.perf_counter()
            image = fmt.decode_frame(sample[fmt.frame_field(i, codec, lr=lr)], codec, tile_hw)
            if timings is not None:
                timings.decode_s += time.perf_counter() - decode_started
            frames_tchw.append(image[:, top:top + size, left:left + size])
        clip = torch.stack(frames_tchw)
        if augment.flip_horizontal and flip_h:
            clip = clip.flip(-1)
        if augment.flip_vertical and flip_v:
            clip = clip.flip(-2)
        if augment.rotate90 and rot:
            clip = clip.transpose(-1, -2)
        if augment.reverse_time and reverse:
            clip = clip.flip(0)
        out[name] = clip.contiguous()
    if timings is not None:
        timings.make_clip_s += time.perf_counter() - started
    return out


# -- the dataset each worker runs --------------------------------------------------------------------


class TrainingShards:
    """A packed training set opened and checked once, before the run directory is touched, for this run's
    ranks and workers: its manifest, where its shards lie, and what the streams over it need to know."""

    def __init__(self, folder: str | Path, data_cfg, *, world_size: int) -> None:
        self.location = Location(folder, RetryPolicy.from_data_config(data_cfg))
        self.manifest = fmt.read_split_manifest(self.location, "train", "data.train_shards")
        self.folder = self.manifest["_folder"]  # where, for messages (masked)
        self.cfg = data_cfg
        self.world_size = world_size
        self.gt_patch = data_cfg.lr_patch_size * fmt.SCALE
        self.codec = self.manifest["codec"]
        self.has_lr = bool(self.manifest.get("has_lr"))  # real LR frames were packed beside GT
        self.workers = max(1, data_cfg.num_workers)
        self._check_patch_fits()
        tiles = [s["tile_size"] for s in self.manifest["sequences"]]
        self.max_tile_hw = (max(t[0] for t in tiles), max(t[1] for t in tiles))
        self.max_member_bytes = fmt.max_member_bytes(self.manifest)
        self.shard_samples = [int(s["samples"]) for s in self.manifest["shards"]]
        streams = world_size * self.workers
        if sum(self.shard_samples) < streams:
            raise DataStreamError(
                f"{self.folder}: {sum(self.shard_samples)} samples cannot feed {world_size} ranks x {self.workers} "
                f"workers = {streams} streams; pack more data or lower data.num_workers")
        if not self.location.is_local:
            self._check_shards_readable()

    def _check_shards_readable(self) -> None:
        """A readable manifest whose shards are denied or gone (copied alone, a bucket policy that covers
        only some keys) stops the start with one line, not with every shard skipped later."""
        first = self.manifest["shards"][0]["file"]
        try:
            found = self.location.exists(first)
        except RemoteReadError as err:
            raise LocationError(f"{err} (the manifest is readable, its first shard is not)") from None
        if not found:
            raise LocationError(f"{self.location.display(first)}: not found (404); the manifest lists it")

    def _check_patch_fits(self) -> None:
        tiles = [tuple(s["tile_size"]) for s in self.manifest["sequences"] if s.get("samples", 1)]
        smallest = min(min(t) for t in tiles)
        if smallest < self.gt_patch:
            raise DataStreamError(
                f"data.lr_patch_size={self.cfg.lr_patch_size} needs GT tiles of at least {self.gt_patch} px, but "
                f"{self.folder} has tiles as small as {smallest} px (pack with --min-tile {self.gt_patch} or more, "
                "or lower data.lr_patch_size)")


class ClipStream(IterableDataset):
    """Endless batches of uint8 clips for one rank: {"gt": (B,5,3,P,P)[, "lr": (B,5,3,P/3,P/3)], each clip's
    degradation draw, "skipped": (corrupt samples, bad shards) met since this worker's previous batch},
    from batch `start_batch` of this rank on (where a resumed run continues)."""

    def __init__(self, shards: TrainingShards, *, seed: int, rank: int, batch_size: int, degradation: Degradation,
                 start_batch: int = 0, clip_timings: ClipTimings | None = None) -> None:
        self.shards = shards
        self.cfg = shards.cfg
        self.seed = seed
        self.rank = rank
        self.batch_size = batch_size
        self.start_batch = start_batch
        self.degradation = degradation  # draws each clip's degradation from the clip's own generator
        self.clip_timings = clip_timings
        self.plan = EpochPlan(shards.shard_samples, seed, shards.world_size * shards.workers)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        physical, workers = (info.id, info.num_workers) if info else (0, 1)
        if workers != self.shards.workers:
            raise DataStreamError(f"stream built for {self.shards.workers} workers runs on {workers}")
        logical = (physical + self.start_batch) % workers
        stream = self.rank * workers + logical
        skip_batches = max(0, (self.start_batch - logical + workers - 1) // workers)
        where = f"rank {self.rank} worker {logical}"
        if self.rank == 0 and physical == 0 and self.plan.modulus > 1:
            self._warn_shards_are_read_several_times()
        shards = self.shards
        reader = ShardReader(shards.location, shards.manifest["shards"], self.cfg.verify_checksums, where,
                             shards.max_member_bytes)
        clips = self._clips(stream, skip_batches * self.batch_size, reader, where)
        reported = (0, 0)
        while True:
            batch = [next(clips) for _ in range(self.batch_size)]
            counts = (reader.corrupt_samples, reader.bad_shards)
            out = {name: torch.stack([clip[name] for clip in batch]) for name in batch[0]}
            # plain ints travel in the pickle; a tensor would cost a shared-memory segment per batch
            out["skipped"] = (counts[0] - reported[0], counts[1] - reported[1])
            reported = counts
            yield out

    def _warn_shards_are_read_several_times(self) -> None:
        """Once per run (rank 0, its first worker): too few shards cost bytes, over the network above all."""
        m, streams, shards = self.plan.modulus, self.plan.num_streams, self.shards
        warnings.warn(f"{shards.folder}: {len(self.plan.shard_samples)} shards for {shards.world_size} ranks x "
                      f"{shards.workers} workers = {streams} streams: each shard is read by {m} streams, each keeping "
                      f"1 sample in {m} ({m}x the bytes read, over the network too); pack with a smaller "
                      f"--shard-size for at least {streams} shards", RuntimeWarning, stacklevel=3)

    def _clips(self, stream: int, skip: int, reader: ShardReader, where: str) -> Iterator[dict[str, torch.Tensor]]:
        epoch = 0
        while skip >= (length := self.plan.epoch_samples(epoch, stream)) and length > 0:
            skip -= length
            epoch += 1
        while True:
            produced = 0
            for position, sample in enumerate(self._epoch_samples(epoch, stream, reader)):
                if position < skip:
                    continue  # replaying to the resume point: read, never decode
                rng = _generator(self.seed, epoch, stream, position)
                try:
                    clip = make_clip(sample, rng, self.shards.codec, self.shards.gt_patch, self.cfg.augment,
                                     self.shards.has_lr, self.shards.max_tile_hw, self.clip_timings)
                except MemoryError:  # the worker's memory, not the sample: frames are bounded before decoding
                    raise DataStreamError(f"{where}: out of memory while making clips (data.batch_size_per_gpu="
                                          f"{self.batch_size}, data.lr_patch_size={self.cfg.lr_patch_size}, "
                                          f"data.shuffle_buffer_mb={self.cfg.shuffle_buffer_mb}); lower them") from None
                except Exception as err:  # a corrupt frame inside a shard: skip the sample, keep training
                    reader.corrupt_samples += 1
                    reader.warn_corrupt(sample.get("__key__"), err)
                    continue
                clip.update(self.degradation.draw(rng, CLIP_FRAMES))  # after the clip's own draws
                produced += 1
                yield clip
            if produced == 0 and skip == 0 and self.plan.epoch_samples(epoch, stream) > 0:
                raise DataStreamError(f"{where}: no usable sample in epoch {epoch} of {self.shards.folder} "
                                      f"({reader.bad_shards} bad shards, {reader.corrupt_samples} corrupt samples); "
                                      "check the shards or pack the data again")
            skip = 0
            epoch += 1

    def _epoch_samples(self, epoch: int, stream: int, reader: ShardReader) -> Iterator[dict[str, bytes]]:
        def raw():
            for shard, residue in self.plan.units(epoch, stream):
                yield from reader.samples(shard, residue, self.plan.modulus)

        rng = _generator(self.seed, 0xB0FF, epoch, stream)
        return byte_bounded_shuffle(raw(), self.cfg.shuffle_buffer_mb << 20, rng)


def end_loader_workers() -> None:
    """End this process's loader workers now (a run that stops while they wait on a read that does not
    come): the DataLoader would otherwise wait up to 5 s for each to notice, when the run is already over.
    Only for the training process at its end: every child it has then is a loader worker."""
    import multiprocessing

    for child in multiprocessing.active_children():
        child.terminate()
    for child in multiprocessing.active_children():
        child.join(timeout=2)


def build_train_loader(folder: str | Path, data_cfg, *, seed: int, rank: int, world_size: int,
                       batch_size: int, start_batch: int = 0, degradation: Degradation | None = None,
                       pin_memory: bool = False, clip_timings: ClipTimings | None = None) -> DataLoader:
    """The loader a run over `folder` builds, in one call (benchmarks, tests); the trainer builds the same
    in two (the shards before the run directory, the stream once the batch size and resume point are known)."""
    stream = ClipStream(TrainingShards(folder, data_cfg, world_size=world_size), seed=seed, rank=rank,
                        batch_size=batch_size, start_batch=start_batch,
                        degradation=degradation or BicubicDegradation(), clip_timings=clip_timings)
    return train_loader(stream, data_cfg, pin_memory=pin_memory)


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch with its frames on `device`, as the stream made them (uint8); the rest (each clip's draw,
    the skip counters) stays on the host, where it is read."""
    return {k: v.to(device, non_blocking=True) if k in FRAME_FIELDS else v for k, v in batch.items()}


def train_loader(stream: ClipStream, data_cfg, *, pin_memory: bool = False) -> DataLoader:
    """The rank's loader over its stream; deliberately not passed through accelerator.prepare (which
    would have rank 0 read its own split only and dispatch slices of it: half the data never seen)."""
    workers = data_cfg.num_workers
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      prefetch_factor=data_cfg.prefetch_batches if workers > 0 else None,
                      persistent_workers=False, worker_init_fn=detach_worker_from_signals if workers else None)
