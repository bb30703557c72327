"""The on-disk format shared by the packer and the stream: tiles, sample keys, codecs, manifest.

Training shards hold *tile runs*: one spatial tile of a sequence over `frames_per_sample` consecutive
frames, each frame's tile encoded once as its own tar member (`000.webp`, `001.webp`, ...). The loader
picks a 5-frame window inside the run and a patch inside the tile, so it decodes only about what it
crops, and no frame is stored five times for overlapping windows. Runs do not overlap in time; the
windows that would straddle two runs are the price of that (4 of every `frames_per_sample` positions).

Validation shards hold whole frames, one sample per frame, in sequence order, so a validator can
stream a sequence at a time.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

FORMAT_NAME = "vsrpp-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
PARTIAL_SUFFIX = ".partial"  # files being written; never read, never counted as complete
CODECS = ("webp", "png", "raw")
DEFAULT_CODEC = "webp"  # lossless; chosen by measurement (BENCHMARKS.md, `bench loader --codecs`)
from ..config import SCALE
from ..errors import ShardFormatError

# torchvision 0.29 flags its image codecs as deprecated in favour of torchcodec, on every call. They
# remain the fastest decoder here (WebP tile: 0.56 ms vs PIL's 0.73 ms, BENCHMARKS.md); when they are
# removed, decode_frame is the one place to switch.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)




# -- tiling ------------------------------------------------------------------------------------------


def tile_origins(length: int, min_tile: int, multiple: int = SCALE) -> tuple[int, list[int]]:
    """Split `length` pixels into as many tiles of at least `min_tile` as fit, overlapping as little as
    possible. Returns (tile_size, origins); sizes and origins are multiples of `multiple` so that every
    tile maps onto whole LR pixels."""
    if length < min_tile:
        return length, [0]
    count = max(1, length // min_tile)
    size = math.ceil(length / count / multiple) * multiple
    size = min(size, length)
    if count == 1:
        return size, [0]
    span = length - size
    origins = [int(round(span * i / (count - 1) / multiple)) * multiple for i in range(count)]
    return size, origins


def crop_to_scale(height: int, width: int, scale: int = SCALE) -> tuple[int, int]:
    """The largest frame size divisible by the scale (frames are cropped at the bottom/right)."""
    return height - height % scale, width - width % scale


def run_bounds(num_frames: int, frames_per_sample: int, min_frames: int = 5) -> list[tuple[int, int]]:
    """Split a sequence into non-overlapping runs of `frames_per_sample`; a short tail joins the last
    run so every run holds at least one full window."""
    if num_frames < min_frames:
        return []
    bounds = []
    start = 0
    while start < num_frames:
        end = min(start + frames_per_sample, num_frames)
        if num_frames - end < min_frames and end < num_frames:
            end = num_frames
        bounds.append((start, end))
        start = end
    return bounds


# -- sample keys (no dots: WebDataset splits key and field at the first dot) -------------------------


def train_key(seq_index: int, run_index: int, tile_index: int) -> str:
    return f"s{seq_index:06d}r{run_index:05d}t{tile_index:03d}"


def val_key(seq_index: int, frame_index: int) -> str:
    return f"s{seq_index:06d}f{frame_index:06d}"


def frame_field(i: int, codec: str, lr: bool = False) -> str:
    return f"{'lr' if lr else ''}{i:03d}.{codec}"


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


# -- codecs ------------------------------------------------------------------------------------------


def encode_frame(hwc: np.ndarray, codec: str) -> bytes:
    """Lossless encoding of one uint8 HxWx3 image."""
    if hwc.dtype != np.uint8 or hwc.ndim != 3 or hwc.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {hwc.dtype} {hwc.shape}")
    if codec == "raw":
        header = np.array(hwc.shape, dtype="<u4").tobytes()
        return header + np.ascontiguousarray(hwc).tobytes()
    from PIL import Image

    buf = io.BytesIO()
    if codec == "webp":
        # method 0 / quality 0: the fastest lossless effort; ~10 % larger than method 4 but 25x faster
        Image.fromarray(hwc).save(buf, format="WEBP", lossless=True, quality=0, method=0)
    elif codec == "png":
        Image.fromarray(hwc).save(buf, format="PNG", compress_level=6)
    else:
        raise ValueError(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")
    return buf.getvalue()


def decode_frame(data: bytes, codec: str) -> torch.Tensor:
    """Bytes -> uint8 CxHxW tensor (decoded with torchvision's C decoders)."""
    from torchvision.io import decode_png, decode_webp

    if codec == "raw":
        h, w, c = np.frombuffer(data[:12], dtype="<u4")
        array = np.frombuffer(data, dtype=np.uint8, offset=12)
        if array.size != h * w * c:
            raise ShardFormatError(f"raw frame holds {array.size} bytes, header says {h}x{w}x{c}")
        return torch.from_numpy(array.reshape(h, w, c).copy()).permute(2, 0, 1)
    buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if codec == "webp":
        return decode_webp(buffer)
    if codec == "png":
        return decode_png(buffer)
    raise ShardFormatError(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")


# -- checksums and the manifest ----------------------------------------------------------------------


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(where) -> dict[str, Any]:
    """Load and sanity-check manifest.json. `where` is a folder (or the manifest file itself), a
    location string (s3://, gs://, http(s)://, pipe:) or a `locations.Location`. The manifest's
    "_folder" names where it came from (masked), for messages."""
    from .locations import Location

    location = where if isinstance(where, Location) else None
    if location is None:
        text = str(where)
        if Path(text).suffix == ".json" and "://" not in text and not text.startswith("pipe:"):
            text = str(Path(text).parent)
        location = Location(text)
    if location.is_local:
        path = location.path / MANIFEST_NAME
        if not path.is_file():
            if (path.parent / (MANIFEST_NAME + PARTIAL_SUFFIX)).exists():
                raise ShardFormatError(f"{path.parent}: packing did not finish (only {MANIFEST_NAME}{PARTIAL_SUFFIX} "
                                       "exists); pack again into an empty folder")
            raise ShardFormatError(f"{path}: no shard manifest here (make one with `python -m vsrpp_dist.pack`)")
        raw = path.read_bytes()
    else:
        from .locations import LocationError, RemoteReadError

        path = location.display(MANIFEST_NAME)
        try:
            raw = location.read_bytes(MANIFEST_NAME)
        except RemoteReadError as err:
            hint = " (no shard manifest here: make one with `python -m vsrpp_dist.pack`)" if err.kind == "missing" else ""
            raise LocationError(f"{err}{hint}") from None
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardFormatError(f"{path}: manifest is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise ShardFormatError(f"{path}: not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ShardFormatError(f"{path}: format version {manifest.get('format_version')} "
                               f"(this vsrpp-dist reads {FORMAT_VERSION}); pack the data again")
    if manifest.get("scale") != SCALE:
        raise ShardFormatError(f"{path}: packed for scale {manifest.get('scale')}, the model is x{SCALE}")
    if manifest.get("codec") not in CODECS:
        raise ShardFormatError(f"{path}: unknown codec {manifest.get('codec')!r}")
    if not manifest.get("shards"):
        raise ShardFormatError(f"{path}: the manifest lists no shards")
    manifest["_folder"] = str(location.path) if location.is_local else location.display()
    return manifest


def read_split_manifest(where, split: str, setting: str) -> dict:
    """The manifest of a location that must hold the given split ("train" or "val"); both readers refuse
    the other split with the same error, naming the config key."""
    manifest = read_manifest(where)
    if manifest.get("split") != split:
        how = "with --val" if split == "val" else "without --val"
        raise ShardFormatError(f"{manifest['_folder']}: holds a {manifest.get('split')!r} split; {setting} needs shards packed {how}")
    return manifest


# -- reading samples back ----------------------------------------------------------------------------


def tar_samples(stream) -> Iterator[dict[str, bytes]]:
    """The samples of one shard, in file order: {"__key__": key, field: bytes, ...}.

    WebDataset's own tar iteration and grouping (tar_file_iterator, group_by_keys), so members group
    into samples exactly as any WebDataset reader groups them. Its "__url__" entry is dropped: a sample is
    its key and its fields, so that what a shuffle buffer counts in bytes (stream.py) is the same
    wherever the shard was read from. (Every member's bytes are read, also those of samples a stream
    does not keep: a tar stream has to pass them anyway, locally and over the network alike.)"""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    files = ({**member, "__url__": ""} for member in tar_file_iterator(stream))
    for sample in group_by_keys(files):
        del sample["__url__"]
        yield sample
