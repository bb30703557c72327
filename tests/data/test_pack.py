"""End-to-end tests of `python -m vsrpp_dist.pack`: layouts, videos, LR pairs, both splits, every codec
decoding back to the exact input pixels, checksums, bad input, interruption, determinism."""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vsrpp_dist.cli import byte_size
from vsrpp_dist.data import pack_command as pack
from vsrpp_dist.data.packer import RunSplitter, plan_segments
from vsrpp_dist.data.shard_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    crop_to_scale,
    decode_frame,
    frame_field,
    read_manifest,
    run_bounds,
    tile_origins,
    train_key,
    val_key,
)
from vsrpp_dist.files import file_sha256
from vsrpp_dist.data.sources import read_frames, scan_source

# shard_format.decode_frame uses torchvision.io, which warns about its future in torchvision 0.29
from ..helpers import ROOT, write_coded_video

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

REPO = ROOT  # the repository, for subprocesses run from it
MANIFEST_KEYS = {"format", "format_version", "scale", "split", "codec", "frames_per_sample", "min_tile",
                 "has_lr", "sources", "sequences", "shards", "totals", "skipped", "created", "tool"}
SEQUENCE_KEYS = {"index", "name", "source", "kind", "num_frames", "frame_size", "original_size", "cropped",
                 "tile_size", "samples"}


# -- test data: a real photo panned across, so codecs see natural content ------------------------------


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # 512x512x3 uint8


def pan(photo: np.ndarray, n: int, h: int, w: int, start: int = 0) -> list[np.ndarray]:
    """n frames of h x w, the camera drifting right and down by a few pixels per frame."""
    y0, x0 = 40 + 7 * start, 60 + 5 * start
    return [np.ascontiguousarray(photo[y0 + 2 * k:y0 + 2 * k + h, x0 + 3 * k:x0 + 3 * k + w]) for k in range(n)]


def write_frames(folder: Path, frames: list[np.ndarray], pattern: str = "{:08d}.png") -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / pattern.format(i))
    return frames


def downscale3(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Stand-in for real LR frames: any image of exactly a third of the (cropped) size will do."""
    out = []
    for frame in frames:
        h, w = crop_to_scale(*frame.shape[:2])
        out.append(np.ascontiguousarray(frame[:h:3, :w:3]))
    return out


# -- running the CLI and reading what it wrote ----------------------------------------------------------


def run_pack(capsys, *argv) -> tuple[int, str, str]:
    rc = pack.main([str(a) for a in argv] + ["--quiet"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def read_samples(out: Path) -> list[tuple[str, str, dict]]:
    """(shard file, key, {field: bytes}) for every sample, in shard and member order."""
    manifest = json.loads((out / "manifest.json").read_text())
    samples = []
    for shard in manifest["shards"]:
        current = None
        with tarfile.open(out / shard["file"]) as tar:
            for member in tar:
                key, field = member.name.split(".", 1)
                if current is None or current[1] != key:
                    current = (shard["file"], key, {})
                    samples.append(current)
                current[2][field] = tar.extractfile(member).read()
    return samples


def decoded(data: bytes, codec: str) -> np.ndarray:
    return decode_frame(data, codec).permute(1, 2, 0).numpy()


def assert_nothing_complete(out: Path) -> None:
    if out.exists():
        names = sorted(p.name for p in out.iterdir())
        assert "manifest.json" not in names
        assert not [n for n in names if n.endswith(".tar")], names


def check_manifest_and_shards(out: Path) -> dict:
    """Keys, checksums, sizes and totals agree with the files on disk; returns the manifest."""
    manifest = read_manifest(out)
    assert MANIFEST_KEYS <= set(manifest)
    assert (manifest["format"], manifest["format_version"], manifest["scale"]) == (FORMAT_NAME, FORMAT_VERSION, 3)
    assert manifest["tool"].startswith("vsrpp-dist ")
    for entry in manifest["sequences"]:
        assert SEQUENCE_KEYS <= set(entry)
    for shard in manifest["shards"]:
        path = out / shard["file"]
        assert file_sha256(path) == shard["sha256"]
        assert path.stat().st_size == shard["bytes"]
    totals = manifest["totals"]
    assert totals["shards"] == len(manifest["shards"])
    assert totals["bytes"] == sum(s["bytes"] for s in manifest["shards"])
    assert totals["samples"] == sum(s["samples"] for s in manifest["shards"]) \
        == sum(s["samples"] for s in manifest["sequences"]) == len(read_samples(out))
    assert totals["sequences"] == len(manifest["sequences"])
    assert totals["frames"] == sum(s["num_frames"] for s in manifest["sequences"])
    assert [s["index"] for s in manifest["sequences"]] == list(range(len(manifest["sequences"])))
    assert len({s["name"] for s in manifest["sequences"]}) == len(manifest["sequences"])
    assert not [p for p in out.iterdir() if p.name.endswith(".partial")]
    return manifest


def check_train_samples(out: Path, frames_by_name: dict[str, list[np.ndarray]],
                        lr_by_name: dict[str, list[np.ndarray]] | None = None) -> None:
    """Every tile run holds exactly the input pixels of its tile and frames, and the manifest's counts
    are what tile_origins and run_bounds give."""
    manifest = check_manifest_and_shards(out)
    codec, fps, min_tile = manifest["codec"], manifest["frames_per_sample"], manifest["min_tile"]
    samples = read_samples(out)
    expected_keys = []
    for seq in manifest["sequences"]:
        frames = frames_by_name[seq["name"]]
        h, w = crop_to_scale(*frames[0].shape[:2])
        assert seq["original_size"] == list(frames[0].shape[:2])
        assert seq["frame_size"] == [h, w] and seq["cropped"] == ((h, w) != frames[0].shape[:2])
        assert seq["num_frames"] == len(frames)
        th, ys = tile_origins(h, min_tile)
        tw, xs = tile_origins(w, min_tile)
        assert seq["tile_size"] == [th, tw]
        runs = run_bounds(len(frames), fps)
        assert seq["samples"] == len(runs) * len(ys) * len(xs)
        expected_keys += [train_key(seq["index"], r, t) for r in range(len(runs)) for t in range(len(ys) * len(xs))]
    assert [key for _, key, _ in samples] == expected_keys  # sequences, runs and tiles in order

    for _, key, fields in samples:
        meta = json.loads(fields["json"])
        seq = manifest["sequences"][meta["seq"]]
        frames = frames_by_name[seq["name"]]
        y, x, th, tw = meta["tile"]
        assert meta["name"] == seq["name"] and meta["frame_size"] == seq["frame_size"]
        assert set(meta) == {"seq", "name", "first_frame", "num_frames", "tile", "frame_size"}
        run = run_bounds(len(frames), fps)[int(key[8:13])]
        assert (meta["first_frame"], meta["num_frames"]) == (run[0], run[1] - run[0])
        for k in range(meta["num_frames"]):
            want = frames[meta["first_frame"] + k][y:y + th, x:x + tw]
            np.testing.assert_array_equal(decoded(fields[frame_field(k, codec)], codec), want)
            if lr_by_name is not None:
                lr = lr_by_name[seq["name"]][meta["first_frame"] + k]
                want_lr = lr[y // 3:(y + th) // 3, x // 3:(x + tw) // 3]
                np.testing.assert_array_equal(decoded(fields[frame_field(k, codec, lr=True)], codec), want_lr)
        assert frame_field(meta["num_frames"], codec) not in fields


# -- layouts and formats ------------------------------------------------------------------------------


def test_help_works(capsys):
    with pytest.raises(SystemExit) as exit_info:
        pack.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--val", "--lr", "--codec", "--frames-per-sample", "--min-tile", "--shard-size", "--workers",
                   "--vimeo-list"):
        assert option in text


@pytest.mark.parametrize("codec", ["webp", "png", "raw"])
def test_reds_layout_is_lossless_and_matches_the_manifest(tmp_path, capsys, photo, codec):
    frames = {"000": write_frames(tmp_path / "reds" / "000", pan(photo, 7, 50, 64)),  # cropped to 48x63
              "001": write_frames(tmp_path / "reds" / "001", pan(photo, 17, 48, 60, start=1))}
    rc, out_text, _ = run_pack(capsys, tmp_path / "reds", tmp_path / "out", "--codec", codec, "--min-tile", 24,
                               "--frames-per-sample", 6, "--shard-size", "40K")
    assert rc == 0
    manifest = check_manifest_and_shards(tmp_path / "out")
    assert (manifest["split"], manifest["codec"], manifest["has_lr"]) == ("train", codec, False)
    assert [s["name"] for s in manifest["sequences"]] == ["000", "001"]
    assert manifest["sequences"][0]["cropped"] and manifest["sequences"][0]["original_size"] == [50, 64]
    assert manifest["sources"][0]["kind"] == "frames" and manifest["sources"][0]["sequences"] == 2
    assert len(manifest["shards"]) > 1 and manifest["skipped"] == []
    assert all(s["bytes"] <= 40 * 1024 + 10240 for s in manifest["shards"])  # "about" the size asked for
    check_train_samples(tmp_path / "out", frames)
    assert "packed 2 sequences (24 frames)" in out_text and "frames/s" in out_text


def test_val_layout_whole_frames_in_order(tmp_path, capsys, photo):
    vid4 = tmp_path / "Vid4"
    frames = {"calendar": write_frames(vid4 / "calendar", pan(photo, 6, 40, 50), "frame{}.png"),
              "city": write_frames(vid4 / "city", pan(photo, 11, 36, 45, start=2), "{}.jpg")}
    frames["city"] = [np.asarray(Image.open(vid4 / "city" / f"{i}.jpg").convert("RGB")) for i in range(11)]
    rc, _, _ = run_pack(capsys, vid4, tmp_path / "out", "--val", "--shard-size", "30K")
    assert rc == 0
    manifest = check_manifest_and_shards(tmp_path / "out")
    assert manifest["split"] == "val"
    assert [s["file"] for s in manifest["shards"]] == [f"val-{i:06d}.tar" for i in range(len(manifest["shards"]))]
    samples = read_samples(tmp_path / "out")
    expected = [(s["index"], j) for s in manifest["sequences"] for j in range(s["num_frames"])]
    assert [key for _, key, _ in samples] == [val_key(i, j) for i, j in expected]
    for _, key, fields in samples:
        meta = json.loads(fields["json"])
        seq = manifest["sequences"][meta["seq"]]
        assert set(fields) == {"json", "gt.webp"}
        assert meta == {"seq": seq["index"], "name": seq["name"], "frame": meta["frame"],
                        "num_frames": seq["num_frames"], "frame_size": seq["frame_size"]}
        h, w = seq["frame_size"]
        want = frames[seq["name"]][meta["frame"]][:h, :w]
        np.testing.assert_array_equal(decoded(fields["gt.webp"], "webp"), want)
    assert manifest["sequences"][0]["frame_size"] == [39, 48]  # 40x50 cropped to a multiple of 3


def test_lr_pairs_and_lr_of_the_wrong_size(tmp_path, capsys, photo):
    gt = {"000": write_frames(tmp_path / "gt" / "000", pan(photo, 8, 49, 60)),
          "001": write_frames(tmp_path / "gt" / "001", pan(photo, 6, 48, 60, start=3))}
    lr = {"000": write_frames(tmp_path / "lr" / "000", downscale3(gt["000"]))}
    write_frames(tmp_path / "lr" / "001", pan(photo, 6, 17, 20))  # 20x17 (WxH), not 20x16
    rc, out_text, _ = run_pack(capsys, tmp_path / "gt", tmp_path / "out", "--lr", tmp_path / "lr",
                               "--min-tile", 24)
    assert rc == 0
    manifest = check_manifest_and_shards(tmp_path / "out")
    assert manifest["has_lr"] and [s["name"] for s in manifest["sequences"]] == ["000"]
    (skip,) = manifest["skipped"]
    assert skip["input"].endswith("001") and "20x17" in skip["reason"] and "expected 20x16" in skip["reason"]
    assert "20x17" in out_text
    check_train_samples(tmp_path / "out", gt, lr)

    rc, _, _ = run_pack(capsys, tmp_path / "gt", tmp_path / "out_val", "--lr", tmp_path / "lr", "--val")
    assert rc == 0
    fields = read_samples(tmp_path / "out_val")[3][2]
    np.testing.assert_array_equal(decoded(fields["lr.webp"], "webp"), lr["000"][3])


def test_video_files_mp4_mkv_avi(tmp_path, capsys, photo):
    frames = pan(photo, 9, 50, 64)
    write_coded_video(tmp_path / "videos" / "lossless.mkv", frames, "ffv1", "bgr0")
    write_coded_video(tmp_path / "videos" / "x264.mp4", frames, "libx264")
    write_coded_video(tmp_path / "videos" / "part4.avi", frames[:6], "mpeg4")
    write_coded_video(tmp_path / "single.mov", frames[:5], "mpeg4")
    rc, _, _ = run_pack(capsys, tmp_path / "videos", tmp_path / "single.mov", tmp_path / "out", "--min-tile", 24,
                        "--frames-per-sample", 5)
    assert rc == 0
    manifest = check_manifest_and_shards(tmp_path / "out")
    names = [s["name"] for s in manifest["sequences"]]
    assert names == ["lossless", "part4", "x264", "single"]
    assert [s["kind"] for s in manifest["sequences"]] == ["video"] * 4
    assert [s["kind"] for s in manifest["sources"]] == ["video", "video"]
    assert [s["num_frames"] for s in manifest["sequences"]] == [9, 6, 9, 5]
    # lossy codecs: the samples hold what PyAV decodes; ffv1 RGB: exactly the frames written
    decoded_frames = {s["name"]: list(read_frames(scan_source(s["source"]).sequences[0]))
                      for s in manifest["sequences"]}
    np.testing.assert_array_equal(decoded_frames["lossless"][4], frames[4])
    check_train_samples(tmp_path / "out", decoded_frames)


def test_list_file_of_folders_and_videos(tmp_path, capsys, photo):
    frames = pan(photo, 6, 30, 33)
    write_frames(tmp_path / "data" / "shot", frames)
    write_coded_video(tmp_path / "data" / "clip.mkv", frames, "ffv1", "bgr0")
    listing = tmp_path / "data" / "all.txt"
    listing.write_text("# what to pack\nshot\n\nclip.mkv\n")
    rc, _, _ = run_pack(capsys, listing, tmp_path / "out")
    assert rc == 0
    manifest = check_manifest_and_shards(tmp_path / "out")
    assert [(s["name"], s["kind"]) for s in manifest["sequences"]] == [("shot", "frames"), ("clip", "video")]
    assert manifest["sources"][0]["kind"] == "list" and manifest["sources"][0]["sequences"] == 2
    check_train_samples(tmp_path / "out", {"shot": frames, "clip": frames})


def test_vimeo_lists_select_by_split(tmp_path, capsys, photo):
    root = tmp_path / "vimeo"
    clips = {}
    for i, clip in enumerate(("00001/0001", "00001/0002", "00002/0001")):
        clips[clip] = write_frames(root / "sequences" / clip, pan(photo, 7, 24, 30, start=i), "im{}.png")
    (root / "sep_trainlist.txt").write_text("00001/0001\n00002/0001\n00003/0001\n")
    (root / "sep_testlist.txt").write_text("00001/0002\n")
    rc, _, _ = run_pack(capsys, root, tmp_path / "train")
    assert rc == 0
    manifest = check_manifest_and_shards(tmp_path / "train")
    assert [s["name"] for s in manifest["sequences"]] == ["00001/0001", "00002/0001"]
    assert manifest["sources"][0]["layout"] == "vimeo-90k"
    assert manifest["sources"][0]["vimeo_list"].endswith("sep_trainlist.txt")
    assert [("00003/0001" in e["input"], "sep_trainlist.txt" in e["reason"]) for e in manifest["skipped"]] == [(True, True)]
    check_train_samples(tmp_path / "train", clips)

    rc, _, _ = run_pack(capsys, root, tmp_path / "val", "--val")
    assert rc == 0
    assert [s["name"] for s in read_manifest(tmp_path / "val")["sequences"]] == ["00001/0002"]
    rc, _, _ = run_pack(capsys, root, tmp_path / "all", "--vimeo-list", "all")
    assert rc == 0 and len(read_manifest(tmp_path / "all")["sequences"]) == 3
    (tmp_path / "mine.txt").write_text("00001/0002\n")
    rc, _, _ = run_pack(capsys, root, tmp_path / "mine", "--vimeo-list", tmp_path / "mine.txt")
    assert rc == 0 and [s["name"] for s in read_manifest(tmp_path / "mine")["sequences"]] == ["00001/0002"]
    for name in ("sep_trainlist.txt", "sep_testlist.txt"):
        (root / name).unlink()
    rc, _, _ = run_pack(capsys, root, tmp_path / "nolist")
    assert rc == 0 and len(read_manifest(tmp_path / "nolist")["sequences"]) == 3


def test_generic_nesting_natural_order_and_unique_names(tmp_path, capsys, photo):
    frames = pan(photo, 12, 27, 36)
    write_frames(tmp_path / "a" / "day1" / "cam2", frames, "frame{}.png")  # frame2 before frame10
    write_frames(tmp_path / "a" / "day1" / "cam10", frames[:5], "{}.bmp")
    write_frames(tmp_path / "b" / "day1" / "cam2", frames[:6], "{}.jpeg")
    rc, _, _ = run_pack(capsys, tmp_path / "a", tmp_path / "b", tmp_path / "out", "--frames-per-sample", 5)
    assert rc == 0
    manifest = check_manifest_and_shards(tmp_path / "out")
    assert [s["name"] for s in manifest["sequences"]] == ["day1/cam2", "day1/cam10", "b/day1/cam2"]
    check_train_samples(tmp_path / "out", {"day1/cam2": frames, "day1/cam10": frames[:5],
                                           "b/day1/cam2": [np.asarray(Image.open(tmp_path / "b" / "day1" / "cam2" /
                                                                                 f"{i}.jpeg")) for i in range(6)]})


def test_workers_do_not_change_the_output(tmp_path, capsys, photo):
    for i in range(4):
        write_frames(tmp_path / "src" / f"{i:03d}", pan(photo, 6 + 3 * i, 30, 36, start=i))
    write_frames(tmp_path / "src" / "short", pan(photo, 3, 30, 36))
    args = ["--min-tile", 15, "--frames-per-sample", 7, "--shard-size", "20K"]
    assert run_pack(capsys, tmp_path / "src", tmp_path / "one", "--workers", 1, *args)[0] == 0
    assert run_pack(capsys, tmp_path / "src", tmp_path / "two", "--workers", 2, *args)[0] == 0
    one, two = read_manifest(tmp_path / "one"), read_manifest(tmp_path / "two")
    assert len(one["shards"]) > 2
    assert one["shards"] == two["shards"]  # names, sample counts, bytes and sha256
    assert one["sequences"] == two["sequences"]
    assert one["skipped"] == two["skipped"] and len(one["skipped"]) == 1


def test_run_splitter_gives_run_bounds_without_knowing_the_length():
    for frames_per_sample in (5, 6, 9, 15):
        for n in range(5, 50):
            splitter = RunSplitter(frames_per_sample)
            runs = [r for i in range(n) for r in splitter.push(i)] + splitter.finish()
            assert [(first, first + len(items)) for _, first, items in runs] == run_bounds(n, frames_per_sample)
            assert [index for index, _, _ in runs] == list(range(len(runs)))


def test_segments_start_on_run_boundaries():
    assert plan_segments(1000, "frames", 15, 1) == [(0, None)]
    assert plan_segments(None, "video", 15, 8) == [(0, None)]
    assert plan_segments(200, "frames", 15, 2) == [(0, 105), (105, None)]
    assert plan_segments(200, "video", 15, 2) == [(0, None)]  # re-decoding would cost more than it gives
    for n in range(5, 400, 7):
        for workers in (2, 3, 8):
            segments = plan_segments(n, "frames", 5, workers)
            assert segments[0][0] == 0 and segments[-1][1] is None and len(segments) <= workers
            assert all(start % 5 == 0 for start, _ in segments)
            assert all(end == start for (_, end), (start, _) in zip(segments, segments[1:]))


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("n", [23, 27])
def test_cutting_sequences_into_segments_never_changes_the_output(tmp_path, capsys, photo, monkeypatch, n, split):
    """Segments of one run each, some starting past the end (a video's frame count over-estimated),
    give byte-identical shards: short tails are taken by the segment before."""
    frames = pan(photo, n, 24, 30)
    write_frames(tmp_path / "src" / "folder", frames)
    write_coded_video(tmp_path / "src" / "video.mkv", frames, "ffv1", "bgr0")
    args = ["--frames-per-sample", 5, "--min-tile", 15, "--workers", 2] + (["--val"] if split == "val" else [])
    assert run_pack(capsys, tmp_path / "src", tmp_path / "whole", *args)[0] == 0
    monkeypatch.setattr(pack, "plan_segments", lambda *_: [(s, s + 5) for s in range(0, 40, 5)] + [(40, None)])
    assert run_pack(capsys, tmp_path / "src", tmp_path / "cut", *args)[0] == 0
    whole, cut = read_manifest(tmp_path / "whole"), read_manifest(tmp_path / "cut")
    assert whole["shards"] == cut["shards"] and whole["sequences"] == cut["sequences"]
    assert [s["num_frames"] for s in cut["sequences"]] == [n, n]
    if split == "train":
        check_train_samples(tmp_path / "cut", {"folder": frames, "video": frames})


def test_shard_size_suffixes():
    assert byte_size("1G") == 1 << 30 and byte_size("500M") == 500 << 20
    assert byte_size("64k") == 64 << 10 and byte_size("1.5GiB") == 3 << 29
    assert byte_size("123") == 123
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        byte_size("lots")
    with pytest.raises(argparse.ArgumentTypeError, match="at least 1 byte"):
        byte_size("0")


# -- bad input: one line, exit 2, nothing overwritten ------------------------------------------------


def one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_source(tmp_path, capsys):
    rc, _, err = run_pack(capsys, tmp_path / "nope", tmp_path / "out")
    assert rc == 2
    one_line_error(err, "nope", "no such file")
    assert not (tmp_path / "out").exists()


def test_empty_source(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no frames here")
    rc, _, err = run_pack(capsys, tmp_path / "empty", tmp_path / "out")
    assert rc == 2
    one_line_error(err, "empty", "no image frames")


def test_corrupt_frame_skips_its_sequence(tmp_path, capsys, photo):
    write_frames(tmp_path / "src" / "good", pan(photo, 5, 24, 30))
    write_frames(tmp_path / "src" / "bad", pan(photo, 8, 24, 30), "{:03d}.jpg")
    data = (tmp_path / "src" / "bad" / "005.jpg").read_bytes()
    (tmp_path / "src" / "bad" / "005.jpg").write_bytes(data[:len(data) // 3])
    rc, out_text, _ = run_pack(capsys, tmp_path / "src", tmp_path / "out")
    assert rc == 0
    manifest = check_manifest_and_shards(tmp_path / "out")
    assert [s["name"] for s in manifest["sequences"]] == ["good"]
    (skip,) = manifest["skipped"]
    assert skip["input"].endswith("bad") and "005.jpg" in skip["reason"]
    assert "skipped 1 input:" in out_text and "005.jpg" in out_text


def test_video_that_fails_to_decode_is_skipped(tmp_path, capsys, photo):
    write_coded_video(tmp_path / "src" / "ok.mp4", pan(photo, 6, 24, 30), "libx264")
    (tmp_path / "src" / "broken.mp4").write_bytes((tmp_path / "src" / "ok.mp4").read_bytes()[:300])
    rc, out_text, _ = run_pack(capsys, tmp_path / "src", tmp_path / "out")
    assert rc == 0
    manifest = read_manifest(tmp_path / "out")
    assert [s["name"] for s in manifest["sequences"]] == ["ok"]
    assert manifest["skipped"][0]["input"].endswith("broken.mp4") and "broken.mp4" in out_text


def test_short_and_mixed_size_sequences_are_skipped(tmp_path, capsys, photo):
    write_frames(tmp_path / "src" / "a_good", pan(photo, 5, 24, 30))
    write_frames(tmp_path / "src" / "b_short", pan(photo, 4, 24, 30))
    mixed = pan(photo, 6, 24, 30)
    mixed[3] = pan(photo, 1, 27, 30)[0]
    write_frames(tmp_path / "src" / "c_mixed", mixed)
    write_coded_video(tmp_path / "src" / "d_short.mkv", pan(photo, 3, 24, 30), "ffv1", "bgr0")
    rc, _, _ = run_pack(capsys, tmp_path / "src", tmp_path / "out", "--workers", 2)
    assert rc == 0
    manifest = check_manifest_and_shards(tmp_path / "out")
    assert [s["name"] for s in manifest["sequences"]] == ["a_good"]
    reasons = {Path(e["input"]).name: e["reason"] for e in manifest["skipped"]}
    assert "only 4 frames" in reasons["b_short"] and "only 3 frames" in reasons["d_short.mkv"]
    assert "00000003.png" in reasons["c_mixed"] and "mixed frame sizes" in reasons["c_mixed"]


@pytest.mark.parametrize("leftover", ["manifest.json", "train-000000.tar", "spool-000000.partial"])
def test_output_folder_with_an_earlier_pack_is_refused(tmp_path, capsys, photo, leftover):
    write_frames(tmp_path / "src", pan(photo, 5, 24, 30))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / leftover).write_text("keep me")
    rc, _, err = run_pack(capsys, tmp_path / "src", tmp_path / "out")
    assert rc == 2
    one_line_error(err, leftover, "empty folder")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [leftover]
    assert (tmp_path / "out" / leftover).read_text() == "keep me"


def test_nothing_usable_writes_no_manifest(tmp_path, capsys, photo):
    write_frames(tmp_path / "src" / "short", pan(photo, 3, 24, 30))
    write_frames(tmp_path / "src" / "broken", pan(photo, 6, 24, 30))
    (tmp_path / "src" / "broken" / "00000002.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    rc, _, err = run_pack(capsys, tmp_path / "src", tmp_path / "out")
    assert rc == 2
    one_line_error(err, "nothing usable", "no manifest written")
    assert_nothing_complete(tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())  # the skipped sequence's scratch file is gone too


def test_invocation_errors_are_one_line(tmp_path, capsys, photo):
    write_frames(tmp_path / "src", pan(photo, 5, 24, 30))
    for argv, needle in [([tmp_path / "out"], "required: OUT"),
                         ([tmp_path / "src", tmp_path / "out", "--shard-size", "huge"], "not a size"),
                         ([tmp_path / "src", tmp_path / "out", "--frames-per-sample", 4], "minimum 5"),
                         ([tmp_path / "src", tmp_path / "out", "--lr", tmp_path / "src", "--lr", tmp_path / "src"],
                          "one --lr per SRC"),
                         ([tmp_path / "src", tmp_path / "out", "--vimeo-list", "all.txt"], "Vimeo-90K")]:
        try:
            rc, _, err = run_pack(capsys, *argv)
        except SystemExit as exit_info:  # argparse's own errors
            rc, err = exit_info.code, capsys.readouterr().err
        assert rc == 2, argv
        one_line_error(err, needle)
    assert not (tmp_path / "out").exists()


# -- write failures and interruption leave only .partial files ----------------------------------------


def _fail_on_third_write(monkeypatch, exception: BaseException) -> None:
    import webdataset

    real_write = webdataset.TarWriter.write
    calls = {"n": 0}

    def write(self, sample):
        calls["n"] += 1
        if calls["n"] == 3:
            raise exception
        return real_write(self, sample)

    monkeypatch.setattr(webdataset.TarWriter, "write", write)


def test_disk_full_leaves_only_partial_files(tmp_path, capsys, photo, monkeypatch):
    for i in range(3):
        write_frames(tmp_path / "src" / f"{i:03d}", pan(photo, 5, 24, 30, start=i))
    _fail_on_third_write(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    rc, _, err = run_pack(capsys, tmp_path / "src", tmp_path / "out", "--shard-size", "1K")
    assert rc == 1
    one_line_error(err, "No space left on device", ".partial")
    assert_nothing_complete(tmp_path / "out")
    assert [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tar.partial")]


def test_interrupted_pack_leaves_nothing_that_looks_complete(tmp_path, capsys, photo, monkeypatch):
    for i in range(3):
        write_frames(tmp_path / "src" / f"{i:03d}", pan(photo, 5, 24, 30, start=i))
    _fail_on_third_write(monkeypatch, KeyboardInterrupt())
    rc, _, err = run_pack(capsys, tmp_path / "src", tmp_path / "out", "--shard-size", "1K", "--workers", 2)
    assert rc == 130
    one_line_error(err, "interrupted", ".partial")
    assert_nothing_complete(tmp_path / "out")
    # and the folder is refused until the user cleans it up
    monkeypatch.undo()
    rc, _, err = run_pack(capsys, tmp_path / "src", tmp_path / "out")
    assert rc == 2 and ".partial" in err


def test_a_worker_that_dies_stops_the_pack_with_one_line(tmp_path, capsys, photo, monkeypatch):
    for i in range(3):
        write_frames(tmp_path / "src" / f"{i:03d}", pan(photo, 5, 24, 30, start=i))
    real = pack.pack_segment

    def dies_on_the_second(task, options, on_frame=None):
        if task.sequence == 1:
            os._exit(9)  # what the kernel's OOM killer looks like from the pool
        return real(task, options, on_frame)

    monkeypatch.setattr(pack, "pack_segment", dies_on_the_second)
    rc, _, err = run_pack(capsys, tmp_path / "src", tmp_path / "out", "--workers", 2)
    assert rc == 1
    one_line_error(err, "worker process died", ".partial")
    assert_nothing_complete(tmp_path / "out")


@pytest.mark.parametrize("signum, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_kill_on_a_real_process(tmp_path, photo, signum, code, word):
    for i in range(2):
        write_frames(tmp_path / "src" / f"{i:03d}", pan(photo, 24, 240, 300, start=i), "{:03d}.bmp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "vsrpp_dist.pack", str(tmp_path / "src"), str(tmp_path / "out"),
                             "--workers", "2", "--min-tile", "30", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        if (tmp_path / "out").exists() and any((tmp_path / "out").glob("spool-*.partial")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == code
    one_line_error(err, word, ".partial")
    assert_nothing_complete(tmp_path / "out")


# -- packing to a bucket, verifying where the shards lie ---------------------------------------------


@pytest.fixture(scope="module")
def bucket():
    """A real S3-compatible server (moto's, on 127.0.0.1) with an empty bucket."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    from vsrpp_dist.data.locations import Location
    from vsrpp_dist.tools.loopback import S3Server, s3_environment

    server = S3Server()
    with s3_environment(server.env):
        Location("s3://packed/x").filesystem().mkdir("packed")
        yield "s3://packed"
    server.kill()


def bucket_source(tmp_path: Path, photo) -> Path:
    for i in range(3):
        write_frames(tmp_path / "src" / f"{i:03d}", pan(photo, 7, 48, 60, start=i))
    return tmp_path / "src"


def test_pack_to_a_bucket_uploads_the_same_shards_and_the_manifest_last(tmp_path, capsys, photo, bucket,
                                                                        monkeypatch):
    from vsrpp_dist.data.locations import Location

    src = bucket_source(tmp_path, photo)
    args = ("--min-tile", 24, "--shard-size", "20K")
    assert run_pack(capsys, src, tmp_path / "local", *args)[0] == 0
    uploads = []
    real_upload = Location.upload

    def upload(self, local, name):
        manifest_there = "manifest.json" in self.names()
        uploads.append((name, manifest_there, sorted(p.name for p in Path(local).parent.iterdir())))
        return real_upload(self, local, name)

    monkeypatch.setattr(Location, "upload", upload)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "staging"))
    (tmp_path / "staging").mkdir()
    rc, out, _ = run_pack(capsys, src, f"{bucket}/one", *args)
    assert rc == 0 and f"-> {bucket}/one" in out
    local = read_manifest(tmp_path / "local")
    remote = read_manifest(f"{bucket}/one")
    assert [s["sha256"] for s in remote["shards"]] == [s["sha256"] for s in local["shards"]]
    assert len(remote["shards"]) >= 3
    names = [name for name, _, _ in uploads]
    assert names == [s["file"] for s in local["shards"]] + ["manifest.json"], names
    assert not any(manifest_there for _, manifest_there, _ in uploads), "the manifest comes last"
    assert all(len([n for n in staged if n.endswith(".tar.partial")]) <= 2 for _, _, staged in uploads)
    assert list((tmp_path / "staging").iterdir()) == [], "the staging folder is removed"
    # what was uploaded is a dataset: every checksum verifies where it lies
    rc, out, _ = run_pack_verify(capsys, f"{bucket}/one")
    assert rc == 0 and f"verified {len(local['shards'])} shards" in out and "every size and sha256 matches" in out
    # and the prefix now holds a manifest: refused, nothing overwritten
    monkeypatch.undo()
    rc, _, err = run_pack(capsys, src, f"{bucket}/one", *args)
    assert rc == 2
    one_line_error(err, f"{bucket}/one: already holds manifest.json", "nothing was overwritten")


def run_pack_verify(capsys, where) -> tuple[int, str, str]:
    rc = pack.main(["--verify", str(where), "--quiet"])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_a_failed_upload_leaves_no_manifest_and_says_so_in_one_line(tmp_path, capsys, photo, bucket, monkeypatch):
    from vsrpp_dist.data.locations import Location, RemoteWriteError

    src = bucket_source(tmp_path, photo)
    real_upload = Location.upload
    calls = {"n": 0}

    def upload(self, local, name):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RemoteWriteError(f"uploading failed: {self.display(name)}: HTTP 503 Slow Down after 4 attempts")
        return real_upload(self, local, name)

    monkeypatch.setattr(Location, "upload", upload)
    rc, _, err = run_pack(capsys, src, f"{bucket}/broken", "--min-tile", 24, "--shard-size", "20K")
    assert rc == 1
    one_line_error(err, "uploading failed", "train-000001.tar", "without a manifest", "remove them")
    monkeypatch.undo()
    assert "manifest.json" not in Location(f"{bucket}/broken").names()
    rc, _, err = run_pack(capsys, src, f"{bucket}/broken", "--min-tile", 24)
    assert rc == 2 and "train-000000.tar" in err, "what the failed pack left is refused, not overwritten"


def test_verify_names_every_shard_that_does_not_match(tmp_path, capsys, photo, bucket):
    from vsrpp_dist.data.locations import Location

    src = bucket_source(tmp_path, photo)
    out = tmp_path / "out"
    assert run_pack(capsys, src, out, "--min-tile", 24, "--shard-size", "20K")[0] == 0
    manifest = read_manifest(out)
    first, second, third = (out / s["file"] for s in manifest["shards"][:3])
    data = bytearray(first.read_bytes())
    data[700] ^= 0xFF
    first.write_bytes(bytes(data))
    second.write_bytes(second.read_bytes()[:1000])
    third.unlink()
    rc, text, _ = run_pack_verify(capsys, out)
    assert rc == 1
    lines = text.splitlines()
    assert f"{first.name}: sha256 differs from the manifest (same size: the content changed)" in lines
    assert f"{second.name}: 1000 bytes, the manifest says {manifest['shards'][1]['bytes']}" in lines
    assert any(line.startswith(f"{third.name}: unreadable (") for line in lines)
    assert lines[-1] == f"3 of {len(manifest['shards'])} shards at {out} do not match the manifest"
    # the same damage, found where it lies in a bucket
    Location(f"{bucket}/damaged").names()
    for path in sorted(out.iterdir(), key=lambda p: p.name == "manifest.json"):
        Location(f"{bucket}/damaged").upload(path, path.name)
    rc, text, _ = run_pack_verify(capsys, f"{bucket}/damaged")
    assert rc == 1 and f"{third.name}: unreadable ({bucket}/damaged/{third.name}: not found (404))" in text
    assert run_pack_verify(capsys, tmp_path / "nothing")[0] == 2
