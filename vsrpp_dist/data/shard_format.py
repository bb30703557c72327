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

import io
import json
import math
import re
import warnings
import zlib
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


def decode_frame(data: bytes, codec: str, size_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Bytes -> uint8 CxHxW tensor (WebP with torchvision's C decoder, PNG with Pillow).

    Nothing reaches a decoder unchecked: the image's own header must declare `size_hw` (the size the
    manifest promises; a 38-byte WebP declaring 16383x16383 would otherwise take gigabytes), and a PNG's
    chunks are verified and it is decoded by Pillow (decode_png: libpng, inside torchvision, ends the
    process on a damaged PNG).
    A frame that fails a check raises ShardFormatError, which readers turn into a skipped sample."""
    from torchvision.io import decode_webp

    if size_hw is not None:
        declared = frame_header_size(data, codec)
        if declared != tuple(size_hw):
            raise ShardFormatError(f"the {codec} frame declares {declared[1]}x{declared[0]} (WxH), the manifest "
                                   f"promises {size_hw[1]}x{size_hw[0]}")
    if codec == "raw":
        h, w, c = (int(v) for v in np.frombuffer(data[:12], dtype="<u4"))
        array = np.frombuffer(data, dtype=np.uint8, offset=12)
        if array.size != h * w * c:
            raise ShardFormatError(f"raw frame holds {array.size} bytes, header says {h}x{w}x{c}")
        return torch.from_numpy(array.reshape(h, w, c).copy()).permute(2, 0, 1)
    if codec == "webp":  # libwebp reports damage as an error (fuzzed here: no crash)
        return decode_webp(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    if codec == "png":
        return decode_png(data)
    raise ShardFormatError(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def frame_header_size(data: bytes, codec: str) -> tuple[int, int]:
    """(height, width) as the frame's own header declares it, read without decoding anything."""
    try:
        if codec == "raw":
            h, w, c = (int(v) for v in np.frombuffer(data[:12], dtype="<u4"))
            if c != 3:
                raise ShardFormatError(f"raw frame with {c} channels")
            return h, w
        if codec == "png":
            if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
                raise ShardFormatError("not a PNG (no signature and IHDR)")
            return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
        if codec == "webp":
            if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
                raise ShardFormatError("not a WebP (no RIFF/WEBP header)")
            kind = data[12:16]
            if kind == b"VP8L":  # lossless: 14-bit width-1 and height-1 after the signature byte
                bits = int.from_bytes(data[21:25], "little")
                return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
            if kind == b"VP8X":  # extended: 24-bit canvas width-1 and height-1
                return int.from_bytes(data[27:30], "little") + 1, int.from_bytes(data[24:27], "little") + 1
            if kind == b"VP8 ":  # lossy: 14-bit sizes after the key frame's start code
                if data[23:26] != b"\x9d\x01\x2a":
                    raise ShardFormatError("WebP VP8 frame without its start code")
                return int.from_bytes(data[28:30], "little") & 0x3FFF, int.from_bytes(data[26:28], "little") & 0x3FFF
            raise ShardFormatError(f"unknown WebP chunk {kind!r}")
    except (ValueError, TypeError) as err:  # too short for its header
        raise ShardFormatError(f"{codec} frame header unreadable ({err})") from None
    raise ShardFormatError(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")


def verify_png(data: bytes) -> None:
    """Check a PNG's structure before anything decodes it: the signature, an IHDR first, every chunk's
    CRC (a flipped byte anywhere is found here, also in the image data, where a decoder might turn it
    into a plausible wrong picture), image data and an IEND. Raises ShardFormatError naming the first
    problem. Damage with valid CRCs is left to the decoder, which must be one that raises (decode_png)."""
    if data[:8] != PNG_SIGNATURE:
        raise ShardFormatError("not a PNG (no signature)")
    view = memoryview(data)
    pos, seen_ihdr, seen_idat = 8, False, False
    while True:
        if pos + 12 > len(data):
            raise ShardFormatError("PNG cut short (no IEND chunk)")
        length = int.from_bytes(view[pos:pos + 4], "big")
        kind = bytes(view[pos + 4:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise ShardFormatError(f"PNG chunk {kind!r} runs past the end of the file (cut short?)")
        if zlib.crc32(view[pos + 4:end - 4]) != int.from_bytes(view[end - 4:end], "big"):
            raise ShardFormatError(f"PNG chunk {kind!r} fails its CRC (damaged)")
        if not seen_ihdr and (kind != b"IHDR" or length != 13):
            raise ShardFormatError("PNG does not start with its IHDR chunk")
        seen_ihdr = True
        seen_idat |= kind == b"IDAT"
        if kind == b"IEND":
            break
        pos = end
    if not seen_idat:
        raise ShardFormatError("PNG without image data")


def decode_png(data: bytes) -> torch.Tensor:
    """A verified PNG (verify_png) decoded by Pillow, which reports damage as an exception; torchvision's
    decode_png hands it to libpng, whose error path ends the process (a segmentation fault on one flipped
    byte or a cut IDAT). With the checks it costs about what torchvision did (BENCHMARKS.md, "Frame checks
    before decoding")."""
    from PIL import Image

    verify_png(data)
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            image.load()
            if image.mode != "RGB":
                image = image.convert("RGB")
            array = np.asarray(image, dtype=np.uint8)
    except Exception as err:  # Pillow raises OSError, ValueError, SyntaxError, zlib.error... for damage
        raise ShardFormatError(f"PNG does not decode ({type(err).__name__}: {err})") from None
    return torch.from_numpy(array.copy() if not array.flags.writeable else array).permute(2, 0, 1)


# -- checksums and the manifest ----------------------------------------------------------------------


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
    check_manifest_structure(manifest, path)
    manifest["_folder"] = str(location.path) if location.is_local else location.display()
    return manifest


def check_manifest_structure(manifest: dict, path) -> None:
    """Every field a reader relies on has the shape it relies on (a manifest comes from anywhere: a
    bucket, a server, a hand edit), so a bad one is one line naming the field, not a traceback later;
    and shard file names are plain names inside the manifest's folder, never paths out of it."""
    def fail(where: str, what: str, value) -> None:
        shown = repr(value)
        raise ShardFormatError(f"{path}: manifest field {where}: expected {what}, got "
                               f"{shown if len(shown) <= 60 else shown[:57] + '...'}")

    def whole(where: str, value, low: int = 0) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            fail(where, f"a whole number >= {low}", value)

    def size(where: str, value) -> None:
        if not (isinstance(value, list) and len(value) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and 0 < v < 1 << 16 for v in value)):
            fail(where, "[height, width] in pixels (1 to 65535)", value)

    if "frames_per_sample" in manifest:
        whole("frames_per_sample", manifest["frames_per_sample"], 1)
    sequences = manifest.get("sequences")
    if not isinstance(sequences, list) or not sequences:
        fail("sequences", "a non-empty list", sequences)
    for i, seq in enumerate(sequences):
        if not isinstance(seq, dict):
            fail(f"sequences[{i}]", "an object", seq)
        whole(f"sequences[{i}].index", seq.get("index"))
        if not isinstance(seq.get("name"), str):
            fail(f"sequences[{i}].name", "a string", seq.get("name"))
        whole(f"sequences[{i}].num_frames", seq.get("num_frames"))
        size(f"sequences[{i}].frame_size", seq.get("frame_size"))
        if manifest.get("split") == "train":
            size(f"sequences[{i}].tile_size", seq.get("tile_size"))
        if "samples" in seq:
            whole(f"sequences[{i}].samples", seq["samples"])
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not shards:
        fail("shards", "a non-empty list", shards)
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict):
            fail(f"shards[{i}]", "an object", entry)
        name = entry.get("file")
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name \
                or "\0" in name or Path(name).is_absolute():
            fail(f"shards[{i}].file", "a file name in the manifest's folder (no folders, no absolute path)", name)
        whole(f"shards[{i}].samples", entry.get("samples"))
        if "bytes" in entry:
            whole(f"shards[{i}].bytes", entry["bytes"])
        if entry.get("sha256") is not None and not (isinstance(entry["sha256"], str)
                                                     and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])):
            fail(f"shards[{i}].sha256", "64 hexadecimal digits", entry["sha256"])


def read_split_manifest(where, split: str, setting: str) -> dict:
    """The manifest of a location that must hold the given split ("train" or "val"); both readers refuse
    the other split with the same error, naming the config key."""
    manifest = read_manifest(where)
    if manifest.get("split") != split:
        how = "with --val" if split == "val" else "without --val"
        raise ShardFormatError(f"{manifest['_folder']}: holds a {manifest.get('split')!r} split; {setting} needs shards packed {how}")
    return manifest


# -- reading samples back ----------------------------------------------------------------------------


def tar_samples(stream, max_member_bytes: int | None = None) -> Iterator[dict[str, bytes]]:
    """The samples of one shard, in file order: {"__key__": key, field: bytes, ...}.

    WebDataset's grouping (group_by_keys), so members group into samples exactly as any WebDataset
    reader groups them, over the members as webdataset's tar_file_iterator lists them (regular files,
    no `__meta__` names), with one addition: a member's declared size is checked against
    `max_member_bytes` before it is read, so a tar header declaring a gigabyte is a bad shard
    (ShardFormatError), not a gigabyte allocated. Its "__url__" entry is dropped: a sample is its key and
    its fields, so that what a shuffle buffer counts in bytes (stream.py) is the same wherever the shard
    was read from. (Every member's bytes are read, also those of samples a stream does not keep: a tar
    stream has to pass them anyway, locally and over the network alike.)"""
    import tarfile

    from webdataset.tariterators import group_by_keys

    def members():
        archive = tarfile.open(fileobj=stream, mode="r|*")
        for info in archive:
            if not info.isreg() or info.name is None or re.match(r"__[^/]*__($|/)", info.name):
                continue
            if max_member_bytes is not None and info.size > max_member_bytes:
                raise ShardFormatError(f"tar member {info.name} declares {info.size:,} bytes, more than any frame "
                                       f"of this manifest can take ({max_member_bytes:,})")
            yield {"fname": info.name, "data": archive.extractfile(info).read(), "__url__": ""}
            archive.members = []  # a stream of thousands of members: keep no index

    for sample in group_by_keys(members()):
        del sample["__url__"]
        yield sample


def max_member_bytes(manifest: dict) -> int:
    """The largest a tar member of this manifest can be: a lossless frame of its largest frame size,
    uncompressed, with room for a codec's overhead (a PNG of noise is a little larger than raw), or a
    sample's JSON."""
    largest = max((h * w for h, w in (tuple(s.get("frame_size") or (0, 0)) for s in manifest["sequences"])), default=0)
    return int(largest * 3 * 1.1) + (1 << 20)
