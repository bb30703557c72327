"""Finding sequences in what the user points the packer at, and reading their frames.

A *source* is one path from the command line: a folder, a video file, or a list file (`.txt`) naming
more sources. A *sequence* is what becomes consecutive frames: a folder that directly holds images, or
one video file. Folders are walked to any depth, so REDS (`root/000/*.png`), Vid4 (`root/calendar/*.png`)
and any other nesting need no layout flag; only Vimeo-90K is recognised by name, because its list files
(`sep_trainlist.txt`, `sep_testlist.txt`) decide which sequences belong to which split.

This module only finds and reads. What counts as usable (length, sizes, pairing with LR) is decided by
the packer, which reports every sequence it leaves out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm")
LIST_SUFFIXES = (".txt",)
VIMEO_LISTS = {"train": "sep_trainlist.txt", "val": "sep_testlist.txt"}
from ..errors import SequenceError, SourceError


@dataclass(frozen=True)
class Sequence:
    """One sequence found in a source."""

    name: str  # label in the manifest: path relative to the source root, '/'-separated
    match_key: tuple  # where it sits inside its source; GT and LR sequences pair on equal keys
    path: str  # the folder holding the frames, or the video file
    kind: str  # "frames" | "video"
    frames: tuple[str, ...] = ()  # frame files in natural order (kind "frames" only)


@dataclass
class Source:
    """What one command-line source held."""

    path: str
    kind: str  # "frames" | "video" | "list"
    layout: str  # "folders" | "vimeo-90k" | "video" | "list"
    sequences: list[Sequence] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {"input", "reason"} found while scanning
    vimeo_list: str | None = None  # the list file that selected the sequences, if any
    vimeo_roots: list[str] = field(default_factory=list)  # Vimeo-90K folders in it (lists included)


def natural_key(name: str) -> tuple:
    """Sort key that orders `frame2` before `frame10` (digit runs compare as numbers)."""
    parts = re.split(r"(\d+)", name)
    # digit runs always sit at odd positions, so equal positions always compare equal types
    return tuple(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), name


@dataclass(frozen=True)
class _Entry:
    path: Path
    is_dir: bool

    @property
    def name(self) -> str:
        return self.path.name


def _listdir(folder: Path) -> list[_Entry]:
    """Visible entries in natural order; one scandir, so a tree of 90,000 clips lists in seconds."""
    try:
        with os.scandir(folder) as scan:
            entries = [_Entry(Path(e.path), e.is_dir()) for e in scan if not e.name.startswith(".")]
    except OSError as err:
        raise SourceError(f"{folder}: cannot list folder ({err.strerror or err})") from None
    return sorted(entries, key=lambda e: natural_key(e.name))


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


# -- scanning ----------------------------------------------------------------------------------------


def scan_source(path: str | Path, split: str = "train", vimeo_list: str = "auto") -> Source:
    """Find every sequence in one source. `vimeo_list` is "auto" (the split's own list file when the
    folder has one), "all", or a list file; it only affects folders with the Vimeo-90K layout."""
    return _scan(Path(path), split, vimeo_list, depth=0)


def _scan(path: Path, split: str, vimeo_list: str, depth: int) -> Source:
    if not path.exists():
        raise SourceError(f"{path}: no such file or folder")
    if path.is_dir():
        return _scan_folder(path, split, vimeo_list)
    if is_video(path):
        source = Source(str(path), "video", "video")
        source.sequences.append(Sequence(path.stem, (), str(path), "video"))
        return source
    if path.suffix.lower() in LIST_SUFFIXES:
        return _scan_list(path, split, vimeo_list, depth)
    raise SourceError(f"{path}: not a folder, a video ({', '.join(VIDEO_SUFFIXES)}) "
                      f"or a list file ({', '.join(LIST_SUFFIXES)})")


def is_vimeo_root(folder: Path) -> bool:
    """Vimeo-90K: `root/sequences/<group>/<clip>/im*.png`, list files next to `sequences/`, no other
    folders in root."""
    if not (folder / "sequences").is_dir():
        return False
    return all(not e.is_dir and not is_image(e.path) and not is_video(e.path)
               for e in _listdir(folder) if e.name != "sequences")


def _scan_folder(root: Path, split: str, vimeo_list: str) -> Source:
    if is_vimeo_root(root):
        return _scan_vimeo(root, split, vimeo_list)
    source = Source(str(root), "frames", "folders")
    source.sequences = list(_walk(root, root, prefix=root.name))
    if not source.sequences:
        raise SourceError(f"{root}: no image frames ({', '.join(IMAGE_SUFFIXES)}) "
                          f"or videos ({', '.join(VIDEO_SUFFIXES)}) in it or below it")
    if all(s.kind == "video" for s in source.sequences):
        source.kind = "video"
    return source


def _walk(folder: Path, root: Path, prefix: str, seen: set | None = None) -> Iterator[Sequence]:
    """Depth-first in natural order: a folder's own images first (one sequence), then its videos and
    sub-folders in name order. Symlinked folders are followed once (a cycle is not walked twice)."""
    seen = set() if seen is None else seen
    real = os.path.realpath(folder)
    if real in seen:
        return
    seen.add(real)
    entries = _listdir(folder)
    images = [e.path for e in entries if not e.is_dir and is_image(e.path)]
    rel = folder.relative_to(root).as_posix()
    if images:
        # the source folder itself is a sequence: name it after the folder, pair it with the LR
        # source's own top folder (key ()), whatever that one is called
        name = prefix if rel == "." else rel
        key = () if rel == "." else tuple(rel.split("/"))
        yield Sequence(name, key, str(folder), "frames", tuple(str(p) for p in images))
    for entry in entries:
        if entry.is_dir:
            yield from _walk(entry.path, root, prefix, seen)
        elif is_video(entry.path):
            stem = entry.path.relative_to(root).with_suffix("").as_posix()
            yield Sequence(stem, tuple(stem.split("/")), str(entry.path), "video")


def _scan_vimeo(root: Path, split: str, vimeo_list: str) -> Source:
    source = Source(str(root), "frames", "vimeo-90k", vimeo_roots=[str(root)])
    sequences_dir = root / "sequences"
    everything = {s.match_key: s for s in _walk(sequences_dir, sequences_dir, prefix="sequences")}
    if not everything:
        raise SourceError(f"{root}: Vimeo-90K layout but no frames under {sequences_dir}")
    list_path = resolve_vimeo_list(root, split, vimeo_list)
    if list_path is None:
        source.sequences = list(everything.values())
    else:
        source.vimeo_list = str(list_path)
        for line_no, line in _read_list(list_path):
            key = tuple(Path(line).as_posix().strip("/").split("/"))
            if key in everything:
                source.sequences.append(everything[key])
            else:
                source.skipped.append({"input": str(sequences_dir / line),
                                       "reason": f"listed in {list_path.name} (line {line_no}) "
                                                 "but missing or without frames"})
    return source


def resolve_vimeo_list(root: Path, split: str, vimeo_list: str) -> Path | None:
    """Which list file selects the sequences of a Vimeo-90K root, or None for all of them."""
    if vimeo_list == "all":
        return None
    if vimeo_list == "auto":
        candidate = root / VIMEO_LISTS[split]
        return candidate if candidate.is_file() else None
    given = Path(vimeo_list)
    for candidate in (given, root / given):  # a bare name like sep_testlist.txt means the root's own
        if candidate.is_file():
            return candidate
    raise SourceError(f"--vimeo-list {vimeo_list}: no such file (also looked in {root})")


def _read_list(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank, non-comment lines of a list file with their line numbers."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SourceError(f"{path}: cannot read list file ({err})") from None
    for line_no, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            yield line_no, line


def _scan_list(path: Path, split: str, vimeo_list: str, depth: int) -> Source:
    if depth > 8:
        raise SourceError(f"{path}: list files nested more than 8 deep (a list that names itself?)")
    source = Source(str(path), "list", "list")
    for index, (line_no, line) in enumerate(_read_list(path)):
        entry = Path(line).expanduser()
        if not entry.is_absolute():
            # relative to the list file; Vimeo-90K's own lists name clips relative to sequences/
            entry = next((c for c in (path.parent / entry, path.parent / "sequences" / entry) if c.exists()),
                         path.parent / entry)
        try:
            inner = _scan(entry, split, vimeo_list, depth + 1)
        except SourceError as err:
            raise SourceError(f"{path} line {line_no}: {err}") from None
        # entries named relatively keep that path as their name; absolute ones are named like a
        # command-line source (after their last component)
        label = Path(line).as_posix().strip("/") if not Path(line).is_absolute() else None
        for seq in inner.sequences:
            name = seq.name
            if label is not None:
                name = label if not seq.match_key else f"{label}/{seq.name}"
                if seq.kind == "video" and not seq.match_key:
                    name = str(Path(label).with_suffix(""))
            source.sequences.append(Sequence(name, (index, *seq.match_key), seq.path, seq.kind, seq.frames))
        source.skipped.extend(inner.skipped)
        source.vimeo_roots.extend(inner.vimeo_roots)
    if not source.sequences:
        raise SourceError(f"{path}: the list names no sequences")
    return source


# -- reading frames ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameCount:
    """What is known of a sequence's length before decoding it: `expected`, exact for folders, a video's
    claim (its index, else its duration x rate) or None; and `indexed`, the count a video's index declares
    (MP4's sample table, an AVI's index), None for folders and containers that keep only a duration.
    Decoding fewer frames than `indexed` means the file was cut short behind an intact index."""

    expected: int | None
    indexed: int | None = None


def probe_frames(seq: Sequence) -> FrameCount:
    """The sequence's FrameCount, with one look into a video's container."""
    if seq.kind == "frames":
        return FrameCount(len(seq.frames))
    try:
        import av

        with av.open(seq.path) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return FrameCount(int(stream.frames), int(stream.frames))
            rate = stream.average_rate or stream.guessed_rate
            if stream.duration and stream.time_base and rate:
                return FrameCount(int(round(float(stream.duration * stream.time_base * rate))))
            if container.duration and rate:  # Matroska/WebM keep only the container's duration
                return FrameCount(int(round(container.duration / av.time_base * float(rate))))
    except Exception:  # the packer reports a video that cannot be opened when it decodes it
        pass
    return FrameCount(None)


def count_frames(seq: Sequence) -> int | None:
    """Frame count without decoding: exact for folders, the container's claim (or None) for videos."""
    return probe_frames(seq).expected


def cut_short_warning(seq: Sequence, decoded: int, declared: int | None) -> str | None:
    """The line that says a video ended before its index (`declared`: FrameCount.indexed) does, or None.
    A warning, not an error: the frames that were decoded are complete and right, and the user may well
    want them; what must not happen is a silent loss, so the line names both counts."""
    if declared is None or decoded >= declared:
        return None
    return (f"{seq.path}: its index declares {declared} frames but only {decoded} could be decoded (the file is "
            f"cut short?); {decoded} used")


def read_frames(seq: Sequence, start: int = 0) -> Iterator[np.ndarray]:
    """The frames of a sequence from frame `start` on, as HxWx3 uint8 RGB arrays, one at a time (a long
    video is streamed, never held). Anything wrong with the data raises SequenceError naming the frame."""
    if seq.kind == "frames":
        for path in seq.frames[start:]:
            yield load_image(path)
    else:
        yield from _decode_video(seq.path, start)


def load_image(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # decodes fully, so a truncated file fails here and not later
            return _to_rgb8(image)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        raise SequenceError(f"frame {Path(path).name}: cannot read ({err})") from None


def _to_rgb8(image) -> np.ndarray:
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit greyscale: keep the top 8 bits rather than letting convert() clip at 255
        grey = np.asarray(image, dtype=np.uint32)
        grey = (grey >> 8 if grey.max(initial=0) > 255 else grey).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def _decode_video(path: str, start: int = 0) -> Iterator[np.ndarray]:
    """Frames are counted by decoding from the start: container timestamps (seeking) cannot be
    trusted to give exact frame numbers in every file."""
    import av

    try:
        container = av.open(path)
    except Exception as err:
        raise SequenceError(f"cannot open video ({err})") from None
    with container:
        if not container.streams.video:
            raise SequenceError("no video stream in the file")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: decoding is a small share of packing cost
        frames = container.decode(stream)
        index = 0
        while True:
            try:
                frame = next(frames)
                if index < start:
                    index += 1
                    continue
                rgb = frame.to_ndarray(format="rgb24")
            except StopIteration:
                return
            except Exception as err:
                raise SequenceError(f"decoding failed at frame {index} ({err})") from None
            yield rgb
            index += 1
