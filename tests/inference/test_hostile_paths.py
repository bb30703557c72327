"""Outputs go where the user said and nowhere else: names from data are never paths (`evaluate --save`
with sequence names like `../../../x` or `/abs`), and `upscale` never writes over its own input."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vsrpp_dist.inference import evaluate, upscale
from vsrpp_dist.weights import WEIGHTS_FILE

from ..helpers import copy_shards, run, save_weights, write_coded_video


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return save_weights(tmp_path_factory.mktemp("weights") / WEIGHTS_FILE)


def digest(path: Path) -> str:
    if path.is_dir():
        return hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sorted(path.iterdir()))).hexdigest()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def renamed(val_shards: Path, dest: Path, names: list[str]) -> Path:
    """The validation set with its sequences renamed (manifest and every sample's JSON alike)."""
    def member(name, data):
        if name.endswith(".json"):
            meta = json.loads(data)
            meta["name"] = names[meta["seq"]]
            return json.dumps(meta).encode()
        return data

    def manifest(m):
        for seq in m["sequences"]:
            seq["name"] = names[seq["index"]]

    return copy_shards(val_shards, dest, member=member, manifest=manifest)


def test_sequence_names_from_data_never_lead_outside_save(val_shards, weights, tmp_path, capsys):
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    outside = tmp_path / "escaped"
    hostile = renamed(val_shards, tmp_path / "val", ["../../../escaped", str(outside / "abs")])
    save = work / "save"
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    rc, _, err = run(capsys, evaluate, "--checkpoint", weights, "--data", hostile, "--save", save, "--quiet")
    assert rc == 0, err
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert written and all(p.is_relative_to(save) for p in written), sorted(map(str, written - {save}))
    assert not outside.exists()
    # the names' plain words are kept as folders under --save: escaped/, and the absolute one's parts
    assert len(list((save / "escaped").glob("*.png"))) == 6
    assert len(list(save.joinpath(*outside.relative_to("/").parts, "abs").glob("*.png"))) == 6


def test_save_through_a_symlink_that_leads_out_is_refused(val_shards, weights, tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    save = tmp_path / "save"
    save.mkdir()
    names = ["000", "001"]
    os.symlink(outside, save / names[0])
    rc, _, err = run(capsys, evaluate, "--checkpoint", weights, "--data", val_shards, "--save", save, "--quiet")
    assert rc == 2 and "leads outside it" in err and len(err.strip().splitlines()) == 1
    assert not any(outside.iterdir())


@pytest.fixture
def frames_folder(tmp_path) -> Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray((rng.random((24, 30, 3)) * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture
def video(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "clip.mp4"
    write_coded_video(path, [(rng.random((24, 30, 3)) * 255).astype(np.uint8) for _ in range(6)], "libx264")
    return path


def test_upscale_never_writes_over_its_input(weights, frames_folder, video, tmp_path, capsys):
    link = tmp_path / "link.mp4"
    os.symlink(video, link)
    hard = tmp_path / "hard.mp4"
    os.link(video, hard)
    cases = {
        "the same video": (video, video),
        "the same video, another spelling": (video, tmp_path / "frames" / ".." / "clip.mp4"),
        "a symlink to the video": (video, link),
        "a hard link to the video": (video, hard),
        "the same frame folder": (frames_folder, frames_folder),
        "the same frame folder, trailing slash": (frames_folder, f"{frames_folder}/"),
    }
    before = {"video": digest(video), "frames": digest(frames_folder)}
    for what, (source, output) in cases.items():
        for flags in ((), ("--overwrite",)):
            rc, _, err = run(capsys, upscale, "--checkpoint", weights, "--input", source, "--output", output,
                             "--quiet", *flags)
            assert rc == 2 and "would destroy the source" in err, (what, flags, err)
            assert len(err.strip().splitlines()) == 1, (what, err)
    assert {"video": digest(video), "frames": digest(frames_folder)} == before


def cut_short_video(path: Path, frames: int = 30) -> Path:
    """An MP4 with its index in front (faststart) cut in half: the index still declares every frame,
    the data holds about half of them."""
    import av

    rng = np.random.default_rng(2)
    whole = path.with_name("whole.mp4")
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.height, stream.width, stream.pix_fmt = 24, 30, "yuv420p"
        stream.options = {"g": "1"}  # every frame a key frame: the cut leaves whole frames before it
        for _ in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray((rng.random((24, 30, 3)) * 255).astype(np.uint8),
                                                                   format="rgb24")))
        container.mux(stream.encode())
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_video_cut_short_behind_its_index_is_reported_by_upscale_and_pack(weights, tmp_path, capsys):
    from vsrpp_dist.data.pack_command import main as pack

    video = cut_short_video(tmp_path / "cut.mp4")
    rc, out, err = run(capsys, upscale, "--checkpoint", weights, "--input", video, "--output", tmp_path / "x3",
                       "--quiet")
    decoded = len(list((tmp_path / "x3").glob("*.png")))
    assert rc == 0 and 5 <= decoded < 30, err
    assert f"warning: {video}: its index declares 30 frames but only {decoded} could be decoded" in err

    assert pack([str(video), str(tmp_path / "shards"), "--min-tile", "24", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"pack: warning: {video}: its index declares 30 frames but only {decoded} could be decoded" in out
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["sequences"][0]["num_frames"] == decoded and "30 frames" in manifest["sequences"][0]["warning"]
