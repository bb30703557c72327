"""Finding sequences in folder layouts, videos and list files, and reading their frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vsrpp_dist.data.sources import (
    SequenceError,
    SourceError,
    count_frames,
    natural_key,
    read_frames,
    scan_source,
)

from ..helpers import write_coded_video


def _frames(n: int, h: int = 24, w: int = 30) -> list[np.ndarray]:
    rng = np.random.default_rng(n * 1000 + h * 10 + w)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _write(folder: Path, frames: list[np.ndarray], pattern: str = "{:08d}.png") -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / pattern.format(i))
    return frames


def test_natural_key_orders_numbers_as_numbers():
    names = ["frame10.png", "frame2.png", "Frame1.png", "frame2a.png", "im7.png", "im10.png"]
    assert sorted(names, key=natural_key) == ["Frame1.png", "frame2.png", "frame2a.png", "frame10.png",
                                              "im7.png", "im10.png"]


def test_reds_vid4_and_generic_nesting(tmp_path):
    reds = tmp_path / "reds"
    for seq in ("010", "000", "002"):
        _write(reds / seq, _frames(2))
    source = scan_source(reds)
    assert (source.kind, source.layout) == ("frames", "folders")
    assert [s.name for s in source.sequences] == ["000", "002", "010"]
    assert [s.match_key for s in source.sequences] == [("000",), ("002",), ("010",)]

    nested = tmp_path / "mine"
    _write(nested / "a" / "b" / "shot2", _frames(2), "{}.jpg")
    _write(nested / "a" / "b" / "shot10", _frames(2), "{}.bmp")
    _write(nested / "a", _frames(2))  # a folder with images and sub-folders is a sequence too
    (nested / "a" / "notes.txt").write_text("not a frame")
    _write(nested / ".hidden", _frames(2))
    names = [s.name for s in scan_source(nested).sequences]
    assert names == ["a", "a/b/shot2", "a/b/shot10"]


def test_a_folder_of_frames_is_one_sequence_named_after_it(tmp_path):
    folder = tmp_path / "calendar"
    _write(folder, _frames(3), "frame{}.png")
    (source_seq,) = scan_source(folder).sequences
    assert (source_seq.name, source_seq.match_key, source_seq.kind) == ("calendar", (), "frames")
    assert [Path(p).name for p in source_seq.frames] == ["frame0.png", "frame1.png", "frame2.png"]


def test_frames_read_in_natural_order(tmp_path):
    frames = _write(tmp_path / "s", _frames(12), "frame{}.png")
    (seq,) = scan_source(tmp_path / "s").sequences
    for got, want in zip(read_frames(seq), frames, strict=True):
        np.testing.assert_array_equal(got, want)


def test_vimeo_layout_lists_and_names(tmp_path):
    root = tmp_path / "vimeo"
    for clip in ("00001/0001", "00001/0002", "00002/0001"):
        _write(root / "sequences" / clip, _frames(2), "im{}.png")
    (root / "sep_trainlist.txt").write_text("00001/0001\n00002/0001\n00009/0009\n")
    (root / "sep_testlist.txt").write_text("00001/0002\n")
    train = scan_source(root, "train")
    assert train.layout == "vimeo-90k"
    assert [s.name for s in train.sequences] == ["00001/0001", "00002/0001"]
    assert [Path(e["input"]).as_posix().endswith("00009/0009") for e in train.skipped] == [True]
    assert [s.name for s in scan_source(root, "val").sequences] == ["00001/0002"]
    assert len(scan_source(root, "train", vimeo_list="all").sequences) == 3
    assert [s.name for s in scan_source(root, "train", vimeo_list="sep_testlist.txt").sequences] == ["00001/0002"]
    with pytest.raises(SourceError, match="no-such-list.txt"):
        scan_source(root, "train", vimeo_list="no-such-list.txt")
    (root / "sep_trainlist.txt").unlink()
    assert len(scan_source(root, "train").sequences) == 3  # no list: every clip


def test_videos_list_files_and_their_names(tmp_path):
    frames = _frames(6, 32, 48)
    write_coded_video(tmp_path / "clips" / "b.mkv", frames, "ffv1", "bgr0")
    write_coded_video(tmp_path / "clips" / "a.avi", frames, "mpeg4", "yuv420p")
    _write(tmp_path / "folder", frames)
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n\nclips\n{tmp_path / 'folder'}\nclips/b.mkv\n")
    source = scan_source(listing)
    assert (source.kind, source.layout) == ("list", "list")
    assert [(s.name, s.kind) for s in source.sequences] == [
        ("clips/a", "video"), ("clips/b", "video"), ("folder", "frames"), ("clips/b", "video")]
    assert [s.match_key for s in source.sequences] == [(0, "a"), (0, "b"), (1,), (2,)]
    assert scan_source(tmp_path / "clips").kind == "video"
    (single,) = scan_source(tmp_path / "clips" / "b.mkv").sequences
    assert (single.name, single.match_key) == ("b", ())
    assert count_frames(single) == 6
    for got, want in zip(read_frames(single), frames, strict=True):  # ffv1 RGB is lossless
        np.testing.assert_array_equal(got, want)


def test_missing_and_empty_sources_are_one_line_errors(tmp_path):
    with pytest.raises(SourceError, match="nothing-here: no such file"):
        scan_source(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(SourceError, match="empty: no image frames"):
        scan_source(tmp_path / "empty")
    listing = tmp_path / "l.txt"
    listing.write_text("empty\n")
    with pytest.raises(SourceError, match=r"l.txt line 1: .*empty: no image frames"):
        scan_source(listing)
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(SourceError, match="x.gif: not a folder, a video"):
        scan_source(tmp_path / "x.gif")


def test_broken_frames_and_videos_raise_sequence_errors(tmp_path):
    frames = _write(tmp_path / "s", _frames(3))
    data = (tmp_path / "s" / "00000001.png").read_bytes()
    (tmp_path / "s" / "00000001.png").write_bytes(data[: len(data) // 2])
    (seq,) = scan_source(tmp_path / "s").sequences
    reader = read_frames(seq)
    np.testing.assert_array_equal(next(reader), frames[0])
    with pytest.raises(SequenceError, match="00000001.png: cannot read"):
        next(reader)
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    (bad,) = scan_source(tmp_path / "bad.mp4").sequences
    with pytest.raises(SequenceError, match="video"):
        list(read_frames(bad))
