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
        self.max_sequences = max_sequences
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
        wanted = {s["index"] for s in self.sequences}
        frames: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []
        current: tuple[int, str] | None = None
        for sample in self._samples():
            meta = json.loads(sample["json"])
            if meta["seq"] not in wanted:
                continue
            if current is not None and meta["seq"] != current[0]:
                yield self._sequence(current, frames)
                frames = []
            current = (meta["seq"], meta["name"])
            gt = fmt.decode_frame(sample[f"gt.{self.codec}"], self.codec)
            lr = fmt.decode_frame(sample[f"lr.{self.codec}"], self.codec) if f"lr.{self.codec}" in sample else None
            frames.append((meta["frame"], gt, lr))
        if current is not None and frames:
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
                yield from fmt.tar_samples(reader)
            except (tarfile.TarError, EOFError, OSError, ValueError) as err:
                reason = err if isinstance(err, RemoteReadError) else (err.args[0] if err.args else type(err).__name__)
                raise fmt.ShardFormatError(f"{self.location.display(entry['file'])}: validation shard is "
                                           f"unreadable ({reason})") from None
            finally:
                if reader is not None:
                    reader.close()
