"""Reading a packed validation set (`pack --val`): whole sequences, in frame order, one at a time."""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from . import shard_format as fmt
from .locations import Location, LocationError, RemoteReadError, RetryPolicy


@dataclass
class ValSequence:
    index: int
    name: str
    gt: torch.Tensor  # (N, 3, H, W) uint8
    lr: torch.Tensor | None  # (N, 3, H/3, W/3) uint8 when real LR frames were packed


class ValidationSet:
    def __init__(self, folder: str | Path | Location, max_sequences: int = 0, policy: RetryPolicy = RetryPolicy()) -> None:
        self.location = folder if isinstance(folder, Location) else Location(folder, policy)
        self.manifest = fmt.read_split_manifest(self.location, "val", "data.val_shards")
        self.folder = self.manifest["_folder"]  # where, for messages (masked)
        self.codec = self.manifest["codec"]
        self.has_lr = bool(self.manifest.get("has_lr"))  # real LR frames were packed beside GT
        self.max_sequences = max_sequences
        self.damaged: dict[int, str] = {}  # sequence index -> why it was skipped (the latest pass)
        self.max_member_bytes = fmt.max_member_bytes(self.manifest)
        for entry in self.manifest["shards"]:  # validation sets are a few shards: each is checked
            try:
                found = self.location.exists(entry["file"])
            except RemoteReadError as err:
                raise LocationError(f"validation shard {err}") from None
            if not found:
                raise fmt.ShardFormatError(f"{self.folder}: validation shard {entry['file']} is missing")

    @property
    def sequences(self) -> list[dict]:
        seqs = [s for s in self.manifest["sequences"] if s.get("num_frames", 0) > 0]
        return seqs[: self.max_sequences] if self.max_sequences else seqs

    def __iter__(self) -> Iterator[ValSequence]:
        """The wanted sequences in order. A sequence with a damaged frame (a member that fails its checks
        before decoding, shard_format.decode_frame) is skipped whole and recorded in `damaged` (index ->
        reason) for the reader to report: a frame left out would shift every window around it. Every
        rank reads the same files, so every rank skips the same sequences."""
        by_index = {s["index"]: s for s in self.sequences}
        frames: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []
        current: tuple[int, str] | None = None
        broken: str | None = None  # why the current sequence is skipped
        for sample in self._samples():
            try:
                meta = json.loads(sample["json"])
                seq = meta["seq"]
            except (KeyError, TypeError, ValueError, UnicodeDecodeError):
                continue  # a sample that names no sequence belongs to none
            if seq not in by_index:
                continue
            if current is not None and seq != current[0]:
                if broken is None:
                    yield self._sequence(current, frames)
                frames, broken = [], None
            current = (seq, by_index[seq]["name"])
            if broken is not None:
                continue
            try:
                gt_hw = tuple(by_index[seq]["frame_size"])
                gt = fmt.decode_frame(sample[f"gt.{self.codec}"], self.codec, gt_hw)
                lr_field = f"lr.{self.codec}"
                # a set packed with LR has it in every sample: a sample without it is damaged (KeyError)
                lr = fmt.decode_frame(sample[lr_field], self.codec, (gt_hw[0] // fmt.SCALE, gt_hw[1] // fmt.SCALE)) \
                    if self.has_lr else None
                frames.append((int(meta["frame"]), gt, lr))
            except (fmt.ShardFormatError, KeyError, TypeError, ValueError, RuntimeError) as err:
                broken = f"{sample.get('__key__')}: {type(err).__name__}: {err}"
                self.damaged[seq] = broken
        if current is not None and frames and broken is None:
            yield self._sequence(current, frames)

    def _sequence(self, current: tuple[int, str], frames: list) -> ValSequence:
        frames.sort(key=lambda f: f[0])
        gt = torch.stack([f[1] for f in frames])
        lr = torch.stack([f[2] for f in frames]) if frames[0][2] is not None else None
        return ValSequence(current[0], current[1], gt, lr)

    def _samples(self) -> Iterator[dict[str, bytes]]:
        for entry in self.manifest["shards"]:
            reader = None
            try:
                reader = self.location.open_reader(entry["file"], entry.get("bytes"), hashing=False)
                yield from fmt.tar_samples(reader, self.max_member_bytes)
            except (tarfile.TarError, EOFError, OSError, ValueError) as err:
                reason = err if isinstance(err, RemoteReadError) else (err.args[0] if err.args else type(err).__name__)
                raise fmt.ShardFormatError(f"{self.location.display(entry['file'])}: validation shard is "
                                           f"unreadable ({reason})") from None
            finally:
                if reader is not None:
                    reader.close()
